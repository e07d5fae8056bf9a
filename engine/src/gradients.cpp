// The only engine translation unit that includes LibTorch.
#include <attrace/engine/gradients.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>

#include <torch/script.h>
#include <torch/torch.h>

#include <ATen/Parallel.h>
#include <fnmatch.h>

#include <algorithm>
#include <cmath>

#include <fstream>
#include <functional>
#include <sstream>

namespace attrace::engine {

/// Rows of the dataset on which the chain path is checked against the model's forward().
constexpr int64_t kChainCheckRows = 64;
namespace {

using connectors::Dataset;
using connectors::TargetKind;

// The useful line of a LibTorch error: interpreter errors carry a TorchScript traceback and end
// with "RuntimeError: <what happened>"; plain c10 errors start with it.
std::string torch_message(const std::exception& e) {
  const auto* c10e = dynamic_cast<const c10::Error*>(&e);
  const std::string s = c10e ? c10e->what_without_backtrace() : e.what();
  const auto pos = s.rfind("Error: ");
  if (pos != std::string::npos) {
    const auto start = s.rfind('\n', pos);
    std::string line = s.substr(start == std::string::npos ? 0 : start + 1);
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    return line;
  }
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

bool type_ends_with(const torch::jit::Module& m, const std::string& suffix) {
  const auto name = m.type()->name();
  if (!name) return false;
  const std::string q = name->qualifiedName();
  return q.size() >= suffix.size() && q.compare(q.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string type_name(const torch::jit::Module& m) {
  const auto name = m.type()->name();
  return name ? name->qualifiedName() : "<anonymous>";
}

// One step of a chain model: a Linear layer (handled by hand) or any other child (called).
struct ChainStep {
  torch::jit::Module module;
  std::string name;
  bool linear = false;
  torch::Tensor weight, bias;     // linear only
  int weight_slot = -1;           // index into the selected parameters, -1 if not selected
  int bias_slot = -1;
};

}  // namespace

struct CheckpointModel::Impl {
  std::string path;
  GradientSettings settings;
  torch::jit::Module module;
  std::vector<std::string> names;
  std::vector<torch::Tensor> params;  // selected, in named_parameters order
  std::vector<int64_t> offsets;       // column offset of each selected parameter
  int64_t dim = 0;
  GradPath path_in_use = GradPath::general;
  bool path_decided = false;
  std::string chain_refusal;
  std::vector<ChainStep> chain;
  torch::ScalarType dtype = torch::kFloat;
  kernels::Backend* backend = nullptr;

  std::string where() const { return "checkpoint '" + path + "'"; }

  torch::Tensor inputs(const Dataset& ds, int64_t begin, int64_t end) const {
    std::vector<int64_t> shape(ds.input_shape.begin(), ds.input_shape.end());
    shape[0] = end - begin;
    const float* p = ds.inputs.data() + begin * ds.example_width();
    return torch::from_blob(const_cast<float*>(p), shape, torch::kFloat).to(dtype);
  }

  torch::Tensor targets(const Dataset& ds, int64_t begin, int64_t end) const {
    if (ds.target_kind == TargetKind::class_index)
      return torch::from_blob(const_cast<int64_t*>(ds.class_targets.data() + begin), {end - begin}, torch::kLong).clone();
    std::vector<int64_t> shape(ds.target_shape.begin(), ds.target_shape.end());
    shape[0] = end - begin;
    return torch::from_blob(const_cast<float*>(ds.regression_targets.data() + begin * ds.target_width()), shape,
                            torch::kFloat)
        .to(dtype);
  }

  // Sum over the batch of per-example losses: its gradient w.r.t. row i's output is row i's own.
  torch::Tensor loss_sum(const torch::Tensor& out, const torch::Tensor& target) const {
    const int64_t b = out.size(0);
    if (settings.loss == Loss::cross_entropy)
      return torch::nn::functional::cross_entropy(
          out, target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    const auto d = out.reshape({b, -1}) - target.reshape({b, -1});
    return (d * d).sum();
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const auto r = module.forward({x});
    ATTRACE_CHECK(r.isTensor(), InputError, where() + ": forward() must return one tensor");
    return r.toTensor();
  }

  // Tries to lay the model out as a chain; returns "" on success or the reason it cannot be.
  std::string build_chain() {
    if (!type_ends_with(module, ".Sequential"))
      return "the model is a " + type_name(module) + ", not a Sequential";
    std::vector<ChainStep> steps;
    std::string why;
    std::function<void(const torch::jit::Module&, const std::string&)> flatten =
        [&](const torch::jit::Module& m, const std::string& prefix) {
          for (const auto& c : m.named_children()) {
            torch::jit::Module child = c.value;
            const std::string name = prefix + c.name;
            if (type_ends_with(child, ".Sequential")) {
              flatten(child, name + ".");
              continue;
            }
            ChainStep st;
            st.module = child;
            st.name = name;
            std::vector<std::pair<std::string, torch::Tensor>> ps;
            for (const auto& p : child.named_parameters(true)) ps.emplace_back(p.name, p.value);
            if (!ps.empty()) {
              const bool linear_shape =
                  type_ends_with(child, ".Linear") && ps.size() <= 2 && ps[0].first == "weight" &&
                  ps[0].second.dim() == 2 &&
                  (ps.size() == 1 || (ps[1].first == "bias" && ps[1].second.dim() == 1 &&
                                      ps[1].second.size(0) == ps[0].second.size(0)));
              if (!linear_shape) {
                bool any_selected = false;
                for (const auto& p : ps)
                  for (const auto& n : names) any_selected |= (n == name + "." + p.first);
                if (any_selected && why.empty())
                  why = "child '" + name + "' (" + type_name(child) + ") has selected parameters and is not a Linear layer";
                steps.push_back(st);
                continue;
              }
              st.linear = true;
              st.weight = ps[0].second;
              if (ps.size() == 2) st.bias = ps[1].second;
              for (size_t k = 0; k < names.size(); ++k) {
                if (names[k] == name + ".weight") st.weight_slot = static_cast<int>(k);
                if (names[k] == name + ".bias") st.bias_slot = static_cast<int>(k);
              }
            }
            steps.push_back(st);
          }
        };
    flatten(module, "");
    if (!why.empty()) return why;
    for (const auto& p : module.named_parameters(false))
      return "the Sequential holds a parameter of its own ('" + p.name + "')";
    chain = std::move(steps);
    return "";
  }

  // A linear layer computed row by row in the canonical order of the kernels backend (float64
  // accumulation), so that a row's output never depends on the other rows of its batch. BLAS
  // picks different code paths for different batch sizes; this does not.
  torch::Tensor det_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias) {
    const int64_t in = w.size(1), out = w.size(0);
    auto lead = x.sizes().vec();
    lead.pop_back();
    const auto a = x.detach().reshape({-1, in}).contiguous();
    const auto wt = w.detach().contiguous();
    const int64_t rows = a.size(0);
    auto z = bias.defined() ? bias.detach().to(torch::kDouble).expand({rows, out}).contiguous()
                            : torch::zeros({rows, out}, torch::kDouble);
    auto zv = kernels::view_mut(z.data_ptr<double>(), rows, out);
    if (dtype == torch::kDouble)
      backend->score_accumulate(kernels::view(a.data_ptr<double>(), rows, in), kernels::view(wt.data_ptr<double>(), out, in), 1.0, zv);
    else
      backend->score_accumulate(kernels::view(a.data_ptr<float>(), rows, in), kernels::view(wt.data_ptr<float>(), out, in), 1.0, zv);
    lead.push_back(out);
    return z.to(dtype).reshape(lead);
  }

  // Forward through the chain. With `tape`, records what the backward pass needs.
  struct Tape {
    std::vector<torch::Tensor> inputs;   // per step: its input (requires grad for non-linear steps)
    std::vector<torch::Tensor> outputs;  // per step: its output (non-linear steps only)
  };
  torch::Tensor chain_forward(torch::Tensor h, Tape* tape) {
    for (const auto& st : chain) {
      if (st.linear) {
        if (tape) {
          tape->inputs.push_back(h);
          tape->outputs.emplace_back();
        }
        h = det_linear(h, st.weight, st.bias);
      } else {
        torch::Tensor in = h;
        if (tape) in = h.detach().requires_grad_(true);
        torch::jit::Module m = st.module;
        const auto r = m.forward({in});
        ATTRACE_CHECK(r.isTensor(), InputError, where() + ": child '" + st.name + "' must return one tensor");
        h = r.toTensor();
        if (tape) {
          tape->inputs.push_back(in);
          tape->outputs.push_back(h);
          h = h.detach();
        }
      }
    }
    return h;
  }

  void check_fit(const Dataset& ds) {
    const std::string dsw = "dataset '" + ds.path + "'";
    if (settings.loss == Loss::cross_entropy)
      ATTRACE_CHECK(ds.target_kind == TargetKind::class_index, InputError,
                    dsw + ": loss cross_entropy needs integer class labels in /targets (use loss = \"mse\" for float targets)");
    else
      ATTRACE_CHECK(ds.target_kind == TargetKind::regression, InputError,
                    dsw + ": loss mse needs float regression targets in /targets (got integer class labels)");
    torch::NoGradGuard no_grad;
    torch::Tensor out;
    try {
      out = forward(inputs(ds, 0, 1));
    } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InputError(dsw + ": inputs of shape " + shape_str(at::IntArrayRef(ds.input_shape)) + " do not fit " +
                       where() + ": " + torch_message(e));
    }
    ATTRACE_CHECK(out.dim() >= 1 && out.size(0) == 1, InputError,
                  where() + ": output for one example has shape " + shape_str(out.sizes()) + ", expected a batch of 1");
    if (settings.loss == Loss::cross_entropy) {
      ATTRACE_CHECK(out.dim() == 2, InputError,
                    where() + ": cross_entropy needs logits of shape [batch, classes], got " + shape_str(out.sizes()));
      const int64_t classes = out.size(1);
      for (int64_t i = 0; i < ds.size(); ++i)
        ATTRACE_CHECK(ds.class_targets[static_cast<size_t>(i)] < classes, InputError,
                      dsw + ": /targets of example '" + ds.ids[static_cast<size_t>(i)] + "' is class " +
                          std::to_string(ds.class_targets[static_cast<size_t>(i)]) + " but " + where() +
                          " outputs " + std::to_string(classes) + " classes");
    } else {
      ATTRACE_CHECK(out.numel() == ds.target_width(), InputError,
                    dsw + ": each example has " + std::to_string(ds.target_width()) + " target values but " + where() +
                        " outputs " + std::to_string(out.numel()));
    }
  }

  void decide_path(const Dataset& ds) {
    path_decided = true;
    if (settings.path == GradPath::general) {
      path_in_use = GradPath::general;
      chain_refusal = "path = general was requested";
      return;
    }
    chain_refusal = build_chain();
    if (chain_refusal.empty()) {
      // The chain must reproduce the model's own forward on real rows, or it is not a chain.
      // A fixed number of rows (never the batch size: a speed setting must not choose the path,
      // and so the bits) and a normwise criterion: the chain's Linear layers sum in float64 in the
      // canonical order and LibTorch's in float32, so single outputs near zero may differ
      // relatively; what is compared is the error against the outputs' scale.
      const int64_t b = std::min<int64_t>(ds.size(), kChainCheckRows);
      torch::NoGradGuard ng;
      const auto x = inputs(ds, 0, b);
      const auto want = forward(x);
      torch::Tensor got;
      try {
        got = chain_forward(x, nullptr);
      } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
        chain_refusal = std::string("calling the children in order failed: ") + torch_message(e);
      }
      if (chain_refusal.empty()) {
        bool same = got.sizes().equals(want.sizes());
        if (same) {
          // Equal values (infinities included) and NaN in the same places count as agreement; a
          // NaN model is not this check's business (the gradients report it, naming the example).
          const auto g = got.to(torch::kDouble), w = want.to(torch::kDouble);
          const auto agree = (g == w) | (g.isnan() & w.isnan());
          const auto diff = torch::where(agree, torch::zeros_like(g), (g - w).abs());
          const auto finite = torch::isfinite(w);
          const double scale = torch::where(finite, w.abs(), torch::zeros_like(w)).max().item<double>();
          const double err = diff.max().item<double>();
          const double tol = (dtype == torch::kDouble ? 1e-10 : 1e-4) * std::max(scale, 1e-30);
          same = (g.isnan() == w.isnan()).all().item<bool>() && std::isfinite(err) && err <= tol;
        }
        if (!same) chain_refusal = "calling the children in order does not reproduce forward()";
      }
    }
    if (!chain_refusal.empty()) {
      chain.clear();
      ATTRACE_CHECK(settings.path != GradPath::chain, InputError,
                    where() + ": path = chain requested but the model is not a chain of Linear layers: " + chain_refusal);
      path_in_use = GradPath::general;
    } else {
      path_in_use = GradPath::chain;
    }
  }

  // One batched forward, then back-propagation of each row's output gradient through the chain:
  // linear steps by the canonical kernel (delta W), other steps by autograd's vector-Jacobian
  // product of that step alone. Per-example weight gradients are outer products of a layer's
  // input rows and output-gradient rows (summed over positions for sequence inputs).
  // Linear steps with a selected parameter, visited from the output back: the layer's inputs
  // (b x T x in) and output gradients (b x T x out) of rows [begin, end).
  using LinearVisitor = std::function<void(const ChainStep&, const torch::Tensor& a, const torch::Tensor& d)>;

  // One batched forward, then back-propagation of each row's output gradient through the chain:
  // linear steps by the canonical kernel (delta W), other steps by autograd's vector-Jacobian
  // product of that step alone.
  void chain_backward(const Dataset& ds, int64_t begin, int64_t end, const LinearVisitor& visit) {
    const int64_t b = end - begin;
    Tape tape;
    const auto logits = chain_forward(inputs(ds, begin, end), &tape).requires_grad_(true);
    const auto loss = loss_sum(logits, targets(ds, begin, end));
    torch::Tensor delta = torch::autograd::grad({loss}, {logits})[0];
    int first_needed = -1;  // earliest step whose output gradient is needed
    for (size_t k = 0; k < chain.size(); ++k)
      if (chain[k].weight_slot >= 0 || chain[k].bias_slot >= 0) {
        first_needed = static_cast<int>(k);
        break;
      }
    for (int k = static_cast<int>(chain.size()) - 1; k >= first_needed && k >= 0; --k) {
      const ChainStep& st = chain[static_cast<size_t>(k)];
      if (!st.linear) {
        delta = torch::autograd::grad({tape.outputs[static_cast<size_t>(k)]}, {tape.inputs[static_cast<size_t>(k)]},
                                      {delta}, false, false, true)[0];
        if (!delta.defined()) delta = torch::zeros_like(tape.inputs[static_cast<size_t>(k)]);
        continue;
      }
      const int64_t n_out = st.weight.size(0), n_in = st.weight.size(1);
      if (st.weight_slot >= 0 || st.bias_slot >= 0)
        visit(st, tape.inputs[static_cast<size_t>(k)].reshape({b, -1, n_in}), delta.reshape({b, -1, n_out}));
      if (k > first_needed) delta = det_linear(delta, st.weight.t(), torch::Tensor());
    }
  }

  // Per-example weight gradients are outer products of a layer's input rows and output-gradient
  // rows (summed over positions for sequence inputs).
  template <class T>
  void chain_gradients(const Dataset& ds, int64_t begin, int64_t end, torch::Tensor& out, T* dst) {
    const int64_t b = end - begin;
    chain_backward(ds, begin, end, [&](const ChainStep& st, const torch::Tensor& a, const torch::Tensor& d) {
      const int64_t n_out = st.weight.size(0), n_in = st.weight.size(1);
      if (st.weight_slot >= 0) {
        const int64_t off = offsets[static_cast<size_t>(st.weight_slot)];
        if (d.size(1) == 1) {
          // One position: each entry is one exact product. A plain loop: this LibTorch's
          // broadcast multiply runs at a tenth of memory speed on these shapes.
          const auto dc = d.reshape({b, n_out}).contiguous(), ac = a.reshape({b, n_in}).contiguous();
          const T* dp = dc.template data_ptr<T>();
          const T* ap = ac.template data_ptr<T>();
          const int64_t p = dim;
          at::parallel_for(0, b, 1, [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) {
              T* row = dst + i * p + off;
              for (int64_t o = 0; o < n_out; ++o) {
                const T dv = dp[i * n_out + o];
                for (int64_t q = 0; q < n_in; ++q) row[o * n_in + q] = dv * ap[i * n_in + q];
              }
            }
          });
        } else {
          // Several positions: one small GEMM per example, the same shape for every example.
          out.narrow(1, off, n_out * n_in).copy_(torch::bmm(d.transpose(1, 2), a).reshape({b, n_out * n_in}));
        }
      }
      if (st.bias_slot >= 0) out.narrow(1, offsets[static_cast<size_t>(st.bias_slot)], n_out).copy_(d.sum(1));
    });
  }

  // The Linear layers a Kronecker projection covers; InputError when the selection is not made
  // of whole Linear layers on the chain path.
  std::vector<KroneckerLayer> kronecker_layers() const {
    ATTRACE_CHECK(path_decided, RuntimeFailure, "kronecker_layers(): prepare() was not called");
    ATTRACE_CHECK(path_in_use == GradPath::chain, InputError,
                  where() + ": Kronecker projection needs the chain path (a Sequential of Linear layers): " + chain_refusal);
    std::vector<KroneckerLayer> layers;
    int64_t covered = 0;
    for (const auto& st : chain) {
      if (!st.linear || (st.weight_slot < 0 && st.bias_slot < 0)) continue;
      ATTRACE_CHECK(st.weight_slot >= 0, InputError,
                    where() + ": Kronecker projection needs '" + st.name + ".weight' selected with its bias");
      const bool bias = st.bias_slot >= 0;
      layers.push_back({st.name, st.weight.size(1) + (bias ? 1 : 0), st.weight.size(0), bias});
      covered += st.weight.numel() + (bias ? st.weight.size(0) : 0);
    }
    ATTRACE_CHECK(covered == dim, InputError, where() + ": Kronecker projection covers Linear layers only");
    return layers;
  }

  void factors(const Dataset& ds, int64_t begin, int64_t end, std::vector<LayerFactors>& out) {
    const int64_t b = end - begin;
    out.clear();
    try {
      chain_backward(ds, begin, end, [&](const ChainStep& st, const torch::Tensor& a, const torch::Tensor& d) {
        LayerFactors f;
        f.name = st.name;
        f.positions = a.size(1);
        const bool bias = st.bias_slot >= 0;
        const int64_t n_in = a.size(2);
        f.d_in = n_in + (bias ? 1 : 0);
        f.d_out = d.size(2);
        auto af = a.to(torch::kFloat).reshape({b * f.positions, n_in}).contiguous();
        auto df = d.to(torch::kFloat).reshape({b * f.positions, f.d_out}).contiguous();
        f.x.resize(static_cast<size_t>(b * f.positions * f.d_in));
        for (int64_t r = 0; r < b * f.positions; ++r) {
          std::copy(af.data_ptr<float>() + r * n_in, af.data_ptr<float>() + (r + 1) * n_in, f.x.begin() + r * f.d_in);
          if (bias) f.x[static_cast<size_t>(r * f.d_in + n_in)] = 1.0f;  // [W b] acts on [x 1]
        }
        f.delta.assign(df.data_ptr<float>(), df.data_ptr<float>() + df.numel());
        out.push_back(std::move(f));
      });
    } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InputError("dataset '" + ds.path + "' rows " + std::to_string(begin) + ".." + std::to_string(end - 1) + ": " +
                       where() + " failed: " + torch_message(e));
    }
    std::reverse(out.begin(), out.end());  // chain order
    for (const auto& f : out)
      for (const auto* v : {&f.x, &f.delta}) {
        const int64_t width = v == &f.x ? f.d_in : f.d_out;
        for (size_t q = 0; q < v->size(); ++q)
          if (!std::isfinite((*v)[q])) {
            const int64_t bad = begin + static_cast<int64_t>(q) / width / f.positions;
            throw NumericError("non-finite gradient factor (NaN or Inf) for example '" + ds.ids[static_cast<size_t>(bad)] +
                               "' (row " + std::to_string(bad) + " of '" + ds.path + "') in layer '" + f.name + "' at " + where());
          }
      }
  }

  void general_gradients(const Dataset& ds, int64_t begin, int64_t end, torch::Tensor& out) {
    for (int64_t i = begin; i < end; ++i) {
      const auto loss = loss_sum(forward(inputs(ds, i, i + 1)), targets(ds, i, i + 1));
      const auto grads = torch::autograd::grad({loss}, params, {}, false, false, true);
      auto row = out[i - begin];
      for (size_t k = 0; k < params.size(); ++k) {
        auto slot = row.narrow(0, offsets[k], params[k].numel());
        if (grads[k].defined())
          slot.copy_(grads[k].reshape({-1}));
        else
          slot.zero_();
      }
    }
  }

  template <class T>
  void gradients(const Dataset& ds, int64_t begin, int64_t end, T* dst) {
    constexpr auto want = std::is_same_v<T, double> ? torch::kDouble : torch::kFloat;
    ATTRACE_CHECK(want == dtype, RuntimeFailure, "gradients(): buffer type does not match the precision");
    ATTRACE_CHECK(path_decided, RuntimeFailure, "gradients(): prepare() was not called");
    ATTRACE_CHECK(begin >= 0 && begin <= end && end <= ds.size(), RuntimeFailure, "gradients(): bad row range");
    if (begin == end) return;
    auto out = torch::from_blob(dst, {end - begin, dim}, want);
    try {
      if (path_in_use == GradPath::chain)
        chain_gradients(ds, begin, end, out, dst);
      else
        general_gradients(ds, begin, end, out);
    } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InputError("dataset '" + ds.path + "' rows " + std::to_string(begin) + ".." + std::to_string(end - 1) +
                       ": " + where() + " failed: " + torch_message(e));
    }
    const int64_t total = (end - begin) * dim;
    int64_t first_bad = total;
    for (int64_t q = 0; q < total; ++q)
      if (!std::isfinite(dst[q])) {
        first_bad = q;
        break;
      }
    if (first_bad < total) {
      const int64_t bad = begin + first_bad / dim;
      throw NumericError("non-finite gradient (NaN or Inf) for example '" + ds.ids[static_cast<size_t>(bad)] +
                         "' (row " + std::to_string(bad) + " of '" + ds.path + "') at " + where());
    }
  }
};

CheckpointModel::CheckpointModel(const std::string& path, const GradientSettings& settings, kernels::Backend& backend)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.backend = &backend;
  m.path = path;
  m.settings = settings;
  m.dtype = settings.precision == Precision::fp64 ? torch::kDouble : torch::kFloat;
  {
    std::ifstream probe(path, std::ios::binary);
    ATTRACE_CHECK(probe.good(), InputError, m.where() + ": cannot open file (missing or unreadable)");
  }
  try {
    m.module = torch::jit::load(path, torch::kCPU);
  } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
    throw InputError(m.where() + ": not a TorchScript model (" + torch_message(e) + ")");
  }
  ATTRACE_CHECK(m.module.find_method("forward").has_value(), InputError, m.where() + ": the model has no forward()");
  m.module.eval();
  m.module.to(m.dtype);
  std::vector<std::string> all;
  for (const auto& p : m.module.named_parameters(true)) {
    all.push_back(p.name);
    bool selected = false;
    for (const auto& pat : settings.parameters) selected |= ::fnmatch(pat.c_str(), p.name.c_str(), 0) == 0;
    torch::Tensor t = p.value;
    t.requires_grad_(selected);
    if (selected) {
      m.names.push_back(p.name);
      m.params.push_back(t);
      m.offsets.push_back(m.dim);
      m.dim += t.numel();
    }
  }
  if (m.params.empty()) {
    std::string list;
    for (const auto& n : all) list += (list.empty() ? "" : ", ") + n;
    throw InputError(m.where() + ": no parameter matches gradients.parameters (model has: " +
                     (list.empty() ? "none" : list) + ")");
  }
}

CheckpointModel::~CheckpointModel() = default;
CheckpointModel::CheckpointModel(CheckpointModel&&) noexcept = default;
CheckpointModel& CheckpointModel::operator=(CheckpointModel&&) noexcept = default;

void CheckpointModel::prepare(const Dataset& ds) {
  impl_->check_fit(ds);
  if (!impl_->path_decided) impl_->decide_path(ds);
}
int64_t CheckpointModel::dim() const { return impl_->dim; }
const std::vector<std::string>& CheckpointModel::parameter_names() const { return impl_->names; }
std::vector<KroneckerLayer> CheckpointModel::kronecker_layers() const { return impl_->kronecker_layers(); }
void CheckpointModel::layer_factors(const Dataset& ds, int64_t begin, int64_t end, std::vector<LayerFactors>& out) {
  impl_->factors(ds, begin, end, out);
}
GradPath CheckpointModel::path_in_use() const { return impl_->path_in_use; }
const std::string& CheckpointModel::chain_refusal() const { return impl_->chain_refusal; }
void CheckpointModel::gradients(const Dataset& ds, int64_t begin, int64_t end, float* out) {
  impl_->gradients(ds, begin, end, out);
}
void CheckpointModel::gradients(const Dataset& ds, int64_t begin, int64_t end, double* out) {
  impl_->gradients(ds, begin, end, out);
}

}  // namespace attrace::engine
