#pragma once
// The feature store: per-example features of a dataset at every checkpoint of a training run, in
// one HDF5 file, written once (`attrace featurize`) and scored many times (`attrace score`).
// Layout and guarantees: docs/formats.md#feature-store.
//
// Crash safety: the file is laid out completely (every dataset allocated, no timestamps) under a
// temporary name and renamed into place; afterwards only raw feature bytes and the per-checkpoint
// progress counters change, each write flushed and fsync'ed before the counter that covers it.
// A writer killed at any point resumes from the counters and produces the same bytes as an
// uninterrupted run. One writer at a time (an flock on ".NAME.lock" beside the store).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace attrace::connectors {

/// Storage type of features. Reads always widen exactly to float32 (or float64 for f64).
enum class FeatureDtype { f32, f64, bf16, f16 };

/// Name used in configs, manifests and the store ("f32", "f64", "bf16", "f16").
std::string to_string(FeatureDtype d);
/// Parses a dtype name; InputError naming `where` otherwise.
FeatureDtype parse_feature_dtype(const std::string& name, const std::string& where);
/// Bytes per stored element.
int64_t dtype_bytes(FeatureDtype d);
/// The value a float becomes when stored as `d` and read back (round to nearest even).
float round_to_dtype(float x, FeatureDtype d);

/// One checkpoint's block of features.
struct StoreCheckpoint {
  int64_t width = 0;   ///< features per example
  double weight = 1;   ///< scoring weight: score = sum_c weight_c <f_c(i), f_c(j)>
  std::string meta;    ///< canonical JSON: how these features were made (for manifests)
};

/// Everything a store holds besides the features themselves; fixed when the store is created
/// and compared field by field when a writer resumes.
struct StoreLayout {
  std::string spec;                 ///< canonical JSON: everything that made the features
  FeatureDtype dtype = FeatureDtype::f32;
  int64_t rows = 0;                 ///< examples
  int64_t chunk_rows = 0;           ///< rows per HDF5 chunk and per durable write
  std::vector<StoreCheckpoint> checkpoints;
  std::vector<std::string> ids;     ///< example ids, in dataset order
  std::vector<int64_t> tranche;     ///< tranche index per example (empty for query stores)
  std::vector<uint8_t> digests;     ///< 32-byte content digest per example (example_digests)
};

/// Writes a store, resuming an interrupted one. Holds the store's lock while alive.
class FeatureStoreWriter {
 public:
  /// Opens `path` for writing. Absent: creates it with `layout`. Present and complete or
  /// partial with an identical layout: resumes. Present with another layout: InputError naming
  /// the first differing field, unless `replace` (then it is recreated). Another writer holding
  /// the lock, a foreign or truncated file: InputError naming the path; nothing is overwritten.
  FeatureStoreWriter(const std::string& path, const StoreLayout& layout, bool replace);
  ~FeatureStoreWriter();
  FeatureStoreWriter(const FeatureStoreWriter&) = delete;
  FeatureStoreWriter& operator=(const FeatureStoreWriter&) = delete;

  /// Rows of checkpoint c already durably written (resume point).
  int64_t rows_done(size_t c) const;
  /// True when every checkpoint has all rows.
  bool complete() const;
  /// Whether this writer resumed an existing file.
  bool resumed() const { return resumed_; }
  /// Writes rows [b0, b1) of checkpoint c (b0 == rows_done(c); b1 - b0 a multiple of chunk_rows
  /// unless b1 == rows), durably, then advances the progress counter.
  void write(size_t c, int64_t b0, int64_t b1, const float* rows);
  /// Same for float64 features (dtype f64).
  void write(size_t c, int64_t b0, int64_t b1, const double* rows);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool resumed_ = false;
};

/// Reads a complete store.
class FeatureStoreReader {
 public:
  /// Opens `path`. InputError naming it when missing, not HDF5, not an attrace feature store,
  /// of an unknown format version, or incomplete (a featurize run was interrupted).
  explicit FeatureStoreReader(const std::string& path);
  ~FeatureStoreReader();
  FeatureStoreReader(const FeatureStoreReader&) = delete;
  FeatureStoreReader& operator=(const FeatureStoreReader&) = delete;

  const std::string& path() const;
  const StoreLayout& layout() const;
  /// Rows [b0, b1) of checkpoint c widened to float32 (row-major, (b1-b0) x width).
  void read(size_t c, int64_t b0, int64_t b1, float* out) const;
  /// Same in float64 (f64 stores only).
  void read(size_t c, int64_t b0, int64_t b1, double* out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// First field in which two layouts differ, as "field: stored X, wanted Y" (empty if equal).
std::string layout_difference(const StoreLayout& stored, const StoreLayout& wanted);

}  // namespace attrace::connectors
