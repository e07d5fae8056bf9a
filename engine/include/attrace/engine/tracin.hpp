#pragma once
// Exact TracInCP over a training run: score(i, j) = sum_c lr_c <g_c(i), g_c(j)>, self-influence
// sum_c lr_c |g_c(i)|^2, per-tranche sums per query and top-k lists per query.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/featurize.hpp>
#include <attrace/engine/score.hpp>
#include <attrace/engine/progress.hpp>
#include <attrace/kernels/backend.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace attrace::engine {

/// Raw results of exact TracIn, before shares and reports.
struct TracinResult {
  int64_t n_train = 0, n_query = 0;
  std::vector<double> scores;          ///< n_train x n_query, row-major
  std::vector<double> self_influence;  ///< n_train
  std::vector<double> tranche_query;   ///< n_tranches x n_query: sum of scores per tranche
  std::vector<double> example_total;   ///< n_train: sum over queries (ascending) of score(i, j)
  std::vector<kernels::TopK> topk;     ///< per query
  std::vector<CheckpointUse> checkpoints;
  ScorePlan plan;                      ///< tile sizes used (never part of a result)
};

/// Featurizes every checkpoint of `run` for `ds` into memory (the featurize stage without a
/// store). `uses` receives what each checkpoint used.
MemoryFeatures featurize_in_memory(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& ds,
                                   const std::vector<const connectors::Dataset*>& prepare_for, kernels::Backend& backend,
                                   Progress& progress, const std::string& label, std::vector<CheckpointUse>* uses);

/// Both sets' features, made with one model load per checkpoint.
struct FeaturePair {
  MemoryFeatures train, query;
};

/// Featurizes every checkpoint of `run` for the training and the query set, loading each
/// checkpoint once (the path is decided on the training rows and must hold on the query rows).
/// `uses` receives what each checkpoint used; `before` (when set) sees the first checkpoint's
/// featurizer before any feature is computed (attribute checks the memory needed there);
/// `label_prefix` goes before the progress stages' names ("query features", "train features").
FeaturePair featurize_pair_in_memory(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                                     const connectors::Dataset& query, kernels::Backend& backend, Progress& progress,
                                     std::vector<CheckpointUse>* uses,
                                     const std::function<void(const Featurizer&)>& before = {},
                                     const std::string& label_prefix = "");

/// Adds a featurizer's time split (model gradients vs making rows) to the progress summary.
void note_split(const Config& config, const Featurizer& fz, Progress& progress);

/// A scorer's result with the checkpoint uses, as the summary and writers take it.
TracinResult tracin_result(ScoreResult&& s, std::vector<CheckpointUse> uses);

/// Scoring settings from a config and the training set's tranche index.
ScoreSettings score_settings(const Config& config, const connectors::Dataset& train, const connectors::Dataset& query,
                             bool keep_scores);

/// Computes TracIn: exact (projection = none) or on projected features
/// f_c(i) = sqrt(lr_c) P_c g_c(i), whose dot products estimate the exact scores: featurizes both
/// sets in memory and scores them with the tiled scorer, keeping the full score matrix. Throws
/// InputError/NumericError naming the checkpoint, file and example on bad input.
TracinResult compute_tracin(const Config& config, const connectors::TrainingRun& run,
                            const connectors::Dataset& train, const connectors::Dataset& query,
                            kernels::Backend& backend, Progress& progress);

}  // namespace attrace::engine
