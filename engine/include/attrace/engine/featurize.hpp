#pragma once
// Stage 1 of the pipeline (docs/architecture.md): per-example features of one checkpoint.
// Exact features are the per-example gradients g_c(i) with scoring weight lr_c; projected
// features are sqrt(lr_c) P_c g_c(i) (dense or Kronecker per layer) with weight 1, so that in
// both cases score(i, j) = sum_c weight_c <f_c(i), f_c(j)>. No file I/O here: the caller decides
// whether features go to memory or to a feature store.
//
// Exact features may be factored (features.factored): a Linear (or conv) layer's per-example
// gradient is sum_t delta_t (x) x_t over its T positions, so <g_i, g_j> for that layer is
// sum_{t,s} <x_it, x_js> <delta_it, delta_js>, exactly. A factored layer keeps its x and delta
// rows in the feature row instead of the d_out x d_in gradient; the scorer reads the row through
// its FeatureLayout.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/kernels/backend.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace attrace::engine {

/// One Linear layer's Kronecker projection sizes.
struct KroneckerUse {
  std::string layer;
  int64_t d_in = 0, d_out = 0, k_in = 0, k_out = 0;
  uint32_t stream_in = 0, stream_out = 0;
};

/// Layer `layer_index`'s Kronecker sizes and streams at `checkpoint` under a budget of k features:
/// a layer with d_in * d_out <= k is kept exact (identity factors); otherwise k_out = min(d_out,
/// ceil(sqrt(k))) and k_in = min(d_in, k / k_out); streams 2(4096 checkpoint + layer) and the next.
/// The featurizer and the training recorder both plan with it, so their features agree.
KroneckerUse plan_kronecker_layer(const std::string& layer, int64_t d_in, int64_t d_out, int64_t k, size_t checkpoint,
                                  size_t layer_index);

/// A layer kept as factors in a feature row: columns [offset, offset + positions * d_in) hold its
/// input rows x_t (t ascending, a trailing 1 when the bias is selected), the next
/// positions * d_out columns its output-gradient rows delta_t.
struct FactoredLayer {
  std::string layer;
  int64_t d_in = 0, d_out = 0, positions = 1;
  int64_t offset = 0;  ///< first column of x_0
  /// First column of delta_0.
  int64_t delta_offset() const { return offset + positions * d_in; }
  /// Columns this layer takes in a row.
  int64_t width() const { return positions * (d_in + d_out); }
};

/// How a feature row is scored: columns [0, dense) by one dot product, then each factored layer
/// in chain order. A plain gradient row has dense = width and no factored layer.
struct FeatureLayout {
  int64_t dense = 0;
  std::vector<FactoredLayer> factored;
  /// Columns of a row.
  int64_t width() const;
  /// True when two layouts score the same way (same dense width, same layers and sizes).
  bool operator==(const FeatureLayout& o) const;
  bool operator!=(const FeatureLayout& o) const { return !(*this == o); }
};

/// One layer's scoring choice for exact features (recorded in stores and manifests).
struct LayerScoring {
  std::string layer;
  int64_t d_in = 0, d_out = 0, positions = 1;
  bool factored = false;
};

/// Multiply-adds per scored pair for one layer kept dense (d_in * d_out) and factored
/// (T^2 (d_in + d_out)); auto factors a layer when the second is smaller.
int64_t dense_pair_cost(const LayerScoring& l);
int64_t factored_pair_cost(const LayerScoring& l);

/// The layout of a row from the per-layer choices: the dense layers' gradients first (chain
/// order), then each factored layer's x and delta blocks (chain order). No factored layer: the
/// plain gradient of `dim` columns.
FeatureLayout layout_of(const std::vector<LayerScoring>& layers, int64_t dim);

/// What was used at one checkpoint (for stores and manifests).
struct CheckpointUse {
  int64_t dim = 0;                       ///< gradient dimension
  int64_t feature_dim = 0;               ///< dimension scored (dim when not projected)
  GradPath path = GradPath::general;     ///< gradient path used
  std::string chain_refusal;             ///< why not chain (empty when chain)
  std::vector<std::string> parameters;  ///< selected parameter names
  uint32_t dense_stream = 0;             ///< projection stream (dense)
  std::vector<KroneckerUse> kronecker;   ///< per layer (kronecker)
  Factoring factoring = Factoring::automatic;  ///< features.factored in force (exact features)
  std::vector<LayerScoring> layers;      ///< exact features on the chain path: each layer's choice
  std::string factoring_note;            ///< exact features: why no layer could be factored
  FeatureLayout layout;                  ///< how a feature row is scored (dense unless factored)
};

/// How one checkpoint's features were made, as canonical-ready JSON (stores, manifests).
nlohmann::json checkpoint_use_json(const Config& config, const CheckpointUse& use);

/// The inverse of checkpoint_use_json (a store's checkpoint meta); the layout is rebuilt from the
/// recorded layer choices. InputError naming `what` when the JSON is not what attrace writes.
CheckpointUse checkpoint_use_from_json(const nlohmann::json& j, const std::string& what);

/// Features of one checkpoint of a training run.
class Featurizer {
 public:
  /// Loads checkpoint `index` of `run`, checks that it fits every dataset in `datasets` and
  /// plans the projection. InputError naming the checkpoint and dataset otherwise.
  Featurizer(const Config& config, const connectors::TrainingRun& run, size_t index,
             const std::vector<const connectors::Dataset*>& datasets, kernels::Backend& backend);
  ~Featurizer();
  Featurizer(Featurizer&&) noexcept;
  Featurizer& operator=(Featurizer&&) noexcept;

  /// What this checkpoint uses (path, parameters, projection streams).
  const CheckpointUse& use() const;
  /// Features per example.
  int64_t width() const;
  /// How a row is laid out and scored.
  const FeatureLayout& layout() const;
  /// Wall seconds spent so far in the model (per-example gradients or layer factors), and in
  /// making rows from them (projection, factor layout, rounding): for progress summaries only.
  double model_seconds() const;
  double row_seconds() const;
  /// Scoring weight of this checkpoint (lr for exact features, 1 for projected ones).
  double weight() const;
  /// True when features are float64 (exact fp64 gradients).
  bool fp64() const;
  /// Rows per model call: gradients.batch_size, or for "auto" (0) on the chain path as many as
  /// fit kAutoBatchBytes of features and activations, between 64 and 1024 (64 on other paths).
  /// Speed only: a row's features never depend on its batch.
  int64_t batch_rows() const;

  /// Features of rows [b0, b1) of `ds` ((b1-b0) x width(), row-major), rounded to the
  /// configured storage type, so that features in memory equal features read from a store.
  /// A row's features do not depend on the batch it is computed in.
  void features(const connectors::Dataset& ds, int64_t b0, int64_t b1, float* out);
  /// Same for float64 features.
  void features(const connectors::Dataset& ds, int64_t b0, int64_t b1, double* out);
  /// Per-position features of `rows` (Kronecker projection only): per row, `positions` rows of
  /// width() floats whose sum over positions is that row's features before rounding to the storage
  /// type (each layer's term of the Kronecker sum at position t). InputError unless
  /// projection.kind is kronecker and every layer has the same number of positions per example.
  std::vector<float> position_features(const connectors::Dataset& ds, const std::vector<int64_t>& rows, int64_t& positions);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attrace::engine
