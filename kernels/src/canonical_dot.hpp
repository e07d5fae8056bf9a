#pragma once
// The canonical dot product shared by every backend: products and sums in float64, element q in
// lane q % 8, lanes combined pairwise. The CUDA kernel reproduces this order exactly.
#include <attrace/kernels/backend.hpp>

#include <cstdint>

namespace attrace::kernels {

/// Canonical-order float64 dot product of two length-p vectors.
template <class T>
inline double canonical_dot(const T* a, const T* b, int64_t p) {
  static_assert(kDotLanes == 8, "the lane combination below assumes 8 lanes");
  double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t q = 0;
  for (; q + 8 <= p; q += 8) {
    for (int k = 0; k < 8; ++k) l[k] += static_cast<double>(a[q + k]) * static_cast<double>(b[q + k]);
  }
  for (int k = 0; q + k < p; ++k) l[k] += static_cast<double>(a[q + k]) * static_cast<double>(b[q + k]);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

}  // namespace attrace::kernels
