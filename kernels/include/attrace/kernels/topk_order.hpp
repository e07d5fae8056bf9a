#pragma once
// The total order of top-k lists, shared by host and device code: the CPU heap and the CUDA
// per-slice lists and merge rank entries with this one function, so both backends return the
// same lists, ties included. Scores are never NaN here (both backends reject NaN first).
#include <attrace/kernels/hd.hpp>

#include <cstdint>

namespace attrace::kernels {

/// True when (score_a, row_a) ranks before (score_b, row_b): the larger score first for
/// proponents (`high`), the smaller first for opponents; equal scores (+0 and -0 included) by the
/// lower row. A strict total order on non-NaN scores and distinct rows.
ATTRACE_HD bool ranks_before(double score_a, int64_t row_a, double score_b, int64_t row_b, bool high) {
  if (score_a != score_b) return high ? score_a > score_b : score_a < score_b;
  return row_a < row_b;
}

}  // namespace attrace::kernels
