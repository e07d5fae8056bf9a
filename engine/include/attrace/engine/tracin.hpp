#pragma once
// Exact TracInCP over a training run: score(i, j) = sum_c lr_c <g_c(i), g_c(j)>, self-influence
// sum_c lr_c |g_c(i)|^2, per-tranche sums per query and top-k lists per query.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/progress.hpp>
#include <attrace/kernels/backend.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace attrace::engine {

/// What was used at one checkpoint (for the manifest).
struct CheckpointUse {
  int64_t dim = 0;                       ///< gradient dimension
  GradPath path = GradPath::general;     ///< gradient path used
  std::string chain_refusal;             ///< why not chain (empty when chain)
  std::vector<std::string> parameters;  ///< selected parameter names
};

/// Raw results of exact TracIn, before shares and reports.
struct TracinResult {
  int64_t n_train = 0, n_query = 0;
  std::vector<double> scores;          ///< n_train x n_query, row-major
  std::vector<double> self_influence;  ///< n_train
  std::vector<double> tranche_query;   ///< n_tranches x n_query: sum of scores per tranche
  std::vector<kernels::TopK> topk;     ///< per query
  std::vector<CheckpointUse> checkpoints;
};

/// Computes exact TracIn. Streams the training set through the backend in batches per
/// checkpoint (query gradients of one checkpoint stay in memory). Throws InputError/NumericError
/// naming the checkpoint, file and example on bad input.
TracinResult compute_tracin(const Config& config, const connectors::TrainingRun& run,
                            const connectors::Dataset& train, const connectors::Dataset& query,
                            kernels::Backend& backend, Progress& progress);

}  // namespace attrace::engine
