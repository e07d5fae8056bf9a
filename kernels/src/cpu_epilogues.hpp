#pragma once
// CPU implementations of the score-matrix epilogues (tranche sums, top-k), shared by the CPU
// backend and used by the CUDA backend as its fallback for these operations.
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::cpu {

/// out[segment[i]][j] += x[i][j] for i ascending.
void segmented_row_sum(HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out);

/// out += alpha * a b^T through BLAS (sgemm/dgemm into a scratch tile, then added in float64);
/// tf32/bf16 round the inputs first (rounding.hpp).
void score_blas(HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math, HostMatrixMut<double> out);
void score_blas(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out);

/// Streaming bounded selection of the k largest / k smallest entries of each column.
std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k);

}  // namespace attrace::kernels::cpu
