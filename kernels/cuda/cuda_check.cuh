#pragma once
// Check macros for CUDA and cuBLAS calls, one family on one generic macro: a failed status becomes
// attrace::RuntimeFailure naming the library, the call, the place and the library's own message.
#include <attrace/error.hpp>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

/// Throws RuntimeFailure when `call` returns anything but `success`; `describe` turns the status
/// into text for the message.
#define ATTRACE_STATUS_TRY(library, call, success, describe)                                           \
  do {                                                                                                 \
    const auto attrace_status_ = (call);                                                               \
    ATTRACE_CHECK(attrace_status_ == (success), ::attrace::RuntimeFailure,                             \
                  std::string(library " error in ") + #call + " at " + __FILE__ + ":" +                \
                      std::to_string(__LINE__) + ": " + describe(attrace_status_));                    \
  } while (0)

/// A CUDA runtime call that must succeed.
#define ATTRACE_CUDA_TRY(call) ATTRACE_STATUS_TRY("CUDA", call, cudaSuccess, cudaGetErrorString)
/// A cuBLAS call that must succeed.
#define ATTRACE_CUBLAS_TRY(call) ATTRACE_STATUS_TRY("cuBLAS", call, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
/// For destructors, which must not throw: the call's status is dropped (a release that fails
/// leaves nothing to recover, and a sticky device error surfaces at the next checked call).
#define ATTRACE_CUDA_TRY_NO_THROW(call) static_cast<void>(call)

/// Checks a kernel launch; with ATTRACE_CUDA_SYNC_CHECK also waits for it to finish, so that an
/// error inside the kernel is reported at its launch.
#ifdef ATTRACE_CUDA_SYNC_CHECK
#define ATTRACE_CUDA_LAUNCH_CHECK(stream)            \
  do {                                               \
    ATTRACE_CUDA_TRY(cudaGetLastError());            \
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream)); \
  } while (0)
#else
#define ATTRACE_CUDA_LAUNCH_CHECK(stream) ATTRACE_CUDA_TRY(cudaGetLastError())
#endif
