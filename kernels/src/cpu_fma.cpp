// CPU kernels of the FMA scoring order (first version: the reference loop, one output at a time).
#include "cpu_fma.hpp"

#include "fma_dot.hpp"

namespace attrace::kernels::cpu {

void score_fma(HostMatrix<float> a, HostMatrix<float> b, double alpha, HostMatrixMut<double> out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < b.rows; ++j) out.row(i)[j] += alpha * fma_dot_reference(a.row(i), b.row(j), a.cols);
}

void sqnorm_fma(HostMatrix<float> a, double alpha, double* out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < a.rows; ++i) out[i] += alpha * fma_dot_reference(a.row(i), a.row(i), a.cols);
}

}  // namespace attrace::kernels::cpu
