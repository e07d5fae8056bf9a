// Per-example gradient throughput (examples/s) of the two gradient paths on the demo's MLP
// (64-32-10) and an MNIST-sized MLP (784-256-10), float32, one checkpoint, batch 64.
#include <attrace/connectors/dataset.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/model_builder.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>

namespace ae = attrace::engine;

namespace {

attrace::connectors::Dataset random_dataset(int64_t n, int64_t d, int64_t classes) {
  attrace::connectors::Dataset ds;
  std::mt19937_64 rng(5);
  ds.input_shape = {n, d};
  ds.target_shape = {n};
  for (int64_t i = 0; i < n * d; ++i) ds.inputs.push_back(static_cast<float>(static_cast<double>(rng() >> 11) / 9007199254740992.0));
  for (int64_t i = 0; i < n; ++i) {
    ds.class_targets.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(classes)));
    ds.ids.push_back(std::to_string(i));
  }
  ds.path = "<bench>";
  return ds;
}

// Args: input width, hidden width, path (0 chain, 1 general).
void BM_PerExampleGradients(benchmark::State& state) {
  const int64_t d = state.range(0), h = state.range(1), classes = 10, n = 512, batch = 64;
  const auto path = state.range(2) == 0 ? ae::GradPath::chain : ae::GradPath::general;
  const std::string file = (std::filesystem::temp_directory_path() /
                            ("attrace-bench-mlp-" + std::to_string(d) + "-" + std::to_string(h) + ".pt")).string();
  ae::save_mlp_torchscript(file, {d, h, classes}, 1);
  const auto ds = random_dataset(n, d, classes);
  auto backend = attrace::kernels::make_cpu_backend();
  ae::GradientSettings gs;
  gs.path = path;
  gs.batch_size = batch;
  ae::CheckpointModel model(file, gs, *backend);
  model.prepare(ds);
  std::vector<float> out(static_cast<size_t>(batch * model.dim()));
  for (auto _ : state) {
    for (int64_t b0 = 0; b0 < n; b0 += batch) model.gradients(ds, b0, b0 + batch, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["examples/s"] = benchmark::Counter(static_cast<double>(n * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["grad_dim"] = static_cast<double>(model.dim());
  state.SetLabel(path == ae::GradPath::chain ? "chain" : "general");
  std::filesystem::remove(file);
}

BENCHMARK(BM_PerExampleGradients)
    ->Args({64, 32, 0})
    ->Args({64, 32, 1})
    ->Args({784, 256, 0})
    ->Args({784, 256, 1})
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
