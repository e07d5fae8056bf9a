// The `attrace` command: a small program (libc only) that sets the thread pools' wait policies in
// the environment and executes attrace-core, the command line proper, from its own folder.
//
// Why a separate program: libgomp and OpenBLAS read their wait settings in their initializers,
// before main, so the program that links them can only change them by starting again. attrace-core
// links LibTorch (~290 shared libraries with the system libtorch_cpu, ~80 with the build's lean
// copy): starting it twice cost ~0.2 s of symbol binding even when the second start is made
// before any initializer runs (docs/performance.md). Starting this program first costs ~1 ms.
// attrace-core run directly still executes itself once when needed.
#include "passive_waits.hpp"

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <unistd.h>

int main(int argc, char** argv) {
  if (attrace::cli::computes(argc, argv) && std::getenv("OMP_WAIT_POLICY") == nullptr) {
    ::setenv("OMP_WAIT_POLICY", "passive", 1);
    ::setenv("OPENBLAS_THREAD_TIMEOUT", attrace::cli::kOpenblasThreadTimeout, 0);
  }
  // attrace-core lives beside this program (the build tree's cli/ folder, or the install's bin/).
  std::string self(PATH_MAX, '\0');
  const ssize_t n = ::readlink("/proc/self/exe", self.data(), self.size());
  if (n <= 0 || static_cast<size_t>(n) >= self.size()) {
    std::fprintf(stderr, "attrace: failure: cannot find this program's own path (/proc/self/exe: %s)\n", std::strerror(errno));
    return 1;
  }
  self.resize(static_cast<size_t>(n));
  const std::string core = self.substr(0, self.rfind('/') + 1) + "attrace-core";
  ::execv(core.c_str(), argv);
  std::fprintf(stderr, "attrace: failure: cannot run %s (%s); the attrace command needs attrace-core installed beside it\n",
               core.c_str(), std::strerror(errno));
  return 1;
}
