// Chooses a backend at run time. Only this file knows whether the CUDA backend was compiled in.
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>

#ifdef ATTRACE_WITH_CUDA
#include "../cuda/cuda_backend.hpp"
#endif

namespace attrace::kernels {

const char* to_string(GemmMath m) {
  switch (m) {
    case GemmMath::ieee: return "ieee";
    case GemmMath::tf32: return "tf32";
    case GemmMath::bf16: return "bf16";
  }
  return "?";
}

GemmMath parse_gemm_math(const std::string& name) {
  if (name == "ieee") return GemmMath::ieee;
  if (name == "tf32") return GemmMath::tf32;
  if (name == "bf16") return GemmMath::bf16;
  throw InputError("unknown gemm_math '" + name + "' (expected ieee, tf32 or bf16)");
}

bool blas_compiled() {
#ifdef ATTRACE_WITH_BLAS
  return true;
#else
  return false;
#endif
}

bool cuda_compiled() {
#ifdef ATTRACE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef ATTRACE_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& kind) {
  if (kind == "cpu") return make_cpu_backend();
  if (kind == "cuda" || kind == "auto") {
    if (cuda_device_count() > 0) {
#ifdef ATTRACE_WITH_CUDA
      return cuda::make_backend(0);
#endif
    }
    if (kind == "auto") return make_cpu_backend();
    throw InputError(cuda_compiled() ? "device 'cuda' requested but no CUDA device is present"
                                     : "device 'cuda' requested but this build has no CUDA backend");
  }
  throw InputError("unknown device '" + kind + "' (expected cpu, cuda or auto)");
}

}  // namespace attrace::kernels
