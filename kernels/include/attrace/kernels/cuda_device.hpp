#pragma once
// Device-pointer entry points of the CUDA kernels, for callers that keep their data on the GPU
// (bench/bench_gpu.cpp; later a device-resident feature pipeline). The CUDA backend's host-matrix
// methods are built on these. Declared without CUDA headers: `stream` is a cudaStream_t (nullptr:
// the default stream). Every pointer is a device pointer to a dense row-major matrix. The calls
// enqueue work and return without waiting; a failed launch throws attrace::RuntimeFailure.
// Defined only in builds with CUDA (attrace::kernels::cuda_compiled()).
#include <attrace/kernels/backend.hpp>

#include <cstdint>

namespace attrace::kernels::cuda {

/// out (rows x spec.k) = g (rows x p) P, P generated on the fly: the CPU backend's order and
/// roundings (bit-identical for Rademacher). Identity specs copy (k must equal p).
template <class T>
void project_dense_device(const T* g, int64_t rows, int64_t p, const ProjectionSpec& spec, float* out, void* stream);
extern template void project_dense_device<float>(const float*, int64_t, int64_t, const ProjectionSpec&, float*, void*);
extern template void project_dense_device<BFloat16>(const BFloat16*, int64_t, int64_t, const ProjectionSpec&, float*,
                                                    void*);
extern template void project_dense_device<Half>(const Half*, int64_t, int64_t, const ProjectionSpec&, float*, void*);

/// out[e][a*k_in + c] = sum_t dp[e*T + t][a] * xp[e*T + t][c], t ascending, unfused float32:
/// the Kronecker outer-product sums over already projected factors xp ((E*T) x k_in) and
/// dp ((E*T) x k_out).
void kronecker_outer_device(const float* xp, const float* dp, int64_t examples, int64_t positions, int64_t k_in,
                            int64_t k_out, float* out, void* stream);

/// The whole Kronecker projection of one layer: x ((E*T) x d_in), delta ((E*T) x d_out) to
/// out (E x k_out*k_in). Scratch: xp ((E*T) x in.k) and dp ((E*T) x out_spec.k) floats.
void project_kronecker_device(const float* x, const float* delta, int64_t examples, int64_t positions, int64_t d_in,
                              int64_t d_out, const ProjectionSpec& in, const ProjectionSpec& out_spec, float* xp,
                              float* dp, float* out, void* stream);

}  // namespace attrace::kernels::cuda
