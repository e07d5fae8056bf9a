#include <attrace/connectors/fs.hpp>
#include <attrace/engine/gpt.hpp>
#include <attrace/error.hpp>
#include <attrace/interrupt.hpp>
#include <attrace/random.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

namespace attrace::engine {
namespace {

namespace fs = std::filesystem;

// TorchScript source of each module kind. Submodules are called through .forward(): modules
// built in C++ have no __call__. Linear calls torch.linear so that graph rewriting sees one
// aten::linear per layer (addmm/matmul chains would hide the layer).
const char* const kLinearSource = "def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n";
const char* const kLinearNoBiasSource = "def forward(self, x):\n    return torch.linear(x, self.weight)\n";
const char* const kEmbeddingSource = "def forward(self, ids):\n    return torch.embedding(self.weight, ids)\n";
const char* const kLayerNormSource =
    "def forward(self, x):\n"
    "    return torch.layer_norm(x, [x.size(-1)], self.weight, self.bias, 1e-5)\n";
const char* const kMlpSource =
    "def forward(self, x):\n"
    "    return self.fc2.forward(torch.gelu(self.fc1.forward(x)))\n";
// Heads are split from the projections' outputs; the causal mask is built per call (no buffer,
// so the saved file holds parameters only) and applied with -inf before the softmax. Source
// compiled from C++ has no Python resolver, so names like torch.bool are unavailable (hence gt).
const char* const kAttentionSource =
    "def forward(self, x):\n"
    "    B = x.size(0)\n"
    "    T = x.size(1)\n"
    "    C = x.size(2)\n"
    "    H = self.n_head\n"
    "    D = C // H\n"
    "    q = self.q.forward(x).view([B, T, H, D]).transpose(1, 2)\n"
    "    k = self.k.forward(x).view([B, T, H, D]).transpose(1, 2)\n"
    "    v = self.v.forward(x).view([B, T, H, D]).transpose(1, 2)\n"
    "    att = torch.matmul(q, k.transpose(2, 3)) * self.scale\n"
    "    future = att.new_ones([T, T]).triu(1).gt(0.5)\n"
    "    att = torch.softmax(att.masked_fill(future, float(\"-inf\")), -1)\n"
    "    y = torch.matmul(att, v).transpose(1, 2).reshape([B, T, C])\n"
    "    return self.o.forward(y)\n";
const char* const kBlockSource =
    "def forward(self, x):\n"
    "    x = x + self.attn.forward(self.ln1.forward(x))\n"
    "    return x + self.mlp.forward(self.ln2.forward(x))\n";

// Makes modules of one TorchScript class per kind: the first instance defines the class and its
// method, later ones reuse the type, so the saved file names each kind once (gpt.Linear, not one
// mangled class per layer).
class ModuleFactory {
 public:
  ModuleFactory() : cu_(std::make_shared<torch::jit::CompilationUnit>()) {}

  torch::jit::Module make(const std::string& kind, const std::vector<std::pair<std::string, torch::Tensor>>& params,
                          const std::vector<std::pair<std::string, torch::jit::Module>>& children,
                          const std::vector<std::pair<std::string, c10::IValue>>& attributes, const std::string& source) {
    auto it = types_.find(kind);
    const bool first = it == types_.end();
    torch::jit::Module m = first ? torch::jit::Module(c10::QualifiedName("__torch__.attrace.gpt." + kind), cu_, false)
                                 : torch::jit::Module(cu_, it->second);
    for (const auto& [name, t] : params) m.register_parameter(name, t, false);
    for (const auto& [name, child] : children) m.register_module(name, child);
    for (const auto& [name, v] : attributes) m.register_attribute(name, v.type(), v);
    if (first) {
      m.define(source);
      types_.emplace(kind, m.type());
    }
    return m;
  }

 private:
  std::shared_ptr<torch::jit::CompilationUnit> cu_;
  std::map<std::string, c10::ClassTypePtr> types_;
};

// Initial weights, drawn in module-building order from one seeded generator.
class Init {
 public:
  explicit Init(uint64_t seed) : gen_(at::detail::createCPUGenerator(seed)) {}
  torch::Tensor normal(std::vector<int64_t> shape, double std) {
    return torch::empty(shape, torch::kFloat).normal_(0.0, std, gen_);
  }

 private:
  at::Generator gen_;
};

constexpr double kInitStd = 0.02;

int64_t checked_add(int64_t a, int64_t b) {
  int64_t r = 0;
  ATTRACE_CHECK(!__builtin_add_overflow(a, b, &r), InputError, "GptConfig: parameter count overflows int64");
  return r;
}
int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r = 0;
  ATTRACE_CHECK(!__builtin_mul_overflow(a, b, &r), InputError, "GptConfig: parameter count overflows int64");
  return r;
}

// Logits of a forward pass: the tensor itself, or the "logits" entry of a dict output.
torch::Tensor logits_of(const c10::IValue& out) {
  if (out.isTensor()) return out.toTensor();
  if (out.isGenericDict()) {
    const auto d = out.toGenericDict();
    const auto it = d.find(c10::IValue(std::string("logits")));
    ATTRACE_CHECK(it != d.end() && it->value().isTensor(), InputError,
                  "language model: forward returned a dict without a tensor entry 'logits'");
    return it->value().toTensor();
  }
  throw InputError("language model: forward must return the logits tensor or a dict with 'logits', got " +
                   out.tagKind());
}

// The dataset's token targets, or the next-token targets derived from its inputs and lengths.
std::vector<int32_t> lm_targets(const connectors::Dataset& ds) {
  const std::string what = ds.path.empty() ? std::string("token dataset") : ds.path;
  ATTRACE_CHECK(ds.input_kind == connectors::InputKind::integers && ds.input_shape.size() == 2, InputError,
                what + ": next-token targets need integer inputs of shape [N, T]");
  const int64_t n = ds.input_shape[0], t = ds.input_shape[1];
  if (!ds.token_targets.empty()) {
    ATTRACE_CHECK(static_cast<int64_t>(ds.token_targets.size()) == n * t, InputError,
                  what + ": token_targets holds " + std::to_string(ds.token_targets.size()) + " entries, expected N*T = " +
                      std::to_string(n * t));
    return ds.token_targets;
  }
  ATTRACE_CHECK(ds.lengths.empty() || static_cast<int64_t>(ds.lengths.size()) == n, InputError,
                what + ": lengths holds " + std::to_string(ds.lengths.size()) + " entries, expected N = " + std::to_string(n));
  for (int64_t i = 0; i < n && !ds.lengths.empty(); ++i) {
    const int64_t len = ds.lengths[static_cast<size_t>(i)];
    ATTRACE_CHECK(len >= 1 && len <= t, InputError,
                  what + ": example " + std::to_string(i) + " has length " + std::to_string(len) + " outside 1.." +
                      std::to_string(t));
  }
  return connectors::next_token_targets(ds);
}

struct TokenData {
  torch::Tensor tokens;   // int64 [N, T]
  torch::Tensor targets;  // int64 [N, T], kIgnoreTarget where no loss term
  std::vector<int64_t> length;  // positions worth running per example (last target + 1)
  int64_t n = 0, t = 0;
};

TokenData token_data(const connectors::Dataset& ds, const std::string& what) {
  ATTRACE_CHECK(ds.input_kind == connectors::InputKind::integers, InputError,
                what + ": a language model needs integer token inputs (input_kind = integers)");
  ATTRACE_CHECK(ds.input_shape.size() == 2, InputError, what + ": token inputs must have shape [N, T]");
  TokenData d;
  d.n = ds.input_shape[0];
  d.t = ds.input_shape[1];
  ATTRACE_CHECK(static_cast<int64_t>(ds.int_inputs.size()) == d.n * d.t, InputError,
                what + ": int_inputs holds " + std::to_string(ds.int_inputs.size()) + " ids, expected N*T = " +
                    std::to_string(d.n * d.t));
  const std::vector<int32_t> targets = lm_targets(ds);
  d.tokens = torch::from_blob(const_cast<int32_t*>(ds.int_inputs.data()), {d.n, d.t}, torch::kInt).to(torch::kLong);
  d.targets = torch::from_blob(const_cast<int32_t*>(targets.data()), {d.n, d.t}, torch::kInt).to(torch::kLong);
  d.length.assign(static_cast<size_t>(d.n), 1);
  for (int64_t i = 0; i < d.n; ++i)
    for (int64_t s = d.t - 1; s >= 0; --s)
      if (targets[static_cast<size_t>(i * d.t + s)] != connectors::kIgnoreTarget) {
        d.length[static_cast<size_t>(i)] = s + 1;
        break;
      }
  return d;
}

// Per-example mean next-token loss of a batch: logits [B, T, V], targets [B, T].
torch::Tensor per_example_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  const int64_t b = logits.size(0), t = logits.size(1), v = logits.size(2);
  const auto ce = torch::nn::functional::cross_entropy(
                      logits.reshape({b * t, v}), targets.reshape({b * t}),
                      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(
                          connectors::kIgnoreTarget))
                      .reshape({b, t});
  const auto counts = targets.ne(connectors::kIgnoreTarget).sum(1).clamp_min(1).to(ce.scalar_type());
  return ce.sum(1) / counts;
}

std::string format_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

void validate(const GptConfig& c) {
  auto positive = [](int64_t v, const char* field) {
    ATTRACE_CHECK(v >= 1, InputError, std::string("GptConfig.") + field + " must be >= 1, got " + std::to_string(v));
  };
  positive(c.vocab, "vocab");
  positive(c.context, "context");
  positive(c.d_model, "d_model");
  positive(c.layers, "layers");
  positive(c.heads, "heads");
  positive(c.d_ff, "d_ff");
  ATTRACE_CHECK(c.d_model % c.heads == 0, InputError,
                "GptConfig.heads (" + std::to_string(c.heads) + ") must divide d_model (" + std::to_string(c.d_model) + ")");
}

int64_t gpt_parameter_count(const GptConfig& c) {
  validate(c);
  const int64_t d = c.d_model;
  const int64_t linear_dd = checked_add(checked_mul(d, d), d);
  int64_t block = checked_mul(4, linear_dd);                                   // q, k, v, o
  block = checked_add(block, checked_add(checked_mul(d, c.d_ff), c.d_ff));     // fc1
  block = checked_add(block, checked_add(checked_mul(c.d_ff, d), d));          // fc2
  block = checked_add(block, 4 * d);                                           // ln1, ln2
  int64_t total = checked_mul(block, c.layers);
  total = checked_add(total, checked_mul(c.vocab, d));                         // tok_emb
  total = checked_add(total, checked_mul(c.context, d));                       // pos_emb
  total = checked_add(total, 2 * d);                                           // ln_f
  total = checked_add(total, checked_mul(c.vocab, d));                         // head
  if (c.head_bias) total = checked_add(total, c.vocab);
  return total;
}

torch::jit::Module build_gpt(const GptConfig& c) {
  validate(c);
  (void)gpt_parameter_count(c);  // refuses sizes whose count overflows
  torch::NoGradGuard no_grad;
  ModuleFactory f;
  Init init(c.seed);
  const int64_t d = c.d_model;
  const double residual_std = kInitStd / std::sqrt(2.0 * static_cast<double>(c.layers));

  auto linear = [&](int64_t in, int64_t out, double std, bool bias) {
    auto w = init.normal({out, in}, std);
    if (!bias) return f.make("LinearNoBias", {{"weight", w}}, {}, {}, kLinearNoBiasSource);
    return f.make("Linear", {{"weight", w}, {"bias", torch::zeros({out})}}, {}, {}, kLinearSource);
  };
  auto embedding = [&](int64_t rows) {
    return f.make("Embedding", {{"weight", init.normal({rows, d}, kInitStd)}}, {}, {}, kEmbeddingSource);
  };
  auto layer_norm = [&] {
    return f.make("LayerNorm", {{"weight", torch::ones({d})}, {"bias", torch::zeros({d})}}, {}, {}, kLayerNormSource);
  };

  auto tok_emb = embedding(c.vocab);
  auto pos_emb = embedding(c.context);
  std::vector<std::pair<std::string, torch::jit::Module>> top_children = {{"tok_emb", tok_emb}, {"pos_emb", pos_emb}};
  std::string body =
      "def forward(self, tokens):\n"
      "    pos = torch.cumsum(torch.ones_like(tokens), 1) - 1\n"
      "    x = self.tok_emb.forward(tokens) + self.pos_emb.forward(pos)\n";
  const double scale = 1.0 / std::sqrt(static_cast<double>(d / c.heads));
  for (int64_t l = 0; l < c.layers; ++l) {
    auto ln1 = layer_norm();
    auto q = linear(d, d, kInitStd, true);
    auto k = linear(d, d, kInitStd, true);
    auto v = linear(d, d, kInitStd, true);
    auto o = linear(d, d, residual_std, true);
    auto attn = f.make("CausalSelfAttention", {}, {{"q", q}, {"k", k}, {"v", v}, {"o", o}},
                       {{"n_head", c10::IValue(c.heads)}, {"scale", c10::IValue(scale)}}, kAttentionSource);
    auto ln2 = layer_norm();
    auto fc1 = linear(d, c.d_ff, kInitStd, true);
    auto fc2 = linear(c.d_ff, d, residual_std, true);
    auto mlp = f.make("Mlp", {}, {{"fc1", fc1}, {"fc2", fc2}}, {}, kMlpSource);
    auto block = f.make("Block", {}, {{"ln1", ln1}, {"attn", attn}, {"ln2", ln2}, {"mlp", mlp}}, {}, kBlockSource);
    const std::string name = "h" + std::to_string(l);
    top_children.emplace_back(name, block);
    body += "    x = self." + name + ".forward(x)\n";
  }
  top_children.emplace_back("ln_f", layer_norm());
  top_children.emplace_back("head", linear(d, c.vocab, kInitStd, c.head_bias));
  body += "    logits = self.head.forward(self.ln_f.forward(x))\n";
  body += c.dict_output ? "    return {\"logits\": logits}\n" : "    return logits\n";
  return f.make(c.dict_output ? "GPTDict" : "GPT", {}, top_children, {}, body);
}

void save_gpt(const std::string& path, const GptConfig& c) { build_gpt(c).save(path); }

std::vector<double> lm_example_losses(torch::jit::Module& model, const connectors::Dataset& ds, int64_t begin,
                                      int64_t end, int64_t batch_size) {
  const std::string what = ds.path.empty() ? std::string("token dataset") : ds.path;
  const TokenData d = token_data(ds, what);
  ATTRACE_CHECK(begin >= 0 && begin <= end && end <= d.n, InputError,
                what + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range");
  ATTRACE_CHECK(batch_size >= 1, InputError, "lm_example_losses: batch_size must be >= 1");
  torch::NoGradGuard no_grad;
  std::vector<double> out;
  out.reserve(static_cast<size_t>(end - begin));
  for (int64_t b0 = begin; b0 < end; b0 += batch_size) {
    const int64_t b1 = std::min(end, b0 + batch_size);
    const auto logits = logits_of(model.forward({d.tokens.slice(0, b0, b1)}));
    const auto loss = per_example_loss(logits.to(torch::kFloat), d.targets.slice(0, b0, b1)).to(torch::kDouble);
    const auto acc = loss.accessor<double, 1>();
    for (int64_t i = 0; i < b1 - b0; ++i) out.push_back(acc[i]);
  }
  return out;
}

LmTrainResult train_lm(torch::jit::Module& model, const connectors::Dataset& train, const LmTrainOptions& options) {
  const std::string what = train.path.empty() ? std::string("training set") : train.path;
  ATTRACE_CHECK(!options.out_dir.empty(), InputError, "train_lm: out_dir is empty");
  ATTRACE_CHECK(!options.phases.empty(), InputError, "train_lm: no phases (each phase ends with a checkpoint)");
  ATTRACE_CHECK(options.batch_size >= 1, InputError, "train_lm: batch_size must be >= 1");
  for (size_t k = 0; k < options.phases.size(); ++k) {
    const auto& p = options.phases[k];
    ATTRACE_CHECK(p.steps >= 1, InputError, "train_lm: phase " + std::to_string(k + 1) + " has " + std::to_string(p.steps) + " steps (>= 1)");
    ATTRACE_CHECK(std::isfinite(p.lr) && p.lr >= 0, InputError,
                  "train_lm: phase " + std::to_string(k + 1) + " lr must be finite and >= 0, got " + format_double(p.lr));
  }
  ATTRACE_CHECK(std::isfinite(options.clip_norm) && options.clip_norm >= 0, InputError, "train_lm: clip_norm must be >= 0");
  ATTRACE_CHECK(options.threads >= 0, InputError, "train_lm: threads must be >= 0");
  const TokenData d = token_data(train, what);
  ATTRACE_CHECK(d.n >= 1, InputError, what + ": no examples to train on");
  fs::create_directories(options.out_dir);
  // LibTorch's reductions split work by thread count: fixed for the run, restored afterwards.
  struct ThreadScope {
    int saved = at::get_num_threads();
    explicit ThreadScope(int n) {
      if (n > 0) at::set_num_threads(n);
    }
    ~ThreadScope() { at::set_num_threads(saved); }
  } thread_scope(options.threads);

  // Matrices decay, vectors (biases, LayerNorm) do not: the usual GPT split.
  std::vector<torch::Tensor> decay, no_decay, all;
  for (const auto& p : model.parameters()) {
    torch::Tensor t = p;
    t.requires_grad_(true);
    (t.dim() >= 2 ? decay : no_decay).push_back(t);
    all.push_back(t);
  }
  ATTRACE_CHECK(!all.empty(), InputError, "train_lm: the model has no parameters");
  std::unique_ptr<torch::optim::Optimizer> opt;
  const double lr0 = options.phases.front().lr;
  if (options.optimizer == LmOptimizer::adamw) {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    auto base = torch::optim::AdamWOptions(lr0).betas({options.beta1, options.beta2});
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(base).weight_decay(options.weight_decay)));
    groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(base).weight_decay(0.0)));
    opt = std::make_unique<torch::optim::AdamW>(groups, base);
  } else {
    opt = std::make_unique<torch::optim::SGD>(all, torch::optim::SGDOptions(lr0));
  }
  auto set_lr = [&](double lr) {
    for (auto& g : opt->param_groups()) {
      if (options.optimizer == LmOptimizer::adamw)
        static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
      else
        static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
    }
  };

  // The batch stream: a fresh Fisher-Yates permutation each time the previous one is used up.
  std::mt19937_64 rng(options.seed);
  std::vector<int64_t> perm(static_cast<size_t>(d.n));
  size_t cursor = perm.size();
  auto next_index = [&] {
    if (cursor == perm.size()) {
      for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
      for (size_t i = perm.size() - 1; i > 0; --i) std::swap(perm[i], perm[draw_below(rng, i + 1)]);
      cursor = 0;
    }
    return perm[cursor++];
  };

  LmTrainResult result;
  std::string run_toml = "# Training run written by attrace's train_lm: checkpoints in order, with the lr in force.\n";
  int64_t step = 0;
  std::vector<int64_t> idx(static_cast<size_t>(options.batch_size));
  for (size_t ph = 0; ph < options.phases.size(); ++ph) {
    set_lr(options.phases[ph].lr);
    double phase_sum = 0;
    for (int64_t s = 0; s < options.phases[ph].steps; ++s) {
      throw_if_interrupted();
      int64_t len = 1;
      for (auto& i : idx) {
        i = next_index();
        len = std::max(len, d.length[static_cast<size_t>(i)]);
      }
      // Positions after the batch's last target cannot change its loss (causal model), so they
      // are not run.
      const auto sel = torch::from_blob(idx.data(), {options.batch_size}, torch::kLong);
      const auto tokens = d.tokens.index_select(0, sel).slice(1, 0, len).contiguous();
      const auto targets = d.targets.index_select(0, sel).slice(1, 0, len).contiguous();
      const auto loss = per_example_loss(logits_of(model.forward({tokens})), targets).mean();
      opt->zero_grad();
      loss.backward();
      if (options.clip_norm > 0) torch::nn::utils::clip_grad_norm_(all, options.clip_norm);
      opt->step();
      ++step;
      const double l = loss.item<double>();
      ATTRACE_CHECK(std::isfinite(l), NumericError, "train_lm: the loss is " + format_double(l) + " at step " + std::to_string(step));
      phase_sum += l;
      if (options.on_step) options.on_step(step, l);
    }
    const std::string file = "ckpt_" + std::to_string(ph + 1) + ".pt";
    const fs::path path = fs::path(options.out_dir) / file;
    const fs::path tmp = fs::path(options.out_dir) / ("." + file + ".tmp");
    model.save(tmp.string());
    fs::rename(tmp, path);
    result.checkpoints.push_back(path.string());
    result.steps.push_back(step);
    result.phase_loss.push_back(phase_sum / static_cast<double>(options.phases[ph].steps));
    run_toml += "\n[[checkpoint]]\nfile = \"" + file + "\"\nstep = " + std::to_string(step) +
                "\nlr = " + format_double(options.phases[ph].lr) + "\n";
  }
  for (auto& t : all) t.requires_grad_(false).mutable_grad() = torch::Tensor();
  result.run_file = (fs::path(options.out_dir) / "run.toml").string();
  connectors::write_file_atomic(result.run_file, run_toml);
  return result;
}

}  // namespace attrace::engine
