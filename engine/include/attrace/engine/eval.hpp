#pragma once
// `attrace eval`: measured attribution quality (docs/eval.md).
//   - noisy-label detection: flip a fraction of training labels, train, featurize, rank the
//     training set by each method's self-influence; AUC and the share of flipped labels found
//     in the top 5/10/20%;
//   - LDS (linear datamodeling score): retrain on M random subsets (alpha of the training set,
//     one seed per subset, each result recorded durably so a killed run resumes), record each
//     query's output, and score each method by the mean over queries of the Spearman correlation
//     between the subset sums of its scores and the retrained outputs, with a 95% bootstrap
//     interval over queries.
// Training runs with LibTorch from a recipe (TorchScript model with its initial weights,
// SGD/Adam with momentum and weight decay, lr phases, epochs, batch size, seed).
#include <attrace/connectors/dataset.hpp>
#include <attrace/engine/config.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace attrace::engine::eval {

/// One phase of the lr schedule: `epochs` epochs at `lr`; a checkpoint is saved at its end.
struct Phase {
  int64_t epochs = 1;
  double lr = 0.1;
};

/// How attrace trains a model itself.
struct Recipe {
  std::string model;                 ///< TorchScript file with the initial weights (empty: MLP below)
  std::vector<int64_t> hidden = {32};  ///< hidden widths of the built-in MLP (input and classes from the data)
  uint64_t init_seed = 20261130;     ///< built-in MLP's initial weights
  std::string optimizer = "sgd";     ///< sgd | adam
  double momentum = 0.9;             ///< sgd momentum (adam: beta1)
  double weight_decay = 0.0;         ///< L2 term added to the gradient
  std::vector<Phase> phases = {{6, 0.05}, {6, 0.02}, {6, 0.005}};
  int64_t batch_size = 32;
  uint64_t seed = 1;                 ///< data order (a subset's run adds its own seed)
};

/// The recipe as JSON (eval.json, subset records' key).
nlohmann::json recipe_json(const Recipe& r);

/// Training and query data of an evaluation.
struct Task {
  connectors::Dataset train, query;
  std::string source;  ///< where the data came from (for eval.json)
};

/// Settings shared by both evaluations.
struct EvalOptions {
  std::string out_dir;           ///< eval.json, eval.html, work files (checkpoints, subset records)
  Recipe recipe;
  int64_t projection_k = 1024;   ///< dense projection of the features (0: exact gradients)
  uint64_t projection_seed = 0;
  double trak_lambda = 1e-3;     ///< relative ridge (attribution.trak_lambda)
  int64_t ensemble = 5;          ///< independently trained models for the TRAK ensemble (1: none)
  int threads = 0;               ///< retraining workers (0: all cores)
  bool quiet = false;
};

/// Options of the noisy-label evaluation.
struct NoisyOptions {
  double fraction = 0.10;  ///< share of training labels flipped
  uint64_t seed = 7;       ///< which labels, and to what
};

/// Options of the LDS evaluation.
struct LdsOptions {
  int64_t subsets = 100;     ///< M
  double alpha = 0.5;        ///< subset size / training set size
  uint64_t seed = 11;        ///< subset s uses seed + s for its rows and its data order
  bool margin = false;       ///< query output: margin instead of negative loss
  std::string ground_truth;  ///< HDF5 with /masks and /outputs (docs/eval.md): no retraining
  int64_t bootstrap = 1000;  ///< bootstrap resamples of the queries
};

/// Flips round(fraction * n) labels of `train` (seeded); returns the flipped rows ascending.
std::vector<int64_t> flip_labels(connectors::Dataset& train, double fraction, uint64_t seed, int64_t classes);

/// Area under the ROC curve of `score` separating positives (flag 1) from negatives, ties
/// counted one half (Mann-Whitney). InputError when a class is empty.
double auc(const std::vector<double>& score, const std::vector<uint8_t>& positive);

/// Share of the positives among the top round(fraction * n) scores (ties by lower index).
double recall_at(const std::vector<double>& score, const std::vector<uint8_t>& positive, double fraction);

/// Spearman rank correlation (average ranks for ties); NaN when either side is constant.
double spearman(const std::vector<double>& a, const std::vector<double>& b);

/// LDS of one method: scores n_train x n_query (row-major), masks M x n_train (1: kept),
/// outputs M x n_query. Returns per-query Spearman correlations (NaN where undefined).
std::vector<double> lds_per_query(const std::vector<double>& scores, int64_t n_train, int64_t n_query,
                                  const std::vector<uint8_t>& masks, const std::vector<double>& outputs, int64_t m);

/// Mean of the finite values and a percentile bootstrap interval (resampling them, seeded).
struct MeanCi {
  double mean = 0, lo = 0, hi = 0;
  int64_t n = 0;  ///< finite values used
};
MeanCi bootstrap_mean(const std::vector<double>& v, int64_t resamples, uint64_t seed, double level = 0.95);

/// Runs the noisy-label evaluation; returns its eval.json block.
nlohmann::json run_noisy(const Task& task, const EvalOptions& options, const NoisyOptions& noisy);

/// Runs the LDS evaluation (resuming recorded subsets); returns its eval.json block.
nlohmann::json run_lds(const Task& task, const EvalOptions& options, const LdsOptions& lds);

/// Writes eval.json and eval.html into options.out_dir (atomically, each file).
void write_eval_outputs(const std::string& out_dir, const nlohmann::json& doc);

/// The self-contained eval.html page for an eval.json document.
std::string eval_html(const nlohmann::json& doc);

}  // namespace attrace::engine::eval
