// Per-token scores of the top proponents (see token_scores.hpp).
#include <attrace/engine/featurize.hpp>
#include <attrace/engine/token_scores.hpp>
#include <attrace/error.hpp>

#include <algorithm>
#include <map>
#include <set>

namespace attrace::engine {

std::string token_scores_refusal(const Config& config, const connectors::Dataset& train) {
  if (config.token_proponents == 0 || config.token_top == 0) return "attribution.token_proponents or token_top is 0";
  if (train.input_kind != connectors::InputKind::integers) return "the training set is not a token dataset";
  if (config.projection != Projection::kronecker) return "per-token scores need projection.kind = \"kronecker\"";
  if (config.method != Method::tracin) return "per-token scores are computed for method tracin only";
  return "";
}

nlohmann::json token_scores(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                            const FeatureSource& query_features, const TracinResult& r, kernels::Backend& backend) {
  const int64_t nq = r.n_query;
  // Which training rows are needed, and for which queries.
  std::map<int64_t, std::vector<int64_t>> queries_of;  // train row -> queries (ascending)
  std::vector<std::vector<int64_t>> rows_of(static_cast<size_t>(nq));
  for (int64_t q = 0; q < nq; ++q) {
    const auto& pro = r.topk[static_cast<size_t>(q)].proponents;
    const size_t take = std::min(pro.size(), static_cast<size_t>(config.token_proponents));
    for (size_t k = 0; k < take; ++k) {
      rows_of[static_cast<size_t>(q)].push_back(pro[k].row);
      queries_of[pro[k].row].push_back(q);
    }
  }
  const int64_t t_len = train.example_width();
  // contribution[(q, row)][t], summed over checkpoints in run order.
  std::map<std::pair<int64_t, int64_t>, std::vector<double>> contrib;
  for (size_t c = 0; c < run.checkpoints.size() && !queries_of.empty(); ++c) {
    Featurizer fz(config, run, c, {&train}, backend);
    const int64_t w = fz.width();
    ATTRACE_CHECK(query_features.width(c) == w, RuntimeFailure, "token scores: query features of another width");
    const double weight = fz.weight();
    std::vector<float> fq(static_cast<size_t>(w));
    std::map<int64_t, std::vector<float>> qrows;  // query -> its features at checkpoint c
    for (const auto& [row, qs] : queries_of)
      for (int64_t q : qs)
        if (!qrows.count(q)) {
          query_features.read(c, q, q + 1, fq.data());
          qrows[q] = fq;
        }
    std::vector<int64_t> rows;
    for (const auto& [row, qs] : queries_of) rows.push_back(row);  // ascending
    // Rows in chunks of at most ~256 MiB of per-position features (T x width floats per row).
    const int64_t per_row = std::max<int64_t>(1, t_len * w * 4);
    const size_t chunk = static_cast<size_t>(std::max<int64_t>(1, (int64_t{256} << 20) / per_row));
    for (size_t r0 = 0; r0 < rows.size(); r0 += chunk) {
      const std::vector<int64_t> part(rows.begin() + static_cast<std::ptrdiff_t>(r0),
                                      rows.begin() + static_cast<std::ptrdiff_t>(std::min(rows.size(), r0 + chunk)));
      int64_t positions = 0;
      const auto pf_all = fz.position_features(train, part, positions);
      ATTRACE_CHECK(positions == t_len, InputError,
                    "per-token scores: the model's layers see " + std::to_string(positions) + " positions per example, the tokens " +
                        std::to_string(t_len) + " (set attribution.token_proponents = 0)");
      // Per row: its positions' features against the features of the queries that list it, by
      // the backend's FMA-order dot (a pure function of the two rows), weighted, added per
      // checkpoint in run order.
      for (size_t at = 0; at < part.size(); ++at) {
        const auto& qs = queries_of.at(part[at]);
        const float* pf_row = pf_all.data() + static_cast<int64_t>(at) * positions * w;
        std::vector<float> qmat(qs.size() * static_cast<size_t>(w));
        for (size_t k = 0; k < qs.size(); ++k) std::copy(qrows[qs[k]].begin(), qrows[qs[k]].end(), qmat.begin() + k * w);
        const int64_t nq_row = static_cast<int64_t>(qs.size());
        std::vector<double> dots(static_cast<size_t>(positions * nq_row), 0.0);
        backend.score_accumulate_fma(kernels::HostMatrix<float>{pf_row, positions, w, w},
                                     kernels::HostMatrix<float>{qmat.data(), nq_row, w, w}, weight,
                                     kernels::view_mut(dots.data(), positions, nq_row));
        for (size_t k = 0; k < qs.size(); ++k) {
          auto& v = contrib[{qs[k], part[at]}];
          v.resize(static_cast<size_t>(positions), 0.0);
          for (int64_t t = 0; t < positions; ++t) v[static_cast<size_t>(t)] += dots[static_cast<size_t>(t * nq_row) + k];
        }
      }
    }
  }
  nlohmann::json out = nlohmann::json::array();
  for (int64_t q = 0; q < nq; ++q) {
    nlohmann::json list = nlohmann::json::array();
    for (int64_t row : rows_of[static_cast<size_t>(q)]) {
      const auto& v = contrib.at({q, row});
      const int64_t len = train.lengths.empty() ? t_len : train.lengths[static_cast<size_t>(row)];
      std::vector<int64_t> order;
      double total = 0;
      for (int64_t t = 0; t < static_cast<int64_t>(v.size()); ++t) {
        total += v[static_cast<size_t>(t)];
        if (t < len) order.push_back(t);
      }
      // Largest contribution first; ties by position (a pure function of the numbers).
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return v[static_cast<size_t>(a)] > v[static_cast<size_t>(b)]; });
      order.resize(std::min(order.size(), static_cast<size_t>(config.token_top)));
      nlohmann::json pos = nlohmann::json::array();
      for (int64_t t : order) {
        const size_t at = static_cast<size_t>(row * t_len + t);
        nlohmann::json e = {{"position", t}, {"token", train.int_inputs[at]}, {"contribution", v[static_cast<size_t>(t)]}};
        if (train.target_kind == connectors::TargetKind::tokens) e["target"] = train.token_targets[at];
        if (!train.vocabulary.empty()) {  // display text: the token and up to 24 tokens before it
          const auto& vocab = train.vocabulary;
          e["text"] = vocab[static_cast<size_t>(train.int_inputs[at])];
          std::string before;
          for (int64_t u = std::max<int64_t>(0, t - 24); u < t; ++u) before += vocab[static_cast<size_t>(train.int_inputs[static_cast<size_t>(row * t_len + u)])];
          e["before"] = before;
        }
        pos.push_back(e);
      }
      list.push_back({{"example", train.ids[static_cast<size_t>(row)]}, {"sum_of_positions", total}, {"positions", pos}});
    }
    out.push_back(list);
  }
  return out;
}

}  // namespace attrace::engine
