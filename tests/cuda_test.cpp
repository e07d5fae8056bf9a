// CUDA backend against the CPU backend, kernel by kernel. Each GPU test skips on a machine without
// a GPU (this project's CI) and must pass on one: bench/gpu/run.sh builds and runs this binary on a
// fresh CUDA machine. Where the CPU and CUDA kernels share an order of operations the results
// must be bit-identical; the GEMM path (library order) and Gaussian entries (libm vs CUDA
// transcendental functions) are compared within stated bounds. The host/device headers both
// backends compile (float_formats.hpp, topk_order.hpp) are checked here on the CPU too, so they run
// in every build.
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/float_formats.hpp>
#include <attrace/kernels/philox.hpp>
#include <attrace/kernels/rounding.hpp>
#include <attrace/kernels/topk_order.hpp>
#ifdef ATTRACE_KERNELS_CUDA_DEVICE_API
#include <attrace/kernels/cuda_device.hpp>

#include <cuda_runtime.h>
#endif

#include "kernel_test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <tuple>

namespace ak = attrace::kernels;

namespace {

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ak::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda compiled: " << ak::cuda_compiled() << ")";
    gpu = ak::make_backend("cuda");
    cpu = ak::make_cpu_backend();
  }
  std::unique_ptr<ak::Backend> gpu, cpu;
};

using attrace::test::bit_equal;
using attrace::test::expect_same_topk;
using attrace::test::random_matrix;

using Shape = std::tuple<int64_t, int64_t, int64_t>;

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Every half bit pattern against the value its fields define, computed in float64 (exact for
// every half): sign, zero/subnormal/normal scaling, infinities, and NaN payloads kept.
TEST(SharedHostDevice, HalfWideningExactForEveryBitPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = ak::to_float(ak::Half{static_cast<uint16_t>(h)});
    const uint32_t sign = h >> 15, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) {
      EXPECT_EQ(bits_of(got), (sign << 31) | 0x7F800000u | (man << 13)) << std::hex << h;  // inf, or NaN with its payload
      continue;
    }
    const double magnitude = exp == 0 ? std::ldexp(static_cast<double>(man), -24) : std::ldexp(1024.0 + man, static_cast<int>(exp) - 25);
    const float want = static_cast<float>(sign ? -magnitude : magnitude);
    ASSERT_EQ(bits_of(got), bits_of(want)) << "half 0x" << std::hex << h;  // bit equality keeps -0 apart from +0
#if defined(__FLT16_MANT_DIG__)
    _Float16 f16;
    const auto bits16 = static_cast<uint16_t>(h);
    std::memcpy(&f16, &bits16, 2);
    ASSERT_EQ(bits_of(got), bits_of(static_cast<float>(f16))) << "half 0x" << std::hex << h << " vs the compiler's _Float16";
#endif
  }
}

// Every bfloat16 widens to a float32 that rounds back to itself (non-NaN), and NaNs stay NaN.
TEST(SharedHostDevice, BFloat16WideningRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = ak::to_float(ak::BFloat16{static_cast<uint16_t>(h)});
    if (std::isnan(got)) {
      EXPECT_EQ((h & 0x7F80u), 0x7F80u) << std::hex << h;
      EXPECT_NE((h & 0x7Fu), 0u) << std::hex << h;
      continue;
    }
    ASSERT_EQ(ak::bf16_bits_rne(got), h) << "bfloat16 0x" << std::hex << h;
    ASSERT_EQ(bits_of(got) & 0xFFFFu, 0u);
  }
}

// The top-k order is a strict total order on (score, row) with distinct rows: larger (or smaller)
// score first, +0 and -0 tie and fall to the row; the same function ranks on both backends.
TEST(SharedHostDevice, TopkOrderIsStrictAndBreaksTiesByRow) {
  EXPECT_TRUE(ak::ranks_before(2.0, 9, 1.0, 0, true));
  EXPECT_FALSE(ak::ranks_before(1.0, 0, 2.0, 9, true));
  EXPECT_TRUE(ak::ranks_before(1.0, 9, 2.0, 0, false));
  EXPECT_TRUE(ak::ranks_before(-0.0, 3, 0.0, 4, true));
  EXPECT_TRUE(ak::ranks_before(0.0, 3, -0.0, 4, false));
  EXPECT_FALSE(ak::ranks_before(0.0, 4, -0.0, 3, true));
  std::mt19937_64 rng(17);
  std::vector<std::pair<double, int64_t>> e(200);
  for (size_t i = 0; i < e.size(); ++i) e[i] = {static_cast<double>(static_cast<int64_t>(rng() % 7) - 3), static_cast<int64_t>(i)};
  for (const bool high : {true, false})
    for (const auto& x : e) {
      EXPECT_FALSE(ak::ranks_before(x.first, x.second, x.first, x.second, high));
      for (const auto& y : e) {
        if (x.second == y.second) continue;
        const bool xy = ak::ranks_before(x.first, x.second, y.first, y.second, high);
        ASSERT_NE(xy, ak::ranks_before(y.first, y.second, x.first, x.second, high)) << "not total/asymmetric";
        const bool by_score = high ? x.first > y.first : x.first < y.first;
        ASSERT_EQ(xy, x.first != y.first ? by_score : x.second < y.second);
      }
    }
}

TEST_F(Cuda, SqnormBitIdentical) {
  for (const auto& [n, p] : {std::pair<int64_t, int64_t>{1, 1}, {33, 7}, {100, 4097}, {1000, 129}}) {
    const auto a = random_matrix<float>(n, p, 7 + p);
    std::vector<double> c(static_cast<size_t>(n), 0.125), g(c);
    cpu->sqnorm_accumulate(ak::view(a.data(), n, p), 0.3, c.data());
    gpu->sqnorm_accumulate(ak::view(a.data(), n, p), 0.3, g.data());
    EXPECT_TRUE(bit_equal(c, g)) << n << "x" << p;
    const auto ad = random_matrix<double>(n, p, 8 + p);
    cpu->sqnorm_accumulate(ak::view(ad.data(), n, p), 1.0, c.data());
    gpu->sqnorm_accumulate(ak::view(ad.data(), n, p), 1.0, g.data());
    EXPECT_TRUE(bit_equal(c, g)) << "fp64 " << n << "x" << p;
  }
}

TEST_F(Cuda, SegmentedRowSumBitIdentical) {
  for (const auto& [n, m, segs] : {Shape{1, 1, 1}, Shape{23, 5, 4}, Shape{1000, 3, 17}, Shape{5000, 64, 6}, Shape{10, 2, 30}}) {
    const auto x = random_matrix<double>(n, m, 100 + n);
    std::mt19937_64 rng(n);
    std::vector<int64_t> seg(static_cast<size_t>(n));
    for (auto& s : seg) s = static_cast<int64_t>(rng() % static_cast<uint64_t>(segs));
    std::vector<double> c(static_cast<size_t>(segs * m), 0.5), g(c);
    cpu->segmented_row_sum(ak::view(x.data(), n, m), seg.data(), ak::view_mut(c.data(), segs, m));
    gpu->segmented_row_sum(ak::view(x.data(), n, m), seg.data(), ak::view_mut(g.data(), segs, m));
    EXPECT_TRUE(bit_equal(c, g)) << n << "x" << m << " segments " << segs;
  }
  std::vector<double> x(4, 1.0), out(2, 0.0);
  std::vector<int64_t> bad = {0, 2};
  EXPECT_THROW(gpu->segmented_row_sum(ak::view(x.data(), 2, 2), bad.data(), ak::view_mut(out.data(), 1, 2)), attrace::InputError);
}

TEST_F(Cuda, TopkIdenticalWithTiesAndManySlices) {
  for (const auto& [n, m, k] : {Shape{1, 1, 1}, Shape{5, 3, 10}, Shape{1000, 3, 17}, Shape{100000, 2, 5}, Shape{3000, 40, 64},
                                Shape{9, 4, 0}}) {
    std::mt19937_64 rng(n * 7 + m);
    std::vector<double> x(static_cast<size_t>(n * m));
    for (auto& v : x) v = static_cast<double>(static_cast<int64_t>(rng() % 9) - 4);  // many ties
    expect_same_topk(cpu->column_topk(ak::view(x.data(), n, m), k), gpu->column_topk(ak::view(x.data(), n, m), k));
    for (auto& v : x) v = static_cast<double>(rng() >> 11) - 4e15;
    expect_same_topk(cpu->column_topk(ak::view(x.data(), n, m), k), gpu->column_topk(ak::view(x.data(), n, m), k));
  }
  std::vector<double> x(300, 1.0);
  x[7 * 3 + 2] = std::numeric_limits<double>::quiet_NaN();
  x[9 * 3 + 0] = std::numeric_limits<double>::quiet_NaN();
  std::string c_msg, g_msg;
  try {
    cpu->column_topk(ak::view(x.data(), 100, 3), 2);
  } catch (const attrace::NumericError& e) {
    c_msg = e.what();
  }
  try {
    gpu->column_topk(ak::view(x.data(), 100, 3), 2);
  } catch (const attrace::NumericError& e) {
    g_msg = e.what();
  }
  EXPECT_FALSE(g_msg.empty());
  EXPECT_EQ(c_msg, g_msg);
}

TEST_F(Cuda, CanonicalScoreBitIdentical) {
  for (const auto& [n, m, p] : {Shape{1, 1, 1}, Shape{17, 13, 1000}, Shape{33, 70, 129}, Shape{300, 5, 4097}}) {
    const auto a = random_matrix<float>(n, p, 1 + p), b = random_matrix<float>(m, p, 2 + p);
    std::vector<double> c(static_cast<size_t>(n * m), 0.25), g(c);
    cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.5, ak::view_mut(c.data(), n, m));
    gpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.5, ak::view_mut(g.data(), n, m));
    EXPECT_TRUE(bit_equal(c, g)) << n << "x" << m << "x" << p;
  }
}

// The FMA order (the default scoring kernel): bit-identical to the CPU backend on sizes that
// straddle lanes, chunks (512) and the GPU's 64-element steps, values over many binades (so a
// different order would show), with poisoned start values and a non-unit alpha.
TEST_F(Cuda, FmaScoreBitIdentical) {
  for (const auto& [n, m, p] : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{33, 31, 511}, Shape{17, 65, 513}, Shape{64, 64, 1024},
                                Shape{70, 33, 1025}, Shape{5, 300, 4097}, Shape{257, 3, 64},
                                Shape{130, 97, 1028}, Shape{9, 40, 516}}) {  // p % 4 == 0: the 16-byte staging path
    const auto a = attrace::test::wide_matrix(n, p, 3 + p), b = attrace::test::wide_matrix(m, p, 4 + p);
    std::vector<double> c(static_cast<size_t>(n * m)), g;
    for (size_t e = 0; e < c.size(); ++e) c[e] = 0.125 * static_cast<double>(e % 5) - 0.25;
    g = c;
    cpu->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.7, ak::view_mut(c.data(), n, m));
    gpu->score_accumulate_fma(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.7, ak::view_mut(g.data(), n, m));
    EXPECT_TRUE(bit_equal(c, g)) << n << "x" << m << "x" << p;
    std::vector<double> cn(static_cast<size_t>(n), 1.0), gn(cn);
    cpu->sqnorm_accumulate_fma(ak::view(a.data(), n, p), 0.7, cn.data());
    gpu->sqnorm_accumulate_fma(ak::view(a.data(), n, p), 0.7, gn.data());
    EXPECT_TRUE(bit_equal(cn, gn)) << "sqnorm " << n << "x" << p;
  }
}

// cuBLAS scoring: within float32 summation error of float64 sums over the same rounded inputs
// (no CPU BLAS needed, so it runs on a GPU machine without one), bit-identical when repeated,
// and close to the CPU backend's GEMM when this build has one.
TEST_F(Cuda, GemmScoringWithinFloat32ErrorAndRepeatable) {
  const int64_t n = 9000, m = 37, p = 513;  // n > the 8192-row GEMM tile
  const auto a = random_matrix<float>(n, p, 41), b = random_matrix<float>(m, p, 42);
  for (const auto math : {ak::GemmMath::ieee, ak::GemmMath::tf32, ak::GemmMath::bf16}) {
    const auto round = [&](float v) {
      return math == ak::GemmMath::tf32 ? ak::round_tf32(v) : math == ak::GemmMath::bf16 ? ak::round_bf16(v) : v;
    };
    std::vector<double> g(static_cast<size_t>(n * m), 0.0), again(g);
    gpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, math, ak::view_mut(g.data(), n, m));
    gpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, math, ak::view_mut(again.data(), n, m));
    EXPECT_TRUE(bit_equal(g, again)) << ak::to_string(math);
    double worst = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double want = 0, mass = 0;
        for (int64_t q = 0; q < p; ++q) {
          const double prod = static_cast<double>(round(a[static_cast<size_t>(i * p + q)])) * round(b[static_cast<size_t>(j * p + q)]);
          want += prod;
          mass += std::fabs(prod);
        }
        const double err = std::fabs(g[static_cast<size_t>(i * m + j)] - want);
        worst = std::max(worst, err / mass);
        ASSERT_LE(err, static_cast<double>(p) * std::ldexp(1.0, -24) * mass) << ak::to_string(math) << " " << i << "," << j;
      }
    std::printf("[ gemm %s ] max |cuda - float64| / sum|ab| = %.3g\n", ak::to_string(math), worst);
    if (ak::blas_compiled()) {
      std::vector<double> c(g.size(), 0.0);
      cpu->score_accumulate_blas(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.0, math, ak::view_mut(c.data(), n, m));
      double diff = 0;
      for (size_t i = 0; i < c.size(); ++i) diff = std::max(diff, std::fabs(c[i] - g[i]));
      std::printf("[ gemm %s ] max |cpu - cuda| = %.3g\n", ak::to_string(math), diff);
    }
  }
  const auto ad = random_matrix<double>(50, 70, 5), bd = random_matrix<double>(9, 70, 6);
  std::vector<double> c(450, 0.0), g(c);
  cpu->score_accumulate(ak::view(ad.data(), 50, 70), ak::view(bd.data(), 9, 70), 1.0, ak::view_mut(c.data(), 50, 9));
  gpu->score_accumulate_blas(ak::view(ad.data(), 50, 70), ak::view(bd.data(), 9, 70), 1.0, ak::view_mut(g.data(), 50, 9));
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], g[i], 1e-12) << "fp64 entry " << i;
}

TEST_F(Cuda, DenseProjectionInputsAndShapes) {
  for (const auto& [rows, p, k] : {Shape{1, 1, 1}, Shape{3, 7, 1000}, Shape{1000, 5, 3}, Shape{17, 4097, 513}, Shape{2, 100, 16384}}) {
    const ak::ProjectionSpec s{99, 4, k, ak::ProjectionKind::rademacher};
    std::vector<float> c(static_cast<size_t>(rows * k)), g(c.size(), std::numeric_limits<float>::quiet_NaN());
    std::mt19937 rng(static_cast<uint32_t>(p));
    std::vector<ak::Half> h(static_cast<size_t>(rows * p));
    for (auto& v : h) v.bits = static_cast<uint16_t>(rng() & 0x7BFF);  // finite halves, subnormals included
    cpu->project_dense(ak::HostMatrix<ak::Half>{h.data(), rows, p, p}, s, ak::view_mut(c.data(), rows, k));
    gpu->project_dense(ak::HostMatrix<ak::Half>{h.data(), rows, p, p}, s, ak::view_mut(g.data(), rows, k));
    EXPECT_TRUE(bit_equal(c, g)) << "f16 " << rows << "x" << p << "x" << k;
  }
  // More rows than one launch covers (65535 blocks of 8 rows).
  const int64_t rows = 65535 * 8 + 5, p = 1, k = 3;
  const auto x = random_matrix<float>(rows, p, 3);
  const ak::ProjectionSpec s{1, 0, k, ak::ProjectionKind::rademacher};
  std::vector<float> c(static_cast<size_t>(rows * k)), g(c.size(), std::numeric_limits<float>::quiet_NaN());
  cpu->project_dense(ak::view(x.data(), rows, p), s, ak::view_mut(c.data(), rows, k));
  gpu->project_dense(ak::view(x.data(), rows, p), s, ak::view_mut(g.data(), rows, k));
  EXPECT_TRUE(bit_equal(c, g)) << "rows past one launch";
  // Identity specs copy.
  const ak::ProjectionSpec id{0, 0, 7, ak::ProjectionKind::identity};
  const auto y = random_matrix<float>(5, 7, 4);
  std::vector<float> out(35, -1.0f);
  gpu->project_dense(ak::view(y.data(), 5, 7), id, ak::view_mut(out.data(), 5, 7));
  EXPECT_TRUE(bit_equal(out, y));
}

// The device widens half and bfloat16 inputs to the CPU's bits, for every bit pattern (NaN
// payloads included): the identity projection copies them through the shared to_float.
TEST_F(Cuda, HalfAndBFloat16WideningIdenticalForEveryBitPattern) {
  const int64_t rows = 256, p = 256;
  const ak::ProjectionSpec id{0, 0, p, ak::ProjectionKind::identity};
  std::vector<ak::Half> h(static_cast<size_t>(rows * p));
  std::vector<ak::BFloat16> bf(h.size());
  for (size_t i = 0; i < h.size(); ++i) h[i].bits = bf[i].bits = static_cast<uint16_t>(i);
  std::vector<float> c(h.size()), g(h.size(), -1.0f);
  cpu->project_dense(ak::HostMatrix<ak::Half>{h.data(), rows, p, p}, id, ak::view_mut(c.data(), rows, p));
  gpu->project_dense(ak::HostMatrix<ak::Half>{h.data(), rows, p, p}, id, ak::view_mut(g.data(), rows, p));
  EXPECT_TRUE(bit_equal(c, g)) << "half";
  std::fill(g.begin(), g.end(), -1.0f);
  cpu->project_dense(ak::HostMatrix<ak::BFloat16>{bf.data(), rows, p, p}, id, ak::view_mut(c.data(), rows, p));
  gpu->project_dense(ak::HostMatrix<ak::BFloat16>{bf.data(), rows, p, p}, id, ak::view_mut(g.data(), rows, p));
  EXPECT_TRUE(bit_equal(c, g)) << "bfloat16";
}

// More rows than one launch of the scoring kernel covers (65535 tiles of 16 rows): the launches
// are tiled over rows and each output keeps its bits.
TEST_F(Cuda, CanonicalScoreBeyondOneLaunchOfRows) {
  const int64_t n = 65535 * 16 + 21, m = 3, p = 11;
  const auto a = random_matrix<float>(n, p, 5), b = random_matrix<float>(m, p, 6);
  std::vector<double> c(static_cast<size_t>(n * m), 0.5), g(c);
  cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.75, ak::view_mut(c.data(), n, m));
  gpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.75, ak::view_mut(g.data(), n, m));
  EXPECT_TRUE(bit_equal(c, g));
  std::vector<double> sc(static_cast<size_t>(n), 0.25), sg(sc);
  cpu->sqnorm_accumulate(ak::view(a.data(), n, p), 2.0, sc.data());
  gpu->sqnorm_accumulate(ak::view(a.data(), n, p), 2.0, sg.data());
  EXPECT_TRUE(bit_equal(sc, sg)) << "sqnorm";
}

// One backend serves calls of growing, shrinking and repeated shapes from its reused scratch:
// every result matches the CPU, whatever the previous call left in the arena.
TEST_F(Cuda, ReusedScratchAcrossShapes) {
  for (const auto& [n, m, p] : {Shape{5, 3, 7}, Shape{700, 40, 300}, Shape{2, 1, 1}, Shape{700, 40, 300}, Shape{33, 9, 65}}) {
    const auto a = random_matrix<float>(n, p, 50 + n), b = random_matrix<float>(m, p, 60 + m);
    std::vector<double> c(static_cast<size_t>(n * m), 1.0), g(c);
    cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.5, ak::view_mut(c.data(), n, m));
    gpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 1.5, ak::view_mut(g.data(), n, m));
    EXPECT_TRUE(bit_equal(c, g)) << n << "x" << m << "x" << p;
    const ak::ProjectionSpec s{3, 1, m * 5, ak::ProjectionKind::rademacher};
    std::vector<float> pc(static_cast<size_t>(n * s.k)), pg(pc.size(), std::numeric_limits<float>::quiet_NaN());
    cpu->project_dense(ak::view(a.data(), n, p), s, ak::view_mut(pc.data(), n, s.k));
    gpu->project_dense(ak::view(a.data(), n, p), s, ak::view_mut(pg.data(), n, s.k));
    EXPECT_TRUE(bit_equal(pc, pg)) << "projection " << n << "x" << p << "x" << s.k;
  }
}

#ifdef ATTRACE_KERNELS_CUDA_DEVICE_API
// The device entry points on device views: scoring on strided views (guard values in the padding
// of every row and after the last row stay untouched), projection on dense views (a strided one is
// refused), results equal to the CPU's.
TEST_F(Cuda, DeviceEntryPointsWriteOnlyTheirOutputs) {
  namespace kc = ak::cuda;
  const int64_t n = 37, m = 11, p = 70, pad = 3, k = 130;
  const auto a = random_matrix<float>(n, p, 71), b = random_matrix<float>(m, p, 72);
  const double guard = -12345.5;
  const auto strided = [](const std::vector<float>& v, int64_t rows, int64_t cols, int64_t ld) {
    std::vector<float> s(static_cast<size_t>(rows * ld + 1), 777.0f);
    for (int64_t i = 0; i < rows; ++i) std::copy_n(v.begin() + i * cols, cols, s.begin() + i * ld);
    return s;
  };
  const auto hs_a = strided(a, n, p, p + pad), hs_b = strided(b, m, p, p + pad);
  std::vector<double> hs_out(static_cast<size_t>(n * (m + pad) + 1), guard);
  for (int64_t i = 0; i < n; ++i) std::fill_n(hs_out.begin() + i * (m + pad), m, 0.5);
  std::vector<float> hs_proj(static_cast<size_t>(n * k + 1), -3.0f);
  const auto bytes = [](const auto& v) { return v.size() * sizeof(v[0]); };
  void *da = nullptr, *db = nullptr, *da_dense = nullptr, *dout = nullptr, *dproj = nullptr;
  ASSERT_EQ(cudaMalloc(&da, bytes(hs_a)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&db, bytes(hs_b)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&da_dense, bytes(a)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, bytes(hs_out)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dproj, bytes(hs_proj)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(da, hs_a.data(), bytes(hs_a), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(db, hs_b.data(), bytes(hs_b), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(da_dense, a.data(), bytes(a), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dout, hs_out.data(), bytes(hs_out), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dproj, hs_proj.data(), bytes(hs_proj), cudaMemcpyHostToDevice), cudaSuccess);
  const ak::ProjectionSpec s{8, 2, k, ak::ProjectionKind::rademacher};
  {
    kc::Resources res(0);
    const kc::DeviceMatrix<float> va{static_cast<const float*>(da), n, p, p + pad}, vb{static_cast<const float*>(db), m, p, p + pad};
    kc::score_accumulate_device(res, va, vb, 0.5, kc::DeviceMatrixMut<double>{static_cast<double*>(dout), n, m, m + pad});
    const auto proj = kc::device_view_mut(static_cast<float*>(dproj), n, k);
    kc::project_dense_device(res, kc::device_view(static_cast<const float*>(da_dense), n, p), s, proj);
    EXPECT_THROW(kc::project_dense_device(res, va, s, proj), attrace::InputError) << "strided input";
    EXPECT_THROW(kc::project_dense_device(res, kc::device_view(static_cast<const float*>(da_dense), n, p), s,
                                          kc::device_view_mut(static_cast<float*>(dproj), n, k + 1)),
                 attrace::InputError)
        << "wrong output width";
    res.synchronize();
  }
  std::vector<double> got_out(hs_out.size());
  std::vector<float> got_proj(hs_proj.size());
  ASSERT_EQ(cudaMemcpy(got_out.data(), dout, bytes(got_out), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got_proj.data(), dproj, bytes(got_proj), cudaMemcpyDeviceToHost), cudaSuccess);
  for (void* d : {da, db, da_dense, dout, dproj}) cudaFree(d);
  std::vector<double> want(static_cast<size_t>(n * m), 0.5);
  cpu->score_accumulate(ak::view(a.data(), n, p), ak::view(b.data(), m, p), 0.5, ak::view_mut(want.data(), n, m));
  std::vector<float> want_proj(static_cast<size_t>(n * k));
  cpu->project_dense(ak::view(a.data(), n, p), s, ak::view_mut(want_proj.data(), n, k));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m + pad; ++j) {
      const double v = got_out[static_cast<size_t>(i * (m + pad) + j)];
      if (j < m)
        ASSERT_EQ(std::memcmp(&v, &want[static_cast<size_t>(i * m + j)], 8), 0) << i << "," << j;
      else
        ASSERT_EQ(v, guard) << "padding written at " << i << "," << j;
    }
  EXPECT_EQ(got_out.back(), guard);
  EXPECT_EQ(got_proj.back(), -3.0f) << "written past the projection";
  got_proj.pop_back();
  EXPECT_TRUE(bit_equal(got_proj, want_proj)) << "projection";
}
#endif

// Entries of P read off by projecting unit vectors (one non-zero product per output, so the
// output is the scaled entry itself): Rademacher bit-identical, Gaussian within 1 float32 ulp.
TEST_F(Cuda, ProjectionEntriesRademacherExactGaussianWithinOneUlp) {
  const int64_t p = 300, k = 1000;
  std::vector<float> eye(static_cast<size_t>(p * p), 0.0f);
  for (int64_t i = 0; i < p; ++i) eye[static_cast<size_t>(i * p + i)] = 1.0f;
  for (const auto kind : {ak::ProjectionKind::rademacher, ak::ProjectionKind::gaussian}) {
    const ak::ProjectionSpec s{12345, 6, k, kind};
    std::vector<float> c(static_cast<size_t>(p * k)), g(c.size());
    cpu->project_dense(ak::view(eye.data(), p, p), s, ak::view_mut(c.data(), p, k));
    gpu->project_dense(ak::view(eye.data(), p, p), s, ak::view_mut(g.data(), p, k));
    int64_t worst = 0, differ = 0;
    for (size_t i = 0; i < c.size(); ++i) {
      int32_t x, y;
      std::memcpy(&x, &c[i], 4);
      std::memcpy(&y, &g[i], 4);
      worst = std::max<int64_t>(worst, std::llabs(static_cast<int64_t>(x) - y));
      differ += x != y;
    }
    std::printf("[ entries %s ] %lld of %lld differ, max %lld ulp\n", kind == ak::ProjectionKind::gaussian ? "gaussian" : "rademacher",
                static_cast<long long>(differ), static_cast<long long>(c.size()), static_cast<long long>(worst));
    if (kind == ak::ProjectionKind::rademacher)
      EXPECT_EQ(differ, 0);
    else
      EXPECT_LE(worst, 1);
  }
}

TEST_F(Cuda, KroneckerBitIdentical) {
  using K = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;  // rows, T, d_in, d_out, k_in, k_out
  for (const auto& [rows, positions, d_in, d_out, k_in, k_out] :
       {K{1, 1, 1, 1, 1, 1}, K{3, 1, 7, 5, 4, 3}, K{2, 3, 9, 4, 130, 2}, K{5, 4, 33, 17, 8, 16}, K{64, 16, 256, 128, 64, 64}}) {
    const auto x = random_matrix<float>(rows * positions, d_in, 1), delta = random_matrix<float>(rows * positions, d_out, 2);
    const ak::ProjectionSpec in{11, 1, k_in, ak::ProjectionKind::rademacher}, out{11, 2, k_out, ak::ProjectionKind::rademacher};
    std::vector<float> c(static_cast<size_t>(rows * k_in * k_out)), g(c.size(), std::numeric_limits<float>::quiet_NaN());
    cpu->project_kronecker(ak::view(x.data(), rows * positions, d_in), ak::view(delta.data(), rows * positions, d_out), positions,
                           in, out, ak::view_mut(c.data(), rows, k_in * k_out));
    gpu->project_kronecker(ak::view(x.data(), rows * positions, d_in), ak::view(delta.data(), rows * positions, d_out), positions,
                           in, out, ak::view_mut(g.data(), rows, k_in * k_out));
    EXPECT_TRUE(bit_equal(c, g)) << rows << " x " << positions << " (" << d_in << "->" << k_in << ", " << d_out << "->" << k_out << ")";
  }
  // An identity factor (a layer whose width fits its budget) on one side.
  const auto x = random_matrix<float>(6, 5, 3), delta = random_matrix<float>(6, 40, 4);
  const ak::ProjectionSpec in{0, 0, 5, ak::ProjectionKind::identity}, out{3, 9, 8, ak::ProjectionKind::rademacher};
  std::vector<float> c(static_cast<size_t>(3 * 40)), g(c.size());
  cpu->project_kronecker(ak::view(x.data(), 6, 5), ak::view(delta.data(), 6, 40), 2, in, out, ak::view_mut(c.data(), 3, 40));
  gpu->project_kronecker(ak::view(x.data(), 6, 5), ak::view(delta.data(), 6, 40), 2, in, out, ak::view_mut(g.data(), 3, 40));
  EXPECT_TRUE(bit_equal(c, g)) << "identity factor";
}

// The chunked projection order (kProjectionChunk rows of P per partial sum) on shapes with many
// chunks, several chunk groups, short last chunks, row slices and batch rows past a block's 32:
// CPU and CUDA bit-identical for float32, bfloat16 and float16 inputs, every output written; and
// a batch projected in pieces of 1, 7 and 32 rows (other block shapes) gives the same bits.
enum class ChunkInput { f32, bf16, f16 };
struct ChunkCase {
  int64_t rows, p, k;
  ChunkInput in;
};

void expect_chunked_bit_identical(ak::Backend& cpu, ak::Backend& gpu, const ChunkCase& cs) {
  const auto [rows, p, k, in] = cs;
  const ak::ProjectionSpec s{2024, 5, k, ak::ProjectionKind::rademacher};
  const auto x = random_matrix<float>(rows, p, static_cast<uint64_t>(p + k));
  std::vector<float> want(static_cast<size_t>(rows * k)), got(want.size(), std::numeric_limits<float>::quiet_NaN());
  std::vector<ak::BFloat16> xb(x.size());
  std::vector<ak::Half> xh(x.size());
  std::mt19937 rng(static_cast<uint32_t>(p));
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], 4);
    xb[i].bits = static_cast<uint16_t>(bits >> 16);
    xh[i].bits = static_cast<uint16_t>(rng() & 0xFBFF);  // finite halves of both signs, subnormals included
  }
  const auto run = [&](ak::Backend& b, int64_t r0, int64_t n, float* out) {
    const auto o = ak::view_mut(out + r0 * k, n, k);
    if (in == ChunkInput::f32) b.project_dense(ak::view(x.data() + r0 * p, n, p), s, o);
    if (in == ChunkInput::bf16) b.project_dense(ak::HostMatrix<ak::BFloat16>{xb.data() + r0 * p, n, p, p}, s, o);
    if (in == ChunkInput::f16) b.project_dense(ak::HostMatrix<ak::Half>{xh.data() + r0 * p, n, p, p}, s, o);
  };
  run(cpu, 0, rows, want.data());
  run(gpu, 0, rows, got.data());
  int64_t differ = 0;
  for (size_t i = 0; i < want.size(); ++i) differ += std::memcmp(&want[i], &got[i], 4) != 0;
  EXPECT_EQ(differ, 0) << "input " << static_cast<int>(in) << ", " << rows << "x" << p << "x" << k;
  if (rows == 40) {
    std::vector<float> pieces(want.size(), std::numeric_limits<float>::quiet_NaN());
    run(gpu, 0, 1, pieces.data());
    run(gpu, 1, 7, pieces.data());
    run(gpu, 8, 32, pieces.data());
    EXPECT_TRUE(bit_equal(pieces, got)) << "batch pieces";
  }
}

// Small enough for compute-sanitizer: several chunks in one group, every input type, tails.
TEST_F(Cuda, ChunkedProjectionBitIdentical) {
  const int64_t c = ak::kProjectionChunk;
  for (const auto& cs : {ChunkCase{3, 3 * c + 17, 1000, ChunkInput::f32}, ChunkCase{40, 70000, 300, ChunkInput::bf16},
                         ChunkCase{9, 5 * c + 1000, 129, ChunkInput::f16}, ChunkCase{1, c + 1, 1, ChunkInput::f32},
                         ChunkCase{33, 2 * c, 640, ChunkInput::f32}})
    expect_chunked_bit_identical(*cpu, *gpu, cs);
}

// Shapes past the 64 MiB scratch: several chunk groups, and row slices (about 2e10 products each).
TEST_F(Cuda, ChunkedProjectionBitIdenticalAcrossGroupsAndSlices) {
  const int64_t c = ak::kProjectionChunk;
  expect_chunked_bit_identical(*cpu, *gpu, {256, 2 * c + 5, 32768, ChunkInput::bf16});  // 2^23 partials a chunk: groups of 2, 1
  expect_chunked_bit_identical(*cpu, *gpu, {1030, c + 1, 16384, ChunkInput::f32});      // slices of 1024 and 6 rows
}

}  // namespace
