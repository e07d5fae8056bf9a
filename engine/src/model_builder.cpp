#include <attrace/engine/model_builder.hpp>
#include <attrace/error.hpp>

#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>

namespace attrace::engine {
namespace {

// A double as TorchScript source reads it back (the same float64).
std::string num(double v, const std::string& what) {
  ATTRACE_CHECK(std::isfinite(v), InputError, what + ": a non-finite option value");
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

template <size_t D>
std::vector<int64_t> ints(const torch::ExpandingArray<D>& a) {
  return std::vector<int64_t>(a->begin(), a->end());
}

std::string list(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

torch::jit::Module sequential_to_torchscript(const torch::nn::Sequential& model) {
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module seq(c10::QualifiedName("__torch__.attrace.nn.Sequential"), cu, true);
  // Every module carries `training` (Module::train() and eval() set it on all of them).
  const auto training = [](torch::jit::Module& m, bool on) { m.register_attribute("training", c10::BoolType::get(), on); };
  training(seq, model->is_training());
  std::string body = "x";
  for (const auto& kv : model->named_children()) {
    const std::string& name = kv.key();
    const auto& c = kv.value();
    const std::string what = "sequential_to_torchscript: child '" + name + "' (" + c->name() + ")";
    std::string kind, code;
    std::vector<std::pair<std::string, torch::Tensor>> params;
    std::vector<std::pair<std::string, c10::IValue>> attrs;  // Conv2d geometry, as torch.jit.script keeps it
    std::vector<c10::TypePtr> attr_types;
    if (auto* l = c->as<torch::nn::LinearImpl>()) {
      kind = "Linear";
      params.emplace_back("weight", l->weight);
      if (l->bias.defined()) params.emplace_back("bias", l->bias);
      code = l->bias.defined() ? "torch.linear(x, self.weight, self.bias)" : "torch.linear(x, self.weight)";
    } else if (auto* cv = c->as<torch::nn::Conv2dImpl>()) {
      kind = "Conv2d";
      const auto& o = cv->options;
      ATTRACE_CHECK(c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()) != nullptr, InputError,
                    what + ": only zero padding is supported");
      params.emplace_back("weight", cv->weight);
      if (cv->bias.defined()) params.emplace_back("bias", cv->bias);
      const auto int_list = c10::ListType::ofInts();
      attrs.emplace_back("stride", c10::List<int64_t>(ints(o.stride())));
      attr_types.push_back(int_list);
      if (const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding())) {
        attrs.emplace_back("padding", c10::List<int64_t>(ints(*pad)));
        attr_types.push_back(int_list);
      } else {
        attrs.emplace_back("padding", std::string(c10::get_if<torch::enumtype::kSame>(&o.padding()) ? "same" : "valid"));
        attr_types.push_back(c10::StringType::get());
      }
      attrs.emplace_back("dilation", c10::List<int64_t>(ints(o.dilation())));
      attr_types.push_back(int_list);
      attrs.emplace_back("groups", o.groups());
      attr_types.push_back(c10::IntType::get());
      attrs.emplace_back("padding_mode", std::string("zeros"));
      attr_types.push_back(c10::StringType::get());
      code = std::string("torch.conv2d(x, self.weight, ") + (cv->bias.defined() ? "self.bias" : "None") +
             ", self.stride, self.padding, self.dilation, self.groups)";
    } else if (c->as<torch::nn::ReLUImpl>()) {
      kind = "ReLU";
      code = "torch.relu(x)";
    } else if (auto* a = c->as<torch::nn::LeakyReLUImpl>()) {
      kind = "LeakyReLU";
      code = "torch.leaky_relu(x, " + num(a->options.negative_slope(), what) + ")";
    } else if (c->as<torch::nn::TanhImpl>()) {
      kind = "Tanh";
      code = "torch.tanh(x)";
    } else if (c->as<torch::nn::SigmoidImpl>()) {
      kind = "Sigmoid";
      code = "torch.sigmoid(x)";
    } else if (auto* g = c->as<torch::nn::GELUImpl>()) {
      kind = "GELU";
      const std::string approx = g->options.approximate();
      ATTRACE_CHECK(approx == "none" || approx == "tanh", InputError, what + ": approximate '" + approx + "'");
      code = "torch.gelu(x, approximate=\"" + approx + "\")";
    } else if (c->as<torch::nn::SiLUImpl>()) {
      kind = "SiLU";
      code = "torch.silu(x)";
    } else if (auto* e = c->as<torch::nn::ELUImpl>()) {
      kind = "ELU";
      code = "torch.elu(x, " + num(e->options.alpha(), what) + ")";
    } else if (auto* sp = c->as<torch::nn::SoftplusImpl>()) {
      kind = "Softplus";
      code = "torch.softplus(x, " + num(sp->options.beta(), what) + ", " + num(sp->options.threshold(), what) + ")";
    } else if (auto* h = c->as<torch::nn::HardtanhImpl>()) {
      kind = "Hardtanh";
      code = "torch.hardtanh(x, " + num(h->options.min_val(), what) + ", " + num(h->options.max_val(), what) + ")";
    } else if (c->as<torch::nn::IdentityImpl>()) {
      kind = "Identity";
      code = "x";
    } else if (auto* f = c->as<torch::nn::FlattenImpl>()) {
      kind = "Flatten";
      code = "torch.flatten(x, " + std::to_string(f->options.start_dim()) + ", " + std::to_string(f->options.end_dim()) + ")";
    } else if (auto* mp = c->as<torch::nn::MaxPool2dImpl>()) {
      kind = "MaxPool2d";
      const auto& o = mp->options;
      code = "torch.max_pool2d(x, " + list(ints(o.kernel_size())) + ", " + list(ints(o.stride())) + ", " + list(ints(o.padding())) +
             ", " + list(ints(o.dilation())) + ", " + (o.ceil_mode() ? "True" : "False") + ")";
    } else if (auto* ap = c->as<torch::nn::AvgPool2dImpl>()) {
      kind = "AvgPool2d";
      const auto& o = ap->options;
      code = "torch.avg_pool2d(x, " + list(ints(o.kernel_size())) + ", " + list(ints(o.stride())) + ", " + list(ints(o.padding())) +
             ", " + (o.ceil_mode() ? "True" : "False") + ", " + (o.count_include_pad() ? "True" : "False") + ", " +
             (o.divisor_override() ? std::to_string(*o.divisor_override()) : std::string("None")) + ")";
    } else if (auto* d = c->as<torch::nn::DropoutImpl>()) {
      kind = "Dropout";
      code = "torch.dropout(x, " + num(d->options.p(), what) + ", self.training)";
    } else {
      throw InputError(what + " has no TorchScript form here: the supported children are Linear, Conv2d, ReLU, LeakyReLU, "
                              "Tanh, Sigmoid, GELU, SiLU, ELU, Softplus, Hardtanh, Identity, Flatten, MaxPool2d, AvgPool2d "
                              "and Dropout");
    }
    torch::jit::Module m(c10::QualifiedName("__torch__.attrace.nn." + kind), cu, true);
    training(m, c->is_training());
    for (const auto& [pn, t] : params) m.register_parameter(pn, t, false);  // the same tensors: shared
    for (size_t i = 0; i < attrs.size(); ++i) m.register_attribute(attrs[i].first, attr_types[i], attrs[i].second);
    m.define("def forward(self, x):\n    return " + code + "\n");
    seq.register_module(name, m);
    body = "getattr(self, \"" + name + "\").forward(" + body + ")";
  }
  seq.define("def forward(self, x):\n    return " + body + "\n");
  return seq;
}

void save_sequential_torchscript(const torch::nn::Sequential& model, const std::string& path) {
  torch::jit::Module m = sequential_to_torchscript(model);
  m.eval();
  m.save(path);
}

void save_mlp_torchscript(const std::string& path, const std::vector<int64_t>& sizes, uint64_t seed) {
  ATTRACE_CHECK(sizes.size() >= 2, InputError, "save_mlp_torchscript: need at least an input and an output width");
  torch::manual_seed(seed);
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module seq(c10::QualifiedName("__torch__.attrace.models.Sequential"), cu, true);
  std::string body = "x";
  for (size_t l = 0; l + 1 < sizes.size(); ++l) {
    const int64_t in = sizes[l], out = sizes[l + 1];
    torch::jit::Module lin(c10::QualifiedName("__torch__.attrace.models.Linear"), cu, true);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    lin.register_parameter("weight", torch::empty({out, in}).uniform_(-bound, bound), false);
    lin.register_parameter("bias", torch::empty({out}).uniform_(-bound, bound), false);
    lin.define("def forward(self, x):\n    return torch.addmm(self.bias, x, self.weight.t())\n");
    const std::string fc = "fc" + std::to_string(l + 1);
    seq.register_module(fc, lin);
    body = "self." + fc + ".forward(" + body + ")";
    if (l + 2 < sizes.size()) {
      torch::jit::Module act(c10::QualifiedName("__torch__.attrace.models.ReLU"), cu, true);
      act.define("def forward(self, x):\n    return torch.relu(x)\n");
      const std::string name = "act" + std::to_string(l + 1);
      seq.register_module(name, act);
      body = "self." + name + ".forward(" + body + ")";
    }
  }
  seq.define("def forward(self, x):\n    return " + body + "\n");
  seq.save(path);
}

}  // namespace attrace::engine
