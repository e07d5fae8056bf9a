#pragma once
// Check macros for CUDA calls: failures become attrace::RuntimeFailure naming the call.
#include <attrace/error.hpp>

#include <cuda_runtime.h>

#include <string>

#define ATTRACE_CUDA_TRY(call)                                                           \
  do {                                                                                   \
    const cudaError_t attrace_status_ = (call);                                          \
    ATTRACE_CHECK(attrace_status_ == cudaSuccess, ::attrace::RuntimeFailure,            \
                  std::string("CUDA error in ") + #call + " at " + __FILE__ + ":" +      \
                      std::to_string(__LINE__) + ": " + cudaGetErrorString(attrace_status_)); \
  } while (0)

/// Checks a kernel launch; with ATTRACE_CUDA_SYNC_CHECK also waits for it to finish.
#ifdef ATTRACE_CUDA_SYNC_CHECK
#define ATTRACE_CUDA_LAUNCH_CHECK(stream)            \
  do {                                               \
    ATTRACE_CUDA_TRY(cudaGetLastError());            \
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream)); \
  } while (0)
#else
#define ATTRACE_CUDA_LAUNCH_CHECK(stream) ATTRACE_CUDA_TRY(cudaGetLastError())
#endif
