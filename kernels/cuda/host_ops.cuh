#pragma once
// Host-matrix operations of the CUDA backend that stage data themselves (copy in, run, copy out,
// wait), one per kernels/cuda file that defines it. The backend class (cuda_backend.cu) forwards
// to these; nvcc only.
#include "resources.cuh"

#include <attrace/kernels/backend.hpp>

#include <vector>

namespace attrace::kernels::cuda {

/// out[segment[i]][j] += x[i][j], rows ascending per segment (epilogues.cu).
void segmented_row_sum_host(const Resources& res, HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out);
/// Top-k lists per column, the CPU backend's answer (epilogues.cu).
std::vector<TopK> column_topk_host(const Resources& res, HostMatrix<double> x, int64_t k);
/// out += alpha * a b^T through cuBLAS in tiles, in the arithmetic `math` (gemm.cu).
void gemm_score_host(const Resources& res, HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math,
                     HostMatrixMut<double> out);
/// Same for float64 features (math must be ieee).
void gemm_score_host(const Resources& res, HostMatrix<double> a, HostMatrix<double> b, double alpha, GemmMath math,
                     HostMatrixMut<double> out);

}  // namespace attrace::kernels::cuda
