#pragma once
// Entry points of the CUDA backend (host-only declarations; implemented in cuda_backend.cu).
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::cuda {

/// Usable CUDA devices; 0 (with the CUDA error cleared) when the machine has none.
int device_count();
/// The CUDA backend on device `device`.
std::unique_ptr<Backend> make_backend(int device);

}  // namespace attrace::kernels::cuda
