// Featurization throughput of GPT-style language models, in tokens per second: the graph gradient
// path (one batched forward, one backward, per-position layer inputs and output gradients of
// every Linear and Embedding) and Kronecker projection with budget k = 4096 per layer, float32,
// for two GPTs built by engine/gpt.hpp with their seeded initial weights (synthetic: the timing
// does not depend on what the weights learned):
//  - demo: the model of `attrace demo --lm` (d_model 128, 4 layers, d_ff 512, 0.88M parameters);
//  - gpt20m: d_model 512, 6 layers, 8 heads, d_ff 2048 (19.3M parameters).
// Both take byte tokens (vocabulary 256) in sequences of T = 128 (every position is valid). Every
// parameter is featurized, as in the demo: Linear, Embedding (tokens, positions) and LayerNorm.
// Counters: tokens/s, and the share of the wall time spent in the forward pass, the backward
// pass and the projection. The featurizer reports its model time (forward + backward + factor
// extraction) and its row time (projection, rounding); the forward pass is timed separately on
// the same rows through the same rewritten graph, and backward = model time - forward.
// Also timed: one training step of train_lm (AdamW, LibTorch's kernels), for comparison.
#include "graph_capture.hpp"  // engine/src: the rewritten forward, timed on its own

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/featurize.hpp>
#include <attrace/engine/gpt.hpp>

#include <benchmark/benchmark.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <random>

namespace ae = attrace::engine;
namespace ac = attrace::connectors;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kT = 128, kVocab = 256;

ae::GptConfig model_config(int which) {
  ae::GptConfig c;
  c.vocab = kVocab;
  c.context = kT;
  c.head_bias = true;  // as in the demo (the graph path needs a bias on every Linear today)
  c.seed = 1;
  if (which == 0) {
    c.d_model = 128, c.layers = 4, c.heads = 4, c.d_ff = 512;
  } else {
    c.d_model = 512, c.layers = 6, c.heads = 8, c.d_ff = 2048;
  }
  return c;
}

// n sequences of T random byte tokens, next-token targets at every position but the last.
ac::Dataset token_rows(int64_t n) {
  ac::Dataset ds;
  ds.path = "<bench>";
  ds.input_kind = ac::InputKind::integers;
  ds.input_shape = {n, kT};
  ds.target_kind = ac::TargetKind::tokens;
  ds.target_shape = {n, kT};
  std::mt19937_64 rng(3);
  for (int64_t i = 0; i < n * kT; ++i) ds.int_inputs.push_back(static_cast<int32_t>(rng() % kVocab));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < kT; ++t)
      ds.token_targets.push_back(t + 1 < kT ? ds.int_inputs[static_cast<size_t>(i * kT + t + 1)] : ac::kIgnoreTarget);
    ds.ids.push_back(std::to_string(i));
  }
  return ds;
}

// A one-checkpoint run of the model in a temporary folder.
std::string write_run(const ae::GptConfig& c, const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("attrace-bench-lm-" + name);
  fs::create_directories(dir);
  ae::save_gpt((dir / "ckpt.pt").string(), c);
  attrace::connectors::write_file_atomic((dir / "run.toml").string(), "[[checkpoint]]\nfile = \"ckpt.pt\"\nstep = 1\nlr = 0.001\n");
  return (dir / "run.toml").string();
}

void BM_featurize(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const int64_t rows = state.range(1);
  const ae::GptConfig gc = model_config(which);
  const auto ds = token_rows(rows);
  const auto run = ac::read_run_file(write_run(gc, which == 0 ? "demo" : "gpt20m"));
  ae::Config config;
  config.loss = ae::Loss::next_token;
  config.path = ae::GradPath::graph;
  config.projection = ae::Projection::kronecker;
  config.projection_k = 4096;
  config.batch_size = rows;
  auto backend = attrace::kernels::make_cpu_backend();
  ae::Featurizer f(config, run, 0, {&ds}, *backend);
  std::vector<float> out(static_cast<size_t>(rows * f.width()));
  f.features(ds, 0, rows, out.data());  // warm-up (first run of the interpreter, allocations)

  // The forward pass alone, through the same rewritten graph on the same rows.
  auto module = torch::jit::load(run.checkpoints[0].path);
  module.eval();
  attrace::engine::detail::CaptureGraph capture;
  const std::string why = capture.build(module);
  if (!why.empty()) {
    state.SkipWithError(why.c_str());
    for (auto _ : state) {
    }
    return;
  }
  const auto x = torch::from_blob(const_cast<int32_t*>(ds.int_inputs.data()), {rows, kT}, torch::kInt).to(torch::kLong);

  const double model0 = f.model_seconds(), rows0 = f.row_seconds();
  double wall = 0, forward = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    f.features(ds, 0, rows, out.data());
    const auto t1 = std::chrono::steady_clock::now();
    {
      torch::AutoGradMode grad(true);
      attrace::engine::detail::set_linear_backend(backend.get());  // the featurizer clears it after each call
      auto r = capture.run(module, x);
      benchmark::DoNotOptimize(r.output);
    }
    const auto t2 = std::chrono::steady_clock::now();
    wall += std::chrono::duration<double>(t1 - t0).count();
    forward += std::chrono::duration<double>(t2 - t1).count();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  attrace::engine::detail::set_linear_backend(nullptr);
  const double model = f.model_seconds() - model0, proj = f.row_seconds() - rows0;
  const double tokens = static_cast<double>(state.iterations() * rows * kT);
  state.counters["tokens/s"] = tokens / wall;
  state.counters["params"] = static_cast<double>(ae::gpt_parameter_count(gc));
  state.counters["features"] = static_cast<double>(f.width());
  state.counters["forward%"] = 100.0 * forward / wall;
  state.counters["backward%"] = 100.0 * (model - forward) / wall;
  state.counters["projection%"] = 100.0 * proj / wall;
  state.SetLabel(which == 0 ? "demo GPT" : "20M GPT");
}

// AdamW steps of the native trainer on rows x T tokens (LibTorch's own kernels), 4 per call plus
// the checkpoint it saves.
void BM_train_step(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const int64_t rows = state.range(1);
  const ae::GptConfig gc = model_config(which);
  auto model = ae::build_gpt(gc);
  auto ds = token_rows(rows);
  ds.token_targets.clear();  // derived from the inputs, as a token file without /targets
  ae::LmTrainOptions o;
  o.out_dir = (fs::temp_directory_path() / "attrace-bench-lm-train").string();
  o.batch_size = rows;
  o.phases = {{4, 1e-3}};  // four steps per call: the checkpoint saved at the end is amortized
  ae::train_lm(model, ds, o);  // warm-up
  double wall = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    ae::train_lm(model, ds, o);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    wall += s;
    state.SetIterationTime(s);
  }
  state.counters["tokens/s"] = static_cast<double>(state.iterations() * 4 * rows * kT) / wall;
  state.SetLabel(which == 0 ? "demo GPT" : "20M GPT");
}

}  // namespace

// Args: model (0 demo, 1 20M), rows per batch (x 128 tokens).
BENCHMARK(BM_featurize)->Args({0, 16})->Args({1, 8})->UseManualTime()->Unit(benchmark::kSecond)->Iterations(3);
BENCHMARK(BM_train_step)->Args({0, 16})->Args({1, 8})->UseManualTime()->Unit(benchmark::kSecond)->Iterations(3);

BENCHMARK_MAIN();
