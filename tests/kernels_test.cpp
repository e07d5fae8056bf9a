// kernels/: every backend against the naive float64 twins, on odd sizes, with poisoned outputs.
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/reference.hpp>
#include <attrace/kernels/rounding.hpp>

#include "kernel_test_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>

namespace ak = attrace::kernels;

namespace {

using attrace::test::bit_equal;
using attrace::test::random_matrix;

// Mixed tolerance: |got - want| <= rtol * max(|want|, floor), floor guarding near-zero entries.
void expect_close(const std::vector<double>& got, const std::vector<double>& want, double rtol, double floor) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "entry " << i << " not written or not finite";
    EXPECT_LE(std::abs(got[i] - want[i]), rtol * std::max(std::abs(want[i]), floor)) << "entry " << i;
  }
}

using Shape = std::tuple<int64_t, int64_t, int64_t>;  // n, m, p

class ScoreGrid : public ::testing::TestWithParam<Shape> {};

TEST_P(ScoreGrid, CpuMatchesNaiveFloat64Twin) {
  const auto [n, m, p] = GetParam();
  const auto a = random_matrix<float>(n, p, 11 + n);
  const auto b = random_matrix<float>(m, p, 23 + m);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> want(static_cast<size_t>(n * m), 0.5), got(static_cast<size_t>(n * m), 0.5);
  ak::reference::score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.75, ak::view_mut(want.data(), n, m));
  auto cpu = ak::make_cpu_backend();
  cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.75, ak::view_mut(got.data(), n, m));
  expect_close(got, want, 1e-12, std::sqrt(static_cast<double>(p)));

  // Poisoned output: every entry must be overwritten by "+=" from a finite start, so use the
  // fresh-buffer form (start from 0) and check nothing stays NaN-poisoned past the matrix.
  std::vector<double> guarded(static_cast<size_t>(n * m) + 8, nan);
  std::fill(guarded.begin(), guarded.begin() + n * m, 0.0);
  cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(guarded.data(), n, m));
  for (int64_t i = 0; i < n * m; ++i) ASSERT_TRUE(std::isfinite(guarded[static_cast<size_t>(i)]));
  for (size_t i = static_cast<size_t>(n * m); i < guarded.size(); ++i) ASSERT_TRUE(std::isnan(guarded[i])) << "wrote past the end";
}

TEST_P(ScoreGrid, Float64InputsMatchTwin) {
  const auto [n, m, p] = GetParam();
  const auto a = random_matrix<double>(n, p, 5);
  const auto b = random_matrix<double>(m, p, 6);
  std::vector<double> want(static_cast<size_t>(n * m), 0.0), got(static_cast<size_t>(n * m), 0.0);
  ak::reference::score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), -2.0, ak::view_mut(want.data(), n, m));
  ak::make_cpu_backend()->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), -2.0,
                                           ak::view_mut(got.data(), n, m));
  expect_close(got, want, 1e-12, std::sqrt(static_cast<double>(p)));
}

TEST_P(ScoreGrid, IndependentOfThreadCountAndRowBlock) {
  const auto [n, m, p] = GetParam();
  const auto a = random_matrix<float>(n, p, 77);
  const auto b = random_matrix<float>(m, p, 78);
  auto cpu = ak::make_cpu_backend();
  std::vector<double> one(static_cast<size_t>(n * m), 0.0), two(static_cast<size_t>(n * m), 0.0);
  ak::make_cpu_backend(1)->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(one.data(), n, m));
  cpu = ak::make_cpu_backend(3);  // more threads than this machine's cores
  // Rows computed one at a time (as a batch of one) must equal rows computed together.
  for (int64_t i = 0; i < n; ++i)
    cpu->score_accumulate(ak::view(a.data() + i * p, 1, p), ak::view(b.data(), m, p), 1.0,
                          ak::view_mut(two.data() + i * m, 1, m));
  EXPECT_TRUE(bit_equal(one, two));
}

INSTANTIATE_TEST_SUITE_P(OddSizes, ScoreGrid,
                         ::testing::Values(Shape{1, 1, 1}, Shape{1, 3, 7}, Shape{3, 1, 8}, Shape{5, 4, 9},
                                           Shape{17, 13, 1000}, Shape{64, 3, 1}, Shape{2, 2, 4097}, Shape{33, 31, 129}));

// The documented canonical order, written out plainly: the CPU backend (whatever vector width
// it was dispatched to) must reproduce it bit for bit, as must the CUDA kernel.
double canonical_by_definition(const float* a, const float* b, int64_t p) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t q = 0; q < p; ++q) {
    volatile double prod = static_cast<double>(a[q]) * static_cast<double>(b[q]);  // no fusion
    lane[q % 8] = lane[q % 8] + prod;
  }
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

TEST(Kernels, CpuFollowsTheCanonicalOrderBitForBit) {
  for (const auto& [n, m, p] : {Shape{3, 5, 1}, Shape{4, 4, 7}, Shape{7, 3, 4097}, Shape{16, 9, 1000}}) {
    const auto a = random_matrix<float>(n, p, 91 + p);
    const auto b = random_matrix<float>(m, p, 92 + p);
    std::vector<double> got(static_cast<size_t>(n * m), 0.0), want(static_cast<size_t>(n * m), 0.0);
    ak::make_cpu_backend()->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::view_mut(got.data(), n, m));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) want[static_cast<size_t>(i * m + j)] = canonical_by_definition(a.data() + i * p, b.data() + j * p, p);
    EXPECT_TRUE(bit_equal(got, want)) << n << "x" << m << "x" << p;
  }
}

TEST(Kernels, BlasScoringIsCloseAndRepeatable) {
  if (!ak::blas_compiled()) GTEST_SKIP() << "this build has no BLAS";
  const int64_t n = 37, m = 11, p = 1000;
  const auto a = random_matrix<float>(n, p, 1), b = random_matrix<float>(m, p, 2);
  std::vector<double> want(static_cast<size_t>(n * m), 0.0), got(want.size(), 0.0), again(want.size(), 0.0);
  ak::reference::score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 2.0, ak::view_mut(want.data(), n, m));
  auto cpu = ak::make_cpu_backend();
  cpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 2.0, ak::GemmMath::ieee, ak::view_mut(got.data(), n, m));
  cpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 2.0, ak::GemmMath::ieee, ak::view_mut(again.data(), n, m));
  expect_close(got, want, 2e-4, std::sqrt(static_cast<double>(p)));  // float32 accumulation
  EXPECT_TRUE(bit_equal(got, again));
  const auto ad = random_matrix<double>(n, p, 3), bd = random_matrix<double>(m, p, 4);
  std::fill(want.begin(), want.end(), 0.0);
  std::fill(got.begin(), got.end(), 0.0);
  ak::reference::score_accumulate(ak::view(ad.data(), n, p), ak::view(bd.data(), m, p), 1.0, ak::view_mut(want.data(), n, m));
  cpu->score_accumulate_blas(ak::view(ad.data(), n, p), ak::view(bd.data(), m, p), 1.0, ak::view_mut(got.data(), n, m));
  expect_close(got, want, 1e-12, std::sqrt(static_cast<double>(p)));
}

// Independent reference for the GEMM input roundings: keep `keep` stored significand bits by
// comparing the distances to the two neighbouring representable values (not by adding half an
// ulp and masking, as the kernels do). Ties go to the even neighbour or away from zero.
float round_by_distance(float x, int keep, bool ties_even) {
  if (!std::isfinite(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t sign = u & 0x80000000u, mag = u & 0x7FFFFFFFu, step = 1u << (23 - keep);
  const uint32_t lo = mag & ~(step - 1), hi = lo + step;
  float flo, fhi;
  std::memcpy(&flo, &lo, 4);
  std::memcpy(&fhi, &hi, 4);
  const double a = std::fabs(static_cast<double>(x));
  // Past the largest finite value the upper neighbour is 2^128 (which rounds to infinity).
  const double hi_value = (hi >= 0x7F800000u) ? std::ldexp(1.0, 128) : static_cast<double>(fhi);
  const double dlo = a - static_cast<double>(flo), dhi = hi_value - a;
  bool up = dhi < dlo;
  if (dhi == dlo) up = ties_even ? ((lo / step) & 1u) != 0 : true;
  uint32_t r = (up ? std::min(hi, 0x7F800000u) : lo) | sign;
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

TEST(GemmMath, RoundingsMatchAnIndependentReference) {
  std::vector<uint32_t> cases = {0x00000000u, 0x80000000u, 0x3F800000u, 0x3F801000u, 0x3F803000u, 0x3F808000u, 0x3F818000u,
                                 0x3F80FFFFu, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x7F7FEFFFu, 0x00000001u, 0x00001000u, 0x00008000u,
                                 0x007FFFFFu, 0x80018000u, 0x7F800000u, 0xFF800000u};
  std::mt19937_64 rng(5);
  for (int i = 0; i < 200000; ++i) cases.push_back(static_cast<uint32_t>(rng()));
  for (const uint32_t u : cases) {
    float x;
    std::memcpy(&x, &u, 4);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(ak::round_tf32(x)));
      EXPECT_TRUE(std::isnan(ak::round_bf16(x))) << std::hex << u;
      continue;
    }
    const float t = ak::round_tf32(x), want_t = round_by_distance(x, 10, false);
    const float b = ak::round_bf16(x), want_b = round_by_distance(x, 7, true);
    ASSERT_EQ(std::memcmp(&t, &want_t, 4), 0) << "tf32 of 0x" << std::hex << u << ": " << t << " vs " << want_t;
    ASSERT_EQ(std::memcmp(&b, &want_b, 4), 0) << "bf16 of 0x" << std::hex << u << ": " << b << " vs " << want_b;
  }
  // A few values worked by hand: 1 + 2^-11 is a TF32 tie (away: 1 + 2^-10); 1 + 2^-8 a bf16 tie
  // (even: 1); 1 + 3 * 2^-8 a bf16 tie (even: 1 + 2^-6).
  EXPECT_EQ(ak::round_tf32(1.0f + std::ldexp(1.0f, -11)), 1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(ak::round_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  EXPECT_EQ(ak::round_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isinf(ak::round_bf16(std::numeric_limits<float>::max())));
}

// tf32 / bf16 GEMM scoring: equal to float64 sums over the rounded inputs up to float32
// summation error, visibly different from IEEE float32 scoring, and within the rounding's own
// error of the exact scores.
TEST(GemmMath, ReducedPrecisionScoringOnCpu) {
  if (!ak::blas_compiled()) GTEST_SKIP() << "this build has no BLAS";
  const int64_t n = 2100, m = 7, p = 300;  // n > the 2048-row GEMM tile
  const auto a = random_matrix<float>(n, p, 31), b = random_matrix<float>(m, p, 32);
  auto cpu = ak::make_cpu_backend();
  std::vector<double> ieee(static_cast<size_t>(n * m), 0.0);
  cpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, ak::GemmMath::ieee, ak::view_mut(ieee.data(), n, m));
  for (const auto math : {ak::GemmMath::tf32, ak::GemmMath::bf16}) {
    const auto round = [&](float v) { return math == ak::GemmMath::tf32 ? ak::round_tf32(v) : ak::round_bf16(v); };
    const double unit = math == ak::GemmMath::tf32 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);  // input rounding
    std::vector<double> got(static_cast<size_t>(n * m), 0.0);
    cpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, math, ak::view_mut(got.data(), n, m));
    size_t differs = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double rounded = 0, exact = 0, mass = 0;
        for (int64_t q = 0; q < p; ++q) {
          const float x = a[static_cast<size_t>(i * p + q)], y = b[static_cast<size_t>(j * p + q)];
          rounded += static_cast<double>(round(x)) * round(y);
          exact += static_cast<double>(x) * y;
          mass += std::fabs(static_cast<double>(x) * y);
        }
        const double g = got[static_cast<size_t>(i * m + j)];
        ASSERT_LE(std::fabs(g - rounded), static_cast<double>(p) * std::ldexp(1.0, -24) * mass) << ak::to_string(math) << " " << i << "," << j;
        ASSERT_LE(std::fabs(g - exact), (2.0 * unit + static_cast<double>(p) * std::ldexp(1.0, -24)) * mass);
        differs += g != ieee[static_cast<size_t>(i * m + j)];
      }
    EXPECT_GT(differs, static_cast<size_t>(n * m / 2)) << ak::to_string(math) << ": the inputs were not rounded";
  }
  std::vector<double> out(static_cast<size_t>(n * m), 0.0);
  const auto ad = random_matrix<double>(n, p, 1);
  EXPECT_THROW(cpu->score_accumulate_blas(ak::view(ad.data(), n, p), ak::view(ad.data(), n, p), 1.0, ak::view_mut(out.data(), n, m)),
               attrace::InputError);  // shapes
  EXPECT_EQ(ak::parse_gemm_math("bf16"), ak::GemmMath::bf16);
  EXPECT_THROW(ak::parse_gemm_math("fp8"), attrace::InputError);
}

TEST(Kernels, SqnormEqualsSelfScore) {
  const int64_t n = 9, p = 301;
  const auto a = random_matrix<float>(n, p, 3);
  auto cpu = ak::make_cpu_backend();
  std::vector<double> norms(n, 0.0), full(static_cast<size_t>(n * n), 0.0);
  cpu->sqnorm_accumulate(ak::view(a.data(), n, p), 0.3, norms.data());
  cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(a.data(), n, p), 0.3, ak::view_mut(full.data(), n, n));
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(norms[static_cast<size_t>(i)], full[static_cast<size_t>(i * n + i)]);
}

TEST(Kernels, SegmentedRowSumExactOnIntegers) {
  // Integer-valued inputs: sums are exact, so compare exactly against a hand loop.
  const int64_t n = 23, m = 5, segs = 4;
  std::vector<double> x(static_cast<size_t>(n * m));
  std::vector<int64_t> seg(n);
  for (int64_t i = 0; i < n; ++i) {
    seg[static_cast<size_t>(i)] = (i * 7) % segs;
    for (int64_t j = 0; j < m; ++j) x[static_cast<size_t>(i * m + j)] = static_cast<double>((i * 31 + j * 17) % 13 - 6);
  }
  std::vector<double> want(static_cast<size_t>(segs * m), 0.0), got(static_cast<size_t>(segs * m), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) want[static_cast<size_t>(seg[static_cast<size_t>(i)] * m + j)] += x[static_cast<size_t>(i * m + j)];
  ak::make_cpu_backend()->segmented_row_sum(ak::view(x.data(), n, m), seg.data(), ak::view_mut(got.data(), segs, m));
  EXPECT_TRUE(bit_equal(got, want));
}

TEST(Kernels, SegmentedRowSumRejectsOutOfRangeSegment) {
  std::vector<double> x(4, 1.0), out(2, 0.0);
  std::vector<int64_t> seg = {0, 2};
  EXPECT_THROW(ak::make_cpu_backend()->segmented_row_sum(ak::view(x.data(), 2, 2), seg.data(), ak::view_mut(out.data(), 1, 2)),
               attrace::InputError);
}

class TopkGrid : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(TopkGrid, MatchesFullSortWithTies) {
  const auto [n, m, k] = GetParam();
  std::mt19937_64 rng(n * 131 + m);
  std::vector<double> x(static_cast<size_t>(n * m));
  for (auto& v : x) v = static_cast<double>(static_cast<int64_t>(rng() % 7) - 3);  // many ties
  const auto got = ak::make_cpu_backend()->column_topk(ak::view(x.data(), n, m), k);
  attrace::test::expect_same_topk(got, ak::reference::column_topk(ak::view(x.data(), n, m), k));
}

INSTANTIATE_TEST_SUITE_P(Sizes, TopkGrid,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(5, 3, 10), std::make_tuple(37, 11, 5),
                                           std::make_tuple(1000, 2, 17), std::make_tuple(9, 4, 0)));

TEST(Kernels, TopkRejectsNaN) {
  std::vector<double> x = {1.0, std::numeric_limits<double>::quiet_NaN()};
  EXPECT_THROW(ak::make_cpu_backend()->column_topk(ak::view(x.data(), 2, 1), 1), attrace::NumericError);
}

TEST(Kernels, BackendRegistry) {
  EXPECT_EQ(ak::make_backend("cpu")->name(), "cpu");
  EXPECT_THROW(ak::make_backend("tpu"), attrace::InputError);
  if (ak::cuda_device_count() == 0) {
    EXPECT_EQ(ak::make_backend("auto")->name(), "cpu");
    EXPECT_THROW(ak::make_backend("cuda"), attrace::InputError);
  } else {
    EXPECT_EQ(ak::make_backend("auto")->name(), "cuda");
  }
}

// CUDA vs CPU: the canonical order makes them bit-identical, not merely close.
TEST(KernelsCuda, ScoreBitIdenticalToCpu) {
  if (ak::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda compiled: " << ak::cuda_compiled() << ")";
  auto gpu = ak::make_backend("cuda");
  auto cpu = ak::make_cpu_backend();
  for (const auto& [n, m, p] : {Shape{1, 1, 1}, Shape{17, 13, 1000}, Shape{33, 70, 129}, Shape{300, 5, 4097}}) {
    const auto a = random_matrix<float>(n, p, 1 + p);
    const auto b = random_matrix<float>(m, p, 2 + p);
    std::vector<double> c1(static_cast<size_t>(n * m), 0.25), c2(static_cast<size_t>(n * m), 0.25);
    cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.5, ak::view_mut(c1.data(), n, m));
    gpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.5, ak::view_mut(c2.data(), n, m));
    EXPECT_TRUE(bit_equal(c1, c2)) << n << "x" << m << "x" << p;
    const auto ad = random_matrix<double>(n, p, 3 + p);
    const auto bd = random_matrix<double>(m, p, 4 + p);
    std::fill(c1.begin(), c1.end(), 0.0);
    std::fill(c2.begin(), c2.end(), 0.0);
    cpu->score_accumulate(ak::view(ad.data(), n, p), ak::view(bd.data(), m, p), 1.0, ak::view_mut(c1.data(), n, m));
    gpu->score_accumulate(ak::view(ad.data(), n, p), ak::view(bd.data(), m, p), 1.0, ak::view_mut(c2.data(), n, m));
    EXPECT_TRUE(bit_equal(c1, c2)) << "fp64 " << n << "x" << m << "x" << p;
  }
}

}  // namespace
