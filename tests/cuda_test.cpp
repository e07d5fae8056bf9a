// CUDA backend against the CPU backend, kernel by kernel. Each test skips on a machine without a
// GPU (this project's CI) and must pass on one: bench/gpu/run.sh builds and runs this binary on a
// fresh CUDA machine. Where the CPU and CUDA kernels share an order of operations the results
// must be bit-identical; the GEMM path (library order) and Gaussian entries (libm vs CUDA
// transcendental functions) are compared within stated bounds.
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>
#include <attrace/kernels/philox.hpp>
#include <attrace/kernels/rounding.hpp>

#include "kernel_test_util.hpp"

#include <gtest/gtest.h>

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
