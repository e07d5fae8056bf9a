// The Linear-layer product on the CPU: the widest kernel this CPU runs (the same instruction-set
// choice as the FMA scoring kernels, cpu_fma.cpp), else a scalar loop of std::fma. All variants
// compute each output as the same float32 FMA chain, so they give the same bits.
#include "cpu_linear.hpp"

#include "cpu_fma.hpp"

#include <attrace/error.hpp>

#include <cmath>
#include <cstring>
#include <new>
#include <string>

namespace attrace::kernels::cpu {
namespace avx2 {
bool linear(const float* a, int64_t lda, int64_t n, const float* bt, int64_t ldb, int64_t k, int64_t m, const float* bias,
            float* out, int64_t ldo, int threads);
}  // namespace avx2
namespace avx512 {
bool linear(const float* a, int64_t lda, int64_t n, const float* bt, int64_t ldb, int64_t k, int64_t m, const float* bias,
            float* out, int64_t ldo, int threads);
}  // namespace avx512

namespace {

std::string shape(HostMatrix<float> v) {
  return std::to_string(v.rows) + "x" + std::to_string(v.cols) + " (ld " + std::to_string(v.ld) + ")";
}

void check_view(HostMatrix<float> v, const char* what) {
  ATTRACE_CHECK(v.rows >= 0 && v.cols >= 0 && v.ld >= v.cols && (v.rows == 0 || v.cols == 0 || v.data != nullptr),
                InputError, std::string("linear_fma: bad ") + what + " view " + shape(v));
}

}  // namespace

void check_linear_shapes(HostMatrix<float> a, HostMatrix<float> bt, HostMatrix<float> out) {
  check_view(a, "input");
  check_view(bt, "weight");
  check_view(out, "output");
  ATTRACE_CHECK(a.cols == bt.rows && out.rows == a.rows && out.cols == bt.cols, InputError,
                "linear_fma: input " + shape(a) + " times transposed weight " + shape(bt) + " does not fit output " +
                    shape(out) + " (expected input rows x k, weight k x m, output rows x m)");
}

void linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out, int threads) {
  static const int isa = std::strcmp(fma_isa(), "avx512") == 0 ? 512 : std::strcmp(fma_isa(), "avx2") == 0 ? 2 : 0;
  if (isa != 0) {
    const bool ok = isa == 512 ? avx512::linear(a.data, a.ld, a.rows, bt.data, bt.ld, bt.rows, bt.cols, bias, out.data,
                                                out.ld, threads)
                               : avx2::linear(a.data, a.ld, a.rows, bt.data, bt.ld, bt.rows, bt.cols, bias, out.data,
                                              out.ld, threads);
    if (!ok) throw std::bad_alloc();
    return;
  }
  // No FMA instructions: std::fma is still the exactly rounded fused operation (in software).
  // The output row holds the accumulators; q outer keeps each output's chain in ascending q.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < a.rows; ++i) {
    float* o = out.row(i);
    for (int64_t j = 0; j < bt.cols; ++j) o[j] = bias != nullptr ? bias[j] : 0.0f;
    for (int64_t q = 0; q < a.cols; ++q) {
      const float x = a.row(i)[q];
      const float* w = bt.row(q);
      for (int64_t j = 0; j < bt.cols; ++j) o[j] = std::fma(x, w[j], o[j]);
    }
  }
}

}  // namespace attrace::kernels::cpu
