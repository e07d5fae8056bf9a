#include "cpu_projection.hpp"

#include <attrace/error.hpp>

#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace attrace::kernels::cpu {

int hardware_threads() {
  // ATTRACE_THREADS (a positive integer) overrides the core count: a speed setting only (every
  // output is computed by one thread in a fixed order), used by the determinism tests.
  if (const char* env = std::getenv("ATTRACE_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0 && v <= 4096) return static_cast<int>(v);
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

namespace {

constexpr int64_t kColumns = 256;  // output columns per task (multiple of 128: whole sign blocks)
constexpr int64_t kRows = 32;      // rows of P generated at a time
constexpr int64_t kRowBlock = 64;  // batch rows per work item
static_assert(kProjectionChunk % kRows == 0, "a generated block of rows never straddles two chunks");

void check(int64_t rows, int64_t p, const ProjectionSpec& s, HostMatrixMut<float> out) {
  ATTRACE_CHECK(s.k > 0, InputError, "projection: k must be >= 1, got " + std::to_string(s.k));
  ATTRACE_CHECK(out.rows == rows && out.cols == s.k, InputError,
                "projection: output is " + std::to_string(out.rows) + "x" + std::to_string(out.cols) + ", expected " +
                    std::to_string(rows) + "x" + std::to_string(s.k));
  ATTRACE_CHECK(p >= 1, InputError, "projection: input width must be >= 1");
}

// Fills e[r][c] (kRows x kColumns) with unscaled entries of rows q0.. and columns j0..
__attribute__((target_clones("avx2", "default"))) void generate(const ProjectionSpec& s, int64_t q0, int64_t rows, int64_t j0,
                                                                    int64_t cols, float* e) {
  for (int64_t r = 0; r < rows; ++r) {
    float* er = e + r * kColumns;
    if (s.kind == ProjectionKind::rademacher) {
      for (int64_t c0 = 0; c0 < cols; c0 += 128) {
        const Philox4 block = rademacher_block(s, q0 + r, (j0 + c0) >> 7);
        if (cols - c0 >= 128) {  // whole block: the same bits as rademacher_sign, in a vectorisable form
          for (int w = 0; w < 4; ++w)
            for (int i = 0; i < 32; ++i) er[c0 + 32 * w + i] = static_cast<float>(1 - 2 * static_cast<int>((block.v[w] >> i) & 1u));
        } else {
          for (int64_t c = 0; c < cols - c0; ++c) er[c0 + c] = rademacher_sign(block, j0 + c0 + c);
        }
      }
    } else {
      for (int64_t c = 0; c < cols; ++c) er[c] = static_cast<float>(gaussian_unscaled(s, q0 + r, j0 + c));
    }
  }
}

// acc[b][c] += g[b][q] * e[q][c] for one block of rows, q ascending for every accumulator.
// Eight columns at a time stay in registers across the block's rows (one load of e and one
// broadcast of g per multiply-add); vectorised over columns only, never across q, so the order
// of every sum is fixed (AVX2 clone picked at load time, no FMA).
template <class T>
__attribute__((target_clones("avx2", "default"))) void accumulate(const HostMatrix<T>& g, int64_t q0, int64_t rows,
                                                                    const float* e, int64_t cols, float* acc) {
  float gv[kRows];
  for (int64_t b = 0; b < g.rows; ++b) {
    const T* gb = g.row(b) + q0;
    for (int64_t r = 0; r < rows; ++r) gv[r] = to_float(gb[r]);
    float* ab = acc + b * kColumns;
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      float a[8];
      for (int l = 0; l < 8; ++l) a[l] = ab[c0 + l];
      for (int64_t r = 0; r < rows; ++r) {
        const float* er = e + r * kColumns + c0;
        for (int l = 0; l < 8; ++l) a[l] += gv[r] * er[l];
      }
      for (int l = 0; l < 8; ++l) ab[c0 + l] = a[l];
    }
    for (; c0 < cols; ++c0)
      for (int64_t r = 0; r < rows; ++r) ab[c0] += gv[r] * e[r * kColumns + c0];
  }
}

template <class T>
void dense(HostMatrix<T> g, const ProjectionSpec& s, HostMatrixMut<float> out, int threads) {
  check(g.rows, g.cols, s, out);
  if (s.kind == ProjectionKind::identity) {
    ATTRACE_CHECK(s.k == g.cols, InputError,
                  "identity projection: k (" + std::to_string(s.k) + ") must equal the input width (" + std::to_string(g.cols) + ")");
    for (int64_t b = 0; b < g.rows; ++b)
      for (int64_t j = 0; j < s.k; ++j) out.row(b)[j] = to_float(g.row(b)[j]);
    return;
  }
  // Work items: (256-column task, block of up to 64 batch rows). Rows are independent and each
  // output is summed by one item in the canonical order (kProjectionChunk: rows of P ascending
  // within a chunk from 0.0f, chunk sums added in ascending order, scale last), so the split
  // changes speed, never a bit; it lets narrow projections (Kronecker factors, k <= 256) use
  // every thread on large batches. The chunks exist for the GPU, which sums them in parallel
  // (kernels/cuda/projection.cu); here they cost one extra add per output per 1024 rows.
  const int64_t tasks = (s.k + kColumns - 1) / kColumns, row_blocks = (g.rows + kRowBlock - 1) / kRowBlock;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.k)));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> e(static_cast<size_t>(kRows * kColumns));
    std::vector<float> acc(static_cast<size_t>(std::min(kRowBlock, g.rows) * kColumns)), total(acc.size());
#pragma omp for schedule(static)
    for (int64_t w = 0; w < tasks * row_blocks; ++w) {
      const int64_t t = w / row_blocks, b0 = (w % row_blocks) * kRowBlock, nb = std::min(kRowBlock, g.rows - b0);
      const int64_t j0 = t * kColumns, cols = std::min(kColumns, s.k - j0);
      const HostMatrix<T> gb{g.row(b0), nb, g.cols, g.ld};
      for (int64_t c0 = 0; c0 < g.cols; c0 += kProjectionChunk) {
        const int64_t c1 = std::min(c0 + kProjectionChunk, g.cols);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t q0 = c0; q0 < c1; q0 += kRows) {
          const int64_t rows = std::min(kRows, c1 - q0);
          generate(s, q0, rows, j0, cols, e.data());
          accumulate(gb, q0, rows, e.data(), cols, acc.data());
        }
        if (c0 == 0)
          total.swap(acc);  // the fold starts at the first chunk's sum (a swap, no copy)
        else
          for (size_t i = 0; i < total.size(); ++i) total[i] = total[i] + acc[i];
      }
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t c = 0; c < cols; ++c) out.row(b0 + b)[j0 + c] = total[static_cast<size_t>(b * kColumns + c)] * scale;
    }
  }
}

}  // namespace

void project_dense(HostMatrix<float> g, const ProjectionSpec& s, HostMatrixMut<float> out, int threads) {
  dense(g, s, out, threads);
}
void project_dense(HostMatrix<BFloat16> g, const ProjectionSpec& s, HostMatrixMut<float> out, int threads) {
  dense(g, s, out, threads);
}
void project_dense(HostMatrix<Half> g, const ProjectionSpec& s, HostMatrixMut<float> out, int threads) {
  dense(g, s, out, threads);
}

void project_kronecker(Backend& backend, HostMatrix<float> x, HostMatrix<float> delta, int64_t positions,
                       const ProjectionSpec& in, const ProjectionSpec& out_spec, HostMatrixMut<float> out, int threads) {
  ATTRACE_CHECK(positions >= 1 && x.rows == delta.rows && x.rows % positions == 0, InputError,
                "kronecker projection: inputs have " + std::to_string(x.rows) + " and " + std::to_string(delta.rows) +
                    " rows, not a whole number of examples of " + std::to_string(positions) + " positions");
  const int64_t b = x.rows / positions, ki = in.k, ko = out_spec.k;
  ATTRACE_CHECK(out.rows == b && out.cols == ki * ko, InputError,
                "kronecker projection: output must be " + std::to_string(b) + "x" + std::to_string(ki * ko));
  std::vector<float> xp(static_cast<size_t>(x.rows * ki)), dp(static_cast<size_t>(x.rows * ko));
  backend.project_dense(x, in, view_mut(xp.data(), x.rows, ki));
  backend.project_dense(delta, out_spec, view_mut(dp.data(), x.rows, ko));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t e = 0; e < b; ++e) {
    float* o = out.row(e);
    std::fill(o, o + ki * ko, 0.0f);
    for (int64_t t = 0; t < positions; ++t) {
      const float* xr = xp.data() + (e * positions + t) * ki;
      const float* dr = dp.data() + (e * positions + t) * ko;
      for (int64_t a = 0; a < ko; ++a)
        for (int64_t c = 0; c < ki; ++c) o[a * ki + c] += dr[a] * xr[c];
    }
  }
}

}  // namespace attrace::kernels::cpu
