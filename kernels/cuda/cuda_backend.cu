// CUDA backend. Every kernel here reproduces its CPU twin's order of operations with explicit
// round-to-nearest intrinsics (__dmul_rn/__dadd_rn/__fmul_rn/__fadd_rn, which nvcc never fuses
// into FMAs), so results are bit-identical to the CPU backend:
//   - canonical scoring and squared norms: kernels/src/canonical_dot.hpp (lane q % 8);
//   - dense projection (projection.cu): chunks of rows of P, float32 (Gaussian entries excepted:
//     CUDA's and libm's sin/cos/log may differ in the last bit, docs/architecture.md);
//   - Kronecker outer-product sums: positions t ascending;
//   - tranche sums: rows ascending per (tranche, query);
//   - top-k: a unique answer under the total order (score, then row), however it is searched.
// The GEMM scoring path goes through cuBLAS (float32, TF32 or bf16 tensor cores) with an explicit
// workspace, which cuBLAS documents as bitwise reproducible run to run on one GPU model.
#include "cuda_backend.hpp"
#include "cuda_check.cuh"

#include <attrace/kernels/cuda_device.hpp>
#include <attrace/kernels/rounding.hpp>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define ATTRACE_CUBLAS_TRY(call)                                                                   \
  do {                                                                                             \
    const cublasStatus_t attrace_blas_status_ = (call);                                            \
    ATTRACE_CHECK(attrace_blas_status_ == CUBLAS_STATUS_SUCCESS, ::attrace::RuntimeFailure,        \
                  std::string("cuBLAS error in ") + #call + " at " + __FILE__ + ":" +             \
                      std::to_string(__LINE__) + ": " + cublasGetStatusString(attrace_blas_status_)); \
  } while (0)

namespace attrace::kernels::cuda {
namespace {

/// Move-only owner of a device allocation.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0) ATTRACE_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&ptr_), n_ * sizeof(T)));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);  // no-throw in destructors
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Blocks for a grid-stride loop over `work` items with `threads` per block.
unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 20));
}

// ---------------------------------------------------------------------------------------------
// Canonical scoring and squared norms (kernels/src/canonical_dot.hpp order).

constexpr int kTile = 16;   // outputs per block side
constexpr int kDepth = 64;  // feature elements staged per step (multiple of 8 keeps lanes aligned)

__device__ __forceinline__ double combine_lanes(const double* l) {
  return __dadd_rn(__dadd_rn(__dadd_rn(l[0], l[1]), __dadd_rn(l[2], l[3])),
                   __dadd_rn(__dadd_rn(l[4], l[5]), __dadd_rn(l[6], l[7])));
}

template <class T>
__global__ void score_kernel(const T* __restrict__ a, const T* __restrict__ b, int64_t n,
                             int64_t m, int64_t p, double alpha, double* __restrict__ out) {
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
      sa[r][c] = (i0 + r < n && q < p) ? a[(i0 + r) * p + q] : T(0);
      sb[r][c] = (j0 + r < m && q < p) ? b[(j0 + r) * p + q] : T(0);
    }
    __syncthreads();
    const int64_t left = p - q0;
    const int depth = left < kDepth ? static_cast<int>(left) : kDepth;
    for (int c = 0; c < depth; c += 8) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (c + k < depth) {
          const double prod =
              __dmul_rn(static_cast<double>(sa[ty][c + k]), static_cast<double>(sb[tx][c + k]));
          l[k] = __dadd_rn(l[k], prod);
        }
      }
    }
    __syncthreads();
  }
  const int64_t i = i0 + ty, j = j0 + tx;
  if (i < n && j < m) out[i * m + j] = __dadd_rn(out[i * m + j], __dmul_rn(alpha, combine_lanes(l)));
}

constexpr int kNormRows = 32;  // rows per block; 8 threads (one per lane) per row

// out[i] += alpha * canonical_dot(a_i, a_i): thread `lane` of row i sums q = lane, lane + 8, ...
// in ascending order, then lane 0 combines the eight partial sums pairwise.
template <class T>
__global__ void sqnorm_kernel(const T* __restrict__ a, int64_t n, int64_t p, double alpha, double* __restrict__ out) {
  __shared__ double part[kNormRows][8];
  const int lane = threadIdx.x & 7, r = threadIdx.x >> 3;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kNormRows + r;
  double l = 0;
  if (i < n) {
    const T* ai = a + i * p;
    for (int64_t q = lane; q < p; q += 8) {
      const double v = static_cast<double>(ai[q]);
      l = __dadd_rn(l, __dmul_rn(v, v));
    }
  }
  part[r][lane] = l;
  __syncthreads();
  if (lane == 0 && i < n) out[i] = __dadd_rn(out[i], __dmul_rn(alpha, combine_lanes(part[r])));
}

// Dense projection kernels: projection.cu.

__global__ void kron_outer_kernel(const float* __restrict__ xp, const float* __restrict__ dp, int64_t examples,
                                  int64_t positions, int64_t ki, int64_t ko, float* __restrict__ out) {
  const int64_t width = ki * ko, total = examples * width;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = t / width, rem = t % width, a = rem / ki, c = rem % ki;
    float acc = 0.0f;
    for (int64_t s = 0; s < positions; ++s) {
      const int64_t row = e * positions + s;
      acc = __fadd_rn(acc, __fmul_rn(dp[row * ko + a], xp[row * ki + c]));
    }
    out[t] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Epilogues.

// out[s][j] += x[r][j] for the rows r of segment s (rows[start[s] .. start[s+1]) ascending), one
// thread per (segment, column): the CPU twin's order for every output.
__global__ void segsum_kernel(const double* __restrict__ x, int64_t m, const int64_t* __restrict__ start,
                              const int64_t* __restrict__ rows, int64_t segments, double* __restrict__ out) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < segments * m;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = t / m, j = t % m;
    double acc = out[t];
    for (int64_t r = start[s]; r < start[s + 1]; ++r) acc = __dadd_rn(acc, x[rows[r] * m + j]);
    out[t] = acc;
  }
}

// "a ranks before b": larger (proponents) or smaller (opponents) score first, then lower row.
__device__ __forceinline__ bool ranks_before(double sa, int64_t ra, double sb, int64_t rb, bool high) {
  if (sa != sb) return high ? sa > sb : sa < sb;
  return ra < rb;
}

// Inserts (row, v) into a list kept best-first, holding at most kk entries.
__device__ void insert_ranked(TopEntry* list, int64_t& count, int64_t kk, int64_t row, double v, bool high) {
  if (count == kk && !ranks_before(v, row, list[kk - 1].score, list[kk - 1].row, high)) return;
  int64_t pos = count < kk ? count : kk - 1;
  while (pos > 0 && ranks_before(v, row, list[pos - 1].score, list[pos - 1].row, high)) {
    list[pos] = list[pos - 1];
    --pos;
  }
  list[pos].row = row;
  list[pos].score = v;
  if (count < kk) ++count;
}

constexpr int kTopCols = 32;   // columns per block (a warp reads 32 neighbouring scores)
constexpr int kTopSlices = 8;  // row slices per block

// Phase 1: thread (column j, slice s) keeps the best kk entries of rows [s*chunk, (s+1)*chunk)
// of column j, scanning rows in ascending order; the first NaN row it meets is recorded.
__global__ void topk_partial_kernel(const double* __restrict__ x, int64_t n, int64_t m, int64_t slices,
                                    int64_t chunk, int64_t kk, TopEntry* __restrict__ prop, TopEntry* __restrict__ opp,
                                    int64_t* __restrict__ count, int64_t* __restrict__ nan_row) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTopCols + threadIdx.x;
  const int64_t s = static_cast<int64_t>(blockIdx.y) * kTopSlices + threadIdx.y;
  if (j >= m || s >= slices) return;
  const int64_t slot = j * slices + s;
  TopEntry* hp = prop + slot * kk;
  TopEntry* lo = opp + slot * kk;
  int64_t ch = 0, cl = 0, first_nan = -1;
  const int64_t r1 = min(n, (s + 1) * chunk);
  for (int64_t r = s * chunk; r < r1; ++r) {
    const double v = x[r * m + j];
    if (isnan(v)) {
      if (first_nan < 0) first_nan = r;
      continue;
    }
    insert_ranked(hp, ch, kk, r, v, true);
    insert_ranked(lo, cl, kk, r, v, false);
  }
  count[slot] = ch;  // ch == cl: both lists see every non-NaN row
  nan_row[slot] = first_nan;
}

// Phase 2: one thread per column merges its slices' lists (each best-first) into the best kk.
__global__ void topk_merge_kernel(const TopEntry* __restrict__ prop, const TopEntry* __restrict__ opp,
                                  const int64_t* __restrict__ count, int64_t m, int64_t slices, int64_t kk,
                                  TopEntry* __restrict__ best_high, TopEntry* __restrict__ best_low,
                                  int64_t* __restrict__ found) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  for (int side = 0; side < 2; ++side) {
    const bool high = side == 0;
    const TopEntry* lists = (high ? prop : opp) + j * slices * kk;
    TopEntry* dst = (high ? best_high : best_low) + j * kk;
    int64_t got = 0;
    int64_t head[64];  // slices <= 64 (checked on the host)
    for (int64_t s = 0; s < slices; ++s) head[s] = 0;
    while (got < kk) {
      int64_t pick = -1;
      for (int64_t s = 0; s < slices; ++s) {
        if (head[s] >= count[j * slices + s]) continue;
        const TopEntry& c = lists[s * kk + head[s]];
        if (pick < 0) {
          pick = s;
          continue;
        }
        const TopEntry& b = lists[pick * kk + head[pick]];
        if (ranks_before(c.score, c.row, b.score, b.row, high)) pick = s;
      }
      if (pick < 0) break;
      dst[got++] = lists[pick * kk + head[pick]];
      ++head[pick];
    }
    found[j] = got;
  }
}

// ---------------------------------------------------------------------------------------------
// GEMM input preparation for cuBLAS.

__global__ void round_tf32_kernel(const float* in, int64_t count, float* out) {  // may run in place
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = round_tf32(in[t]);
}

__global__ void to_bf16_kernel(const float* __restrict__ in, int64_t count, uint16_t* __restrict__ out) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = bf16_bits_rne(in[t]);
}

template <class T>
void copy_in(T* dst, HostMatrix<T> src, cudaStream_t s) {
  ATTRACE_CUDA_TRY(cudaMemcpy2DAsync(dst, src.cols * sizeof(T), src.data, src.ld * sizeof(T), src.cols * sizeof(T),
                                     src.rows, cudaMemcpyHostToDevice, s));
}
template <class T>
void copy_out(HostMatrixMut<T> dst, const T* src, cudaStream_t s) {
  ATTRACE_CUDA_TRY(cudaMemcpy2DAsync(dst.data, dst.ld * sizeof(T), src, dst.cols * sizeof(T), dst.cols * sizeof(T),
                                     dst.rows, cudaMemcpyDeviceToHost, s));
}

// Rows of each operand per cuBLAS call: bounds device memory for any n x m.
constexpr int64_t kGemmTile = 8192;
// cuBLAS workspace, set explicitly so that its size (which can change the algorithm) is fixed.
constexpr size_t kCublasWorkspace = size_t{32} << 20;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    ATTRACE_CUDA_TRY(cudaSetDevice(device_));
    ATTRACE_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~CudaBackend() override {
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }

  void score_accumulate(HostMatrix<float> a, HostMatrix<float> b, double alpha,
                        HostMatrixMut<double> out) override {
    score(a, b, alpha, out);
  }
  void score_accumulate(HostMatrix<double> a, HostMatrix<double> b, double alpha,
                        HostMatrixMut<double> out) override {
    score(a, b, alpha, out);
  }
  void score_accumulate_blas(HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math,
                             HostMatrixMut<double> out) override {
    gemm_score(a, b, alpha, math, out);
  }
  void score_accumulate_blas(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out) override {
    gemm_score(a, b, alpha, GemmMath::ieee, out);
  }
  void sqnorm_accumulate(HostMatrix<float> a, double alpha, double* out) override { sqnorm(a, alpha, out); }
  void sqnorm_accumulate(HostMatrix<double> a, double alpha, double* out) override { sqnorm(a, alpha, out); }
  void segmented_row_sum(HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out) override;
  std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k) override;
  void project_dense(HostMatrix<float> g, const ProjectionSpec& s, HostMatrixMut<float> out) override { project(g, s, out); }
  void project_dense(HostMatrix<BFloat16> g, const ProjectionSpec& s, HostMatrixMut<float> out) override {
    project(g, s, out);
  }
  void project_dense(HostMatrix<Half> g, const ProjectionSpec& s, HostMatrixMut<float> out) override { project(g, s, out); }
  void project_kronecker(HostMatrix<float> x, HostMatrix<float> delta, int64_t positions, const ProjectionSpec& in,
                         const ProjectionSpec& out_spec, HostMatrixMut<float> out) override;

 private:
  template <class T>
  void project(HostMatrix<T> g, const ProjectionSpec& s, HostMatrixMut<float> out) {
    ATTRACE_CHECK(s.k > 0, InputError, "projection: k must be >= 1, got " + std::to_string(s.k));
    ATTRACE_CHECK(out.rows == g.rows && out.cols == s.k && g.cols >= 1, InputError, "project_dense: shapes do not match");
    if (g.rows == 0) return;
    ATTRACE_CUDA_TRY(cudaSetDevice(device_));
    DeviceBuffer<T> dg(static_cast<size_t>(g.rows * g.cols));
    DeviceBuffer<float> dout(static_cast<size_t>(out.rows * out.cols));
    copy_in(dg.get(), g, stream_);
    project_dense_device(dg.get(), g.rows, g.cols, s, dout.get(), stream_);
    copy_out(out, dout.get(), stream_);
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
  }

  template <class T>
  void score(HostMatrix<T> a, HostMatrix<T> b, double alpha, HostMatrixMut<double> out) {
    ATTRACE_CHECK(a.cols == b.cols && out.rows == a.rows && out.cols == b.rows, InputError,
                  "score_accumulate: shapes do not match");
    if (a.rows == 0 || b.rows == 0) return;
    ATTRACE_CUDA_TRY(cudaSetDevice(device_));
    DeviceBuffer<T> da(static_cast<size_t>(a.rows * a.cols));
    DeviceBuffer<T> db(static_cast<size_t>(b.rows * b.cols));
    DeviceBuffer<double> dout(static_cast<size_t>(out.rows * out.cols));
    copy_in(da.get(), a, stream_);
    copy_in(db.get(), b, stream_);
    copy_in(dout.get(), HostMatrix<double>(out), stream_);
    const dim3 block(kTile, kTile);
    const dim3 grid(static_cast<unsigned>((b.rows + kTile - 1) / kTile),
                    static_cast<unsigned>((a.rows + kTile - 1) / kTile));
    ATTRACE_CHECK(grid.y <= 65535u, InputError, "score_accumulate: too many rows for one launch");
    score_kernel<T><<<grid, block, 0, stream_>>>(da.get(), db.get(), a.rows, b.rows, a.cols, alpha, dout.get());
    ATTRACE_CUDA_LAUNCH_CHECK(stream_);
    copy_out(out, dout.get(), stream_);
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
  }

  template <class T>
  void sqnorm(HostMatrix<T> a, double alpha, double* out) {
    if (a.rows == 0) return;
    ATTRACE_CUDA_TRY(cudaSetDevice(device_));
    DeviceBuffer<T> da(static_cast<size_t>(a.rows * a.cols));
    DeviceBuffer<double> dout(static_cast<size_t>(a.rows));
    copy_in(da.get(), a, stream_);
    ATTRACE_CUDA_TRY(cudaMemcpyAsync(dout.get(), out, a.rows * sizeof(double), cudaMemcpyHostToDevice, stream_));
    const auto blocks = static_cast<unsigned>((a.rows + kNormRows - 1) / kNormRows);
    sqnorm_kernel<T><<<blocks, kNormRows * 8, 0, stream_>>>(da.get(), a.rows, a.cols, alpha, dout.get());
    ATTRACE_CUDA_LAUNCH_CHECK(stream_);
    ATTRACE_CUDA_TRY(cudaMemcpyAsync(out, dout.get(), a.rows * sizeof(double), cudaMemcpyDeviceToHost, stream_));
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
  }

  cublasHandle_t blas() {
    if (!blas_) {
      ATTRACE_CUBLAS_TRY(cublasCreate(&blas_));
      ATTRACE_CUBLAS_TRY(cublasSetStream(blas_, stream_));
      workspace_ = DeviceBuffer<char>(kCublasWorkspace);
      ATTRACE_CUBLAS_TRY(cublasSetWorkspace(blas_, workspace_.get(), kCublasWorkspace));
    }
    return blas_;
  }

  template <class T>
  void gemm_score(HostMatrix<T> a, HostMatrix<T> b, double alpha, GemmMath math, HostMatrixMut<double> out);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  DeviceBuffer<char> workspace_;
};

// out += alpha * a b^T, tile by tile: rows [i0, i0 + ni) of a against rows [j0, j0 + nj) of b.
// Row-major a (n x p) read by cuBLAS as the column-major p x n matrix a^T, likewise b, so the
// column-major m x n result tile b a^T is the row-major n x m tile a b^T.
template <class T>
void CudaBackend::gemm_score(HostMatrix<T> a, HostMatrix<T> b, double alpha, GemmMath math, HostMatrixMut<double> out) {
  ATTRACE_CHECK(a.cols == b.cols && out.rows == a.rows && out.cols == b.rows, InputError,
                "score_accumulate_blas: shapes do not match");
  ATTRACE_CHECK((std::is_same_v<T, float> || math == GemmMath::ieee), InputError,
                std::string("score_accumulate_blas: gemm_math '") + to_string(math) + "' needs float32 features");
  if (a.rows == 0 || b.rows == 0) return;
  ATTRACE_CUDA_TRY(cudaSetDevice(device_));
  cublasHandle_t h = blas();
  const int64_t p = a.cols, ta = std::min(kGemmTile, a.rows), tb = std::min(kGemmTile, b.rows);
  DeviceBuffer<T> da(static_cast<size_t>(ta * p)), db(static_cast<size_t>(tb * p));
  DeviceBuffer<uint16_t> ha, hb;  // bfloat16 copies
  if (math == GemmMath::bf16) {
    ha = DeviceBuffer<uint16_t>(static_cast<size_t>(ta * p));
    hb = DeviceBuffer<uint16_t>(static_cast<size_t>(tb * p));
  }
  DeviceBuffer<T> tile(static_cast<size_t>(ta * tb));
  std::vector<T> host_tile(static_cast<size_t>(ta * tb));
  // Converts rows already on the device to the GEMM's input format, in place or into bf16.
  const auto prepare = [&](T* d, uint16_t* h16, int64_t rows) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t count = rows * p;
      if (math == GemmMath::tf32) round_tf32_kernel<<<grid_for(count, 256), 256, 0, stream_>>>(d, count, d);
      if (math == GemmMath::bf16) to_bf16_kernel<<<grid_for(count, 256), 256, 0, stream_>>>(d, count, h16);
      ATTRACE_CUDA_LAUNCH_CHECK(stream_);
    }
  };
  for (int64_t i0 = 0; i0 < a.rows; i0 += ta) {
    const int64_t ni = std::min(ta, a.rows - i0);
    copy_in(da.get(), HostMatrix<T>{a.row(i0), ni, p, a.ld}, stream_);
    prepare(da.get(), ha.get(), ni);
    for (int64_t j0 = 0; j0 < b.rows; j0 += tb) {
      const int64_t nj = std::min(tb, b.rows - j0);
      if (i0 == 0 || b.rows > tb) {  // b fits in one tile: uploaded once
        copy_in(db.get(), HostMatrix<T>{b.row(j0), nj, p, b.ld}, stream_);
        prepare(db.get(), hb.get(), nj);
      }
      if constexpr (std::is_same_v<T, double>) {
        const double one = 1.0, zero = 0.0;
        ATTRACE_CUBLAS_TRY(cublasGemmEx_64(h, CUBLAS_OP_T, CUBLAS_OP_N, nj, ni, p, &one, db.get(), CUDA_R_64F, p, da.get(),
                                           CUDA_R_64F, p, &zero, tile.get(), CUDA_R_64F, nj, CUBLAS_COMPUTE_64F,
                                           CUBLAS_GEMM_DEFAULT));
      } else {
        const float one = 1.0f, zero = 0.0f;
        const bool half = math == GemmMath::bf16;
        const void* A = half ? static_cast<const void*>(hb.get()) : db.get();
        const void* B = half ? static_cast<const void*>(ha.get()) : da.get();
        const cudaDataType_t in = half ? CUDA_R_16BF : CUDA_R_32F;
        const cublasComputeType_t compute = math == GemmMath::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        ATTRACE_CUBLAS_TRY(cublasGemmEx_64(h, CUBLAS_OP_T, CUBLAS_OP_N, nj, ni, p, &one, A, in, p, B, in, p, &zero,
                                           tile.get(), CUDA_R_32F, nj, compute, CUBLAS_GEMM_DEFAULT));
      }
      ATTRACE_CUDA_TRY(cudaMemcpyAsync(host_tile.data(), tile.get(), static_cast<size_t>(ni * nj) * sizeof(T),
                                       cudaMemcpyDeviceToHost, stream_));
      ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
      for (int64_t i = 0; i < ni; ++i) {
        double* o = out.row(i0 + i) + j0;
        for (int64_t j = 0; j < nj; ++j) o[j] += alpha * static_cast<double>(host_tile[static_cast<size_t>(i * nj + j)]);
      }
    }
  }
}

void CudaBackend::segmented_row_sum(HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out) {
  ATTRACE_CHECK(out.cols == x.cols, InputError, "segmented_row_sum: column counts differ");
  // Rows of each segment in ascending order (a stable counting sort), validated like the CPU twin.
  std::vector<int64_t> start(static_cast<size_t>(out.rows) + 1, 0), rows(static_cast<size_t>(x.rows));
  for (int64_t i = 0; i < x.rows; ++i) {
    const int64_t s = segment[i];
    ATTRACE_CHECK(s >= 0 && s < out.rows, InputError,
                  "segmented_row_sum: row " + std::to_string(i) + " has segment " + std::to_string(s) + " outside [0, " +
                      std::to_string(out.rows) + ")");
    ++start[static_cast<size_t>(s) + 1];
  }
  for (size_t s = 0; s < static_cast<size_t>(out.rows); ++s) start[s + 1] += start[s];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < x.rows; ++i) rows[static_cast<size_t>(fill[static_cast<size_t>(segment[i])]++)] = i;
  if (x.rows == 0 || x.cols == 0 || out.rows == 0) return;
  ATTRACE_CUDA_TRY(cudaSetDevice(device_));
  DeviceBuffer<double> dx(static_cast<size_t>(x.rows * x.cols)), dout(static_cast<size_t>(out.rows * out.cols));
  DeviceBuffer<int64_t> dstart(start.size()), drows(rows.size());
  copy_in(dx.get(), x, stream_);
  copy_in(dout.get(), HostMatrix<double>(out), stream_);
  ATTRACE_CUDA_TRY(cudaMemcpyAsync(dstart.get(), start.data(), start.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream_));
  ATTRACE_CUDA_TRY(cudaMemcpyAsync(drows.get(), rows.data(), rows.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream_));
  segsum_kernel<<<grid_for(out.rows * x.cols, 256), 256, 0, stream_>>>(dx.get(), x.cols, dstart.get(), drows.get(),
                                                                       out.rows, dout.get());
  ATTRACE_CUDA_LAUNCH_CHECK(stream_);
  copy_out(out, dout.get(), stream_);
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
}

std::vector<TopK> CudaBackend::column_topk(HostMatrix<double> x, int64_t k) {
  ATTRACE_CHECK(k >= 0, InputError, "column_topk: k must be >= 0, got " + std::to_string(k));
  const int64_t kk = std::min(k, x.rows), n = x.rows, m = x.cols;
  std::vector<TopK> result(static_cast<size_t>(m));
  if (kk == 0 || m == 0) return result;
  // Row slices per column: enough to keep the GPU busy, few enough that the per-slice lists
  // (2 x m x slices x kk entries) stay within 256 MiB and the merge reads at most 64 lists.
  const int64_t budget = (int64_t{256} << 20) / static_cast<int64_t>(2 * sizeof(TopEntry));
  int64_t slices = std::min<int64_t>({64, std::max<int64_t>(1, n / std::max<int64_t>(64, 4 * kk)),
                                      std::max<int64_t>(1, budget / (m * kk))});
  const int64_t chunk = (n + slices - 1) / slices;
  slices = (n + chunk - 1) / chunk;
  ATTRACE_CUDA_TRY(cudaSetDevice(device_));
  DeviceBuffer<double> dx(static_cast<size_t>(n * m));
  DeviceBuffer<TopEntry> prop(static_cast<size_t>(m * slices * kk)), opp(static_cast<size_t>(m * slices * kk));
  DeviceBuffer<TopEntry> best_high(static_cast<size_t>(m * kk)), best_low(static_cast<size_t>(m * kk));
  DeviceBuffer<int64_t> count(static_cast<size_t>(m * slices)), nan_row(static_cast<size_t>(m * slices)),
      found(static_cast<size_t>(m));
  copy_in(dx.get(), x, stream_);
  const dim3 block(kTopCols, kTopSlices);
  const dim3 grid(static_cast<unsigned>((m + kTopCols - 1) / kTopCols),
                  static_cast<unsigned>((slices + kTopSlices - 1) / kTopSlices));
  topk_partial_kernel<<<grid, block, 0, stream_>>>(dx.get(), n, m, slices, chunk, kk, prop.get(), opp.get(), count.get(),
                                                   nan_row.get());
  ATTRACE_CUDA_LAUNCH_CHECK(stream_);
  // The lowest NaN row, and in it the lowest column, as the CPU twin reports it.
  std::vector<int64_t> nans(static_cast<size_t>(m * slices));
  ATTRACE_CUDA_TRY(cudaMemcpyAsync(nans.data(), nan_row.get(), nans.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, stream_));
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
  int64_t nan_i = -1;
  for (const int64_t r : nans)
    if (r >= 0 && (nan_i < 0 || r < nan_i)) nan_i = r;
  if (nan_i >= 0) {
    int64_t nan_j = 0;
    while (!std::isnan(x.row(nan_i)[nan_j])) ++nan_j;
    throw NumericError("column_topk: NaN score at row " + std::to_string(nan_i) + ", column " + std::to_string(nan_j));
  }
  topk_merge_kernel<<<grid_for(m, 128), 128, 0, stream_>>>(prop.get(), opp.get(), count.get(), m, slices, kk,
                                                           best_high.get(), best_low.get(), found.get());
  ATTRACE_CUDA_LAUNCH_CHECK(stream_);
  std::vector<TopEntry> high(static_cast<size_t>(m * kk)), low(static_cast<size_t>(m * kk));
  std::vector<int64_t> got(static_cast<size_t>(m));
  ATTRACE_CUDA_TRY(cudaMemcpyAsync(high.data(), best_high.get(), high.size() * sizeof(TopEntry), cudaMemcpyDeviceToHost, stream_));
  ATTRACE_CUDA_TRY(cudaMemcpyAsync(low.data(), best_low.get(), low.size() * sizeof(TopEntry), cudaMemcpyDeviceToHost, stream_));
  ATTRACE_CUDA_TRY(cudaMemcpyAsync(got.data(), found.get(), got.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, stream_));
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
  for (int64_t j = 0; j < m; ++j) {
    ATTRACE_CHECK(got[static_cast<size_t>(j)] == kk, RuntimeFailure,
                  "column_topk: the GPU kept " + std::to_string(got[static_cast<size_t>(j)]) + " entries for column " +
                      std::to_string(j) + ", expected " + std::to_string(kk));
    auto& t = result[static_cast<size_t>(j)];
    t.proponents.assign(high.begin() + j * kk, high.begin() + (j + 1) * kk);
    t.opponents.assign(low.begin() + j * kk, low.begin() + (j + 1) * kk);
  }
  return result;
}

void CudaBackend::project_kronecker(HostMatrix<float> x, HostMatrix<float> delta, int64_t positions, const ProjectionSpec& in,
                                    const ProjectionSpec& out_spec, HostMatrixMut<float> out) {
  ATTRACE_CHECK(positions >= 1 && x.rows == delta.rows && x.rows % positions == 0, InputError,
                "kronecker projection: inputs have " + std::to_string(x.rows) + " and " + std::to_string(delta.rows) +
                    " rows, not a whole number of examples of " + std::to_string(positions) + " positions");
  const int64_t examples = x.rows / positions, ki = in.k, ko = out_spec.k;
  ATTRACE_CHECK(ki > 0 && ko > 0, InputError, "kronecker projection: k must be >= 1");
  ATTRACE_CHECK(out.rows == examples && out.cols == ki * ko, InputError,
                "kronecker projection: output must be " + std::to_string(examples) + "x" + std::to_string(ki * ko));
  if (examples == 0) return;
  ATTRACE_CUDA_TRY(cudaSetDevice(device_));
  DeviceBuffer<float> dx(static_cast<size_t>(x.rows * x.cols)), dd(static_cast<size_t>(delta.rows * delta.cols));
  DeviceBuffer<float> xp(static_cast<size_t>(x.rows * ki)), dp(static_cast<size_t>(x.rows * ko));
  DeviceBuffer<float> dout(static_cast<size_t>(examples * ki * ko));
  copy_in(dx.get(), x, stream_);
  copy_in(dd.get(), delta, stream_);
  project_kronecker_device(dx.get(), dd.get(), examples, positions, x.cols, delta.cols, in, out_spec, xp.get(), dp.get(),
                           dout.get(), stream_);
  copy_out(out, dout.get(), stream_);
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
}

}  // namespace

// project_dense_device: projection.cu.

void kronecker_outer_device(const float* xp, const float* dp, int64_t examples, int64_t positions, int64_t k_in,
                            int64_t k_out, float* out, void* stream) {
  if (examples == 0) return;
  const cudaStream_t s = as_stream(stream);
  kron_outer_kernel<<<grid_for(examples * k_in * k_out, 256), 256, 0, s>>>(xp, dp, examples, positions, k_in, k_out, out);
  ATTRACE_CUDA_LAUNCH_CHECK(s);
}

void project_kronecker_device(const float* x, const float* delta, int64_t examples, int64_t positions, int64_t d_in,
                              int64_t d_out, const ProjectionSpec& in, const ProjectionSpec& out_spec, float* xp,
                              float* dp, float* out, void* stream) {
  project_dense_device(x, examples * positions, d_in, in, xp, stream);
  project_dense_device(delta, examples * positions, d_out, out_spec, dp, stream);
  kronecker_outer_device(xp, dp, examples, positions, in.k, out_spec.k, out, stream);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_backend(int device) { return std::make_unique<CudaBackend>(device); }

}  // namespace attrace::kernels::cuda
