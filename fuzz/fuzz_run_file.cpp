// Fuzzes the run-file reader ([[checkpoint]] file/step/lr). A checkpoint file named "ckpt" exists
// next to the run file, so inputs can also get past the file checks.
#include "fuzz_util.hpp"

#include <attrace/connectors/run.hpp>
#include <attrace/error.hpp>

#include <cmath>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string ckpt = attrace::fuzz::scratch_file("ckpt", "not a model, only hashed");
  const std::string path = attrace::fuzz::scratch_file("run.toml", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const auto run = attrace::connectors::read_run_file(path);
    // What the reader promises about an accepted run.
    if (run.checkpoints.empty()) std::abort();
    for (size_t k = 0; k < run.checkpoints.size(); ++k) {
      const auto& c = run.checkpoints[k];
      if (!std::isfinite(c.lr) || c.lr < 0 || c.sha256.size() != 64) std::abort();
      if (k > 0 && c.step <= run.checkpoints[k - 1].step) std::abort();
    }
  } catch (const attrace::Error&) {
  }
  return 0;
}
