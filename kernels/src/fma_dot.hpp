#pragma once
// The FMA dot product, written out one element at a time: the definition every fast kernel
// (AVX2, AVX-512, CUDA) must reproduce bit for bit. See kernels/backend.hpp kFmaChunk.
#include <attrace/kernels/backend.hpp>

#include <cmath>
#include <cstdint>

namespace attrace::kernels {

/// Combines the eight float32 lanes of one chunk in float64, in the fixed tree
/// ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)) (the order a SIMD or warp-shuffle butterfly gives).
inline double fma_lane_tree(const float* l) {
  const double v0 = l[0], v1 = l[1], v2 = l[2], v3 = l[3], v4 = l[4], v5 = l[5], v6 = l[6], v7 = l[7];
  return ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7));
}

/// FMA-order dot product of two length-p float32 vectors (reference implementation).
inline double fma_dot_reference(const float* a, const float* b, int64_t p) {
  double total = 0.0;
  for (int64_t c0 = 0; c0 < p; c0 += kFmaChunk) {
    const int64_t c1 = c0 + kFmaChunk < p ? c0 + kFmaChunk : p;
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t q = c0; q < c1; ++q) lane[(q - c0) % 8] = std::fma(a[q], b[q], lane[(q - c0) % 8]);
    total += fma_lane_tree(lane);
  }
  return total;
}

}  // namespace attrace::kernels
