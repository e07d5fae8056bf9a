// Fuzzes the dataset reader's validation (validate_dataset): shapes, ids, targets, tranche index
// and table built from the input. A dataset it accepts must also write and read back unchanged.
#include "fuzz_util.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/error.hpp>

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  attrace::connectors::Dataset ds;
  const int rank = in.ConsumeIntegralInRange<int>(0, 4);
  for (int r = 0; r < rank; ++r) ds.input_shape.push_back(in.ConsumeIntegral<int64_t>() >> in.ConsumeIntegralInRange<int>(0, 62));
  const size_t n_inputs = in.ConsumeIntegralInRange<size_t>(0, 64);
  for (size_t i = 0; i < n_inputs; ++i) ds.inputs.push_back(in.ConsumeFloatingPoint<float>());
  ds.target_kind = in.ConsumeBool() ? attrace::connectors::TargetKind::regression : attrace::connectors::TargetKind::class_index;
  const int trank = in.ConsumeIntegralInRange<int>(0, 3);
  for (int r = 0; r < trank; ++r) ds.target_shape.push_back(in.ConsumeIntegral<int64_t>() >> in.ConsumeIntegralInRange<int>(0, 62));
  const size_t n_targets = in.ConsumeIntegralInRange<size_t>(0, 32);
  for (size_t i = 0; i < n_targets; ++i) {
    ds.class_targets.push_back(in.ConsumeIntegralInRange<int64_t>(-2, 9));
    ds.regression_targets.push_back(in.ConsumeFloatingPoint<float>());
  }
  const size_t n_ids = in.ConsumeIntegralInRange<size_t>(0, 32);
  for (size_t i = 0; i < n_ids; ++i) ds.ids.push_back(in.ConsumeRandomLengthString(12));
  const size_t n_tranches = in.ConsumeIntegralInRange<size_t>(0, 4);
  for (size_t k = 0; k < n_tranches; ++k)
    ds.tranches.push_back({in.ConsumeRandomLengthString(8),
                           in.ConsumeBool() ? "0x00000000000000000000000000000000000000a" + std::to_string(k)
                                            : in.ConsumeRandomLengthString(44),
                           in.ConsumeRandomLengthString(8), in.ConsumeRandomLengthString(8)});
  const size_t n_index = in.ConsumeIntegralInRange<size_t>(0, 32);
  for (size_t i = 0; i < n_index; ++i) ds.tranche.push_back(in.ConsumeIntegralInRange<int64_t>(-1, 4));
  const bool require_tranches = in.ConsumeBool();
  try {
    attrace::connectors::validate_dataset(ds, require_tranches, "fuzz");
  } catch (const attrace::Error&) {
    return 0;
  }
  // Accepted: the file layout must hold it exactly.
  const std::string path = attrace::fuzz::scratch_dir() + "/ds.h5";
  try {
    attrace::connectors::write_dataset(path, ds);
    const auto back = attrace::connectors::read_dataset(path, require_tranches);
    if (back.ids != ds.ids || back.input_shape != ds.input_shape || back.inputs != ds.inputs || back.tranche != ds.tranche)
      std::abort();
  } catch (const attrace::Error& e) {
    std::fprintf(stderr, "a validated dataset does not round-trip: %s\n", e.what());
    std::abort();
  }
  return 0;
}
