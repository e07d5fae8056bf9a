#pragma once
// Live recording of projected per-example gradients while a model trains (docs/recorder.md).
//
// At each recorded step t the recorder keeps, for every example i of that step's batch, the
// Kronecker-projected gradient of every Linear and Conv2d layer, sqrt(lr_t) (P_out (x) P_in) g_t(i), made
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
// Recording runs beside training: step() copies the captured tensors into a bounded queue and a
// background thread projects and writes them (RecordingWriter); no file depends on its timing.
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
namespace torch::nn {
class Sequential;
}
namespace at {
class Tensor;
}

namespace attrace::engine {

/// A convolution's geometry (PyTorch's Conv2d with groups = 1 and zero padding).
struct ConvGeometry {
  int64_t c_in = 0, kh = 0, kw = 0;  ///< input channels, kernel height and width
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;  ///< stride, padding, dilation (rows, columns)
  /// Output size along one axis for an input of `in` (PyTorch's formula).
  static int64_t out_size(int64_t in, int64_t pad, int64_t dil, int64_t ker, int64_t stride);
};

/// One recorded layer (Linear or Conv2d), in chain order.
struct RecordedLayer {
  std::string name;   ///< module path, as TorchScript names the chain's child ("0", "fc1", "body.2")
  int64_t d_in = 0;   ///< input width (Conv2d: c_in kh kw), plus one for the bias column when the layer has a bias
  int64_t d_out = 0;  ///< output width (Conv2d: output channels)
  bool bias = false;
  bool conv = false;        ///< a Conv2d layer: its factors are unfolded patches, one row per output position
  ConvGeometry geometry{};  ///< Conv2d only
};

/// One parameter tensor saved at each recorded step (to rebuild that step's checkpoint).
struct RecordedParameter {
  std::string name;            ///< named_parameters() name
  std::vector<int64_t> shape;  ///< tensor shape
  /// Number of elements.
  int64_t numel() const;
};

/// Where a recorded step's Kronecker projection runs (RecorderSettings::defer).
enum class Deferral { never, always, automatic };

/// What to record and how (recorded in recording.json and compared on resume).
struct RecorderSettings {
  /// projection.kind: kronecker (the default) or none: exact per-example gradients, recorded as
  /// their layer factors and laid out as `attrace featurize` lays out exact float32 features
  /// (features.factored decides which layers keep their factors; weight lr, no sqrt(lr)
  /// folded in). Exact recording takes Linear layers with one position per example only.
  Projection projection = Projection::kronecker;
  Factoring factored = Factoring::automatic;  ///< features.factored (exact features only)
  int64_t k = 4096;  ///< projection budget per layer (projection.k)
  uint64_t seed = 0;  ///< projection.seed
  kernels::ProjectionKind distribution = kernels::ProjectionKind::rademacher;  ///< projection.distribution
  connectors::FeatureDtype dtype = connectors::FeatureDtype::f32;            ///< features.dtype
  int64_t every = 1;            ///< record steps 0, every, 2 every, ... (when `steps` is empty)
  std::vector<int64_t> steps;   ///< when non-empty: exactly these steps, ascending
  /// Recorded steps per checkpoint (Kronecker only). 1 (default): every recorded step is a
  /// checkpoint of its own, with its parameters: exact TracIn over the recorded steps. W > 1:
  /// recorded steps c W .. c W + W - 1 share checkpoint c, whose parameters are saved at its
  /// first step only and whose projection matrices they all use; finalize sums their rows, so
  /// score(i, q) = sum over recorded steps t that saw i of lr_t <P_c g_t(i), P_c g_c(q)>, the
  /// query's gradient taken at the window's first step (docs/recorder.md, "Windows"). W times
  /// fewer parameter copies and store blocks.
  int64_t window = 1;
  /// Durability interval: a segment (the recorded steps since the last one) is made durable
  /// after this many recorded steps, ...
  int64_t flush_steps = 64;
  int64_t flush_bytes = int64_t{256} << 20;  ///< ... or this many bytes of them, and on flush()
  /// Recorded steps waiting for the background writer before step() blocks (memory bound:
  /// each holds the step's captured inputs, output gradients and parameters); the writer is
  /// woken when half of them wait. 0 (automatic): as many as 64 MiB of the first recorded step's
  /// size hold, 4 to 64. Speed only.
  int64_t queue_steps = 0;
  /// Threads of the background writer's projection (speed only; 1 by default: the writer already
  /// runs beside the training thread).
  int threads = 1;
  /// Deferred projection (Kronecker only): a deferred step is stored as the captured tensors
  /// as training holds them (layer inputs, output gradients, image sizes, loss scale) and
  /// projected when the recording is read (finalize_recording, on every core), giving the same
  /// rows bit for bit: no projection beside training, more bytes per step. automatic defers a
  /// step when its captured tensors take at most twice the floats of its projected blocks (a
  /// rule on shapes only, so files still depend only on the calls). Speed and size only: not
  /// compared on resume (docs/recorder.md, "Deferred projection").
  Deferral defer = Deferral::automatic;
};

/// The projection of each layer at recorded step `checkpoint` (the run's checkpoint index): the
/// featurizer's rule (a layer with d_in d_out <= k exact; else k_out = min(d_out, ceil(sqrt k)),
/// k_in = min(d_in, k / k_out)) and streams 2 (4096 checkpoint + layer), + 1 for P_out: a fresh
/// pair of matrices per recorded step, as `attrace featurize` uses per checkpoint.
std::vector<KroneckerUse> plan_recorded_projection(const std::vector<RecordedLayer>& layers, int64_t k, size_t checkpoint);

/// Feature columns of one recorded row (sum over layers of k_in k_out).
int64_t recorded_width(const std::vector<KroneckerUse>& plan);

/// The layout of exact recorded rows (projection none), as the featurizer plans it for layers
/// with one position per example: a layer is factored (its x and delta kept) when
/// features.factored says so, dense columns first, then the factored layers.
FeatureLayout recorded_exact_layout(const std::vector<RecordedLayer>& layers, Factoring factored);

/// One layer's captured tensors for a batch of B examples (float32, row-major), either as the
/// featurizer's factors or as training holds them:
/// - Linear: x is (B T) x n_in layer inputs, followed by the bias column's 1 when
///   `x_bias_column` (else the recorder appends it for a layer with a bias); delta is (B T) x d_out
///   output gradients; T = `positions`.
/// - Conv2d with height > 0: x is the layer input B x c_in x height x width and delta the output
///   gradient B x d_out x H_out x W_out (NCHW, as torch holds them); the recorder unfolds the
///   patches as the CLI's chain path does (row b L + t for output position t = oy W_out + ox,
///   column (c kh + i) kw + j, then the 1). With height = 0: the factors are given as patches
///   ((B L) x d_in with the 1) and (B L) x d_out gradients, L = `positions`.
/// delta is multiplied by `delta_scale` in float32 first (1: unchanged).
struct LayerBatch {
  const float* x = nullptr;
  const float* delta = nullptr;
  int64_t positions = 1;
  bool x_bias_column = true;      ///< Linear: x rows already end with the bias column's 1
  float delta_scale = 1.0f;       ///< each example's own loss gradient = delta times this
  int64_t height = 0, width = 0;  ///< Conv2d input image size (0: x already holds patches)
};

/// The features of a batch at recorded step `checkpoint`, as the featurizer makes them (bit for
/// bit on the same factors). Exact (projection none): the rows of recorded_exact_layout, lr not
/// applied (it is the checkpoint's weight). Kronecker: B x recorded_width(plan), per layer P_in^T x_t and P_out^T
/// delta_t in the canonical order of kernels' project_dense, the sum over positions of their
/// outer products, every entry times float(sqrt(lr)), then rounded to `dtype`. The matrices are
/// generated once for the call and the products run as register-blocked loops (the recorder's
/// background writer keeps them from one step to the next).
void recorded_rows(const std::vector<RecordedLayer>& layers, const RecorderSettings& settings, size_t checkpoint, double lr,
                   int64_t batch, const std::vector<LayerBatch>& captured, float* out);

/// Wall seconds spent by a writer (benchmark breakdown; never in any output file).
struct RecorderTimings {
  double capture = 0;  ///< caller's thread: checking and copying a step's tensors into the queue
  double wait = 0;     ///< caller's thread: blocked on a full queue or in flush()
  double project = 0;  ///< background writer: factors (bias column, scaling, unfolding), projection, rounding
  double write = 0;    ///< background writer: writing steps into the open segment (the page cache)
  double sync = 0;     ///< background sync thread: each durable point's fsync, rename and directory fsync
  int64_t steps = 0;   ///< recorded steps these times cover
  int64_t deferred = 0;  ///< of which stored as captured tensors (deferred projection)
};

/// Writes a recording directory (docs/recorder.md, "Recording layout"): recording.json, the model
/// template, then segment files, each holding consecutive recorded steps. record() checks a step
/// and copies its tensors into a bounded queue; a background thread projects them (its own copy
/// of each step's projection matrices, generated once per recorded step, ahead of use) and appends
/// them to the open segment, which becomes durable (fsync, rename, directory fsync) every
/// `flush_steps` recorded steps, on flush() and on close. Files depend only on the sequence of
/// record() and flush() calls, never on thread timing. After a crash (SIGKILL included) the
/// recording is consistent up to the last durable segment; reopening the directory resumes it.
class RecordingWriter {
 public:
  /// Creates `dir` (copying the TorchScript `template_file` into it) or resumes the recording
  /// there. InputError naming the field when an existing recording has other layers, parameters
  /// or settings, or a damaged segment.
  RecordingWriter(const std::string& dir, const RecorderSettings& settings, std::vector<RecordedLayer> layers,
                  std::vector<RecordedParameter> parameters, const std::string& template_file);
  /// Drains the queue and makes every recorded step durable (an error is logged, not thrown).
  ~RecordingWriter();
  RecordingWriter(const RecordingWriter&) = delete;
  RecordingWriter& operator=(const RecordingWriter&) = delete;

  /// True when training step `step` is scheduled and after the last recorded step.
  bool wants(int64_t step) const;
  /// Records one step: features of the batch's examples (ids: dataset row numbers, distinct) from
  /// the layers' captured tensors, and the parameters (one pointer per RecordedParameter). The
  /// tensors are copied before it returns. InputError when the step does not increase, the lr is
  /// not finite and >= 0, an id repeats in the batch or the captures do not fit the layers; an
  /// error of the background writer (a non-finite feature, a failed write) is thrown here or by
  /// the next call.
  void record(int64_t step, double lr, const int64_t* ids, int64_t batch, const std::vector<LayerBatch>& layers,
              const std::vector<const float*>& parameters);
  /// Waits for the queue and makes every recorded step durable (one segment).
  void flush();
  /// flush(), then stops the background thread and releases the directory; later calls throw.
  void close();
  /// Steps recorded (durable and pending).
  int64_t recorded() const;
  /// Steps on disk (durable).
  int64_t durable() const;
  /// Last recorded training step (-1 when none).
  int64_t last_step() const;
  /// Columns of a recorded row.
  int64_t width() const;
  /// The recording directory.
  const std::string& dir() const;
  /// Time spent so far.
  RecorderTimings timings() const;

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
  /// Recorded step c (0-based, in recording order). rows = false leaves RecordedStep::rows
  /// empty (no projection of a deferred step).
  RecordedStep step(size_t c, bool rows = true) const;
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
  std::string train_file;  ///< the training dataset of the store
  std::string query_file;  ///< the query dataset (written into the config for `attrace score`)
  std::string store;       ///< feature store to write (resumable, like `attrace featurize`)
  std::string loss = "cross_entropy";  ///< gradients.loss of the written config
  bool replace = false;    ///< replace a store made with other settings
  /// The dataset whose row numbers the recorded ids are; empty: train_file. When it is another
  /// file, examples are matched by example id: rows of train_file's examples take the recorded
  /// row of the same id, examples it lacks are left out (a store for a subset of the data).
  std::string recorded_train{};
  /// A config to use instead of writing RECORDING/attrace.toml (its run file must be
  /// RECORDING/run.toml and its projection and dtype the recording's; InputError naming the
  /// setting otherwise): lets a caller add attribution or reward settings.
  std::string config_file{};
};

/// What finalize_recording wrote.
struct FinalizeSummary {
  std::string config_file;  ///< RECORDING/attrace.toml (or FinalizeOptions::config_file): `attrace score -c` it with `--store`
  std::string run_file;     ///< RECORDING/run.toml: one checkpoint per recorded step (per window of steps)
  int64_t steps = 0, rows = 0;
  int64_t checkpoints = 0;  ///< checkpoints of the run: steps / window, rounded up
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
  /// Linear or Conv2d layers (groups 1, zero padding); InputError naming the child otherwise)
  /// and opens the recording in `dir`.
  Recorder(torch::jit::Module& model, const std::string& dir, const RecorderSettings& settings = {});
  /// Attaches to a C++ frontend Sequential (torch::nn): the recorder runs its TorchScript twin
  /// (sequential_to_torchscript: the same children and names, sharing the parameter tensors, so
  /// the user's optimizer and loss are untouched), which also becomes the recording's template.
  /// The twin follows the model's train()/eval() mode at each forward. InputError naming a child
  /// with no TorchScript form or with parameters that are not a Linear or Conv2d layer's.
  Recorder(torch::nn::Sequential& model, const std::string& dir, const RecorderSettings& settings = {});
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  /// The model's forward pass, child by child; when the coming step is recorded, each Linear or
  /// Conv2d layer's input is kept and a hook keeps the gradient of its output during backward.
  at::Tensor forward(const at::Tensor& x);
  /// Ends training step `current_step()`: when it is recorded, writes its features for the batch
  /// `ids` (dataset rows, in the order of the forward's rows) and the parameters. `loss_scale`
  /// turns the captured gradients into each example's own loss gradient: 0 (default) means the
  /// batch size (a mean-reduced loss), 1 a summed loss. Returns whether the step was recorded.
  /// The tensors are copied into the writer's queue; projection and writing run in the
  /// background (RecordingWriter).
  bool step(const std::vector<int64_t>& ids, double lr, double loss_scale = 0);
  /// The training step the next step() call ends (0 for a new recording; after a resumed
  /// recording's last step otherwise).
  int64_t current_step() const;
  /// Sets the step number of the next step() (a training loop resumed from its own checkpoint).
  void set_step(int64_t step);
  /// Makes every recorded step durable.
  void flush();
  /// Makes every recorded step durable and releases the recording (the destructor does it too,
  /// logging an error instead of throwing it).
  void close();
  /// The recording writer (counts, timings).
  const RecordingWriter& writer() const;

 private:
  // Shared by the constructors: the chain, the parameters, the template and the writer.
  void attach(torch::jit::Module& model, const std::string& dir, const RecorderSettings& settings);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attrace::engine
