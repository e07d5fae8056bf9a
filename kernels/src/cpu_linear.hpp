#pragma once
// CPU kernel of the Linear-layer product (Backend::linear_fma): one float32 FMA chain per output.
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::cpu {

/// InputError unless a (rows x k), bt (k x m) and out (rows x m) fit together and each view is
/// usable (ld >= cols, data present when not empty). Shared with the CUDA backend.
void check_linear_shapes(HostMatrix<float> a, HostMatrix<float> bt, HostMatrix<float> out);

/// out = bias + a bt, each output fmaf-chained over q ascending, on `threads` threads (shapes
/// checked by the caller). Picks AVX-512, AVX2 or the scalar loop at run time; all give the same bits.
void linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out, int threads);

}  // namespace attrace::kernels::cpu
