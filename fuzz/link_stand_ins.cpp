// Link stand-ins for the three functions the config code calls from libraries the fuzz build
// cannot compile with clang (kernels/ uses GCC's target_clones on templates; score.cpp needs the
// kernels). They are not under test here; the real ones are covered by the normal test suite.
#include <attrace/engine/score.hpp>
#include <attrace/kernels/backend.hpp>

#include <cstdio>

namespace attrace::kernels {
const char* to_string(GemmMath m) { return m == GemmMath::tf32 ? "tf32" : m == GemmMath::bf16 ? "bf16" : "ieee"; }
}  // namespace attrace::kernels

namespace attrace::engine {
// "Unknown": the machine-dependent memory check is skipped, so a finding never depends on the host.
int64_t physical_memory() { return 0; }
std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g GiB", bytes / 1073741824.0);
  return buf;
}
}  // namespace attrace::engine
