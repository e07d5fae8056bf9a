// Per-example gradients: the chain, graph and general paths (LibTorch; the graph path's module
// rewriting is in graph_capture.cpp).
#include <attrace/engine/gradients.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>

#include <optional>

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "graph_capture.hpp"

#include <ATen/Parallel.h>
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

namespace attrace::engine {

/// Rows of the dataset on which the chain path is checked against the model's forward().
constexpr int64_t kChainCheckRows = 64;
namespace {

// Examples per task of the chain's parallel loops: at least ~32K elements of work each, so small
// batches of small layers run on one thread (waking a team costs more than they do).
int64_t grain_for(int64_t work_per_example) {
  constexpr int64_t kMinWork = int64_t{1} << 15;
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_example));
}

// True when no entry is NaN or Inf (all exponent bits set). Written on the bits, as an OR of
// per-entry flags, so that the compiler vectorizes it (std::isfinite in a loop it does not).
bool all_finite(const float* p, int64_t n) {
  uint32_t any = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, p + i, sizeof b);
    any |= (b & 0x7f800000u) == 0x7f800000u ? 1u : 0u;
  }
  return any == 0;
}
bool all_finite(const double* p, int64_t n) {
  uint64_t any = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint64_t b;
    std::memcpy(&b, p + i, sizeof b);
    any |= (b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull ? 1u : 0u;
  }
  return any == 0;
}

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


// What the chain does with a child: a Linear or Conv2d layer computed by hand (deterministic
// products, per-example gradients from its factors), or any other child called as a module.
enum class StepKind { call, linear, conv };

// One step of a chain model.
struct ChainStep {
  torch::jit::Module module;
  std::string name;
  StepKind kind = StepKind::call;
  torch::Tensor weight, bias;  // linear/conv: detached; the weight as out x in (conv: C_out x C_in*kh*kw)
  torch::Tensor weight_t;      // the weight transposed (in x out), contiguous: moves deltas to the input
  int weight_slot = -1;        // index into the selected parameters, -1 if not selected
  int bias_slot = -1;
  // conv only: geometry, read from the module's attributes
  int64_t c_in = 0, kh = 0, kw = 0, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int64_t positions = 1;  // linear/conv: rows per example in the last forward (the check's, at first)
  int64_t n_in() const { return weight.size(1); }  // inputs per position (conv: patch length)
  int64_t n_out() const { return weight.size(0); }
  bool selected() const { return weight_slot >= 0 || bias_slot >= 0; }
};

// Rows of one layer for per-example gradients and Kronecker factors: per example `positions`
// rows of inputs x (row stride ldx; conv patches carry a trailing 1 at column n_in) and of output
// gradients d (n_out wide).
struct LayerRows {
  const ChainStep* step = nullptr;
  int64_t examples = 0, positions = 1, n_in = 0, ldx = 0, n_out = 0;
  bool ones_column = false;  // x[:, n_in] == 1
  torch::Tensor x, d;        // contiguous, in the model's dtype
};

}  // namespace

bool type_ends_with(const torch::jit::Module& m, const std::string& suffix) {
  const auto name = m.type()->name();
  if (!name) return false;
  const std::string q = name->qualifiedName();
  return q.size() >= suffix.size() && q.compare(q.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool int_pair(const torch::jit::Module& m, const char* attr, int64_t& a, int64_t& b) {
  if (!m.hasattr(attr)) return false;
  const auto v = m.attr(attr);
  if (v.isInt()) {
    a = b = v.toInt();
    return true;
  }
  std::vector<c10::IValue> items;
  if (v.isTuple())
    items = v.toTupleRef().elements().vec();
  else if (v.isList())
    items = v.toListRef().vec();
  if (items.size() != 2 || !items[0].isInt() || !items[1].isInt()) return false;
  a = items[0].toInt();
  b = items[1].toInt();
  return true;
}

std::string type_name(const torch::jit::Module& m) {
  const auto name = m.type()->name();
  return name ? name->qualifiedName() : "<anonymous>";
}


// attrace::linear (graph path) uses this backend on this thread while the scope lives.
struct LinearBackendScope {
  explicit LinearBackendScope(kernels::Backend* b) { detail::set_linear_backend(b); }
  ~LinearBackendScope() { detail::set_linear_backend(nullptr); }
  LinearBackendScope(const LinearBackendScope&) = delete;
  LinearBackendScope& operator=(const LinearBackendScope&) = delete;
};

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
  std::string first_prepared;  // the dataset the path was decided on
  std::string chain_refusal;
  std::vector<ChainStep> chain;
  torch::ScalarType dtype = torch::kFloat;
  kernels::Backend* backend = nullptr;
  std::vector<double> acc;  // float64 accumulators of the chain's products, reused across batches
  // graph path: the rewritten forward and one step (kind linear) per captured weight, in
  // named_parameters() order of the weights
  std::unique_ptr<detail::CaptureGraph> capture;
  std::vector<ChainStep> graph_steps;
  std::vector<size_t> graph_group;  // graph_steps[k] serves capture->groups()[graph_group[k]]
  std::vector<int> graph_role;      // 0: a Linear/Embedding weight (+ bias); 1: LayerNorm weight; 2: LayerNorm bias

  // Layers with a selected parameter, visited from the output back (chain) or in parameter order
  // (graph), rows [begin, end).
  using LayerVisitor = std::function<void(const LayerRows&)>;

  std::string where() const { return "checkpoint '" + path + "'"; }

  torch::Tensor inputs(const Dataset& ds, int64_t begin, int64_t end) const {
    std::vector<int64_t> shape(ds.input_shape.begin(), ds.input_shape.end());
    shape[0] = end - begin;
    if (ds.input_kind == connectors::InputKind::integers) {  // token ids stay integers (int64, as embeddings want)
      const int32_t* ip = ds.int_inputs.data() + begin * ds.example_width();
      return torch::from_blob(const_cast<int32_t*>(ip), shape, torch::kInt).to(torch::kLong);
    }
    const float* p = ds.inputs.data() + begin * ds.example_width();
    return torch::from_blob(const_cast<float*>(p), shape, torch::kFloat).to(dtype);
  }

  torch::Tensor targets(const Dataset& ds, int64_t begin, int64_t end) const {
    if (ds.target_kind == TargetKind::tokens) {
      const int64_t t = ds.example_width();
      return torch::from_blob(const_cast<int32_t*>(ds.token_targets.data() + begin * t), {end - begin, t}, torch::kInt)
          .to(torch::kLong);
    }
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
    if (settings.loss == Loss::next_token) {
      // Per example the mean over its positions with a target (kIgnoreTarget: none), then the sum
      // over the batch. Examples without any target are refused when the dataset is read.
      const int64_t v = out.size(-1);
      const auto ce = torch::nn::functional::cross_entropy(
                          out.reshape({-1, v}), target.reshape({-1}),
                          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(
                              connectors::kIgnoreTarget))
                          .reshape({b, -1});
      const auto count = (target.reshape({b, -1}) != connectors::kIgnoreTarget).sum(1).clamp_min(1).to(ce.scalar_type());
      return (ce.sum(1) / count).sum();
    }
    if (settings.loss == Loss::cross_entropy)
      return torch::nn::functional::cross_entropy(
          out, target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    const auto d = out.reshape({b, -1}) - target.reshape({b, -1});
    return (d * d).sum();
  }

  torch::Tensor forward(const torch::Tensor& x) { return select_output(module.forward({x})); }

  // The logits among the model's outputs: the tensor itself, a tuple element or a dict entry
  // (gradients.model_output).
  torch::Tensor select_output(const c10::IValue& r) const {
    const std::string& key = settings.model_output;
    if (key.empty()) {
      ATTRACE_CHECK(r.isTensor(), InputError,
                    where() + ": forward() returns a " + r.tagKind() +
                        ", not one tensor; set gradients.model_output to the tuple index or dict key of the logits");
      return r.toTensor();
    }
    c10::IValue v;
    if (r.isTuple() || r.isList()) {
      const auto elems = r.isTuple() ? r.toTupleRef().elements().vec() : r.toListRef().vec();
      const bool digits = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
      ATTRACE_CHECK(digits && key.size() < 10 && std::stoll(key) < static_cast<long long>(elems.size()), InputError,
                    where() + ": forward() returns " + std::to_string(elems.size()) + " values; gradients.model_output = '" +
                        key + "' is not an index below that");
      v = elems[static_cast<size_t>(std::stoll(key))];
    } else if (r.isGenericDict()) {
      const auto d = r.toGenericDict();
      std::string keys;
      for (const auto& e : d) {
        if (e.key().isString() && e.key().toStringRef() == key) v = e.value();
        keys += (keys.empty() ? "" : ", ") + (e.key().isString() ? e.key().toStringRef() : std::string("<non-string>"));
      }
      ATTRACE_CHECK(!v.isNone(), InputError,
                    where() + ": forward() returns a dict without the key gradients.model_output = '" + key + "' (keys: " + keys + ")");
    } else {
      throw InputError(where() + ": gradients.model_output = '" + key + "' but forward() returns a " + r.tagKind() +
                       " (neither a tuple nor a dict)");
    }
    ATTRACE_CHECK(v.isTensor(), InputError,
                  where() + ": output '" + key + "' of forward() is a " + v.tagKind() + ", not a tensor");
    return v.toTensor();
  }

  // Reads a Conv2d child's geometry into `st`; returns "" or why the chain cannot take it.
  static std::string read_conv(const torch::jit::Module& child, const std::string& name, ChainStep& st) {
    const std::string what = "Conv2d child '" + name + "'";
    if (st.weight.dim() != 4) return what + " has a weight of shape " + shape_str(st.weight.sizes()) + ", not 4-D";
    for (const char* attr : {"stride", "padding", "dilation", "groups", "padding_mode"})
      if (!child.hasattr(attr))
        return what + " does not record its " + attr + " (a traced model; torch.jit.script keeps it)";
    const auto groups = child.attr("groups");
    if (!groups.isInt() || groups.toInt() != 1)
      return what + " has groups = " + (groups.isInt() ? std::to_string(groups.toInt()) : std::string("?")) +
             " (the chain path takes groups = 1 only)";
    if (!child.attr("padding_mode").isString() || child.attr("padding_mode").toStringRef() != "zeros")
      return what + " pads otherwise than with zeros";
    st.c_in = st.weight.size(1);
    st.kh = st.weight.size(2);
    st.kw = st.weight.size(3);
    if (!int_pair(child, "stride", st.sh, st.sw) || !int_pair(child, "dilation", st.dh, st.dw))
      return what + " has a stride or dilation that is not an int pair";
    if (child.hasattr("padding") && child.attr("padding").isString()) {
      // padding = "valid" | "same" (stride 1): "same" pads dilation * (kernel - 1) in total,
      // the smaller half first; only even totals are symmetric, which is all this chain does.
      const std::string mode = child.attr("padding").toStringRef();
      if (mode == "valid") {
        st.ph = st.pw = 0;
      } else if (mode == "same" && st.dh * (st.kh - 1) % 2 == 0 && st.dw * (st.kw - 1) % 2 == 0) {
        st.ph = st.dh * (st.kh - 1) / 2;
        st.pw = st.dw * (st.kw - 1) / 2;
      } else {
        return what + " has padding = '" + mode + "'" + (mode == "same" ? " with an odd total (asymmetric)" : "");
      }
    } else if (!int_pair(child, "padding", st.ph, st.pw)) {
      return what + " has a padding that is not an int pair or 'valid'/'same'";
    }
    if (st.sh < 1 || st.sw < 1 || st.dh < 1 || st.dw < 1 || st.ph < 0 || st.pw < 0)
      return what + " has an unusual stride, dilation or padding";
    return "";
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
            bool any_selected = false;
            for (const auto& p : ps)
              for (const auto& n : names) any_selected |= (n == name + "." + p.first);
            const bool linear = type_ends_with(child, ".Linear"), conv = type_ends_with(child, ".Conv2d");
            const bool layer_shape = (linear || conv) && !ps.empty() && ps.size() <= 2 && ps[0].first == "weight" &&
                                     (ps.size() == 1 || (ps[1].first == "bias" && ps[1].second.dim() == 1 &&
                                                         ps[1].second.size(0) == ps[0].second.size(0)));
            if (!layer_shape || (linear && ps[0].second.dim() != 2)) {
              // Called as a module: parameter-free layers, frozen ones (BatchNorm in eval mode).
              if (any_selected && why.empty()) {
                if (type_ends_with(child, ".BatchNorm2d") || type_ends_with(child, ".BatchNorm1d"))
                  why = "child '" + name + "' (" + type_name(child) +
                        ") has selected parameters: the chain path takes batch-norm layers frozen only (leave their "
                        "parameters out of gradients.parameters, or use path = general)";
                else
                  why = "child '" + name + "' (" + type_name(child) +
                        ") has selected parameters and is not a Linear or Conv2d layer";
              }
              steps.push_back(st);
              continue;
            }
            st.kind = linear ? StepKind::linear : StepKind::conv;
            st.weight = ps[0].second.detach();
            if (ps.size() == 2) st.bias = ps[1].second.detach().contiguous();
            if (conv) {
              const std::string bad = read_conv(child, name, st);
              if (!bad.empty()) {
                if (why.empty()) why = bad;
                steps.push_back(st);
                continue;
              }
            }
            st.weight = st.weight.reshape({st.weight.size(0), -1}).contiguous();
            st.weight_t = st.weight.t().contiguous();
            for (size_t k = 0; k < names.size(); ++k) {
              if (names[k] == name + ".weight") st.weight_slot = static_cast<int>(k);
              if (names[k] == name + ".bias") st.bias_slot = static_cast<int>(k);
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

  // out (rows x m, float64, pre-initialised) += a (rows x k, row stride lda) times w^T (w: m x k,
  // row stride ldw). Each entry is a pure function of one row of a and one row of w (the backend's
  // FMA order for float32, its canonical order for float64), so a row's result never depends on
  // the other rows of its batch; BLAS picks different code paths for different batch sizes.
  void rows_times(const float* a, int64_t rows, int64_t k, int64_t lda, const float* w, int64_t m, int64_t ldw, double* out) {
    backend->score_accumulate_fma({a, rows, k, lda}, {w, m, k, ldw}, 1.0, kernels::view_mut(out, rows, m));
  }
  void rows_times(const double* a, int64_t rows, int64_t k, int64_t lda, const double* w, int64_t m, int64_t ldw, double* out) {
    backend->score_accumulate({a, rows, k, lda}, {w, m, k, ldw}, 1.0, kernels::view_mut(out, rows, m));
  }

  // y (rows x m) = a w^T (+ bias), in the model's dtype. a: rows x k (row stride lda).
  template <class T>
  torch::Tensor product(const T* a, int64_t rows, int64_t k, int64_t lda, const torch::Tensor& w, const torch::Tensor& bias) {
    const int64_t m = w.size(0);
    acc.resize(static_cast<size_t>(rows * m));
    if (bias.defined()) {
      const T* bp = bias.data_ptr<T>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < m; ++j) acc[static_cast<size_t>(r * m + j)] = static_cast<double>(bp[j]);
    } else {
      std::fill(acc.begin(), acc.end(), 0.0);
    }
    rows_times(a, rows, k, lda, w.data_ptr<T>(), m, w.stride(0), acc.data());
    auto y = torch::empty({rows, m}, dtype);
    T* yp = y.data_ptr<T>();
    for (int64_t q = 0; q < rows * m; ++q) yp[q] = static_cast<T>(acc[static_cast<size_t>(q)]);
    return y;
  }

  // Unfolded input patches of a convolution: (B * L) x (n_in + 1), row b * L + t holds the
  // patch under output position t = oy * W_out + ox (column (c * kh + i) * kw + j, zero outside
  // the image), then a 1 (the bias column of the Kronecker factors).
  template <class T>
  torch::Tensor unfold(const ChainStep& st, const torch::Tensor& x, int64_t ho, int64_t wo) {
    const int64_t b = x.size(0), h = x.size(2), w = x.size(3), l = ho * wo, k = st.n_in(), ld = k + 1;
    auto patches = torch::empty({b * l, ld}, dtype);
    const T* xp = x.data_ptr<T>();
    T* pp = patches.data_ptr<T>();
    at::parallel_for(0, b, grain_for(l * ld), [&](int64_t b0, int64_t b1) {
      for (int64_t e = b0; e < b1; ++e)
        for (int64_t oy = 0; oy < ho; ++oy)
          for (int64_t ox = 0; ox < wo; ++ox) {
            T* row = pp + (e * l + oy * wo + ox) * ld;
            for (int64_t c = 0; c < st.c_in; ++c)
              for (int64_t i = 0; i < st.kh; ++i) {
                const int64_t y = oy * st.sh - st.ph + i * st.dh;
                for (int64_t j = 0; j < st.kw; ++j) {
                  const int64_t xx = ox * st.sw - st.pw + j * st.dw;
                  const bool inside = y >= 0 && y < h && xx >= 0 && xx < w;
                  row[(c * st.kh + i) * st.kw + j] = inside ? xp[((e * st.c_in + c) * h + y) * w + xx] : T(0);
                }
              }
            row[k] = T(1);
          }
    });
    return patches;
  }

  // Output size of a convolution along one axis (PyTorch's formula).
  static int64_t conv_out(int64_t in, int64_t pad, int64_t dil, int64_t ker, int64_t stride) {
    return (in + 2 * pad - dil * (ker - 1) - 1) / stride + 1;
  }

  // Forward through the chain. With `tape`, records what the backward pass needs.
  struct Tape {
    std::vector<torch::Tensor> inputs;   // per step: call steps their input (requires grad), linear
                                         // steps their input, conv steps the unfolded patches
    std::vector<torch::Tensor> outputs;  // per step: call steps their output
    std::vector<std::vector<int64_t>> shapes;  // per step: its input's shape
  };
  template <class T>
  torch::Tensor chain_forward(torch::Tensor h, Tape* tape) {
    // With a tape (gradients, once the chain path is decided), pointwise and pooling children run
    // unoptimized: as written, with autograd's own formulas, the same in every batch (an
    // optimized plan would replace the profiling one after the first calls), and without
    // profiling and optimizing each child's graph at every checkpoint (~10 ms each). The checks
    // that decide the path leave the graph executor as it is: a function's optimized graph is
    // made once, with the setting of that moment, and the graph path inlines it.
    std::optional<torch::jit::GraphOptimizerEnabledGuard> unoptimized;
    if (tape) unoptimized.emplace(false);
    for (auto& st : chain) {
      if (tape) tape->shapes.push_back(h.sizes().vec());
      if (st.kind == StepKind::linear) {
        h = h.detach().contiguous();
        if (h.dim() < 1 || h.size(-1) != st.n_in())
          throw std::invalid_argument("Linear child '" + st.name + "' expects " + std::to_string(st.n_in()) +
                                      " input features, got shape " + shape_str(h.sizes()));
        if (tape) {
          tape->inputs.push_back(h);
          tape->outputs.emplace_back();
        }
        st.positions = h.dim() >= 2 ? h.numel() / (h.size(0) * st.n_in()) : 1;
        auto lead = h.sizes().vec();
        lead.back() = st.n_out();
        h = product<T>(h.data_ptr<T>(), h.numel() / st.n_in(), st.n_in(), st.n_in(), st.weight, st.bias).reshape(lead);
      } else if (st.kind == StepKind::conv) {
        h = h.detach().contiguous();
        if (h.dim() != 4 || h.size(1) != st.c_in)
          throw std::invalid_argument("Conv2d child '" + st.name + "' expects input [batch, " + std::to_string(st.c_in) +
                                      ", H, W], got shape " + shape_str(h.sizes()));
        const int64_t b = h.size(0), ho = conv_out(h.size(2), st.ph, st.dh, st.kh, st.sh),
                      wo = conv_out(h.size(3), st.pw, st.dw, st.kw, st.sw);
        if (ho < 1 || wo < 1)
          throw std::invalid_argument("Conv2d child '" + st.name + "': input " + shape_str(h.sizes()) + " is smaller than the kernel");
        st.positions = ho * wo;
        const torch::Tensor patches = unfold<T>(st, h, ho, wo);
        if (tape) {
          tape->inputs.push_back(patches);
          tape->outputs.emplace_back();
        }
        // (B * L) x C_out rows to [B, C_out, H_out, W_out]
        h = product<T>(patches.data_ptr<T>(), b * ho * wo, st.n_in(), st.n_in() + 1, st.weight, st.bias)
                .reshape({b, ho * wo, st.n_out()})
                .transpose(1, 2)
                .reshape({b, st.n_out(), ho, wo});
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
  torch::Tensor chain_forward(const torch::Tensor& h, Tape* tape) {
    return dtype == torch::kDouble ? chain_forward<double>(h, tape) : chain_forward<float>(h, tape);
  }

  void check_fit(const Dataset& ds) {
    const std::string dsw = "dataset '" + ds.path + "'";
    if (settings.loss == Loss::cross_entropy)
      ATTRACE_CHECK(ds.target_kind == TargetKind::class_index, InputError,
                    dsw + ": loss cross_entropy needs integer class labels in /targets (use loss = \"mse\" for float targets, \"next_token\" for token datasets)");
    else if (settings.loss == Loss::mse)
      ATTRACE_CHECK(ds.target_kind == TargetKind::regression, InputError,
                    dsw + ": loss mse needs float regression targets in /targets");
    else
      ATTRACE_CHECK(ds.target_kind == TargetKind::tokens && ds.input_kind == connectors::InputKind::integers &&
                        static_cast<int64_t>(ds.token_targets.size()) == ds.size() * ds.example_width(),
                    InputError,
                    dsw + ": loss next_token needs a token dataset (integer /inputs [N, T] with a target per position; docs/formats.md)");
    if (ds.input_kind == connectors::InputKind::integers)
      ATTRACE_CHECK(static_cast<int64_t>(ds.int_inputs.size()) == ds.size() * ds.example_width(), InputError,
                    dsw + ": integer /inputs hold " + std::to_string(ds.int_inputs.size()) + " values for shape " +
                        shape_str(at::IntArrayRef(ds.input_shape)));
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
    if (settings.loss == Loss::next_token) {
      const int64_t t = ds.example_width();
      ATTRACE_CHECK(out.dim() == 3 && out.size(1) == t, InputError,
                    where() + ": next_token needs logits of shape [batch, " + std::to_string(t) + ", vocabulary], got " +
                        shape_str(out.sizes()));
      const int64_t vocab = out.size(2);
      for (size_t q = 0; q < ds.token_targets.size(); ++q) {
        const int32_t y = ds.token_targets[q];
        ATTRACE_CHECK(y == connectors::kIgnoreTarget || (y >= 0 && y < vocab), InputError,
                      dsw + ": example '" + ds.ids[q / static_cast<size_t>(t)] + "' has target token " + std::to_string(y) +
                          " at position " + std::to_string(q % static_cast<size_t>(t)) + " but " + where() + " has a vocabulary of " +
                          std::to_string(vocab));
      }
    } else if (settings.loss == Loss::cross_entropy) {
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

  // "" when calling the chain's children in order reproduces the model's own forward on the first
  // rows of `ds`, else why not. A fixed number of rows (never the batch size: a speed setting must
  // not choose the path, and so the bits) and a normwise criterion: the chain's Linear layers sum
  // in a fixed order of their own and LibTorch's in float32, so single outputs near zero may
  // differ relatively; what is compared is the error against the outputs' scale.
  std::string chain_mismatch(const Dataset& ds) {
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
      return std::string("calling the children in order failed: ") + torch_message(e);
    }
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
    return same ? "" : "calling the children in order does not reproduce forward()";
  }

  void decide_path(const Dataset& ds) {
    path_decided = true;
    if (settings.path == GradPath::general) {
      path_in_use = GradPath::general;
      chain_refusal = "path = general was requested";
      return;
    }
    chain_refusal = settings.path == GradPath::graph ? "path = graph was requested" : build_chain();
    if (chain_refusal.empty()) chain_refusal = chain_mismatch(ds);
    if (!chain_refusal.empty()) {
      chain.clear();
      ATTRACE_CHECK(settings.path != GradPath::chain, InputError,
                    where() + ": path = chain requested but the model is not a chain of Linear/Conv2d layers: " + chain_refusal);
      const std::string why = build_graph(ds);
      if (why.empty()) {
        path_in_use = GradPath::graph;
        return;
      }
      capture.reset();
      graph_steps.clear();
      graph_group.clear();
      graph_role.clear();
      ATTRACE_CHECK(settings.path != GradPath::graph, InputError,
                    where() + ": path = graph requested but the graph path cannot serve this model: " + why);
      chain_refusal += "; graph path: " + why;
      path_in_use = GradPath::general;
    } else {
      path_in_use = GradPath::chain;
    }
  }

  // The graph path: every selected parameter must be the weight or bias of a captured Linear or
  // Embedding, and the rewritten forward must return the model's own output on real rows (the
  // rewrite adds exact zeros, so the check is for equality). Returns "" or why not.
  std::string build_graph(const Dataset& ds) {
    capture = std::make_unique<detail::CaptureGraph>();
    std::string why;
    try {
      why = capture->build(module);
    } catch (const std::exception& e) {
      return std::string("rewriting the forward graph failed: ") + torch_message(e);
    }
    if (!why.empty()) return why;
    const auto& groups = capture->groups();
    std::map<std::string, int> slot;
    for (size_t k = 0; k < names.size(); ++k) slot[names[k]] = static_cast<int>(k);
    std::set<std::string> covered;
    std::vector<std::pair<int64_t, size_t>> order;  // (first selected slot, step)
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const auto& gr = groups[gi];
      const auto w = slot.find(gr.weight);
      const auto b = gr.bias.empty() ? slot.end() : slot.find(gr.bias);
      if (w == slot.end() && b == slot.end()) continue;
      covered.insert(gr.weight);
      if (!gr.bias.empty()) covered.insert(gr.bias);
      // A LayerNorm's weight and bias are two elementwise "layers" (D x 1 each, x = [1]).
      const std::vector<std::pair<int, int>> parts =
          gr.norm ? std::vector<std::pair<int, int>>{{1, w == slot.end() ? -1 : w->second}, {2, b == slot.end() ? -1 : b->second}}
                  : std::vector<std::pair<int, int>>{{0, -1}};
      for (const auto& [role, sl] : parts) {
        if (gr.norm && sl < 0) continue;
        ChainStep st;
        st.name = role == 0 ? gr.name : role == 1 ? gr.weight : gr.bias;
        st.kind = StepKind::linear;
        st.weight = params[0].new_empty({gr.d_out, gr.n_in});  // shape only; products are autograd's
        st.weight_slot = role == 0 ? (w == slot.end() ? -1 : w->second) : sl;
        st.bias_slot = role == 0 ? (b == slot.end() ? -1 : b->second) : -1;
        order.emplace_back(std::min(st.weight_slot < 0 ? INT64_MAX : st.weight_slot, st.bias_slot < 0 ? INT64_MAX : st.bias_slot),
                           graph_steps.size());
        graph_steps.push_back(std::move(st));
        graph_group.push_back(gi);
        graph_role.push_back(role);
      }
    }
    std::string missing;
    int n_missing = 0;
    for (const auto& n : names)
      if (!covered.count(n) && n_missing++ < 6) missing += (missing.empty() ? "" : ", ") + n;
    if (n_missing > 0)
      return std::to_string(n_missing) + " selected parameter(s) are not the weight or bias of a Linear, Embedding or LayerNorm (" + missing +
             (n_missing > 6 ? ", ..." : "") + "); leave them out with gradients.exclude or gradients.parameters";
    // Steps in parameter order, so per-example gradients and dense feature columns follow the
    // parameters' layout (weight d_out x n_in row-major, then the bias).
    std::vector<size_t> idx(order.size());
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = k;
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return order[a].first < order[b].first; });
    std::vector<ChainStep> steps;
    std::vector<size_t> grp;
    std::vector<int> roles;
    int64_t at = 0;
    for (size_t k : idx) {
      const auto& st = graph_steps[k];
      for (int sl : {st.weight_slot, st.bias_slot})
        if (sl >= 0) {
          if (offsets[static_cast<size_t>(sl)] != at)
            return "the parameters of layer '" + st.name + "' are not adjacent in named_parameters() order";
          at += params[static_cast<size_t>(sl)].numel();
        }
      steps.push_back(st);
      grp.push_back(graph_group[k]);
      roles.push_back(graph_role[k]);
    }
    graph_steps = std::move(steps);
    graph_group = std::move(grp);
    graph_role = std::move(roles);
    // Same output as the model on real rows, and every site sees the batch in dimension 0.
    const int64_t b = std::min<int64_t>(ds.size(), kChainCheckRows);
    LinearBackendScope scope(backend);
    try {
      const auto x = inputs(ds, 0, b);
      torch::NoGradGuard ng;
      const auto want = forward(x);
      const auto run = capture->run(module, x);
      const auto got = select_output(run.output);
      // Its Linear layers sum in the backend's fixed order, LibTorch's in its GEMM's: judged
      // normwise against the outputs' scale, as the chain's check.
      bool same = got.sizes().equals(want.sizes()) && torch::equal(got.isnan(), want.isnan());
      double err = 0, scale = 0;
      if (same) {
        const auto g = torch::nan_to_num(got.to(torch::kDouble)), w = torch::nan_to_num(want.to(torch::kDouble));
        scale = w.abs().max().item<double>();
        err = (g - w).abs().max().item<double>();
        same = err <= (dtype == torch::kDouble ? 1e-10 : 1e-4) * std::max(scale, 1e-30);
      }
      if (!same) {
        std::ostringstream why;
        why << "the rewritten forward does not reproduce forward() (max error " << err << " at output scale " << scale << ")";
        return why.str();
      }
      for (size_t k = 0; k < capture->sites().size(); ++k) {
        const auto& p = run.probes[k];
        if (p.dim() < 2 || p.size(0) != b)
          return "a layer's output of shape " + shape_str(p.sizes()) + " does not have the batch (" + std::to_string(b) +
                 " rows) in dimension 0";
      }
      graph_positions(run);
    } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
      return std::string("running the rewritten forward failed: ") + torch_message(e);
    }
    return "";
  }

  // Positions per example for this dataset (a token dataset's T), from a one-row run.
  void graph_prepare(const Dataset& ds) {
    torch::NoGradGuard ng;
    LinearBackendScope scope(backend);
    try {
      graph_positions(capture->run(module, inputs(ds, 0, 1)));
    } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InputError("dataset '" + ds.path + "': " + where() + " failed on its first example: " + torch_message(e));
    }
  }

  // Positions per example of each graph step (sum over its sites) from a run's probes.
  void graph_positions(const detail::CaptureGraph::Run& run) {
    const auto& groups = capture->groups();
    for (size_t k = 0; k < graph_steps.size(); ++k) {
      int64_t pos = 0;
      const auto& gr = groups[graph_group[k]];
      for (int s : gr.sites) {
        const auto& p = run.probes[static_cast<size_t>(s)];
        const int64_t width = capture->sites()[static_cast<size_t>(s)].embedding ? gr.n_in : gr.d_out;  // norm: D
        pos += p.numel() / (p.size(0) * width);
      }
      graph_steps[k].positions = pos;
    }
  }

  // Graph path, rows [begin, end): one forward through the rewritten graph, one backward to the
  // probes; per step (parameter order) the rows of inputs x and output gradients d, the sites of a
  // tied weight one after another. Visits every step with a selected parameter.
  template <class T>
  void graph_backward(const Dataset& ds, int64_t begin, int64_t end, const LayerVisitor& visit) {
    const int64_t b = end - begin;
    LinearBackendScope scope(backend);
    const auto run = capture->run(module, inputs(ds, begin, end));
    const auto loss = loss_sum(select_output(run.output), targets(ds, begin, end));
    const auto grads = torch::autograd::grad({loss}, run.probes, {}, false, false, true);
    const auto& groups = capture->groups();
    const auto& sites = capture->sites();
    for (size_t k = 0; k < graph_steps.size(); ++k) {
      const auto& gr = groups[graph_group[k]];
      std::vector<torch::Tensor> xs, ds_;
      for (int s : gr.sites) {
        const auto su = static_cast<size_t>(s);
        const auto& site = sites[su];
        torch::Tensor g = grads[su].defined() ? grads[su] : torch::zeros_like(run.probes[su]);
        ATTRACE_CHECK(g.dim() >= 2 && g.size(0) == b, InputError,
                      where() + ": layer '" + gr.name + "' output of shape " + shape_str(g.sizes()) +
                          " does not have the batch in dimension 0");
        if (site.norm) {  // x: [1]; d: delta (.) xhat (weight) or delta (bias), D wide
          const auto dl = g.detach().reshape({b, -1, gr.d_out}).to(dtype);
          if (graph_role[k] == 1) {
            const auto xin = run.inputs[su].detach().reshape({b, -1, gr.d_out}).to(dtype);
            const auto mean = xin.mean(-1, true);
            const auto var = (xin - mean).pow(2).mean(-1, true);
            ds_.push_back(dl * ((xin - mean) / (var + gr.eps).sqrt()));
          } else {
            ds_.push_back(dl);
          }
          xs.push_back(torch::ones({b, dl.size(1), 1}, dtype));
        } else if (site.embedding) {  // x: the output gradient (d wide); d: the one-hot of the id (V wide)
          const auto ids = run.inputs[su].reshape({b, -1});
          auto onehot = torch::nn::functional::one_hot(ids, gr.d_out).to(dtype);
          if (site.padding_idx >= 0) onehot.select(2, site.padding_idx).zero_();  // no gradient, as in PyTorch
          xs.push_back(g.detach().reshape({b, -1, gr.n_in}).to(dtype));
          ds_.push_back(onehot);
        } else {
          xs.push_back(run.inputs[su].detach().reshape({b, -1, gr.n_in}).to(dtype));
          ds_.push_back(g.detach().reshape({b, -1, gr.d_out}).to(dtype));
        }
      }
      const ChainStep& st = graph_steps[k];
      LayerRows lr;
      lr.step = &st;
      lr.examples = b;
      lr.n_in = gr.n_in;
      lr.n_out = gr.d_out;
      lr.ldx = gr.n_in;
      lr.x = (xs.size() == 1 ? xs[0] : torch::cat(xs, 1)).contiguous();
      lr.d = (ds_.size() == 1 ? ds_[0] : torch::cat(ds_, 1)).contiguous();
      lr.positions = lr.x.size(1);
      lr.x = lr.x.reshape({b * lr.positions, gr.n_in});
      lr.d = lr.d.reshape({b * lr.positions, gr.d_out});
      visit(lr);
    }
  }


  // The output gradient of a conv step's input: patches' gradients d W (B*L x n_in, float64), each
  // added to the input pixel it was read from, per example in a fixed order (t, then patch column,
  // ascending), so no sum depends on threads or on the batch.
  template <class T>
  torch::Tensor fold(const ChainStep& st, const torch::Tensor& d_rows, const std::vector<int64_t>& in_shape) {
    const int64_t b = in_shape[0], h = in_shape[2], w = in_shape[3];
    const int64_t ho = conv_out(h, st.ph, st.dh, st.kh, st.sh), wo = conv_out(w, st.pw, st.dw, st.kw, st.sw);
    const int64_t l = ho * wo, k = st.n_in(), img = st.c_in * h * w;
    acc.assign(static_cast<size_t>(b * l * k), 0.0);
    rows_times(d_rows.data_ptr<T>(), b * l, st.n_out(), st.n_out(), st.weight_t.data_ptr<T>(), k, st.n_out(), acc.data());
    auto dx = torch::empty(in_shape, dtype);
    T* dxp = dx.data_ptr<T>();
    const double* dp = acc.data();
    at::parallel_for(0, b, grain_for(l * k), [&](int64_t b0, int64_t b1) {
      std::vector<double> sum(static_cast<size_t>(img));
      for (int64_t e = b0; e < b1; ++e) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int64_t oy = 0; oy < ho; ++oy)
          for (int64_t ox = 0; ox < wo; ++ox) {
            const double* row = dp + (e * l + oy * wo + ox) * k;
            for (int64_t c = 0; c < st.c_in; ++c)
              for (int64_t i = 0; i < st.kh; ++i) {
                const int64_t y = oy * st.sh - st.ph + i * st.dh;
                if (y < 0 || y >= h) continue;
                for (int64_t j = 0; j < st.kw; ++j) {
                  const int64_t xx = ox * st.sw - st.pw + j * st.dw;
                  if (xx >= 0 && xx < w) sum[static_cast<size_t>((c * h + y) * w + xx)] += row[(c * st.kh + i) * st.kw + j];
                }
              }
          }
        for (int64_t q = 0; q < img; ++q) dxp[e * img + q] = static_cast<T>(sum[static_cast<size_t>(q)]);
      }
    });
    return dx;
  }

  // One batched forward, then back-propagation of each row's output gradient through the chain:
  // Linear and Conv2d steps by the deterministic product (delta W), other steps by autograd's
  // vector-Jacobian product of that step alone (pointwise, pooling, frozen batch-norm: per
  // example by construction).
  template <class T>
  void chain_backward(const Dataset& ds, int64_t begin, int64_t end, const LayerVisitor& visit) {
    const int64_t b = end - begin;
    Tape tape;
    const auto logits = chain_forward<T>(inputs(ds, begin, end), &tape).requires_grad_(true);
    const auto loss = loss_sum(logits, targets(ds, begin, end));
    torch::Tensor delta = torch::autograd::grad({loss}, {logits})[0];
    int first_needed = -1;  // earliest step whose output gradient is needed
    for (size_t k = 0; k < chain.size(); ++k)
      if (chain[k].selected()) {
        first_needed = static_cast<int>(k);
        break;
      }
    for (int k = static_cast<int>(chain.size()) - 1; k >= first_needed && k >= 0; --k) {
      const auto sk = static_cast<size_t>(k);
      const ChainStep& st = chain[sk];
      if (st.kind == StepKind::call) {
        delta = torch::autograd::grad({tape.outputs[sk]}, {tape.inputs[sk]}, {delta}, false, false, true)[0];
        if (!delta.defined()) delta = torch::zeros_like(tape.inputs[sk]);
        continue;
      }
      LayerRows lr;
      lr.step = &st;
      lr.examples = b;
      lr.n_in = st.n_in();
      lr.n_out = st.n_out();
      if (st.kind == StepKind::linear) {
        lr.x = tape.inputs[sk];
        lr.positions = lr.x.numel() / (b * lr.n_in);
        lr.ldx = lr.n_in;
        lr.d = delta.to(dtype).contiguous();
      } else {
        lr.x = tape.inputs[sk];  // patches with the ones column
        lr.ldx = lr.n_in + 1;
        lr.ones_column = true;
        lr.positions = delta.size(2) * delta.size(3);
        lr.d = delta.to(dtype).reshape({b, lr.n_out, lr.positions}).transpose(1, 2).contiguous();
      }
      if (st.selected()) visit(lr);
      if (k == first_needed) break;
      if (st.kind == StepKind::linear) {
        const int64_t rows = b * lr.positions;
        acc.assign(static_cast<size_t>(rows * lr.n_in), 0.0);
        rows_times(lr.d.template data_ptr<T>(), rows, lr.n_out, lr.n_out, st.weight_t.data_ptr<T>(), lr.n_in, lr.n_out, acc.data());
        auto dx = torch::empty(tape.shapes[sk], dtype);
        T* dxp = dx.data_ptr<T>();
        for (int64_t q = 0; q < rows * lr.n_in; ++q) dxp[q] = static_cast<T>(acc[static_cast<size_t>(q)]);
        delta = dx;
      } else {
        delta = fold<T>(st, lr.d, tape.shapes[sk]);
      }
    }
  }

  // Per-example gradients of one layer into rows of dst (row stride p): weight entry (o, q) is
  // sum over positions t of d[t][o] * x[t][q], t ascending (one exact product for one position),
  // and bias entry o is sum_t d[t][o], t ascending: a row's bits depend on that example only.
  // row_ok[i] is cleared when example i's entries of this layer are not all finite (checked while
  // they are still in cache).
  template <class T>
  void layer_gradients(const LayerRows& lr, T* dst, int64_t p, char* row_ok) const {
    const ChainStep& st = *lr.step;
    const int64_t n_in = lr.n_in, n_out = lr.n_out, pos = lr.positions, ldx = lr.ldx;
    const T* xs = lr.x.template data_ptr<T>();
    const T* ds_ = lr.d.template data_ptr<T>();
    const int64_t woff = st.weight_slot >= 0 ? offsets[static_cast<size_t>(st.weight_slot)] : -1;
    const int64_t boff = st.bias_slot >= 0 ? offsets[static_cast<size_t>(st.bias_slot)] : -1;
    at::parallel_for(0, lr.examples, grain_for(n_out * n_in * pos), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T* x = xs + i * pos * ldx;
        const T* d = ds_ + i * pos * n_out;
        bool ok = true;
        if (woff >= 0) {
          T* g = dst + i * p + woff;
          for (int64_t o = 0; o < n_out; ++o) {
            T* gr = g + o * n_in;
            outer_row_sum(gr, d, o, n_out, x, ldx, n_in, pos);
            ok &= all_finite(gr, n_in);
          }
        }
        if (boff >= 0) {
          T* g = dst + i * p + boff;
          for (int64_t o = 0; o < n_out; ++o) {
            T s = d[o];
            for (int64_t t = 1; t < pos; ++t) s += d[t * n_out + o];
            g[o] = s;
          }
          ok &= all_finite(g, n_out);
        }
        if (!ok) row_ok[i] = 0;
      }
    });
  }

  // The Linear and Conv2d layers a Kronecker projection covers; InputError when the selection is
  // not made of whole such layers on the chain path.
  std::vector<KroneckerLayer> kronecker_layers() const {
    ATTRACE_CHECK(path_decided, RuntimeFailure, "kronecker_layers(): prepare() was not called");
    ATTRACE_CHECK(path_in_use == GradPath::chain || path_in_use == GradPath::graph, InputError,
                  where() + ": Kronecker projection needs the chain path (a Sequential of Linear and Conv2d layers) or the "
                            "graph path (Linear and Embedding layers anywhere): " + chain_refusal);
    std::vector<KroneckerLayer> layers;
    int64_t covered = 0;
    for (const auto& st : path_in_use == GradPath::graph ? graph_steps : chain) {
      if (st.kind == StepKind::call || !st.selected()) continue;
      ATTRACE_CHECK(st.weight_slot >= 0, InputError,
                    where() + ": Kronecker projection needs '" + st.name + ".weight' selected with its bias");
      const bool bias = st.bias_slot >= 0;
      layers.push_back({st.name, st.n_in() + (bias ? 1 : 0), st.n_out(), bias, st.positions});
      covered += st.weight.numel() + (bias ? st.n_out() : 0);
    }
    ATTRACE_CHECK(covered == dim, InputError,
                  where() + ": Kronecker projection covers Linear, Conv2d (chain path) and Embedding (graph path) layers only");
    return layers;
  }

  void factors(const Dataset& ds, int64_t begin, int64_t end, std::vector<LayerFactors>& out) {
    out.clear();
    const auto visit = [&](const LayerRows& lr) {
      LayerFactors f;
      f.name = lr.step->name;
      f.positions = lr.positions;
      const bool bias = lr.step->bias_slot >= 0;
      f.d_in = lr.n_in + (bias ? 1 : 0);
      f.d_out = lr.n_out;
      const int64_t rows = lr.examples * lr.positions;
      const auto xf = lr.x.to(torch::kFloat).contiguous();
      const auto df = lr.d.to(torch::kFloat).contiguous();
      const float* xp = xf.data_ptr<float>();
      f.x.resize(static_cast<size_t>(rows * f.d_in));
      for (int64_t r = 0; r < rows; ++r) {
        std::copy(xp + r * lr.ldx, xp + r * lr.ldx + lr.n_in, f.x.begin() + r * f.d_in);
        if (bias) f.x[static_cast<size_t>(r * f.d_in + lr.n_in)] = 1.0f;  // [W b] acts on [x 1]
      }
      f.delta.assign(df.data_ptr<float>(), df.data_ptr<float>() + df.numel());
      out.push_back(std::move(f));
    };
    const bool graph = path_in_use == GradPath::graph;
    try {
      if (graph && dtype == torch::kDouble)
        graph_backward<double>(ds, begin, end, visit);
      else if (graph)
        graph_backward<float>(ds, begin, end, visit);
      else if (dtype == torch::kDouble)
        chain_backward<double>(ds, begin, end, visit);
      else
        chain_backward<float>(ds, begin, end, visit);
    } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InputError("dataset '" + ds.path + "' rows " + std::to_string(begin) + ".." + std::to_string(end - 1) + ": " +
                       where() + " failed: " + torch_message(e));
    }
    if (!graph) std::reverse(out.begin(), out.end());  // chain order (visited from the output back)
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
    const int64_t rows = end - begin;
    std::vector<char> row_ok(static_cast<size_t>(rows), 1);
    auto out = torch::from_blob(dst, {rows, dim}, want);
    try {
      if (path_in_use == GradPath::chain) {
        // Every selected parameter belongs to one visited layer, which checks its entries.
        chain_backward<T>(ds, begin, end, [&](const LayerRows& lr) { layer_gradients<T>(lr, dst, dim, row_ok.data()); });
      } else if (path_in_use == GradPath::graph) {
        graph_backward<T>(ds, begin, end, [&](const LayerRows& lr) { layer_gradients<T>(lr, dst, dim, row_ok.data()); });
      } else {
        general_gradients(ds, begin, end, out);
        at::parallel_for(0, rows, grain_for(dim), [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) row_ok[static_cast<size_t>(i)] = all_finite(dst + i * dim, dim) ? 1 : 0;
        });
      }
    } catch (const attrace::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InputError("dataset '" + ds.path + "' rows " + std::to_string(begin) + ".." + std::to_string(end - 1) +
                       ": " + where() + " failed: " + torch_message(e));
    }
    // The first bad row in row order (the same answer for any thread count).
    const int64_t first_bad = std::find(row_ok.begin(), row_ok.end(), 0) - row_ok.begin();
    if (first_bad < rows) {
      const int64_t bad = begin + first_bad;
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
    for (const auto& pat : settings.exclude) selected &= ::fnmatch(pat.c_str(), p.name.c_str(), 0) != 0;
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
  if (!impl_->path_decided) {
    impl_->first_prepared = ds.path;
    impl_->decide_path(ds);
  } else if (impl_->path_in_use == GradPath::graph) {
    impl_->graph_prepare(ds);
  } else if (impl_->path_in_use == GradPath::chain) {
    // One model serves several datasets (attribute: training and query sets): the chain must
    // reproduce forward() on each, or the sets' features would come from different paths.
    const std::string why = impl_->chain_mismatch(ds);
    ATTRACE_CHECK(why.empty(), InputError,
                  impl_->where() + ": the chain path reproduces forward() on the rows of '" + impl_->first_prepared +
                      "' but not on those of '" + ds.path + "' (" + why +
                      "); set gradients.path = \"graph\" or \"general\"");
  }
}
int64_t CheckpointModel::dim() const { return impl_->dim; }
int64_t CheckpointModel::chain_floats_per_example() const {
  if (impl_->path_in_use != GradPath::chain) return 0;
  int64_t n = 0;
  for (const auto& st : impl_->chain)
    if (st.kind != StepKind::call) n += st.positions * (st.n_in() + 1 + st.n_out());
  return n;
}
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
