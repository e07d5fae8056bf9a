// The CPU Linear-layer product (Backend::linear_fma), compiled once per instruction set
// (cpu_linear_avx2.cpp, cpu_linear_avx512.cpp) with ATTRACE_LINEAR_ISA set to 2 or 512 and the
// matching compiler flags. Every output is one float32 chain: c = bias[j] (or +0), then
// c = fmaf(a[i][q], bt[q][j], c) for q ascending. An outer-product microkernel computes exactly
// that: per step q it broadcasts a[i][q] for MR rows and does one vector FMA per NR/L columns of
// row q of bt, so each output lane sees the chain's FMAs in the chain's order. The q axis is cut
// into panels of KC steps only to keep the operands in cache: between panels the accumulator is
// stored to `out` as float32 and reloaded, which is exact (it is a float32 value already). The
// blocking, the instruction set and the thread count therefore change speed only, never a bit.
//
// As in cpu_fma_impl.hpp, this file avoids inline functions from other headers (std::,
// matrix.hpp): an out-of-line copy compiled with AVX-512 flags could be picked by the linker for
// code running on a machine without AVX-512.
//
// Layout: bt is packed once per call as [column panel][q][NR] (zero columns past m), shared by
// all threads; rows of a are read in place, except a last micro block of fewer than MR rows,
// copied with zero rows added. Zero padding touches only outputs that are never stored; q is
// never padded (an extra fmaf(0, 0, c) would turn a -0 accumulator into +0).
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if ATTRACE_LINEAR_ISA == 512
#define ATTRACE_LINEAR_NS avx512
#else
#define ATTRACE_LINEAR_NS avx2
#endif

namespace attrace::kernels::cpu::ATTRACE_LINEAR_NS {
namespace {

#if ATTRACE_LINEAR_ISA == 512
using Vec = __m512;
constexpr int L = 16;  // floats per vector
constexpr int NV = 2;  // vectors of columns per micro tile: NR = 32 (divides 256, 768, 1024)
constexpr int MR = 12; // rows per micro tile: 24 accumulators + 2 bt vectors + 1 broadcast of 32 registers
inline Vec vload(const float* p) { return _mm512_load_ps(p); }
inline Vec vloadu(const float* p) { return _mm512_loadu_ps(p); }
inline void vstoreu(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
#else
using Vec = __m256;
constexpr int L = 8;
constexpr int NV = 2;  // NR = 16
constexpr int MR = 6;  // 12 accumulators + 2 bt vectors + 1 broadcast of 16 registers
inline Vec vload(const float* p) { return _mm256_load_ps(p); }
inline Vec vloadu(const float* p) { return _mm256_loadu_ps(p); }
inline void vstoreu(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
#endif
constexpr int NR = NV * L;     // columns per micro tile
constexpr int64_t KC = 256;    // q steps per panel: MR rows of it (12 KiB) stay in L1
constexpr int64_t MC = 8 * MR; // rows per thread block (the unit of work handed to a thread)

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// One MR x NR tile: acc = init (a packed bias row, first panel) or the tile of c (later panels),
// then kc steps acc[r][v] = fma(a[r][q], bp[q][v], acc[r][v]), stored back to c. The MR rows of a
// are read in place (row stride lda): each step broadcasts one element per row, all rows sharing
// one index register, so A needs no packing.
inline void micro(const float* a, int64_t lda, const float* bp, int64_t kc, float* c, int64_t ldc, const float* init) {
  Vec acc[MR][NV];
  if (init != nullptr) {
    for (int v = 0; v < NV; ++v) {
      const Vec b0 = vload(init + v * L);
      for (int r = 0; r < MR; ++r) acc[r][v] = b0;
    }
  } else {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = vloadu(c + r * ldc + v * L);
  }
  const float* ar[MR];
  for (int r = 0; r < MR; ++r) ar[r] = a + r * lda;
  for (int64_t q = 0; q < kc; ++q) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = vload(bp + q * NR + v * L);
    for (int r = 0; r < MR; ++r) {
      const Vec av = vbroadcast(ar[r] + q);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfma(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstoreu(c + r * ldc + v * L, acc[r][v]);
}

// Packs columns [jp*NR, jp*NR + NR) of bt (k x m) as [q][NR], zero past m.
inline void pack_b(const float* bt, int64_t ldb, int64_t k, int64_t m, int64_t jp, float* dst) {
  const int64_t j0 = jp * NR, valid = min64(NR, m - j0);
  for (int64_t q = 0; q < k; ++q) {
    const float* src = bt + q * ldb + j0;
    float* d = dst + q * NR;
    std::memcpy(d, src, static_cast<size_t>(valid) * sizeof(float));
    for (int64_t c = valid; c < NR; ++c) d[c] = 0.0f;
  }
}

// A tile with fewer than NR columns left: computed in a full-size scratch tile so that the
// microkernel never reads or writes outside `out`; only the valid part is copied back.
inline void micro_edge(const float* a, int64_t lda, const float* bp, int64_t kc, float* c, int64_t ldc, const float* init,
                       int64_t rows, int64_t cols) {
  alignas(64) float tile[MR * NR];
  if (init == nullptr)
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) tile[r * NR + j] = (r < rows && j < cols) ? c[r * ldc + j] : 0.0f;
  micro(a, lda, bp, kc, tile, NR, init);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * ldc, tile + r * NR, static_cast<size_t>(cols) * sizeof(float));
}

}  // namespace

/// out (n x m, leading dimension ldo) = bias + a (n x k) bt (k x m), each output one float32 FMA
/// chain over q ascending (Backend::linear_fma). `bias` may be null (chains start at +0). False
/// when the packing buffers cannot be allocated (out is unchanged then).
bool linear(const float* a, int64_t lda, int64_t n, const float* bt, int64_t ldb, int64_t k, int64_t m, const float* bias,
            float* out, int64_t ldo, int threads) {
  if (n <= 0 || m <= 0) return true;
  const int64_t panels = (m + NR - 1) / NR;
  // Small products run on the calling thread: a parallel region costs more than they do.
  const bool parallel = threads > 1 && static_cast<double>(n) * static_cast<double>(m) * static_cast<double>(k) > 1e6;
  const int team = parallel ? threads : 1;
  // Rows per thread block: at most MC, fewer when that leaves threads idle (any split gives the
  // same bits).
  const int64_t per_thread = (n + team - 1) / team;
  const int64_t mc = min64(MC, (per_thread + MR - 1) / MR * MR);
  const int64_t kc_max = k < KC ? (k > 0 ? k : 1) : KC;
  const size_t b_bytes = static_cast<size_t>(panels * (k > 0 ? k : 1) * NR) * sizeof(float);
  const size_t a_stride = static_cast<size_t>((MR * kc_max + 15) / 16 * 16);  // floats, 64-byte multiples
  const size_t bias_bytes = static_cast<size_t>(panels * NR) * sizeof(float);
  float* bpack = static_cast<float*>(std::aligned_alloc(64, (b_bytes + 63) / 64 * 64));
  float* abuf = static_cast<float*>(std::aligned_alloc(64, a_stride * sizeof(float) * static_cast<size_t>(team)));
  float* bias_pad = static_cast<float*>(std::aligned_alloc(64, (bias_bytes + 63) / 64 * 64));
  if (bpack == nullptr || abuf == nullptr || bias_pad == nullptr) {
    std::free(bpack);
    std::free(abuf);
    std::free(bias_pad);
    return false;
  }
  for (int64_t j = 0; j < panels * NR; ++j) bias_pad[j] = (bias != nullptr && j < m) ? bias[j] : 0.0f;
  const int64_t blocks = (n + mc - 1) / mc;
  // bt is packed before the parallel region (k x m copies against n x k x m FMAs): the only
  // barrier left is the region's end, so a thread that starts late (a busy machine) delays the
  // others once, not twice.
  for (int64_t jp = 0; jp < panels; ++jp) pack_b(bt, ldb, k, m, jp, bpack + jp * k * NR);
#pragma omp parallel num_threads(team) if (parallel)
  {
    float* edge_rows = abuf + static_cast<size_t>(omp_get_thread_num()) * a_stride;
    // Each output tile belongs to one row block, computed whole by whichever thread takes the
    // block, with the same operations on any thread: the assignment cannot change a bit, so it is
    // dynamic. On a busy machine a thread often starts a scheduler tick (4 ms) late; the others
    // then take its blocks instead of waiting for it (8192 x 256 x 256 on 2 loaded vCPUs: 32 ms
    // static, 24 ms dynamic).
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t i0 = blk * mc, rows = min64(mc, n - i0);
      if (k == 0) {  // empty chains: out = bias (or +0)
        for (int64_t r = 0; r < rows; ++r) std::memcpy(out + (i0 + r) * ldo, bias_pad, static_cast<size_t>(m) * sizeof(float));
        continue;
      }
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t kc = min64(KC, k - pc);
        // Row micro blocks outside, column panels inside: the block's MR rows of this q panel stay
        // in L1 while the packed panel of bt streams from L2.
        for (int64_t r0 = 0; r0 < rows; r0 += MR) {
          const int64_t rr = min64(MR, rows - r0);
          const float* ar = a + (i0 + r0) * lda + pc;
          int64_t ld = lda;
          if (rr < MR) {  // the last rows: a zero-padded copy, so that the microkernel reads MR rows
            for (int64_t r = 0; r < MR; ++r)
              for (int64_t q = 0; q < kc; ++q) edge_rows[r * kc + q] = r < rr ? ar[r * lda + q] : 0.0f;
            ar = edge_rows;
            ld = kc;
          }
          for (int64_t jp = 0; jp < panels; ++jp) {
            const float* bp = bpack + (jp * k + pc) * NR;
            const float* init = pc == 0 ? bias_pad + jp * NR : nullptr;
            const int64_t j0 = jp * NR, cols = min64(NR, m - j0);
            float* c = out + (i0 + r0) * ldo + j0;
            if (rr == MR && cols == NR)
              micro(ar, ld, bp, kc, c, ldo, init);
            else
              micro_edge(ar, ld, bp, kc, c, ldo, init, rr, cols);
          }
        }
      }
    }
  }
  std::free(bpack);
  std::free(abuf);
  std::free(bias_pad);
  return true;
}

}  // namespace attrace::kernels::cpu::ATTRACE_LINEAR_NS
