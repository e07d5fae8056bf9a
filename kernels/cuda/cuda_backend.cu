// CUDA backend. The scoring dot product runs on the GPU in the canonical order of
// kernels/src/canonical_dot.hpp (lane q % 8, explicit __dmul_rn/__dadd_rn so nvcc cannot fuse
// them), so it equals the CPU backend bit for bit. The dense projection runs on the GPU in the
// CPU kernel's order (ascending rows of P, explicit __fmul_rn/__fadd_rn), so Rademacher
// projections are bit-identical too. The epilogues (tranche sums, top-k), the squared norms and
// the Kronecker outer-product sums use the CPU twins for now.
#include "cuda_backend.hpp"
#include "cuda_check.cuh"
#include "../src/cpu_epilogues.hpp"
#include "../src/canonical_dot.hpp"
#include "../src/cpu_projection.hpp"

#include <cuda_runtime.h>

#include <cmath>
#include <utility>

namespace attrace::kernels::cuda {
namespace {

/// Move-only owner of a device allocation.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0) ATTRACE_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&ptr_), n_ * sizeof(T)));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(o.n_) {}
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);  // no-throw in destructors
  }
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

constexpr int kTile = 16;   // outputs per block side
constexpr int kDepth = 64;  // feature elements staged per step (multiple of 8 keeps lanes aligned)

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
  if (i < n && j < m) {
    const double d = __dadd_rn(__dadd_rn(__dadd_rn(l[0], l[1]), __dadd_rn(l[2], l[3])),
                               __dadd_rn(__dadd_rn(l[4], l[5]), __dadd_rn(l[6], l[7])));
    out[i * m + j] = __dadd_rn(out[i * m + j], __dmul_rn(alpha, d));
  }
}

__device__ __forceinline__ float load_float(float v) { return v; }
__device__ __forceinline__ float load_float(BFloat16 v) { return __uint_as_float(static_cast<uint32_t>(v.bits) << 16); }
__device__ __forceinline__ float load_float(Half v) {
  const uint32_t sign = (v.bits & 0x8000u) << 16, exp = (v.bits >> 10) & 0x1Fu, man = v.bits & 0x3FFu;
  if (exp == 0x1F) return __uint_as_float(sign | 0x7F800000u | (man << 13));
  if (exp != 0) return __uint_as_float(sign | ((exp + 112) << 23) | (man << 13));
  const float f = __fmul_rn(static_cast<float>(man), 5.9604644775390625e-8f);  // man * 2^-24, exact
  return sign ? -f : f;
}

constexpr int kProjCols = 128;  // columns per block: one Rademacher sign block per row of P
constexpr int kProjRows = 8;    // batch rows per block (accumulators per thread)
constexpr int kProjDepth = 32;  // rows of P staged per step

// out[b][j] = scale * sum_q g[b][q] * e[q][j], the sum in ascending q with unfused float ops:
// the same order and roundings as kernels/src/cpu_projection.cpp.
template <class T>
__global__ void project_kernel(const T* __restrict__ g, int64_t rows, int64_t p, ProjectionSpec spec, float scale,
                               float* __restrict__ out) {
  __shared__ float gs[kProjRows][kProjDepth];
  __shared__ Philox4 signs[kProjDepth];
  const int c = threadIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kProjCols + c;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kProjRows;
  float acc[kProjRows];
#pragma unroll
  for (int r = 0; r < kProjRows; ++r) acc[r] = 0.0f;
  for (int64_t q0 = 0; q0 < p; q0 += kProjDepth) {
    const int depth = static_cast<int>(p - q0 < kProjDepth ? p - q0 : kProjDepth);
    for (int e = c; e < kProjRows * kProjDepth; e += kProjCols) {
      const int r = e / kProjDepth, qq = e % kProjDepth;
      gs[r][qq] = (b0 + r < rows && qq < depth) ? load_float(g[(b0 + r) * p + q0 + qq]) : 0.0f;
    }
    if (spec.kind == ProjectionKind::rademacher && c < depth) signs[c] = rademacher_block(spec, q0 + c, blockIdx.x);
    __syncthreads();
    if (j < spec.k) {
      for (int qq = 0; qq < depth; ++qq) {
        const float e = spec.kind == ProjectionKind::rademacher ? rademacher_sign(signs[qq], j)
                                                                : static_cast<float>(gaussian_unscaled(spec, q0 + qq, j));
#pragma unroll
        for (int r = 0; r < kProjRows; ++r) acc[r] = __fadd_rn(acc[r], __fmul_rn(gs[r][qq], e));
      }
    }
    __syncthreads();
  }
  if (j < spec.k)
    for (int r = 0; r < kProjRows; ++r)
      if (b0 + r < rows) out[(b0 + r) * spec.k + j] = __fmul_rn(acc[r], scale);
}

template <class T>
void copy_in(DeviceBuffer<T>& dst, HostMatrix<T> src, cudaStream_t s) {
  ATTRACE_CUDA_TRY(cudaMemcpy2DAsync(dst.get(), src.cols * sizeof(T), src.data, src.ld * sizeof(T),
                                     src.cols * sizeof(T), src.rows, cudaMemcpyHostToDevice, s));
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    ATTRACE_CUDA_TRY(cudaSetDevice(device_));
    ATTRACE_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~CudaBackend() override {
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
  void score_accumulate_blas(HostMatrix<float> a, HostMatrix<float> b, double alpha, HostMatrixMut<double> out) override {
    cpu::score_blas(a, b, alpha, out);
  }
  void score_accumulate_blas(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out) override {
    cpu::score_blas(a, b, alpha, out);
  }
  void sqnorm_accumulate(HostMatrix<float> a, double alpha, double* out) override {
    for (int64_t i = 0; i < a.rows; ++i) out[i] += alpha * canonical_dot(a.row(i), a.row(i), a.cols);
  }
  void sqnorm_accumulate(HostMatrix<double> a, double alpha, double* out) override {
    for (int64_t i = 0; i < a.rows; ++i) out[i] += alpha * canonical_dot(a.row(i), a.row(i), a.cols);
  }
  void segmented_row_sum(HostMatrix<double> x, const int64_t* segment,
                         HostMatrixMut<double> out) override {
    cpu::segmented_row_sum(x, segment, out);
  }
  std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k) override {
    return cpu::column_topk(x, k);
  }
  void project_dense(HostMatrix<float> g, const ProjectionSpec& s, HostMatrixMut<float> out) override { project(g, s, out); }
  void project_dense(HostMatrix<BFloat16> g, const ProjectionSpec& s, HostMatrixMut<float> out) override {
    project(g, s, out);
  }
  void project_dense(HostMatrix<Half> g, const ProjectionSpec& s, HostMatrixMut<float> out) override { project(g, s, out); }
  void project_kronecker(HostMatrix<float> x, HostMatrix<float> delta, int64_t positions, const ProjectionSpec& in,
                         const ProjectionSpec& out_spec, HostMatrixMut<float> out) override {
    cpu::project_kronecker(*this, x, delta, positions, in, out_spec, out, cpu::hardware_threads());
  }

 private:
  template <class T>
  void project(HostMatrix<T> g, const ProjectionSpec& s, HostMatrixMut<float> out) {
    ATTRACE_CHECK(s.k > 0 && out.rows == g.rows && out.cols == s.k && g.cols >= 1, InputError,
                  "project_dense: shapes do not match");
    if (g.rows == 0) return;
    if (s.kind == ProjectionKind::identity) return cpu::project_dense(g, s, out, 1);  // a copy
    ATTRACE_CUDA_TRY(cudaSetDevice(device_));
    DeviceBuffer<T> dg(static_cast<size_t>(g.rows * g.cols));
    DeviceBuffer<float> dout(static_cast<size_t>(out.rows * out.cols));
    copy_in(dg, g, stream_);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.k)));
    const dim3 grid(static_cast<unsigned>((s.k + kProjCols - 1) / kProjCols), static_cast<unsigned>((g.rows + kProjRows - 1) / kProjRows));
    ATTRACE_CHECK(grid.y <= 65535u, InputError, "project_dense: batch too large for one launch");
    project_kernel<T><<<grid, kProjCols, 0, stream_>>>(dg.get(), g.rows, g.cols, s, scale, dout.get());
    ATTRACE_CUDA_LAUNCH_CHECK(stream_);
    ATTRACE_CUDA_TRY(cudaMemcpy2DAsync(out.data, out.ld * sizeof(float), dout.get(), out.cols * sizeof(float),
                                       out.cols * sizeof(float), out.rows, cudaMemcpyDeviceToHost, stream_));
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
    copy_in(da, a, stream_);
    copy_in(db, b, stream_);
    ATTRACE_CUDA_TRY(cudaMemcpy2DAsync(dout.get(), out.cols * sizeof(double), out.data,
                                       out.ld * sizeof(double), out.cols * sizeof(double), out.rows,
                                       cudaMemcpyHostToDevice, stream_));
    const dim3 block(kTile, kTile);
    const dim3 grid(static_cast<unsigned>((b.rows + kTile - 1) / kTile),
                    static_cast<unsigned>((a.rows + kTile - 1) / kTile));
    ATTRACE_CHECK(grid.y <= 65535u, InputError, "score_accumulate: too many rows for one launch");
    score_kernel<T><<<grid, block, 0, stream_>>>(da.get(), db.get(), a.rows, b.rows, a.cols,
                                                 alpha, dout.get());
    ATTRACE_CUDA_LAUNCH_CHECK(stream_);
    ATTRACE_CUDA_TRY(cudaMemcpy2DAsync(out.data, out.ld * sizeof(double), dout.get(),
                                       out.cols * sizeof(double), out.cols * sizeof(double),
                                       out.rows, cudaMemcpyDeviceToHost, stream_));
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream_));
  }

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

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
