#pragma once
// Stage 3 of the pipeline (docs/architecture.md): tiled scoring under a memory plan, feeding
// streaming sinks. For each query tile: for each train tile: for each checkpoint c in order:
// score(i, j) += weight_c <f_c(i), f_c(j)>; then the sinks consume the tile:
//   - self-influence sum_c weight_c |f_c(i)|^2 (first query tile only);
//   - tranche sums: fixed blocks of kTrancheBlock consecutive training rows, rows ascending inside
//     a block, block partials folded in ascending block order (so work can be split at block
//     boundaries across tiles, processes or GPUs without changing a bit);
//   - per-example totals sum_j score(i, j): one running float64 sum per training row, queries
//     added in ascending order (query tiles run in ascending order, columns ascending inside a
//     tile), so the sum is the plain left-to-right one whatever the tiles or threads;
//   - top-k proponents/opponents per query, merged under the total order (score, then row);
//   - optionally the full score matrix.
// Tile sizes follow the memory limit; no result depends on them (tested).
//
// A checkpoint's rows are scored through their FeatureLayout: the dense columns by one dot
// product, then each factored layer l in chain order by
//   sum over t ascending, s ascending of <x_it, x_js> <delta_it, delta_js>
// (each dot product by the scoring kernel, the products and the sum in float64), so that
// score(i, j) += weight_c * dense_dot, then += weight_c * layer_l for each l: a pure function of
// the two rows. Self-influence takes the same path with j = i, so it equals score(i, i).
#include <attrace/connectors/feature_store.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/featurize.hpp>
#include <attrace/engine/progress.hpp>
#include <attrace/kernels/backend.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace attrace::engine {

/// Training rows per tranche-sum block (part of the documented summation order).
constexpr int64_t kTrancheBlock = 4096;

/// Features of a set of examples at every checkpoint, readable in row ranges.
class FeatureSource {
 public:
  virtual ~FeatureSource() = default;
  virtual int64_t rows() const = 0;
  virtual size_t checkpoints() const = 0;
  virtual int64_t width(size_t c) const = 0;
  /// Scoring weight of checkpoint c.
  virtual double weight(size_t c) const = 0;
  /// True when features are float64.
  virtual bool fp64() const = 0;
  /// Rows [b0, b1) of checkpoint c, row-major.
  virtual void read(size_t c, int64_t b0, int64_t b1, float* out) const = 0;
  virtual void read(size_t c, int64_t b0, int64_t b1, double* out) const = 0;
  /// How rows of checkpoint c are laid out (plain gradients or projections: all dense).
  virtual FeatureLayout layout(size_t c) const { return FeatureLayout{width(c), {}}; }
  /// Bytes per element.
  int64_t element_bytes() const { return fp64() ? 8 : 4; }
};

/// Features held in memory (filled checkpoint by checkpoint by the featurizer).
class MemoryFeatures final : public FeatureSource {
 public:
  MemoryFeatures(int64_t rows, bool fp64) : rows_(rows), fp64_(fp64) {}
  /// Adds checkpoint storage of `width` dense columns and returns its index.
  size_t add_checkpoint(int64_t width, double weight);
  /// Adds checkpoint storage of rows laid out as `layout` and returns its index.
  size_t add_checkpoint(const FeatureLayout& layout, double weight);
  float* f32(size_t c) { return f32_[c].data(); }
  double* f64(size_t c) { return f64_[c].data(); }

  int64_t rows() const override { return rows_; }
  size_t checkpoints() const override { return widths_.size(); }
  int64_t width(size_t c) const override { return widths_[c]; }
  double weight(size_t c) const override { return weights_[c]; }
  bool fp64() const override { return fp64_; }
  void read(size_t c, int64_t b0, int64_t b1, float* out) const override;
  void read(size_t c, int64_t b0, int64_t b1, double* out) const override;
  FeatureLayout layout(size_t c) const override { return layouts_[c]; }

 private:
  int64_t rows_;
  bool fp64_;
  std::vector<int64_t> widths_;
  std::vector<FeatureLayout> layouts_;
  std::vector<double> weights_;
  std::vector<std::vector<float>> f32_;
  std::vector<std::vector<double>> f64_;
};

/// Features read from a complete feature store.
class StoreFeatures final : public FeatureSource {
 public:
  /// Reads each checkpoint's layout from its meta. InputError naming the store and checkpoint
  /// when the meta cannot be read or its layout does not match the stored width.
  explicit StoreFeatures(const connectors::FeatureStoreReader& store);
  int64_t rows() const override { return store_.layout().rows; }
  size_t checkpoints() const override { return store_.layout().checkpoints.size(); }
  int64_t width(size_t c) const override { return store_.layout().checkpoints[c].width; }
  double weight(size_t c) const override { return store_.layout().checkpoints[c].weight; }
  bool fp64() const override { return store_.layout().dtype == connectors::FeatureDtype::f64; }
  void read(size_t c, int64_t b0, int64_t b1, float* out) const override { store_.read(c, b0, b1, out); }
  void read(size_t c, int64_t b0, int64_t b1, double* out) const override { store_.read(c, b0, b1, out); }
  FeatureLayout layout(size_t c) const override { return layouts_[c]; }

 private:
  const connectors::FeatureStoreReader& store_;
  std::vector<FeatureLayout> layouts_;
};

/// Settings of the scoring stage (a stage takes what it needs, not the whole Config).
struct ScoreSettings {
  Scoring scoring = Scoring::fma;
  kernels::GemmMath gemm_math = kernels::GemmMath::ieee;
  int64_t top_k = 10;
  int64_t memory_limit = 0;  ///< bytes; 0: half of physical memory
  bool keep_scores = false;  ///< also return the full n_train x n_query matrix
  std::vector<int64_t> tranche;  ///< tranche index of each training row
  int64_t n_tranches = 0;
  std::vector<std::string> train_ids, query_ids;  ///< for messages
};

/// Tile sizes chosen by the memory plan (reported, never part of a result).
struct ScorePlan {
  int64_t train_tile = 0, query_tile = 0, budget = 0;
};

/// Everything the scorer produces.
struct ScoreResult {
  int64_t n_train = 0, n_query = 0;
  std::vector<double> self_influence;  ///< n_train
  std::vector<double> tranche_query;   ///< n_tranches x n_query
  std::vector<double> example_total;   ///< n_train: sum over queries (ascending) of score(i, j)
  std::vector<kernels::TopK> topk;     ///< per query
  std::vector<double> scores;          ///< n_train x n_query when keep_scores
  ScorePlan plan;
};

/// The memory plan for these sources under `settings.memory_limit`. InputError when even the
/// smallest tiles do not fit, naming the limit and what is needed.
ScorePlan plan_scoring(const FeatureSource& train, const FeatureSource& query, const ScoreSettings& settings);

/// Scores every training row against every query row. NumericError naming the train and query
/// example on a non-finite score.
ScoreResult score_all(const FeatureSource& train, const FeatureSource& query, kernels::Backend& backend,
                      const ScoreSettings& settings, Progress& progress);

/// Physical memory of this machine in bytes (0 if unknown).
int64_t physical_memory();

/// A byte count for messages, e.g. "4.2 GiB".
std::string gib(double bytes);

}  // namespace attrace::engine
