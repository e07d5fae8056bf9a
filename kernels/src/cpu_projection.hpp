#pragma once
// CPU projection kernels (dense on-the-fly random projection, Kronecker per-layer projection),
// shared by the CPU backend and the CUDA backend's host-side paths.
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/float_formats.hpp>  // to_float: the inputs' widening, shared with CUDA

namespace attrace::kernels::cpu {

/// Hardware threads of this machine (at least 1).
int hardware_threads();

void project_dense(HostMatrix<float> g, const ProjectionSpec& spec, HostMatrixMut<float> out, int threads);
void project_dense(HostMatrix<BFloat16> g, const ProjectionSpec& spec, HostMatrixMut<float> out, int threads);
void project_dense(HostMatrix<Half> g, const ProjectionSpec& spec, HostMatrixMut<float> out, int threads);
void project_kronecker(Backend& backend, HostMatrix<float> x, HostMatrix<float> delta, int64_t positions,
                       const ProjectionSpec& in, const ProjectionSpec& out_spec, HostMatrixMut<float> out, int threads);

}  // namespace attrace::kernels::cpu
