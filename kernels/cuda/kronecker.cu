// Kronecker per-layer projection on the GPU: the dense projection (projection.cu) of a layer's
// inputs and output gradients, then the outer-product sums over positions in the CPU twin's order
// (kernels/src/cpu_projection.cpp): t ascending, unfused float32.
#include "resources.cuh"

#include <string>

namespace attrace::kernels::cuda {
namespace {

// One thread per (example e, a, c): sum over positions t ascending of dp[e*T + t][a] * xp[e*T + t][c].
__global__ void kron_outer_kernel(const float* __restrict__ xp, int64_t ldx, const float* __restrict__ dp, int64_t ldd,
                                  int64_t examples, int64_t positions, int64_t ki, int64_t ko, float* __restrict__ out,
                                  int64_t ldo) {
  const int64_t width = ki * ko, total = examples * width;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = t / width, rem = t % width, a = rem / ki, c = rem % ki;
    float acc = 0.0f;
    for (int64_t s = 0; s < positions; ++s) {
      const int64_t row = e * positions + s;
      acc = __fadd_rn(acc, __fmul_rn(dp[row * ldd + a], xp[row * ldx + c]));
    }
    out[e * ldo + rem] = acc;
  }
}

}  // namespace

void kronecker_outer_device(const Resources& res, DeviceMatrix<float> xp, DeviceMatrix<float> dp, int64_t positions,
                            DeviceMatrixMut<float> out) {
  check_view(xp, "kronecker projection");
  check_view(dp, "kronecker projection");
  check_view(out, "kronecker projection");
  ATTRACE_CHECK(positions >= 1 && xp.rows == dp.rows && xp.rows % positions == 0, InputError,
                "kronecker projection: factors have " + std::to_string(xp.rows) + " and " + std::to_string(dp.rows) +
                    " rows, not a whole number of examples of " + std::to_string(positions) + " positions");
  const int64_t examples = xp.rows / positions;
  ATTRACE_CHECK(out.rows == examples && out.cols == xp.cols * dp.cols, InputError,
                "kronecker projection: output must be " + std::to_string(examples) + "x" + std::to_string(xp.cols * dp.cols));
  if (examples == 0 || out.cols == 0) return;
  res.impl().activate();
  const cudaStream_t s = res.impl().stream;
  kron_outer_kernel<<<grid_for(examples * out.cols, 256), 256, 0, s>>>(xp.data, xp.ld, dp.data, dp.ld, examples, positions,
                                                                      xp.cols, dp.cols, out.data, out.ld);
  ATTRACE_CUDA_LAUNCH_CHECK(s);
}

void project_kronecker_device(const Resources& res, DeviceMatrix<float> x, DeviceMatrix<float> delta, int64_t positions,
                              const ProjectionSpec& in, const ProjectionSpec& out_spec, DeviceMatrixMut<float> xp,
                              DeviceMatrixMut<float> dp, DeviceMatrixMut<float> out) {
  project_dense_device(res, x, in, xp);
  project_dense_device(res, delta, out_spec, dp);
  kronecker_outer_device(res, xp, dp, positions, out);
}

}  // namespace attrace::kernels::cuda
