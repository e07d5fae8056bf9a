#pragma once
// Writes TorchScript MLPs built in C++ (no Python): a chain of named Linear/ReLU children that
// attrace's chain path recognises exactly as it does a scripted torch.nn.Sequential. Used by
// `attrace demo` (which then trains it) and by the benchmarks.
#include <cstdint>
#include <string>
#include <vector>

namespace attrace::engine {

/// Saves an MLP with layer widths `sizes` (e.g. {64, 32, 10}: Linear-ReLU-Linear), weights drawn
/// like torch.nn.Linear's default (uniform +-1/sqrt(fan_in)) from LibTorch's generator seeded
/// with `seed`. Children are named fc1, act1, fc2, ...
void save_mlp_torchscript(const std::string& path, const std::vector<int64_t>& sizes, uint64_t seed);

}  // namespace attrace::engine
