#include <attrace/engine/gradients.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>

#include <spdlog/spdlog.h>

#include <cmath>
#include <limits>
#include <type_traits>

namespace attrace::engine {
namespace {

// Checked 64-bit product for buffer sizes.
int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  ATTRACE_CHECK(a >= 0 && b >= 0 && (a == 0 || b <= std::numeric_limits<int64_t>::max() / a), InputError,
                std::string("size overflow computing ") + what);
  return a * b;
}

// How train x query scores are accumulated: the canonical kernel, or a GEMM with `math`.
struct Scoring {
  bool blas = false;
  kernels::GemmMath math = kernels::GemmMath::ieee;
};

Scoring scoring_of(const Config& config) {
  return {config.scoring == "blas", kernels::parse_gemm_math(config.gemm_math)};
}

// Scores and self-influence of one batch of train rows [b0, b0 + f.rows) against all queries.
template <class T>
void score_batch(kernels::Backend& backend, Scoring scoring, kernels::HostMatrix<T> f, kernels::HostMatrix<T> q, double alpha,
                 int64_t b0, TracinResult& r) {
  const auto sv = kernels::view_mut(r.scores.data() + b0 * r.n_query, f.rows, r.n_query);
  if (scoring.blas) {
    if constexpr (std::is_same_v<T, float>)
      backend.score_accumulate_blas(f, q, alpha, scoring.math, sv);
    else
      backend.score_accumulate_blas(f, q, alpha, sv);  // float64 features: gemm_math is ieee (validated)
  } else {
    backend.score_accumulate(f, q, alpha, sv);
  }
  backend.sqnorm_accumulate(f, alpha, r.self_influence.data() + b0);
}

template <class T>
void accumulate_checkpoint(CheckpointModel& model, double lr, const connectors::Dataset& train,
                           const connectors::Dataset& query, int64_t batch, Scoring scoring, kernels::Backend& backend,
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
    score_batch(backend, scoring, kernels::view<T>(g.data(), b1 - b0, p), qv, lr, b0, r);
    progress.advance(b1 - b0);
  }
}

// The projection of one checkpoint: dense (one matrix over the whole gradient) or Kronecker
// (one pair of matrices per Linear layer). Streams keep every matrix independent:
// dense: stream = checkpoint index; kronecker: 2 * (4096 * checkpoint + layer) (+1 for P_out).
struct Projector {
  Projection kind = Projection::none;
  kernels::ProjectionSpec dense;
  std::vector<KroneckerUse> layers;
  std::vector<int64_t> offsets;  // feature column of each layer
  int64_t width = 0;
  float root_lr = 1;
};

Projector plan_projection(const Config& config, CheckpointModel& model, size_t checkpoint, double lr) {
  Projector pr;
  pr.kind = config.projection;
  pr.root_lr = static_cast<float>(std::sqrt(lr));
  const auto dist = config.projection_distribution == "gaussian" ? kernels::ProjectionKind::gaussian
                                                                 : kernels::ProjectionKind::rademacher;
  if (pr.kind == Projection::dense) {
    pr.dense = {config.projection_seed, static_cast<uint32_t>(checkpoint), config.projection_k, dist};
    pr.width = config.projection_k;
  } else if (pr.kind == Projection::kronecker) {
    // Per layer a budget of k features: a layer with d_in * d_out <= k is kept exact (identity
    // factors); otherwise k_out = min(d_out, ceil(sqrt(k))) and k_in = min(d_in, k / k_out). A
    // factor whose budget covers its width is passed through (identity), not projected.
    const int64_t k = config.projection_k;
    const auto side = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(k))));
    const auto layers = model.kronecker_layers();
    ATTRACE_CHECK(layers.size() < 4096, InputError, "Kronecker projection: at most 4095 layers");
    for (size_t l = 0; l < layers.size(); ++l) {
      KroneckerUse u;
      u.layer = layers[l].name;
      u.d_in = layers[l].d_in;
      u.d_out = layers[l].d_out;
      if (u.d_in * u.d_out <= k) {
        u.k_in = u.d_in;
        u.k_out = u.d_out;
      } else {
        u.k_out = std::min(u.d_out, side);
        u.k_in = std::min(u.d_in, std::max<int64_t>(1, k / u.k_out));
      }
      u.stream_in = static_cast<uint32_t>(2 * (4096 * checkpoint + l));
      u.stream_out = u.stream_in + 1;
      pr.offsets.push_back(pr.width);
      pr.width += u.k_in * u.k_out;
      pr.layers.push_back(u);
    }
    pr.dense.seed = config.projection_seed;
    pr.dense.kind = dist;
  }
  return pr;
}

// Features sqrt(lr) P g of rows [b0, b1) into f ((b1-b0) x width).
void project_rows(CheckpointModel& model, const Projector& pr, const Config& config, const connectors::Dataset& ds,
                  int64_t b0, int64_t b1, kernels::Backend& backend, std::vector<float>& scratch, std::vector<double>& scratch64,
                  float* f) {
  const int64_t rows = b1 - b0, p = model.dim();
  const auto out = kernels::view_mut(f, rows, pr.width);
  if (pr.kind == Projection::dense) {
    scratch.resize(static_cast<size_t>(rows * p));
    if (config.precision == Precision::fp64) {  // projection runs in float32
      scratch64.resize(scratch.size());
      model.gradients(ds, b0, b1, scratch64.data());
      for (size_t i = 0; i < scratch.size(); ++i) scratch[i] = static_cast<float>(scratch64[i]);
    } else {
      model.gradients(ds, b0, b1, scratch.data());
    }
    backend.project_dense(kernels::view(scratch.data(), rows, p), pr.dense, out);
  } else {
    std::vector<LayerFactors> factors;
    model.layer_factors(ds, b0, b1, factors);
    for (size_t l = 0; l < factors.size(); ++l) {
      const auto& u = pr.layers[l];
      const auto& fa = factors[l];
      const auto kind_for = [&](int64_t kk, int64_t d) { return kk == d ? kernels::ProjectionKind::identity : pr.dense.kind; };
      kernels::ProjectionSpec in{pr.dense.seed, u.stream_in, u.k_in, kind_for(u.k_in, u.d_in)};
      kernels::ProjectionSpec ou{pr.dense.seed, u.stream_out, u.k_out, kind_for(u.k_out, u.d_out)};
      backend.project_kronecker(kernels::view(fa.x.data(), rows * fa.positions, fa.d_in),
                                kernels::view(fa.delta.data(), rows * fa.positions, fa.d_out), fa.positions, in, ou,
                                kernels::HostMatrixMut<float>{f + pr.offsets[l], rows, u.k_in * u.k_out, pr.width});
    }
  }
  for (int64_t i = 0; i < rows * pr.width; ++i) f[i] *= pr.root_lr;
}

void accumulate_projected(CheckpointModel& model, const Projector& pr, const Config& config, const connectors::Dataset& train,
                          const connectors::Dataset& query, kernels::Backend& backend, Progress& progress, TracinResult& r) {
  const int64_t batch = config.batch_size, k = pr.width;
  std::vector<float> scratch, q(static_cast<size_t>(checked_mul(query.size(), k, "query features")));
  std::vector<double> scratch64;
  for (int64_t b0 = 0; b0 < query.size(); b0 += batch) {
    const int64_t b1 = std::min(query.size(), b0 + batch);
    project_rows(model, pr, config, query, b0, b1, backend, scratch, scratch64, q.data() + b0 * k);
    progress.advance(b1 - b0);
  }
  const auto qv = kernels::view<float>(q.data(), query.size(), k);
  std::vector<float> f(static_cast<size_t>(checked_mul(std::min(batch, train.size()), k, "train features")));
  for (int64_t b0 = 0; b0 < train.size(); b0 += batch) {
    const int64_t b1 = std::min(train.size(), b0 + batch);
    project_rows(model, pr, config, train, b0, b1, backend, scratch, scratch64, f.data());
    score_batch(backend, scoring_of(config), kernels::view<float>(f.data(), b1 - b0, k), qv, 1.0, b0, r);
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
    const Projector pr = plan_projection(config, model, c, ck.lr);
    CheckpointUse use;
    use.dim = model.dim();
    use.feature_dim = pr.kind == Projection::none ? model.dim() : pr.width;
    use.path = model.path_in_use();
    use.chain_refusal = model.chain_refusal();
    use.parameters = model.parameter_names();
    use.dense_stream = pr.dense.stream;
    use.kronecker = pr.layers;
    r.checkpoints.push_back(use);
    spdlog::info("checkpoint {}/{} '{}' (step {}, lr {}): {} gradient dims, {} path{}", c + 1, n_ckpt, ck.file,
                 ck.step, ck.lr, model.dim(), to_string(model.path_in_use()),
                 model.chain_refusal().empty() ? "" : " (" + model.chain_refusal() + ")");
    progress.begin("checkpoint " + std::to_string(c + 1) + "/" + std::to_string(n_ckpt) + " gradients",
                   r.n_query + r.n_train);
    if (pr.kind != Projection::none)
      accumulate_projected(model, pr, config, train, query, backend, progress, r);
    else if (config.precision == Precision::fp64)
      accumulate_checkpoint<double>(model, ck.lr, train, query, config.batch_size, scoring_of(config), backend, progress, r);
    else
      accumulate_checkpoint<float>(model, ck.lr, train, query, config.batch_size, scoring_of(config), backend, progress, r);
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
