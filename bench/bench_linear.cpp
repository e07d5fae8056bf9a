// The Linear-layer product of the graph gradient path (Backend::linear_fma: one float32 FMA chain
// per output, a row's bits independent of the batch) against OpenBLAS sgemm of the same shape
// (bias excluded, beta = 0: the baseline only, its summation order depends on the library's
// blocking) and against score_accumulate_fma, the FMA scoring order the path used before (float64
// outputs, eight lanes per dot product). Shapes: a small GPT's layers with 8192 rows (batch x
// positions): k x m in {256x256, 256x1024, 1024x256, 256x768}.
#include <attrace/kernels/backend.hpp>

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdlib>
#include <random>
#include <vector>

namespace ak = attrace::kernels;

namespace {

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (auto& x : v) x = static_cast<float>(static_cast<double>(rng() >> 11) / 9007199254740992.0 - 0.5);
  return v;
}

void set_counters(benchmark::State& state, int64_t n, int64_t k, int64_t m) {
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(m);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// Threads of attrace's CPU backend: ATTRACE_THREADS, else one per hardware thread. OpenBLAS uses
// OPENBLAS_NUM_THREADS (default: all cores as well).
int threads() {
  const char* t = std::getenv("ATTRACE_THREADS");
  return t != nullptr ? std::atoi(t) : 0;
}

// Args: rows, k (input features), m (output features).
void BM_LinearFma(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const auto a = random_matrix(n, k, 1), bt = random_matrix(k, m, 2), bias = random_matrix(1, m, 3);
  std::vector<float> out(static_cast<size_t>(n * m));
  auto cpu = ak::make_cpu_backend(threads());
  for (auto _ : state) {
    cpu->linear_fma(ak::view(a.data(), n, k), ak::view(bt.data(), k, m), bias.data(), ak::view_mut(out.data(), n, m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, k, m);
}

// out = a bt with bt stored k x m (the layout linear_fma takes).
void BM_OpenBlasSgemm(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const auto a = random_matrix(n, k, 1), bt = random_matrix(k, m, 2);
  std::vector<float> out(static_cast<size_t>(n * m));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), 1.0f,
                a.data(), static_cast<int>(k), bt.data(), static_cast<int>(m), 0.0f, out.data(), static_cast<int>(m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, k, m);
}

// out = a w^T with w stored m x k (LibTorch's Linear: addmm with the weight transposed).
void BM_OpenBlasSgemmWt(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const auto a = random_matrix(n, k, 1), w = random_matrix(m, k, 2);
  std::vector<float> out(static_cast<size_t>(n * m));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), 1.0f,
                a.data(), static_cast<int>(k), w.data(), static_cast<int>(k), 0.0f, out.data(), static_cast<int>(m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, k, m);
}

// The previous layer product: out (float64) += fma_dot(a_i, w_j), w stored m x k.
void BM_ScoreFma(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const auto a = random_matrix(n, k, 1), w = random_matrix(m, k, 2);
  std::vector<double> out(static_cast<size_t>(n * m), 0.0);
  auto cpu = ak::make_cpu_backend(threads());
  for (auto _ : state) {
    cpu->score_accumulate_fma(ak::view(a.data(), n, k), ak::view(w.data(), m, k), 1.0, ak::view_mut(out.data(), n, m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, k, m);
}

#define ATTRACE_LINEAR_SHAPES                                                                                   \
  ->Args({8192, 256, 256})->Args({8192, 256, 1024})->Args({8192, 1024, 256})->Args({8192, 256, 768})      \
      ->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_LinearFma) ATTRACE_LINEAR_SHAPES;
BENCHMARK(BM_OpenBlasSgemm) ATTRACE_LINEAR_SHAPES;
BENCHMARK(BM_OpenBlasSgemmWt) ATTRACE_LINEAR_SHAPES;
BENCHMARK(BM_ScoreFma) ATTRACE_LINEAR_SHAPES;

}  // namespace

BENCHMARK_MAIN();
