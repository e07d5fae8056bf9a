#include "cpu_epilogues.hpp"

#include <attrace/error.hpp>
#include <attrace/kernels/rounding.hpp>
#include <attrace/kernels/topk_order.hpp>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#ifdef ATTRACE_WITH_BLAS
#include <cblas.h>
#endif

namespace attrace::kernels::cpu {

void segmented_row_sum(HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out) {
  ATTRACE_CHECK(out.cols == x.cols, InputError, "segmented_row_sum: column counts differ");
  for (int64_t i = 0; i < x.rows; ++i) {
    const int64_t s = segment[i];
    ATTRACE_CHECK(s >= 0 && s < out.rows, InputError,
                  "segmented_row_sum: row " + std::to_string(i) + " has segment " +
                      std::to_string(s) + " outside [0, " + std::to_string(out.rows) + ")");
    const double* xi = x.row(i);
    double* os = out.row(s);
    for (int64_t j = 0; j < x.cols; ++j) os[j] += xi[j];
  }
}

namespace {

// Rows of a (and of b) per GEMM call: bounds the scratch tile at 2048 x 2048 float32 (16 MiB)
// whatever the matrix sizes.
constexpr int64_t kGemmTile = 2048;

// Scratch buffers kept per thread across calls: a fresh multi-megabyte allocation per call costs
// more in zero-filling and page faults than the GEMM itself at engine batch sizes.
template <class T>
std::vector<T>& scratch(int slot) {
  thread_local std::vector<T> buffers[3];
  return buffers[slot];
}

// Rows [r0, r0 + rows) of m, each entry passed through `round`, into `v` (dense).
template <class Round>
const float* rounded_rows(HostMatrix<float> m, int64_t r0, int64_t rows, Round round, std::vector<float>& v) {
  if (v.size() < static_cast<size_t>(rows * m.cols)) v.resize(static_cast<size_t>(rows * m.cols));
  for (int64_t i = 0; i < rows; ++i) {
    const float* src = m.row(r0 + i);
    float* dst = v.data() + i * m.cols;
    for (int64_t q = 0; q < m.cols; ++q) dst[q] = round(src[q]);
  }
  return v.data();
}

template <class T>
void score_blas_impl(HostMatrix<T> a, HostMatrix<T> b, double alpha, GemmMath math, HostMatrixMut<double> out) {
  ATTRACE_CHECK(a.cols == b.cols && out.rows == a.rows && out.cols == b.rows, InputError, "score_accumulate_blas: shapes do not match");
  ATTRACE_CHECK((std::is_same_v<T, float> || math == GemmMath::ieee), InputError,
                std::string("score_accumulate_blas: gemm_math '") + to_string(math) + "' needs float32 features");
#ifdef ATTRACE_WITH_BLAS
  if (a.rows == 0 || b.rows == 0) return;
  ATTRACE_CHECK(a.cols < INT_MAX && a.ld < INT_MAX && b.ld < INT_MAX, InputError,
                "score_accumulate_blas: feature width exceeds the BLAS interface's 32-bit sizes");
  const int k = static_cast<int>(a.cols);
  // Rows [r0, r0 + rows) of m as the GEMM reads them: in place (ieee), or a rounded copy in
  // scratch slot `slot` (tf32 / bf16). Sets ld to the operand's leading dimension.
  const auto operand = [&](HostMatrix<T> m, int64_t r0, int64_t rows, int slot, int& ld) -> const T* {
    ld = static_cast<int>(m.ld);
    if constexpr (std::is_same_v<T, float>) {
      if (math == GemmMath::ieee) return m.row(r0);
      ld = k;
      return math == GemmMath::tf32 ? rounded_rows(m, r0, rows, round_tf32, scratch<float>(slot))
                                    : rounded_rows(m, r0, rows, round_bf16, scratch<float>(slot));
    }
    return m.row(r0);
  };
  std::vector<T>& tile = scratch<T>(0);
  const auto tile_size = static_cast<size_t>(std::min(kGemmTile, a.rows) * std::min(kGemmTile, b.rows));
  if (tile.size() < tile_size) tile.resize(tile_size);
  for (int64_t i0 = 0; i0 < a.rows; i0 += kGemmTile) {
    const int64_t ni = std::min(kGemmTile, a.rows - i0);
    int lda = 0;
    const T* ap = operand(a, i0, ni, 1, lda);
    for (int64_t j0 = 0; j0 < b.rows; j0 += kGemmTile) {
      const int64_t nj = std::min(kGemmTile, b.rows - j0);
      int ldb = 0;
      const T* bp = operand(b, j0, nj, 2, ldb);
      const int m = static_cast<int>(ni), n = static_cast<int>(nj);
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, ap, lda, bp, ldb, 0.0f, tile.data(), n);
      else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0, ap, lda, bp, ldb, 0.0, tile.data(), n);
      for (int64_t i = 0; i < ni; ++i) {
        double* o = out.row(i0 + i) + j0;
        for (int64_t j = 0; j < nj; ++j) o[j] += alpha * static_cast<double>(tile[static_cast<size_t>(i * n + j)]);
      }
    }
  }
#else
  (void)alpha;
  throw InputError("scoring = \"blas\" requested but this build has no BLAS");
#endif
}

}  // namespace

void score_blas(HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math, HostMatrixMut<double> out) {
  score_blas_impl(a, b, alpha, math, out);
}
void score_blas(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out) {
  score_blas_impl(a, b, alpha, GemmMath::ieee, out);
}

namespace {

// "a ranks before b" (topk_order.hpp, the order the CUDA backend uses too): proponents, then opponents.
bool better_high(const TopEntry& a, const TopEntry& b) { return ranks_before(a.score, a.row, b.score, b.row, true); }
bool better_low(const TopEntry& a, const TopEntry& b) { return ranks_before(a.score, a.row, b.score, b.row, false); }

// Keeps the best k entries under `better` in a heap whose top is the worst kept entry.
template <class Better>
void push_bounded(std::vector<TopEntry>& heap, int64_t k, TopEntry e, Better better) {
  if (static_cast<int64_t>(heap.size()) < k) {
    heap.push_back(e);
    std::push_heap(heap.begin(), heap.end(), better);
  } else if (better(e, heap.front())) {
    std::pop_heap(heap.begin(), heap.end(), better);
    heap.back() = e;
    std::push_heap(heap.begin(), heap.end(), better);
  }
}

}  // namespace

std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k) {
  ATTRACE_CHECK(k >= 0, InputError, "column_topk: k must be >= 0, got " + std::to_string(k));
  const int64_t kk = std::min(k, x.rows);
  std::vector<TopK> result(static_cast<size_t>(x.cols));
  for (auto& t : result) {
    t.proponents.reserve(static_cast<size_t>(kk) + 1);
    t.opponents.reserve(static_cast<size_t>(kk) + 1);
  }
  if (kk == 0) return result;
  for (int64_t i = 0; i < x.rows; ++i) {
    const double* xi = x.row(i);
    for (int64_t j = 0; j < x.cols; ++j) {
      ATTRACE_CHECK(!std::isnan(xi[j]), NumericError,
                    "column_topk: NaN score at row " + std::to_string(i) + ", column " +
                        std::to_string(j));
      const TopEntry e{i, xi[j]};
      push_bounded(result[static_cast<size_t>(j)].proponents, kk, e, better_high);
      push_bounded(result[static_cast<size_t>(j)].opponents, kk, e, better_low);
    }
  }
  for (auto& t : result) {
    std::sort_heap(t.proponents.begin(), t.proponents.end(), better_high);
    std::sort_heap(t.opponents.begin(), t.opponents.end(), better_low);
  }
  return result;
}

}  // namespace attrace::kernels::cpu
