#pragma once
// Counter-based random projection entries (determinism spec, point 2): entry (row, col) of the
// projection for (seed, stream) is a pure function of those integers, computed with
// Philox-4x32-10 (Salmon et al., SC'11). Host and device share this header, so the CPU and CUDA
// backends produce the same Rademacher matrices bit for bit.
#include <attrace/kernels/hd.hpp>

#include <cmath>
#include <cstdint>

namespace attrace::kernels {

/// Four 32-bit words: a Philox counter or output block.
struct Philox4 {
  uint32_t v[4];
};

/// Philox-4x32 with 10 rounds.
ATTRACE_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * ctr.v[0];
    const uint64_t p1 = static_cast<uint64_t>(M1) * ctr.v[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

/// Distribution of projection entries. `identity` (k must equal the input width) passes the
/// input through unscaled: used where a factor is already no wider than its budget.
enum class ProjectionKind : int { rademacher = 0, gaussian = 1, identity = 2 };

/// Identifies one projection matrix P (p rows = input dimension, k columns = output dimension).
struct ProjectionSpec {
  uint64_t seed = 0;
  uint32_t stream = 0;  ///< independent matrices under one seed (e.g. per checkpoint or layer)
  int64_t k = 0;        ///< output dimension (entries are scaled by 1/sqrt(k))
  ProjectionKind kind = ProjectionKind::rademacher;
};

/// Rows of P per partial sum in the dense projection's canonical order: each output sums the rows
/// of one chunk in ascending order from 0.0f, then adds the chunk sums in ascending chunk order
/// (docs/architecture.md). A fixed constant, never derived from the device or the batch.
inline constexpr int64_t kProjectionChunk = 1024;

/// 128 Rademacher signs: bit b of the block for (row, col / 128) gives column col's sign.
ATTRACE_HD Philox4 rademacher_block(const ProjectionSpec& s, int64_t row, int64_t col_block) {
  return philox4x32_10(Philox4{{static_cast<uint32_t>(col_block), static_cast<uint32_t>(static_cast<uint64_t>(row)),
                                static_cast<uint32_t>(static_cast<uint64_t>(row) >> 32), s.stream & 0x7FFFFFFFu}},
                       static_cast<uint32_t>(s.seed), static_cast<uint32_t>(s.seed >> 32));
}

/// +1 or -1 for column `col` from a block made by rademacher_block.
ATTRACE_HD float rademacher_sign(const Philox4& block, int64_t col) {
  const int b = static_cast<int>(col & 127);
  return ((block.v[b >> 5] >> (b & 31)) & 1u) ? -1.0f : 1.0f;
}

/// Unscaled Gaussian N(0, 1) entry: Box-Muller in float64 on two 53-bit uniforms from one
/// Philox block per pair of columns (cos for even columns, sin for odd ones).
ATTRACE_HD double gaussian_unscaled(const ProjectionSpec& s, int64_t row, int64_t col) {
  const Philox4 r = philox4x32_10(Philox4{{static_cast<uint32_t>(col >> 1), static_cast<uint32_t>(static_cast<uint64_t>(row)),
                                           static_cast<uint32_t>(static_cast<uint64_t>(row) >> 32), s.stream | 0x80000000u}},
                                  static_cast<uint32_t>(s.seed), static_cast<uint32_t>(s.seed >> 32));
  const uint64_t a = ((static_cast<uint64_t>(r.v[1]) << 32) | r.v[0]) >> 11;
  const uint64_t b = ((static_cast<uint64_t>(r.v[3]) << 32) | r.v[2]) >> 11;
  const double u1 = (static_cast<double>(a) + 0.5) * (1.0 / 9007199254740992.0);  // (0, 1)
  const double u2 = static_cast<double>(b) * (1.0 / 9007199254740992.0);          // [0, 1)
  const double radius = sqrt(-2.0 * log(u1));
  const double angle = 6.283185307179586476925286766559 * u2;
  return (col & 1) ? radius * sin(angle) : radius * cos(angle);
}

/// Entry (row, col) of P, scaled by 1/sqrt(k): +-1/sqrt(k) (Rademacher) or N(0, 1/k).
ATTRACE_HD float projection_entry(const ProjectionSpec& s, int64_t row, int64_t col) {
  const double scale = 1.0 / sqrt(static_cast<double>(s.k));
  if (s.kind == ProjectionKind::rademacher)
    return static_cast<float>(scale) * rademacher_sign(rademacher_block(s, row, col >> 7), col);
  return static_cast<float>(gaussian_unscaled(s, row, col) * scale);
}

}  // namespace attrace::kernels
