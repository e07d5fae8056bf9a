#pragma once
// Live recording of projected per-example gradients while a model trains (docs/recorder.md).
//
// At each recorded step t the recorder keeps, for every example i of that step's batch, the
// Kronecker-projected gradient of every Linear layer, sqrt(lr_t) (P_out (x) P_in) g_t(i), made
// from the layer inputs of the ordinary forward pass and the output gradients of the ordinary
// backward pass by the same projection (same generator, seeds, streams, budget rule, rounding)
// as `attrace featurize`, plus the model's parameters at that step. finalize_recording() turns a
// recording into a run file (one checkpoint per recorded step, saved from the recorded
// parameters) and an attrace.features/1 store in which checkpoint c = recorded step c holds the
// recorded rows for the examples of that step's batch and zero rows for every other example. So
// `attrace score` computes exact TracIn over the recorded steps,
//   score(i, q) = sum over recorded steps t whose batch held i of lr_t <P g_t(i), P g_t(q)>,
// with the query features made by the CLI from the saved checkpoints (the TracInCP route).
//
// This header does not expose LibTorch: the torch types are only declared.
#include <attrace/connectors/feature_store.hpp>
#include <attrace/engine/featurize.hpp>
#include <attrace/kernels/backend.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torch::jit {
struct Module;
}
namespace at {
class Tensor;
}

namespace attrace::engine {

/// One Linear layer of the recorded model, in chain order.
struct RecordedLayer {
  std::string name;   ///< module path, as TorchScript names the chain's child ("0", "fc1", "body.2")
  int64_t d_in = 0;   ///< input width, plus one for the bias column when the layer has a bias
  int64_t d_out = 0;  ///< output width
  bool bias = false;
};

/// One parameter tensor saved at each recorded step (to rebuild that step's checkpoint).
struct RecordedParameter {
  std::string name;            ///< named_parameters() name
  std::vector<int64_t> shape;  ///< tensor shape
  /// Number of elements.
  int64_t numel() const;
};

/// What to record and how (recorded in recording.json and compared on resume).
struct RecorderSettings {
  int64_t k = 4096;  ///< projection budget per layer (projection.k)
  uint64_t seed = 0;  ///< projection.seed
  kernels::ProjectionKind distribution = kernels::ProjectionKind::rademacher;  ///< projection.distribution
  connectors::FeatureDtype dtype = connectors::FeatureDtype::f32;            ///< features.dtype
  int64_t every = 1;            ///< record steps 0, every, 2 every, ... (when `steps` is empty)
  std::vector<int64_t> steps;   ///< when non-empty: exactly these steps, ascending
  int64_t flush_steps = 64;     ///< recorded steps kept in memory before a durable write (speed only)
  int64_t flush_bytes = int64_t{256} << 20;  ///< ... or this many bytes of them
  /// OpenMP threads of the recorder's projection (speed only). 1 by default: it runs between
  /// training steps on cores the training already uses, where waking a thread pool per call
  /// costs more than the projection.
  int threads = 1;
};

/// The projection of each layer at recorded step `checkpoint` (the run's checkpoint index): the
/// featurizer's rule (a layer with d_in d_out <= k exact; else k_out = min(d_out, ceil(sqrt k)),
/// k_in = min(d_in, k / k_out)) and streams 2 (4096 checkpoint + layer), + 1 for P_out.
std::vector<KroneckerUse> plan_recorded_projection(const std::vector<RecordedLayer>& layers, int64_t k, size_t checkpoint);

/// Feature columns of one recorded row (sum over layers of k_in k_out).
int64_t recorded_width(const std::vector<KroneckerUse>& plan);

/// One layer's captured factors for a batch of B examples with T positions each: x holds
/// (B T) x d_in layer inputs (with the trailing bias column of ones), delta (B T) x d_out gradients
/// of each example's own loss with respect to the layer's outputs (float32, row-major).
struct LayerBatch {
  const float* x = nullptr;
  const float* delta = nullptr;
  int64_t positions = 1;
};

/// The features of a batch at one recorded step, B x recorded_width(plan), as the featurizer
/// makes them: each layer's project_kronecker into its columns, every entry times
/// float(sqrt(lr)), then rounded to `dtype`.
void recorded_rows(kernels::Backend& backend, const std::vector<KroneckerUse>& plan, const RecorderSettings& settings,
                   double lr, int64_t batch, const std::vector<LayerBatch>& layers, float* out);

/// Wall seconds spent by a writer (benchmark breakdown; never in any output file).
struct RecorderTimings {
  double project = 0;  ///< projection, scaling, rounding
  double write = 0;    ///< building and writing segments (incl. fsync)
};

/// Writes a recording directory (docs/recorder.md, "Recording layout"): recording.json, the model
/// template, then segment files, each holding consecutive recorded steps and written atomically
/// (temporary name, fsync, rename, directory fsync), so after a crash (SIGKILL included) the
/// recording is consistent up to the last durable segment; reopening the directory resumes it.
class RecordingWriter {
 public:
  /// Creates `dir` (copying the TorchScript `template_file` into it) or resumes the recording
  /// there. InputError naming the field when an existing recording has other layers, parameters
  /// or settings, or a damaged segment.
  RecordingWriter(const std::string& dir, const RecorderSettings& settings, std::vector<RecordedLayer> layers,
                  std::vector<RecordedParameter> parameters, const std::string& template_file);
  /// Flushes pending steps (an error is logged, not thrown).
  ~RecordingWriter();
  RecordingWriter(const RecordingWriter&) = delete;
  RecordingWriter& operator=(const RecordingWriter&) = delete;

  /// True when training step `step` is scheduled and after the last recorded step.
  bool wants(int64_t step) const;
  /// Records one step: features of the batch's examples (ids: dataset row numbers, distinct) from
  /// the layers' factors, and the parameters (one pointer per RecordedParameter). InputError when
  /// the step does not increase, the lr is not finite and >= 0, or an id repeats in the batch.
  void record(int64_t step, double lr, const int64_t* ids, int64_t batch, const std::vector<LayerBatch>& layers,
              const std::vector<const float*>& parameters);
  /// Makes every recorded step durable (one segment).
  void flush();
  /// Steps recorded (durable and pending).
  int64_t recorded() const;
  /// Steps on disk.
  int64_t durable() const;
  /// Last recorded training step (-1 when none).
  int64_t last_step() const;
  /// Columns of a recorded row.
  int64_t width() const;
  /// The recording directory.
  const std::string& dir() const;
  /// Time spent so far.
  const RecorderTimings& timings() const;

 private:
  // Creates or resumes the recording once the directory lock is held.
  void open_locked(const std::string& dir, const RecorderSettings& settings);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// One recorded step read back.
struct RecordedStep {
  int64_t step = 0;
  double lr = 0;
  std::vector<int64_t> ids;       ///< dataset rows of the batch, in batch order
  std::vector<float> rows;        ///< ids.size() x width features
  std::vector<float> parameters;  ///< every parameter, concatenated in RecordedParameter order
};

/// Reads a recording's durable steps.
class RecordingReader {
 public:
  /// Opens `dir`; InputError naming the file when recording.json or a segment is not what the
  /// recorder writes (damaged or foreign). Uncommitted temporary files are ignored.
  explicit RecordingReader(const std::string& dir);
  ~RecordingReader();
  /// Durable recorded steps.
  size_t steps() const;
  /// Recorded step c (0-based, in recording order).
  RecordedStep step(size_t c) const;
  /// Layers, parameters and settings as recorded.
  const std::vector<RecordedLayer>& layers() const;
  const std::vector<RecordedParameter>& parameters() const;
  const RecorderSettings& settings() const;
  /// Columns of a row.
  int64_t width() const;
  /// Path of the model template (TorchScript) inside the recording.
  std::string template_file() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Options of finalize_recording.
struct FinalizeOptions {
  std::string recording;   ///< recording directory
  std::string train_file;  ///< the training dataset whose row numbers the ids are
  std::string query_file;  ///< the query dataset (written into the config for `attrace score`)
  std::string store;       ///< feature store to write (resumable, like `attrace featurize`)
  std::string loss = "cross_entropy";  ///< gradients.loss of the written config
  bool replace = false;    ///< replace a store made with other settings
};

/// What finalize_recording wrote.
struct FinalizeSummary {
  std::string config_file;  ///< RECORDING/attrace.toml: `attrace score -c` it with `--store`
  std::string run_file;     ///< RECORDING/run.toml: one checkpoint per recorded step
  int64_t steps = 0, rows = 0;
};

/// Saves a TorchScript checkpoint per recorded step (the template with that step's parameters),
/// writes run.toml and attrace.toml into the recording, and writes the feature store (checkpoint
/// c = recorded step c, weight 1, sqrt(lr) folded in; zero rows for examples not in that batch).
/// Each checkpoint's plan is checked against the featurizer's for the saved checkpoint (layer
/// names, sizes, streams): InputError naming the step and field when they differ.
FinalizeSummary finalize_recording(const FinalizeOptions& options);

/// Records a LibTorch training loop that uses a TorchScript Sequential (e.g. the model of
/// `attrace demo`): call forward() instead of the model's forward, then after the backward pass
/// and before the optimizer step call step(). The loss and the optimizer are untouched.
class Recorder {
 public:
  /// Attaches to `model` (a Sequential, possibly nested, whose children with parameters are
  /// Linear layers; InputError naming the child otherwise) and opens the recording in `dir`.
  Recorder(torch::jit::Module& model, const std::string& dir, const RecorderSettings& settings = {});
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  /// The model's forward pass, child by child; when the coming step is recorded, each Linear
  /// layer's input is kept and a hook keeps the gradient of its output during backward.
  at::Tensor forward(const at::Tensor& x);
  /// Ends training step `current_step()`: when it is recorded, writes its features for the batch
  /// `ids` (dataset rows, in the order of the forward's rows) and the parameters. `loss_scale`
  /// turns the captured gradients into each example's own loss gradient: 0 (default) means the
  /// batch size (a mean-reduced loss), 1 a summed loss. Returns whether the step was recorded.
  bool step(const std::vector<int64_t>& ids, double lr, double loss_scale = 0);
  /// The training step the next step() call ends (0 for a new recording; after a resumed
  /// recording's last step otherwise).
  int64_t current_step() const;
  /// Sets the step number of the next step() (a training loop resumed from its own checkpoint).
  void set_step(int64_t step);
  /// Makes every recorded step durable.
  void flush();
  /// The recording writer (counts, timings).
  const RecordingWriter& writer() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attrace::engine
