#pragma once
// Turns TracIn results into the attribution vector, per-tranche statistics, data-quality flags,
// and the report/CSV/manifest documents. Formats: docs/formats.md#report.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/registry.hpp>
#include <attrace/engine/rewards.hpp>
#include <attrace/engine/tracin.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attrace::engine {

/// Per-tranche statistics and its share of the attribution.
struct TrancheSummary {
  int64_t index = 0;
  connectors::Tranche tranche;
  int64_t examples = 0;
  double total_influence = 0;  ///< sum over its examples and all queries of the TracIn score
  double mean_influence = 0;   ///< total_influence / examples
  double positive_mass = 0;    ///< its mass after the negative-influence policy and the reward rules
  double share = 0;            ///< positive_mass / sum of positive_mass (the attribution vector)
  double self_influence_mean = 0, self_influence_median = 0, self_influence_p90 = 0, self_influence_max = 0;
  double self_influence_ratio = 0;  ///< tranche median / training-set median self-influence
  int64_t internal_duplicates = 0;  ///< examples that repeat another example of the same tranche
  std::vector<std::string> flags;   ///< data-quality flags (docs/formats.md#flags)
};

/// Two tranches sharing identical examples (same inputs and target).
struct DuplicatePair {
  int64_t a = 0, b = 0;            ///< tranche indices, a < b
  int64_t shared_a = 0, shared_b = 0;  ///< examples of a found in b, of b found in a
  double fraction_a = 0, fraction_b = 0;
  bool flagged = false;            ///< either fraction >= duplicate_threshold
};

/// Everything the outputs are made from.
struct Attribution {
  std::vector<TrancheSummary> tranches;
  std::vector<DuplicatePair> duplicates;
  double total_positive_mass = 0;
  RewardSummary rewards;  ///< what the reward rules did (applied = false until apply_rewards)
};

/// Aggregates per tranche, applies the negative-influence policy and finds duplicates.
Attribution summarize(const Config& config, const connectors::Dataset& train, const TracinResult& r);

/// Groups of content-identical examples (same inputs and target bit for bit, or the same content
/// digest for a dataset rebuilt from a feature store): each sorted, ordered by first member.
std::vector<std::vector<int64_t>> identical_examples(const connectors::Dataset& ds);

/// Per-tranche registration order for first_registered: the registry's `order` when a binding is
/// given (InputError unless it lists the dataset's tranches in dataset order), else 1, 2, ...
std::vector<uint64_t> registration_order(const connectors::Dataset& train, const std::optional<RegistryBinding>& registry);

/// Runs the reward rules on a summary (duplicate credit, then quality hold) and replaces each
/// tranche's positive mass and share with the result; `near_pairs` may be null.
void apply_rewards(const Config& config, const connectors::Dataset& train, const TracinResult& r,
                   const std::vector<ExamplePair>* near_pairs, const std::optional<RegistryBinding>& registry,
                   double outlier_top_fraction, Attribution& a);

/// The rewards block of report.json and manifest.json: policies, order source, and per tranche
/// the mass before and after each rule (empty object when no rule ran).
nlohmann::json rewards_json(const Config& config, const Attribution& a);

/// The registry block of manifest.json: source and per tranche id, account, license, content
/// root and registration order.
nlohmann::json registry_json(const RegistryBinding& registry);

/// report.json contents.
nlohmann::json report_json(const Config& config, const connectors::Dataset& train, const connectors::Dataset& query,
                           const TracinResult& r, const Attribution& a);

/// attribution.csv contents.
std::string attribution_csv(const Attribution& a);

/// manifest.json contents (without output hashes; the caller adds them).
nlohmann::json manifest_json(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                             const connectors::Dataset& query, const TracinResult& r, const std::string& backend);

/// Canonical JSON bytes: keys sorted, no insignificant whitespace, UTF-8.
std::string canonical(const nlohmann::json& j);

/// Engine version and the git revision the binary was built from.
std::string engine_version();
std::string engine_git_revision();

}  // namespace attrace::engine
