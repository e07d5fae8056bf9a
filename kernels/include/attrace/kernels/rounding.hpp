#pragma once
// Input roundings of the reduced-precision GEMM scoring modes (attribution.gemm_math), shared by
// host and device code. Both backends round the features with these functions before the GEMM,
// so the CPU and CUDA GEMMs multiply the same values; products of two rounded values are exact in
// float32 (11 + 11 and 8 + 8 significant bits), and only the order of the float32 sums differs.
#include <attrace/kernels/hd.hpp>

#include <cstdint>
#include <cstring>

namespace attrace::kernels {

ATTRACE_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

ATTRACE_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/// x rounded to TF32 (8 exponent bits, 10 stored significand bits), to nearest with ties away
/// from zero (PTX cvt.rna.tf32.f32). Infinities and NaNs pass through; a value that rounds past
/// the largest finite TF32 becomes infinity, as in hardware.
ATTRACE_HD float round_tf32(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7F800000u) == 0x7F800000u) return x;
  return bits_float((u + 0x1000u) & 0xFFFFE000u);
}

/// bfloat16 bits of x, rounded to nearest even (as __float2bfloat16_rn); NaNs stay NaN (quiet).
ATTRACE_HD uint16_t bf16_bits_rne(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu) != 0) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/// x rounded to bfloat16 (nearest even) and widened back to float32 exactly.
ATTRACE_HD float round_bf16(float x) { return bits_float(static_cast<uint32_t>(bf16_bits_rne(x)) << 16); }

}  // namespace attrace::kernels
