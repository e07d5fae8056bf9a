#include <attrace/engine/featurize.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/error.hpp>

#include <cmath>

namespace attrace::engine {
namespace {

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

}  // namespace

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
  }
  j["parameters"] = use.parameters;
  return j;
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

  // Features sqrt(lr) P g of rows [b0, b1) into f ((b1-b0) x width).
  void project_rows(const connectors::Dataset& ds, int64_t b0, int64_t b1, float* f) {
    const int64_t rows = b1 - b0, p = model->dim();
    const auto out = kernels::view_mut(f, rows, pr.width);
    if (pr.kind == Projection::dense) {
      scratch.resize(static_cast<size_t>(rows * p));
      if (config.precision == Precision::fp64) {  // projection runs in float32
        scratch64.resize(scratch.size());
        model->gradients(ds, b0, b1, scratch64.data());
        for (size_t i = 0; i < scratch.size(); ++i) scratch[i] = static_cast<float>(scratch64[i]);
      } else {
        model->gradients(ds, b0, b1, scratch.data());
      }
      backend->project_dense(kernels::view(scratch.data(), rows, p), pr.dense, out);
    } else {
      std::vector<LayerFactors> factors;
      model->layer_factors(ds, b0, b1, factors);
      for (size_t l = 0; l < factors.size(); ++l) {
        const auto& u = pr.layers[l];
        const auto& fa = factors[l];
        const auto kind_for = [&](int64_t kk, int64_t d) { return kk == d ? kernels::ProjectionKind::identity : pr.dense.kind; };
        kernels::ProjectionSpec in{pr.dense.seed, u.stream_in, u.k_in, kind_for(u.k_in, u.d_in)};
        kernels::ProjectionSpec ou{pr.dense.seed, u.stream_out, u.k_out, kind_for(u.k_out, u.d_out)};
        backend->project_kronecker(kernels::view(fa.x.data(), rows * fa.positions, fa.d_in),
                                   kernels::view(fa.delta.data(), rows * fa.positions, fa.d_out), fa.positions, in, ou,
                                   kernels::HostMatrixMut<float>{f + pr.offsets[l], rows, u.k_in * u.k_out, pr.width});
      }
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
  gs.batch_size = config.batch_size;
  gs.path = config.path;
  m.model = std::make_unique<CheckpointModel>(ck.path, gs, backend);
  for (const auto* ds : datasets) m.model->prepare(*ds);
  m.pr = plan_projection(config, *m.model, index, ck.lr);
  m.use.dim = m.model->dim();
  m.use.feature_dim = m.pr.kind == Projection::none ? m.model->dim() : m.pr.width;
  m.use.path = m.model->path_in_use();
  m.use.chain_refusal = m.model->chain_refusal();
  m.use.parameters = m.model->parameter_names();
  m.use.dense_stream = m.pr.dense.stream;
  m.use.kronecker = m.pr.layers;
}

Featurizer::~Featurizer() = default;
Featurizer::Featurizer(Featurizer&&) noexcept = default;
Featurizer& Featurizer::operator=(Featurizer&&) noexcept = default;

const CheckpointUse& Featurizer::use() const { return impl_->use; }
int64_t Featurizer::width() const { return impl_->use.feature_dim; }
double Featurizer::weight() const { return impl_->pr.kind == Projection::none ? impl_->lr : 1.0; }
bool Featurizer::fp64() const { return impl_->dtype == connectors::FeatureDtype::f64; }

void Featurizer::features(const connectors::Dataset& ds, int64_t b0, int64_t b1, float* out) {
  auto& m = *impl_;
  ATTRACE_CHECK(!fp64(), RuntimeFailure, "featurizer: float32 features requested for float64 gradients");
  if (b1 <= b0) return;
  if (m.pr.kind == Projection::none) {
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
  if (b1 > b0) m.model->gradients(ds, b0, b1, out);
}

}  // namespace attrace::engine
