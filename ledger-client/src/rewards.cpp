#include <attrace/error.hpp>
#include <attrace/ledger/rewards.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace attrace::ledger {

U256 quantize_share(double share, const std::string& what) {
  ATTRACE_CHECK(std::isfinite(share) && share >= 0.0 && share <= 1.0, InputError,
                what + ": share must be a number in [0, 1], got " + std::to_string(share));
  if (share == 0.0) return 0;
  int exp = 0;
  const double frac = std::frexp(share, &exp);           // share = frac * 2^exp, frac in [0.5, 1)
  const auto mant = static_cast<uint64_t>(std::ldexp(frac, 53));  // exact: 53-bit integer
  const int shift = 53 - exp;                             // share = mant / 2^shift, shift >= 52
  if (shift > 120) return 0;  // mant * 10^18 < 2^114: the result is below one half
  const U512 num = U512(mant) * U512(kScoreScale);
  U512 q = num >> shift;
  const U512 rem = num - (q << shift);
  const U512 half = U512(1) << (shift - 1);
  if (rem > half || (rem == half && (q & 1) == 1)) q += 1;  // nearest, ties to even
  return static_cast<U256>(q);
}

std::vector<U256> split_rewards(const U256& pool, const std::vector<SplitEntry>& entries) {
  ATTRACE_CHECK(pool > 0, InputError, "reward pool must be > 0");
  U512 total = 0;
  for (const auto& e : entries) total += e.score;
  ATTRACE_CHECK(total > 0, InputError, "all scores are zero: nothing to split (commit refused)");
  const size_t n = entries.size();
  std::vector<U256> amounts(n);
  std::vector<U512> rems(n);
  U512 given = 0;
  for (size_t i = 0; i < n; ++i) {
    const U512 t = U512(pool) * entries[i].score;
    amounts[i] = static_cast<U256>(t / total);
    rems[i] = t % total;
    given += amounts[i];
  }
  const U512 left = U512(pool) - given;  // < n
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (rems[a] != rems[b]) return rems[a] > rems[b];
    if (entries[a].account != entries[b].account) return entries[a].account < entries[b].account;
    return entries[a].tranche_id < entries[b].tranche_id;
  });
  for (size_t k = 0; U512(k) < left; ++k) amounts[order[k]] += 1;
  return amounts;
}

}  // namespace attrace::ledger
