// The LibTorch half of the recorder (docs/recorder.md): capturing a TorchScript Sequential's
// Linear inputs and output gradients during ordinary training, and finalizing a recording into
// checkpoints, a run file, a config and a feature store that `attrace score` reads.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/model_builder.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/engine/report.hpp>
#include <attrace/error.hpp>

#include <nlohmann/json.hpp>
#include <torch/script.h>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <cmath>
#include <filesystem>

namespace attrace::engine {
namespace {

namespace fs = std::filesystem;

// A child of the flattened chain: a Linear or Conv2d layer (layer >= 0) or a parameter-free module.
struct ChainChild {
  torch::jit::Module module;
  std::string name;
  int layer = -1;
  bool conv = false;
  int64_t n_in = 0, n_out = 0;  // Linear: features; Conv2d: input channels, output channels
  bool bias = false;
  // Children whose forward() is one ATen call run it directly (Recorder::forward): the same op
  // on the same tensors, so the same bits, without a TorchScript interpreter call per child.
  enum class Direct { none, linear, addmm, relu } direct = Direct::none;
};

// The child's forward() as one ATen call where it is exactly that, by its TorchScript class:
// PyTorch's own Linear and the twin of a torch::nn::Linear (model_builder: torch.linear) as
// aten::linear of the weight and bias, read at each call; save_mlp_torchscript's Linear
// (torch.addmm(bias, x, weight.t())) as aten::addmm; PyTorch's own ReLU when not in place and
// model_builder's ReLUs (torch.relu) as aten::relu. Anything else, a user's class named Linear
// included, runs its own forward().
ChainChild::Direct direct_kind(const torch::jit::Module& c) {
  const std::string q = type_name(c);
  const auto from = [&](const char* prefix) { return q.rfind(prefix, 0) == 0; };
  const bool nn_linear = from("__torch__.torch.nn.modules.linear.") || from("__torch__.attrace.nn.");
  if (type_ends_with(c, ".Linear") && nn_linear) return ChainChild::Direct::linear;
  if (type_ends_with(c, ".Linear") && from("__torch__.attrace.models.")) return ChainChild::Direct::addmm;
  if (type_ends_with(c, ".ReLU") && (from("__torch__.attrace.nn.") || from("__torch__.attrace.models.")))
    return ChainChild::Direct::relu;
  if (type_ends_with(c, ".ReLU") && from("__torch__.torch.nn.modules.activation.") && c.hasattr("inplace") &&
      c.attr("inplace").isBool() && !c.attr("inplace").toBool())
    return ChainChild::Direct::relu;
  return ChainChild::Direct::none;
}

torch::Tensor run_child(ChainChild& c, const torch::Tensor& h) {
  switch (c.direct) {
    case ChainChild::Direct::linear:
      return at::linear(h, c.module.attr("weight").toTensor(),
                        c.bias ? c10::optional<at::Tensor>(c.module.attr("bias").toTensor()) : c10::nullopt);
    case ChainChild::Direct::addmm:
      return at::addmm(c.module.attr("bias").toTensor(), h, c.module.attr("weight").toTensor().t());
    case ChainChild::Direct::relu:
      return at::relu(h);
    default:
      return c.module.forward({h}).toTensor();
  }
}

// A Conv2d child's geometry, as the CLI's chain path reads it (groups 1, zero padding; padding
// an int pair, "valid", or "same" with even totals). InputError naming the child otherwise.
ConvGeometry read_conv(const torch::jit::Module& c, const std::string& name, const torch::Tensor& weight) {
  const std::string what = "recorder: Conv2d child '" + name + "'";
  ATTRACE_CHECK(weight.dim() == 4, InputError, what + " has a weight that is not 4-D");
  for (const char* attr : {"stride", "padding", "dilation", "groups", "padding_mode"})
    ATTRACE_CHECK(c.hasattr(attr), InputError, what + " does not record its " + std::string(attr) + " (script the model, do not trace it)");
  ATTRACE_CHECK(c.attr("groups").isInt() && c.attr("groups").toInt() == 1, InputError, what + ": groups must be 1");
  ATTRACE_CHECK(c.attr("padding_mode").isString() && c.attr("padding_mode").toStringRef() == "zeros", InputError,
                what + ": only zero padding is recorded");
  ConvGeometry g;
  g.c_in = weight.size(1);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  ATTRACE_CHECK(int_pair(c, "stride", g.sh, g.sw) && int_pair(c, "dilation", g.dh, g.dw), InputError,
                what + ": stride or dilation is not an int pair");
  if (c.attr("padding").isString()) {
    const std::string mode = c.attr("padding").toStringRef();
    if (mode == "valid") {
      g.ph = g.pw = 0;
    } else {
      ATTRACE_CHECK(mode == "same" && g.dh * (g.kh - 1) % 2 == 0 && g.dw * (g.kw - 1) % 2 == 0, InputError,
                    what + ": padding '" + mode + "' is not recorded (an odd 'same' total is asymmetric)");
      g.ph = g.dh * (g.kh - 1) / 2;
      g.pw = g.dw * (g.kw - 1) / 2;
    }
  } else {
    ATTRACE_CHECK(int_pair(c, "padding", g.ph, g.pw), InputError, what + ": padding is not an int pair or 'valid'/'same'");
  }
  ATTRACE_CHECK(g.sh >= 1 && g.sw >= 1 && g.dh >= 1 && g.dw >= 1 && g.ph >= 0 && g.pw >= 0, InputError,
                what + " has an unusual stride, dilation or padding");
  return g;
}

// The chain as the CLI's gradient path lays it out (gradients.cpp, build_chain): nested
// Sequentials flattened, children named by their path, so layer names and order match.
std::vector<ChainChild> flatten_chain(const torch::jit::Module& model, std::vector<RecordedLayer>& layers) {
  ATTRACE_CHECK(type_ends_with(model, ".Sequential"), InputError,
                "recorder: the model is a " + type_name(model) + ", not a Sequential (TorchScript)");
  std::vector<ChainChild> chain;
  std::function<void(const torch::jit::Module&, const std::string&)> walk = [&](const torch::jit::Module& m,
                                                                                const std::string& prefix) {
    for (const auto& c : m.named_children()) {
      const std::string name = prefix + c.name;
      if (type_ends_with(c.value, ".Sequential")) {
        walk(c.value, name + ".");
        continue;
      }
      ChainChild ch{c.value, name};
      std::vector<std::pair<std::string, torch::Tensor>> ps;
      for (const auto& p : c.value.named_parameters(true)) ps.emplace_back(p.name, p.value);
      if (!ps.empty()) {
        const bool linear = type_ends_with(c.value, ".Linear"), conv = type_ends_with(c.value, ".Conv2d");
        const bool ok = (linear || conv) && ps[0].first == "weight" && ps[0].second.dim() == (linear ? 2 : 4) &&
                        (ps.size() == 1 || (ps.size() == 2 && ps[1].first == "bias" && ps[1].second.dim() == 1 &&
                                            ps[1].second.size(0) == ps[0].second.size(0)));
        ATTRACE_CHECK(ok, InputError,
                      "recorder: child '" + name + "' (" + type_name(c.value) +
                          ") has parameters and is not a Linear or Conv2d layer; the recorder covers those only");
        ch.layer = static_cast<int>(layers.size());
        ch.conv = conv;
        ch.n_out = ps[0].second.size(0);
        ch.bias = ps.size() == 2;
        RecordedLayer rl;
        rl.name = name;
        rl.d_out = ch.n_out;
        rl.bias = ch.bias;
        if (conv) {
          rl.conv = true;
          rl.geometry = read_conv(c.value, name, ps[0].second);
          ch.n_in = rl.geometry.c_in;
          rl.d_in = rl.geometry.c_in * rl.geometry.kh * rl.geometry.kw + (ch.bias ? 1 : 0);
        } else {
          ch.n_in = ps[0].second.size(1);
          rl.d_in = ch.n_in + (ch.bias ? 1 : 0);
        }
        layers.push_back(rl);
      }
      ch.direct = direct_kind(c.value);
      chain.push_back(ch);
    }
  };
  walk(model, "");
  for (const auto& p : model.named_parameters(false))
    throw InputError("recorder: the Sequential holds a parameter of its own ('" + p.name + "')");
  return chain;
}

// A double that TOML reads back as the same float (never as an integer).
std::string toml_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// gradients.parameters of a recording's config: ["*"] when its layers hold every parameter (a
// Sequential of Linear / Conv2d layers), else their weights and biases by name (a model whose
// Embedding or LayerNorm parameters were not recorded; Python's attrace.Recorder).
std::string recorded_parameters(const RecordingReader& rec) {
  std::vector<std::string> names;
  for (const auto& l : rec.layers()) {
    names.push_back(l.name + ".weight");
    if (l.bias) names.push_back(l.name + ".bias");
  }
  std::vector<std::string> all;
  for (const auto& p : rec.parameters()) all.push_back(p.name);
  std::vector<std::string> a = names, b = all;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  if (a == b) return "[\"*\"]";
  for (const auto& n : names)
    ATTRACE_CHECK(std::binary_search(b.begin(), b.end(), n), InputError,
                  "recording: layer parameter '" + n + "' is not among the recorded parameters");
  return nlohmann::json(names).dump();
}

int64_t total_numel(const std::vector<torch::Tensor>& ts) {
  int64_t n = 0;
  for (const auto& t : ts) n += t.numel();
  return n;
}

// The store rows of window c (recorded steps [c W, c W + W)): W = 1, the step's rows as
// recorded; else one row per distinct example of the window (ids in order of first appearance),
// the sum over the steps that saw it of (sqrt(lr_t) / sqrt(lr_sum)) times its recorded row
// (sqrt(lr_t) P g_t(i)), accumulated in float64 in step order and rounded to float32 once:
// sum_t (lr_t / sqrt(lr_sum)) P_c g_t(i), so that with the query features of checkpoint c
// (lr = lr_sum: sqrt(lr_sum) P_c g_c(q)) the score is sum_t lr_t <P_c g_t(i), P_c g_c(q)>.
RecordedStep window_rows(const RecordingReader& rec, size_t c, size_t W, double lr_sum) {
  if (W == 1) return rec.step(c);
  const int64_t width = rec.width();
  RecordedStep out;
  std::map<int64_t, size_t> slot;
  std::vector<double> acc;
  const size_t last = std::min(rec.steps(), (c + 1) * W);
  for (size_t t = c * W; t < last; ++t) {
    const RecordedStep s = rec.step(t);
    if (t == c * W) {
      out.step = s.step;
      out.lr = lr_sum;
    }
    const double f = lr_sum > 0 ? std::sqrt(s.lr) / std::sqrt(lr_sum) : 0.0;
    for (size_t k = 0; k < s.ids.size(); ++k) {
      auto [it, fresh] = slot.emplace(s.ids[k], out.ids.size());
      if (fresh) {
        out.ids.push_back(s.ids[k]);
        acc.resize(acc.size() + static_cast<size_t>(width), 0.0);
      }
      double* a = acc.data() + it->second * static_cast<size_t>(width);
      const float* r = s.rows.data() + k * static_cast<size_t>(width);
      for (int64_t j = 0; j < width; ++j) a[j] += f * static_cast<double>(r[j]);
    }
  }
  out.rows.resize(acc.size());
  for (size_t q = 0; q < acc.size(); ++q) out.rows[q] = static_cast<float>(acc[q]);
  return out;
}

}  // namespace

struct Recorder::Impl {
  torch::jit::Module model;
  torch::nn::Sequential nn{nullptr};  // a C++ frontend model whose TorchScript twin `model` is
  std::vector<ChainChild> chain;
  std::vector<RecordedLayer> layers;
  std::vector<torch::Tensor> params;
  std::unique_ptr<RecordingWriter> writer;
  int64_t next_step = 0;
  bool capturing = false, checked = false;
  std::vector<torch::Tensor> inputs, grads;
};

Recorder::Recorder(torch::jit::Module& model, const std::string& dir, const RecorderSettings& settings)
    : impl_(std::make_unique<Impl>()) {
  attach(model, dir, settings);
}

Recorder::Recorder(torch::nn::Sequential& model, const std::string& dir, const RecorderSettings& settings)
    : impl_(std::make_unique<Impl>()) {
  ATTRACE_CHECK(!model.is_empty(), InputError, "recorder: the torch::nn::Sequential is empty (a null holder)");
  impl_->nn = model;
  torch::jit::Module twin = sequential_to_torchscript(model);
  twin.eval();  // the template (and so every finalized checkpoint) in evaluation mode; forward() follows the model
  attach(twin, dir, settings);
}

void Recorder::attach(torch::jit::Module& model, const std::string& dir, const RecorderSettings& settings) {
  auto& m = *impl_;
  m.model = model;  // a handle: the same module object, its parameters shared
  m.chain = flatten_chain(model, m.layers);
  std::vector<RecordedParameter> info;
  for (const auto& p : model.named_parameters(true)) {
    ATTRACE_CHECK(p.value.scalar_type() == torch::kFloat, InputError,
                  "recorder: parameter '" + p.name + "' is not float32 (the recorder records float32 models)");
    info.push_back({p.name, p.value.sizes().vec()});
    m.params.push_back(p.value);
  }
  // The template: the model's structure, from which finalize rebuilds each step's checkpoint.
  const std::string tmpl = (fs::temp_directory_path() / ("attrace-template-" + std::to_string(::getpid()) + ".pt")).string();
  model.save(tmpl);
  try {
    m.writer = std::make_unique<RecordingWriter>(dir, settings, m.layers, std::move(info), tmpl);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmpl, ec);
    throw;
  }
  std::error_code ec;
  fs::remove(tmpl, ec);
  m.next_step = m.writer->last_step() + 1;
}

Recorder::~Recorder() = default;

at::Tensor Recorder::forward(const at::Tensor& x) {
  auto& m = *impl_;
  if (!m.nn.is_empty() && m.model.is_training() != m.nn->is_training()) m.model.train(m.nn->is_training());
  m.capturing = m.writer->wants(m.next_step) && torch::GradMode::is_enabled();
  // A step that is not recorded runs the model's own forward: no cost, and the same bits as
  // training without the recorder (TorchScript may fuse what the child-by-child path does not).
  if (!m.capturing) return m.model.forward({x}).toTensor();
  m.inputs.assign(m.layers.size(), torch::Tensor());
  m.grads.assign(m.layers.size(), torch::Tensor());
  // For the one-time check below: the random state the children start from (a Dropout child
  // in training mode draws its mask from it; the check replays the same draws).
  at::Tensor rng_before;
  if (!m.checked) rng_before = at::detail::getDefaultCPUGenerator().get_state();
  torch::Tensor h = x;
  for (auto& c : m.chain) {
    if (c.layer < 0) {
      h = run_child(c, h);
      continue;
    }
    const auto l = static_cast<size_t>(c.layer);
    m.inputs[l] = h.detach();
    h = run_child(c, h);
    if (h.requires_grad()) {
      Impl* self = impl_.get();
      h.register_hook([self, l](const torch::Tensor& g) { self->grads[l] = g.detach(); });
    }
  }
  if (!m.checked) {
    // Once: the chain must be the model's own forward (a Sequential whose forward does more
    // would be recorded wrongly).
    torch::NoGradGuard ng;
    auto gen = at::detail::getDefaultCPUGenerator();
    const at::Tensor rng_after = gen.get_state();
    gen.set_state(rng_before);
    const auto ref = m.model.forward({x}).toTensor();
    gen.set_state(rng_after);  // training goes on as if the check had not run
    const double scale = std::max(1e-30, ref.abs().max().item<double>());
    ATTRACE_CHECK(ref.sizes() == h.sizes() && (ref - h.detach()).abs().max().item<double>() <= 1e-4 * scale, InputError,
                  "recorder: running the model's children in order does not give its forward(); the recorder needs a plain "
                  "Sequential");
    m.checked = true;
  }
  return h;
}

bool Recorder::step(const std::vector<int64_t>& ids, double lr, double loss_scale) {
  auto& m = *impl_;
  const int64_t t = m.next_step++;
  if (!m.capturing) return false;
  m.capturing = false;
  const auto batch = static_cast<int64_t>(ids.size());
  const std::string what = "recorder: step " + std::to_string(t);
  ATTRACE_CHECK(batch > 0, InputError, what + ": no example ids");
  // The batch-mean loss scaled each example's gradient by 1/B: undone by the same factor, in
  // float32 by the writer (exact when it is a power of two, docs/recorder.md).
  const float scale = static_cast<float>(loss_scale > 0 ? loss_scale : static_cast<double>(batch));
  // Only views here (no torch operation unless a tensor is not float32, contiguous and on the
  // CPU): the writer copies the bytes into its queue and does the rest in the background.
  std::vector<torch::Tensor> keep;
  keep.reserve(2 * m.layers.size() + m.params.size());  // the pointers taken stay valid
  std::vector<LayerBatch> lb;
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const auto& L = m.layers[l];
    ATTRACE_CHECK(m.inputs[l].defined() && m.grads[l].defined(), InputError,
                  what + ": no gradient reached layer '" + L.name +
                      "' (call step() after the backward pass of the loss of this step's forward())");
    // float32 and contiguous as training holds them: no torch call (each costs microseconds).
    const auto as_f32 = [&](const torch::Tensor& t) {
      if (t.scalar_type() == torch::kFloat && t.is_contiguous() && t.device().is_cpu()) return t;
      keep.push_back(t.to(torch::kCPU, torch::kFloat).contiguous());
      return keep.back();
    };
    const torch::Tensor x = as_f32(m.inputs[l]);
    const torch::Tensor g = as_f32(m.grads[l]);
    LayerBatch c;
    c.x = x.data_ptr<float>();
    c.delta = g.data_ptr<float>();
    c.delta_scale = scale;
    if (L.conv) {
      ATTRACE_CHECK(x.dim() == 4 && x.size(0) == batch && x.size(1) == L.geometry.c_in && g.dim() == 4 && g.size(0) == batch &&
                        g.size(1) == L.d_out,
                    InputError,
                    what + ": " + std::to_string(batch) + " ids for Conv2d '" + L.name + "' inputs of shape " +
                        std::to_string(x.dim() ? x.size(0) : 0) + " x ...");
      c.height = x.size(2);
      c.width = x.size(3);
      ATTRACE_CHECK(g.size(2) * g.size(3) == ConvGeometry::out_size(c.height, L.geometry.ph, L.geometry.dh, L.geometry.kh, L.geometry.sh) *
                                                 ConvGeometry::out_size(c.width, L.geometry.pw, L.geometry.dw, L.geometry.kw, L.geometry.sw),
                    InputError, what + ": Conv2d '" + L.name + "': output gradient does not fit the recorded geometry");
    } else {
      const int64_t n_in = L.d_in - (L.bias ? 1 : 0);
      ATTRACE_CHECK(x.dim() >= 1 && x.size(0) == batch && x.numel() % (batch * n_in) == 0, InputError,
                    what + ": " + std::to_string(batch) + " ids for a batch of " + std::to_string(x.dim() ? x.size(0) : 0) + " rows");
      c.positions = x.numel() / (batch * n_in);
      c.x_bias_column = false;
      ATTRACE_CHECK(g.numel() == batch * c.positions * L.d_out, InputError,
                    what + ": layer '" + L.name + "': output gradient of " + std::to_string(g.numel()) + " values");
    }
    lb.push_back(c);
  }
  std::vector<const float*> pp;
  for (const auto& p : m.params) {
    if (p.is_contiguous()) {
      pp.push_back(p.data_ptr<float>());
    } else {
      keep.push_back(p.detach().contiguous());
      pp.push_back(keep.back().data_ptr<float>());
    }
  }
  m.writer->record(t, lr, ids.data(), batch, lb, pp);
  m.inputs.clear();
  m.grads.clear();
  return true;
}

int64_t Recorder::current_step() const { return impl_->next_step; }
void Recorder::set_step(int64_t step) { impl_->next_step = step; }
void Recorder::flush() { impl_->writer->flush(); }
void Recorder::close() { impl_->writer->close(); }
const RecordingWriter& Recorder::writer() const { return *impl_->writer; }

FinalizeSummary finalize_recording(const FinalizeOptions& o) {
  const RecordingReader rec(o.recording);
  ATTRACE_CHECK(rec.steps() > 0, InputError, o.recording + ": no durable recorded step to finalize");
  const fs::path dir = fs::absolute(o.recording);
  const auto& rs = rec.settings();
  ATTRACE_CHECK(rs.seed <= static_cast<uint64_t>(INT64_MAX), InputError,
                o.recording + ": seed " + std::to_string(rs.seed) + " does not fit a config file's integer");

  // One TorchScript checkpoint per recorded step: the template with that step's parameters.
  // Written under a temporary name, synced and renamed, so an existing file is complete.
  torch::jit::Module tmpl = torch::jit::load(rec.template_file());
  std::vector<torch::Tensor> tp;
  {
    size_t k = 0;
    for (const auto& p : tmpl.named_parameters(true)) {
      ATTRACE_CHECK(k < rec.parameters().size() && rec.parameters()[k].name == p.name &&
                        rec.parameters()[k].shape == p.value.sizes().vec(),
                    InputError, rec.template_file() + ": parameter '" + p.name + "' does not match recording.json");
      tp.push_back(p.value);
      ++k;
    }
    ATTRACE_CHECK(k == rec.parameters().size(), InputError, rec.template_file() + ": parameters do not match recording.json");
  }
  const auto W = static_cast<size_t>(rs.window);
  std::string run_text =
      W == 1 ? "# Recorded steps of a training run (attrace recorder): one checkpoint per recorded step,\n"
               "# saved from the parameters the step's gradients were taken at, with the lr of that step.\n"
             : "# Recorded steps of a training run (attrace recorder): one checkpoint per window of " + std::to_string(W) +
                   " recorded steps,\n# saved from the parameters at its first step; lr: the sum of its steps' lr.\n";
  std::vector<RecordedStep> meta_steps;  // every recorded step: ids, step, lr
  for (size_t t = 0; t < rec.steps(); ++t) {
    RecordedStep s = rec.step(t, false);
    s.parameters.clear();
    meta_steps.push_back(std::move(s));
  }
  // Window c: recorded steps [c W, min((c + 1) W, steps)); its lr is the sum of theirs.
  const size_t n_windows = (meta_steps.size() + W - 1) / W;
  std::vector<double> window_lr(n_windows, 0.0);
  for (size_t t = 0; t < meta_steps.size(); ++t) window_lr[t / W] += meta_steps[t].lr;
  for (size_t c = 0; c < n_windows; ++c) {
    RecordedStep s = rec.step(c * W, false);  // the window's first step: its parameters
    ATTRACE_CHECK(static_cast<int64_t>(s.parameters.size()) == total_numel(tp), InputError,
                  o.recording + ": recorded step " + std::to_string(s.step) + " lacks the parameters of its window");
    char name[32];
    std::snprintf(name, sizeof name, "ckpt_%06zu.pt", c);
    const std::string path = (dir / name).string();
    if (!fs::exists(path)) {
      {
        torch::NoGradGuard ng;
        int64_t at = 0;
        for (auto& t : tp) {
          t.copy_(torch::from_blob(s.parameters.data() + at, t.sizes(), torch::kFloat));
          at += t.numel();
        }
      }
      const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
      tmpl.save(tmp);
      connectors::fsync_path(tmp);
      fs::rename(tmp, path);
    }
    run_text += "\n[[checkpoint]]\nfile = \"" + std::string(name) + "\"\nstep = " + std::to_string(s.step) +
                "\nlr = " + toml_double(W == 1 ? s.lr : window_lr[c]) + "\n";
  }
  connectors::fsync_path(dir.string());
  FinalizeSummary summary;
  // The recording's path as the caller gave it (relative stays relative): a store's spec records
  // the run file as the config names it, so `attrace score -c RECORDING/attrace.toml` from the
  // same directory must find the same path.
  summary.run_file = (fs::path(o.recording) / "run.toml").string();
  summary.config_file = (fs::path(o.recording) / "attrace.toml").string();
  connectors::write_file_atomic(summary.run_file, run_text);
  const bool exact = rs.projection == Projection::none;
  const std::string projection_text =
      exact ? "[projection]\nkind = \"none\"\n\n[features]\ndtype = \"f32\"\nfactored = \"" + to_string(rs.factored) + "\"\n"
            : "[projection]\nkind = \"kronecker\"\nk = " + std::to_string(rs.k) + "\nseed = " + std::to_string(rs.seed) +
                  "\ndistribution = \"" + (rs.distribution == kernels::ProjectionKind::gaussian ? "gaussian" : "rademacher") +
                  "\"\n\n[features]\ndtype = \"" + connectors::to_string(rs.dtype) + "\"\n";
  const std::string config_text =
      "# attrace configuration for a recording (written by finalize_recording; docs/recorder.md)\n"
      "[run]\ncheckpoints = \"run.toml\"\n\n[data]\ntrain = " +
      nlohmann::json(fs::absolute(o.train_file).string()).dump() + "\nquery = " +
      nlohmann::json(fs::absolute(o.query_file).string()).dump() + "\n\n[gradients]\nloss = " + nlohmann::json(o.loss).dump() +
      "\nparameters = " + recorded_parameters(rec) + "\nprecision = \"fp32\"\n\n" + projection_text;
  if (o.config_file.empty()) {
    connectors::write_file_atomic(summary.config_file, config_text);
  } else {
    summary.config_file = o.config_file;
  }

  const Config config = load_config(summary.config_file);
  if (!o.config_file.empty()) {
    // A caller's config: it must describe this recording (the store's spec is made from it).
    const std::string where = o.config_file + ": ";
    std::error_code ec;
    ATTRACE_CHECK(fs::equivalent(config.run_file, summary.run_file, ec), InputError,
                  where + "run.checkpoints is '" + config.run_file + "', the recording's run file is '" + summary.run_file + "'");
    ATTRACE_CHECK(config.projection == rs.projection, InputError,
                  where + "projection.kind = \"" + to_string(config.projection) + "\", the recording's is \"" +
                      to_string(rs.projection) + "\"");
    ATTRACE_CHECK(config.precision == Precision::fp32, InputError, where + "gradients.precision must be fp32 (the recording's)");
    if (exact) {
      ATTRACE_CHECK(config.factored == rs.factored, InputError,
                    where + "features.factored = \"" + to_string(config.factored) + "\", the recording's is \"" +
                        to_string(rs.factored) + "\"");
    } else {
      ATTRACE_CHECK(config.projection_k == rs.k, InputError,
                    where + "projection.k = " + std::to_string(config.projection_k) + ", the recording's is " + std::to_string(rs.k));
      ATTRACE_CHECK(config.projection_seed == rs.seed, InputError,
                    where + "projection.seed = " + std::to_string(config.projection_seed) + ", the recording's is " +
                        std::to_string(rs.seed));
      ATTRACE_CHECK(
          (config.projection_distribution == Distribution::gaussian) == (rs.distribution == kernels::ProjectionKind::gaussian),
          InputError, where + "projection.distribution differs from the recording's");
    }
    ATTRACE_CHECK(feature_dtype_of(config) == rs.dtype, InputError,
                  where + "features.dtype = '" + connectors::to_string(feature_dtype_of(config)) + "', the recording's is '" +
                      connectors::to_string(rs.dtype) + "'");
  }
  const auto run = connectors::read_run_file(config.run_file);
  const auto ds = connectors::read_dataset(config.train_file, true);
  // Rows of the store for each recorded id: the id itself, or (another recorded dataset) the row
  // of the example with the same example id, -1 when this training set lacks it.
  std::vector<int64_t> row_of;
  int64_t recorded_n = ds.size();
  std::string recorded_file = config.train_file;
  if (!o.recorded_train.empty()) {
    const auto rd = connectors::read_dataset(o.recorded_train, true);
    recorded_n = rd.size();
    recorded_file = o.recorded_train;
    std::map<std::string, int64_t> where;
    for (int64_t i = 0; i < ds.size(); ++i) where.emplace(ds.ids[static_cast<size_t>(i)], i);
    row_of.assign(static_cast<size_t>(rd.size()), -1);
    for (int64_t i = 0; i < rd.size(); ++i) {
      const auto it = where.find(rd.ids[static_cast<size_t>(i)]);
      if (it != where.end()) row_of[static_cast<size_t>(i)] = it->second;
    }
  }
  for (const auto& s : meta_steps)
    for (const auto id : s.ids)
      ATTRACE_CHECK(id < recorded_n, InputError,
                    o.recording + ": step " + std::to_string(s.step) + " holds example id " + std::to_string(id) + " but '" +
                        recorded_file + "' has " + std::to_string(recorded_n) + " examples (ids are its row numbers)");
  auto backend = kernels::make_backend(to_string(config.device));
  connectors::StoreLayout layout;
  layout.spec = canonical(feature_spec(config, run, ds, false));
  layout.dtype = rs.dtype;
  layout.rows = ds.size();
  layout.ids = ds.ids;
  layout.tranche = ds.tranche;
  layout.digests = connectors::example_digests(ds);
  for (size_t c = 0; c < n_windows; ++c) {
    // The featurizer's plan for the saved checkpoint must be the one the rows were made with.
    Featurizer fz(config, run, c, {&ds}, *backend);
    const std::string what = o.recording + ": step " + std::to_string(meta_steps[c * W].step) + " (checkpoint " + std::to_string(c) + ")";
    if (exact) {
      const FeatureLayout want = recorded_exact_layout(rec.layers(), rs.factored);
      ATTRACE_CHECK(fz.use().layout == want && fz.width() == rec.width(), InputError,
                    what + ": the featurizer lays out exact rows of " + std::to_string(fz.width()) + " columns (" +
                        std::to_string(fz.use().layout.factored.size()) + " factored layers), the recording " +
                        std::to_string(rec.width()) + " (" + std::to_string(want.factored.size()) + ")");
      nlohmann::json meta = checkpoint_use_json(config, fz.use());
      meta["recording"] = {{"step", meta_steps[c].step},
                           {"lr", meta_steps[c].lr},
                           {"examples", meta_steps[c].ids.size()},
                           {"rows", "recorded exact gradients for the examples of this step's batch, zero rows for the others"}};
      layout.checkpoints.push_back({fz.width(), fz.weight(), canonical(meta)});
      continue;
    }
    const auto plan = plan_recorded_projection(rec.layers(), rs.k, c);
    const auto& use = fz.use().kronecker;
    ATTRACE_CHECK(use.size() == plan.size() && fz.width() == rec.width(), InputError,
                  what + ": the featurizer plans " + std::to_string(use.size()) + " layers of " + std::to_string(fz.width()) +
                      " columns, the recording " + std::to_string(plan.size()) + " of " + std::to_string(rec.width()));
    for (size_t l = 0; l < plan.size(); ++l) {
      const auto &a = use[l], &b = plan[l];
      ATTRACE_CHECK(a.layer == b.layer && a.d_in == b.d_in && a.d_out == b.d_out && a.k_in == b.k_in && a.k_out == b.k_out &&
                        a.stream_in == b.stream_in && a.stream_out == b.stream_out,
                    InputError,
                    what + ": layer " + std::to_string(l) + " is '" + a.layer + "' " + std::to_string(a.d_in) + "x" +
                        std::to_string(a.d_out) + " for the featurizer, '" + b.layer + "' " + std::to_string(b.d_in) + "x" +
                        std::to_string(b.d_out) + " in the recording");
    }
    nlohmann::json meta = checkpoint_use_json(config, fz.use());
    if (W == 1) {
      meta["recording"] = {{"step", meta_steps[c].step},
                           {"lr", meta_steps[c].lr},
                           {"examples", meta_steps[c].ids.size()},
                           {"rows", "recorded features for the examples of this step's batch, zero rows for the others"}};
    } else {
      const size_t last = std::min(meta_steps.size(), (c + 1) * W) - 1;
      nlohmann::json steps = nlohmann::json::array(), lrs = nlohmann::json::array();
      for (size_t t = c * W; t <= last; ++t) {
        steps.push_back(meta_steps[t].step);
        lrs.push_back(meta_steps[t].lr);
      }
      meta["recording"] = {{"window", W},
                           {"steps", steps},
                           {"lr", lrs},
                           {"lr_sum", window_lr[c]},
                           {"rows", "per example: sum over the window's steps that saw it of (sqrt(lr_t) / sqrt(lr_sum)) "
                                    "times its recorded row (in float64, steps in order), zero rows for the others"}};
    }
    layout.checkpoints.push_back({fz.width(), fz.weight(), canonical(meta)});
  }
  const int64_t width = rec.width();
  layout.chunk_rows = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(1, width * 4), 1, 4096);
  connectors::FeatureStoreWriter writer(o.store, layout, o.replace);
  std::vector<float> buf;
  for (size_t c = 0; c < n_windows; ++c) {
    int64_t b0 = writer.rows_done(c);
    if (b0 == ds.size()) continue;
    const RecordedStep s = window_rows(rec, c, W, window_lr[c]);
    std::vector<std::pair<int64_t, int64_t>> order;  // (dataset row, batch row)
    for (size_t k = 0; k < s.ids.size(); ++k) {
      const int64_t row = row_of.empty() ? s.ids[k] : row_of[static_cast<size_t>(s.ids[k])];
      if (row >= 0) order.emplace_back(row, static_cast<int64_t>(k));
    }
    std::sort(order.begin(), order.end());
    auto it = std::lower_bound(order.begin(), order.end(), std::make_pair(b0, int64_t{-1}));
    for (; b0 < ds.size(); b0 += layout.chunk_rows) {
      const int64_t b1 = std::min(ds.size(), b0 + layout.chunk_rows);
      buf.assign(static_cast<size_t>((b1 - b0) * width), 0.0f);
      for (; it != order.end() && it->first < b1; ++it)
        std::copy_n(s.rows.data() + it->second * width, width, buf.data() + (it->first - b0) * width);
      writer.write(c, b0, b1, buf.data());
    }
    summary.rows += static_cast<int64_t>(order.size());
  }
  summary.steps = static_cast<int64_t>(meta_steps.size());
  summary.checkpoints = static_cast<int64_t>(n_windows);
  return summary;
}

}  // namespace attrace::engine
