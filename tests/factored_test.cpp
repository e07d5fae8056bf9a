// Factored exact scoring (engine/featurize, engine/score): a layer's gradient sum_t delta_t x_t^T
// scored from its factors as sum_{t,s} <x_t, x'_s> <delta_t, delta'_s>. Checked against the same
// rows widened to gradients (bit for bit on integer data), against dense exact scores and a
// float64 run on real checkpoints, for self-influence = score(i, i), for independence of tiles,
// threads and batch size, through a feature store, and in what the manifest records.
#include "test_util.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/score.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <random>

namespace ac = attrace::connectors;
namespace ae = attrace::engine;
namespace ak = attrace::kernels;
using attrace::test::fixture;
using attrace::test::TempDir;

namespace {

bool bit_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// ||got - want|| / ||want|| over all entries (the normwise error the issue states targets in).
double normwise(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : INFINITY;
}

// ---------------------------------------------------------------------------------------------
// The scorer on synthetic rows: a dense part, a factored layer with one position and one with
// three, so every branch of the layout is used.

ae::FeatureLayout mixed_layout() {
  ae::FeatureLayout l;
  l.dense = 5;
  l.factored.push_back({"one", 7, 4, 1, 5});
  l.factored.push_back({"three", 6, 3, 3, 5 + 11});
  return l;
}

// The gradient a factored row stands for: dense columns, then each layer's d_out x d_in block
// sum_t delta_t x_t^T, accumulated in double.
std::vector<double> widened(const ae::FeatureLayout& lay, const float* row) {
  std::vector<double> g(row, row + lay.dense);
  for (const auto& l : lay.factored)
    for (int64_t o = 0; o < l.d_out; ++o)
      for (int64_t q = 0; q < l.d_in; ++q) {
        double v = 0;
        for (int64_t t = 0; t < l.positions; ++t)
          v += static_cast<double>(row[l.delta_offset() + t * l.d_out + o]) * row[l.offset + t * l.d_in + q];
        g.push_back(v);
      }
  return g;
}

// Rows of `lay` with entries drawn by `draw`; also the widened rows as a dense source.
struct Synthetic {
  ae::MemoryFeatures factored{0, false}, dense{0, false};
  std::vector<std::vector<double>> grads;
};

template <class Draw>
Synthetic synthetic(const ae::FeatureLayout& lay, int64_t rows, size_t checkpoints, Draw draw) {
  Synthetic s{ae::MemoryFeatures(rows, false), ae::MemoryFeatures(rows, false), {}};
  for (size_t c = 0; c < checkpoints; ++c) {
    const double weight = 0.5 + static_cast<double>(c);
    s.factored.add_checkpoint(lay, weight);
    float* f = s.factored.f32(c);
    const int64_t w = lay.width();
    for (int64_t i = 0; i < rows * w; ++i) f[i] = draw();
    int64_t p = 0;
    std::vector<std::vector<double>> g;
    for (int64_t r = 0; r < rows; ++r) {
      g.push_back(widened(lay, f + r * w));
      p = static_cast<int64_t>(g.back().size());
    }
    s.dense.add_checkpoint(p, weight);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t q = 0; q < p; ++q) s.dense.f32(c)[r * p + q] = static_cast<float>(g[static_cast<size_t>(r)][static_cast<size_t>(q)]);
    for (auto& row : g) s.grads.push_back(std::move(row));
  }
  return s;
}

ae::ScoreSettings settings_for(int64_t n_train, int64_t memory_limit, ae::Scoring scoring = ae::Scoring::fma) {
  ae::ScoreSettings s;
  s.scoring = scoring;
  s.top_k = 3;
  s.keep_scores = true;
  s.memory_limit = memory_limit;
  s.n_tranches = 3;
  for (int64_t i = 0; i < n_train; ++i) s.tranche.push_back(i % 3);
  return s;
}

ae::ScoreResult score(const ae::FeatureSource& t, const ae::FeatureSource& q, const ae::ScoreSettings& s, int threads = 0) {
  auto backend = ak::make_cpu_backend(threads);
  ae::Progress quiet(false);
  return ae::score_all(t, q, *backend, s, quiet);
}

TEST(FactoredScorer, IntegerRowsScoreExactlyAsTheirGradients) {
  // Small integers: every product and sum is exact in float32 and float64, so factored scoring
  // must give exactly the score of the widened gradients, in every kernel.
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> v(-3, 3);
  const auto lay = mixed_layout();
  const int64_t n = 23, m = 9;
  auto tr = synthetic(lay, n, 2, [&] { return static_cast<float>(v(rng)); });
  auto qu = synthetic(lay, m, 2, [&] { return static_cast<float>(v(rng)); });
  for (auto scoring : {ae::Scoring::fma, ae::Scoring::canonical}) {
    const auto s = settings_for(n, 0, scoring);
    const auto f = score(tr.factored, qu.factored, s);
    const auto d = score(tr.dense, qu.dense, s);
    // An exact reference in double from the widened rows.
    std::vector<double> want(static_cast<size_t>(n * m), 0.0);
    for (size_t c = 0; c < 2; ++c)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < m; ++j) {
          const auto& a = tr.grads[c * n + static_cast<size_t>(i)];
          const auto& b = qu.grads[c * m + static_cast<size_t>(j)];
          double dot = 0;
          for (size_t k = 0; k < a.size(); ++k) dot += a[k] * b[k];
          want[static_cast<size_t>(i * m + j)] += (0.5 + static_cast<double>(c)) * dot;
        }
    double scale = 0;
    for (double w : want) scale = std::max(scale, std::abs(w));
    ASSERT_GT(scale, 10.0) << "degenerate data";
    EXPECT_TRUE(bit_equal(f.scores, want)) << "factored scores differ from the exact reference";
    EXPECT_TRUE(bit_equal(d.scores, want)) << "dense scores differ from the exact reference";
    EXPECT_TRUE(bit_equal(f.self_influence, d.self_influence));
    EXPECT_TRUE(bit_equal(f.tranche_query, d.tranche_query));
  }
}

TEST(FactoredScorer, RealRowsAgreeWithWidenedGradients) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> v(0.0f, 1.0f);
  const auto lay = mixed_layout();
  const int64_t n = 31, m = 13;
  auto tr = synthetic(lay, n, 3, [&] { return v(rng); });
  auto qu = synthetic(lay, m, 3, [&] { return v(rng); });
  const auto s = settings_for(n, 0);
  const auto f = score(tr.factored, qu.factored, s);
  const auto d = score(tr.dense, qu.dense, s);  // widened rows rounded to float32: not exact
  EXPECT_LT(normwise(f.scores, d.scores), 1e-6);
  EXPECT_LT(normwise(f.self_influence, d.self_influence), 1e-6);
}

TEST(FactoredScorer, SelfInfluenceIsTheDiagonalBitForBit) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> v(0.0f, 1.0f);
  const auto lay = mixed_layout();
  const int64_t n = 19;
  auto tr = synthetic(lay, n, 2, [&] { return v(rng); });
  for (auto scoring : {ae::Scoring::fma, ae::Scoring::canonical}) {
    const auto r = score(tr.factored, tr.factored, settings_for(n, 0, scoring));
    for (int64_t i = 0; i < n; ++i) {
      const double diag = r.scores[static_cast<size_t>(i * n + i)], self = r.self_influence[static_cast<size_t>(i)];
      EXPECT_EQ(std::memcmp(&diag, &self, sizeof diag), 0) << "row " << i << ": score(i, i) " << diag << " vs " << self;
    }
  }
}

// The smallest memory limit (in steps of 1/16) whose plan splits the queries (or the training
// rows) into several tiles; 0 when none does.
int64_t limit_that_splits(const ae::FeatureSource& t, const ae::FeatureSource& q, bool queries) {
  for (double limit = 4096; limit < double(int64_t{1} << 30); limit *= 1.0625) {
    auto s = settings_for(t.rows(), static_cast<int64_t>(limit));
    try {
      const auto plan = ae::plan_scoring(t, q, s);
      if (queries ? plan.query_tile < q.rows() : plan.train_tile < t.rows()) return static_cast<int64_t>(limit);
    } catch (const attrace::InputError&) {
    }
  }
  return 0;
}

TEST(FactoredScorer, TilesAndThreadsChangeNoBit) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> v(0.0f, 1.0f);
  const auto lay = mixed_layout();
  // Two shapes: several query tiles (few rows), several train tiles (two tranche blocks).
  for (const auto& [n, m] : {std::pair<int64_t, int64_t>{37, 29}, std::pair<int64_t, int64_t>{4096 + 1500, 29}}) {
    auto tr = synthetic(lay, n, 2, [&] { return v(rng); });
    auto qu = synthetic(lay, m, 2, [&] { return v(rng); });
    const bool queries = n < 4096;
    const int64_t limit = limit_that_splits(tr.factored, qu.factored, queries);
    ASSERT_GT(limit, 0) << "no memory limit splits the " << (queries ? "queries" : "training rows");
    const auto big = score(tr.factored, qu.factored, settings_for(n, 0), 2);
    const auto small = score(tr.factored, qu.factored, settings_for(n, limit), 1);
    EXPECT_EQ(big.plan.query_tile, m);
    EXPECT_EQ(big.plan.train_tile, n);
    EXPECT_TRUE(queries ? small.plan.query_tile < m : small.plan.train_tile < n);
    EXPECT_TRUE(bit_equal(big.scores, small.scores)) << n;
    EXPECT_TRUE(bit_equal(big.self_influence, small.self_influence)) << n;
    EXPECT_TRUE(bit_equal(big.tranche_query, small.tranche_query)) << n;
    const auto three = score(tr.factored, qu.factored, settings_for(n, 0), 3);
    EXPECT_TRUE(bit_equal(big.scores, three.scores)) << n;
  }
}

TEST(FactoredScorer, MismatchedLayoutsAreRefused) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> v(0.0f, 1.0f);
  auto lay = mixed_layout();
  auto tr = synthetic(lay, 5, 1, [&] { return v(rng); });
  ae::FeatureLayout other = lay;
  std::swap(other.factored[0].d_in, other.factored[0].d_out);  // same width, other sizes
  ae::MemoryFeatures q(3, false);
  q.add_checkpoint(other, 0.5);
  try {
    score(tr.factored, q, settings_for(5, 0));
    FAIL() << "no InputError";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("laid out differently"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Real checkpoints (tests/fixtures): the chain-path models.

ae::Config config_for(const std::string& model, const std::string& data, ae::Factoring factored,
                      ae::Precision precision = ae::Precision::fp32) {
  ae::Config cfg;
  cfg.run_file = fixture(model + "_run.toml");
  cfg.train_file = fixture(data + "_train.h5");
  cfg.query_file = fixture(data + "_query.h5");
  cfg.loss = data == "reg" ? ae::Loss::mse : ae::Loss::cross_entropy;
  cfg.precision = precision;
  cfg.factored = factored;
  cfg.batch_size = 8;
  cfg.top_k = 3;
  return cfg;
}

ae::TracinResult tracin(const ae::Config& cfg, int threads = 0) {
  const auto run = ac::read_run_file(cfg.run_file);
  const auto train = ac::read_dataset(cfg.train_file, true);
  const auto query = ac::read_dataset(cfg.query_file, false);
  auto backend = ak::make_cpu_backend(threads);
  ae::Progress quiet(false);
  return ae::compute_tracin(cfg, run, train, query, *backend, quiet);
}

// The auto rule, written out independently of the engine.
bool auto_factors(int64_t d_in, int64_t d_out, int64_t t) { return t * t * (d_in + d_out) < d_in * d_out; }

struct ModelCase {
  std::string model, data;
};
void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.model; }

class FactoredModels : public ::testing::TestWithParam<ModelCase> {};

TEST_P(FactoredModels, AgreeWithDenseAndFloat64) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto& c = GetParam();
  const auto never = tracin(config_for(c.model, c.data, ae::Factoring::never));
  const auto always = tracin(config_for(c.model, c.data, ae::Factoring::always));
  const auto automatic = tracin(config_for(c.model, c.data, ae::Factoring::automatic));
  const auto f64 = tracin(config_for(c.model, c.data, ae::Factoring::automatic, ae::Precision::fp64));
  // The runs really are dense and factored.
  ASSERT_FALSE(always.checkpoints.empty());
  for (const auto& u : never.checkpoints) EXPECT_TRUE(u.layout.factored.empty());
  for (const auto& u : f64.checkpoints) EXPECT_TRUE(u.layout.factored.empty()) << "float64 features are never factored";
  for (const auto& u : always.checkpoints) {
    ASSERT_FALSE(u.layers.empty()) << u.factoring_note;
    EXPECT_EQ(u.layout.factored.size(), u.layers.size());
    EXPECT_EQ(u.layout.dense, 0);
    EXPECT_EQ(u.layout.width(), u.feature_dim);
  }
  for (const auto& u : automatic.checkpoints)
    for (size_t l = 0; l < u.layers.size(); ++l)
      EXPECT_EQ(u.layers[l].factored, auto_factors(u.layers[l].d_in, u.layers[l].d_out, u.layers[l].positions)) << u.layers[l].layer;
  // float32 scores, factored or not, against the float64 run.
  EXPECT_LT(normwise(always.scores, f64.scores), 1e-5);
  EXPECT_LT(normwise(never.scores, f64.scores), 1e-5);
  EXPECT_LT(normwise(always.scores, never.scores), 1e-5);
  EXPECT_LT(normwise(always.self_influence, f64.self_influence), 1e-5);
  EXPECT_LT(normwise(always.tranche_query, f64.tranche_query), 1e-5);
  // Entry by entry, with a floor for entries that cancel (as engine_test does).
  double scale = 0;
  for (double w : f64.scores) scale = std::max(scale, std::abs(w));
  ASSERT_GT(scale, 0);
  for (size_t i = 0; i < f64.scores.size(); ++i)
    ASSERT_LE(std::abs(always.scores[i] - f64.scores[i]), 1e-4 * std::max(std::abs(f64.scores[i]), 1e-3 * scale)) << "entry " << i;
}

TEST_P(FactoredModels, BatchSizeAndThreadsChangeNoBit) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto& c = GetParam();
  auto cfg = config_for(c.model, c.data, ae::Factoring::always);
  const auto a = tracin(cfg, 1);
  cfg.batch_size = 5;
  const auto b = tracin(cfg, 2);
  cfg.batch_size = 64;
  const auto d = tracin(cfg, 3);
  EXPECT_TRUE(bit_equal(a.scores, b.scores));
  EXPECT_TRUE(bit_equal(a.scores, d.scores));
  EXPECT_TRUE(bit_equal(a.self_influence, b.self_influence));
  EXPECT_TRUE(bit_equal(a.tranche_query, d.tranche_query));
}

TEST_P(FactoredModels, SelfInfluenceIsScoreWithItself) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto& c = GetParam();
  auto cfg = config_for(c.model, c.data, ae::Factoring::always);
  cfg.query_file = cfg.train_file;  // every training example is also a query
  const auto r = tracin(cfg);
  ASSERT_EQ(r.n_train, r.n_query);
  for (int64_t i = 0; i < r.n_train; ++i) {
    const double diag = r.scores[static_cast<size_t>(i * r.n_query + i)], self = r.self_influence[static_cast<size_t>(i)];
    EXPECT_EQ(std::memcmp(&diag, &self, sizeof diag), 0) << "row " << i << ": " << diag << " vs " << self;
  }
}

INSTANTIATE_TEST_SUITE_P(Chain, FactoredModels,
                         ::testing::Values(ModelCase{"mlp", "vec"}, ModelCase{"deep", "vec"}, ModelCase{"reg", "reg"},
                                           ModelCase{"cnn", "img"}),
                         [](const ::testing::TestParamInfo<ModelCase>& i) { return i.param.model; });

// The CNN fixture (Conv2d(1, 3, 3) on 6x6, then Linear(48, 4)): auto keeps the convolution dense
// (16 positions: 16^2 (10 + 3) > 10 x 3) and factors the linear layer, so rows mix both parts.
// The dense columns equal the plain gradient's bit for bit (same order of operations), and the
// factored layer's x and delta multiply out to the plain gradient's remaining entries exactly.
TEST(FactoredRows, MixedLayoutStandsForThePlainGradient) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto run = ac::read_run_file(fixture("cnn_run.toml"));
  const auto train = ac::read_dataset(fixture("img_train.h5"), true);
  auto backend = ak::make_cpu_backend();
  ae::Featurizer mixed(config_for("cnn", "img", ae::Factoring::automatic), run, 1, {&train}, *backend);
  ae::Featurizer plain(config_for("cnn", "img", ae::Factoring::never), run, 1, {&train}, *backend);
  ASSERT_EQ(mixed.use().path, ae::GradPath::chain) << mixed.use().chain_refusal;
  const auto& lay = mixed.layout();
  ASSERT_EQ(mixed.use().layers.size(), 2u);
  EXPECT_FALSE(mixed.use().layers[0].factored);
  EXPECT_EQ(mixed.use().layers[0].positions, 16);
  ASSERT_EQ(lay.factored.size(), 1u);
  EXPECT_EQ(lay.factored[0].positions, 1);
  EXPECT_EQ(lay.dense, 3 * 9 + 3);
  const int64_t n = train.size(), w = mixed.width(), p = plain.width();
  ASSERT_EQ(p, 30 + 4 * 48 + 4);
  std::vector<float> a(static_cast<size_t>(n * w), NAN), g(static_cast<size_t>(n * p), NAN);
  for (int64_t b0 = 0; b0 < n; b0 += 7) mixed.features(train, b0, std::min(n, b0 + 7), a.data() + b0 * w);
  plain.features(train, 0, n, g.data());
  const auto& fl = lay.factored[0];
  int64_t nonzero = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* r = a.data() + i * w;
    const float* gr = g.data() + i * p;
    ASSERT_EQ(std::memcmp(r, gr, sizeof(float) * static_cast<size_t>(lay.dense)), 0) << "dense columns of row " << i;
    for (int64_t o = 0; o < 4; ++o) {
      for (int64_t q = 0; q < 48; ++q) {
        const float want = gr[30 + o * 48 + q], got = r[fl.delta_offset() + o] * r[fl.offset + q];
        ASSERT_EQ(got, want) << "row " << i << " weight (" << o << ", " << q << ")";
        nonzero += want != 0;
      }
      ASSERT_EQ(r[fl.offset + 48], 1.0f) << "the bias column";
      ASSERT_EQ(r[fl.delta_offset() + o], gr[30 + 4 * 48 + o]) << "row " << i << " bias " << o;
    }
  }
  EXPECT_GT(nonzero, n * 10) << "degenerate gradients";
}

TEST(FactoredPipeline, StoreRoundTripGivesTheSameBytesAndTheManifestRecordsEachLayer) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  for (auto setting : {ae::Factoring::always, ae::Factoring::never}) {
    const std::string tag = ae::to_string(setting);
    auto cfg = config_for("deep", "vec", setting);
    cfg.scores = ae::ScoresOutput::always;
    ae::RunOptions one{d / (tag + "-one"), false, true};
    ae::run_attribute(cfg, one);
    ae::run_featurize(cfg, {d / (tag + "-train.h5"), false, false, true});
    ae::run_featurize(cfg, {d / (tag + "-query.h5"), true, false, true});
    ae::run_score(cfg, d / (tag + "-train.h5"), d / (tag + "-query.h5"), {d / (tag + "-two"), false, true});
    ae::run_score(cfg, d / (tag + "-train.h5"), "", {d / (tag + "-three"), false, true});
    for (const char* file : {"report.json", "attribution.csv", "manifest.json", "report.html", "scores.h5"}) {
      const auto a = ac::sha256_file(d / (tag + "-one/" + file));
      EXPECT_EQ(a, ac::sha256_file(d / (tag + "-two/" + file))) << tag << " " << file;
      EXPECT_EQ(a, ac::sha256_file(d / (tag + "-three/" + file))) << tag << " " << file;
    }
    // The manifest names each layer's choice, and the sizes agree with the rule.
    const auto m = nlohmann::json::parse(attrace::test::read_text(d / (tag + "-one/manifest.json")));
    ASSERT_TRUE(m.contains("factoring")) << tag;
    EXPECT_EQ(m["factoring"]["setting"], tag);
    const auto& per = m["factoring"]["checkpoints"];
    ASSERT_EQ(per.size(), 3u);
    for (const auto& ck : per) {
      if (setting == ae::Factoring::never) {
        EXPECT_FALSE(ck.contains("layers")) << ck.dump();
        EXPECT_EQ(ck["note"], "features.factored = never");
        continue;
      }
      ASSERT_EQ(ck["layers"].size(), 3u) << ck.dump();  // deep: three Linear layers
      for (const auto& l : ck["layers"]) {
        EXPECT_EQ(l["scored"], "factored");
        EXPECT_EQ(l["pair_cost_dense"].get<int64_t>(), l["d_in"].get<int64_t>() * l["d_out"].get<int64_t>());
      }
      EXPECT_EQ(ck["layers"][0]["d_in"], 9);  // Linear(8, 12) with its bias column
      EXPECT_EQ(ck["layers"][0]["d_out"], 12);
    }
  }
}

TEST(FactoredPipeline, ExactLimitCountsFactoredColumns) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  // deep on vec: 48 examples x 3 checkpoints x 4 bytes; 282 gradient dims, 59 factored columns.
  auto cfg = config_for("deep", "vec", ae::Factoring::always);
  cfg.exact_limit = 48 * 3 * 4 * 100;  // between the two sizes
  EXPECT_NO_THROW(ae::run_attribute(cfg, {d / "factored", false, true}));
  cfg.factored = ae::Factoring::never;
  try {
    ae::run_attribute(cfg, {d / "dense", false, true});
    FAIL() << "dense exact features above the limit were not refused";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("features.exact_limit"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("282 feature columns"), std::string::npos) << e.what();
  }
}

TEST(FactoredPipeline, AlwaysNeedsExactFloat32Features) {
  auto cfg = config_for("mlp", "vec", ae::Factoring::always, ae::Precision::fp64);
  try {
    ae::validate(cfg);
    FAIL() << "no InputError";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("features.factored"), std::string::npos) << e.what();
  }
  cfg = config_for("mlp", "vec", ae::Factoring::always);
  cfg.projection = ae::Projection::dense;
  EXPECT_THROW(ae::validate(cfg), attrace::InputError);
}

}  // namespace
