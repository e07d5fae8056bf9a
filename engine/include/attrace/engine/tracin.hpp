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

/// One Linear layer's Kronecker projection sizes.
struct KroneckerUse {
  std::string layer;
  int64_t d_in = 0, d_out = 0, k_in = 0, k_out = 0;
  uint32_t stream_in = 0, stream_out = 0;
};

/// What was used at one checkpoint (for the manifest).
struct CheckpointUse {
  int64_t dim = 0;                       ///< gradient dimension
  int64_t feature_dim = 0;               ///< dimension scored (dim when not projected)
  GradPath path = GradPath::general;     ///< gradient path used
  std::string chain_refusal;             ///< why not chain (empty when chain)
  std::vector<std::string> parameters;  ///< selected parameter names
  uint32_t dense_stream = 0;             ///< projection stream (dense)
  std::vector<KroneckerUse> kronecker;   ///< per layer (kronecker)
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

/// Computes TracIn: exact (projection = none) or on projected features
/// f_c(i) = sqrt(lr_c) P_c g_c(i), whose dot products estimate the exact scores. Streams the training set through the backend in batches per
/// checkpoint (query gradients of one checkpoint stay in memory). Throws InputError/NumericError
/// naming the checkpoint, file and example on bad input.
TracinResult compute_tracin(const Config& config, const connectors::TrainingRun& run,
                            const connectors::Dataset& train, const connectors::Dataset& query,
                            kernels::Backend& backend, Progress& progress);

}  // namespace attrace::engine
