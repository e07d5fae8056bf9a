// FMA-order scoring on the GPU (kernels/src/fma_dot.hpp): element q of a chunk of kFmaChunk is
// added to float32 lane q % 8 with __fmaf_rn, in ascending q; at each chunk's end the eight lanes
// are widened and combined as ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)) with __dadd_rn and the chunk
// value is added to a float64 total. fmaf is exactly specified by IEEE 754, so every output has
// the CPU backend's bits whatever the tile, launch or device.
#include "resources.cuh"

namespace attrace::kernels::cuda {
namespace {

// Work split: the eight lanes of each output live in eight consecutive threads of a warp (lane
// l = threadIdx.x % 8 adds the elements q = l (mod 8) of each chunk, in ascending q, with
// __fmaf_rn); each thread holds its lane for an 8 x 8 block of outputs (64 registers). At a
// chunk's end the lanes are combined by a butterfly of shuffles (xor 4, 2, 1), which adds them in
// exactly the order ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)); the thread of lane c keeps the float64
// totals of column c of its block. A warp covers 8 rows x 32 columns (its four lane groups share
// rows), a block of 8 warps 64 x 32 outputs.
constexpr int kWarps = 8;
constexpr int kMicro = 8;                 // outputs per lane group side
constexpr int kBlockRows = kWarps * kMicro;  // 64
constexpr int kBlockCols = 4 * kMicro;    // 32
constexpr int kDepth = 64;                // feature elements staged per step (divides kFmaChunk)
constexpr int kStride = kDepth + 1;       // padded shared rows: conflict-free lane reads
static_assert(kFmaChunk % kDepth == 0 && kDepth % 8 == 0, "steps must not straddle chunks or lanes");

__device__ __forceinline__ double butterfly(double v) {
  v = __dadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 4));
  v = __dadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 2));
  return __dadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 1));
}

// Rows beyond n, m and elements beyond p load zeros: fmaf(0, 0, lane) leaves a lane unchanged (a
// lane is never -0), so padding changes no bit of the outputs that are written.
__global__ void __launch_bounds__(kWarps * 32) score_fma_kernel(const float* __restrict__ a, int64_t lda,
                                                                const float* __restrict__ b, int64_t ldb, int64_t n,
                                                                int64_t m, int64_t p, double alpha,
                                                                double* __restrict__ out, int64_t ldo) {
  __shared__ float sa[kBlockRows * kStride];
  __shared__ float sb[kBlockCols * kStride];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 7, group = (tid & 31) >> 3;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kBlockRows;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kBlockCols;
  const float* ra = sa + warp * kMicro * kStride + lane;   // this thread's rows, its lane's column
  const float* rb = sb + group * kMicro * kStride + lane;
  float acc[kMicro][kMicro];
  double total[kMicro];  // column `lane` of the block: total[r] is output (r, lane)
#pragma unroll
  for (int r = 0; r < kMicro; ++r) {
    total[r] = 0.0;
#pragma unroll
    for (int c = 0; c < kMicro; ++c) acc[r][c] = 0.0f;
  }
  for (int64_t q0 = 0; q0 < p; q0 += kDepth) {
    for (int e = tid; e < kBlockRows * kDepth; e += kWarps * 32) {
      const int row = e / kDepth, c = e % kDepth;
      const int64_t q = q0 + c;
      sa[row * kStride + c] = (i0 + row < n && q < p) ? a[(i0 + row) * lda + q] : 0.0f;
    }
    for (int e = tid; e < kBlockCols * kDepth; e += kWarps * 32) {
      const int row = e / kDepth, c = e % kDepth;
      const int64_t q = q0 + c;
      sb[row * kStride + c] = (j0 + row < m && q < p) ? b[(j0 + row) * ldb + q] : 0.0f;
    }
    __syncthreads();
#pragma unroll 2
    for (int s = 0; s < kDepth; s += 8) {
      float av[kMicro], bv[kMicro];
#pragma unroll
      for (int r = 0; r < kMicro; ++r) av[r] = ra[r * kStride + s];
#pragma unroll
      for (int c = 0; c < kMicro; ++c) bv[c] = rb[c * kStride + s];
#pragma unroll
      for (int r = 0; r < kMicro; ++r)
#pragma unroll
        for (int c = 0; c < kMicro; ++c) acc[r][c] = __fmaf_rn(av[r], bv[c], acc[r][c]);
    }
    __syncthreads();  // the tiles are overwritten by the next step
    const int64_t q1 = q0 + kDepth;
    if (q1 % kFmaChunk == 0 || q1 >= p) {  // a chunk ends (uniform across the block)
#pragma unroll
      for (int r = 0; r < kMicro; ++r)
#pragma unroll
        for (int c = 0; c < kMicro; ++c) {
          const double v = butterfly(static_cast<double>(acc[r][c]));
          if (c == lane) total[r] = __dadd_rn(total[r], v);
          acc[r][c] = 0.0f;
        }
    }
  }
  const int64_t j = j0 + group * kMicro + lane;
#pragma unroll
  for (int r = 0; r < kMicro; ++r) {
    const int64_t i = i0 + warp * kMicro + r;
    if (i < n && j < m) out[i * ldo + j] = __dadd_rn(out[i * ldo + j], __dmul_rn(alpha, total[r]));
  }
}

__device__ __forceinline__ double lane_tree(const float* l) {
  const double v0 = l[0], v1 = l[1], v2 = l[2], v3 = l[3], v4 = l[4], v5 = l[5], v6 = l[6], v7 = l[7];
  return __dadd_rn(__dadd_rn(__dadd_rn(v0, v4), __dadd_rn(v2, v6)), __dadd_rn(__dadd_rn(v1, v5), __dadd_rn(v3, v7)));
}

constexpr int kNormRows = 128;  // rows per block, one thread each

// out[i] += alpha * fma_dot(a_i, a_i), one thread per row in the FMA order.
__global__ void sqnorm_fma_kernel(const float* __restrict__ a, int64_t lda, int64_t n, int64_t p, double alpha,
                                  double* __restrict__ out, int64_t ldo) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kNormRows + threadIdx.x;
  if (i >= n) return;
  const float* ai = a + i * lda;
  double total = 0.0;
  for (int64_t c0 = 0; c0 < p; c0 += kFmaChunk) {
    const int64_t c1 = c0 + kFmaChunk < p ? c0 + kFmaChunk : p;
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t q = c0; q < c1; ++q) lane[(q - c0) & 7] = __fmaf_rn(ai[q], ai[q], lane[(q - c0) & 7]);
    total = __dadd_rn(total, lane_tree(lane));
  }
  out[i * ldo] = __dadd_rn(out[i * ldo], __dmul_rn(alpha, total));
}

}  // namespace

void score_accumulate_fma_device(const Resources& res, DeviceMatrix<float> a, DeviceMatrix<float> b, double alpha,
                                 DeviceMatrixMut<double> out) {
  check_view(a, "score_accumulate_fma");
  check_view(b, "score_accumulate_fma");
  check_view(out, "score_accumulate_fma");
  ATTRACE_CHECK(a.cols == b.cols && out.rows == a.rows && out.cols == b.rows, InputError,
                "score_accumulate_fma: shapes do not match (" + std::to_string(a.rows) + "x" + std::to_string(a.cols) + ", " +
                    std::to_string(b.rows) + "x" + std::to_string(b.cols) + " into " + std::to_string(out.rows) + "x" +
                    std::to_string(out.cols) + ")");
  if (a.rows == 0 || b.rows == 0) return;
  const auto col_blocks = (b.rows + kBlockCols - 1) / kBlockCols;
  ATTRACE_CHECK(col_blocks <= std::numeric_limits<int32_t>::max(), InputError,
                "score_accumulate_fma: " + std::to_string(b.rows) + " query rows exceed one launch's grid");
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  constexpr int64_t kRowsPerLaunch = kMaxGridY * kBlockRows;  // grid.y limit; chunking changes no bit
  for (int64_t r0 = 0; r0 < a.rows; r0 += kRowsPerLaunch) {
    const int64_t n = std::min(kRowsPerLaunch, a.rows - r0);
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>((n + kBlockRows - 1) / kBlockRows));
    score_fma_kernel<<<grid, kWarps * 32, 0, s>>>(a.row(r0), a.ld, b.data, b.ld, n, b.rows, a.cols, alpha,
                                                               out.row(r0), out.ld);
    ATTRACE_CUDA_LAUNCH_CHECK(s);
  }
}

void sqnorm_accumulate_fma_device(const Resources& res, DeviceMatrix<float> a, double alpha, DeviceMatrixMut<double> out) {
  check_view(a, "sqnorm_accumulate_fma");
  check_view(out, "sqnorm_accumulate_fma");
  ATTRACE_CHECK(out.rows == a.rows && out.cols == 1, InputError,
                "sqnorm_accumulate_fma: output must be " + std::to_string(a.rows) + "x1, got " + std::to_string(out.rows) +
                    "x" + std::to_string(out.cols));
  if (a.rows == 0) return;
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  constexpr int64_t kRowsPerLaunch = int64_t{1 << 20} * kNormRows;
  for (int64_t r0 = 0; r0 < a.rows; r0 += kRowsPerLaunch) {
    const int64_t n = std::min(kRowsPerLaunch, a.rows - r0);
    const auto blocks = static_cast<unsigned>((n + kNormRows - 1) / kNormRows);
    sqnorm_fma_kernel<<<blocks, kNormRows, 0, s>>>(a.row(r0), a.ld, n, a.cols, alpha, out.row(r0), out.ld);
    ATTRACE_CUDA_LAUNCH_CHECK(s);
  }
}

}  // namespace attrace::kernels::cuda
