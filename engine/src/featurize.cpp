#include <attrace/engine/featurize.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/error.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace attrace::engine {

KroneckerUse plan_kronecker_layer(const std::string& layer, int64_t d_in, int64_t d_out, int64_t k, size_t checkpoint,
                                  size_t layer_index) {
  KroneckerUse u;
  u.layer = layer;
  u.d_in = d_in;
  u.d_out = d_out;
  if (d_in * d_out <= k) {
    u.k_in = d_in;
    u.k_out = d_out;
  } else {
    const auto side = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(k))));
    u.k_out = std::min(d_out, side);
    u.k_in = std::min(d_in, std::max<int64_t>(1, k / u.k_out));
  }
  u.stream_in = static_cast<uint32_t>(2 * (4096 * checkpoint + layer_index));
  u.stream_out = u.stream_in + 1;
  return u;
}

namespace {

// Rows per model call (gradients.batch_size = "auto"): 64 off the chain path; on it, what fits
// 64 MiB of features and activations, at most 1024 (docs/performance.md).
constexpr int64_t kDefaultBatchRows = 64;
constexpr int64_t kMaxAutoBatchRows = 1024;
constexpr int64_t kAutoBatchBytes = int64_t{64} << 20;

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
  const auto dist = config.projection_distribution == Distribution::gaussian ? kernels::ProjectionKind::gaussian
                                                                             : kernels::ProjectionKind::rademacher;
  if (pr.kind == Projection::dense) {
    pr.dense = {config.projection_seed, static_cast<uint32_t>(checkpoint), config.projection_k, dist};
    pr.width = config.projection_k;
  } else if (pr.kind == Projection::kronecker) {
    // Per layer a budget of k features: a layer with d_in * d_out <= k is kept exact (identity
    // factors); otherwise k_out = min(d_out, ceil(sqrt(k))) and k_in = min(d_in, k / k_out). A
    // factor whose budget covers its width is passed through (identity), not projected.
    const int64_t k = config.projection_k;
    const auto layers = model.kronecker_layers();
    ATTRACE_CHECK(layers.size() < 4096, InputError, "Kronecker projection: at most 4095 layers");
    for (size_t l = 0; l < layers.size(); ++l) {
      const KroneckerUse u = plan_kronecker_layer(layers[l].name, layers[l].d_in, layers[l].d_out, k, checkpoint, l);
      pr.offsets.push_back(pr.width);
      pr.width += u.k_in * u.k_out;
      pr.layers.push_back(u);
    }
    pr.dense.seed = config.projection_seed;
    pr.dense.kind = dist;
  }
  return pr;
}


// Decides, layer by layer, whether exact features keep a layer's gradient or its factors. Needs
// the chain path with whole Linear layers selected and float32 gradients (the factors are
// float32); otherwise every column is dense and `note` says why. Positions per layer come
// from prepare() (KroneckerLayer::positions): they depend on the model and the input shape only.
void plan_factoring(const Config& config, CheckpointModel& model,
                    CheckpointUse& use, std::vector<bool>& bias) {
  use.factoring = config.factored;
  use.layout = FeatureLayout{model.dim(), {}};
  if (config.projection != Projection::none) return;
  if (config.factored == Factoring::never) {
    use.factoring_note = "features.factored = never";
    return;
  }
  if (config.precision != Precision::fp32) {
    use.factoring_note = "float64 gradients (layer factors are float32)";
    return;
  }
  if (model.path_in_use() == GradPath::general) {
    use.factoring_note = "general gradient path (no layer factors)";
    return;
  }
  std::vector<KroneckerLayer> layers;
  try {
    layers = model.kronecker_layers();
  } catch (const InputError&) {
    use.factoring_note = "the selected parameters are not whole layers of the chain";
    return;
  }
  // Positions per example (conv: output H x W) are known from prepare(): no example is computed here.
  for (size_t l = 0; l < layers.size(); ++l) {
    LayerScoring s{layers[l].name, layers[l].d_in, layers[l].d_out, layers[l].positions, false};
    s.factored = config.factored == Factoring::always || factored_pair_cost(s) < dense_pair_cost(s);
    use.layers.push_back(s);
    bias.push_back(layers[l].bias);
  }
  use.layout = layout_of(use.layers, model.dim());
  ATTRACE_CHECK(!use.layout.factored.empty() || use.layout.dense == model.dim(), RuntimeFailure, "factored layout");
}

// Adds the wall time of its scope to a counter (the progress summary's split of featurization).
class ScopeTimer {
 public:
  explicit ScopeTimer(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~ScopeTimer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  ScopeTimer(const ScopeTimer&) = delete;
  ScopeTimer& operator=(const ScopeTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

FeatureLayout layout_of(const std::vector<LayerScoring>& layers, int64_t dim) {
  FeatureLayout l;
  const bool any = std::any_of(layers.begin(), layers.end(), [](const LayerScoring& s) { return s.factored; });
  if (!any) {
    l.dense = dim;
    return l;
  }
  for (const auto& s : layers)
    if (!s.factored) l.dense += s.d_in * s.d_out;
  int64_t at = l.dense;
  for (const auto& s : layers)
    if (s.factored) {
      l.factored.push_back({s.layer, s.d_in, s.d_out, s.positions, at});
      at += l.factored.back().width();
    }
  return l;
}

int64_t FeatureLayout::width() const {
  int64_t w = dense;
  for (const auto& f : factored) w += f.width();
  return w;
}

bool FeatureLayout::operator==(const FeatureLayout& o) const {
  if (dense != o.dense || factored.size() != o.factored.size()) return false;
  for (size_t l = 0; l < factored.size(); ++l) {
    const auto &a = factored[l], &b = o.factored[l];
    if (a.d_in != b.d_in || a.d_out != b.d_out || a.positions != b.positions || a.offset != b.offset) return false;
  }
  return true;
}

int64_t dense_pair_cost(const LayerScoring& l) { return l.d_in * l.d_out; }
int64_t factored_pair_cost(const LayerScoring& l) { return l.positions * l.positions * (l.d_in + l.d_out); }

nlohmann::json checkpoint_use_json(const Config& config, const CheckpointUse& use) {
  nlohmann::json j = {{"gradient_path", to_string(use.path)}, {"gradient_dim", use.dim}, {"feature_dim", use.feature_dim}};
  if (config.projection == Projection::dense) {
    j["stream"] = use.dense_stream;
  } else if (config.projection == Projection::kronecker) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : use.kronecker)
      layers.push_back({{"layer", l.layer}, {"d_in", l.d_in}, {"d_out", l.d_out}, {"k_in", l.k_in}, {"k_out", l.k_out},
                        {"stream_in", l.stream_in}, {"stream_out", l.stream_out},
                        {"identity_in", l.k_in == l.d_in}, {"identity_out", l.k_out == l.d_out}});
    j["layers"] = layers;
  } else {
    nlohmann::json f = {{"setting", to_string(use.factoring)}, {"dense_columns", use.layout.dense}};
    if (use.layers.empty()) {
      f["note"] = use.factoring_note;
    } else {
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& l : use.layers)
        layers.push_back({{"layer", l.layer}, {"d_in", l.d_in}, {"d_out", l.d_out}, {"positions", l.positions},
                          {"scored", l.factored ? "factored" : "dense"}, {"pair_cost_dense", dense_pair_cost(l)},
                          {"pair_cost_factored", factored_pair_cost(l)}});
      f["layers"] = layers;
    }
    j["factoring"] = f;
  }
  j["parameters"] = use.parameters;
  return j;
}

CheckpointUse checkpoint_use_from_json(const nlohmann::json& j, const std::string& what) {
  try {
    CheckpointUse u;
    const std::string path = j.at("gradient_path").get<std::string>();
    u.path = path == "chain" ? GradPath::chain : path == "graph" ? GradPath::graph : GradPath::general;
    u.dim = j.at("gradient_dim").get<int64_t>();
    u.feature_dim = j.at("feature_dim").get<int64_t>();
    u.parameters = j.at("parameters").get<std::vector<std::string>>();
    if (j.contains("stream")) u.dense_stream = j.at("stream").get<uint32_t>();
    if (j.contains("layers"))
      for (const auto& l : j.at("layers"))
        u.kronecker.push_back({l.at("layer").get<std::string>(), l.at("d_in").get<int64_t>(), l.at("d_out").get<int64_t>(),
                               l.at("k_in").get<int64_t>(), l.at("k_out").get<int64_t>(), l.at("stream_in").get<uint32_t>(),
                               l.at("stream_out").get<uint32_t>()});
    u.layout.dense = u.feature_dim;
    if (j.contains("factoring")) {
      const auto& f = j.at("factoring");
      const std::string setting = f.at("setting").get<std::string>();
      u.factoring = setting == "never" ? Factoring::never : setting == "always" ? Factoring::always : Factoring::automatic;
      if (f.contains("note")) u.factoring_note = f.at("note").get<std::string>();
      if (f.contains("layers"))
        for (const auto& l : f.at("layers")) {
          const std::string scored = l.at("scored").get<std::string>();
          ATTRACE_CHECK(scored == "factored" || scored == "dense", InputError, what + ": layer scored as '" + scored + "'");
          u.layers.push_back({l.at("layer").get<std::string>(), l.at("d_in").get<int64_t>(), l.at("d_out").get<int64_t>(),
                              l.at("positions").get<int64_t>(), scored == "factored"});
          const auto& s = u.layers.back();
          ATTRACE_CHECK(s.d_in > 0 && s.d_out > 0 && s.positions > 0, InputError, what + ": layer '" + s.layer + "' has a size <= 0");
        }
      u.layout = layout_of(u.layers, u.dim);
      ATTRACE_CHECK(u.layout.dense == f.at("dense_columns").get<int64_t>(), InputError,
                    what + ": factoring.dense_columns disagrees with the recorded layers");
    }
    ATTRACE_CHECK(u.layout.width() == u.feature_dim, InputError,
                  what + ": the recorded layers make rows of " + std::to_string(u.layout.width()) + " columns, feature_dim is " +
                      std::to_string(u.feature_dim));
    return u;
  } catch (const nlohmann::json::exception& e) {
    throw InputError(what + ": checkpoint meta is not what attrace writes: " + e.what());
  }
}

struct Featurizer::Impl {
  Config config;
  kernels::Backend* backend = nullptr;
  std::unique_ptr<CheckpointModel> model;
  Projector pr;
  CheckpointUse use;
  double lr = 0;
  connectors::FeatureDtype dtype = connectors::FeatureDtype::f32;
  std::vector<float> scratch;
  std::vector<double> scratch64;
  std::vector<bool> bias;  // per chain layer: its x rows end in the bias column
  std::vector<LayerFactors> factors;
  int64_t batch_rows = kDefaultBatchRows;
  double model_seconds = 0, total_seconds = 0;  // display only (progress summary)

  // Exact rows in a factored layout: dense layers' gradients formed from their factors (weight
  // d_out x (d_in - bias) row-major, then the bias, as the parameters are laid out; positions
  // summed in ascending order in float32), factored layers' x and delta rows copied.
  void factored_rows(const connectors::Dataset& ds, int64_t b0, int64_t b1, float* f) {
    {
      ScopeTimer t(model_seconds);
      model->layer_factors(ds, b0, b1, factors);
    }
    ATTRACE_CHECK(factors.size() == use.layers.size(), RuntimeFailure, "layer factors do not match the planned layers");
    for (size_t l = 0; l < factors.size(); ++l)
      ATTRACE_CHECK(factors[l].positions == use.layers[l].positions && factors[l].d_in == use.layers[l].d_in &&
                        factors[l].d_out == use.layers[l].d_out,
                    InputError,
                    "dataset '" + ds.path + "': layer '" + use.layers[l].layer + "' has " + std::to_string(factors[l].positions) +
                        " positions per example here but " + std::to_string(use.layers[l].positions) +
                        " where the layout was planned (inputs of another shape?)");
    const int64_t rows = b1 - b0, w = use.layout.width();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float* row = f + r * w;
      int64_t dense_at = 0;
      size_t k = 0;  // factored layer index
      for (size_t l = 0; l < factors.size(); ++l) {
        const auto& fa = factors[l];
        const int64_t t_n = fa.positions, d_in = fa.d_in, d_out = fa.d_out;
        const float* x = fa.x.data() + r * t_n * d_in;
        const float* d = fa.delta.data() + r * t_n * d_out;
        if (use.layers[l].factored) {
          const auto& fl = use.layout.factored[k++];
          std::copy(x, x + t_n * d_in, row + fl.offset);
          std::copy(d, d + t_n * d_out, row + fl.delta_offset());
          continue;
        }
        // The chain path's own order (outer_row_sum), so these columns equal its gradient bit for bit.
        const int64_t n_in = d_in - (bias[l] ? 1 : 0);
        float* wg = row + dense_at;
        for (int64_t o = 0; o < d_out; ++o) outer_row_sum(wg + o * n_in, d, o, d_out, x, d_in, n_in, t_n);
        if (bias[l])
          for (int64_t o = 0; o < d_out; ++o) {
            float b = d[o];
            for (int64_t t = 1; t < t_n; ++t) b += d[t * d_out + o];
            wg[d_out * n_in + o] = b;
          }
        dense_at += d_in * d_out;
      }
    }
  }

  // Layer l's Kronecker projection of `n` factor rows (`positions` per output row) into its
  // columns of `f` (rows of pr.width): a factor whose budget covers its width passes through.
  void project_layer(size_t l, const LayerFactors& fa, int64_t n, int64_t positions, float* f) {
    const auto& u = pr.layers[l];
    const auto kind_for = [&](int64_t kk, int64_t d) { return kk == d ? kernels::ProjectionKind::identity : pr.dense.kind; };
    kernels::ProjectionSpec in{pr.dense.seed, u.stream_in, u.k_in, kind_for(u.k_in, u.d_in)};
    kernels::ProjectionSpec ou{pr.dense.seed, u.stream_out, u.k_out, kind_for(u.k_out, u.d_out)};
    backend->project_kronecker(kernels::view(fa.x.data(), n, fa.d_in), kernels::view(fa.delta.data(), n, fa.d_out), positions,
                               in, ou, kernels::HostMatrixMut<float>{f + pr.offsets[l], n / positions, u.k_in * u.k_out, pr.width});
  }

  // Per-position Kronecker features of some rows: each position projected as its own row, one
  // projection call per layer for all of them.
  std::vector<float> position_rows(const connectors::Dataset& ds, const std::vector<int64_t>& rows, int64_t& positions) {
    ATTRACE_CHECK(pr.kind == Projection::kronecker, InputError, "per-position features need projection.kind = \"kronecker\"");
    std::vector<LayerFactors> all, fac;
    positions = -1;
    for (size_t r = 0; r < rows.size(); ++r) {
      model->layer_factors(ds, rows[r], rows[r] + 1, fac);
      if (r == 0) all = fac;
      for (size_t l = 0; l < fac.size(); ++l) {
        if (positions < 0) positions = fac[l].positions;
        ATTRACE_CHECK(fac[l].positions == positions, InputError,
                      "per-position features: layer '" + fac[l].name + "' has " + std::to_string(fac[l].positions) +
                          " positions per example, '" + fac.front().name + "' " + std::to_string(positions) +
                          " (a weight used at several places?)");
        if (r > 0) {
          all[l].x.insert(all[l].x.end(), fac[l].x.begin(), fac[l].x.end());
          all[l].delta.insert(all[l].delta.end(), fac[l].delta.begin(), fac[l].delta.end());
        }
      }
    }
    const int64_t n = static_cast<int64_t>(rows.size()) * std::max<int64_t>(positions, 0);
    std::vector<float> out(static_cast<size_t>(n * pr.width), 0.0f);
    for (size_t l = 0; l < all.size() && n > 0; ++l) {
      project_layer(l, all[l], n, 1, out.data());
    }
    for (auto& v : out) v *= pr.root_lr;
    return out;
  }

  // Features sqrt(lr) P g of rows [b0, b1) into f ((b1-b0) x width).
  void project_rows(const connectors::Dataset& ds, int64_t b0, int64_t b1, float* f) {
    const int64_t rows = b1 - b0, p = model->dim();
    const auto out = kernels::view_mut(f, rows, pr.width);
    if (pr.kind == Projection::dense) {
      scratch.resize(static_cast<size_t>(rows * p));
      if (config.precision == Precision::fp64) {  // projection runs in float32
        scratch64.resize(scratch.size());
        ScopeTimer t(model_seconds);
        model->gradients(ds, b0, b1, scratch64.data());
        for (size_t i = 0; i < scratch.size(); ++i) scratch[i] = static_cast<float>(scratch64[i]);
      } else {
        ScopeTimer t(model_seconds);
        model->gradients(ds, b0, b1, scratch.data());
      }
      backend->project_dense(kernels::view(scratch.data(), rows, p), pr.dense, out);
    } else {
      std::vector<LayerFactors> factors;
      {
        ScopeTimer t(model_seconds);
        model->layer_factors(ds, b0, b1, factors);
      }
      for (size_t l = 0; l < factors.size(); ++l)
        project_layer(l, factors[l], rows * factors[l].positions, factors[l].positions, f);
    }
    for (int64_t i = 0; i < rows * pr.width; ++i) f[i] *= pr.root_lr;
  }
};

Featurizer::Featurizer(const Config& config, const connectors::TrainingRun& run, size_t index,
                       const std::vector<const connectors::Dataset*>& datasets, kernels::Backend& backend)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.config = config;
  m.backend = &backend;
  m.dtype = feature_dtype_of(config);
  const auto& ck = run.checkpoints.at(index);
  m.lr = ck.lr;
  GradientSettings gs;
  gs.loss = config.loss;
  gs.precision = config.precision;
  gs.parameters = config.parameters;
  gs.exclude = config.exclude;
  gs.batch_size = config.batch_size;
  gs.path = config.path;
  gs.model_output = config.model_output;
  m.model = std::make_unique<CheckpointModel>(ck.path, gs, backend);
  for (const auto* ds : datasets) m.model->prepare(*ds);
  m.pr = plan_projection(config, *m.model, index, ck.lr);
  plan_factoring(config, *m.model, m.use, m.bias);
  m.use.dim = m.model->dim();
  m.use.feature_dim = m.pr.kind == Projection::none ? m.use.layout.width() : m.pr.width;
  if (m.pr.kind != Projection::none) m.use.layout = FeatureLayout{m.pr.width, {}};
  m.use.path = m.model->path_in_use();
  m.use.chain_refusal = m.model->chain_refusal();
  m.use.parameters = m.model->parameter_names();
  m.use.dense_stream = m.pr.dense.stream;
  m.use.kronecker = m.pr.layers;
  if (config.batch_size > 0) {
    m.batch_rows = config.batch_size;
  } else if (const int64_t act = m.model->chain_floats_per_example(); act > 0) {
    // A row's features (and their float32 scratch) plus the chain's tape, output gradients and
    // float64 products: about four floats per activation.
    const double per_row = static_cast<double>(m.use.feature_dim) * (m.dtype == connectors::FeatureDtype::f64 ? 12.0 : 8.0) +
                           16.0 * static_cast<double>(act);
    m.batch_rows = std::clamp<int64_t>(static_cast<int64_t>(static_cast<double>(kAutoBatchBytes) / per_row), kDefaultBatchRows,
                                       kMaxAutoBatchRows);
  }
}

Featurizer::~Featurizer() = default;
Featurizer::Featurizer(Featurizer&&) noexcept = default;
Featurizer& Featurizer::operator=(Featurizer&&) noexcept = default;

const CheckpointUse& Featurizer::use() const { return impl_->use; }
int64_t Featurizer::width() const { return impl_->use.feature_dim; }
const FeatureLayout& Featurizer::layout() const { return impl_->use.layout; }
double Featurizer::model_seconds() const { return impl_->model_seconds; }
double Featurizer::row_seconds() const { return impl_->total_seconds - impl_->model_seconds; }
double Featurizer::weight() const { return impl_->pr.kind == Projection::none ? impl_->lr : 1.0; }
bool Featurizer::fp64() const { return impl_->dtype == connectors::FeatureDtype::f64; }
int64_t Featurizer::batch_rows() const { return impl_->batch_rows; }

void Featurizer::features(const connectors::Dataset& ds, int64_t b0, int64_t b1, float* out) {
  auto& m = *impl_;
  ATTRACE_CHECK(!fp64(), RuntimeFailure, "featurizer: float32 features requested for float64 gradients");
  if (b1 <= b0) return;
  ScopeTimer all(m.total_seconds);
  if (m.pr.kind == Projection::none && !m.use.layout.factored.empty()) {
    m.factored_rows(ds, b0, b1, out);
  } else if (m.pr.kind == Projection::none) {
    ScopeTimer t(m.model_seconds);
    m.model->gradients(ds, b0, b1, out);
  } else {
    m.project_rows(ds, b0, b1, out);
  }
  if (m.dtype != connectors::FeatureDtype::f32) {
    const int64_t count = (b1 - b0) * width();
    for (int64_t i = 0; i < count; ++i) out[i] = connectors::round_to_dtype(out[i], m.dtype);
  }
}

void Featurizer::features(const connectors::Dataset& ds, int64_t b0, int64_t b1, double* out) {
  auto& m = *impl_;
  ATTRACE_CHECK(fp64(), RuntimeFailure, "featurizer: float64 features requested for float32 features");
  ScopeTimer all(m.total_seconds), t(m.model_seconds);
  if (b1 > b0) m.model->gradients(ds, b0, b1, out);
}

std::vector<float> Featurizer::position_features(const connectors::Dataset& ds, const std::vector<int64_t>& rows,
                                                 int64_t& positions) {
  return impl_->position_rows(ds, rows, positions);
}

}  // namespace attrace::engine
