// CPU projection throughput: attrace's on-the-fly dense projection (P never stored) against the
// naive route (materialize P in blocks of rows with the same generator, then an OpenBLAS sgemm
// per block), same shapes, same run. Prints examples/s and input GB/s per benchmark and, at the
// end, the on-the-fly / naive speed ratio per shape.
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/philox.hpp>

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace ak = attrace::kernels;

namespace {

constexpr int64_t kBatch = 8;

std::vector<float> random_input(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(static_cast<double>(rng() >> 40) / 16777216.0 - 0.5);
  return v;
}

void counters(benchmark::State& state, int64_t p) {
  state.counters["examples/s"] = benchmark::Counter(static_cast<double>(kBatch * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["in_GB/s"] = benchmark::Counter(static_cast<double>(kBatch * p * 4) * static_cast<double>(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}

// Args: p, k.
void BM_DenseOnTheFly(benchmark::State& state) {
  const int64_t p = state.range(0), k = state.range(1);
  const auto g = random_input(kBatch * p, 1);
  std::vector<float> out(static_cast<size_t>(kBatch * k));
  auto cpu = ak::make_cpu_backend();
  const ak::ProjectionSpec spec{7, 0, k, ak::ProjectionKind::rademacher};
  for (auto _ : state) {
    cpu->project_dense(ak::view(g.data(), kBatch, p), spec, ak::view_mut(out.data(), kBatch, k));
    benchmark::DoNotOptimize(out.data());
  }
  counters(state, p);
}

__attribute__((target_clones("avx2", "default"))) void BM_DenseMaterializeThenSgemm(benchmark::State& state) {
  const int64_t p = state.range(0), k = state.range(1), rows = 256;
  const auto g = random_input(kBatch * p, 1);
  std::vector<float> out(static_cast<size_t>(kBatch * k)), block(static_cast<size_t>(rows * k));
  const ak::ProjectionSpec spec{7, 0, k, ak::ProjectionKind::rademacher};
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)));
  for (auto _ : state) {
    std::fill(out.begin(), out.end(), 0.0f);
    for (int64_t q0 = 0; q0 < p; q0 += rows) {
      const int64_t n = std::min(rows, p - q0);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c0 = 0; c0 < k; c0 += 128) {  // the same vectorisable expansion as the kernel
          const auto bits = ak::rademacher_block(spec, q0 + r, c0 >> 7);
          float* dst = block.data() + r * k + c0;
          if (k - c0 >= 128) {
            for (int w = 0; w < 4; ++w)
              for (int i = 0; i < 32; ++i) dst[32 * w + i] = scale * static_cast<float>(1 - 2 * static_cast<int>((bits.v[w] >> i) & 1u));
          } else {
            for (int64_t c = c0; c < k; ++c) dst[c - c0] = scale * ak::rademacher_sign(bits, c);
          }
        }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(kBatch), static_cast<int>(k), static_cast<int>(n), 1.0f,
                  g.data() + q0, static_cast<int>(p), block.data(), static_cast<int>(k), 1.0f, out.data(), static_cast<int>(k));
    }
    benchmark::DoNotOptimize(out.data());
  }
  counters(state, p);
}

#define ATTRACE_PROJECTION_GRID                                                                           \
  ->Args({100000, 512})->Args({100000, 4096})->Args({1000000, 512})->Args({1000000, 4096})                \
      ->Args({10000000, 512})->Args({10000000, 4096})->Unit(benchmark::kMillisecond)->MinTime(0.5)
BENCHMARK(BM_DenseOnTheFly) ATTRACE_PROJECTION_GRID;
BENCHMARK(BM_DenseMaterializeThenSgemm) ATTRACE_PROJECTION_GRID;

// Kronecker projection of one linear layer (B examples x T positions, budget k as the engine
// splits it) against that layer's own backward pass on the same data: dX = dY W and dW = dY^T X,
// two OpenBLAS sgemms. Args: B, T, d_in, d_out, k.
void BM_KroneckerLayer(benchmark::State& state) {
  const int64_t b = state.range(0), t = state.range(1), d_in = state.range(2), d_out = state.range(3), k = state.range(4);
  const auto side = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(k))));
  const int64_t k_out = std::min(d_out, side), k_in = std::min(d_in, std::max<int64_t>(1, k / k_out));
  const auto x = random_input(b * t * d_in, 1), dy = random_input(b * t * d_out, 2);
  std::vector<float> out(static_cast<size_t>(b * k_in * k_out));
  auto cpu = ak::make_cpu_backend();
  const ak::ProjectionSpec in{7, 0, k_in, ak::ProjectionKind::rademacher}, ou{7, 1, k_out, ak::ProjectionKind::rademacher};
  for (auto _ : state) {
    cpu->project_kronecker(ak::view(x.data(), b * t, d_in), ak::view(dy.data(), b * t, d_out), t, in, ou,
                           ak::view_mut(out.data(), b, k_in * k_out));
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel("k_in " + std::to_string(k_in) + " x k_out " + std::to_string(k_out));
  state.counters["examples/s"] = benchmark::Counter(static_cast<double>(b * state.iterations()), benchmark::Counter::kIsRate);
}

void BM_LayerBackward(benchmark::State& state) {
  const int64_t b = state.range(0), t = state.range(1), d_in = state.range(2), d_out = state.range(3);
  const int rows = static_cast<int>(b * t), di = static_cast<int>(d_in), dout = static_cast<int>(d_out);
  const auto x = random_input(b * t * d_in, 1), dy = random_input(b * t * d_out, 2), w = random_input(d_out * d_in, 3);
  std::vector<float> dx(static_cast<size_t>(b * t * d_in)), dw(static_cast<size_t>(d_out * d_in));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, di, dout, 1.0f, dy.data(), dout, w.data(), di, 0.0f, dx.data(), di);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dout, di, rows, 1.0f, dy.data(), dout, x.data(), di, 0.0f, dw.data(), di);
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(dw.data());
  }
  state.counters["examples/s"] = benchmark::Counter(static_cast<double>(b * state.iterations()), benchmark::Counter::kIsRate);
}

#define ATTRACE_LAYER_GRID                                                                                  \
  ->Args({256, 1, 784, 256, 4096})->Args({32, 16, 1024, 1024, 1024})->Args({8, 128, 1024, 4096, 4096}) \
      ->Unit(benchmark::kMillisecond)->MinTime(0.5)
BENCHMARK(BM_KroneckerLayer) ATTRACE_LAYER_GRID;
BENCHMARK(BM_LayerBackward) ATTRACE_LAYER_GRID;

// Console output plus a ratio table at the end.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) {
      const std::string name = r.benchmark_name();
      const auto slash = name.find('/');
      times_[name.substr(slash)][name.substr(0, slash)] = r.GetAdjustedRealTime();
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\n%-22s %14s %14s %8s\n", "p/k", "on-the-fly ms", "naive ms", "ratio");
    for (const auto& [shape, t] : times_) {
      const auto a = t.find("BM_DenseOnTheFly"), b = t.find("BM_DenseMaterializeThenSgemm");
      if (a == t.end() || b == t.end()) continue;
      std::printf("%-22s %14.1f %14.1f %7.2fx\n", shape.c_str(), a->second, b->second, b->second / a->second);
    }
    std::printf("\n%-26s %14s %14s %15s\n", "B/T/d_in/d_out/k", "kronecker ms", "backward ms", "kron/backward");
    for (const auto& [shape, t] : times_) {
      const auto a = t.find("BM_KroneckerLayer"), b = t.find("BM_LayerBackward");
      if (a == t.end()) continue;
      // Both take the same args (the backward ignores k), so their names match.
      const double back = b != t.end() ? b->second : -1;
      std::printf("%-26s %14.2f %14.2f %15.3f\n", shape.c_str(), a->second, back, back > 0 ? a->second / back : 0.0);
    }
  }

 private:
  std::map<std::string, std::map<std::string, double>> times_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
