#pragma once
// Per-tranche data-quality signals computed from per-example feature sketches and
// self-influence: near-duplicates within and across tranches (cosine of sketches, found through
// an inverted-file index so the cost grows like n^1.5, not n^2) and the share of each tranche
// among the training set's highest self-influence examples. The index only proposes pairs; a
// float64 cosine decides, and the report does not depend on the thread count.
// Method, defaults and the determinism argument: docs/architecture.md, "Data-quality signals".
#include <cstdint>
#include <vector>

namespace attrace::engine {

/// Borrowed views of the inputs; nothing is copied or kept after the call.
struct QualityInput {
  const float* sketch = nullptr;  ///< row-major n x dim feature sketch per example (any scale: cosine is used)
  int64_t n = 0, dim = 0;
  const int64_t* tranche = nullptr;  ///< tranche index per example, in [0, n_tranches)
  int64_t n_tranches = 0;
  const double* self_influence = nullptr;  ///< per example, finite
};

/// Thresholds and index parameters (all echoed in the report).
struct QualitySettings {
  double near_duplicate_cosine = 0.98;  ///< a pair with sketch cosine >= this is a near-duplicate, in (0, 1)
  double outlier_top_fraction = 0.05;   ///< outliers: the round(f n) highest self-influence examples, f in (0, 1]
  int64_t lists = 0;          ///< inverted lists (0: one list below 4096 distinct sketches, else round(sqrt(probes n)))
  int64_t probes = 8;         ///< lists searched per example (the nearest centroids by cosine)
  int64_t kmeans_iterations = 8;   ///< at most this many spherical k-means rounds for the centroids
  int64_t kmeans_sample_per_list = 16;  ///< k-means runs on min(n, this x lists) sampled sketches
  uint64_t seed = 0;          ///< fixes the k-means sample (std::mt19937_64)
  int threads = 0;            ///< OpenMP threads (0: one per core); changes speed, never a result
};

/// One tranche's signals.
struct TrancheQuality {
  int64_t examples = 0;
  int64_t near_duplicate_examples = 0;  ///< examples with a near-duplicate in the same tranche
  double near_duplicate_rate = 0;       ///< near_duplicate_examples / examples (0 for an empty tranche)
  int64_t cross_duplicate_examples = 0;  ///< examples with a near-duplicate in some other tranche
  int64_t outlier_examples = 0;         ///< examples among the training set's top self-influence
  double outlier_share = 0;             ///< outlier_examples / examples (expected: outlier_top_fraction)
};

/// Two different tranches sharing near-duplicates (within-tranche counts are in TrancheQuality).
struct NearDuplicatePair {
  int64_t a = 0, b = 0;                  ///< tranche indices, a < b
  int64_t examples_a = 0, examples_b = 0;  ///< examples of a with a near-duplicate in b, of b with one in a
  double fraction_a = 0, fraction_b = 0;   ///< those counts over the tranche sizes
};

/// The whole result, a pure function of the inputs and settings.
struct QualityReport {
  std::vector<TrancheQuality> tranches;  ///< one per tranche index
  std::vector<NearDuplicatePair> pairs;  ///< sorted by (a, b)
  int64_t pairs_found = 0;               ///< example pairs {i, j}, i != j, found with cosine >= the threshold
  int64_t exact_copy_examples = 0;       ///< examples whose sketch is bit-identical to another's
  int64_t zero_sketch_examples = 0;      ///< all-zero sketches: no direction, never near-duplicates
  int64_t outliers = 0;                  ///< round(outlier_top_fraction n), at least 1
  double self_influence_threshold = 0;   ///< self-influence of the last example counted as an outlier
  int64_t lists_used = 0;                ///< inverted lists actually used (1: exhaustive, exact)
  int64_t kmeans_iterations_run = 0;
  QualitySettings settings;              ///< as given
};

/// One near-duplicate example pair, i < j.
struct ExamplePair {
  int64_t i = 0, j = 0;
  bool operator==(const ExamplePair& o) const { return i == o.i && j == o.j; }
};

/// Computes the signals (same bits for any thread count). When `example_pairs` is given it
/// receives every pair found, sorted (memory grows with pairs_found). InputError naming the field
/// or example on bad input (n or dim zero, a tranche index out of range, a setting out of range);
/// NumericError naming the example on NaN/Inf.
QualityReport quality_signals(const QualityInput& input, const QualitySettings& settings,
                              std::vector<ExamplePair>* example_pairs = nullptr);

}  // namespace attrace::engine
