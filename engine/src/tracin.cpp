#include <attrace/engine/gradients.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>

#include <spdlog/spdlog.h>

#include <limits>

namespace attrace::engine {
namespace {

// Checked 64-bit product for buffer sizes.
int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  ATTRACE_CHECK(a >= 0 && b >= 0 && (a == 0 || b <= std::numeric_limits<int64_t>::max() / a), InputError,
                std::string("size overflow computing ") + what);
  return a * b;
}

template <class T>
void accumulate_checkpoint(CheckpointModel& model, double lr, const connectors::Dataset& train,
                           const connectors::Dataset& query, int64_t batch, kernels::Backend& backend,
                           Progress& progress, TracinResult& r) {
  const int64_t p = model.dim();
  std::vector<T> q(static_cast<size_t>(checked_mul(query.size(), p, "query gradients")));
  for (int64_t b0 = 0; b0 < query.size(); b0 += batch) {
    const int64_t b1 = std::min(query.size(), b0 + batch);
    model.gradients(query, b0, b1, q.data() + b0 * p);
    progress.advance(b1 - b0);
  }
  const auto qv = kernels::view<T>(q.data(), query.size(), p);
  std::vector<T> g(static_cast<size_t>(checked_mul(std::min(batch, train.size()), p, "train gradients")));
  for (int64_t b0 = 0; b0 < train.size(); b0 += batch) {
    const int64_t b1 = std::min(train.size(), b0 + batch);
    model.gradients(train, b0, b1, g.data());
    const auto gv = kernels::view<T>(g.data(), b1 - b0, p);
    backend.score_accumulate(gv, qv, lr, kernels::view_mut(r.scores.data() + b0 * r.n_query, b1 - b0, r.n_query));
    backend.sqnorm_accumulate(gv, lr, r.self_influence.data() + b0);
    progress.advance(b1 - b0);
  }
}

}  // namespace

TracinResult compute_tracin(const Config& config, const connectors::TrainingRun& run,
                            const connectors::Dataset& train, const connectors::Dataset& query,
                            kernels::Backend& backend, Progress& progress) {
  ATTRACE_CHECK(!train.tranches.empty(), InputError, "dataset '" + train.path + "': training set has no tranche table");
  TracinResult r;
  r.n_train = train.size();
  r.n_query = query.size();
  r.scores.assign(static_cast<size_t>(checked_mul(r.n_train, r.n_query, "the score matrix")), 0.0);
  r.self_influence.assign(static_cast<size_t>(r.n_train), 0.0);

  GradientSettings gs;
  gs.loss = config.loss;
  gs.precision = config.precision;
  gs.parameters = config.parameters;
  gs.batch_size = config.batch_size;
  gs.path = config.path;

  const size_t n_ckpt = run.checkpoints.size();
  for (size_t c = 0; c < n_ckpt; ++c) {
    const auto& ck = run.checkpoints[c];
    CheckpointModel model(ck.path, gs, backend);
    model.prepare(train);
    model.prepare(query);
    if (!r.checkpoints.empty())
      ATTRACE_CHECK(model.parameter_names() == r.checkpoints.front().parameters && model.dim() == r.checkpoints.front().dim,
                    InputError,
                    "checkpoint '" + ck.path + "': selected parameters differ from the first checkpoint's ('" +
                        run.checkpoints.front().path + "')");
    r.checkpoints.push_back({model.dim(), model.path_in_use(), model.chain_refusal(), model.parameter_names()});
    spdlog::info("checkpoint {}/{} '{}' (step {}, lr {}): {} gradient dims, {} path{}", c + 1, n_ckpt, ck.file,
                 ck.step, ck.lr, model.dim(), to_string(model.path_in_use()),
                 model.chain_refusal().empty() ? "" : " (" + model.chain_refusal() + ")");
    progress.begin("checkpoint " + std::to_string(c + 1) + "/" + std::to_string(n_ckpt) + " gradients",
                   r.n_query + r.n_train);
    if (config.precision == Precision::fp64)
      accumulate_checkpoint<double>(model, ck.lr, train, query, config.batch_size, backend, progress, r);
    else
      accumulate_checkpoint<float>(model, ck.lr, train, query, config.batch_size, backend, progress, r);
    progress.end();
  }

  const int64_t n_tr = static_cast<int64_t>(train.tranches.size());
  r.tranche_query.assign(static_cast<size_t>(checked_mul(n_tr, r.n_query, "tranche sums")), 0.0);
  const auto sv = kernels::view<double>(r.scores.data(), r.n_train, r.n_query);
  backend.segmented_row_sum(sv, train.tranche.data(), kernels::view_mut(r.tranche_query.data(), n_tr, r.n_query));
  r.topk = backend.column_topk(sv, config.top_k);
  return r;
}

}  // namespace attrace::engine
