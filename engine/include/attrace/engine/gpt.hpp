#pragma once
// GPT-style decoder language models built as TorchScript modules in C++ (no Python), and a
// native next-token trainer that writes TorchScript checkpoints and a run file (docs/lm.md).
//
// The module tree (TorchScript type names __torch__.attrace.gpt.*):
//   tok_emb (Embedding) + pos_emb (Embedding over positions 0..T-1)
//   h0 .. h{L-1} (Block, pre-LN): x = x + attn(ln1(x)); x = x + mlp(ln2(x))
//     attn (CausalSelfAttention): q, k, v, o (Linear), heads = d_model / head width
//     mlp (Mlp): fc1 (Linear d_model -> d_ff), GELU, fc2 (Linear d_ff -> d_model)
//   ln_f (LayerNorm), head (Linear d_model -> vocab, untied, bias optional)
// Every Linear calls torch.linear (aten::linear) on its own weight/bias parameters and every
// Embedding calls torch.embedding on its weight, so graph rewriting finds each of them. forward
// takes int64 token ids [B, T] (T <= context) and returns logits [B, T, vocab], or the dict
// {"logits": logits} when built with dict_output. The saved file loads with torch::jit::load and
// with Python's torch.jit.load.
//
// This header does not expose LibTorch: the torch types are only declared (callers that build or
// train a module include <torch/script.h> themselves).
#include <attrace/connectors/dataset.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace torch::jit {
struct Module;
}

namespace attrace::engine {

/// Shape and initialisation of a GPT-style decoder.
struct GptConfig {
  int64_t vocab = 256;     ///< token ids 0 .. vocab-1 (256: bytes)
  int64_t context = 128;   ///< T: the longest sequence (learned positions 0 .. T-1)
  int64_t d_model = 128;   ///< residual width
  int64_t layers = 4;      ///< decoder blocks
  int64_t heads = 4;       ///< attention heads (must divide d_model)
  int64_t d_ff = 512;      ///< hidden width of each block's MLP
  uint64_t seed = 0;       ///< initial weights are a function of this seed alone
  bool head_bias = false;  ///< output head with a bias (GPT-2 has none)
  bool dict_output = false;  ///< forward returns {"logits": logits} instead of the tensor
};

/// Checks a config (every size >= 1, heads divides d_model). InputError naming the field.
void validate(const GptConfig& c);

/// Number of scalar parameters of the module build_gpt(c) makes.
int64_t gpt_parameter_count(const GptConfig& c);

/// Builds the module with GPT-2's initialisation (Linear and Embedding weights N(0, 0.02), the
/// residual output projections attn.o and mlp.fc2 N(0, 0.02 / sqrt(2 layers)), biases 0,
/// LayerNorm 1 and 0), drawn in a fixed order from a generator seeded with c.seed (the global
/// torch generator is untouched). float32, training mode.
torch::jit::Module build_gpt(const GptConfig& c);

/// build_gpt(c) saved to `path` (torch.jit.save format).
void save_gpt(const std::string& path, const GptConfig& c);

/// Optimiser of train_lm.
enum class LmOptimizer { adamw, sgd };

/// A stretch of training at one learning rate; a checkpoint is saved at its end.
struct LmPhase {
  int64_t steps = 0;  ///< optimiser steps (mini-batches)
  double lr = 0;      ///< learning rate in force (written to the run file)
};

/// How train_lm trains.
struct LmTrainOptions {
  std::string out_dir;              ///< receives ckpt_1.pt .. ckpt_K.pt and run.toml (created)
  std::vector<LmPhase> phases;      ///< K phases -> K checkpoints
  int64_t batch_size = 16;          ///< sequences per step
  LmOptimizer optimizer = LmOptimizer::adamw;
  double weight_decay = 0.01;       ///< AdamW decoupled weight decay (SGD: none)
  double beta1 = 0.9, beta2 = 0.99;  ///< AdamW moments
  double clip_norm = 1.0;           ///< global gradient-norm clip before each step (0: none)
  uint64_t seed = 0;                ///< batch order: a Fisher-Yates shuffle per epoch from mt19937_64(seed)
  /// LibTorch intra-op threads while training (restored after): the bits of the checkpoints
  /// depend on it, so it is fixed rather than left to the machine's default (0: that default).
  int threads = 1;
  /// Called after every step with the step number (1-based) and that batch's loss.
  std::function<void(int64_t step, double loss)> on_step;
};

/// What train_lm produced.
struct LmTrainResult {
  std::string run_file;                  ///< out_dir/run.toml (docs/formats.md, run file)
  std::vector<std::string> checkpoints;  ///< checkpoint paths, in training order
  std::vector<int64_t> steps;            ///< step count at each checkpoint
  std::vector<double> phase_loss;        ///< mean batch loss over each phase
};

/// Per-example next-token loss of rows [begin, end) (targets as for train_lm): for each example
/// the mean over its non-ignored positions of cross_entropy(logits[t], target[t]) (0 for an
/// example without any).
/// The module is run without gradients; a dict output is read at "logits".
std::vector<double> lm_example_losses(torch::jit::Module& model, const connectors::Dataset& ds, int64_t begin,
                                      int64_t end, int64_t batch_size = 64);

/// Trains `model` in place on `train` (integer inputs [N, T]; its token_targets, or when empty
/// the next-token targets of docs/formats.md: inputs[i][t+1] for t + 1 < length_i, else none):
/// each step's loss is the batch mean of the per-example losses above. Saves a checkpoint after
/// each phase and the run file listing them with their step and lr. The same module, data and
/// options give bit-identical checkpoints on one machine (threads fixed). InputError on bad
/// options or data (naming the field or example).
LmTrainResult train_lm(torch::jit::Module& model, const connectors::Dataset& train, const LmTrainOptions& options);

}  // namespace attrace::engine
