// Which commands run with passive thread-pool waits, shared by the `attrace` launcher and
// attrace-core (docs/performance.md, "Waiting threads"). Header-only and libc-only: the launcher
// links nothing else, and attrace-core uses it before libc is initialized.
#pragma once

#include <cstring>
#include <initializer_list>

namespace attrace::cli {

/// OPENBLAS_THREAD_TIMEOUT set for computing commands: idle OpenBLAS workers sleep after 2^20 cycles
/// (~0.4 ms; the default 2^28 is ~0.1 s): calls in a burst still find them awake.
inline constexpr const char* kOpenblasThreadTimeout = "20";
/// The same setting as one environment entry (for building an environment by hand).
inline constexpr const char* kOpenblasThreadTimeoutEntry = "OPENBLAS_THREAD_TIMEOUT=20";
/// The wait policy for computing commands as one environment entry.
inline constexpr const char* kOmpWaitPolicyEntry = "OMP_WAIT_POLICY=passive";

/// Whether argv names a command that computes (attribute, featurize, score, demo, eval, verify).
inline bool computes(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    for (const char* c : {"attribute", "featurize", "score", "demo", "eval", "verify"})
      if (std::strcmp(argv[i], c) == 0) return true;
  return false;
}

}  // namespace attrace::cli
