// Reward rules (docs/rewards.md): duplicate credit over groups of the same example, then the
// quality hold over deduplicated self-influence outliers. Sequential and in fixed orders (groups
// by their lowest example, examples ascending), so the result is the same bits on every run.
#include <attrace/engine/rewards.hpp>
#include <attrace/error.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace attrace::engine {
namespace {

// Union-find whose root is always the smallest index of its set, so components come out the
// same whatever order the edges are joined in.
struct MinRootSets {
  std::vector<int64_t> parent;
  explicit MinRootSets(int64_t n) : parent(static_cast<size_t>(n)) { std::iota(parent.begin(), parent.end(), 0); }
  int64_t find(int64_t i) {
    while (parent[static_cast<size_t>(i)] != i) {
      parent[static_cast<size_t>(i)] = parent[static_cast<size_t>(parent[static_cast<size_t>(i)])];
      i = parent[static_cast<size_t>(i)];
    }
    return i;
  }
  void join(int64_t a, int64_t b) {
    a = find(a);
    b = find(b);
    if (a == b) return;
    if (a < b) parent[static_cast<size_t>(b)] = a;
    else parent[static_cast<size_t>(a)] = b;
  }
};

}  // namespace

RewardSummary reward_rules(const Config& config, const RewardInput& in, const std::vector<double>& mass_before) {
  ATTRACE_CHECK(in.n > 0 && in.n_tranches > 0 && in.tranche && in.example_total && in.self_influence, InputError,
                "reward rules: empty or missing inputs");
  ATTRACE_CHECK(in.outlier_top_fraction > 0 && in.outlier_top_fraction <= 1, InputError,
                "reward rules: outlier_top_fraction must lie in (0, 1]");
  ATTRACE_CHECK(static_cast<int64_t>(mass_before.size()) == in.n_tranches &&
                    static_cast<int64_t>(in.order.size()) == in.n_tranches,
                InputError, "reward rules: one mass and one registration order per tranche are needed");
  const auto nt = static_cast<size_t>(in.n_tranches);
  RewardSummary out;
  out.applied = true;
  out.tranches.assign(nt, TrancheReward{});
  for (size_t t = 0; t < nt; ++t) {
    out.tranches[t].order = in.order[t];
    out.tranches[t].mass_before = mass_before[t];
  }

  // ---- Duplicate groups: content-identical examples, plus near-duplicate pairs that join two
  // different tranches (within one tranche only exact copies count: similar-looking examples of
  // one contributor are not copies of anyone's data).
  MinRootSets sets(in.n);
  const bool dedupe = config.duplicate_credit != DuplicateCredit::none;
  if (dedupe) {
    if (in.exact_groups)
      for (const auto& g : *in.exact_groups)
        for (size_t k = 1; k < g.size(); ++k) sets.join(g[0], g[k]);
    if (config.duplicate_match == DuplicateMatch::near && in.near_pairs)
      for (const auto& p : *in.near_pairs) {
        ATTRACE_CHECK(p.i >= 0 && p.j >= 0 && p.i < in.n && p.j < in.n, InputError, "reward rules: near-duplicate pair out of range");
        if (in.tranche[p.i] != in.tranche[p.j]) sets.join(p.i, p.j);
      }
  }
  // Members of each root, ascending (roots are their groups' smallest members).
  std::vector<int64_t> root(static_cast<size_t>(in.n)), size(static_cast<size_t>(in.n), 0);
  for (int64_t i = 0; i < in.n; ++i) {
    const int64_t t = in.tranche[i];
    ATTRACE_CHECK(t >= 0 && t < in.n_tranches, InputError, "reward rules: tranche index out of range at example " + std::to_string(i));
    root[static_cast<size_t>(i)] = sets.find(i);
    ++size[static_cast<size_t>(root[static_cast<size_t>(i)])];
  }
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(in.n));
  for (int64_t i = 0; i < in.n; ++i)
    if (size[static_cast<size_t>(root[static_cast<size_t>(i)])] > 1) members[static_cast<size_t>(root[static_cast<size_t>(i)])].push_back(i);

  // ---- Credited value per example: its own total unless it is in a group.
  std::vector<double> credit(in.example_total, in.example_total + in.n);
  std::vector<char> changed(nt, 0);
  for (int64_t r = 0; r < in.n; ++r) {
    const auto& g = members[static_cast<size_t>(r)];
    if (g.empty()) continue;
    ++out.groups;
    out.grouped_examples += static_cast<int64_t>(g.size());
    out.largest_group = std::max(out.largest_group, static_cast<int64_t>(g.size()));
    // Holders in (registration order, dataset index) order; each with its lowest member.
    std::vector<int64_t> holders;
    for (int64_t i : g) {
      ++out.tranches[static_cast<size_t>(in.tranche[i])].grouped_examples;
      if (std::find(holders.begin(), holders.end(), in.tranche[i]) == holders.end()) holders.push_back(in.tranche[i]);
    }
    std::sort(holders.begin(), holders.end(), [&](int64_t a, int64_t b) {
      return in.order[static_cast<size_t>(a)] < in.order[static_cast<size_t>(b)] ||
             (in.order[static_cast<size_t>(a)] == in.order[static_cast<size_t>(b)] && a < b);
    });
    auto first_member = [&](int64_t t) {
      for (int64_t i : g)
        if (in.tranche[i] == t) return i;
      return int64_t{-1};
    };
    for (int64_t i : g) credit[static_cast<size_t>(i)] = 0.0;
    std::vector<int64_t> receivers;  // the members that carry the group's credit
    if (config.duplicate_credit == DuplicateCredit::first_registered) {
      // The owner's members' mean (its own total when it holds one copy: total / 1 is exact).
      const int64_t owner = holders.front();
      double sum = 0;
      int64_t count = 0;
      for (int64_t i : g)
        if (in.tranche[i] == owner) {
          sum += in.example_total[i];
          ++count;
        }
      receivers.push_back(first_member(owner));
      credit[static_cast<size_t>(receivers.back())] = sum / static_cast<double>(count);
      for (int64_t i : g)
        if (in.tranche[i] != owner || count > 1) changed[static_cast<size_t>(in.tranche[i])] = 1;
    } else {
      // split: the mean over every member, in equal parts to each holder.
      double sum = 0;
      for (int64_t i : g) sum += in.example_total[i];
      const double part = sum / static_cast<double>(g.size()) / static_cast<double>(holders.size());
      for (int64_t t : holders) {
        receivers.push_back(first_member(t));
        credit[static_cast<size_t>(receivers.back())] = part;
        changed[static_cast<size_t>(t)] = 1;
      }
    }
    for (int64_t i : g)
      if (std::find(receivers.begin(), receivers.end(), i) == receivers.end())
        ++out.tranches[static_cast<size_t>(in.tranche[i])].uncredited_examples;
  }
  for (int64_t i = 0; i < in.n; ++i) out.tranches[static_cast<size_t>(in.tranche[i])].credited_total += credit[static_cast<size_t>(i)];
  for (size_t t = 0; t < nt; ++t) {
    auto& tr = out.tranches[t];
    tr.duplicate_rule_changed = changed[t] != 0;
    tr.mass_after_duplicates = tr.duplicate_rule_changed ? std::max(tr.credited_total, 0.0) : tr.mass_before;
  }

  // ---- Quality hold over units (a duplicate group counts once, with its members' largest
  // self-influence; every holder holds it), ranked by self-influence descending, then lowest
  // member: the top round(fraction x units), at least one, are outliers.
  std::vector<int64_t> unit_root;
  for (int64_t i = 0; i < in.n; ++i)
    if (root[static_cast<size_t>(i)] == i) unit_root.push_back(i);
  std::vector<double> unit_si(static_cast<size_t>(in.n), 0.0);
  std::vector<char> seen(static_cast<size_t>(in.n), 0);
  for (int64_t i = 0; i < in.n; ++i) {
    const auto r = static_cast<size_t>(root[static_cast<size_t>(i)]);
    ATTRACE_CHECK(std::isfinite(in.self_influence[i]), NumericError, "reward rules: self-influence of example " + std::to_string(i) + " is not finite");
    unit_si[r] = seen[r] ? std::max(unit_si[r], in.self_influence[i]) : in.self_influence[i];
    seen[r] = 1;
  }
  out.units = static_cast<int64_t>(unit_root.size());
  out.outlier_top_fraction = in.outlier_top_fraction;
  out.outlier_units =
      std::max<int64_t>(1, std::min<int64_t>(out.units, std::llround(in.outlier_top_fraction * static_cast<double>(out.units))));
  std::vector<int64_t> ranked = unit_root;
  std::partial_sort(ranked.begin(), ranked.begin() + out.outlier_units, ranked.end(), [&](int64_t a, int64_t b) {
    const double sa = unit_si[static_cast<size_t>(a)], sb = unit_si[static_cast<size_t>(b)];
    return sa > sb || (sa == sb && a < b);
  });
  std::vector<char> outlier(static_cast<size_t>(in.n), 0);
  for (int64_t k = 0; k < out.outlier_units; ++k) outlier[static_cast<size_t>(ranked[static_cast<size_t>(k)])] = 1;
  // Each (unit, tranche) once: mark the last unit counted per tranche.
  std::vector<int64_t> last_unit(nt, -1);
  for (int64_t r : unit_root) {
    auto count = [&](int64_t t) {
      if (last_unit[static_cast<size_t>(t)] == r) return;
      last_unit[static_cast<size_t>(t)] = r;
      ++out.tranches[static_cast<size_t>(t)].hold_units;
      out.tranches[static_cast<size_t>(t)].hold_outliers += outlier[static_cast<size_t>(r)];
    };
    const auto& g = members[static_cast<size_t>(r)];
    if (g.empty()) count(in.tranche[r]);
    for (int64_t i : g) count(in.tranche[i]);
  }
  const double threshold = config.quality_hold_threshold;
  for (auto& tr : out.tranches) {
    tr.hold_outlier_share = tr.hold_units > 0 ? static_cast<double>(tr.hold_outliers) / static_cast<double>(tr.hold_units) : 0.0;
    tr.held = config.quality_hold == QualityHold::downweight && tr.hold_outlier_share > threshold &&
              tr.hold_outliers >= config.quality_hold_min_outliers;
    tr.hold_factor = tr.held ? threshold / tr.hold_outlier_share : 1.0;
    tr.mass_after_hold = tr.held ? tr.mass_after_duplicates * tr.hold_factor : tr.mass_after_duplicates;
  }
  return out;
}

}  // namespace attrace::engine
