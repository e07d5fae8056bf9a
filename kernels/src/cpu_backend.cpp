// CPU backend: canonical-order float64 dot products parallelized over output rows (each output
// element is computed by exactly one thread, so the thread count never changes a result).
#include "canonical_dot.hpp"
#include "cpu_epilogues.hpp"
#include "cpu_fma.hpp"
#include "cpu_linear.hpp"
#include "cpu_projection.hpp"

#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels {
namespace {

template <class T>
void check_score_shapes(HostMatrix<T> a, HostMatrix<T> b, HostMatrixMut<double> out) {
  ATTRACE_CHECK(a.cols == b.cols, InputError,
                "score_accumulate: feature widths differ (" + std::to_string(a.cols) + " vs " +
                    std::to_string(b.cols) + ")");
  ATTRACE_CHECK(out.rows == a.rows && out.cols == b.rows, InputError,
                "score_accumulate: output is " + std::to_string(out.rows) + "x" +
                    std::to_string(out.cols) + ", expected " + std::to_string(a.rows) + "x" +
                    std::to_string(b.rows));
}

// One output row. Compiled twice (AVX2 and baseline x86-64) and picked at load time: the eight
// lanes are independent accumulators, so wider vectors change speed, never a bit (no FMA: the
// build disables contraction and "avx2" does not enable FMA instructions).
template <class T>
__attribute__((target_clones("avx2", "default"))) void score_row(const T* ai, HostMatrix<T> b, double alpha, double* oi) {
  for (int64_t j = 0; j < b.rows; ++j) oi[j] += alpha * canonical_dot(ai, b.row(j), b.cols);
}

template <class T>
void cpu_score(HostMatrix<T> a, HostMatrix<T> b, double alpha, HostMatrixMut<double> out, int threads) {
  check_score_shapes(a, b, out);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < a.rows; ++i) score_row(a.row(i), b, alpha, out.row(i));
}

template <class T>
void cpu_sqnorm(HostMatrix<T> a, double alpha, double* out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < a.rows; ++i) out[i] += alpha * canonical_dot(a.row(i), a.row(i), a.cols);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : threads_(threads > 0 ? threads : cpu::hardware_threads()) {}
  std::string name() const override { return "cpu"; }
  void score_accumulate(HostMatrix<float> a, HostMatrix<float> b, double alpha,
                        HostMatrixMut<double> out) override {
    cpu_score(a, b, alpha, out, threads_);
  }
  void score_accumulate(HostMatrix<double> a, HostMatrix<double> b, double alpha,
                        HostMatrixMut<double> out) override {
    cpu_score(a, b, alpha, out, threads_);
  }
  void score_accumulate_fma(HostMatrix<float> a, HostMatrix<float> b, double alpha, HostMatrixMut<double> out) override {
    check_score_shapes(a, b, out);
    cpu::score_fma(a, b, alpha, out, threads_);
  }
  void sqnorm_accumulate_fma(HostMatrix<float> a, double alpha, double* out) override {
    cpu::sqnorm_fma(a, alpha, out, threads_);
  }
  void linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out) override {
    cpu::check_linear_shapes(a, bt, out);
    cpu::linear_fma(a, bt, bias, out, threads_);
  }
  void score_accumulate_blas(HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math,
                             HostMatrixMut<double> out) override {
    cpu::score_blas(a, b, alpha, math, out);
  }
  void score_accumulate_blas(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out) override {
    cpu::score_blas(a, b, alpha, out);
  }
  void sqnorm_accumulate(HostMatrix<float> a, double alpha, double* out) override {
    cpu_sqnorm(a, alpha, out, threads_);
  }
  void sqnorm_accumulate(HostMatrix<double> a, double alpha, double* out) override {
    cpu_sqnorm(a, alpha, out, threads_);
  }
  void segmented_row_sum(HostMatrix<double> x, const int64_t* segment,
                         HostMatrixMut<double> out) override {
    cpu::segmented_row_sum(x, segment, out);
  }
  std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k) override {
    return cpu::column_topk(x, k);
  }
  void project_dense(HostMatrix<float> g, const ProjectionSpec& s, HostMatrixMut<float> out) override {
    cpu::project_dense(g, s, out, threads_);
  }
  void project_dense(HostMatrix<BFloat16> g, const ProjectionSpec& s, HostMatrixMut<float> out) override {
    cpu::project_dense(g, s, out, threads_);
  }
  void project_dense(HostMatrix<Half> g, const ProjectionSpec& s, HostMatrixMut<float> out) override {
    cpu::project_dense(g, s, out, threads_);
  }
  void project_kronecker(HostMatrix<float> x, HostMatrix<float> delta, int64_t positions, const ProjectionSpec& in,
                         const ProjectionSpec& out_spec, HostMatrixMut<float> out) override {
    cpu::project_kronecker(*this, x, delta, positions, in, out_spec, out, threads_);
  }

 private:
  int threads_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace attrace::kernels
