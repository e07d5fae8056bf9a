// Canonical scoring and squared norms on the GPU, in the order of kernels/src/canonical_dot.hpp:
// products in float64, element q added to lane q % 8, lanes combined pairwise, with explicit
// round-to-nearest intrinsics (__dmul_rn/__dadd_rn, never fused), so every output has the CPU
// backend's bits.
#include "resources.cuh"

namespace attrace::kernels::cuda {
namespace {

constexpr int kTile = 16;   // outputs per block side
constexpr int kDepth = 64;  // feature elements staged per step (a multiple of 8 keeps lanes aligned)

__device__ __forceinline__ double combine_lanes(const double* l) {
  return __dadd_rn(__dadd_rn(__dadd_rn(l[0], l[1]), __dadd_rn(l[2], l[3])),
                   __dadd_rn(__dadd_rn(l[4], l[5]), __dadd_rn(l[6], l[7])));
}

// One thread per output (i, j) of a 16 x 16 tile; rows and columns beyond n, m load zeros and
// write nothing. Element q of the dot product always lands in lane q % 8 in ascending q, whatever
// the tile or launch the output falls in.
template <class T>
__global__ void score_kernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ b, int64_t ldb, int64_t n,
                             int64_t m, int64_t p, double alpha, double* __restrict__ out, int64_t ldo) {
  __shared__ T sa[kTile][kDepth + 1];
  __shared__ T sb[kTile][kDepth + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t q0 = 0; q0 < p; q0 += kDepth) {
    for (int e = ty * kTile + tx; e < kTile * kDepth; e += kTile * kTile) {
      const int r = e / kDepth, c = e % kDepth;
      const int64_t q = q0 + c;
      sa[r][c] = (i0 + r < n && q < p) ? a[(i0 + r) * lda + q] : T(0);
      sb[r][c] = (j0 + r < m && q < p) ? b[(j0 + r) * ldb + q] : T(0);
    }
    __syncthreads();
    const int64_t left = p - q0;
    const int depth = left < kDepth ? static_cast<int>(left) : kDepth;
    for (int c = 0; c < depth; c += 8) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (c + k < depth) {
          const double prod = __dmul_rn(static_cast<double>(sa[ty][c + k]), static_cast<double>(sb[tx][c + k]));
          l[k] = __dadd_rn(l[k], prod);
        }
      }
    }
    __syncthreads();  // the tile is overwritten by the next step
  }
  const int64_t i = i0 + ty, j = j0 + tx;
  if (i < n && j < m) out[i * ldo + j] = __dadd_rn(out[i * ldo + j], __dmul_rn(alpha, combine_lanes(l)));
}

constexpr int kNormRows = 32;  // rows per block; 8 threads (one per lane) per row

// out[i] += alpha * canonical_dot(a_i, a_i): thread `lane` of row i sums q = lane, lane + 8, ...
// in ascending order, then lane 0 combines the eight partial sums pairwise.
template <class T>
__global__ void sqnorm_kernel(const T* __restrict__ a, int64_t lda, int64_t n, int64_t p, double alpha,
                              double* __restrict__ out, int64_t ldo) {
  __shared__ double part[kNormRows][8];
  const int lane = threadIdx.x & 7, r = threadIdx.x >> 3;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kNormRows + r;
  double l = 0;
  if (i < n) {
    const T* ai = a + i * lda;
    for (int64_t q = lane; q < p; q += 8) {
      const double v = static_cast<double>(ai[q]);
      l = __dadd_rn(l, __dmul_rn(v, v));
    }
  }
  part[r][lane] = l;
  __syncthreads();
  if (lane == 0 && i < n) out[i * ldo] = __dadd_rn(out[i * ldo], __dmul_rn(alpha, combine_lanes(part[r])));
}

template <class T>
void score(const Resources& res, DeviceMatrix<T> a, DeviceMatrix<T> b, double alpha, DeviceMatrixMut<double> out) {
  check_view(a, "score_accumulate");
  check_view(b, "score_accumulate");
  check_view(out, "score_accumulate");
  ATTRACE_CHECK(a.cols == b.cols && out.rows == a.rows && out.cols == b.rows, InputError,
                "score_accumulate: shapes do not match (" + std::to_string(a.rows) + "x" + std::to_string(a.cols) + ", " +
                    std::to_string(b.rows) + "x" + std::to_string(b.cols) + " into " + std::to_string(out.rows) + "x" +
                    std::to_string(out.cols) + ")");
  if (a.rows == 0 || b.rows == 0) return;
  const auto col_blocks = (b.rows + kTile - 1) / kTile;
  ATTRACE_CHECK(col_blocks <= std::numeric_limits<int32_t>::max(), InputError,
                "score_accumulate: " + std::to_string(b.rows) + " query rows exceed one launch's grid");
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  // grid.y holds at most 65535 tiles of rows: launch over chunks of rows. Each output is still
  // computed by one thread in the same order, so the chunking changes no bit.
  constexpr int64_t kRowsPerLaunch = kMaxGridY * kTile;
  for (int64_t r0 = 0; r0 < a.rows; r0 += kRowsPerLaunch) {
    const int64_t n = std::min(kRowsPerLaunch, a.rows - r0);
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>((n + kTile - 1) / kTile));
    score_kernel<T><<<grid, dim3(kTile, kTile), 0, s>>>(a.row(r0), a.ld, b.data, b.ld, n, b.rows, a.cols, alpha,
                                                        out.row(r0), out.ld);
    ATTRACE_CUDA_LAUNCH_CHECK(s);
  }
}

template <class T>
void sqnorm(const Resources& res, DeviceMatrix<T> a, double alpha, DeviceMatrixMut<double> out) {
  check_view(a, "sqnorm_accumulate");
  check_view(out, "sqnorm_accumulate");
  ATTRACE_CHECK(out.rows == a.rows && out.cols == 1, InputError,
                "sqnorm_accumulate: output must be " + std::to_string(a.rows) + "x1, got " + std::to_string(out.rows) + "x" +
                    std::to_string(out.cols));
  if (a.rows == 0) return;
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  constexpr int64_t kRowsPerLaunch = int64_t{1 << 20} * kNormRows;  // keeps grid.x well inside its limit
  for (int64_t r0 = 0; r0 < a.rows; r0 += kRowsPerLaunch) {
    const int64_t n = std::min(kRowsPerLaunch, a.rows - r0);
    const auto blocks = static_cast<unsigned>((n + kNormRows - 1) / kNormRows);
    sqnorm_kernel<T><<<blocks, kNormRows * 8, 0, s>>>(a.row(r0), a.ld, n, a.cols, alpha, out.row(r0), out.ld);
    ATTRACE_CUDA_LAUNCH_CHECK(s);
  }
}

}  // namespace

void score_accumulate_device(const Resources& res, DeviceMatrix<float> a, DeviceMatrix<float> b, double alpha,
                             DeviceMatrixMut<double> out) {
  score(res, a, b, alpha, out);
}
void score_accumulate_device(const Resources& res, DeviceMatrix<double> a, DeviceMatrix<double> b, double alpha,
                             DeviceMatrixMut<double> out) {
  score(res, a, b, alpha, out);
}
void sqnorm_accumulate_device(const Resources& res, DeviceMatrix<float> a, double alpha, DeviceMatrixMut<double> out) {
  sqnorm(res, a, alpha, out);
}
void sqnorm_accumulate_device(const Resources& res, DeviceMatrix<double> a, double alpha, DeviceMatrixMut<double> out) {
  sqnorm(res, a, alpha, out);
}

}  // namespace attrace::kernels::cuda
