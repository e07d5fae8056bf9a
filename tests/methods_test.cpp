// Attribution methods as views of one featurization (engine/methods.hpp): each method's scores
// against a direct transcription of its formula (a separate Gaussian elimination for TRAK's
// kernel inverse), factored rows against their expanded gradients, and bit-identical results
// for 1 and 2 threads.
#include <attrace/engine/methods.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

namespace {

using namespace attrace::engine;
namespace fs = std::filesystem;

// Random float64 features: `ckpts` checkpoints of width w, weights 0.5, 0.3, ...
MemoryFeatures random_features(int64_t n, int64_t w, size_t ckpts, uint64_t seed) {
  MemoryFeatures m(n, true);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d;
  for (size_t c = 0; c < ckpts; ++c) {
    m.add_checkpoint(w, 0.5 - 0.2 * static_cast<double>(c));
    for (int64_t q = 0; q < n * w; ++q) m.f64(c)[q] = d(rng);
  }
  return m;
}

ScoreResult score(const MethodView& v, const FeatureSource& tr, const FeatureSource& qu) {
  auto backend = attrace::kernels::make_backend("cpu");
  ScoreSettings s;
  s.scoring = Scoring::canonical;
  s.keep_scores = true;
  s.top_k = 1;
  s.tranche.assign(static_cast<size_t>(tr.rows()), 0);
  s.n_tranches = 1;
  for (int64_t i = 0; i < tr.rows(); ++i) s.train_ids.push_back("t" + std::to_string(i));
  for (int64_t j = 0; j < qu.rows(); ++j) s.query_ids.push_back("q" + std::to_string(j));
  Progress p(false);
  return score_all(v.train ? *v.train : tr, v.query ? *v.query : qu, *backend, s, p);
}

double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// x = A^-1 b by Gaussian elimination with partial pivoting (not Cholesky: an independent route).
std::vector<double> solve(std::vector<double> A, std::vector<double> b, int64_t k) {
  for (int64_t c = 0; c < k; ++c) {
    int64_t p = c;
    for (int64_t r = c + 1; r < k; ++r)
      if (std::fabs(A[r * k + c]) > std::fabs(A[p * k + c])) p = r;
    for (int64_t j = 0; j < k; ++j) std::swap(A[c * k + j], A[p * k + j]);
    std::swap(b[c], b[p]);
    for (int64_t r = c + 1; r < k; ++r) {
      const double f = A[r * k + c] / A[c * k + c];
      for (int64_t j = c; j < k; ++j) A[r * k + j] -= f * A[c * k + j];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> x(k);
  for (int64_t r = k - 1; r >= 0; --r) {
    double s = b[r];
    for (int64_t j = r + 1; j < k; ++j) s -= A[r * k + j] * x[j];
    x[r] = s / A[r * k + r];
  }
  return x;
}

TEST(Methods, GradDotIsOneCheckpointsWeightedDot) {
  auto tr = random_features(7, 5, 3, 1), qu = random_features(4, 5, 3, 2);
  for (int64_t ck : {-1, 0, 1}) {
    const auto v = make_method_view({Method::grad_dot, ck}, tr, qu);
    const auto r = score(v, tr, qu);
    const size_t c = ck < 0 ? 2 : static_cast<size_t>(ck);
    for (int64_t i = 0; i < 7; ++i)
      for (int64_t j = 0; j < 4; ++j)
        EXPECT_NEAR(r.scores[i * 4 + j], tr.weight(c) * dot(tr.f64(c) + i * 5, qu.f64(c) + j * 5, 5), 1e-12);
  }
  EXPECT_THROW(make_method_view({Method::grad_dot, 3}, tr, qu), attrace::InputError);
}

TEST(Methods, GradCosIsMeanCosine) {
  auto tr = random_features(6, 9, 2, 3), qu = random_features(3, 9, 2, 4);
  const auto r = score(make_method_view({Method::grad_cos, -1}, tr, qu), tr, qu);
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_NEAR(r.self_influence[i], 1.0, 1e-12);
    for (int64_t j = 0; j < 3; ++j) {
      double want = 0;
      for (size_t c = 0; c < 2; ++c) {
        const double* a = tr.f64(c) + i * 9;
        const double* b = qu.f64(c) + j * 9;
        want += 0.5 * dot(a, b, 9) / std::sqrt(dot(a, a, 9) * dot(b, b, 9));
      }
      EXPECT_NEAR(r.scores[i * 3 + j], want, 1e-12);
    }
  }
}

// TRAK against the formula: mean over c of Q_ci phi_ci^T (Phi_c^T Phi_c + ridge I)^-1 phi_cz.
TEST(Methods, TrakMatchesDirectFormula) {
  const int64_t n = 12, k = 5, m = 3;
  auto tr = random_features(n, k, 2, 5), qu = random_features(m, k, 2, 6);
  std::vector<std::vector<double>> q(2);
  for (size_t c = 0; c < 2; ++c)
    for (int64_t i = 0; i < n; ++i) q[c].push_back(0.05 + 0.07 * static_cast<double>((i * 5 + c) % 13));
  const double lambda = 0.01;
  auto kern = std::make_shared<const TrakKernel>(trak_kernel(tr, q, lambda));
  const auto r = score(make_method_view({Method::trak, -1}, tr, qu, kern), tr, qu);
  std::vector<double> want(n * m, 0.0);
  for (size_t c = 0; c < 2; ++c) {
    std::vector<double> K(k * k, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t a = 0; a < k; ++a)
        for (int64_t b = 0; b < k; ++b) K[a * k + b] += tr.f64(c)[i * k + a] * tr.f64(c)[i * k + b];
    double diag = 0;
    for (int64_t a = 0; a < k; ++a) diag += K[a * k + a];
    for (int64_t a = 0; a < k; ++a) K[a * k + a] += lambda * diag / k;
    EXPECT_NEAR(kern->ridge[c], lambda * diag / k, 1e-12 * diag);
    for (int64_t j = 0; j < m; ++j) {
      const auto x = solve(K, std::vector<double>(qu.f64(c) + j * k, qu.f64(c) + (j + 1) * k), k);
      for (int64_t i = 0; i < n; ++i) want[i * m + j] += 0.5 * q[c][i] * dot(tr.f64(c) + i * k, x.data(), k);
    }
  }
  for (int64_t e = 0; e < n * m; ++e) EXPECT_NEAR(r.scores[e], want[e], 1e-10 * (1 + std::fabs(want[e]))) << e;
  // A wrong-sized Q or a kernel from other features is refused.
  EXPECT_THROW(trak_kernel(tr, {q[0]}, lambda), attrace::InputError);
  auto other = random_features(m, k + 1, 2, 7);
  EXPECT_THROW(make_method_view({Method::trak, -1}, tr, other, kern), attrace::InputError);
}

// A factored layer's rows give the same TRAK and Grad-Cos scores as its expanded gradient.
TEST(Methods, FactoredRowsEqualTheirExpandedGradients) {
  const int64_t n = 9, m = 2, dense = 2, d_in = 3, d_out = 2, T = 2;
  FeatureLayout lay;
  lay.dense = dense;
  lay.factored.push_back({"fc", d_in, d_out, T, dense});
  const int64_t w = lay.width();
  ASSERT_EQ(w, dense + T * (d_in + d_out));
  auto make = [&](int64_t rows, uint64_t seed, MemoryFeatures& fac, MemoryFeatures& exp) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> d;
    fac.add_checkpoint(lay, 0.3);
    const int64_t ew = dense + d_in * d_out;
    exp.add_checkpoint(ew, 0.3);
    for (int64_t i = 0; i < rows; ++i) {
      float* ff = fac.f32(0) + i * w;
      std::vector<double> f(w);
      for (int64_t q = 0; q < w; ++q) f[q] = ff[q] = d(rng);
      double* e = exp.f64(0) + i * ew;
      for (int64_t q = 0; q < dense; ++q) e[q] = f[q];
      for (int64_t o = 0; o < d_out; ++o)
        for (int64_t q = 0; q < d_in; ++q) {
          double s = 0;
          for (int64_t t = 0; t < T; ++t) s += f[dense + T * d_in + t * d_out + o] * f[dense + t * d_in + q];
          e[dense + o * d_in + q] = s;
        }
    }
  };
  MemoryFeatures tf(n, false), te(n, true), qf(m, false), qe(m, true);  // factors are float32
  make(n, 8, tf, te);
  make(m, 9, qf, qe);
  const std::vector<std::vector<double>> q = {std::vector<double>(n, 0.4)};
  for (const Method meth : {Method::grad_cos, Method::trak}) {
    std::shared_ptr<const TrakKernel> kf, ke;
    if (meth == Method::trak) {
      kf = std::make_shared<const TrakKernel>(trak_kernel(tf, q, 0.05));
      ke = std::make_shared<const TrakKernel>(trak_kernel(te, q, 0.05));
    }
    const auto a = score(make_method_view({meth, -1}, tf, qf, kf), tf, qf);
    const auto b = score(make_method_view({meth, -1}, te, qe, ke), te, qe);
    for (size_t e = 0; e < a.scores.size(); ++e) EXPECT_NEAR(a.scores[e], b.scores[e], 1e-11 * (1 + std::fabs(b.scores[e])));
  }
}

TEST(Methods, SameBitsForOneAndTwoThreads) {
  auto tr = random_features(300, 70, 2, 10), qu = random_features(20, 70, 2, 11);
  std::vector<std::vector<double>> q(2, std::vector<double>(300, 0.3));
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    auto k = std::make_shared<const TrakKernel>(trak_kernel(tr, q, 1e-3));
    auto r = score(make_method_view({Method::trak, -1}, tr, qu, k), tr, qu);
    auto c = score(make_method_view({Method::grad_cos, -1}, tr, qu), tr, qu);
    r.scores.insert(r.scores.end(), c.scores.begin(), c.scores.end());
    r.scores.insert(r.scores.end(), k->chol[1].begin(), k->chol[1].end());
    return r.scores;
  };
  const auto one = run(1), two = run(2);
  omp_set_num_threads(omp_get_num_procs());
  ASSERT_EQ(one.size(), two.size());
  EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(double)), 0);
}

TEST(Methods, KernelFileRoundTripsAndRefusesDamage) {
  auto tr = random_features(20, 6, 2, 12);
  const std::vector<std::vector<double>> q(2, std::vector<double>(20, 0.2));
  const auto k = trak_kernel(tr, q, 1e-2, "store-spec-A");
  const fs::path dir = fs::temp_directory_path() / ("methods_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "k.bin").string();
  save_trak_kernel(path, k);
  TrakKernel back;
  ASSERT_TRUE(load_trak_kernel(path, k.key, back));
  EXPECT_EQ(back.chol, k.chol);
  EXPECT_EQ(back.q, k.q);
  EXPECT_EQ(back.ridge, k.ridge);
  EXPECT_FALSE(load_trak_kernel(path, trak_kernel(tr, q, 1e-2, "store-spec-B").key, back));  // other features
  EXPECT_FALSE(load_trak_kernel((dir / "absent.bin").string(), k.key, back));
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  EXPECT_THROW(load_trak_kernel(path, k.key, back), attrace::InputError);
  fs::remove_all(dir);
}

TEST(Methods, NotPositiveDefiniteIsANumericError) {
  MemoryFeatures tr(3, true);
  tr.add_checkpoint(2, 1.0);
  for (int q = 0; q < 6; ++q) tr.f64(0)[q] = std::nan("");
  EXPECT_THROW(trak_kernel(tr, {std::vector<double>(3, 1.0)}, 1e-3), attrace::NumericError);
}

}  // namespace
