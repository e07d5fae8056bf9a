// CPU kernels of the FMA scoring order: picks the widest instruction set this CPU has (AVX-512,
// AVX2, or the one-element-at-a-time reference where neither has FMA). All give the same bits.
#include "cpu_fma.hpp"

#include "fma_dot.hpp"

#include <algorithm>
#include <new>
#include <vector>

namespace attrace::kernels::cpu {
namespace avx2 {
bool score(const float* a, int64_t lda, int64_t n, const float* b, int64_t ldb, int64_t m, int64_t p, double alpha,
           double* out, int64_t ldo, double* scratch, int threads);
double dot(const float* a, const float* b, int64_t p);
}  // namespace avx2
namespace avx512 {
bool score(const float* a, int64_t lda, int64_t n, const float* b, int64_t ldb, int64_t m, int64_t p, double alpha,
           double* out, int64_t ldo, double* scratch, int threads);
}  // namespace avx512

static_assert(kFmaChunk == 512, "cpu_fma_impl.hpp hard-codes the chunk length");

namespace {

enum class Isa { reference, avx2, avx512 };

Isa detect() {
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
  if (fma && __builtin_cpu_supports("avx2")) return Isa::avx2;
  return Isa::reference;
}

Isa isa() {
  static const Isa v = detect();
  return v;
}

}  // namespace

const char* fma_isa() {
  switch (isa()) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "reference";
  }
}

void score_fma(HostMatrix<float> a, HostMatrix<float> b, double alpha, HostMatrixMut<double> out, int threads) {
  if (a.rows == 0 || b.rows == 0) return;
  const Isa v = isa();
  if (v == Isa::reference || a.cols == 0) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < a.rows; ++i)
      for (int64_t j = 0; j < b.rows; ++j) out.row(i)[j] += alpha * fma_dot_reference(a.row(i), b.row(j), a.cols);
    return;
  }
  // One p-block (p <= 1024, projected features): straight into out. Wider rows carry float64
  // totals between p-blocks in a scratch matrix, bounded by taking rows in panels.
  constexpr int64_t kBlockElems = 1024;
  constexpr int64_t kPanelRows = 480;
  std::vector<double> scratch;
  const int64_t panel = a.cols <= kBlockElems ? a.rows : kPanelRows;
  for (int64_t r0 = 0; r0 < a.rows; r0 += panel) {
    const int64_t rows = std::min(panel, a.rows - r0);
    if (a.cols > kBlockElems) scratch.resize(static_cast<size_t>(rows * b.rows));
    double* sp = a.cols > kBlockElems ? scratch.data() : nullptr;
    const bool ok = v == Isa::avx512
                        ? avx512::score(a.row(r0), a.ld, rows, b.data, b.ld, b.rows, a.cols, alpha, out.row(r0), out.ld, sp, threads)
                        : avx2::score(a.row(r0), a.ld, rows, b.data, b.ld, b.rows, a.cols, alpha, out.row(r0), out.ld, sp, threads);
    if (!ok) throw std::bad_alloc();
  }
}

void sqnorm_fma(HostMatrix<float> a, double alpha, double* out, int threads) {
  const bool fast = isa() != Isa::reference;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < a.rows; ++i)
    out[i] += alpha * (fast ? avx2::dot(a.row(i), a.row(i), a.cols) : fma_dot_reference(a.row(i), a.row(i), a.cols));
}

}  // namespace attrace::kernels::cpu
