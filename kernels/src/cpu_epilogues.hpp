#pragma once
// CPU implementations of the score-matrix epilogues (tranche sums, top-k), shared by the CPU
// backend and used by the CUDA backend as its fallback for these operations.
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::cpu {

/// out[segment[i]][j] += x[i][j] for i ascending.
void segmented_row_sum(HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out);

/// Streaming bounded selection of the k largest / k smallest entries of each column.
std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k);

}  // namespace attrace::kernels::cpu
