// The graph gradient path's module rewriting (see graph_capture.hpp).
#include "graph_capture.hpp"

#include <torch/torch.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

namespace attrace::engine::detail {

namespace {

namespace tj = torch::jit;

// "a.b.c" when `v` is self.a.b.c (a chain of prim::GetAttr from the graph's first input).
std::optional<std::string> attr_path(tj::Value* v, const tj::Value* self) {
  std::vector<std::string> parts;
  while (v->node()->kind() == c10::prim::GetAttr) {
    parts.push_back(v->node()->s(c10::attr::name));
    v = v->node()->input(0);
  }
  if (v != self || parts.empty()) return std::nullopt;
  std::string s;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) s += (s.empty() ? "" : ".") + *it;
  return s;
}

bool is_none(tj::Value* v) { return v->type()->kind() == c10::TypeKind::NoneType; }

void collect(tj::Block* b, const std::vector<c10::Symbol>& kinds, std::vector<tj::Node*>& out) {
  for (auto* n : b->nodes()) {
    if (std::find(kinds.begin(), kinds.end(), n->kind()) != kinds.end()) out.push_back(n);
    for (auto* sub : n->blocks()) collect(sub, kinds, out);
  }
}

thread_local kernels::Backend* t_backend = nullptr;

// y (rows x m) = a (rows x k) bt (k x m) + bias. float32: the backend's Linear FMA order (per
// output one fmaf chain over k ascending, starting at the bias; kernels linear_fma), a pure
// function of the row on any CPU or GPU. float64: the canonical-order dot of a row of `a` with a
// column of bt, in float64 from 0, plus the bias.
torch::Tensor rows_product(const torch::Tensor& a, const torch::Tensor& bt, const torch::Tensor& bias) {
  TORCH_CHECK(t_backend != nullptr, "attrace::linear runs only inside attrace's graph path");
  const int64_t rows = a.size(0), k = a.size(1), m = bt.size(1);
  if (a.scalar_type() == torch::kFloat) {
    auto y = torch::empty({rows, m}, torch::kFloat);
    const auto b = bias.defined() ? bias.to(torch::kFloat).contiguous() : bias;
    t_backend->linear_fma(kernels::HostMatrix<float>{a.data_ptr<float>(), rows, k, k},
                          kernels::HostMatrix<float>{bt.data_ptr<float>(), k, m, m}, b.defined() ? b.data_ptr<float>() : nullptr,
                          kernels::HostMatrixMut<float>{y.data_ptr<float>(), rows, m, m});
    return y;
  }
  const auto w = bt.t().contiguous();  // m x k rows for the canonical dot
  std::vector<double> acc(static_cast<size_t>(rows * m), 0.0);
  if (bias.defined()) {
    const auto b = bias.to(torch::kDouble).contiguous();
    const double* bp = b.data_ptr<double>();
    for (int64_t r = 0; r < rows; ++r) std::copy(bp, bp + m, acc.begin() + r * m);
  }
  const auto out = kernels::view_mut(acc.data(), rows, m);
  t_backend->score_accumulate(kernels::HostMatrix<double>{a.data_ptr<double>(), rows, k, k},
                              kernels::HostMatrix<double>{w.data_ptr<double>(), m, k, k}, 1.0, out);
  return torch::from_blob(acc.data(), {rows, m}, torch::kDouble).clone();  // not an alias of `acc`
}

// y = x W^T + b with dx = dy W, both through rows_product; no gradient for W and b (the graph
// path takes per-example weight gradients from the captured factors, never from autograd).
class DeterministicLinear : public torch::autograd::Function<DeterministicLinear> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b) {
    TORCH_CHECK(x.dim() >= 1 && w.dim() == 2 && x.size(-1) == w.size(1), "attrace::linear: input ", x.sizes(),
                " does not fit weight ", w.sizes());
    TORCH_CHECK(x.scalar_type() == w.scalar_type() && (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble),
                "attrace::linear: float32 or float64 input and weight of one type");
    const auto wd = w.detach().contiguous();
    ctx->saved_data["w"] = wd;
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    const auto a = x.detach().reshape({-1, x.size(-1)}).contiguous();
    return rows_product(a, wd.t().contiguous(), b.defined() ? b.detach() : b).reshape(shape);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto w = ctx->saved_data["w"].toTensor();
    const auto& dy = grads[0];
    std::vector<int64_t> shape = dy.sizes().vec();
    shape.back() = w.size(1);
    const auto d = dy.reshape({-1, dy.size(-1)}).contiguous();
    const auto dx = rows_product(d, w, torch::Tensor()).reshape(shape);  // dy W: bt = W (m x k)
    return {dx, torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor attrace_linear(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b) {
  // Function::apply takes no undefined tensor: a layer without bias gets a zero bias, which is
  // the same computation (the FMA chain, or the float64 sum, starts at +0 either way).
  return DeterministicLinear::apply(x, w, b.has_value() && b->defined() ? *b : torch::zeros({w.size(0)}, w.options()));
}

}  // namespace

TORCH_LIBRARY(attrace, m) { m.def("linear(Tensor x, Tensor w, Tensor? b=None) -> Tensor", attrace_linear); }

void set_linear_backend(kernels::Backend* backend) { t_backend = backend; }

CaptureGraph::~CaptureGraph() = default;

std::string CaptureGraph::build(const torch::jit::Module& module) {
  sites_.clear();
  groups_.clear();
  std::map<std::string, torch::Tensor> tensors;
  std::set<std::string> params;
  for (const auto& p : module.named_parameters(true)) {
    params.insert(p.name);
    tensors.emplace(p.name, p.value);
  }
  auto g = module.get_method("forward").graph()->copy();
  tj::Inline(*g);
  const auto lin = c10::Symbol::fromQualString("aten::linear");
  const auto emb = c10::Symbol::fromQualString("aten::embedding");
  const auto ln = c10::Symbol::fromQualString("aten::layer_norm");
  const tj::Value* self = g->inputs().at(0);
  std::vector<tj::Node*> nodes;
  collect(g->block(), {lin, emb, ln}, nodes);

  std::map<std::string, int> group_of;  // weight name -> group
  std::vector<tj::Node*> taken;
  for (auto* n : nodes) {
    const bool is_emb = n->kind() == emb, is_norm = n->kind() == ln;
    if (is_norm && is_none(n->input(2))) continue;  // no affine weight: nothing to attribute
    const auto weight = attr_path(n->input(is_emb ? 0 : is_norm ? 2 : 1), self);
    if (!weight || !params.count(*weight)) continue;  // not a parameter: nothing to attribute here
    const std::string what =
        (is_emb ? "embedding of '" : is_norm ? "layer norm of '" : "linear layer of '") + *weight + "'";
    if (n->owningBlock() != g->block()) return what + " is inside control flow (if/loop); the graph path cannot route it out";
    CaptureSite s;
    s.embedding = is_emb;
    s.norm = is_norm;
    std::string bias;
    double eps = 0;
    if (is_norm) {
      const auto e = tj::toIValue(n->input(4));
      if (!e || !e->isDouble()) return what + ": eps must be a constant";
      eps = e->toDouble();
      if (!is_none(n->input(3))) {
        const auto b = attr_path(n->input(3), self);
        if (!b || !params.count(*b)) return what + " has a bias that is not a parameter of the module";
        bias = *b;
        s.has_bias = true;
      }
    } else if (is_emb) {
      const auto pad = tj::toIValue(n->input(2));
      const auto scale = tj::toIValue(n->input(3));
      if (!pad || !pad->isInt() || !scale || !scale->isBool())
        return what + ": padding_idx and scale_grad_by_freq must be constants";
      if (scale->toBool()) return what + " uses scale_grad_by_freq (a batch-dependent gradient)";
      s.padding_idx = pad->toInt();
    } else if (!is_none(n->input(2))) {
      const auto b = attr_path(n->input(2), self);
      if (!b || !params.count(*b)) return what + " has a bias that is not a parameter of the module";
      bias = *b;
      s.has_bias = true;
    }
    auto it = group_of.find(*weight);
    if (it == group_of.end()) {
      CaptureGroup gr;
      gr.weight = *weight;
      gr.name = weight->size() > 7 && weight->compare(weight->size() - 7, 7, ".weight") == 0
                    ? weight->substr(0, weight->size() - 7)
                    : *weight;
      gr.bias = bias;
      gr.embedding = is_emb;
      gr.norm = is_norm;
      gr.eps = eps;
      const auto& w = tensors.at(*weight);
      if (is_norm) {  // elementwise over the normalized shape: D x 1
        gr.d_out = w.numel();
        gr.n_in = 1;
      } else {
        if (w.dim() != 2) return what + ": the weight has " + std::to_string(w.dim()) + " dimensions, not 2";
        gr.d_out = w.size(0);
        gr.n_in = w.size(1);
      }
      it = group_of.emplace(*weight, static_cast<int>(groups_.size())).first;
      groups_.push_back(gr);
    } else if (groups_[static_cast<size_t>(it->second)].bias != bias) {
      return "the weight '" + *weight + "' is used with different biases (or with and without one)";
    } else if (groups_[static_cast<size_t>(it->second)].norm != is_norm ||
               (is_norm && groups_[static_cast<size_t>(it->second)].eps != eps)) {
      return "the weight '" + *weight + "' is used by a layer norm and by another kind of layer (or two epsilons)";
    }
    s.group = it->second;
    groups_[static_cast<size_t>(s.group)].sites.push_back(static_cast<int>(sites_.size()));
    sites_.push_back(s);
    taken.push_back(n);
  }
  if (sites_.empty()) return "no Linear or Embedding layer whose weight is a parameter";
  for (const auto& gr : groups_)
    for (const auto& other : groups_)
      if (&gr != &other && !gr.bias.empty() && (gr.bias == other.bias || gr.bias == other.weight))
        return "the parameter '" + gr.bias + "' is used by two layers";

  // Rewrite: per site, route its input out and add a zero probe that requires grad to its output.
  std::vector<tj::Value*> inputs, probes;
  const auto zeros_like = c10::Symbol::fromQualString("aten::zeros_like");
  const auto requires_grad = c10::Symbol::fromQualString("aten::requires_grad_");
  const auto add = c10::Symbol::fromQualString("aten::add");
  for (size_t k = 0; k < taken.size(); ++k) {
    tj::Node* n = taken[k];
    tj::WithInsertPoint guard(n->next());
    tj::Value* out = n->output();
    tj::Value* zero = g->insert(zeros_like, {out});
    tj::Value* probe = g->insert(requires_grad, {zero, true});
    tj::Value* sum = g->insert(add, {out, probe});
    out->replaceAllUsesAfterNodeWith(sum->node(), sum);
    inputs.push_back(n->input(sites_[k].embedding ? 1 : 0));
    probes.push_back(probe);
  }
  // Every aten::linear (captured or not) becomes attrace::linear with the same inputs.
  std::vector<tj::Node*> linears;
  for (auto* n : nodes)
    if (n->kind() == lin) linears.push_back(n);
  const auto det = c10::Symbol::fromQualString("attrace::linear");
  for (auto* n : linears) {
    tj::WithInsertPoint guard(n);
    tj::Value* y = g->insert(det, {n->input(0), n->input(1), n->input(2)});
    y->setType(n->output()->type());
    n->output()->replaceAllUsesWith(y);
    n->destroy();
  }
  std::vector<tj::Value*> items{g->outputs().at(0)};
  items.insert(items.end(), inputs.begin(), inputs.end());
  items.insert(items.end(), probes.begin(), probes.end());
  tj::Node* tuple = g->insertNode(g->createTuple(items));
  g->eraseOutput(0);
  g->registerOutput(tuple->output());
  g->lint();
  graph_ = g;
  code_ = std::make_unique<tj::Code>(graph_, "attrace_capture");
  return "";
}

CaptureGraph::Run CaptureGraph::run(const torch::jit::Module& module, const torch::Tensor& x) const {
  tj::Stack stack{module._ivalue(), x};
  tj::InterpreterState(*code_).run(stack);
  const auto tuple = stack.back().toTuple();
  const auto& e = tuple->elements();
  const size_t s = sites_.size();
  Run r;
  r.output = e.at(0);
  for (size_t k = 0; k < s; ++k) {
    r.inputs.push_back(e.at(1 + k).toTensor());
    r.probes.push_back(e.at(1 + s + k).toTensor());
  }
  return r;
}

}  // namespace attrace::engine::detail
