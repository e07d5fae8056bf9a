// engine/: exact TracIn against an independent brute-force reference (one backward per example
// in float64, written here), both gradient paths, batch independence, determinism, bad input.
#include "test_util.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace attrace::engine {
// Readable parameter names in test listings.
void PrintTo(Precision p, std::ostream* os) { *os << to_string(p); }
}  // namespace attrace::engine

namespace ac = attrace::connectors;
namespace ae = attrace::engine;
using attrace::test::fixture;
using attrace::test::TempDir;

namespace {

struct Case {
  std::string model, data;
  ae::Loss loss;
  ae::GradPath expected_path;
};

const Case kCases[] = {
    {"mlp", "vec", ae::Loss::cross_entropy, ae::GradPath::chain},
    {"mlptraced", "vec", ae::Loss::cross_entropy, ae::GradPath::chain},
    {"deep", "vec", ae::Loss::cross_entropy, ae::GradPath::chain},
    {"cnn", "img", ae::Loss::cross_entropy, ae::GradPath::chain},  // Conv2d on the chain path
    {"branch", "vec", ae::Loss::cross_entropy, ae::GradPath::graph},  // not a chain; all Linear: graph path
    {"reg", "reg", ae::Loss::mse, ae::GradPath::chain},
};

// Short names in test listings instead of a byte dump of the struct.
void PrintTo(const Case& c, std::ostream* os) { *os << c.model; }

ae::Config config_for(const Case& c, ae::Precision precision, ae::GradPath path = ae::GradPath::automatic) {
  ae::Config cfg;
  cfg.run_file = fixture(c.model + "_run.toml");
  cfg.train_file = fixture(c.data + "_train.h5");
  cfg.query_file = fixture(c.data + "_query.h5");
  cfg.loss = c.loss;
  cfg.precision = precision;
  cfg.path = path;
  cfg.batch_size = 8;  // 37 rows: four full batches and a tail of 5
  cfg.top_k = 3;
  return cfg;
}

struct Inputs {
  ac::TrainingRun run;
  ac::Dataset train, query;
};
Inputs load(const ae::Config& cfg) {
  return {ac::read_run_file(cfg.run_file), ac::read_dataset(cfg.train_file, true), ac::read_dataset(cfg.query_file, false)};
}

ae::TracinResult tracin(const ae::Config& cfg, const Inputs& in) {
  auto backend = attrace::kernels::make_cpu_backend();
  ae::Progress quiet(false);
  return ae::compute_tracin(cfg, in.run, in.train, in.query, *backend, quiet);
}

// Brute force: for every checkpoint and example, a float64 forward and loss.backward() on that
// example alone, then the gradients read from .grad() and dotted in long double.
struct Reference {
  std::vector<double> scores, self_influence, tranche_query;
};

std::vector<std::vector<double>> reference_grads(const std::string& path, const ac::Dataset& ds, ae::Loss loss,
                                                 const std::string& only_prefix) {
  auto m = torch::jit::load(path);
  m.eval();
  m.to(torch::kDouble);
  std::vector<torch::Tensor> params;
  for (const auto& p : m.named_parameters(true)) {
    torch::Tensor t = p.value;
    const bool use = only_prefix.empty() || p.name.rfind(only_prefix, 0) == 0;
    t.requires_grad_(use);
    if (use) params.push_back(t);
  }
  std::vector<std::vector<double>> out;
  for (int64_t i = 0; i < ds.size(); ++i) {
    std::vector<int64_t> shape = ds.input_shape;
    shape[0] = 1;
    auto x = torch::from_blob(const_cast<float*>(ds.inputs.data() + i * ds.example_width()), shape, torch::kFloat).to(torch::kDouble);
    auto y = m.forward({x}).toTensor();
    torch::Tensor l;
    if (loss == ae::Loss::cross_entropy) {
      l = -torch::log_softmax(y, 1)[0][ds.class_targets[static_cast<size_t>(i)]];
    } else {
      auto t = torch::from_blob(const_cast<float*>(ds.regression_targets.data() + i * ds.target_width()), {1, ds.target_width()},
                                torch::kFloat).to(torch::kDouble);
      l = (y.reshape({1, -1}) - t).pow(2).sum();
    }
    for (auto& p : params)
      if (p.grad().defined()) p.mutable_grad().zero_();
    l.backward();
    std::vector<double> g;
    for (auto& p : params) {
      auto gp = p.grad().defined() ? p.grad().contiguous() : torch::zeros_like(p);
      g.insert(g.end(), gp.data_ptr<double>(), gp.data_ptr<double>() + gp.numel());
    }
    out.push_back(std::move(g));
  }
  return out;
}

Reference reference(const Inputs& in, ae::Loss loss, const std::string& only_prefix = "") {
  const int64_t n = in.train.size(), m = in.query.size(), t = static_cast<int64_t>(in.train.tranches.size());
  Reference r;
  r.scores.assign(static_cast<size_t>(n * m), 0.0);
  r.self_influence.assign(static_cast<size_t>(n), 0.0);
  r.tranche_query.assign(static_cast<size_t>(t * m), 0.0);
  for (const auto& ck : in.run.checkpoints) {
    const auto gt = reference_grads(ck.path, in.train, loss, only_prefix);
    const auto gq = reference_grads(ck.path, in.query, loss, only_prefix);
    for (int64_t i = 0; i < n; ++i) {
      long double si = 0;
      for (double v : gt[static_cast<size_t>(i)]) si += static_cast<long double>(v) * v;
      r.self_influence[static_cast<size_t>(i)] += ck.lr * static_cast<double>(si);
      for (int64_t j = 0; j < m; ++j) {
        long double s = 0;
        for (size_t k = 0; k < gt[static_cast<size_t>(i)].size(); ++k)
          s += static_cast<long double>(gt[static_cast<size_t>(i)][k]) * gq[static_cast<size_t>(j)][k];
        r.scores[static_cast<size_t>(i * m + j)] += ck.lr * static_cast<double>(s);
      }
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j)
      r.tranche_query[static_cast<size_t>(in.train.tranche[static_cast<size_t>(i)] * m + j)] += r.scores[static_cast<size_t>(i * m + j)];
  return r;
}

// |got - want| <= rtol * max(|want|, 1e-3 * max|want|): relative, with a floor for entries that
// cancel to near zero (avoids 0/0 while staying far below the score scale).
void expect_close(const std::vector<double>& got, const std::vector<double>& want, double rtol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  ASSERT_GT(scale, 0) << what << ": reference is all zeros; the test would prove nothing";
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << " entry " << i;
    const double tol = rtol * std::max(std::abs(want[i]), 1e-3 * scale);
    if (std::abs(got[i] - want[i]) > tol && bad++ < 5)
      ADD_FAILURE() << what << " entry " << i << ": got " << got[i] << ", reference " << want[i] << ", tolerance " << tol;
  }
}

bool bit_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

template <class F>
std::string error_of(F fn) {
  try {
    fn();
  } catch (const attrace::InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}

class ReferenceAgreement : public ::testing::TestWithParam<std::tuple<Case, ae::Precision>> {};

TEST_P(ReferenceAgreement, ScoresSelfInfluenceAndTrancheTotals) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto& [c, precision] = GetParam();
  const auto cfg = config_for(c, precision);
  const auto in = load(cfg);
  ASSERT_GE(in.run.checkpoints.size(), 3u);
  const auto got = tracin(cfg, in);
  EXPECT_EQ(got.checkpoints.front().path, c.expected_path) << got.checkpoints.front().chain_refusal;
  const auto want = reference(in, c.loss);
  const double rtol = precision == ae::Precision::fp64 ? 1e-9 : 1e-4;
  expect_close(got.scores, want.scores, rtol, "scores");
  expect_close(got.self_influence, want.self_influence, rtol, "self-influence");
  expect_close(got.tranche_query, want.tranche_query, rtol, "tranche totals");
  // Top-k proponents really are the largest scores of their query.
  for (int64_t j = 0; j < got.n_query; ++j) {
    double best = -INFINITY;
    for (int64_t i = 0; i < got.n_train; ++i) best = std::max(best, got.scores[static_cast<size_t>(i * got.n_query + j)]);
    ASSERT_EQ(got.topk[static_cast<size_t>(j)].proponents.size(), 3u);
    EXPECT_EQ(got.topk[static_cast<size_t>(j)].proponents[0].score, best);
  }
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, ae::Precision>>& info) {
  return std::get<0>(info.param).model + (std::get<1>(info.param) == ae::Precision::fp64 ? "_fp64" : "_fp32");
}

INSTANTIATE_TEST_SUITE_P(Models, ReferenceAgreement,
                         ::testing::Combine(::testing::ValuesIn(kCases), ::testing::Values(ae::Precision::fp64, ae::Precision::fp32)),
                         case_name);

TEST(Engine, ChainAndGeneralPathsAgree) {
  ATTRACE_REQUIRE_FIXTURES();
  for (const auto& c : {kCases[0], kCases[2], kCases[5]}) {
    for (auto precision : {ae::Precision::fp64, ae::Precision::fp32}) {
      const auto chain_cfg = config_for(c, precision, ae::GradPath::chain);
      const auto in = load(chain_cfg);
      const auto chain = tracin(chain_cfg, in);
      const auto general = tracin(config_for(c, precision, ae::GradPath::general), in);
      const auto graph = tracin(config_for(c, precision, ae::GradPath::graph), in);  // the same chain as a graph
      ASSERT_EQ(chain.checkpoints.front().path, ae::GradPath::chain);
      ASSERT_EQ(general.checkpoints.front().path, ae::GradPath::general);
      ASSERT_EQ(graph.checkpoints.front().path, ae::GradPath::graph);
      SCOPED_TRACE(c.model);
      expect_close(chain.scores, general.scores, precision == ae::Precision::fp64 ? 1e-11 : 1e-5, "chain vs general");
      // fp32: the graph path's Linear products are float32 FMA chains (the chain path's sum in float64)
      expect_close(graph.scores, general.scores, precision == ae::Precision::fp64 ? 1e-11 : 1e-4, "graph vs general");
    }
  }
}

TEST(Engine, RowGradientsDoNotDependOnTheBatch) {
  ATTRACE_REQUIRE_FIXTURES();
  auto backend = attrace::kernels::make_cpu_backend();
  for (const auto& c : {kCases[0], kCases[2], kCases[3]}) {
    const auto cfg = config_for(c, ae::Precision::fp32);
    const auto in = load(cfg);
    ae::GradientSettings gs;
    gs.loss = c.loss;
    ae::CheckpointModel model(in.run.checkpoints[1].path, gs, *backend);
    model.prepare(in.train);
    const int64_t p = model.dim(), n = in.train.size();
    std::vector<float> whole(static_cast<size_t>(n * p)), single(static_cast<size_t>(p)), tail(static_cast<size_t>(5 * p));
    model.gradients(in.train, 0, n, whole.data());
    for (int64_t i = 0; i < n; ++i) {
      model.gradients(in.train, i, i + 1, single.data());
      ASSERT_EQ(std::memcmp(single.data(), whole.data() + i * p, static_cast<size_t>(p) * sizeof(float)), 0)
          << c.model << " row " << i << " differs between a batch of " << n << " and a batch of 1";
    }
    model.gradients(in.train, 30, 35, tail.data());
    EXPECT_EQ(std::memcmp(tail.data(), whole.data() + 30 * p, tail.size() * sizeof(float)), 0) << c.model;
  }
}

TEST(Engine, RepeatedRunsAreBitIdentical) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[0], ae::Precision::fp32);
  const auto in = load(cfg);
  const auto a = tracin(cfg, in);
  const auto b = tracin(cfg, in);
  EXPECT_TRUE(bit_equal(a.scores, b.scores));
  EXPECT_TRUE(bit_equal(a.self_influence, b.self_influence));
  EXPECT_TRUE(bit_equal(a.tranche_query, b.tranche_query));
  cfg.batch_size = 37;  // a different batch size must not change any bit either
  const auto c = tracin(cfg, in);
  EXPECT_TRUE(bit_equal(a.scores, c.scores));
  cfg.batch_size = 0;  // "auto": the chain path takes the whole set in one call here
  const auto d = tracin(cfg, in);
  EXPECT_TRUE(bit_equal(a.scores, d.scores));
  EXPECT_TRUE(bit_equal(a.self_influence, d.self_influence));
}

TEST(Engine, ParameterPatternsSelectASubset) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[0], ae::Precision::fp64);
  cfg.parameters = {"2.*"};
  const auto in = load(cfg);
  const auto got = tracin(cfg, in);
  EXPECT_EQ(got.checkpoints.front().dim, 16 * 4 + 4);
  EXPECT_EQ(got.checkpoints.front().parameters, (std::vector<std::string>{"2.weight", "2.bias"}));
  const auto want = reference(in, cfg.loss, "2.");
  expect_close(got.scores, want.scores, 1e-9, "last-layer scores");
}

TEST(Engine, ProjectionIsDeterministicAndTracksExactScores) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[2], ae::Precision::fp32);  // nested Sequential, 3 Linear layers
  const auto in = load(cfg);
  const auto exact = tracin(cfg, in);
  // Kronecker at k = 48 really projects every layer of this model (9x12, 12x10, 10x4 weights
  // with biases exceed 48 features); dense at 8192 is the high-k regime.
  for (const auto& [kind, k, tol] : {std::make_tuple(ae::Projection::dense, int64_t{8192}, 0.1),
                                     std::make_tuple(ae::Projection::kronecker, int64_t{48}, 0.6)}) {
    cfg.projection = kind;
    cfg.projection_k = k;
    const auto a = tracin(cfg, in);
    EXPECT_TRUE(bit_equal(a.scores, tracin(cfg, in).scores));
    cfg.batch_size = 5;
    EXPECT_TRUE(bit_equal(a.scores, tracin(cfg, in).scores)) << "batch size changed a projected score";
    cfg.batch_size = 8;
    // Unbiased estimate with ~1/sqrt(k) noise: close to exact on aggregate.
    double num = 0, den = 0;
    for (size_t i = 0; i < exact.scores.size(); ++i) {
      num += (a.scores[i] - exact.scores[i]) * (a.scores[i] - exact.scores[i]);
      den += exact.scores[i] * exact.scores[i];
    }
    EXPECT_LT(std::sqrt(num / den), tol) << ae::to_string(kind);
    cfg.projection_seed = 1;
    EXPECT_FALSE(bit_equal(a.scores, tracin(cfg, in).scores)) << "the seed must change the projection";
    cfg.projection_seed = 0;
  }
}

TEST(Engine, BlasScoringAgreesWithCanonical) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[0], ae::Precision::fp32);
  const auto in = load(cfg);
  const auto canonical = tracin(cfg, in);
  cfg.scoring = ae::Scoring::blas;
  const auto blas = tracin(cfg, in);
  expect_close(blas.scores, canonical.scores, 1e-4, "blas vs canonical scores");
  EXPECT_TRUE(bit_equal(blas.scores, tracin(cfg, in).scores)) << "blas scoring must repeat exactly with the same settings";
}

TEST(EngineErrors, KroneckerNeedsTheChainPath) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[4], ae::Precision::fp32);  // two branches, forced onto the general path
  cfg.path = ae::GradPath::general;
  cfg.projection = ae::Projection::kronecker;
  const auto in = load(cfg);
  const auto msg = error_of([&] { tracin(cfg, in); });
  EXPECT_NE(msg.find("Kronecker projection needs the chain path"), std::string::npos) << msg;
}

// ---- bad input ----

TEST(EngineErrors, MissingCheckpoint) {
  auto backend = attrace::kernels::make_cpu_backend();
  const auto msg = error_of([&] { ae::CheckpointModel("/nonexistent/model.pt", {}, *backend); });
  EXPECT_NE(msg.find("/nonexistent/model.pt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

TEST(EngineErrors, FileThatIsNotATorchScriptModel) {
  TempDir d;
  attrace::test::write_text(d / "junk.pt", "this is not a zip archive");
  auto backend = attrace::kernels::make_cpu_backend();
  const auto msg = error_of([&] { ae::CheckpointModel(d / "junk.pt", {}, *backend); });
  EXPECT_NE(msg.find("junk.pt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a TorchScript model"), std::string::npos) << msg;
}

TEST(EngineErrors, DatasetShapeDoesNotFitTheModel) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[0], ae::Precision::fp32);
  cfg.train_file = fixture("img_train.h5");  // 1x6x6 images into an 8-input MLP
  const auto in = load(cfg);
  const auto msg = error_of([&] { tracin(cfg, in); });
  EXPECT_NE(msg.find("img_train.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("do not fit"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mlp_1.pt"), std::string::npos) << msg;
}

TEST(EngineErrors, LabelBeyondTheModelsClasses) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[0], ae::Precision::fp32);
  auto in = load(cfg);
  in.train.class_targets[6] = 9;  // the MLP has 4 outputs
  const auto msg = error_of([&] { tracin(cfg, in); });
  EXPECT_NE(msg.find("'ex006'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("class 9"), std::string::npos) << msg;
}

TEST(EngineErrors, LossDoesNotMatchTargets) {
  ATTRACE_REQUIRE_FIXTURES();
  auto cfg = config_for(kCases[0], ae::Precision::fp32);
  cfg.loss = ae::Loss::mse;
  const auto in = load(cfg);
  EXPECT_NE(error_of([&] { tracin(cfg, in); }).find("loss mse needs float regression targets"), std::string::npos);
}

TEST(EngineErrors, ChainForcedOnANonChainModel) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto cfg = config_for(kCases[4], ae::Precision::fp32, ae::GradPath::chain);
  const auto in = load(cfg);
  const auto msg = error_of([&] { tracin(cfg, in); });
  EXPECT_NE(msg.find("path = chain requested"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a Sequential"), std::string::npos) << msg;
}

TEST(EngineErrors, NonFiniteGradientNamesTheExample) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  // A checkpoint with a NaN output bias: every logit, loss and gradient becomes NaN; the engine
  // must stop at the first example (queries are featurized first) and name it.
  auto m = torch::jit::load(fixture("mlp_1.pt"));
  {
    torch::NoGradGuard ng;
    for (const auto& p : m.named_parameters(true))
      if (p.name == "2.bias") p.value.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  m.save(d / "inf.pt");
  attrace::test::write_text(d / "run.toml", "[[checkpoint]]\nfile = \"inf.pt\"\nstep = 1\nlr = 0.1\n");
  auto cfg = config_for(kCases[0], ae::Precision::fp32);
  cfg.run_file = d / "run.toml";
  auto in = load(cfg);
  for (auto path : {ae::GradPath::chain, ae::GradPath::graph, ae::GradPath::general}) {
    cfg.path = path;
    auto backend = attrace::kernels::make_cpu_backend();
    ae::Progress quiet(false);
    try {
      ae::compute_tracin(cfg, in.run, in.train, in.query, *backend, quiet);
      ADD_FAILURE() << "no error for non-finite gradients";
    } catch (const attrace::NumericError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("non-finite gradient"), std::string::npos) << msg;
      EXPECT_NE(msg.find("example 'ex000' (row 0 of '" + fixture("vec_query.h5") + "')"), std::string::npos) << msg;
      EXPECT_NE(msg.find("inf.pt"), std::string::npos) << msg;
    }
  }
}

TEST(EngineErrors, NoParameterMatches) {
  ATTRACE_REQUIRE_FIXTURES();
  ae::GradientSettings gs;
  gs.parameters = {"encoder.*"};
  auto backend = attrace::kernels::make_cpu_backend();
  const auto msg = error_of([&] { ae::CheckpointModel(fixture("mlp_1.pt"), gs, *backend); });
  EXPECT_NE(msg.find("no parameter matches"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0.weight"), std::string::npos) << msg;
}

}  // namespace

// Manifest settings that no config file could give are refused with a message, not a stack
// overflow (found by fuzz_manifest) or a wrapped-around value.
TEST(EngineConfig, ImpossibleManifestSettingsAreRefused) {
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += "{\"a\":";
  deep += "1";
  for (int i = 0; i < 100000; ++i) deep += "}";
  const auto nested = nlohmann::json::parse(deep);
  try {
    ae::config_from_json(nested, "manifest.json");
    ADD_FAILURE() << "accepted settings nested 100000 deep";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nested more than 8 tables deep"), std::string::npos) << e.what();
  }
  auto huge = nlohmann::json::parse(R"({"attribution": {"top_k": 18446744073709551615}})");
  try {
    ae::config_from_json(huge, "manifest.json");
    ADD_FAILURE() << "accepted top_k = 2^64 - 1";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("settings.top_k = 18446744073709551615 is out of range"), std::string::npos)
        << e.what();
  }
}

// The typed config survives the manifest: an auditor rebuilds exactly the settings of a run.
TEST(EngineConfig, RebuiltFromManifestSettings) {
  TempDir d;
  attrace::test::write_text(d / "c.toml",
                            "[run]\ncheckpoints = \"r.toml\"\n[data]\ntrain = \"t.h5\"\nquery = \"q.h5\"\n"
                            "[gradients]\nloss = \"mse\"\nparameters = [\"fc2.*\", \"fc1.weight\"]\nbatch_size = 7\n"
                            "path = \"general\"\nprecision = \"fp64\"\ndevice = \"auto\"\n"
                            "[projection]\nkind = \"kronecker\"\nk = 333\nseed = 18446744073709551\ndistribution = \"gaussian\"\n"
                            "[features]\ndtype = \"bf16\"\n"
                            "[attribution]\ntop_k = 3\nscoring = \"blas\"\ngemm_math = \"tf32\"\nnegative_policy = \"clip_per_query\"\n"
                            "duplicate_threshold = 0.25\ntolerance = 1e-9\nmemory_limit = \"3GiB\"\n"
                            "[output]\nscores = \"never\"\nscores_max_entries = 5\n");
  const ae::Config c = ae::load_config(d / "c.toml");
  EXPECT_EQ(c.memory_limit, int64_t{3} << 30);
  EXPECT_EQ(c.projection_seed, 18446744073709551ull);
  const nlohmann::json j = ae::to_json(c);
  const ae::Config back = ae::config_from_json(j, "manifest.json");
  EXPECT_EQ(ae::to_json(back).dump(), j.dump());
  EXPECT_EQ(back.feature_dtype, ae::FeatureType::bf16);
  EXPECT_EQ(back.gemm_math, attrace::kernels::GemmMath::tf32);
  EXPECT_EQ(back.projection_distribution, ae::Distribution::gaussian);
  // A manifest whose settings were edited by hand is refused with the field named.
  nlohmann::json bad = j;
  bad["attribution"]["scoring"] = "fast";
  try {
    ae::config_from_json(bad, "manifest.json");
    ADD_FAILURE() << "accepted scoring = fast";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("manifest.json: attribution.scoring"), std::string::npos) << e.what();
  }
}
