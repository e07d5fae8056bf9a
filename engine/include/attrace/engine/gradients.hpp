#pragma once
// Per-example loss gradients of a TorchScript checkpoint. Three paths give the same numbers:
//  - chain: the model is an nn.Sequential-like chain whose parameterised children are Linear or
//    Conv2d (groups = 1) layers, with pointwise, pooling, flatten, dropout and frozen batch-norm
//    children between them; one batched forward, one backward pass through the chain, and
//    per-example weight gradients as sums over positions of outer products of each layer's
//    input (a conv layer: the unfolded input patch) and output gradient, positions ascending (no
//    per-example backward pass). The layers' products use the backend's FMA order (float32) or
//    canonical order (float64), so a row's gradient does not depend on which batch it was in;
//  - graph: any module tree whose selected parameters belong to Linear, Embedding or LayerNorm
//    layers: the forward graph rewritten to expose each layer's inputs and output gradients
//    (engine/src/graph_capture.hpp), one batched forward and one backward;
//  - general: any TorchScript model, one forward and one backward per example.
// This header does not expose LibTorch (the implementation is one translation unit).
#include <attrace/connectors/dataset.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/kernels/backend.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torch::jit {
struct Module;
}

namespace attrace::engine {

/// True when the TorchScript module's qualified type name ends with `suffix` (".Linear", ...).
bool type_ends_with(const torch::jit::Module& m, const std::string& suffix);
/// The module's qualified type name, or "<anonymous>".
std::string type_name(const torch::jit::Module& m);
/// Reads a pair attribute of a scripted Conv2d (stride, padding, dilation: an int pair or one
/// int) into a, b. False when the module does not carry it (traced modules keep only tensors).
bool int_pair(const torch::jit::Module& m, const char* attr, int64_t& a, int64_t& b);


/// Settings that change per-example gradients (all recorded in the manifest).
struct GradientSettings {
  Loss loss = Loss::cross_entropy;
  Precision precision = Precision::fp32;
  std::vector<std::string> parameters = {"*"};  ///< glob patterns over parameter names
  std::vector<std::string> exclude;             ///< glob patterns of parameters left out
  int64_t batch_size = 64;
  GradPath path = GradPath::automatic;
  std::string model_output;  ///< "" (forward returns the logits tensor), a tuple index or a dict key
};

/// A Linear or Conv2d layer covered by Kronecker projection: its gradient is
/// sum_t delta_t (x) [x_t, 1] (a conv layer: x_t the unfolded input patch at output position t).
struct KroneckerLayer {
  std::string name;
  int64_t d_in = 0;   ///< input width (conv: C_in * kh * kw), plus one for the bias column when selected
  int64_t d_out = 0;
  bool bias = false;
  int64_t positions = 1;  ///< factor rows per example (conv: H_out * W_out) for the prepared inputs
};

/// One layer's Kronecker factors for rows [begin, end): per example `positions` rows of layer
/// inputs (with a trailing 1 for the bias) and of output gradients, float32. A conv layer has one
/// position per output pixel (t = y * W_out + x) and its input rows are the unfolded patches,
/// column (c * kh + i) * kw + j, as in the weight's [C_out, C_in, kh, kw] layout.
struct LayerFactors {
  std::string name;
  int64_t d_in = 0, d_out = 0, positions = 1;
  std::vector<float> x;      ///< (rows * positions) x d_in
  std::vector<float> delta;  ///< (rows * positions) x d_out
};

/// Row o of one example's weight gradient sum_t delta_t[o] x_t[0 .. n_in) over its `positions`
/// rows (x rows `ldx` apart, delta rows `n_out` apart), t ascending, unfused: the chain path's
/// order, shared with the featurizer's dense columns of factored rows so both give the same bits.
template <class T>
inline void outer_row_sum(T* __restrict out, const T* delta, int64_t o, int64_t n_out, const T* x, int64_t ldx,
                          int64_t n_in, int64_t positions) {
  const T d0 = delta[o];
  for (int64_t q = 0; q < n_in; ++q) out[q] = d0 * x[q];
  for (int64_t t = 1; t < positions; ++t) {
    const T dv = delta[t * n_out + o];
    const T* __restrict xr = x + t * ldx;
    for (int64_t q = 0; q < n_in; ++q) out[q] += dv * xr[q];
  }
}

/// One loaded checkpoint, able to produce per-example gradients of selected parameters.
class CheckpointModel {
 public:
  /// Loads a TorchScript file. InputError naming the file if it is missing, unreadable or not a
  /// TorchScript model, or if no parameter matches the patterns.
  /// Linear and Conv2d layers of the chain path run on `backend` (FMA or canonical order,
  /// batch-independent).
  CheckpointModel(const std::string& path, const GradientSettings& settings, kernels::Backend& backend);
  ~CheckpointModel();
  CheckpointModel(CheckpointModel&&) noexcept;
  CheckpointModel& operator=(CheckpointModel&&) noexcept;

  /// Checks that `ds` fits the model (input shape, output shape vs targets, loss kind) and, for
  /// path = auto|chain, decides whether the chain path applies. InputError naming the dataset
  /// file and the checkpoint otherwise. Must be called before gradients() for each dataset.
  void prepare(const connectors::Dataset& ds);

  /// Gradient dimension p (number of selected scalar parameters).
  int64_t dim() const;
  /// On the chain path (after prepare()): floats per example of the Linear and Conv2d steps'
  /// inputs and outputs (positions x (inputs + 1 + outputs), summed); 0 on other paths. Sizes
  /// batches, nothing else.
  int64_t chain_floats_per_example() const;
  /// Names of the selected parameters, in the order their gradients are concatenated.
  const std::vector<std::string>& parameter_names() const;
  /// The path in use after prepare() (chain or general).
  GradPath path_in_use() const;
  /// Why the chain path was not used (empty when it is).
  const std::string& chain_refusal() const;

  /// Per-example gradients of rows [begin, end) of `ds`, row-major (end-begin) x dim().
  /// NumericError naming the example if any gradient entry is NaN or Inf.
  void gradients(const connectors::Dataset& ds, int64_t begin, int64_t end, float* out);
  /// Same in float64 (precision = fp64).
  void gradients(const connectors::Dataset& ds, int64_t begin, int64_t end, double* out);

  /// Layers for Kronecker projection (after prepare()). InputError unless the chain path is in
  /// use and the selected parameters are whole Linear or Conv2d layers (weight, with or without
  /// bias).
  std::vector<KroneckerLayer> kronecker_layers() const;
  /// Kronecker factors of rows [begin, end) for those layers, in chain order (no per-example
  /// gradient is formed). NumericError naming the example on NaN/Inf.
  void layer_factors(const connectors::Dataset& ds, int64_t begin, int64_t end, std::vector<LayerFactors>& out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attrace::engine
