#pragma once
// Seeded draws whose results are the same on every platform: mt19937_64's output sequence is
// fixed by the standard, the standard distributions are not (implementation-defined).
#include <cstdint>
#include <random>

namespace attrace {

/// Uniform integer in [0, n) from raw 64-bit draws by rejection sampling (n > 0).
inline uint64_t draw_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t v;
  do v = rng();
  while (v >= limit);
  return v % n;
}

}  // namespace attrace
