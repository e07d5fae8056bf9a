// GEMM scoring through cuBLAS (attribution.scoring = "blas" on CUDA): float32 (or float64) GEMMs
// in tiles of rows, each float32 tile added into the float64 scores on the host. The inputs are
// first rounded with rounding.hpp for tf32/bf16 (the CPU backend's roundings), and the handle's
// math mode is set explicitly before every GEMM, so no library default (or another caller's
// setting on a shared handle) can switch the arithmetic behind the manifest's back.
#include "host_ops.cuh"

#include <attrace/kernels/rounding.hpp>

#include <string>
#include <type_traits>
#include <vector>

namespace attrace::kernels::cuda {
namespace {

// Rows of each operand per cuBLAS call: bounds device memory for any n x m.
constexpr int64_t kGemmTile = 8192;

__global__ void round_tf32_kernel(float* __restrict__ x, int64_t count) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[t] = round_tf32(x[t]);
}

__global__ void to_bf16_kernel(const float* __restrict__ in, int64_t count, uint16_t* __restrict__ out) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = bf16_bits_rne(in[t]);
}

// The handle's math mode for `math`. The compute type passed to cublasGemmEx already names the
// arithmetic; the mode makes the same choice for the handle, and reductions stay in the float32
// (float64) accumulator type in every mode.
cublasMath_t math_mode(GemmMath math) {
  const auto no_reduced = CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
  switch (math) {
    case GemmMath::tf32: return static_cast<cublasMath_t>(CUBLAS_TF32_TENSOR_OP_MATH | no_reduced);
    case GemmMath::ieee:
    case GemmMath::bf16: break;
  }
  return static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | no_reduced);
}

// out += alpha * a b^T, tile by tile: rows [i0, i0 + ni) of a against rows [j0, j0 + nj) of b.
// Row-major a (n x p) is read by cuBLAS as the column-major p x n matrix a^T, likewise b, so the
// column-major nj x ni result tile b a^T is the row-major ni x nj tile a b^T.
template <class T>
void gemm_score(const Resources& res, HostMatrix<T> a, HostMatrix<T> b, double alpha, GemmMath math, HostMatrixMut<double> out) {
  ATTRACE_CHECK(a.cols == b.cols && out.rows == a.rows && out.cols == b.rows, InputError,
                "score_accumulate_blas: shapes do not match");
  ATTRACE_CHECK((std::is_same_v<T, float> || math == GemmMath::ieee), InputError,
                std::string("score_accumulate_blas: gemm_math '") + to_string(math) + "' needs float32 features");
  if (a.rows == 0 || b.rows == 0) return;
  Resources::Impl& r = res.impl();
  r.activate();
  const cudaStream_t s = r.stream;
  const int64_t p = a.cols, ta = std::min(kGemmTile, a.rows), tb = std::min(kGemmTile, b.rows);
  const bool half = math == GemmMath::bf16;
  ScratchPlan plan;
  const auto sa = plan.add<T>(ta * p), sb = plan.add<T>(tb * p), st = plan.add<T>(ta * tb);
  const auto ha = plan.add<uint16_t>(half ? ta * p : 0), hb = plan.add<uint16_t>(half ? tb * p : 0);
  void* base = r.scratch(plan);
  ScratchPlan host_plan;
  const auto ht = host_plan.add<T>(ta * tb);
  T* const tile = at(r.host_scratch(host_plan), ht);  // pinned: the copies run at full speed
  // Converts rows already on the device to the GEMM's input format: in place (tf32) or into the
  // bfloat16 copy.
  const auto prepare = [&](T* d, uint16_t* h16, int64_t rows) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t count = rows * p;
      if (math == GemmMath::ieee || count == 0) return;
      if (math == GemmMath::tf32) round_tf32_kernel<<<grid_for(count, 256), 256, 0, s>>>(d, count);
      if (math == GemmMath::bf16) to_bf16_kernel<<<grid_for(count, 256), 256, 0, s>>>(d, count, h16);
      ATTRACE_CUDA_LAUNCH_CHECK(s);
    }
  };
  ATTRACE_CUBLAS_TRY(cublasSetMathMode(r.blas, math_mode(math)));
  for (int64_t i0 = 0; i0 < a.rows; i0 += ta) {
    const int64_t ni = std::min(ta, a.rows - i0);
    copy_in(slot_matrix(base, sa, ni, p), HostMatrix<T>{a.row(i0), ni, p, a.ld}, s);
    prepare(at(base, sa), at(base, ha), ni);
    for (int64_t j0 = 0; j0 < b.rows; j0 += tb) {
      const int64_t nj = std::min(tb, b.rows - j0);
      if (i0 == 0 || b.rows > tb) {  // b fits in one tile: uploaded once
        copy_in(slot_matrix(base, sb, nj, p), HostMatrix<T>{b.row(j0), nj, p, b.ld}, s);
        prepare(at(base, sb), at(base, hb), nj);
      }
      if constexpr (std::is_same_v<T, double>) {
        const double one = 1.0, zero = 0.0;
        ATTRACE_CUBLAS_TRY(cublasGemmEx_64(r.blas, CUBLAS_OP_T, CUBLAS_OP_N, nj, ni, p, &one, at(base, sb), CUDA_R_64F, p,
                                           at(base, sa), CUDA_R_64F, p, &zero, at(base, st), CUDA_R_64F, nj,
                                           CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
      } else {
        const float one = 1.0f, zero = 0.0f;
        const void* A = half ? static_cast<const void*>(at(base, hb)) : at(base, sb);
        const void* B = half ? static_cast<const void*>(at(base, ha)) : at(base, sa);
        const cudaDataType_t in = half ? CUDA_R_16BF : CUDA_R_32F;
        const cublasComputeType_t compute = math == GemmMath::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        ATTRACE_CUBLAS_TRY(cublasGemmEx_64(r.blas, CUBLAS_OP_T, CUBLAS_OP_N, nj, ni, p, &one, A, in, p, B, in, p, &zero,
                                           at(base, st), CUDA_R_32F, nj, compute, CUBLAS_GEMM_DEFAULT));
      }
      ATTRACE_CUDA_TRY(cudaMemcpyAsync(tile, at(base, st), static_cast<size_t>(ni * nj) * sizeof(T),
                                       cudaMemcpyDeviceToHost, s));
      ATTRACE_CUDA_TRY(cudaStreamSynchronize(s));
      for (int64_t i = 0; i < ni; ++i) {
        double* o = out.row(i0 + i) + j0;
        for (int64_t j = 0; j < nj; ++j) o[j] += alpha * static_cast<double>(tile[static_cast<size_t>(i * nj + j)]);
      }
    }
  }
}

}  // namespace

void gemm_score_host(const Resources& res, HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math,
                     HostMatrixMut<double> out) {
  gemm_score(res, a, b, alpha, math, out);
}
void gemm_score_host(const Resources& res, HostMatrix<double> a, HostMatrix<double> b, double alpha, GemmMath math,
                     HostMatrixMut<double> out) {
  gemm_score(res, a, b, alpha, math, out);
}

}  // namespace attrace::kernels::cuda
