#pragma once
// From tranche shares to integer scores and reward amounts (shared/specs/ledger.md, "Leaf" and
// "Reward split (exact)").
#include <attrace/ledger/types.hpp>

#include <vector>

namespace attrace::ledger {

/// Score scale: score = round(share * 10^18).
inline const U256 kScoreScale = U256("1000000000000000000");

/// Quantizes a share in [0, 1] exactly: the binary value of the double times 10^18, rounded to
/// the nearest integer, ties to even. InputError for NaN, negative or > 1 shares.
U256 quantize_share(double share, const std::string& what);

/// One entry of the split: its score and the account/tranche used to break ties.
struct SplitEntry {
  U256 score = 0;
  Address account{};
  Bytes32 tranche_id{};
};

/// The exact split of `pool` by scores: floor(T*s_i/S) each, then +1 to the R entries with the
/// largest remainders (ties: account ascending, then trancheId ascending). Sum == pool always.
/// InputError if pool == 0 or all scores are zero.
std::vector<U256> split_rewards(const U256& pool, const std::vector<SplitEntry>& entries);

}  // namespace attrace::ledger
