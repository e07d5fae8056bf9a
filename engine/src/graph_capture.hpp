#pragma once
// The graph gradient path (internal to the engine; includes LibTorch): per-position layer inputs
// and output gradients of every Linear and Embedding anywhere in a TorchScript module tree, from
// one batched forward and one backward, without changing the user's model.
//
// How: the module's forward graph is copied and inlined (every submodule call becomes its ops,
// parameters become prim::GetAttr chains from `self`). Each aten::linear(x, W, b) and
// aten::embedding(W, ids, ...) and aten::layer_norm(x, shape, w, b, eps) whose weight is a
// parameter of the module becomes a capture site:
// its input (x or ids) is routed out as an extra graph output, and a zero "probe" tensor that
// requires grad is added to its output (out + probe == out, bit for bit), so the gradient of the
// loss with respect to the probe is the gradient with respect to the layer's output. The copy
// runs in the plain TorchScript interpreter (no graph optimizer) and returns a tuple
// (model output, site inputs..., probes...).
//
// Every aten::linear of the copy (captured or not) is replaced by attrace::linear: the same
// product through the backend's Linear FMA order (kernels linear_fma: float32, one fmaf chain per
// output; the canonical order for float64) in forward and backward, so each row's result depends on that row only — not on the batch size,
// thread count or BLAS library, as LibTorch's GEMM would.
#include <attrace/kernels/backend.hpp>

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torch::jit {
struct Graph;
struct Code;
}  // namespace torch::jit

namespace attrace::engine::detail {

/// One use of a layer weight in the graph.
struct CaptureSite {
  bool embedding = false;   ///< aten::embedding
  bool norm = false;        ///< aten::layer_norm (else aten::linear)
  bool has_bias = false;    ///< linear with a bias parameter
  int64_t padding_idx = -1; ///< embedding: ids equal to it get no gradient (PyTorch's rule)
  int group = -1;           ///< index into CaptureGraph::groups()
};

/// A weight parameter and every site that uses it (weight tying: several sites). Its gradient is
/// sum over sites and positions of delta_t (x) x_t with the weight seen as d_out x n_in:
/// Linear W [out, in]: x = layer input, delta = output gradient;
/// Embedding W [V, d]: x = output gradient (d), delta = one-hot of the id (V);
/// LayerNorm weight w [D] and bias b [D] (elementwise): per position, grad w = delta (.) xhat and
/// grad b = delta, each seen as a D x 1 "layer" with x = [1] (xhat: the normalized input).
struct CaptureGroup {
  std::string name;    ///< module path ("blocks.0.attn.q")
  std::string weight;  ///< parameter names as named_parameters() gives them
  std::string bias;    ///< "" when no site has a bias
  bool embedding = false;
  bool norm = false;  ///< LayerNorm: weight and bias are elementwise (d_out = normalized size, n_in = 1)
  double eps = 0;     ///< LayerNorm epsilon
  int64_t n_in = 0, d_out = 0;
  std::vector<int> sites;  ///< in graph order
};

/// Sets the backend that attrace::linear (the graph path's deterministic Linear) uses on this
/// thread while the rewritten forward and its backward run; nullptr clears it.
void set_linear_backend(kernels::Backend* backend);

/// The rewritten forward. Not copyable; built once per loaded checkpoint.
class CaptureGraph {
 public:
  /// Finds the capture sites of `module.forward` (weights must be parameters of `module`) and
  /// builds the rewritten graph. Returns "" or why the graph path cannot serve this model (e.g. a
  /// site inside control flow, a bias shared oddly).
  std::string build(const torch::jit::Module& module);
  ~CaptureGraph();

  const std::vector<CaptureSite>& sites() const { return sites_; }
  const std::vector<CaptureGroup>& groups() const { return groups_; }

  /// Output of one run: the model's own return value, per site its input and its probe.
  struct Run {
    c10::IValue output;
    std::vector<torch::Tensor> inputs, probes;
  };
  /// Runs the rewritten forward on `x` (grad mode must be on for the probes to be usable).
  Run run(const torch::jit::Module& module, const torch::Tensor& x) const;

 private:
  std::shared_ptr<torch::jit::Graph> graph_;
  std::unique_ptr<torch::jit::Code> code_;
  std::vector<CaptureSite> sites_;
  std::vector<CaptureGroup> groups_;
};

}  // namespace attrace::engine::detail
