#pragma once
// CPU kernels of the FMA scoring order (kernels/backend.hpp kFmaChunk, fma_dot.hpp).
#include <attrace/kernels/backend.hpp>

namespace attrace::kernels::cpu {

/// out[i][j] += alpha * fma_dot(a[i], b[j]) on `threads` threads (shapes checked by the caller).
void score_fma(HostMatrix<float> a, HostMatrix<float> b, double alpha, HostMatrixMut<double> out, int threads);
/// out[i] += alpha * fma_dot(a[i], a[i]).
void sqnorm_fma(HostMatrix<float> a, double alpha, double* out, int threads);
/// The instruction set the FMA kernels use on this CPU: "avx512", "avx2" or "reference".
const char* fma_isa();

}  // namespace attrace::kernels::cpu
