// CPU projection throughput: attrace's on-the-fly dense projection (P never stored) against the
// naive route (materialize P in blocks of rows with the same generator, then an OpenBLAS sgemm
// per block), same shapes, same run. Prints examples/s and input GB/s per benchmark and, at the
// end, the on-the-fly / naive speed ratio per shape.
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/philox.hpp>

#include <benchmark/benchmark.h>
#include <cblas.h>

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
