#pragma once
// Writes TorchScript models built in C++ (no Python): chains of named Linear/Conv2d/activation
// children that attrace's chain path recognises exactly as it does a scripted
// torch.nn.Sequential. Used by `attrace demo` (which then trains it), the benchmarks, and LibTorch
// users whose models are C++ frontend torch::nn::Sequential modules (the recorder, checkpoints
// for `attrace attribute`).
#include <cstdint>
#include <string>
#include <vector>

namespace torch::jit {
struct Module;
}
namespace torch::nn {
class Sequential;
}

namespace attrace::engine {

/// The TorchScript twin of a C++ frontend Sequential: the same children under the same names
/// ("0", "1", ...), sharing the parameter tensors (an optimizer's in-place updates of `model`
/// show through; gradients reach the same tensors), with the same forward bit for bit. Children:
/// Linear, Conv2d (zero padding; "same"/"valid" padding kept as such), ReLU, LeakyReLU, Tanh,
/// Sigmoid, GELU, SiLU, ELU, Softplus, Hardtanh, Identity, Flatten, MaxPool2d, AvgPool2d and
/// Dropout (applied in training mode only, as torch does). InputError naming the child for any
/// other module (e.g. a Functional lambda, which has no TorchScript form).
torch::jit::Module sequential_to_torchscript(const torch::nn::Sequential& model);

/// Saves sequential_to_torchscript(model) as a TorchScript checkpoint `attrace featurize` and
/// `attrace attribute` read (the chain path), in evaluation mode.
void save_sequential_torchscript(const torch::nn::Sequential& model, const std::string& path);

/// Saves an MLP with layer widths `sizes` (e.g. {64, 32, 10}: Linear-ReLU-Linear), weights drawn
/// like torch.nn.Linear's default (uniform +-1/sqrt(fan_in)) from LibTorch's generator seeded
/// with `seed`. Children are named fc1, act1, fc2, ...
void save_mlp_torchscript(const std::string& path, const std::vector<int64_t>& sizes, uint64_t seed);

}  // namespace attrace::engine
