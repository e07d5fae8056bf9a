#pragma once
// Reward rules that resist gaming (docs/rewards.md), applied after the negative-influence policy
// has turned each tranche's influence into a mass and before shares are formed:
//   1. duplicate credit: an example held by several tranches (content-identical copies, and with
//      duplicate_match = "near" the quality signals' near-duplicates) is credited once, to the
//      earliest-registered holder (first_registered) or evenly to every holder (split);
//   2. quality hold: a tranche whose share of the training set's highest self-influence examples
//      (counted over deduplicated examples) exceeds a threshold is paid as if its share were at
//      the threshold (its mass times threshold / share).
// Everything here is a pure, sequential function of its inputs: same bits for any thread count.
#include <attrace/engine/config.hpp>
#include <attrace/engine/quality.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace attrace::engine {

/// Borrowed inputs of the reward rules (one entry per training example unless said otherwise).
struct RewardInput {
  int64_t n = 0;                             ///< training examples
  int64_t n_tranches = 0;
  const int64_t* tranche = nullptr;          ///< tranche index per example
  const double* example_total = nullptr;     ///< sum over queries of the example's TracIn score
  const double* self_influence = nullptr;    ///< per example
  const std::vector<std::vector<int64_t>>* exact_groups = nullptr;  ///< content-identical examples (each sorted)
  const std::vector<ExamplePair>* near_pairs = nullptr;            ///< near-duplicate pairs (may be null)
  std::vector<uint64_t> order;               ///< per tranche: registration order (lower = earlier)
  double outlier_top_fraction = 0.05;        ///< the quality signals' top fraction
};

/// What the rules did to one tranche.
struct TrancheReward {
  uint64_t order = 0;                  ///< registration order used by first_registered
  int64_t grouped_examples = 0;        ///< its examples that belong to a duplicate group
  int64_t uncredited_examples = 0;     ///< its examples credited nothing (another holder is paid)
  double credited_total = 0;           ///< sum over its examples (ascending) of their credited values
  bool duplicate_rule_changed = false; ///< the rule changed what it is credited (else mass kept as is)
  double mass_before = 0;              ///< positive mass under the negative policy alone
  double mass_after_duplicates = 0;    ///< after duplicate credit
  int64_t hold_units = 0;              ///< deduplicated examples it holds
  int64_t hold_outliers = 0;           ///< of those, among the top self-influence units
  double hold_outlier_share = 0;       ///< hold_outliers / hold_units
  bool held = false;                   ///< the quality hold applies
  double hold_factor = 1;              ///< threshold / outlier share when held, else 1
  double mass_after_hold = 0;          ///< the final positive mass (shares are formed from it)
};

/// The rules' result for a whole run.
struct RewardSummary {
  bool applied = false;                ///< false: no rule ran (summarize's masses stand)
  std::string order_source;            ///< "registry" or "dataset" (tranche order of the dataset)
  int64_t groups = 0;                  ///< duplicate groups (two or more examples)
  int64_t grouped_examples = 0;        ///< examples in them
  int64_t largest_group = 0;           ///< members of the largest group (near-duplicates can chain)
  int64_t units = 0;                   ///< deduplicated examples ranked by the hold
  int64_t outlier_units = 0;           ///< the top round(fraction x units) of them
  double outlier_top_fraction = 0;     ///< the fraction used
  std::vector<TrancheReward> tranches;
};

/// Applies duplicate credit and the quality hold. `mass_before` is per tranche (summarize's
/// positive mass); a tranche the duplicate rule does not change
/// keeps its mass bit for bit; a changed one gets the policy applied to its credited total
/// (clip: max(credited, 0); clip_per_query cannot be re-formed per query, so also max(credited, 0)).
/// InputError when the inputs disagree in size or an order is missing.
RewardSummary reward_rules(const Config& config, const RewardInput& input, const std::vector<double>& mass_before);

}  // namespace attrace::engine
