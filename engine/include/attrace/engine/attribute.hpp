#pragma once
// The `attrace attribute` pipeline: read inputs, compute exact TracIn, write the outputs
// atomically (nothing appears under the output name unless every file is complete).
#include <attrace/engine/config.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/registry.hpp>
#include <attrace/engine/report.hpp>

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace attrace::engine {

/// Options of one run that are not attribution settings (they change no number).
struct RunOptions {
  std::string out_dir;   ///< directory to create
  bool replace = false;  ///< replace an existing out_dir
  bool quiet = false;    ///< no progress on stderr
  /// Registry the training set was checked against (first_registered order, manifest block).
  std::optional<RegistryBinding> registry = std::nullopt;
};

/// What a finished run produced, for printing.
struct RunSummary {
  Attribution attribution;
  bool wrote_scores = false;
  int64_t n_train = 0, n_query = 0, dim = 0;
  std::string path_used;
};

/// Runs attribution end to end (featurize both sets in memory, then score). Checks the output
/// location before computing anything. Gives the same bytes as run_featurize + run_score.
RunSummary run_attribute(const Config& config, const RunOptions& options);

/// Options of `attrace featurize`.
struct FeaturizeOptions {
  std::string store;     ///< feature store to create or resume
  bool query = false;    ///< featurize data.query instead of data.train
  bool replace = false;  ///< replace a store made with other settings
  bool quiet = false;
};

/// What a featurize run did.
struct FeaturizeSummary {
  int64_t rows = 0;
  size_t checkpoints = 0;
  bool resumed = false;       ///< continued an interrupted store
  int64_t rows_written = 0;   ///< rows featurized by this run (summed over checkpoints)
};

/// Featurizes the training (or query) set into a feature store, resuming an interrupted one.
FeaturizeSummary run_featurize(const Config& config, const FeaturizeOptions& options);

/// Scores from a training-set feature store: queries from `query_store` when given, else
/// featurized on the fly from the config's data.query. Featurization settings must match the
/// store's (InputError naming the difference). Same outputs as run_attribute.
RunSummary run_score(const Config& config, const std::string& store, const std::string& query_store,
                     const RunOptions& options);

/// The canonical JSON that identifies a set of features: engine version, dataset, run,
/// gradient, projection and storage settings (the store's /spec; compared on resume and score).
nlohmann::json feature_spec(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& ds,
                            bool query);

}  // namespace attrace::engine
