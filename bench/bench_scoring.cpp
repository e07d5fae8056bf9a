// Scoring throughput: the deterministic kernels (the FMA order, the default for reports, and the
// canonical float64 order kept for checking) against OpenBLAS GEMMs of the same shape measured in the same run. The BLAS rows
// are baselines only: their summation order depends on the library's blocking and thread count.
#include <attrace/kernels/backend.hpp>

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdlib>
#include <random>
#include <vector>

namespace ak = attrace::kernels;

namespace {

template <class T>
std::vector<T> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<T> v(static_cast<size_t>(rows * cols));
  for (auto& x : v) x = static_cast<T>(static_cast<double>(rng() >> 11) / 9007199254740992.0 - 0.5);
  return v;
}

void set_counters(benchmark::State& state, int64_t n, int64_t m, int64_t p, size_t elem) {
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(m) * static_cast<double>(p);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["in_GB/s"] = benchmark::Counter(static_cast<double>((n + m) * p) * static_cast<double>(elem) *
                                                     static_cast<double>(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}

// Threads of attrace's CPU backend: ATTRACE_THREADS (like the CLI), else one per hardware thread.
// Run OpenBLAS with the same count (OPENBLAS_NUM_THREADS) for a side-by-side comparison.
int threads() {
  const char* t = std::getenv("ATTRACE_THREADS");
  return t != nullptr ? std::atoi(t) : 0;
}

// Args: n (train rows), m (queries), p (feature width).
void BM_CanonicalScoreF32(benchmark::State& state) {
  const int64_t n = state.range(0), m = state.range(1), p = state.range(2);
  const auto a = random_matrix<float>(n, p, 1), b = random_matrix<float>(m, p, 2);
  std::vector<double> out(static_cast<size_t>(n * m), 0.0);
  auto cpu = ak::make_cpu_backend(threads());
  for (auto _ : state) {
    cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(out.data(), n, m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, m, p, sizeof(float));
}

// The default scoring kernel (attribution.scoring = "fma"): float32 FMAs in a fixed order, a pure
// function of the two rows, bit-identical across threads, tiles and CPU/GPU.
void BM_FmaScore(benchmark::State& state) {
  const int64_t n = state.range(0), m = state.range(1), p = state.range(2);
  const auto a = random_matrix<float>(n, p, 1), b = random_matrix<float>(m, p, 2);
  std::vector<double> out(static_cast<size_t>(n * m), 0.0);
  auto cpu = ak::make_cpu_backend(threads());
  for (auto _ : state) {
    cpu->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(out.data(), n, m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, m, p, sizeof(float));
}

void BM_OpenBlasSgemm(benchmark::State& state) {
  const int64_t n = state.range(0), m = state.range(1), p = state.range(2);
  const auto a = random_matrix<float>(n, p, 1), b = random_matrix<float>(m, p, 2);
  std::vector<float> out(static_cast<size_t>(n * m), 0.0f);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(m), static_cast<int>(p), 1.0f,
                a.data(), static_cast<int>(p), b.data(), static_cast<int>(p), 1.0f, out.data(), static_cast<int>(m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, m, p, sizeof(float));
}

void BM_OpenBlasDgemm(benchmark::State& state) {
  const int64_t n = state.range(0), m = state.range(1), p = state.range(2);
  const auto a = random_matrix<double>(n, p, 1), b = random_matrix<double>(m, p, 2);
  std::vector<double> out(static_cast<size_t>(n * m), 0.0);
  for (auto _ : state) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(m), static_cast<int>(p), 1.0,
                a.data(), static_cast<int>(p), b.data(), static_cast<int>(p), 1.0, out.data(), static_cast<int>(m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, m, p, sizeof(double));
}

// attrace's GEMM scoring path (attribution.scoring = "blas") with each gemm_math: tiles of 2048
// rows, inputs rounded first for tf32/bf16, float32 tile added into the float64 score matrix.
void BM_GemmScoring(benchmark::State& state, ak::GemmMath math) {
  const int64_t n = state.range(0), m = state.range(1), p = state.range(2);
  const auto a = random_matrix<float>(n, p, 1), b = random_matrix<float>(m, p, 2);
  std::vector<double> out(static_cast<size_t>(n * m), 0.0);
  auto cpu = ak::make_cpu_backend(threads());
  for (auto _ : state) {
    cpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, math, ak::view_mut(out.data(), n, m));
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, n, m, p, sizeof(float));
}

// The demo's shape (1800 x 297 x 2410), a wider one, and a projected tile (k = 1024).
#define ATTRACE_SCORE_SHAPES \
  ->Args({1800, 297, 2410})->Args({512, 256, 16384})->Args({4096, 1024, 1024})->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_FmaScore) ATTRACE_SCORE_SHAPES;
BENCHMARK(BM_CanonicalScoreF32) ATTRACE_SCORE_SHAPES;
BENCHMARK(BM_OpenBlasSgemm) ATTRACE_SCORE_SHAPES;
BENCHMARK(BM_OpenBlasDgemm) ATTRACE_SCORE_SHAPES;
BENCHMARK_CAPTURE(BM_GemmScoring, ieee, ak::GemmMath::ieee) ATTRACE_SCORE_SHAPES;
BENCHMARK_CAPTURE(BM_GemmScoring, tf32, ak::GemmMath::tf32) ATTRACE_SCORE_SHAPES;
BENCHMARK_CAPTURE(BM_GemmScoring, bf16, ak::GemmMath::bf16) ATTRACE_SCORE_SHAPES;

// The Gram blocks of factored exact scoring on issue 10's digits MLP (64-512-512-10): per
// checkpoint, 1497 train x 300 query rows of each layer's inputs (with the bias column: 65, 513)
// and output gradients (512, 10). Small inner widths are where per-output costs show.
#define ATTRACE_GRAM_SHAPES                                                                                          \
  ->Args({1497, 300, 513})->Args({1497, 300, 512})->Args({1497, 300, 65})->Args({1497, 300, 10})->Unit(benchmark::kMillisecond) \
      ->UseRealTime()
BENCHMARK(BM_FmaScore) ATTRACE_GRAM_SHAPES;
BENCHMARK(BM_OpenBlasSgemm) ATTRACE_GRAM_SHAPES;

}  // namespace

BENCHMARK_MAIN();
