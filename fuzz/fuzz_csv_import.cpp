// Fuzzes `attrace import csv`: the input split at NUL bytes is the examples CSV, then (optional)
// the tranche table CSV, then a byte choosing regression targets. An import that succeeds must
// read back as a valid dataset with the same number of examples.
#include "fuzz_util.hpp"

#include <attrace/connectors/csv_import.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/error.hpp>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = attrace::fuzz::split_parts(data, size, 3);
  attrace::connectors::CsvImportOptions o;
  o.examples_csv = attrace::fuzz::scratch_file("examples.csv", parts[0]);
  if (parts.size() > 1) o.tranches_csv = attrace::fuzz::scratch_file("tranches.csv", parts[1]);
  o.regression = parts.size() > 2 && !parts[2].empty() && (parts[2][0] & 1);
  o.output_h5 = attrace::fuzz::scratch_dir() + "/out.h5";
  o.replace = true;
  long long n = 0;
  try {
    n = attrace::connectors::import_csv(o);
  } catch (const attrace::Error&) {
    return 0;
  }
  try {
    const auto ds = attrace::connectors::read_dataset(o.output_h5, !o.tranches_csv.empty());
    if (ds.size() != n) std::abort();
  } catch (const attrace::Error& e) {
    std::fprintf(stderr, "an imported dataset does not read back: %s\n", e.what());
    std::abort();
  }
  return 0;
}
