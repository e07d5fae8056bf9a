#pragma once
// Attribution methods on one featurization (docs/eval.md). Every method is a view of the same
// train and query features (a FeatureSource from memory or a store) whose TracIn score
//   score(i, z) = sum_c weight_c <f_c(i), f_c(z)>
// is the method's score, so the tiled scorer, its sinks and every writer serve all methods:
//   - tracin:   the features as they are (lr-weighted sum over checkpoints);
//   - grad_dot: one checkpoint (attribution.checkpoint, default the last), lr_c <g_i, g_z>;
//   - grad_cos: each checkpoint's rows scaled to unit norm (float64 norms, fixed order), weight 1/C;
//   - trak:     per checkpoint, rows whitened by the Cholesky factor L of K = Phi^T Phi + lambda I
//               (so <L^-1 phi_i, L^-1 phi_z> = phi_i^T K^-1 phi_z), training rows times the
//               out-to-loss term Q_i = 1 - p_correct(i) (cross-entropy; 1 for mse), weight 1/C:
//               the ensemble over the checkpoints.
// Self-influence under a method is score(i, i) of its view (grad_cos: 1 for every example).
// Views stream: a row range is transformed when read; only TRAK's k x k factors are held.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/score.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace attrace::engine {

/// Largest feature dimension TRAK accepts (its k x k float64 kernel per checkpoint).
constexpr int64_t kTrakMaxDim = 8192;

/// TRAK's per-checkpoint kernel factors, computed once per training feature set.
struct TrakKernel {
  double lambda = 0;                       ///< relative ridge (attribution.trak_lambda)
  std::vector<int64_t> dim;                ///< k per checkpoint
  std::vector<double> ridge;               ///< absolute ridge per checkpoint: lambda * mean diag(Phi^T Phi)
  std::vector<std::vector<double>> chol;   ///< lower Cholesky factor per checkpoint, k x k row-major
  std::vector<std::vector<double>> q;      ///< out-to-loss term per checkpoint and training row
  std::string key;                         ///< sha256 of what it was computed from (cache check)
};

/// Dense float64 rows [b0, b1) of checkpoint c: factored layers expanded to their gradients
/// (sum_t delta_t (x) x_t, d_out x d_in row-major, in chain order after the dense columns).
void dense_rows(const FeatureSource& f, size_t c, int64_t b0, int64_t b1, std::vector<double>& out);
/// Width of dense_rows for checkpoint c.
int64_t dense_width(const FeatureSource& f, size_t c);

/// Computes TRAK's factors: K_c = sum_i phi_i phi_i^T (rows ascending, float64, each entry owned by
/// one thread) + ridge I, then a left-looking Cholesky in a fixed order. `q` holds Q per
/// checkpoint and row. NumericError when a kernel is not positive definite; InputError when a
/// checkpoint's dimension exceeds kTrakMaxDim (use a projection).
/// `features_id` (e.g. a store's spec) goes into the key that a cached kernel is checked against.
TrakKernel trak_kernel(const FeatureSource& train, const std::vector<std::vector<double>>& q, double lambda,
                       const std::string& features_id = "");

/// Writes a kernel to `path` (atomically) / reads it back; read returns false when the file is
/// absent or holds another key. InputError on a damaged file.
void save_trak_kernel(const std::string& path, const TrakKernel& k);
bool load_trak_kernel(const std::string& path, const std::string& key, TrakKernel& out);

/// Q_i = 1 - p_correct(i) of every row of `ds` at checkpoint c (softmax of the TorchScript
/// model's float64 forward, one intra-op thread so the bits do not depend on threads); all 1
/// for mse.
std::vector<double> out_to_loss(const Config& config, const connectors::TrainingRun& run, size_t c,
                                const connectors::Dataset& ds);

/// A method's view of a train and a query feature source (null members: the base itself).
struct MethodView {
  std::shared_ptr<FeatureSource> train, query;
  std::shared_ptr<const TrakKernel> kernel;  ///< trak only
  std::string description;                   ///< for manifests and eval tables
  /// The source to score: the view, or `base` when the method is the features as they are.
  const FeatureSource& train_or(const FeatureSource& base) const { return train ? *train : base; }
  const FeatureSource& query_or(const FeatureSource& base) const { return query ? *query : base; }
};

/// Settings of a view (a subset of Config).
struct MethodSettings {
  Method method = Method::tracin;
  int64_t checkpoint = -1;  ///< grad_dot: 0-based checkpoint, -1 the last
};

/// The view for `s.method`; trak needs `kernel` (from trak_kernel on the same train source).
/// InputError naming the setting when the checkpoint does not exist.
MethodView make_method_view(const MethodSettings& s, const FeatureSource& train, const FeatureSource& query,
                            std::shared_ptr<const TrakKernel> kernel = nullptr);

/// The pipeline's hook: the view for config.method; for trak computes Q from the run's
/// checkpoints on `train_ds` and the kernel, reusing `cache_path` when it holds the same key
/// and writing it otherwise (empty: no cache); `features_id` names the features (a store's spec).
/// A train_ds without inputs (rebuilt from a store) is read again from config.train_file.
MethodView method_view(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train_ds,
                       const FeatureSource& train, const FeatureSource& query, const std::string& cache_path = "",
                       const std::string& features_id = "");

/// For a method other than TracIn, replaces `result.self_influence` by TracIn's (the base
/// features' score(i, i), bit for bit as a TracIn run gives it), so that the quality signals and
/// reward rules keep one definition whatever attribution.method scores the vector with.
void keep_tracin_self_influence(const Config& config, const MethodView& view, const FeatureSource& train,
                                const FeatureSource& query, kernels::Backend& backend, Progress& progress, ScoreResult& result);

/// The method's name as in config files.
std::string method_name(Method m);

}  // namespace attrace::engine
