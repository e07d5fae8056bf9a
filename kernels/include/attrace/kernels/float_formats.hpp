#pragma once
// Widening of the reduced-precision input formats (bfloat16, IEEE half) to float32, shared by host
// and device code: the CPU and CUDA projections read the same float32 value from the same bits
// because they run this one function. Every bfloat16 and half value is exactly representable in
// float32, so the conversion is exact (no rounding mode involved).
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/hd.hpp>
#include <attrace/kernels/rounding.hpp>

#include <cstdint>

namespace attrace::kernels {

/// The value itself (lets templated kernels widen any input type).
ATTRACE_HD float to_float(float v) { return v; }

/// bfloat16 to float32: the stored bits are the upper half of the float32.
ATTRACE_HD float to_float(BFloat16 v) { return bits_float(static_cast<uint32_t>(v.bits) << 16); }

/// IEEE half to float32, exactly; infinities and NaNs (payload kept) included.
ATTRACE_HD float to_float(Half v) {
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1Fu) return bits_float(sign | 0x7F800000u | (man << 13));
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24 is a product of exact values with a power-of-two factor, so it
  // is exact (a float32 normal number, or zero) on every host and device.
  return bits_float(sign | float_bits(static_cast<float>(man) * 0x1p-24f));
}

}  // namespace attrace::kernels
