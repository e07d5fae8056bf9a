#pragma once
// Per-token scores (token datasets, Kronecker projection, TracIn): for each query, which training
// tokens carried the influence of its top proponents. With Kronecker features a training
// example's score is a sum over its positions t of every layer's term
// (P_out delta_t)(P_in x_t)^T against the query's features, so score(i, q) = sum_t s_t(i, q) with
// s_t = sum_c w_c <pf_c(i)[t], f_c(q)> (pf: Featurizer::position_features). docs/lm.md.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/score.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/kernels/backend.hpp>

#include <nlohmann/json.hpp>

#include <string>

namespace attrace::engine {

/// Whether per-token scores apply to this run, and if not why ("" when they do): a token
/// training set, projection.kind = kronecker, method tracin, token_proponents and token_top > 0.
std::string token_scores_refusal(const Config& config, const connectors::Dataset& train);

/// For each query, its first config.token_proponents proponents with their config.token_top
/// largest position contributions: an array parallel to the queries, each an array of
/// {example, score, positions: [{position, token, target, contribution}]}. `query_features` are
/// the queries' TracIn features (one row per query per checkpoint). Deterministic: each position's
/// dot with a query's features in the backend's FMA order, checkpoints added in run order.
nlohmann::json token_scores(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                            const FeatureSource& query_features, const TracinResult& r, kernels::Backend& backend);

}  // namespace attrace::engine
