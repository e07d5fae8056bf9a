#include <attrace/engine/model_builder.hpp>
#include <attrace/error.hpp>

#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>

namespace attrace::engine {

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
