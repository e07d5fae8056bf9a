// kernels/ projection: Philox known answers, dense and Kronecker projections against naive
// float64 twins on odd sizes, determinism, batch independence, poisoned outputs, the 1/sqrt(k)
// error law, and (with a GPU) CPU vs CUDA bit identity.
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/philox.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>

namespace ak = attrace::kernels;

namespace {

TEST(Philox, Random123KnownAnswers) {
  const auto a = ak::philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(a.v[0], 0x6627e8d5u);
  EXPECT_EQ(a.v[1], 0xe169c58du);
  EXPECT_EQ(a.v[2], 0xbc57ac4cu);
  EXPECT_EQ(a.v[3], 0x9b00dbd8u);
  const auto b = ak::philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(b.v[0], 0x408f276du);
  EXPECT_EQ(b.v[3], 0x6d5451fdu);
  const auto c = ak::philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(c.v[0], 0xd16cfe09u);
  EXPECT_EQ(c.v[1], 0x94fdccebu);
  EXPECT_EQ(c.v[2], 0x5001e420u);
  EXPECT_EQ(c.v[3], 0x24126ea1u);
}

TEST(Philox, EntriesArePureFunctionsWithTheRightLaw) {
  ak::ProjectionSpec s{42, 3, 100, ak::ProjectionKind::rademacher};
  int plus = 0;
  for (int64_t r = 0; r < 100; ++r)
    for (int64_t c = 0; c < 100; ++c) {
      const float e = ak::projection_entry(s, r, c);
      ASSERT_TRUE(e == 0.1f || e == -0.1f);
      plus += e > 0;
    }
  EXPECT_NEAR(plus, 5000, 300);  // 6 sigma
  // 64-bit rows: rows 2^32 apart are different rows.
  EXPECT_NE(ak::rademacher_block(s, 5, 0).v[0], ak::rademacher_block(s, 5 + (int64_t{1} << 32), 0).v[0]);
  s.kind = ak::ProjectionKind::gaussian;
  double sum = 0, sq = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double z = ak::gaussian_unscaled(s, i / 100, i % 100);
    ASSERT_TRUE(std::isfinite(z));
    sum += z;
    sq += z * z;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.05);
  EXPECT_NEAR(sq / n, 1.0, 0.05);
}

template <class T>
T from_float(float f);
template <>
float from_float<float>(float f) {
  return f;
}
template <>
ak::BFloat16 from_float<ak::BFloat16>(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return {static_cast<uint16_t>(b >> 16)};  // truncation: exact bfloat16 values
}
template <>
ak::Half from_float<ak::Half>(float f) {  // values in [-1, 1] with <= 10 mantissa bits
  const float a = std::fabs(f);
  int e;
  const float m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  uint16_t bits = 0;
  if (a >= 6.103515625e-05f) {
    const int man = static_cast<int>(std::ldexp(m, 11)) - 1024;
    bits = static_cast<uint16_t>(((e - 1 + 15) << 10) | (man & 0x3FF));
  }
  return {static_cast<uint16_t>(bits | (f < 0 ? 0x8000 : 0))};
}
float as_float(float v) { return v; }
float as_float(ak::BFloat16 v) {
  const uint32_t b = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
float as_float(ak::Half v) {
  const int e = (v.bits >> 10) & 0x1F, man = v.bits & 0x3FF;
  const float a = e ? std::ldexp(1.0f + man / 1024.0f, e - 15) : std::ldexp(static_cast<float>(man), -24);
  return (v.bits & 0x8000) ? -a : a;
}

template <class T>
std::vector<T> random_input(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<T> v(static_cast<size_t>(rows * cols));
  for (auto& x : v) x = from_float<T>(static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 1024.0f);
  return v;
}

// Naive twin: float64 sum of g * (unscaled entry rounded to float32), times the scale.
template <class T>
std::vector<double> reference_projection(const std::vector<T>& g, int64_t rows, int64_t p, const ak::ProjectionSpec& s,
                                         std::vector<double>* bound) {
  std::vector<double> out(static_cast<size_t>(rows * s.k), 0.0);
  bound->assign(out.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.k));
  for (int64_t q = 0; q < p; ++q)
    for (int64_t j = 0; j < s.k; ++j) {
      const double e = s.kind == ak::ProjectionKind::rademacher
                           ? ak::rademacher_sign(ak::rademacher_block(s, q, j >> 7), j)
                           : static_cast<double>(static_cast<float>(ak::gaussian_unscaled(s, q, j)));
      for (int64_t b = 0; b < rows; ++b) {
        const double gv = as_float(g[static_cast<size_t>(b * p + q)]);
        out[static_cast<size_t>(b * s.k + j)] += gv * e * scale;
        (*bound)[static_cast<size_t>(b * s.k + j)] += std::fabs(gv * e) * scale;
      }
    }
  return out;
}

using Shape = std::tuple<int64_t, int64_t, int64_t>;  // B, p, k

template <class T>
void check_dense(const Shape& shape, ak::ProjectionKind kind) {
  const auto [rows, p, k] = shape;
  const ak::ProjectionSpec s{0x5eed + static_cast<uint64_t>(p), 7, k, kind};
  const auto g = random_input<T>(rows, p, static_cast<uint64_t>(rows * 31 + p));
  std::vector<double> bound;
  const auto want = reference_projection(g, rows, p, s, &bound);
  std::vector<float> got(static_cast<size_t>(rows * k) + 16, std::numeric_limits<float>::quiet_NaN());  // poisoned + guard
  ak::make_cpu_backend()->project_dense(ak::HostMatrix<T>{g.data(), rows, p, p}, s, ak::view_mut(got.data(), rows, k));
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "entry " << i << " not written";
    // float32 accumulation: error below p * 2^-24 * sum|terms| (+ the final rounding).
    const double tol = (static_cast<double>(p) + 2) * 6e-8 * bound[i] + 1e-30;
    ASSERT_LE(std::fabs(got[i] - want[i]), tol) << "entry " << i << " of " << rows << "x" << p << "x" << k;
  }
  for (size_t i = want.size(); i < got.size(); ++i) ASSERT_TRUE(std::isnan(got[i])) << "wrote past the end";
}

class DenseGrid : public ::testing::TestWithParam<Shape> {};
TEST_P(DenseGrid, RademacherFloat32) { check_dense<float>(GetParam(), ak::ProjectionKind::rademacher); }
TEST_P(DenseGrid, GaussianFloat32) { check_dense<float>(GetParam(), ak::ProjectionKind::gaussian); }
TEST_P(DenseGrid, RademacherBFloat16) { check_dense<ak::BFloat16>(GetParam(), ak::ProjectionKind::rademacher); }
TEST_P(DenseGrid, RademacherFloat16) { check_dense<ak::Half>(GetParam(), ak::ProjectionKind::rademacher); }
INSTANTIATE_TEST_SUITE_P(OddSizes, DenseGrid,
                         ::testing::Values(Shape{1, 1, 1}, Shape{1, 1, 3}, Shape{3, 7, 1000}, Shape{1000, 5, 3},
                                           Shape{5, 300, 129}, Shape{2, 1000, 257}, Shape{1, 33, 4096}));

TEST(Dense, BitIdenticalRerunsBatchAndThreadIndependent) {
  const int64_t rows = 37, p = 513, k = 300;
  const auto g = random_input<float>(rows, p, 9);
  const ak::ProjectionSpec s{1, 2, k, ak::ProjectionKind::rademacher};
  auto cpu = ak::make_cpu_backend();
  std::vector<float> a(static_cast<size_t>(rows * k)), b(a.size()), c(a.size());
  ak::make_cpu_backend(1)->project_dense(ak::view(g.data(), rows, p), s, ak::view_mut(a.data(), rows, k));
  ak::make_cpu_backend(3)->project_dense(ak::view(g.data(), rows, p), s, ak::view_mut(b.data(), rows, k));
  for (int64_t r = 0; r < rows; ++r)  // one row at a time: a batch of one
    cpu->project_dense(ak::view(g.data() + r * p, 1, p), s, ak::view_mut(c.data() + r * k, 1, k));
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * 4), 0);
}

TEST(Dense, RejectsBadShapes) {
  std::vector<float> g(6), out(6);
  auto cpu = ak::make_cpu_backend();
  EXPECT_THROW(cpu->project_dense(ak::view(g.data(), 2, 3), {0, 0, 0, ak::ProjectionKind::rademacher}, ak::view_mut(out.data(), 2, 0)),
               attrace::InputError);
  EXPECT_THROW(cpu->project_dense(ak::view(g.data(), 2, 3), {0, 0, 4, ak::ProjectionKind::rademacher}, ak::view_mut(out.data(), 2, 3)),
               attrace::InputError);
}

// Relative inner-product error |<Pu,Pv> - <u,v>| / (|u||v|) falls like 1/sqrt(k).
TEST(Dense, InnerProductErrorFallsLikeOneOverSqrtK) {
  const int64_t p = 1500, trials = 120;
  auto cpu = ak::make_cpu_backend();
  std::vector<double> mean_err;
  for (int64_t k : {256, 1024, 4096}) {
    double total = 0;
    for (int64_t t = 0; t < trials; ++t) {
      const auto uv = random_input<float>(2, p, static_cast<uint64_t>(100 + t));
      std::vector<float> out(static_cast<size_t>(2 * k));
      cpu->project_dense(ak::view(uv.data(), 2, p), {77, static_cast<uint32_t>(t), k, ak::ProjectionKind::rademacher},
                         ak::view_mut(out.data(), 2, k));
      double exact = 0, nu = 0, nv = 0, approx = 0;
      for (int64_t q = 0; q < p; ++q) {
        exact += static_cast<double>(uv[static_cast<size_t>(q)]) * uv[static_cast<size_t>(p + q)];
        nu += static_cast<double>(uv[static_cast<size_t>(q)]) * uv[static_cast<size_t>(q)];
        nv += static_cast<double>(uv[static_cast<size_t>(p + q)]) * uv[static_cast<size_t>(p + q)];
      }
      for (int64_t j = 0; j < k; ++j) approx += static_cast<double>(out[static_cast<size_t>(j)]) * out[static_cast<size_t>(k + j)];
      total += std::fabs(approx - exact) / std::sqrt(nu * nv);
    }
    mean_err.push_back(total / trials);
    // E|N(0, 1/k)| = sqrt(2/pi)/sqrt(k) ~ 0.8/sqrt(k) for nearly orthogonal u, v.
    EXPECT_GT(mean_err.back() * std::sqrt(static_cast<double>(k)), 0.5) << "k=" << k;
    EXPECT_LT(mean_err.back() * std::sqrt(static_cast<double>(k)), 1.2) << "k=" << k;
  }
  EXPECT_GT(mean_err[0] / mean_err[2], 2.8);  // 16x k -> 4x smaller error
  EXPECT_LT(mean_err[0] / mean_err[2], 5.7);
}

class KroneckerGrid : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>> {};

// Equals the dense projection of the flattened d_out x d_in gradient with P = P_out (x) P_in.
TEST_P(KroneckerGrid, EqualsDenseProjectionWithKroneckerMatrix) {
  const auto [rows, positions, d_in, d_out, k_in, k_out] = GetParam();
  const auto x = random_input<float>(rows * positions, d_in, 1);
  const auto delta = random_input<float>(rows * positions, d_out, 2);
  const ak::ProjectionSpec pin{11, 1, k_in, ak::ProjectionKind::rademacher}, pout{11, 2, k_out, ak::ProjectionKind::rademacher};
  std::vector<float> got(static_cast<size_t>(rows * k_in * k_out) + 8, std::numeric_limits<float>::quiet_NaN());
  ak::make_cpu_backend()->project_kronecker(ak::view(x.data(), rows * positions, d_in), ak::view(delta.data(), rows * positions, d_out),
                                            positions, pin, pout, ak::view_mut(got.data(), rows, k_in * k_out));
  for (int64_t b = 0; b < rows; ++b) {
    // Flattened per-example gradient G[o][i] = sum_t delta[o] x[i], then (P_out (x) P_in)^T vec(G).
    std::vector<double> grad(static_cast<size_t>(d_out * d_in), 0.0);
    for (int64_t t = 0; t < positions; ++t)
      for (int64_t o = 0; o < d_out; ++o)
        for (int64_t i = 0; i < d_in; ++i)
          grad[static_cast<size_t>(o * d_in + i)] += static_cast<double>(delta[static_cast<size_t>((b * positions + t) * d_out + o)]) *
                                                     x[static_cast<size_t>((b * positions + t) * d_in + i)];
    for (int64_t a = 0; a < k_out; ++a)
      for (int64_t c = 0; c < k_in; ++c) {
        double want = 0, bound = 0;
        for (int64_t o = 0; o < d_out; ++o)
          for (int64_t i = 0; i < d_in; ++i) {
            const double pkron = static_cast<double>(ak::projection_entry(pout, o, a)) * ak::projection_entry(pin, i, c);
            want += pkron * grad[static_cast<size_t>(o * d_in + i)];
            bound += std::fabs(pkron * grad[static_cast<size_t>(o * d_in + i)]);
          }
        const float g = got[static_cast<size_t>(b * k_in * k_out + a * k_in + c)];
        ASSERT_TRUE(std::isfinite(g));
        ASSERT_LE(std::fabs(g - want), static_cast<double>(d_in + d_out + positions + 4) * 1.2e-7 * bound + 1e-30)
            << "example " << b << " (" << a << "," << c << ")";
      }
  }
  for (size_t i = static_cast<size_t>(rows * k_in * k_out); i < got.size(); ++i) ASSERT_TRUE(std::isnan(got[i]));
}

INSTANTIATE_TEST_SUITE_P(Shapes, KroneckerGrid,
                         ::testing::Values(std::make_tuple(1, 1, 1, 1, 1, 1), std::make_tuple(3, 1, 7, 5, 4, 3),
                                           std::make_tuple(2, 3, 9, 4, 130, 2), std::make_tuple(5, 4, 33, 17, 8, 16)));

TEST(ProjectionCuda, RademacherBitIdenticalToCpu) {
  if (ak::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda compiled: " << ak::cuda_compiled() << ")";
  auto gpu = ak::make_backend("cuda");
  auto cpu = ak::make_cpu_backend();
  for (const auto& [rows, p, k] : {Shape{1, 1, 1}, Shape{3, 7, 1000}, Shape{1000, 5, 3}, Shape{17, 4097, 513}}) {
    const auto g = random_input<float>(rows, p, static_cast<uint64_t>(p));
    const ak::ProjectionSpec s{99, 4, k, ak::ProjectionKind::rademacher};
    std::vector<float> a(static_cast<size_t>(rows * k)), b(a.size(), std::numeric_limits<float>::quiet_NaN());
    cpu->project_dense(ak::view(g.data(), rows, p), s, ak::view_mut(a.data(), rows, k));
    gpu->project_dense(ak::view(g.data(), rows, p), s, ak::view_mut(b.data(), rows, k));
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << rows << "x" << p << "x" << k;
    const auto gb = random_input<ak::BFloat16>(rows, p, static_cast<uint64_t>(p + 1));
    cpu->project_dense(ak::HostMatrix<ak::BFloat16>{gb.data(), rows, p, p}, s, ak::view_mut(a.data(), rows, k));
    gpu->project_dense(ak::HostMatrix<ak::BFloat16>{gb.data(), rows, p, p}, s, ak::view_mut(b.data(), rows, k));
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << "bf16 " << rows << "x" << p << "x" << k;
  }
}

// The documented summation order written out plainly, one output at a time: within each chunk of
// kProjectionChunk rows of P, products g * e added in ascending row order to a float32 sum that
// starts at 0.0f (unfused: tests build with -ffp-contract=off); the chunk sums added in ascending
// chunk order to an accumulator that starts at the first one; the scale last.
template <class T>
std::vector<float> documented_order(const std::vector<T>& g, int64_t rows, int64_t p, const ak::ProjectionSpec& s, int64_t chunk) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.k)));
  std::vector<float> out(static_cast<size_t>(rows * s.k));
  std::vector<float> e(static_cast<size_t>(p));
  for (int64_t j = 0; j < s.k; ++j) {
    for (int64_t q = 0; q < p; ++q)
      e[static_cast<size_t>(q)] = s.kind == ak::ProjectionKind::rademacher ? ak::rademacher_sign(ak::rademacher_block(s, q, j / 128), j)
                                                                          : static_cast<float>(ak::gaussian_unscaled(s, q, j));
    for (int64_t b = 0; b < rows; ++b) {
      float acc = 0.0f;
      for (int64_t c = 0; c * chunk < p; ++c) {
        float part = 0.0f;
        for (int64_t q = c * chunk; q < std::min(p, (c + 1) * chunk); ++q) {
          const float term = as_float(g[static_cast<size_t>(b * p + q)]) * e[static_cast<size_t>(q)];
          part = part + term;
        }
        acc = c == 0 ? part : acc + part;
      }
      out[static_cast<size_t>(b * s.k + j)] = acc * scale;
    }
  }
  return out;
}

// Full-mantissa inputs over several binades, so that sums in any other order round differently.
std::vector<float> rough_input(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v)
    x = std::ldexp(static_cast<float>(static_cast<double>(rng() >> 40) / 16777216.0 - 0.5), static_cast<int>(rng() % 9) - 4);
  return v;
}

template <class T>
void expect_documented_order(int64_t rows, int64_t p, int64_t k, ak::ProjectionKind kind) {
  const ak::ProjectionSpec s{0xC0FFEE, 3, k, kind};
  const auto raw = rough_input(rows * p, static_cast<uint64_t>(p * 7 + rows));
  std::vector<T> g(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) g[i] = from_float<T>(raw[i]);
  const auto want = documented_order(g, rows, p, s, ak::kProjectionChunk);
  for (const int threads : {1, 2, 3}) {
    std::vector<float> got(want.size() + 8, std::numeric_limits<float>::quiet_NaN());
    ak::make_cpu_backend(threads)->project_dense(ak::HostMatrix<T>{g.data(), rows, p, p}, s, ak::view_mut(got.data(), rows, k));
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0)
        << rows << "x" << p << "x" << k << " with " << threads << " threads";
    for (size_t i = want.size(); i < got.size(); ++i) ASSERT_TRUE(std::isnan(got[i])) << "wrote past the end";
  }
  if (p > ak::kProjectionChunk) {  // the inputs can tell the orders apart: one unchunked sum differs
    const auto plain = documented_order(g, rows, p, s, p);
    EXPECT_NE(std::memcmp(plain.data(), want.data(), want.size() * 4), 0) << "inputs too tame to test the order";
  }
}

TEST(Dense, ChunkedOrderEqualsTheDocumentedScalarOrder) {
  const int64_t c = ak::kProjectionChunk;
  expect_documented_order<float>(3, 3 * c + 17, 300, ak::ProjectionKind::rademacher);
  expect_documented_order<float>(2, 2 * c, 129, ak::ProjectionKind::rademacher);  // chunk-aligned end
  expect_documented_order<float>(5, c - 1, 40, ak::ProjectionKind::rademacher);   // one chunk: the plain order
  expect_documented_order<ak::BFloat16>(4, c + 100, 257, ak::ProjectionKind::rademacher);
  expect_documented_order<float>(2, 2 * c + 3, 70, ak::ProjectionKind::gaussian);
}

}  // namespace
