// The CUDA backend: kernels::Backend on host matrices, built on the device entry points of
// cuda_device.hpp and the staged operations of host_ops.cuh. One cuda::Resources (device, stream,
// cuBLAS handle, scratch arenas) is created with the backend and serves every call: no call
// allocates once the arenas have grown to the largest shape seen, and the device is selected at
// construction (re-selected only if the calling thread has another one current).
//
// Every kernel reproduces its CPU twin's order of operations with explicit round-to-nearest
// intrinsics, so results are bit-identical to the CPU backend:
//   - canonical scoring and squared norms (scoring.cu): kernels/src/canonical_dot.hpp, lane q % 8;
//   - dense projection (projection.cu): rows of P ascending within 1024-row chunks, chunk sums
//     ascending, float32 (Gaussian entries excepted: CUDA's and libm's sin/cos/log may differ in
//     the last bit, docs/architecture.md);
//   - Kronecker outer-product sums (kronecker.cu): positions t ascending;
//   - the Linear-layer product (linear.cu): one __fmaf_rn chain per output, q ascending;
//   - tranche sums (epilogues.cu): rows ascending per (tranche, query);
//   - top-k (epilogues.cu): a unique answer under the order of topk_order.hpp.
// The GEMM scoring path (gemm.cu) goes through cuBLAS with an explicit math mode and a fixed
// workspace, which cuBLAS documents as bitwise reproducible run to run on one GPU model.
#include "cuda_backend.hpp"
#include "host_ops.cuh"
#include "../src/cpu_linear.hpp"  // check_linear_shapes: the CPU backend's checks and messages

#include <string>
#include <type_traits>
#include <vector>

namespace attrace::kernels::cuda {
namespace {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : res_(device) {}

  std::string name() const override { return "cuda"; }

  void score_accumulate(HostMatrix<float> a, HostMatrix<float> b, double alpha, HostMatrixMut<double> out) override {
    score(a, b, alpha, out);
  }
  void score_accumulate(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out) override {
    score(a, b, alpha, out);
  }
  void score_accumulate_blas(HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math,
                             HostMatrixMut<double> out) override {
    gemm_score_host(res_, a, b, alpha, math, out);
  }
  void score_accumulate_blas(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out) override {
    gemm_score_host(res_, a, b, alpha, GemmMath::ieee, out);
  }
  void score_accumulate_fma(HostMatrix<float> a, HostMatrix<float> b, double alpha, HostMatrixMut<double> out) override {
    score(a, b, alpha, out, true);
  }
  void sqnorm_accumulate_fma(HostMatrix<float> a, double alpha, double* out) override { sqnorm(a, alpha, out, true); }
  void linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out) override;
  void sqnorm_accumulate(HostMatrix<float> a, double alpha, double* out) override { sqnorm(a, alpha, out); }
  void sqnorm_accumulate(HostMatrix<double> a, double alpha, double* out) override { sqnorm(a, alpha, out); }
  void segmented_row_sum(HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out) override {
    segmented_row_sum_host(res_, x, segment, out);
  }
  std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k) override { return column_topk_host(res_, x, k); }
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
    Resources::Impl& r = res_.impl();
    r.activate();
    ScratchPlan plan;
    const auto sg = plan.add<T>(g.rows * g.cols);
    const auto so = plan.add<float>(out.rows * out.cols);
    void* base = r.scratch(plan);
    const auto dg = slot_matrix(base, sg, g.rows, g.cols);
    const auto dout = slot_matrix(base, so, out.rows, out.cols);
    copy_in(dg, g, r.stream);
    project_dense_device(res_, DeviceMatrix<T>(dg), s, dout);
    copy_out(out, DeviceMatrix<float>(dout), r.stream);
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
  }

  template <class T>
  void score(HostMatrix<T> a, HostMatrix<T> b, double alpha, HostMatrixMut<double> out, bool fma = false) {
    ATTRACE_CHECK(a.cols == b.cols && out.rows == a.rows && out.cols == b.rows, InputError,
                  "score_accumulate: shapes do not match");
    if (a.rows == 0 || b.rows == 0) return;
    Resources::Impl& r = res_.impl();
    r.activate();
    ScratchPlan plan;
    const auto sa = plan.add<T>(a.rows * a.cols), sb = plan.add<T>(b.rows * b.cols);
    const auto so = plan.add<double>(out.rows * out.cols);
    void* base = r.scratch(plan);
    const auto da = slot_matrix(base, sa, a.rows, a.cols), db = slot_matrix(base, sb, b.rows, b.cols);
    const auto dout = slot_matrix(base, so, out.rows, out.cols);
    copy_in(da, a, r.stream);
    copy_in(db, b, r.stream);
    copy_in(dout, HostMatrix<double>(out), r.stream);
    if constexpr (std::is_same_v<T, float>) {
      if (fma) score_accumulate_fma_device(res_, DeviceMatrix<T>(da), DeviceMatrix<T>(db), alpha, dout);
      else score_accumulate_device(res_, DeviceMatrix<T>(da), DeviceMatrix<T>(db), alpha, dout);
    } else {
      score_accumulate_device(res_, DeviceMatrix<T>(da), DeviceMatrix<T>(db), alpha, dout);
    }
    copy_out(out, DeviceMatrix<double>(dout), r.stream);
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
  }

  template <class T>
  void sqnorm(HostMatrix<T> a, double alpha, double* out, bool fma = false) {
    if (a.rows == 0) return;
    Resources::Impl& r = res_.impl();
    r.activate();
    ScratchPlan plan;
    const auto sa = plan.add<T>(a.rows * a.cols);
    const auto so = plan.add<double>(a.rows);
    void* base = r.scratch(plan);
    const auto da = slot_matrix(base, sa, a.rows, a.cols);
    const auto dout = slot_matrix(base, so, a.rows, 1);
    copy_in(da, a, r.stream);
    copy_in(dout, view(static_cast<const double*>(out), a.rows, 1), r.stream);
    if constexpr (std::is_same_v<T, float>) {
      if (fma) sqnorm_accumulate_fma_device(res_, DeviceMatrix<T>(da), alpha, dout);
      else sqnorm_accumulate_device(res_, DeviceMatrix<T>(da), alpha, dout);
    } else {
      sqnorm_accumulate_device(res_, DeviceMatrix<T>(da), alpha, dout);
    }
    copy_out(view_mut(out, a.rows, 1), DeviceMatrix<double>(dout), r.stream);
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
  }

  Resources res_;
};

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
  Resources::Impl& r = res_.impl();
  r.activate();
  ScratchPlan plan;
  const auto sx = plan.add<float>(x.rows * x.cols), sd = plan.add<float>(delta.rows * delta.cols);
  const auto sxp = plan.add<float>(x.rows * ki), sdp = plan.add<float>(x.rows * ko), so = plan.add<float>(examples * ki * ko);
  void* base = r.scratch(plan);
  const auto dx = slot_matrix(base, sx, x.rows, x.cols), dd = slot_matrix(base, sd, delta.rows, delta.cols);
  const auto dout = slot_matrix(base, so, examples, ki * ko);
  copy_in(dx, x, r.stream);
  copy_in(dd, delta, r.stream);
  project_kronecker_device(res_, DeviceMatrix<float>(dx), DeviceMatrix<float>(dd), positions, in, out_spec,
                           slot_matrix(base, sxp, x.rows, ki), slot_matrix(base, sdp, x.rows, ko), dout);
  copy_out(out, DeviceMatrix<float>(dout), r.stream);
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
}

void CudaBackend::linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out) {
  cpu::check_linear_shapes(a, bt, out);
  if (a.rows == 0 || bt.cols == 0) return;
  Resources::Impl& r = res_.impl();
  r.activate();
  ScratchPlan plan;
  const auto sa = plan.add<float>(a.rows * a.cols), sb = plan.add<float>(bt.rows * bt.cols);
  const auto sbias = plan.add<float>(bias != nullptr ? bt.cols : 0), so = plan.add<float>(out.rows * out.cols);
  void* base = r.scratch(plan);
  const auto da = slot_matrix(base, sa, a.rows, a.cols), db = slot_matrix(base, sb, bt.rows, bt.cols);
  const auto dout = slot_matrix(base, so, out.rows, out.cols);
  copy_in(da, a, r.stream);
  copy_in(db, bt, r.stream);
  if (bias != nullptr) copy_in(slot_matrix(base, sbias, 1, bt.cols), view(bias, 1, bt.cols), r.stream);
  linear_fma_device(res_, DeviceMatrix<float>(da), DeviceMatrix<float>(db), bias != nullptr ? at(base, sbias) : nullptr, dout);
  copy_out(out, DeviceMatrix<float>(dout), r.stream);
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_backend(int device) { return std::make_unique<CudaBackend>(device); }

}  // namespace attrace::kernels::cuda
