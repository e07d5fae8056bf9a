#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>

#include <spdlog/spdlog.h>

namespace attrace::engine {
namespace {

// Features of rows [0, ds.size()) of `ds` for one checkpoint into `dst`, batch by batch.
void fill(Featurizer& fz, const connectors::Dataset& ds, int64_t batch, MemoryFeatures& dst, size_t c, Progress& progress) {
  const int64_t w = fz.width();
  for (int64_t b0 = 0; b0 < ds.size(); b0 += batch) {
    const int64_t b1 = std::min(ds.size(), b0 + batch);
    if (fz.fp64())
      fz.features(ds, b0, b1, dst.f64(c) + b0 * w);
    else
      fz.features(ds, b0, b1, dst.f32(c) + b0 * w);
    progress.advance(b1 - b0);
  }
}

void check_same_parameters(const std::vector<CheckpointUse>& uses, const CheckpointUse& u, const connectors::TrainingRun& run,
                           size_t c) {
  if (!uses.empty())
    ATTRACE_CHECK(u.parameters == uses.front().parameters && u.dim == uses.front().dim, InputError,
                  "checkpoint '" + run.checkpoints[c].path + "': selected parameters differ from the first checkpoint's ('" +
                      run.checkpoints.front().path + "')");
}

void log_checkpoint(const connectors::TrainingRun& run, size_t c, const CheckpointUse& u) {
  const auto& ck = run.checkpoints[c];
  size_t factored = 0;
  for (const auto& l : u.layers) factored += l.factored ? 1 : 0;
  const std::string layers =
      factored == 0 ? "" : ", " + std::to_string(factored) + " of " + std::to_string(u.layers.size()) + " layers factored";
  spdlog::info("checkpoint {}/{} '{}' (step {}, lr {}): {} gradient dims, {} feature columns{}, {} path{}", c + 1,
               run.checkpoints.size(), ck.file, ck.step, ck.lr, u.dim, u.feature_dim, layers, to_string(u.path),
               u.chain_refusal.empty() ? "" : " (" + u.chain_refusal + ")");
  // Speed hints: a setting that makes scoring much slower than it needs to be.
  for (const auto& l : c == 0 ? u.layers : std::vector<LayerScoring>{})
    if (l.factored && factored_pair_cost(l) > 4 * dense_pair_cost(l))
      spdlog::warn("layer '{}': factored scoring costs {} multiply-adds per pair ({} positions) against {} dense; "
                   "features.factored = \"auto\" keeps it dense", l.layer, factored_pair_cost(l), l.positions, dense_pair_cost(l));
}

// What checkpoint c uses, checked against the first checkpoint's and logged.
void add_use(std::vector<CheckpointUse>& uses, const Featurizer& fz, const connectors::TrainingRun& run, size_t c) {
  check_same_parameters(uses, fz.use(), run, c);
  log_checkpoint(run, c, fz.use());
  uses.push_back(fz.use());
}

// One set's features at checkpoint c as a progress stage named `label`.
void fill_stage(Featurizer& fz, const connectors::Dataset& ds, MemoryFeatures& mem, size_t c, const connectors::TrainingRun& run,
                const std::string& label, Progress& progress) {
  progress.begin("checkpoint " + std::to_string(c + 1) + "/" + std::to_string(run.checkpoints.size()) + " " + label, ds.size(),
                 label);
  fill(fz, ds, fz.batch_rows(), mem, c, progress);
  progress.end();
}

}  // namespace

void note_split(const Config& config, const Featurizer& fz, Progress& progress) {
  progress.add_detail(config.projection == Projection::none ? "gradients" : "gradients (layer factors for kronecker)",
                      fz.model_seconds());
  progress.add_detail(config.projection == Projection::none ? "feature rows" : "projection", fz.row_seconds());
}


MemoryFeatures featurize_in_memory(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& ds,
                                   const std::vector<const connectors::Dataset*>& prepare_for, kernels::Backend& backend,
                                   Progress& progress, const std::string& label, std::vector<CheckpointUse>* uses) {
  MemoryFeatures mem(ds.size(), feature_dtype_of(config) == connectors::FeatureDtype::f64);
  std::vector<CheckpointUse> local;
  for (size_t c = 0; c < run.checkpoints.size(); ++c) {
    Featurizer fz(config, run, c, prepare_for, backend);
    add_use(local, fz, run, c);
    mem.add_checkpoint(fz.layout(), fz.weight());
    fill_stage(fz, ds, mem, c, run, label, progress);
    note_split(config, fz, progress);
  }
  if (uses) *uses = local;
  return mem;
}

FeaturePair featurize_pair_in_memory(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                                     const connectors::Dataset& query, kernels::Backend& backend, Progress& progress,
                                     std::vector<CheckpointUse>* uses, const std::function<void(const Featurizer&)>& before,
                                     const std::string& label_prefix) {
  const bool f64 = feature_dtype_of(config) == connectors::FeatureDtype::f64;
  FeaturePair f{MemoryFeatures(train.size(), f64), MemoryFeatures(query.size(), f64)};
  std::vector<CheckpointUse> local;
  for (size_t c = 0; c < run.checkpoints.size(); ++c) {
    // One model load per checkpoint: the path is decided on the training set's rows and checked
    // on the query set's (CheckpointModel::prepare).
    Featurizer fz(config, run, c, {&train, &query}, backend);
    if (c == 0 && before) before(fz);
    add_use(local, fz, run, c);
    f.train.add_checkpoint(fz.layout(), fz.weight());
    f.query.add_checkpoint(fz.layout(), fz.weight());
    fill_stage(fz, query, f.query, c, run, label_prefix + "query features", progress);
    fill_stage(fz, train, f.train, c, run, label_prefix + "train features", progress);
    note_split(config, fz, progress);
  }
  if (uses) *uses = std::move(local);
  return f;
}

TracinResult tracin_result(ScoreResult&& s, std::vector<CheckpointUse> uses) {
  TracinResult r;
  r.n_train = s.n_train;
  r.n_query = s.n_query;
  r.scores = std::move(s.scores);
  r.self_influence = std::move(s.self_influence);
  r.tranche_query = std::move(s.tranche_query);
  r.example_total = std::move(s.example_total);
  r.topk = std::move(s.topk);
  r.checkpoints = std::move(uses);
  r.plan = s.plan;
  return r;
}

ScoreSettings score_settings(const Config& config, const connectors::Dataset& train, const connectors::Dataset& query,
                             bool keep_scores) {
  ScoreSettings s;
  s.scoring = config.scoring;
  s.gemm_math = config.gemm_math;
  s.top_k = config.top_k;
  s.memory_limit = config.memory_limit;
  s.keep_scores = keep_scores;
  s.tranche = train.tranche;
  s.n_tranches = static_cast<int64_t>(train.tranches.size());
  s.train_ids = train.ids;
  s.query_ids = query.ids;
  return s;
}

TracinResult compute_tracin(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                            const connectors::Dataset& query, kernels::Backend& backend, Progress& progress) {
  ATTRACE_CHECK(!train.tranches.empty(), InputError, "dataset '" + train.path + "': training set has no tranche table");
  std::vector<CheckpointUse> uses;
  const FeaturePair f = featurize_pair_in_memory(config, run, train, query, backend, progress, &uses);
  return tracin_result(score_all(f.train, f.query, backend, score_settings(config, train, query, true), progress), std::move(uses));
}

}  // namespace attrace::engine
