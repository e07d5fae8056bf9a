// The Linear-layer product on the GPU (Backend::linear_fma): each output is one float32 chain,
// c = bias[j] (or +0), then c = __fmaf_rn(a[i][q], bt[q][j], c) for q ascending; the CPU
// kernels (kernels/src/cpu_linear_impl.hpp) compute the same chain, and fmaf is exactly specified
// by IEEE 754, so the two backends give the same bits whatever the tile or launch.
#include "resources.cuh"

#include <string>

namespace attrace::kernels::cuda {
namespace {

// Work split: a block of 16 x 16 threads owns a 64 x 64 tile of outputs; each thread keeps 4 x 4
// accumulators (rows ty + 16 r, columns tx + 16 c, so that a warp's global stores are contiguous).
// The q axis is staged through shared memory kDepth steps at a time; every thread walks the steps
// in ascending order, so each accumulator sees its chain's FMAs in the chain's order. Rows past n
// and columns past m load zeros (their outputs are not stored); q is never padded: the last stage
// runs only the steps that exist (an extra fmaf(0, 0, c) would turn a -0 chain into +0).
constexpr int kTile = 64;
constexpr int kSide = 16;                 // threads per tile side
constexpr int kPer = kTile / kSide;       // outputs per thread per side
constexpr int kDepth = 16;                // q steps per stage
constexpr int kThreads = kSide * kSide;

__global__ void __launch_bounds__(kThreads) linear_fma_kernel(const float* __restrict__ a, int64_t lda,
                                                              const float* __restrict__ bt, int64_t ldb,
                                                              const float* __restrict__ bias, int64_t n, int64_t k,
                                                              int64_t m, float* __restrict__ out, int64_t ldo) {
  __shared__ float sa[kDepth][kTile + 1];  // sa[q][row]: a thread's rows of one step side by side
  __shared__ float sb[kDepth][kTile];      // sb[q][column]
  const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float acc[kPer][kPer];
#pragma unroll
  for (int c = 0; c < kPer; ++c) {
    const int64_t j = j0 + tx + kSide * c;
    const float start = (bias != nullptr && j < m) ? bias[j] : 0.0f;
#pragma unroll
    for (int r = 0; r < kPer; ++r) acc[r][c] = start;
  }
  for (int64_t q0 = 0; q0 < k; q0 += kDepth) {
    for (int e = tid; e < kTile * kDepth; e += kThreads) {
      const int row = e / kDepth, s = e % kDepth;
      const int64_t i = i0 + row, q = q0 + s;
      sa[s][row] = (i < n && q < k) ? a[i * lda + q] : 0.0f;
    }
    for (int e = tid; e < kDepth * kTile; e += kThreads) {
      const int s = e / kTile, col = e % kTile;
      const int64_t q = q0 + s, j = j0 + col;
      sb[s][col] = (q < k && j < m) ? bt[q * ldb + j] : 0.0f;
    }
    __syncthreads();
    const int64_t left = k - q0;
    const int depth = left < kDepth ? static_cast<int>(left) : kDepth;  // uniform across the block
    if (depth == kDepth) {
#pragma unroll
      for (int s = 0; s < kDepth; ++s) {
        float av[kPer], bv[kPer];
#pragma unroll
        for (int r = 0; r < kPer; ++r) av[r] = sa[s][ty + kSide * r];
#pragma unroll
        for (int c = 0; c < kPer; ++c) bv[c] = sb[s][tx + kSide * c];
#pragma unroll
        for (int r = 0; r < kPer; ++r)
#pragma unroll
          for (int c = 0; c < kPer; ++c) acc[r][c] = __fmaf_rn(av[r], bv[c], acc[r][c]);
      }
    } else {
      for (int s = 0; s < depth; ++s) {
#pragma unroll
        for (int r = 0; r < kPer; ++r)
#pragma unroll
          for (int c = 0; c < kPer; ++c) acc[r][c] = __fmaf_rn(sa[s][ty + kSide * r], sb[s][tx + kSide * c], acc[r][c]);
      }
    }
    __syncthreads();  // the stage is overwritten next
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int64_t i = i0 + ty + kSide * r;
    if (i >= n) continue;
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int64_t j = j0 + tx + kSide * c;
      if (j < m) out[i * ldo + j] = acc[r][c];
    }
  }
}

}  // namespace

void linear_fma_device(const Resources& res, DeviceMatrix<float> a, DeviceMatrix<float> bt, const float* bias,
                       DeviceMatrixMut<float> out) {
  check_view(a, "linear_fma input");
  check_view(bt, "linear_fma weight");
  check_view(out, "linear_fma output");
  ATTRACE_CHECK(a.cols == bt.rows && out.rows == a.rows && out.cols == bt.cols, InputError,
                "linear_fma: input " + std::to_string(a.rows) + "x" + std::to_string(a.cols) + " times transposed weight " +
                    std::to_string(bt.rows) + "x" + std::to_string(bt.cols) + " does not fit output " +
                    std::to_string(out.rows) + "x" + std::to_string(out.cols));
  if (a.rows == 0 || bt.cols == 0) return;
  const int64_t col_blocks = (bt.cols + kTile - 1) / kTile;
  ATTRACE_CHECK(col_blocks <= std::numeric_limits<int32_t>::max(), InputError,
                "linear_fma: " + std::to_string(bt.cols) + " output features exceed one launch's grid");
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  constexpr int64_t kRowsPerLaunch = kMaxGridY * kTile;  // grid.y limit; chunking changes no bit
  for (int64_t r0 = 0; r0 < a.rows; r0 += kRowsPerLaunch) {
    const int64_t n = std::min(kRowsPerLaunch, a.rows - r0);
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>((n + kTile - 1) / kTile));
    linear_fma_kernel<<<grid, kThreads, 0, s>>>(a.row(r0), a.ld, bt.data, bt.ld, bias, n, a.cols, bt.cols, out.row(r0),
                                                 out.ld);
    ATTRACE_CUDA_LAUNCH_CHECK(s);
  }
}

}  // namespace attrace::kernels::cuda
