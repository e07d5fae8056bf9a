// The Linear FMA order (Backend::linear_fma): every CPU variant against the chain written out one
// output at a time, on shapes that straddle vectors, micro tiles, q panels and row blocks, with
// leading dimensions wider than the rows; independence of the batch (a row alone gives the same
// bits) and of the thread count; signed zeros, NaN and Inf; shape errors; CUDA parity when a GPU
// is present. Kernels only (no LibTorch, no HDF5), so it runs in CI.
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/reference.hpp>

#include "kernel_test_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace attrace::kernels::cpu {
// The per-instruction-set entry points (kernels/src/cpu_linear_impl.hpp), called directly so that
// an AVX-512 machine also checks the AVX2 variant.
namespace avx2 {
bool linear(const float* a, int64_t lda, int64_t n, const float* bt, int64_t ldb, int64_t k, int64_t m, const float* bias,
            float* out, int64_t ldo, int threads);
}
namespace avx512 {
bool linear(const float* a, int64_t lda, int64_t n, const float* bt, int64_t ldb, int64_t k, int64_t m, const float* bias,
            float* out, int64_t ldo, int threads);
}
}  // namespace attrace::kernels::cpu

namespace ak = attrace::kernels;

namespace {

using attrace::test::wide_matrix;

// A problem with padded leading dimensions: a (n x k, ld lda), bt (k x m, ld ldb), out (n x m,
// ld ldo). Padding holds values that must never be read (NaN) or written (a sentinel).
struct Problem {
  int64_t n, k, m, lda, ldb, ldo;
  std::vector<float> a, bt, bias;
  ak::HostMatrix<float> av() const { return {a.data(), n, k, lda}; }
  ak::HostMatrix<float> bv() const { return {bt.data(), k, m, ldb}; }
};

constexpr float kSentinel = 12345.0f;

Problem make_problem(int64_t n, int64_t k, int64_t m, int64_t pad, uint64_t seed) {
  Problem p{n, k, m, k + pad, m + pad, m + pad, {}, {}, {}};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  p.a.assign(static_cast<size_t>(n * p.lda), nan);
  p.bt.assign(static_cast<size_t>(k * p.ldb), nan);
  const auto a = wide_matrix(n, k, seed), b = wide_matrix(k, m, seed + 1);
  for (int64_t i = 0; i < n; ++i) std::memcpy(&p.a[static_cast<size_t>(i * p.lda)], &a[static_cast<size_t>(i * k)], k * sizeof(float));
  for (int64_t q = 0; q < k; ++q) std::memcpy(&p.bt[static_cast<size_t>(q * p.ldb)], &b[static_cast<size_t>(q * m)], m * sizeof(float));
  p.bias = wide_matrix(1, m, seed + 2);
  return p;
}

// The order, written out independently of the kernels: one float32 chain per output.
std::vector<float> by_definition(const Problem& p, bool with_bias) {
  std::vector<float> out(static_cast<size_t>(p.n * p.ldo), kSentinel);
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.m; ++j) {
      float c = with_bias ? p.bias[static_cast<size_t>(j)] : 0.0f;
      for (int64_t q = 0; q < p.k; ++q)
        c = std::fmaf(p.a[static_cast<size_t>(i * p.lda + q)], p.bt[static_cast<size_t>(q * p.ldb + j)], c);
      out[static_cast<size_t>(i * p.ldo + j)] = c;
    }
  return out;
}

// Bitwise equality (padding included: it must still hold the sentinel), reporting the first miss.
void expect_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t e = 0; e < got.size(); ++e) {
    uint32_t g, w;
    std::memcpy(&g, &got[e], 4);
    std::memcpy(&w, &want[e], 4);
    if (g != w) {
      ADD_FAILURE() << what << ": element " << e << " is " << got[e] << " (0x" << std::hex << g << "), want " << want[e]
                    << " (0x" << w << ")";
      return;
    }
  }
}

using Runner = void (*)(const Problem&, const float*, float*, int);

void run_backend(const Problem& p, const float* bias, float* out, int threads) {
  ak::make_cpu_backend(threads)->linear_fma(p.av(), p.bv(), bias, ak::HostMatrixMut<float>{out, p.n, p.m, p.ldo});
}
void run_avx2(const Problem& p, const float* bias, float* out, int threads) {
  ASSERT_TRUE(ak::cpu::avx2::linear(p.a.data(), p.lda, p.n, p.bt.data(), p.ldb, p.k, p.m, bias, out, p.ldo, threads));
}
void run_avx512(const Problem& p, const float* bias, float* out, int threads) {
  ASSERT_TRUE(ak::cpu::avx512::linear(p.a.data(), p.lda, p.n, p.bt.data(), p.ldb, p.k, p.m, bias, out, p.ldo, threads));
}
void run_reference(const Problem& p, const float* bias, float* out, int) {
  ak::reference::linear_fma(p.av(), p.bv(), bias, ak::HostMatrixMut<float>{out, p.n, p.m, p.ldo});
}

bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool has_avx512() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"); }

std::vector<std::pair<std::string, Runner>> runners() {
  std::vector<std::pair<std::string, Runner>> r = {{"backend", run_backend}, {"reference", run_reference}};
  if (has_avx2()) r.emplace_back("avx2", run_avx2);
  if (has_avx512()) r.emplace_back("avx512", run_avx512);
  return r;
}

// (n, k, m): rows across micro tiles (6, 12) and row blocks (96), k across q panels (256), m
// across vectors and micro tiles (8, 16, 32), including 1s and primes.
const std::vector<std::tuple<int64_t, int64_t, int64_t>> kShapes = {
    {1, 1, 1},     {1, 7, 5},      {2, 3, 17},     {5, 16, 16},    {6, 33, 31},    {7, 64, 33},   {11, 255, 47},
    {12, 256, 32}, {13, 257, 65},  {25, 100, 96},  {37, 300, 100}, {64, 513, 48},  {97, 77, 129}, {100, 260, 63},
    {131, 31, 200}, {200, 128, 257}, {255, 19, 40}, {300, 70, 33},  {300, 600, 97}, {3, 1030, 9}};

TEST(LinearFma, EveryVariantEqualsTheChainBitForBit) {
  for (const auto& [n, k, m] : kShapes)
    for (int64_t pad : {0, 3}) {
      const Problem p = make_problem(n, k, m, pad, static_cast<uint64_t>(n * 1000003 + k * 1009 + m + pad));
      for (bool with_bias : {true, false}) {
        const auto want = by_definition(p, with_bias);
        for (const auto& [name, run] : runners())
          for (int threads : {1, 2}) {
            std::vector<float> got(static_cast<size_t>(p.n * p.ldo), kSentinel);
            run(p, with_bias ? p.bias.data() : nullptr, got.data(), threads);
            expect_bits(got, want,
                        name + " n=" + std::to_string(n) + " k=" + std::to_string(k) + " m=" + std::to_string(m) +
                            " pad=" + std::to_string(pad) + (with_bias ? " bias" : " no bias") + " threads=" +
                            std::to_string(threads));
          }
      }
    }
}

// The comparison can fail: two other plausible orders (two interleaved accumulators; product
// and sum rounded separately) give different bits on this data.
TEST(LinearFma, ADifferentOrderIsCaught) {
  const Problem p = make_problem(40, 300, 50, 0, 7);
  const auto want = by_definition(p, true);
  std::vector<float> split(want.size()), unfused(want.size());
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.m; ++j) {
      float c0 = p.bias[static_cast<size_t>(j)], c1 = 0.0f, u = p.bias[static_cast<size_t>(j)];
      for (int64_t q = 0; q < p.k; ++q) {
        const float x = p.a[static_cast<size_t>(i * p.lda + q)], w = p.bt[static_cast<size_t>(q * p.ldb + j)];
        (q % 2 == 0 ? c0 : c1) = std::fmaf(x, w, q % 2 == 0 ? c0 : c1);
        const float prod = x * w;
        u = u + prod;
      }
      split[static_cast<size_t>(i * p.ldo + j)] = c0 + c1;
      unfused[static_cast<size_t>(i * p.ldo + j)] = u;
    }
  EXPECT_FALSE(attrace::test::bit_equal(split, want));
  EXPECT_FALSE(attrace::test::bit_equal(unfused, want));
}

// A row's bits do not depend on the batch: each row computed alone, and the rows of a batch in
// reverse order, give the batch's bits.
TEST(LinearFma, RowsDoNotDependOnTheBatch) {
  auto cpu = ak::make_cpu_backend(2);
  const int64_t n = 150, k = 290, m = 70;
  const Problem p = make_problem(n, k, m, 0, 11);
  std::vector<float> batch(static_cast<size_t>(n * m));
  cpu->linear_fma(p.av(), p.bv(), p.bias.data(), ak::view_mut(batch.data(), n, m));
  std::vector<float> reversed_a(p.a.size()), reversed(batch.size());
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(&reversed_a[static_cast<size_t>((n - 1 - i) * k)], &p.a[static_cast<size_t>(i * k)], k * sizeof(float));
  cpu->linear_fma(ak::view(reversed_a.data(), n, k), p.bv(), p.bias.data(), ak::view_mut(reversed.data(), n, m));
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> alone(static_cast<size_t>(m));
    cpu->linear_fma(ak::view(p.a.data() + i * k, 1, k), p.bv(), p.bias.data(), ak::view_mut(alone.data(), 1, m));
    ASSERT_EQ(std::memcmp(alone.data(), &batch[static_cast<size_t>(i * m)], m * sizeof(float)), 0) << "row " << i;
    ASSERT_EQ(std::memcmp(&reversed[static_cast<size_t>((n - 1 - i) * m)], &batch[static_cast<size_t>(i * m)], m * sizeof(float)), 0)
        << "row " << i;
  }
}

TEST(LinearFma, ThreadCountChangesNoBit) {
  const int64_t n = 333, k = 520, m = 130;
  const Problem p = make_problem(n, k, m, 1, 13);
  std::vector<float> one(static_cast<size_t>(n * p.ldo), kSentinel);
  run_backend(p, p.bias.data(), one.data(), 1);
  for (int threads : {2, 3, 5, 8}) {
    std::vector<float> got(one.size(), kSentinel);
    run_backend(p, p.bias.data(), got.data(), threads);
    expect_bits(got, one, "threads=" + std::to_string(threads));
  }
}

// c starts at the bias itself: a -0 bias with zero products stays -0 (the chain never adds a
// padding fmaf(0, 0, c), which would give +0); without bias it starts at +0.
TEST(LinearFma, SignedZerosFollowTheChain) {
  auto cpu = ak::make_cpu_backend(2);
  for (int64_t k : {0, 1, 5, 300})
    for (int64_t m : {1, 17, 40}) {
      const int64_t n = 13;
      std::vector<float> a(static_cast<size_t>(n * k), 0.0f), bt(static_cast<size_t>(k * m), -1.0f);
      std::vector<float> bias(static_cast<size_t>(m), -0.0f), out(static_cast<size_t>(n * m), 7.0f);
      cpu->linear_fma(ak::view(a.data(), n, k), ak::view(bt.data(), k, m), bias.data(), ak::view_mut(out.data(), n, m));
      for (float v : out) ASSERT_TRUE(v == 0.0f && std::signbit(v)) << "k=" << k << " m=" << m << " got " << v;
      // 0 * -1 = -0 and -0 + -0 = -0 in every FMA: -0 stays; from +0 (no bias) +0 stays.
      cpu->linear_fma(ak::view(a.data(), n, k), ak::view(bt.data(), k, m), nullptr, ak::view_mut(out.data(), n, m));
      for (float v : out) ASSERT_TRUE(v == 0.0f && !std::signbit(v)) << "k=" << k << " m=" << m << " got " << v;
    }
}

TEST(LinearFma, EmptyProductIsTheBias) {
  auto cpu = ak::make_cpu_backend(2);
  const std::vector<float> bias = {1.5f, -2.0f, 3.25f};
  std::vector<float> out(6, 9.0f);
  cpu->linear_fma(ak::HostMatrix<float>{nullptr, 2, 0, 0}, ak::HostMatrix<float>{nullptr, 0, 3, 3}, bias.data(),
                  ak::view_mut(out.data(), 2, 3));
  EXPECT_EQ(out, (std::vector<float>{1.5f, -2.0f, 3.25f, 1.5f, -2.0f, 3.25f}));
  cpu->linear_fma(ak::HostMatrix<float>{nullptr, 2, 0, 0}, ak::HostMatrix<float>{nullptr, 0, 3, 3}, nullptr,
                  ak::view_mut(out.data(), 2, 3));
  EXPECT_EQ(out, std::vector<float>(6, 0.0f));
  // No rows: nothing to do (and nothing read).
  cpu->linear_fma(ak::HostMatrix<float>{nullptr, 0, 4, 4}, ak::view(out.data(), 4, 1), nullptr, ak::HostMatrixMut<float>{nullptr, 0, 1, 1});
}

// NaN and Inf travel as IEEE fmaf says: a NaN input poisons its row (NaN * anything is NaN); an
// Inf weight gives +-Inf in its column, or NaN where it meets a zero input or an opposite Inf.
// Every variant agrees with the chain on which outputs are NaN (payloads aside) and, elsewhere,
// bit for bit.
TEST(LinearFma, NanAndInfPropagateAsInTheChain) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  Problem p = make_problem(30, 70, 45, 0, 17);
  p.a[static_cast<size_t>(3 * p.lda + 10)] = nan;                 // row 3
  p.bt[static_cast<size_t>(5 * p.ldb + 7)] = inf;                 // column 7, q = 5
  p.a[static_cast<size_t>(8 * p.lda + 5)] = 0.0f;                 // row 8 meets it with 0: NaN
  p.bt[static_cast<size_t>(6 * p.ldb + 20)] = inf;                // column 20: +Inf at q = 6 ...
  p.bt[static_cast<size_t>(40 * p.ldb + 20)] = -inf;              // ... and -Inf at q = 40
  p.bias[static_cast<size_t>(30)] = -inf;                         // column 30 starts at -Inf
  const auto want = by_definition(p, true);
  for (const auto& [name, run] : runners()) {
    std::vector<float> got(want.size(), kSentinel);
    run(p, p.bias.data(), got.data(), 2);
    for (size_t e = 0; e < got.size(); ++e) {
      if (std::isnan(want[e])) {
        ASSERT_TRUE(std::isnan(got[e])) << name << " element " << e;
      } else {
        ASSERT_EQ(std::memcmp(&got[e], &want[e], 4), 0) << name << " element " << e << ": " << got[e] << " vs " << want[e];
      }
    }
    for (int64_t j = 0; j < p.m; ++j) EXPECT_TRUE(std::isnan(got[static_cast<size_t>(3 * p.ldo + j)])) << name;
    EXPECT_TRUE(std::isnan(got[static_cast<size_t>(8 * p.ldo + 7)])) << name;
    for (int64_t i = 0; i < p.n; ++i) {
      if (i == 3) continue;
      if (i != 8) {
        EXPECT_TRUE(std::isinf(got[static_cast<size_t>(i * p.ldo + 7)])) << name << " row " << i;
      }
      const float x6 = p.a[static_cast<size_t>(i * p.lda + 6)], x40 = p.a[static_cast<size_t>(i * p.lda + 40)];
      if ((x6 > 0) == (x40 > 0)) {
        EXPECT_TRUE(std::isnan(got[static_cast<size_t>(i * p.ldo + 20)])) << name << " row " << i;
      }
      EXPECT_EQ(got[static_cast<size_t>(i * p.ldo + 30)], -inf) << name << " row " << i;
    }
  }
}

TEST(LinearFma, BadShapesAreInputErrors) {
  auto cpu = ak::make_cpu_backend(1);
  std::vector<float> a(12), bt(12), out(12);
  try {
    cpu->linear_fma(ak::view(a.data(), 3, 4), ak::view(bt.data(), 3, 4), nullptr, ak::view_mut(out.data(), 3, 4));
    FAIL() << "k mismatch accepted";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("3x4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cpu->linear_fma(ak::view(a.data(), 3, 4), ak::view(bt.data(), 4, 3), nullptr, ak::view_mut(out.data(), 4, 3)),
               attrace::InputError);
  EXPECT_THROW(cpu->linear_fma(ak::HostMatrix<float>{a.data(), 3, 4, 2}, ak::view(bt.data(), 4, 3), nullptr,
                               ak::view_mut(out.data(), 3, 3)),
               attrace::InputError);
}

// The float32 chain's error against the exact sum is at most k u sum|terms| (u = 2^-24, one
// rounding per FMA, k + 1 terms with the bias); checked per entry in float64.
TEST(LinearFma, ErrorWithinTheChainBound) {
  const Problem p = make_problem(20, 1000, 30, 0, 19);
  std::vector<float> got(static_cast<size_t>(p.n * p.ldo));
  run_backend(p, p.bias.data(), got.data(), 2);
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.m; ++j) {
      long double exact = p.bias[static_cast<size_t>(j)], mag = std::fabs(p.bias[static_cast<size_t>(j)]);
      for (int64_t q = 0; q < p.k; ++q) {
        const long double t = static_cast<long double>(p.a[static_cast<size_t>(i * p.lda + q)]) * p.bt[static_cast<size_t>(q * p.ldb + j)];
        exact += t;
        mag += std::fabs(t);
      }
      const double err = std::fabs(static_cast<double>(got[static_cast<size_t>(i * p.ldo + j)] - exact));
      EXPECT_LE(err, static_cast<double>(p.k) * std::ldexp(1.0, -24) * static_cast<double>(mag)) << i << "," << j;
    }
}

// CPU and CUDA give the same bits (skips without a GPU).
TEST(LinearFma, CudaMatchesCpu) {
  if (!ak::cuda_compiled() || ak::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  auto gpu = ak::make_backend("cuda");
  for (const auto& [n, k, m] : kShapes)
    for (int64_t pad : {0, 5}) {
      const Problem p = make_problem(n, k, m, pad, static_cast<uint64_t>(n + k + m + pad));
      for (bool with_bias : {true, false}) {
        const auto want = by_definition(p, with_bias);
        std::vector<float> got(want.size(), kSentinel);
        gpu->linear_fma(p.av(), p.bv(), with_bias ? p.bias.data() : nullptr, ak::HostMatrixMut<float>{got.data(), p.n, p.m, p.ldo});
        expect_bits(got, want, "cuda n=" + std::to_string(n) + " k=" + std::to_string(k) + " m=" + std::to_string(m));
      }
    }
  // A large batch (many blocks of rows and columns).
  const Problem big = make_problem(70000, 40, 24, 0, 23);
  std::vector<float> cpu_out(static_cast<size_t>(big.n * big.m)), gpu_out(cpu_out.size());
  run_backend(big, big.bias.data(), cpu_out.data(), 0);
  gpu->linear_fma(big.av(), big.bv(), big.bias.data(), ak::view_mut(gpu_out.data(), big.n, big.m));
  EXPECT_TRUE(attrace::test::bit_equal(cpu_out, gpu_out));
}

}  // namespace
