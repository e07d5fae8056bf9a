// The CPU FMA scoring kernel, compiled once per instruction set (cpu_fma_avx2.cpp,
// cpu_fma_avx512.cpp) with ATTRACE_FMA_ISA set to 2 or 512 and the matching compiler flags.
// Every variant computes the FMA order of kernels/src/fma_dot.hpp exactly: each output's eight
// float32 lanes see the same fused multiply-adds in the same order, so the instruction set, the
// blocking and the thread count change speed only. The file avoids inline functions from other
// headers (std::, matrix.hpp): an out-of-line copy of one compiled with AVX-512 flags could be
// picked by the linker for code running on a machine without AVX-512.
//
// Layout: per p-block of kBlock elements (whole chunks), each micro block of R rows of A is packed
// as [step][R][8] and each of G groups of W rows of B as [step][G][W x 8] (W rows per vector, one
// 8-float half each), so a step's operands are contiguous; zero padded past p, n and m (a zero
// product leaves a lane unchanged because lanes are never -0).
#include <immintrin.h>
#if ATTRACE_FMA_ISA == 512
// GCC 12 warns inside its own AVX-512 cast intrinsics (an undefined upper half by design).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if ATTRACE_FMA_ISA == 512
#define ATTRACE_FMA_NS avx512
#else
#define ATTRACE_FMA_NS avx2
#endif

namespace attrace::kernels::cpu::ATTRACE_FMA_NS {
namespace {

constexpr int64_t kChunk = 512;                  // kFmaChunk (checked in cpu_fma.cpp)
constexpr int64_t kChunkSteps = kChunk / 8;      // 8-element steps per chunk
constexpr int64_t kBlock = 1024;                 // p-block: whole chunks, A block fits L1
constexpr int64_t kBlockSteps = kBlock / 8;

#if ATTRACE_FMA_ISA == 512
using Vec = __m512;
constexpr int W = 2;   // B rows per vector
constexpr int R = 6;   // A rows per micro block
constexpr int G = 4;   // B groups per micro block (8 rows): 24 accumulators of 32 registers
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload_b(const float* p) { return _mm512_load_ps(p); }
inline Vec vload_a(const float* p) { return _mm512_broadcast_f32x8(_mm256_load_ps(p)); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline __m256 half(Vec v, int w) { return w == 0 ? _mm512_castps512_ps256(v) : _mm512_extractf32x8_ps(v, 1); }
#else
using Vec = __m256;
constexpr int W = 1;
constexpr int R = 4;
constexpr int G = 3;   // 12 accumulators of 16 registers
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload_b(const float* p) { return _mm256_load_ps(p); }
inline Vec vload_a(const float* p) { return _mm256_load_ps(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline __m256 half(Vec v, int) { return v; }
#endif

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The chunk value of eight float32 lanes: ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)) in float64.
inline double lane_tree(__m256 v) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  const __m256d s = _mm256_add_pd(lo, hi);  // l0+l4, l1+l5, l2+l6, l3+l7
  const __m128d u = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return _mm_cvtsd_f64(u) + _mm_cvtsd_f64(_mm_unpackhi_pd(u, u));
}

// totals[r][w] of one R x (G*W) block += the FMA-order value of steps [0, steps) of the block.
#if ATTRACE_FMA_ISA == 512
// The lane trees of four outputs at once: x holds outputs (0, 1), y outputs (2, 3), eight float32
// lanes each. Returns [v0, v0, v1, v1, v2, v2, v3, v3] with v = ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)),
// the same additions as lane_tree, four outputs per instruction.
inline __m512d lane_tree4(__m512 x, __m512 y) {
  const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(x)), x1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1));
  const __m512d y0 = _mm512_cvtps_pd(_mm512_castps512_ps256(y)), y1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(y, 1));
  // s_k = l_k + l_{k+4}: [out0 s0..s3 | out1 s0..s3] and the same for outputs 2, 3.
  const __m512d s01 = _mm512_add_pd(_mm512_shuffle_f64x2(x0, x1, 0x44), _mm512_shuffle_f64x2(x0, x1, 0xEE));
  const __m512d s23 = _mm512_add_pd(_mm512_shuffle_f64x2(y0, y1, 0x44), _mm512_shuffle_f64x2(y0, y1, 0xEE));
  // u0 = s0 + s2, u1 = s1 + s3 for the four outputs: [out0 u0 u1 | out1 u0 u1 | out2 .. | out3 ..].
  const __m512d u = _mm512_add_pd(_mm512_shuffle_f64x2(s01, s23, 0x88), _mm512_shuffle_f64x2(s01, s23, 0xDD));
  return _mm512_add_pd(u, _mm512_permute_pd(u, 0x55));  // u0 + u1 (and u1 + u0, the same value)
}
#endif

inline void micro(const float* ap, const float* bp, int64_t steps, double (*t)[G * W]) {
#if ATTRACE_FMA_ISA == 512
  static_assert(G * W == 8, "two groups of four outputs per row");
  // Totals with each value twice, as lane_tree4 returns them.
  __m512d td[R][2];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) {
      const double* v = t[r] + 4 * h;
      td[r][h] = _mm512_set_pd(v[3], v[3], v[2], v[2], v[1], v[1], v[0], v[0]);
    }
#endif
  for (int64_t s0 = 0; s0 < steps; s0 += kChunkSteps) {
    const int64_t s1 = min64(steps, s0 + kChunkSteps);
    Vec acc[R][G];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) acc[r][g] = vzero();
    for (int64_t s = s0; s < s1; ++s) {
      Vec bv[G];
      for (int g = 0; g < G; ++g) bv[g] = vload_b(bp + (s * G + g) * (8 * W));
      for (int r = 0; r < R; ++r) {
        const Vec av = vload_a(ap + (s * R + r) * 8);
        for (int g = 0; g < G; ++g) acc[r][g] = vfma(av, bv[g], acc[r][g]);
      }
    }
#if ATTRACE_FMA_ISA == 512
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < 2; ++h) td[r][h] = _mm512_add_pd(td[r][h], lane_tree4(acc[r][2 * h], acc[r][2 * h + 1]));
#else
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g)
        for (int w = 0; w < W; ++w) t[r][g * W + w] += lane_tree(half(acc[r][g], w));
#endif
  }
#if ATTRACE_FMA_ISA == 512
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) {
      alignas(64) double v[8];
      _mm512_store_pd(v, td[r][h]);
      for (int c = 0; c < 4; ++c) t[r][4 * h + c] = v[2 * c];
    }
#endif
}

// Packs the R rows of A block `blk` for the p-block at q0 as [step][R][8] (a micro block's data
// for one step is contiguous), zero past n and p.
inline void pack_a(const float* x, int64_t ld, int64_t n, int64_t p, int64_t blk, int64_t q0, int64_t steps, float* dst) {
  const int64_t len = min64(kBlock, p - q0);
  for (int r = 0; r < R; ++r) {
    const int64_t i = blk * R + r;
    const int64_t valid = i < n ? len : 0;
    const float* src = x + i * ld + q0;
    int64_t s = 0;
    for (; (s + 1) * 8 <= valid; ++s) std::memcpy(dst + (s * R + r) * 8, src + s * 8, 8 * sizeof(float));
    for (; s < steps; ++s)
      for (int l = 0; l < 8; ++l) dst[(s * R + r) * 8 + l] = s * 8 + l < valid ? src[s * 8 + l] : 0.0f;
  }
}

// Packs the G groups of W rows of B micro block `mb` as [step][G][W][8], zero past m and p.
inline void pack_b(const float* x, int64_t ld, int64_t m, int64_t p, int64_t mb, int64_t q0, int64_t steps, float* dst) {
  const int64_t len = min64(kBlock, p - q0);
  for (int gw = 0; gw < G * W; ++gw) {
    const int64_t j = mb * G * W + gw;
    const int64_t valid = j < m ? len : 0;
    const float* src = x + j * ld + q0;
    int64_t s = 0;
    for (; (s + 1) * 8 <= valid; ++s) std::memcpy(dst + (s * G * W + gw) * 8, src + s * 8, 8 * sizeof(float));
    for (; s < steps; ++s)
      for (int l = 0; l < 8; ++l) dst[(s * G * W + gw) * 8 + l] = s * 8 + l < valid ? src[s * 8 + l] : 0.0f;
  }
}

}  // namespace

/// out[i][j] (leading dimension ldo) += alpha * fma_dot(a_i, b_j) for all pairs. When p spans more
/// than one p-block, `scratch` (n x m doubles, leading dimension m) carries the float64 totals
/// between blocks; it may be null otherwise. False when the packing buffers cannot be allocated
/// (nothing is changed then).
bool score(const float* a, int64_t lda, int64_t n, const float* b, int64_t ldb, int64_t m, int64_t p, double alpha,
           double* out, int64_t ldo, double* scratch, int threads) {
  if (n <= 0 || m <= 0 || p <= 0) return true;
  const int64_t blocks = (n + R - 1) / R;                  // micro blocks of A rows
  const int64_t groups = ((m + W - 1) / W + G - 1) / G * G;  // B groups, padded to whole micro blocks
  constexpr int64_t kPanelGroups = 48 / W;                 // B panel: 48 rows x kBlock (192 KiB) stays in L2
  static_assert(kPanelGroups % G == 0, "panels hold whole micro blocks");
  // Packed steps per block: a whole p-block, or fewer when the rows are short.
  const int64_t bs = min64(kBlockSteps, (p + 7) / 8);
  const size_t a_floats = static_cast<size_t>(blocks * R * bs * 8);
  const size_t b_floats = static_cast<size_t>(groups * bs * 8 * W);
  float* apack = static_cast<float*>(std::aligned_alloc(64, (a_floats * sizeof(float) + 63) / 64 * 64));
  float* bpack = static_cast<float*>(std::aligned_alloc(64, (b_floats * sizeof(float) + 63) / 64 * 64));
  if (apack == nullptr || bpack == nullptr) {
    std::free(apack);
    std::free(bpack);
    return false;
  }
  // Small products run on the calling thread: a parallel region costs more than they do.
  const bool parallel = threads > 1 && static_cast<double>(n) * static_cast<double>(m) * static_cast<double>(p) > 4e6;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    for (int64_t q0 = 0; q0 < p; q0 += kBlock) {
      const int64_t steps = (min64(kBlock, p - q0) + 7) / 8;
      const bool first = q0 == 0, last = q0 + kBlock >= p;
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) pack_a(a, lda, n, p, blk, q0, steps, apack + blk * R * bs * 8);
#pragma omp for schedule(static)
      for (int64_t mb = 0; mb < groups / G; ++mb) pack_b(b, ldb, m, p, mb, q0, steps, bpack + mb * G * bs * 8 * W);
      // Each thread keeps the same A blocks in every panel (static schedule over the same
      // range), so its rows of `scratch` and `out` are its own and panels need no barrier.
      for (int64_t g0 = 0; g0 < groups; g0 += kPanelGroups) {
        const int64_t g1 = min64(groups, g0 + kPanelGroups);
#pragma omp for schedule(static) nowait
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const float* ap = apack + blk * R * bs * 8;
          for (int64_t g = g0; g < g1; g += G) {
            double t[R][G * W];
            const int64_t i0 = blk * R, j0 = g * W;
            for (int r = 0; r < R; ++r)
              for (int c = 0; c < G * W; ++c)
                t[r][c] = (!first && i0 + r < n && j0 + c < m) ? scratch[(i0 + r) * m + j0 + c] : 0.0;
            micro(ap, bpack + g * bs * 8 * W, steps, t);
            for (int r = 0; r < R; ++r)
              for (int c = 0; c < G * W; ++c) {
                if (i0 + r >= n || j0 + c >= m) continue;
                if (last)
                  out[(i0 + r) * ldo + j0 + c] += alpha * t[r][c];
                else
                  scratch[(i0 + r) * m + j0 + c] = t[r][c];
              }
          }
        }
      }
#pragma omp barrier
    }
  }
  std::free(apack);
  std::free(bpack);
  return true;
}

/// fma_dot(a, b) of two length-p rows (used for squared norms).
double dot(const float* a, const float* b, int64_t p) {
  double total = 0.0;
  for (int64_t c0 = 0; c0 < p; c0 += kChunk) {
    const int64_t c1 = min64(p, c0 + kChunk);
    __m256 acc = _mm256_setzero_ps();
    int64_t q = c0;
    for (; q + 8 <= c1; q += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + q), _mm256_loadu_ps(b + q), acc);
    if (q < c1) {
      alignas(32) float ta[8] = {0, 0, 0, 0, 0, 0, 0, 0}, tb[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int l = 0; q + l < c1; ++l) {
        ta[l] = a[q + l];
        tb[l] = b[q + l];
      }
      acc = _mm256_fmadd_ps(_mm256_load_ps(ta), _mm256_load_ps(tb), acc);
    }
    total += lane_tree(acc);
  }
  return total;
}

}  // namespace attrace::kernels::cpu::ATTRACE_FMA_NS
