// The FMA scoring order (kernels/backend.hpp kFmaChunk): the CPU backend against the order written
// out one element at a time, for every instruction set this CPU has, on sizes that straddle
// vectors, chunks, p-blocks and micro blocks; independence of threads, tiles and row order; the
// error bound against exact float64 sums. Kernels only (no LibTorch, no HDF5), so it runs in CI.
#include <attrace/kernels/backend.hpp>

#include "kernel_test_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

namespace attrace::kernels::cpu {
// The per-instruction-set entry points (kernels/src/cpu_fma_impl.hpp), called directly so that an
// AVX-512 machine also checks the AVX2 variant.
namespace avx2 {
bool score(const float* a, int64_t lda, int64_t n, const float* b, int64_t ldb, int64_t m, int64_t p, double alpha,
           double* out, int64_t ldo, double* scratch, int threads);
}
namespace avx512 {
bool score(const float* a, int64_t lda, int64_t n, const float* b, int64_t ldb, int64_t m, int64_t p, double alpha,
           double* out, int64_t ldo, double* scratch, int threads);
}
}  // namespace attrace::kernels::cpu

namespace ak = attrace::kernels;

namespace {

using attrace::test::bit_equal;
using attrace::test::wide_matrix;
using Shape = std::tuple<int64_t, int64_t, int64_t>;

// The FMA order, written out independently of the kernels: chunks of 512, element q of a chunk in
// float32 lane q % 8 by fmaf, lanes ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)) in float64, chunk values
// summed in ascending order.
double fma_by_definition(const float* a, const float* b, int64_t p, int64_t chunk = 512) {
  double total = 0;
  for (int64_t c0 = 0; c0 < p; c0 += chunk) {
    float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t q = c0; q < p && q < c0 + chunk; ++q) l[(q - c0) % 8] = std::fmaf(a[q], b[q], l[(q - c0) % 8]);
    const double v[8] = {l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]};
    total += ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
  }
  return total;
}

std::vector<double> by_definition(const std::vector<float>& a, const std::vector<float>& b, int64_t n, int64_t m,
                                  int64_t p, int64_t chunk = 512) {
  std::vector<double> want(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j)
      want[static_cast<size_t>(i * m + j)] = fma_by_definition(a.data() + i * p, b.data() + j * p, p, chunk);
  return want;
}

class FmaGrid : public ::testing::TestWithParam<Shape> {};

TEST_P(FmaGrid, BackendFollowsTheDefinitionBitForBit) {
  const auto [n, m, p] = GetParam();
  const auto a = wide_matrix(n, p, 11 + static_cast<uint64_t>(p));
  const auto b = wide_matrix(m, p, 12 + static_cast<uint64_t>(m));
  auto want = by_definition(a, b, n, m, p);
  // Poisoned start values: the kernel must add alpha * dot to them, nothing else.
  std::vector<double> got(static_cast<size_t>(n * m)), start(static_cast<size_t>(n * m));
  for (size_t e = 0; e < got.size(); ++e) got[e] = start[e] = 0.25 * static_cast<double>(e % 7) - 0.5;
  const double alpha = 0.3;
  ak::make_cpu_backend(2)->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), alpha,
                                                ak::view_mut(got.data(), n, m));
  for (size_t e = 0; e < want.size(); ++e) want[e] = start[e] + alpha * want[e];
  EXPECT_TRUE(bit_equal(got, want)) << n << "x" << m << "x" << p;
}

TEST_P(FmaGrid, EveryInstructionSetGivesTheSameBits) {
  const auto [n, m, p] = GetParam();
  const auto a = wide_matrix(n, p, 21 + static_cast<uint64_t>(p));
  const auto b = wide_matrix(m, p, 22 + static_cast<uint64_t>(m));
  const auto want = by_definition(a, b, n, m, p);
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    std::vector<double> t(static_cast<size_t>(n * m), 0.0), scratch(t.size());
    ASSERT_TRUE(ak::cpu::avx2::score(a.data(), p, n, b.data(), p, m, p, 1.0, t.data(), m, scratch.data(), 2));
    EXPECT_TRUE(bit_equal(t, want)) << "avx2 " << n << "x" << m << "x" << p;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma")) {
    std::vector<double> t(static_cast<size_t>(n * m), 0.0), scratch(t.size());
    ASSERT_TRUE(ak::cpu::avx512::score(a.data(), p, n, b.data(), p, m, p, 1.0, t.data(), m, scratch.data(), 2));
    EXPECT_TRUE(bit_equal(t, want)) << "avx512 " << n << "x" << m << "x" << p;
  }
}

// Vector tails (p % 8), chunk edges (511..513), p-block edges (1023..1025, 2049), micro-block
// edges in n (R = 4 or 6) and m (3 or 8 per block, 48-row panels), tall inputs (row panels of 480
// when p spans several p-blocks).
INSTANTIATE_TEST_SUITE_P(Kernels, FmaGrid,
                         ::testing::Values(Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{4, 3, 8}, Shape{6, 8, 9}, Shape{7, 9, 63},
                                           Shape{5, 13, 511}, Shape{13, 7, 512}, Shape{2, 49, 513}, Shape{9, 50, 1023},
                                           Shape{25, 17, 1024}, Shape{11, 97, 1025}, Shape{3, 4, 2049},
                                           Shape{1601, 5, 40}, Shape{1000, 7, 1100}, Shape{8, 2, 3001}));

TEST(Fma, IndependentOfThreadsTilesAndRowOrder) {
  const int64_t n = 101, m = 67, p = 1300;  // above the size where the kernel goes parallel
  const auto a = wide_matrix(n, p, 31);
  const auto b = wide_matrix(m, p, 32);
  std::vector<double> full(static_cast<size_t>(n * m), 0.0);
  ak::make_cpu_backend(1)->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0,
                                                ak::view_mut(full.data(), n, m));
  for (int threads : {2, 3}) {
    std::vector<double> got(full.size(), 0.0);
    ak::make_cpu_backend(threads)->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0,
                                                        ak::view_mut(got.data(), n, m));
    EXPECT_TRUE(bit_equal(got, full)) << threads << " threads";
  }
  // Each (i, j) scored alone, and rows taken in reverse order: the same bits.
  auto cpu = ak::make_cpu_backend(2);
  std::vector<float> rev(a.size());
  for (int64_t i = 0; i < n; ++i) std::copy(a.begin() + i * p, a.begin() + (i + 1) * p, rev.begin() + (n - 1 - i) * p);
  std::vector<double> rgot(full.size(), 0.0);
  cpu->score_accumulate_fma(ak::view(rev.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(rgot.data(), n, m));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i % 5; j < m; j += 5) {
      double one = 0;
      cpu->score_accumulate_fma(ak::view(a.data() + i * p, 1, p), ak::view(b.data() + j * p, 1, p), 1.0, ak::view_mut(&one, 1, 1));
      ASSERT_EQ(one, full[static_cast<size_t>(i * m + j)]) << i << "," << j;
      ASSERT_EQ(rgot[static_cast<size_t>((n - 1 - i) * m + j)], full[static_cast<size_t>(i * m + j)]);
    }
}

// The bit tests above can fail: neither a longer chunk nor the canonical float64 order gives the
// FMA kernel's bits on these inputs.
TEST(Fma, TheOrderIsObservable) {
  const int64_t n = 8, m = 8, p = 3000;
  const auto a = wide_matrix(n, p, 41);
  const auto b = wide_matrix(m, p, 42);
  std::vector<double> got(static_cast<size_t>(n * m), 0.0), canon(got.size(), 0.0);
  auto cpu = ak::make_cpu_backend(2);
  cpu->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(got.data(), n, m));
  cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(canon.data(), n, m));
  EXPECT_FALSE(bit_equal(got, by_definition(a, b, n, m, p, 1024)));
  EXPECT_FALSE(bit_equal(got, canon));
}

// Error bound: within a chunk each lane adds at most 64 products with one rounding each, so
// |fma - exact| <= (64 + 4) u sum|a_q b_q| with u = 2^-24 (the float64 steps add far less).
// Measured on random data the normwise error is far below it; both are checked.
TEST(Fma, ErrorWithinTheDocumentedBound) {
  const int64_t n = 64, m = 48, p = 4100;
  const auto a = attrace::test::random_matrix<float>(n, p, 51);
  const auto b = attrace::test::random_matrix<float>(m, p, 52);
  std::vector<double> got(static_cast<size_t>(n * m), 0.0);
  ak::make_cpu_backend(2)->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0,
                                                ak::view_mut(got.data(), n, m));
  const double u = std::ldexp(1.0, -24);
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      long double exact = 0, mag = 0;
      for (int64_t q = 0; q < p; ++q) {
        const long double prod = static_cast<long double>(a[static_cast<size_t>(i * p + q)]) * b[static_cast<size_t>(j * p + q)];
        exact += prod;
        mag += prod < 0 ? -prod : prod;
      }
      const double e = static_cast<double>(got[static_cast<size_t>(i * m + j)] - exact);
      ASSERT_LE(std::fabs(e), 68 * u * static_cast<double>(mag)) << i << "," << j;
      err2 += e * e;
      ref2 += static_cast<double>(exact * exact);
    }
  std::printf("[ fma ] normwise error vs exact sums: %.3g (p = %lld, uniform [-1, 1) inputs)\n", std::sqrt(err2 / ref2),
              static_cast<long long>(p));
  EXPECT_LT(std::sqrt(err2 / ref2), 1e-6);
}

TEST(Fma, SqnormEqualsSelfScoreAndNonFiniteValuesPropagate) {
  const int64_t n = 9, p = 777;
  auto a = wide_matrix(n, p, 61);
  a[static_cast<size_t>(3 * p + 500)] = std::numeric_limits<float>::infinity();
  a[static_cast<size_t>(5 * p + 10)] = std::numeric_limits<float>::quiet_NaN();
  auto cpu = ak::make_cpu_backend(2);
  std::vector<double> self(static_cast<size_t>(n * n), 0.0), norms(static_cast<size_t>(n), 0.0);
  cpu->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(a.data(), n, p), 1.0, ak::view_mut(self.data(), n, n));
  cpu->sqnorm_accumulate_fma(ak::view(a.data(), n, p), 1.0, norms.data());
  for (int64_t i = 0; i < n; ++i) {
    const double d = self[static_cast<size_t>(i * n + i)], want = fma_by_definition(a.data() + i * p, a.data() + i * p, p);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(d) && std::isnan(norms[static_cast<size_t>(i)])) << i;
    } else {
      EXPECT_EQ(d, want) << i;
      EXPECT_EQ(norms[static_cast<size_t>(i)], want) << i;
    }
  }
  EXPECT_TRUE(std::isinf(norms[3]));
  EXPECT_TRUE(std::isnan(norms[5]));
}

}  // namespace
