#pragma once
// CPU projection kernels (dense on-the-fly random projection, Kronecker per-layer projection),
// shared by the CPU backend and the CUDA backend's host-side paths.
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::cpu {

/// float32 value of a bfloat16 / half / float input.
inline float to_float(float v) { return v; }
float to_float(BFloat16 v);
float to_float(Half v);

/// Hardware threads of this machine (at least 1).
int hardware_threads();

void project_dense(HostMatrix<float> g, const ProjectionSpec& spec, HostMatrixMut<float> out, int threads);
void project_dense(HostMatrix<BFloat16> g, const ProjectionSpec& spec, HostMatrixMut<float> out, int threads);
void project_dense(HostMatrix<Half> g, const ProjectionSpec& spec, HostMatrixMut<float> out, int threads);
void project_kronecker(Backend& backend, HostMatrix<float> x, HostMatrix<float> delta, int64_t positions,
                       const ProjectionSpec& in, const ProjectionSpec& out_spec, HostMatrixMut<float> out, int threads);

}  // namespace attrace::kernels::cpu
