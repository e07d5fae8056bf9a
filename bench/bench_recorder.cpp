// Training-step time with and without the live recorder (docs/recorder.md), in the same run:
// the demo MLP 64-32-10 (every layer within the k = 4096 budget: exact features) and an MLP
// 784-512-512-10 (every layer Kronecker-projected to 64 x 64), SGD, cross-entropy, every step
// recorded with k = 4096 per layer. Counters: the recorder's projection and write seconds per step
// (the rest of the overhead is capture: hooks, bias columns, gradient scaling, parameter copies).
#include <attrace/engine/model_builder.hpp>
#include <attrace/engine/recorder.hpp>

#include <benchmark/benchmark.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <numeric>
#include <random>

namespace {

namespace fs = std::filesystem;

struct Setup {
  torch::jit::Module model;
  std::vector<torch::Tensor> params;
  torch::Tensor x, y;
  std::vector<std::vector<int64_t>> batches;
};

// A model and a synthetic training set of 64 batches.
Setup make(const std::vector<int64_t>& sizes, int64_t batch) {
  const fs::path p = fs::temp_directory_path() / ("attrace-bench-rec-" + std::to_string(::getpid()) + ".pt");
  attrace::engine::save_mlp_torchscript(p.string(), sizes, 1);
  Setup s;
  s.model = torch::jit::load(p.string());
  fs::remove(p);
  for (const auto& t : s.model.parameters()) {
    torch::Tensor q = t;
    q.requires_grad_(true);
    s.params.push_back(q);
  }
  const int64_t n = 64 * batch;
  torch::manual_seed(2);
  s.x = torch::rand({n, sizes.front()});
  s.y = torch::randint(sizes.back(), {n}, torch::kLong);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(3));
  for (int64_t b = 0; b < 64; ++b) s.batches.emplace_back(perm.begin() + b * batch, perm.begin() + (b + 1) * batch);
  return s;
}

// One SGD step; `rec` null: the plain loop.
void train_step(Setup& s, attrace::engine::Recorder* rec, int64_t b) {
  const auto& ids = s.batches[static_cast<size_t>(b % 64)];
  const auto idx = torch::tensor(ids, torch::kLong);
  const auto xb = s.x.index_select(0, idx);
  const auto out = rec ? rec->forward(xb) : s.model.forward({xb}).toTensor();
  const auto loss = torch::nn::functional::cross_entropy(out, s.y.index_select(0, idx));
  const auto grads = torch::autograd::grad({loss}, s.params);
  if (rec) rec->step(ids, 0.01);
  torch::NoGradGuard ng;
  for (size_t k = 0; k < s.params.size(); ++k) s.params[k].sub_(grads[k], 0.01);
}

void run(benchmark::State& state, const std::vector<int64_t>& sizes, bool record) {
  torch::set_num_threads(static_cast<int>(state.range(1)));
  const int64_t batch = state.range(0);
  Setup s = make(sizes, batch);
  const fs::path dir = fs::temp_directory_path() / ("attrace-bench-rec-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::unique_ptr<attrace::engine::Recorder> rec;
  if (record) rec = std::make_unique<attrace::engine::Recorder>(s.model, dir.string(), attrace::engine::RecorderSettings{});
  for (int64_t b = 0; b < 8; ++b) train_step(s, rec.get(), b);  // warm-up (and the recorder's one forward check)
  const double p0 = rec ? rec->writer().timings().project : 0, w0 = rec ? rec->writer().timings().write : 0;
  int64_t b = 0;
  for (auto _ : state) train_step(s, rec.get(), b++);
  if (rec) {
    rec->flush();
    const double steps = static_cast<double>(state.iterations());
    state.counters["project_us"] = 1e6 * (rec->writer().timings().project - p0) / steps;
    state.counters["write_us"] = 1e6 * (rec->writer().timings().write - w0) / steps;
    state.counters["width"] = static_cast<double>(rec->writer().width());
  }
  rec.reset();
  fs::remove_all(dir);
}

void BM_demo_mlp_plain(benchmark::State& st) { run(st, {64, 32, 10}, false); }
void BM_demo_mlp_recorded(benchmark::State& st) { run(st, {64, 32, 10}, true); }
void BM_mlp784_plain(benchmark::State& st) { run(st, {784, 512, 512, 10}, false); }
void BM_mlp784_recorded(benchmark::State& st) { run(st, {784, 512, 512, 10}, true); }

// Fixed iterations keep the recordings bounded on disk (about 300 KB per demo step).
BENCHMARK(BM_demo_mlp_plain)->Args({32, 1})->Args({32, 2})->Iterations(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_demo_mlp_recorded)->Args({32, 1})->Args({32, 2})->Iterations(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_mlp784_plain)->Args({64, 1})->Args({64, 2})->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_mlp784_recorded)->Args({64, 1})->Args({64, 2})->Iterations(200)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
