#pragma once
// Device-side interface of the CUDA backend, for callers that keep their data on the GPU
// (bench/bench_gpu.cu; later a device-resident feature pipeline). The CUDA backend's host-matrix
// methods are built on these. Declared without CUDA headers, and defined only in builds with CUDA
// (attrace::kernels::cuda_compiled()).
//
// Device memory has its own view types (DeviceMatrix / DeviceMatrixMut), distinct from the host
// views of matrix.hpp and not convertible to or from them, so a host pointer cannot reach a device
// entry point by accident. Every call takes the Resources it runs on first (device, stream, cuBLAS
// handle, scratch), enqueues its work on that stream and returns without waiting; a failed launch
// throws attrace::RuntimeFailure, bad shapes attrace::InputError.
#include <attrace/kernels/backend.hpp>

#include <cstdint>
#include <memory>

namespace attrace::kernels::cuda {

/// Read-only view of a row-major matrix in device memory (rows x cols, row stride `ld` elements).
template <class T>
struct DeviceMatrix {
  const T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  const T* row(int64_t i) const { return data + i * ld; }
};

/// Writable view of a row-major matrix in device memory.
template <class T>
struct DeviceMatrixMut {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  T* row(int64_t i) const { return data + i * ld; }
  operator DeviceMatrix<T>() const { return {data, rows, cols, ld}; }  // NOLINT: views convert freely
};

/// Dense (ld == cols) read-only view of device memory; `data` must be a device pointer.
template <class T>
DeviceMatrix<T> device_view(const T* data, int64_t rows, int64_t cols) {
  return {data, rows, cols, cols};
}
/// Dense (ld == cols) writable view of device memory; `data` must be a device pointer.
template <class T>
DeviceMatrixMut<T> device_view_mut(T* data, int64_t rows, int64_t cols) {
  return {data, rows, cols, cols};
}

/// Everything a device call runs on, created once per backend: the device (selected at
/// construction), a non-blocking stream, a cuBLAS handle with a fixed workspace, and a grow-only
/// scratch arena reused across calls. Move-only; not for concurrent use from several threads.
class Resources {
 public:
  /// Selects `device`, creates the stream, the cuBLAS handle (bound to the stream) and its workspace.
  explicit Resources(int device = 0);
  ~Resources();
  Resources(Resources&&) noexcept;
  Resources& operator=(Resources&&) noexcept;
  Resources(const Resources&) = delete;
  Resources& operator=(const Resources&) = delete;

  /// The CUDA device id.
  int device() const;
  /// The stream every call on these resources is enqueued on (a cudaStream_t).
  void* stream() const;
  /// Waits until all work enqueued on the stream is done (RuntimeFailure on a device error).
  void synchronize() const;
  /// Bytes currently held by the scratch arena (it only grows).
  size_t scratch_bytes() const;

  /// The CUDA-typed state, for kernels/cuda only (defined in kernels/cuda/resources.cuh).
  struct Impl;
  /// That state, for kernels/cuda.
  Impl& impl() const;

 private:
  std::unique_ptr<Impl> impl_;
};

/// out[i][j] += alpha * dot(a[i], b[j]) in float64 in the canonical order (bit-identical to the
/// CPU backend). a: n x p, b: m x p, out: n x m; any n (launches are tiled over rows).
void score_accumulate_device(const Resources& res, DeviceMatrix<float> a, DeviceMatrix<float> b, double alpha,
                             DeviceMatrixMut<double> out);
/// Same, for float64 features.
void score_accumulate_device(const Resources& res, DeviceMatrix<double> a, DeviceMatrix<double> b, double alpha,
                             DeviceMatrixMut<double> out);

/// out[i][j] += alpha * fma_dot(a[i], b[j]) in the FMA order (kernels/src/fma_dot.hpp).
void score_accumulate_fma_device(const Resources& res, DeviceMatrix<float> a, DeviceMatrix<float> b, double alpha,
                                 DeviceMatrixMut<double> out);
/// out[i][0] += alpha * fma_dot(a[i], a[i]); out is a.rows x 1.
void sqnorm_accumulate_fma_device(const Resources& res, DeviceMatrix<float> a, double alpha, DeviceMatrixMut<double> out);

/// out = a bt + bias in the Linear FMA order of Backend::linear_fma (bit-identical to the CPU
/// backend): a n x k, bt k x m, bias m floats in device memory or null, out n x m (overwritten).
void linear_fma_device(const Resources& res, DeviceMatrix<float> a, DeviceMatrix<float> bt, const float* bias,
                       DeviceMatrixMut<float> out);

/// out[i][0] += alpha * dot(a[i], a[i]) in the canonical order; out is a.rows x 1.
void sqnorm_accumulate_device(const Resources& res, DeviceMatrix<float> a, double alpha, DeviceMatrixMut<double> out);
/// Same, for float64 features.
void sqnorm_accumulate_device(const Resources& res, DeviceMatrix<double> a, double alpha, DeviceMatrixMut<double> out);

/// out (rows x spec.k) = g (rows x p) P, P generated on the fly: the CPU backend's order and
/// roundings (bit-identical for Rademacher). Identity specs copy (k must equal p). Dense views
/// only (ld == cols; InputError otherwise). Its chunk partials use stream-ordered scratch.
template <class T>
void project_dense_device(const Resources& res, DeviceMatrix<T> g, const ProjectionSpec& spec, DeviceMatrixMut<float> out);
extern template void project_dense_device<float>(const Resources&, DeviceMatrix<float>, const ProjectionSpec&,
                                                 DeviceMatrixMut<float>);
extern template void project_dense_device<BFloat16>(const Resources&, DeviceMatrix<BFloat16>, const ProjectionSpec&,
                                                    DeviceMatrixMut<float>);
extern template void project_dense_device<Half>(const Resources&, DeviceMatrix<Half>, const ProjectionSpec&,
                                                DeviceMatrixMut<float>);

/// out[e][a*k_in + c] = sum_t dp[e*T + t][a] * xp[e*T + t][c], t ascending, unfused float32:
/// the Kronecker outer-product sums over already projected factors xp ((E*T) x k_in) and
/// dp ((E*T) x k_out); out is E x (k_out*k_in), T = `positions`.
void kronecker_outer_device(const Resources& res, DeviceMatrix<float> xp, DeviceMatrix<float> dp, int64_t positions,
                            DeviceMatrixMut<float> out);

/// The whole Kronecker projection of one layer: x ((E*T) x d_in), delta ((E*T) x d_out) to
/// out (E x k_out*k_in). Scratch for the projected factors: xp ((E*T) x in.k), dp ((E*T) x out_spec.k).
/// x, delta, xp and dp must be dense (project_dense_device).
void project_kronecker_device(const Resources& res, DeviceMatrix<float> x, DeviceMatrix<float> delta, int64_t positions,
                              const ProjectionSpec& in, const ProjectionSpec& out_spec, DeviceMatrixMut<float> xp,
                              DeviceMatrixMut<float> dp, DeviceMatrixMut<float> out);

}  // namespace attrace::kernels::cuda
