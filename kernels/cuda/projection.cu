// Dense on-the-fly random projection on the GPU: out = g P with P (p x k) generated from
// (seed, stream) and never stored. Order and roundings are the CPU twin's
// (kernels/src/cpu_projection.cpp), so the two backends agree bit for bit (Gaussian entries
// excepted, docs/architecture.md):
//   partial[c] = sum over q in chunk c (kProjectionChunk rows of P), ascending, from 0.0f;
//   acc = partial[0]; acc = acc + partial[c] for c ascending; out = acc * (1/sqrt(k)).
// The chunks are what make the GPU fast: a launch computes the partials of a group of chunks in
// parallel (grid = column blocks x row blocks x chunks), then a fold kernel adds them in chunk
// order into `out`. Groups keep the scratch under kScratchFloats for any p, k and batch.
#include "resources.cuh"

#include <attrace/kernels/float_formats.hpp>
#include <attrace/kernels/philox.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace attrace::kernels::cuda {
namespace {

constexpr int kRowsPerThread = 8;   // batch rows per thread (accumulators: rows x columns)
constexpr int kColsPerThread = 8;   // output columns per thread: 8 bits of one Philox word
constexpr int kDepth = 32;          // rows of P staged in shared memory per step
constexpr int kMaxColThreads = 64;  // 512 columns (4 Philox blocks) per block
constexpr int kMaxRowGroups = 4;    // 32 batch rows per block
constexpr int kGsStride = kMaxRowGroups * kRowsPerThread + 4;  // padded against store conflicts, 16-byte rows
constexpr int64_t kScratchFloats = int64_t{1} << 24;           // 64 MiB of chunk partials at most
static_assert(kProjectionChunk % kDepth == 0, "a staged step never straddles two chunks");
static_assert(kColsPerThread * 16 == 128, "16 threads cover one Philox block of 128 columns");

// Out of line: eight inlined float64 Box-Muller evaluations per step would crowd the registers.
__device__ __noinline__ float gaussian_entry(ProjectionSpec spec, int64_t q, int64_t j) {
  return static_cast<float>(gaussian_unscaled(spec, q, j));
}

// Partial sums of chunks chunk0 + blockIdx.z over rows of P, for a tile of (8 * blockDim.y) batch
// rows and (8 * blockDim.x) columns; each thread owns 8 rows x 8 consecutive columns.
// blockDim.x is 16, 32, 48 or 64 (whole Philox blocks), blockDim.y is 1..4. `dst` receives
// partial z at dst + z * rows * k (row-major rows x k), or, with `direct` (a single chunk in all),
// the scaled result itself.
//
// Rademacher terms use one fused multiply-add: g * (+-1) is exact, so round(acc + g * s) equals
// the unfused __fadd_rn(acc, __fmul_rn(g, s)) of the CPU twin bit for bit (zeros' signs included:
// both round the same exact sum). Gaussian terms are inexact and stay unfused.
template <class T, bool kRademacher>
__global__ void __launch_bounds__(256) project_chunks_kernel(const T* __restrict__ g, int64_t rows, int64_t p,
                                                             ProjectionSpec spec, int64_t chunk0, float scale, bool direct,
                                                             float* __restrict__ dst) {
  __shared__ __align__(16) float gs[kDepth][kGsStride];            // g[b][q] staged as [q][b]
  __shared__ uint32_t words[kDepth][kMaxColThreads / 16 * 4];      // Philox words, [q][block * 4 + word]
  const int tx = threadIdx.x, ty = threadIdx.y, col_threads = blockDim.x;
  const int tid = ty * col_threads + tx, nthreads = col_threads * blockDim.y, block_rows = kRowsPerThread * blockDim.y;
  const int sign_blocks = col_threads / 16;
  const int64_t k = spec.k;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * col_threads * kColsPerThread;  // multiple of 128
  const int64_t j0 = col0 + static_cast<int64_t>(tx) * kColsPerThread;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * block_rows;
  const int shift = 8 * (tx & 3);  // this thread's 8 sign bits in word tx >> 2 of its row
  const int64_t chunk = chunk0 + blockIdx.z;
  const int64_t q_begin = chunk * kProjectionChunk, q_end = q_begin + kProjectionChunk < p ? q_begin + kProjectionChunk : p;

  float acc[kRowsPerThread][kColsPerThread];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r)
#pragma unroll
    for (int n = 0; n < kColsPerThread; ++n) acc[r][n] = 0.0f;

  for (int64_t q0 = q_begin; q0 < q_end; q0 += kDepth) {
    const int depth = static_cast<int>(q_end - q0 < kDepth ? q_end - q0 : kDepth);
    // Stage: the block's rows of g for this step (coalesced along q; rows past the batch are 0
    // and never written out) and, for Rademacher, one Philox block per (row of P, 128 columns).
    for (int i = tid; i < block_rows * kDepth; i += nthreads) {
      const int r = i / kDepth, qq = i % kDepth;
      const int64_t b = row0 + r;
      gs[qq][r] = (b < rows && qq < depth) ? to_float(g[b * p + q0 + qq]) : 0.0f;
    }
    if (kRademacher)
      for (int i = tid; i < depth * sign_blocks; i += nthreads) {
        const int qq = i / sign_blocks, sb = i % sign_blocks;
        const Philox4 w = rademacher_block(spec, q0 + qq, (col0 >> 7) + sb);
#pragma unroll
        for (int v = 0; v < 4; ++v) words[qq][sb * 4 + v] = w.v[v];
      }
    __syncthreads();
    const auto step = [&](int qq) {
      const float4 lo = *reinterpret_cast<const float4*>(&gs[qq][ty * kRowsPerThread]);
      const float4 hi = *reinterpret_cast<const float4*>(&gs[qq][ty * kRowsPerThread + 4]);
      const float gv[kRowsPerThread] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      if (kRademacher) {
        const uint32_t bits = words[qq][tx >> 2] >> shift;
        float s[kColsPerThread];
#pragma unroll
        for (int n = 0; n < kColsPerThread; ++n)  // bit n -> sign of 1.0f (bit set: -1, as rademacher_sign)
          s[n] = __uint_as_float(0x3F800000u | ((bits << (31 - n)) & 0x80000000u));
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r)
#pragma unroll
          for (int n = 0; n < kColsPerThread; ++n) acc[r][n] = __fmaf_rn(gv[r], s[n], acc[r][n]);
      } else {
        float e[kColsPerThread];
#pragma unroll
        for (int n = 0; n < kColsPerThread; ++n) e[n] = gaussian_entry(spec, q0 + qq, j0 + n);
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r)
#pragma unroll
          for (int n = 0; n < kColsPerThread; ++n) acc[r][n] = __fadd_rn(acc[r][n], __fmul_rn(gv[r], e[n]));
      }
    };
    if (depth == kDepth) {
#pragma unroll 4
      for (int qq = 0; qq < kDepth; ++qq) step(qq);
    } else {
      for (int qq = 0; qq < depth; ++qq) step(qq);
    }
    __syncthreads();  // the next step overwrites gs and words
  }

  float* const base = dst + (direct ? 0 : static_cast<int64_t>(blockIdx.z) * rows * k);
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int64_t b = row0 + static_cast<int64_t>(ty) * kRowsPerThread + r;
    if (b < rows)
#pragma unroll
      for (int n = 0; n < kColsPerThread; ++n)
        if (j0 + n < k) base[b * k + j0 + n] = direct ? __fmul_rn(acc[r][n], scale) : acc[r][n];
  }
}

constexpr int kFoldOutputs = 32;  // outputs per fold block (one warp folds, one output per lane)
constexpr int kFoldChunks = 64;   // partials staged per step: many loads in flight per output
constexpr int kFoldThreads = 256;

// out[o] = (first ? part[0][o] : out[o]) + part[1 or 0][o] + ... in ascending chunk order, times
// `scale` after the last group. All 8 warps load a 64-chunk x 32-output tile (independent loads,
// so small outputs still keep memory busy); warp 0 adds it up in order.
__global__ void __launch_bounds__(kFoldThreads) fold_kernel(const float* __restrict__ part, int64_t chunks, int64_t n,
                                                           bool first, bool last, float scale, float* __restrict__ out) {
  __shared__ float tile[kFoldChunks][kFoldOutputs + 1];
  const int lane = threadIdx.x % kFoldOutputs, warp = threadIdx.x / kFoldOutputs;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kFoldOutputs + lane;
  float acc = 0.0f;
  if (warp == 0 && o < n) acc = first ? part[o] : out[o];
  for (int64_t z0 = first ? 1 : 0; z0 < chunks; z0 += kFoldChunks) {
    for (int r = warp; r < kFoldChunks; r += kFoldThreads / kFoldOutputs) {
      const int64_t z = z0 + r;
      tile[r][lane] = (z < chunks && o < n) ? part[z * n + o] : 0.0f;
    }
    __syncthreads();
    if (warp == 0) {
      const int count = static_cast<int>(chunks - z0 < kFoldChunks ? chunks - z0 : kFoldChunks);
      for (int r = 0; r < count; ++r) acc = __fadd_rn(acc, tile[r][lane]);
    }
    __syncthreads();  // the next step overwrites the tile
  }
  if (warp == 0 && o < n) out[o] = last ? __fmul_rn(acc, scale) : acc;
}

template <class T>
__global__ void widen_kernel(const T* __restrict__ g, int64_t count, float* __restrict__ out) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = to_float(g[t]);  // float_formats.hpp: the CPU's widening, the same source
}

/// Stream-ordered scratch: freed on the stream when the call returns or throws.
class StreamScratch {
 public:
  StreamScratch(size_t floats, cudaStream_t s) : s_(s) {
    if (floats > 0) ATTRACE_CUDA_TRY(cudaMallocAsync(reinterpret_cast<void**>(&p_), floats * sizeof(float), s_));
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() {
    if (p_) cudaFreeAsync(p_, s_);  // no throw from a destructor; a failure here shows on the next call
  }
  float* get() const { return p_; }

 private:
  float* p_ = nullptr;
  cudaStream_t s_;
};

template <class T, bool kRademacher>
void launch_chunks(dim3 grid, dim3 block, cudaStream_t s, const T* g, int64_t rows, int64_t p, const ProjectionSpec& spec,
                   int64_t chunk0, float scale, bool direct, float* dst) {
  project_chunks_kernel<T, kRademacher><<<grid, block, 0, s>>>(g, rows, p, spec, chunk0, scale, direct, dst);
  ATTRACE_CUDA_LAUNCH_CHECK(s);
}

}  // namespace

template <class T>
void project_dense_device(const Resources& res, DeviceMatrix<T> gv, const ProjectionSpec& spec, DeviceMatrixMut<float> outv) {
  check_view(gv, "project_dense");
  check_view(outv, "project_dense");
  const int64_t rows = gv.rows, p = gv.cols;
  ATTRACE_CHECK(spec.k > 0 && p >= 1, InputError, "project_dense: k and the input width must be >= 1");
  ATTRACE_CHECK(outv.rows == rows && outv.cols == spec.k, InputError,
                "project_dense: output is " + std::to_string(outv.rows) + "x" + std::to_string(outv.cols) + ", expected " +
                    std::to_string(rows) + "x" + std::to_string(spec.k));
  // The kernels index dense rows (the fold runs over rows x k as one vector).
  ATTRACE_CHECK(gv.ld == p && outv.ld == spec.k, InputError, "project_dense: device views must be dense (ld == cols)");
  if (rows == 0) return;
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  const T* const g = gv.data;
  float* const out = outv.data;
  if (spec.kind == ProjectionKind::identity) {
    ATTRACE_CHECK(spec.k == p, InputError,
                  "identity projection: k (" + std::to_string(spec.k) + ") must equal the input width (" + std::to_string(p) + ")");
    const int64_t count = rows * p;
    widen_kernel<T><<<static_cast<unsigned>(std::min<int64_t>((count + 255) / 256, 65535)), 256, 0, s>>>(g, count, out);
    ATTRACE_CUDA_LAUNCH_CHECK(s);
    return;
  }
  const int64_t k = spec.k;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)));
  // Block shape: whole Philox blocks of columns (at most 512), batch rows in groups of 8 up to 32
  // (one batch row group when B <= 8, so B = 8 wastes no thread). Any shape gives the same bits.
  const int col_threads = 16 * static_cast<int>(std::min<int64_t>(4, (k + 127) / 128));
  const int row_groups = static_cast<int>(std::min<int64_t>(kMaxRowGroups, (rows + kRowsPerThread - 1) / kRowsPerThread));
  const dim3 block(static_cast<unsigned>(col_threads), static_cast<unsigned>(row_groups));
  const int64_t block_rows = int64_t{kRowsPerThread} * row_groups, block_cols = int64_t{kColsPerThread} * col_threads;
  const auto col_blocks = static_cast<unsigned>((k + block_cols - 1) / block_cols);
  const int64_t chunks = (p + kProjectionChunk - 1) / kProjectionChunk;
  // Rows per slice: grid.y stays <= 65535 blocks, and one chunk's partials fit the scratch budget.
  const int64_t slice = std::min({rows, 65535 * block_rows, std::max(block_rows, kScratchFloats / k / block_rows * block_rows)});
  const int64_t group_cap = std::min<int64_t>({chunks, 65535, std::max<int64_t>(1, kScratchFloats / (slice * k))});
  StreamScratch scratch(chunks > 1 ? static_cast<size_t>(group_cap * slice * k) : 0, s);
  const bool rademacher = spec.kind == ProjectionKind::rademacher;
  for (int64_t r0 = 0; r0 < rows; r0 += slice) {
    const int64_t n = std::min(slice, rows - r0);
    const T* gr = g + r0 * p;
    float* outr = out + r0 * k;
    const auto row_blocks = static_cast<unsigned>((n + block_rows - 1) / block_rows);
    if (chunks == 1) {  // p <= kProjectionChunk: the single partial, scaled, is the result
      const dim3 grid(col_blocks, row_blocks, 1);
      rademacher ? launch_chunks<T, true>(grid, block, s, gr, n, p, spec, 0, scale, true, outr)
                 : launch_chunks<T, false>(grid, block, s, gr, n, p, spec, 0, scale, true, outr);
      continue;
    }
    const int64_t group = std::min<int64_t>({chunks, 65535, group_cap * slice / n});  // scratch holds group_cap * slice * k
    for (int64_t c0 = 0; c0 < chunks; c0 += group) {
      const int64_t m = std::min(group, chunks - c0);
      const dim3 grid(col_blocks, row_blocks, static_cast<unsigned>(m));
      rademacher ? launch_chunks<T, true>(grid, block, s, gr, n, p, spec, c0, scale, false, scratch.get())
                 : launch_chunks<T, false>(grid, block, s, gr, n, p, spec, c0, scale, false, scratch.get());
      const int64_t outputs = n * k;
      fold_kernel<<<static_cast<unsigned>((outputs + kFoldOutputs - 1) / kFoldOutputs), kFoldThreads, 0, s>>>(
          scratch.get(), m, outputs, c0 == 0, c0 + m == chunks, scale, outr);
      ATTRACE_CUDA_LAUNCH_CHECK(s);
    }
  }
}

template void project_dense_device<float>(const Resources&, DeviceMatrix<float>, const ProjectionSpec&, DeviceMatrixMut<float>);
template void project_dense_device<BFloat16>(const Resources&, DeviceMatrix<BFloat16>, const ProjectionSpec&,
                                             DeviceMatrixMut<float>);
template void project_dense_device<Half>(const Resources&, DeviceMatrix<Half>, const ProjectionSpec&, DeviceMatrixMut<float>);

}  // namespace attrace::kernels::cuda
