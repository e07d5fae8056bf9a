#pragma once
// Deliberately naive twins of the backend operations, accumulating in float64 in the simplest
// order. Tests compare every optimized backend against these.
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::reference {

/// out[i][j] += alpha * sum_p a[i][p]*b[j][p], sequential sum in long double.
template <class T>
void score_accumulate(HostMatrix<T> a, HostMatrix<T> b, double alpha, HostMatrixMut<double> out);

/// Top-k by full sort of each column (score desc / asc, ties by row asc).
std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k);

}  // namespace attrace::kernels::reference
