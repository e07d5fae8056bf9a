#pragma once
// Deliberately naive twins of the backend operations, accumulating in float64 in the simplest
// order. Tests compare every optimized backend against these.
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::reference {

/// out[i][j] += alpha * sum_p a[i][p]*b[j][p], sequential sum in long double.
template <class T>
void score_accumulate(HostMatrix<T> a, HostMatrix<T> b, double alpha, HostMatrixMut<double> out);

/// out[i][j] = the Linear FMA chain (Backend::linear_fma) written out one output at a time:
/// c = bias[j] or +0, c = std::fma(a[i][q], bt[q][j], c) for q ascending. Float32, like the
/// backends, because the order itself is the definition.
void linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out);

/// Top-k by full sort of each column (score desc / asc, ties by row asc).
std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k);

}  // namespace attrace::kernels::reference
