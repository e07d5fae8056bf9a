#pragma once
// Per-example loss gradients of a TorchScript checkpoint. Two paths give the same numbers:
//  - chain: the model is an nn.Sequential-like chain whose parameterised children are Linear
//    layers; one batched forward, one backward pass through the chain, and per-example weight
//    gradients as outer products of each layer's input and output gradient (no per-example
//    backward pass). Linear layers use the backend's canonical-order product, so a row's
//    gradient does not depend on which batch it was in;
//  - general: any TorchScript model, one forward and one backward per example.
// This header does not expose LibTorch (the implementation is one translation unit).
#include <attrace/connectors/dataset.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/kernels/backend.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace attrace::engine {

/// Settings that change per-example gradients (all recorded in the manifest).
struct GradientSettings {
  Loss loss = Loss::cross_entropy;
  Precision precision = Precision::fp32;
  std::vector<std::string> parameters = {"*"};  ///< glob patterns over parameter names
  int64_t batch_size = 64;
  GradPath path = GradPath::automatic;
};

/// One loaded checkpoint, able to produce per-example gradients of selected parameters.
class CheckpointModel {
 public:
  /// Loads a TorchScript file. InputError naming the file if it is missing, unreadable or not a
  /// TorchScript model, or if no parameter matches the patterns.
  /// Linear layers of the chain path run on `backend` (canonical order, batch-independent).
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attrace::engine
