#pragma once
// Stage 1 of the pipeline (docs/architecture.md): per-example features of one checkpoint.
// Exact features are the per-example gradients g_c(i) with scoring weight lr_c; projected
// features are sqrt(lr_c) P_c g_c(i) (dense or Kronecker per layer) with weight 1, so that in
// both cases score(i, j) = sum_c weight_c <f_c(i), f_c(j)>. No file I/O here: the caller decides
// whether features go to memory or to a feature store.
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

/// What was used at one checkpoint (for stores and manifests).
struct CheckpointUse {
  int64_t dim = 0;                       ///< gradient dimension
  int64_t feature_dim = 0;               ///< dimension scored (dim when not projected)
  GradPath path = GradPath::general;     ///< gradient path used
  std::string chain_refusal;             ///< why not chain (empty when chain)
  std::vector<std::string> parameters;  ///< selected parameter names
  uint32_t dense_stream = 0;             ///< projection stream (dense)
  std::vector<KroneckerUse> kronecker;   ///< per layer (kronecker)
};

/// How one checkpoint's features were made, as canonical-ready JSON (stores, manifests).
nlohmann::json checkpoint_use_json(const Config& config, const CheckpointUse& use);

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
  /// Scoring weight of this checkpoint (lr for exact features, 1 for projected ones).
  double weight() const;
  /// True when features are float64 (exact fp64 gradients).
  bool fp64() const;

  /// Features of rows [b0, b1) of `ds` ((b1-b0) x width(), row-major), rounded to the
  /// configured storage type, so that features in memory equal features read from a store.
  /// A row's features do not depend on the batch it is computed in.
  void features(const connectors::Dataset& ds, int64_t b0, int64_t b1, float* out);
  /// Same for float64 features.
  void features(const connectors::Dataset& ds, int64_t b0, int64_t b1, double* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attrace::engine
