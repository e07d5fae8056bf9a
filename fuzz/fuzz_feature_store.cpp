// Fuzzes the feature store reader on arbitrary file bytes (seed the corpus with real stores, see
// docs/fuzzing.md): open, then read every row of every checkpoint. HDF5 parses the container;
// attrace's checks (format, layout, spec, sizes, progress) must turn every bad file into an
// attrace error before a read goes out of bounds.
#include "fuzz_util.hpp"

#include <attrace/connectors/feature_store.hpp>
#include <attrace/error.hpp>

#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = attrace::fuzz::scratch_file("store.h5", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    attrace::connectors::FeatureStoreReader r(path);
    const auto& l = r.layout();
    for (size_t c = 0; c < l.checkpoints.size(); ++c) {
      const int64_t width = l.checkpoints[c].width;
      if (width <= 0 || l.rows <= 0 || width > (int64_t{1} << 20) || l.rows > (int64_t{1} << 20)) continue;
      std::vector<float> rows(static_cast<size_t>(width) * static_cast<size_t>(std::min<int64_t>(l.rows, 64)));
      for (int64_t b0 = 0; b0 < l.rows; b0 += 64) r.read(c, b0, std::min<int64_t>(l.rows, b0 + 64), rows.data());
    }
  } catch (const attrace::Error&) {
  }
  return 0;
}
