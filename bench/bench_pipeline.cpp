// Throughput of the scoring stage as the pipeline runs it: engine::score_all over in-memory
// features (tiles under a memory limit, finiteness check, tranche sums, top-k merge), with both
// scoring modes, next to one plain OpenBLAS sgemm of the same shape measured in the same run.
// Counters: FLOP/s (2 n_train n_query k / time), the plan's tiles, and peak RSS: `peak_rss_GiB`
// is this benchmark's own peak (VmHWM, reset through /proc/self/clear_refs when it starts; -1
// where the kernel refuses), `maxrss_GiB` is getrusage's ru_maxrss (the whole process so far).
// Features are uniform in [-0.5, 0.5) from a fixed seed; no result is checked here (tests do).
#include <attrace/engine/score.hpp>
#include <attrace/kernels/backend.hpp>

#include <benchmark/benchmark.h>
#include <cblas.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace ae = attrace::engine;
namespace ak = attrace::kernels;

namespace {

constexpr int64_t kQueries = 2048, kWidth = 1024, kTranches = 100;
// Small enough that the largest training set is scored in several train tiles, as at scale.
constexpr int64_t kMemoryLimit = int64_t{2} << 30;

// Uniform [-0.5, 0.5) floats from a fixed-seed generator.
void fill_random(float* out, int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(static_cast<double>(rng() >> 11) / 9007199254740992.0 - 0.5);
}

// Starts a fresh peak-RSS window (Linux >= 4.0); false where /proc/self/clear_refs is not writable.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return static_cast<bool>(f.flush());
}

// VmHWM of this process in bytes (-1 if unknown).
double peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == "VmHWM:") {
      double kb = -1;
      f >> kb;
      return kb * 1024.0;
    }
    std::getline(f, key);
  }
  return -1;
}

void set_counters(benchmark::State& state, int64_t n, bool peak_valid) {
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(kQueries) * static_cast<double>(kWidth);
  state.counters["FLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate,
                                                benchmark::Counter::OneK::kIs1000);
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  state.counters["maxrss_GiB"] = static_cast<double>(ru.ru_maxrss) * 1024.0 / 1073741824.0;
  state.counters["peak_rss_GiB"] = peak_valid ? peak_rss_bytes() / 1073741824.0 : -1.0;
}

// Args: n_train. One checkpoint, weight 1, 100 tranches of contiguous rows, top-10 lists.
void BM_ScoreAll(benchmark::State& state, ae::Scoring scoring) {
  const int64_t n = state.range(0);
  const bool peak_valid = reset_peak_rss();
  ae::MemoryFeatures train(n, false), query(kQueries, false);
  train.add_checkpoint(kWidth, 1.0);
  query.add_checkpoint(kWidth, 1.0);
  fill_random(train.f32(0), n * kWidth, 1);
  fill_random(query.f32(0), kQueries * kWidth, 2);
  ae::ScoreSettings s;
  s.scoring = scoring;
  s.gemm_math = ak::GemmMath::ieee;
  s.top_k = 10;
  s.memory_limit = kMemoryLimit;
  s.n_tranches = kTranches;
  s.tranche.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) s.tranche[static_cast<size_t>(i)] = i * kTranches / n;
  auto backend = ak::make_cpu_backend();
  ae::Progress quiet(false);
  ae::ScorePlan plan;
  for (auto _ : state) {
    const auto r = ae::score_all(train, query, *backend, s, quiet);
    benchmark::DoNotOptimize(r.tranche_query.data());
    plan = r.plan;
  }
  state.counters["train_tile"] = static_cast<double>(plan.train_tile);
  state.counters["query_tile"] = static_cast<double>(plan.query_tile);
  set_counters(state, n, peak_valid);
}

// The baseline: one cblas_sgemm of the same shape (float32 output, no epilogue, no tiling).
void BM_OpenBlasSgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  const bool peak_valid = reset_peak_rss();
  std::vector<float> a(static_cast<size_t>(n * kWidth)), b(static_cast<size_t>(kQueries * kWidth));
  fill_random(a.data(), n * kWidth, 1);
  fill_random(b.data(), kQueries * kWidth, 2);
  std::vector<float> c(static_cast<size_t>(n * kQueries));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(kQueries), static_cast<int>(kWidth),
                1.0f, a.data(), static_cast<int>(kWidth), b.data(), static_cast<int>(kWidth), 0.0f, c.data(),
                static_cast<int>(kQueries));
    benchmark::DoNotOptimize(c.data());
  }
  set_counters(state, n, peak_valid);
}

}  // namespace

// One iteration each, real time (the work runs on OpenMP / OpenBLAS threads). The canonical kernel
// at 262,144 rows takes ~2 minutes of both cores, so it runs only with ATTRACE_BENCH_LARGE=1: the
// default run stays under 2 minutes.
int main(int argc, char** argv) {
  const bool large = std::getenv("ATTRACE_BENCH_LARGE") != nullptr;
  const auto sizes = [](benchmark::internal::Benchmark* b, bool with_largest) {
    b->Arg(16384)->Arg(65536);
    if (with_largest) b->Arg(262144);
    b->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);
  };
  sizes(benchmark::RegisterBenchmark("BM_OpenBlasSgemm", BM_OpenBlasSgemm), true);
  sizes(benchmark::RegisterBenchmark("BM_ScoreAll/blas", BM_ScoreAll, ae::Scoring::blas), true);
  sizes(benchmark::RegisterBenchmark("BM_ScoreAll/canonical", BM_ScoreAll, ae::Scoring::canonical), large);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
