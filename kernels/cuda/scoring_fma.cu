// FMA-order scoring on the GPU (kernels/src/fma_dot.hpp): element q of a chunk of kFmaChunk is
// added to float32 lane q % 8 with __fmaf_rn, in ascending q; at each chunk's end the eight lanes
// are widened and combined as ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)) with __dadd_rn and the chunk
// value is added to a float64 total. fmaf is exactly specified by IEEE 754, so every output has
// the CPU backend's bits whatever the tile, launch or device.
#include "resources.cuh"

namespace attrace::kernels::cuda {
namespace {

constexpr int kThreads = 16;              // threads per block side
constexpr int kPer = 2;                   // outputs per thread side
constexpr int kTile = kThreads * kPer;    // outputs per block side
constexpr int kDepth = 64;                // feature elements staged per step (divides kFmaChunk)
static_assert(kFmaChunk % kDepth == 0 && kDepth % 8 == 0, "steps must not straddle chunks or lanes");

__device__ __forceinline__ double lane_tree(const float* l) {
  const double v0 = l[0], v1 = l[1], v2 = l[2], v3 = l[3], v4 = l[4], v5 = l[5], v6 = l[6], v7 = l[7];
  return __dadd_rn(__dadd_rn(__dadd_rn(v0, v4), __dadd_rn(v2, v6)), __dadd_rn(__dadd_rn(v1, v5), __dadd_rn(v3, v7)));
}

// Thread (ty, tx) computes outputs (i0 + ty*2 + r, j0 + tx*2 + s), r, s in {0, 1}. Rows beyond
// n, m and elements beyond p load zeros: fmaf(0, 0, lane) leaves a lane unchanged (a lane is never
// -0), so padding changes no bit.
__global__ void score_fma_kernel(const float* __restrict__ a, int64_t lda, const float* __restrict__ b, int64_t ldb,
                                 int64_t n, int64_t m, int64_t p, double alpha, double* __restrict__ out, int64_t ldo) {
  __shared__ float sa[kTile][kDepth + 1];
  __shared__ float sb[kTile][kDepth + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreads + tx;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float lane[kPer][kPer][8];
  double total[kPer][kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r)
#pragma unroll
    for (int s = 0; s < kPer; ++s) {
      total[r][s] = 0.0;
#pragma unroll
      for (int k = 0; k < 8; ++k) lane[r][s][k] = 0.0f;
    }
  for (int64_t q0 = 0; q0 < p; q0 += kDepth) {
    for (int e = tid; e < kTile * kDepth; e += kThreads * kThreads) {
      const int row = e / kDepth, c = e % kDepth;
      const int64_t q = q0 + c;
      sa[row][c] = (i0 + row < n && q < p) ? a[(i0 + row) * lda + q] : 0.0f;
      sb[row][c] = (j0 + row < m && q < p) ? b[(j0 + row) * ldb + q] : 0.0f;
    }
    __syncthreads();
#pragma unroll 2
    for (int c = 0; c < kDepth; c += 8) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        float av[kPer], bv[kPer];
#pragma unroll
        for (int r = 0; r < kPer; ++r) av[r] = sa[ty * kPer + r][c + k];
#pragma unroll
        for (int s = 0; s < kPer; ++s) bv[s] = sb[tx * kPer + s][c + k];
#pragma unroll
        for (int r = 0; r < kPer; ++r)
#pragma unroll
          for (int s = 0; s < kPer; ++s) lane[r][s][k] = __fmaf_rn(av[r], bv[s], lane[r][s][k]);
      }
    }
    __syncthreads();  // the tile is overwritten by the next step
    const int64_t q1 = q0 + kDepth;
    if (q1 % kFmaChunk == 0 || q1 >= p) {  // a chunk ends: fold its lanes into the totals
#pragma unroll
      for (int r = 0; r < kPer; ++r)
#pragma unroll
        for (int s = 0; s < kPer; ++s) {
          total[r][s] = __dadd_rn(total[r][s], lane_tree(lane[r][s]));
#pragma unroll
          for (int k = 0; k < 8; ++k) lane[r][s][k] = 0.0f;
        }
    }
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r)
#pragma unroll
    for (int s = 0; s < kPer; ++s) {
      const int64_t i = i0 + ty * kPer + r, j = j0 + tx * kPer + s;
      if (i < n && j < m) out[i * ldo + j] = __dadd_rn(out[i * ldo + j], __dmul_rn(alpha, total[r][s]));
    }
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
  const auto col_blocks = (b.rows + kTile - 1) / kTile;
  ATTRACE_CHECK(col_blocks <= std::numeric_limits<int32_t>::max(), InputError,
                "score_accumulate_fma: " + std::to_string(b.rows) + " query rows exceed one launch's grid");
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  constexpr int64_t kRowsPerLaunch = kMaxGridY * kTile;  // grid.y limit; chunking changes no bit
  for (int64_t r0 = 0; r0 < a.rows; r0 += kRowsPerLaunch) {
    const int64_t n = std::min(kRowsPerLaunch, a.rows - r0);
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>((n + kTile - 1) / kTile));
    score_fma_kernel<<<grid, dim3(kThreads, kThreads), 0, s>>>(a.row(r0), a.ld, b.data, b.ld, n, b.rows, a.cols, alpha,
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
