// Per-example gradient throughput (examples/s) of the two gradient paths, float32, one
// checkpoint, batch 64:
//  - MLPs built in C++: the demo's (64-32-10), an MNIST-sized one (784-256-10) and the issue-10
//    workload (64-512-512-10, 301,066 parameters, 1,797 examples like sklearn's digits);
//  - the CNN "digitcnn" of tests/fixtures/make_fixtures.py (two 3x3 convolutions with 16 and 32
//    channels, max-pooling, a Linear head; 1x8x8 inputs). It is read from $ATTRACE_FIXTURES
//    (the test build's tests/fixtures folder); without it that benchmark is skipped with a message.
// Kronecker factors (layer_factors) are timed too: they are what Kronecker projection consumes.
// Rates are per wall-clock second (the work runs on several threads).
#include <attrace/connectors/dataset.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/model_builder.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <random>

namespace ae = attrace::engine;

namespace {

// n examples of the given per-example shape, entries k/16 (k in 0..16) like the digits.
attrace::connectors::Dataset random_dataset(int64_t n, std::vector<int64_t> shape, int64_t classes) {
  attrace::connectors::Dataset ds;
  std::mt19937_64 rng(5);
  ds.input_shape = {n};
  ds.input_shape.insert(ds.input_shape.end(), shape.begin(), shape.end());
  ds.target_shape = {n};
  const int64_t width = ds.example_width();
  for (int64_t i = 0; i < n * width; ++i) ds.inputs.push_back(static_cast<float>(rng() % 17) / 16.0f);
  for (int64_t i = 0; i < n; ++i) {
    ds.class_targets.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(classes)));
    ds.ids.push_back(std::to_string(i));
  }
  ds.path = "<bench>";
  return ds;
}

// Gradients (mode 0) or Kronecker factors (mode 1) of all rows of `ds`, batch by batch.
void run_model(benchmark::State& state, const std::string& file, const attrace::connectors::Dataset& ds, ae::GradPath path,
               int mode, int64_t batch = 64) {
  const int64_t n = ds.size();
  auto backend = attrace::kernels::make_cpu_backend();
  ae::GradientSettings gs;
  gs.path = path;
  gs.batch_size = batch;
  ae::CheckpointModel model(file, gs, *backend);
  try {
    model.prepare(ds);  // path = chain on a model the chain path refuses: skipped, with the reason
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    for (auto _ : state) {
    }
    return;
  }
  std::vector<float> out(static_cast<size_t>(batch * model.dim()));
  std::vector<ae::LayerFactors> factors;
  for (auto _ : state) {
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
      if (mode == 0) {
        model.gradients(ds, b0, std::min(n, b0 + batch), out.data());
        benchmark::DoNotOptimize(out.data());
      } else {
        model.layer_factors(ds, b0, std::min(n, b0 + batch), factors);
        benchmark::DoNotOptimize(factors.data());
      }
    }
  }
  state.counters["examples/s"] = benchmark::Counter(static_cast<double>(n * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["grad_dim"] = static_cast<double>(model.dim());
  state.SetLabel(std::string(model.path_in_use() == ae::GradPath::chain ? "chain" : "general") +
                 (mode == 0 ? " gradients" : " factors"));
}

// Args: input width, hidden widths (0: none), examples, path (0 chain, 1 general), mode, batch.
void BM_MlpGradients(benchmark::State& state) {
  const int64_t d = state.range(0), h1 = state.range(1), h2 = state.range(2), n = state.range(3);
  std::vector<int64_t> sizes = {d, h1};
  if (h2 > 0) sizes.push_back(h2);
  sizes.push_back(10);
  std::string tag;
  for (auto s : sizes) tag += "-" + std::to_string(s);
  const std::string file = (std::filesystem::temp_directory_path() / ("attrace-bench-mlp" + tag + ".pt")).string();
  ae::save_mlp_torchscript(file, sizes, 1);
  const auto ds = random_dataset(n, {d}, 10);
  run_model(state, file, ds, state.range(4) == 0 ? ae::GradPath::chain : ae::GradPath::general, static_cast<int>(state.range(5)),
            state.range(6));
  std::filesystem::remove(file);
}

BENCHMARK(BM_MlpGradients)
    ->Args({64, 32, 0, 512, 0, 0, 64})
    ->Args({64, 32, 0, 512, 1, 0, 64})
    ->Args({784, 256, 0, 512, 0, 0, 64})
    ->Args({784, 256, 0, 512, 1, 0, 64})
    ->Args({64, 512, 512, 1797, 0, 0, 64})
    ->Args({64, 512, 512, 1797, 1, 0, 64})
    ->Args({64, 512, 512, 1797, 0, 1, 64})
    ->Args({64, 512, 512, 1797, 0, 1, 256})
    ->Args({64, 512, 512, 1797, 0, 1, 1797})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Args: path (0 chain, 1 general), mode (0 gradients, 1 factors). 1,797 digits-sized examples.
void BM_CnnGradients(benchmark::State& state) {
  const char* dir = std::getenv("ATTRACE_FIXTURES");
  const std::string file = dir ? std::string(dir) + "/digitcnn_1.pt" : "";
  if (file.empty() || !std::filesystem::exists(file)) {
    state.SkipWithError("set ATTRACE_FIXTURES to a folder written by tests/fixtures/make_fixtures.py (digitcnn_1.pt)");
    for (auto _ : state) {
    }
    return;
  }
  const auto ds = random_dataset(1797, {1, 8, 8}, 10);
  run_model(state, file, ds, state.range(0) == 0 ? ae::GradPath::chain : ae::GradPath::general, static_cast<int>(state.range(1)));
}

BENCHMARK(BM_CnnGradients)->Args({0, 0})->Args({1, 0})->Args({0, 1})->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
