// Language models on the graph gradient path (issue 13): a GPT-style decoder traced from PyTorch
// (tests/fixtures/make_fixtures.py: embeddings, learned positions, pre-LN blocks with separate
// q/k/v/o Linear layers, GELU MLP, untied head) over token ids with next-token loss. The graph
// path's per-example gradients equal the general path's (one backward per example), Kronecker
// projection with identity factors gives the exact gradients, dict outputs are selected by
// gradients.model_output, and what the graph path cannot serve is refused by name.
#include "gradient_checks.hpp"
#include "test_util.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/featurize.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/progress.hpp>
#include <attrace/engine/token_scores.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <random>

namespace ac = attrace::connectors;
namespace ae = attrace::engine;
using attrace::test::all_gradients;
using attrace::test::expect_rows_close;
using attrace::test::fixture;

namespace {

constexpr int64_t kVocab = 32, kT = 12;  // the fixture GPT's vocabulary and context

// A token dataset in memory (the layout read_dataset gives): random ids, random lengths, the
// next-token targets derived as docs/formats.md says.
ac::Dataset tokens(int64_t n, uint32_t seed) {
  ac::Dataset ds;
  ds.path = "tokens-" + std::to_string(seed);
  ds.input_kind = ac::InputKind::integers;
  ds.input_shape = {n, kT};
  ds.target_kind = ac::TargetKind::tokens;
  ds.target_shape = {n, kT};
  std::mt19937 rng(seed);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t len = static_cast<int32_t>(2 + rng() % (kT - 1));
    ds.lengths.push_back(len);
    for (int64_t t = 0; t < kT; ++t) ds.int_inputs.push_back(t < len ? static_cast<int32_t>(rng() % kVocab) : 0);
    for (int64_t t = 0; t < kT; ++t)
      ds.token_targets.push_back(t + 1 < len ? ds.int_inputs[static_cast<size_t>(i * kT + t + 1)] : ac::kIgnoreTarget);
    ds.ids.push_back("doc" + std::to_string(i));
  }
  return ds;
}

ae::GradientSettings lm_settings(ae::GradPath path, ae::Precision precision = ae::Precision::fp32) {
  ae::GradientSettings gs;
  gs.loss = ae::Loss::next_token;
  gs.path = path;
  gs.precision = precision;
  gs.exclude = {"pos"};  // the learned position table is not a Linear, Embedding or LayerNorm
  return gs;
}

class GraphPath : public ::testing::TestWithParam<ae::Precision> {};

TEST_P(GraphPath, GradientsEqualThePerExampleBackward) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto precision = GetParam();
  const auto ds = tokens(9, 1);
  auto backend = attrace::kernels::make_cpu_backend();
  for (int c = 1; c <= 3; ++c) {
    const auto file = fixture("gpt_" + std::to_string(c) + ".pt");
    ae::CheckpointModel graph(file, lm_settings(ae::GradPath::automatic, precision), *backend);
    graph.prepare(ds);
    ASSERT_EQ(graph.path_in_use(), ae::GradPath::graph) << graph.chain_refusal();
    ae::CheckpointModel general(file, lm_settings(ae::GradPath::general, precision), *backend);
    general.prepare(ds);
    ASSERT_EQ(graph.dim(), general.dim());
    ASSERT_EQ(graph.parameter_names(), general.parameter_names());
    // 2 blocks x (q, k, v, o, mlp.0, mlp.2) + tok + head: 14 layers with every weight and bias,
    // and 2 x (ln1, ln2) + ln: 5 LayerNorms as 10 elementwise steps (weight, bias).
    ASSERT_EQ(graph.kronecker_layers().size(), 24u);
    const double tol = precision == ae::Precision::fp64 ? 1e-10 : 2e-4;
    if (precision == ae::Precision::fp64)
      expect_rows_close(all_gradients<double>(graph, ds, 4), all_gradients<double>(general, ds, 1), graph.dim(), tol, file);
    else
      expect_rows_close(all_gradients<float>(graph, ds, 4), all_gradients<float>(general, ds, 1), graph.dim(), tol, file);
  }
}

// A Linear without a bias (the head here) on the graph path, as on the general path.
TEST(GraphPathNoBias, EqualsThePerExampleBackward) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = tokens(5, 10);
  auto backend = attrace::kernels::make_cpu_backend();
  ae::CheckpointModel graph(fixture("gptnobias_1.pt"), lm_settings(ae::GradPath::graph), *backend);
  graph.prepare(ds);
  ae::CheckpointModel general(fixture("gptnobias_1.pt"), lm_settings(ae::GradPath::general), *backend);
  general.prepare(ds);
  expect_rows_close(all_gradients<float>(graph, ds, 5), all_gradients<float>(general, ds, 1), graph.dim(), 2e-4, "no-bias head");
}

INSTANTIATE_TEST_SUITE_P(Precisions, GraphPath, ::testing::Values(ae::Precision::fp32, ae::Precision::fp64),
                         [](const auto& i) { return i.param == ae::Precision::fp64 ? "fp64" : "fp32"; });

// Kronecker projection over every Linear and the embedding, with a budget that keeps each layer
// exact (identity factors: d_in * d_out <= k), is sqrt(lr) times the exact per-example gradient,
// laid out per layer as [W | b] (d_out x (d_in + 1), row-major).
TEST(GraphPathKronecker, IdentityFactorsGiveTheExactGradient) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = tokens(7, 2);
  const auto run = ac::read_run_file(fixture("gpt_run.toml"));
  auto backend = attrace::kernels::make_cpu_backend();
  ae::Config config;
  config.loss = ae::Loss::next_token;
  config.exclude = {"pos"};
  config.projection = ae::Projection::kronecker;
  config.projection_k = 4096;
  config.batch_size = 3;
  ae::Featurizer fz(config, run, 1, {&ds}, *backend);
  ASSERT_EQ(fz.use().path, ae::GradPath::graph);
  std::vector<float> f(static_cast<size_t>(ds.size() * fz.width()));
  for (int64_t b0 = 0; b0 < ds.size(); b0 += 3) fz.features(ds, b0, std::min<int64_t>(ds.size(), b0 + 3), f.data() + b0 * fz.width());

  ae::CheckpointModel general(run.checkpoints[1].path, lm_settings(ae::GradPath::general, ae::Precision::fp64), *backend);
  general.prepare(ds);
  ae::CheckpointModel graph(run.checkpoints[1].path, lm_settings(ae::GradPath::graph), *backend);
  graph.prepare(ds);
  const auto layers = graph.kronecker_layers();
  const auto g = all_gradients<double>(general, ds, 1);
  const int64_t p = general.dim();
  const double root_lr = std::sqrt(run.checkpoints[1].lr);
  std::vector<float> want(f.size());
  int64_t width = 0;
  for (const auto& l : layers) width += l.d_in * l.d_out;
  ASSERT_EQ(width, fz.width()) << "every layer should be kept exact at k = 4096";
  for (int64_t i = 0; i < ds.size(); ++i) {
    int64_t param_at = 0, feat_at = 0;
    for (const auto& l : layers) {
      const int64_t n_in = l.d_in - (l.bias ? 1 : 0);
      for (int64_t o = 0; o < l.d_out; ++o) {
        for (int64_t q = 0; q < n_in; ++q)
          want[static_cast<size_t>(i * fz.width() + feat_at + o * l.d_in + q)] =
              static_cast<float>(root_lr * g[static_cast<size_t>(i * p + param_at + o * n_in + q)]);
        if (l.bias)
          want[static_cast<size_t>(i * fz.width() + feat_at + o * l.d_in + n_in)] =
              static_cast<float>(root_lr * g[static_cast<size_t>(i * p + param_at + l.d_out * n_in + o)]);
      }
      param_at += l.d_out * l.d_in;
      feat_at += l.d_out * l.d_in;
    }
    ASSERT_EQ(param_at, p);
  }
  expect_rows_close(f, want, fz.width(), 2e-4, "identity-factor Kronecker features vs exact gradients");
}

// A row's graph-path gradient does not depend on which batch it was computed in.
TEST(GraphPathBits, RowsDoNotDependOnTheBatch) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = tokens(11, 3);
  auto backend = attrace::kernels::make_cpu_backend();
  ae::CheckpointModel m(fixture("gpt_2.pt"), lm_settings(ae::GradPath::graph), *backend);
  m.prepare(ds);
  const auto one = all_gradients<float>(m, ds, 1);
  for (int64_t batch : {3, 11}) {
    const auto b = all_gradients<float>(m, ds, batch);
    EXPECT_EQ(std::memcmp(one.data(), b.data(), one.size() * sizeof(float)), 0) << "batch " << batch;
  }
}

// A model returning a dict (traced with strict=False): gradients.model_output names the logits.
// Same weights as gpt_*.pt (same seeds), so the same gradients bit for bit.
TEST(ModelOutput, DictOutputSelectedByKey) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = tokens(5, 4);
  auto backend = attrace::kernels::make_cpu_backend();
  auto gs = lm_settings(ae::GradPath::automatic);
  gs.model_output = "logits";
  ae::CheckpointModel dict(fixture("gptdict_1.pt"), gs, *backend);
  dict.prepare(ds);
  EXPECT_EQ(dict.path_in_use(), ae::GradPath::graph) << dict.chain_refusal();
  ae::CheckpointModel plain(fixture("gpt_1.pt"), lm_settings(ae::GradPath::automatic), *backend);
  plain.prepare(ds);
  const auto a = all_gradients<float>(dict, ds, 5), b = all_gradients<float>(plain, ds, 5);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);

  const auto refused = [&](const std::string& key, const std::string& want) {
    auto s = lm_settings(ae::GradPath::automatic);
    s.model_output = key;
    ae::CheckpointModel m(fixture("gptdict_1.pt"), s, *backend);
    try {
      m.prepare(ds);
      ADD_FAILURE() << "model_output '" << key << "' was accepted";
    } catch (const attrace::InputError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  refused("", "gradients.model_output");
  refused("scores", "keys: ");
  refused("hidden", "vocabulary of 16");  // [batch, T, 16]: a tensor, but not the logits
}

// Selected parameters the graph path does not capture (learned positions, LayerNorm): auto falls
// back to the general path and says why; path = graph is refused naming them.
TEST(GraphPathRefusals, UncapturedParametersAreNamed) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = tokens(3, 5);
  auto backend = attrace::kernels::make_cpu_backend();
  auto gs = lm_settings(ae::GradPath::automatic);
  gs.exclude.clear();
  ae::CheckpointModel m(fixture("gpt_1.pt"), gs, *backend);
  m.prepare(ds);
  EXPECT_EQ(m.path_in_use(), ae::GradPath::general);
  EXPECT_NE(m.chain_refusal().find("pos"), std::string::npos) << m.chain_refusal();
  EXPECT_NE(m.chain_refusal().find("gradients.exclude"), std::string::npos) << m.chain_refusal();
  gs.path = ae::GradPath::graph;
  ae::CheckpointModel forced(fixture("gpt_1.pt"), gs, *backend);
  try {
    forced.prepare(ds);
    ADD_FAILURE() << "path = graph accepted uncaptured parameters";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("1 selected parameter(s) are not the weight or bias of a Linear, Embedding or LayerNorm (pos)"),
              std::string::npos)
        << e.what();
  }
}

// The loss needs a token dataset, and targets beyond the model's vocabulary are named.
TEST(NextTokenLoss, RefusesWhatItCannotScore) {
  ATTRACE_REQUIRE_FIXTURES();
  auto backend = attrace::kernels::make_cpu_backend();
  {
    auto no_targets = tokens(3, 9);  // an in-memory dataset without its targets
    no_targets.token_targets.clear();
    ae::CheckpointModel m(fixture("gpt_1.pt"), lm_settings(ae::GradPath::automatic), *backend);
    EXPECT_THROW(m.prepare(no_targets), attrace::InputError);
  }
  auto ds = tokens(4, 6);
  ds.token_targets[static_cast<size_t>(2 * kT + 0)] = static_cast<int32_t>(kVocab);
  ae::CheckpointModel m(fixture("gpt_1.pt"), lm_settings(ae::GradPath::automatic), *backend);
  try {
    m.prepare(ds);
    ADD_FAILURE() << "an out-of-vocabulary target was accepted";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'doc2'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("position 0"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

// Per-token scores: each listed proponent's position contributions add up to its TracIn score
// (Kronecker features of every layer at every position), are listed largest first, and only
// name positions inside the example's length.
TEST(TokenScores, PositionContributionsAddUpToTheScore) {
  ATTRACE_REQUIRE_FIXTURES();
  auto train = tokens(13, 7);
  train.tranche.assign(13, 0);
  train.tranches.push_back({"t0", "0x" + std::string(40, 'a'), "", ""});
  const auto query = tokens(4, 8);
  const auto run = ac::read_run_file(fixture("gpt_run.toml"));
  auto backend = attrace::kernels::make_cpu_backend();
  ae::Config config;
  config.loss = ae::Loss::next_token;
  config.exclude = {"pos", "*ln*"};  // LayerNorms left out here (the other tests take them)
  config.projection = ae::Projection::kronecker;
  config.projection_k = 64;  // projected layers (not identity): the decomposition must still add up
  config.token_proponents = 3;
  config.token_top = 4;
  ASSERT_EQ(ae::token_scores_refusal(config, train), "");
  ae::Progress quiet(false);
  const auto r = ae::compute_tracin(config, run, train, query, *backend, quiet);
  const auto qf = ae::featurize_in_memory(config, run, query, {&query}, *backend, quiet, "query", nullptr);
  const auto tok = ae::token_scores(config, run, train, qf, r, *backend);
  ASSERT_EQ(tok.size(), 4u);
  for (int64_t q = 0; q < 4; ++q) {
    const auto& list = tok[static_cast<size_t>(q)];
    ASSERT_EQ(list.size(), 3u);
    for (size_t k = 0; k < 3; ++k) {
      const auto& e = list[k];
      const int64_t row = r.topk[static_cast<size_t>(q)].proponents[k].row;
      EXPECT_EQ(e.at("example").get<std::string>(), train.ids[static_cast<size_t>(row)]);
      const double score = r.scores[static_cast<size_t>(row * r.n_query + q)];
      const double sum = e.at("sum_of_positions").get<double>();
      EXPECT_NEAR(sum, score, 1e-4 * std::max(1.0, std::abs(score))) << "query " << q << " proponent " << k;
      const auto& pos = e.at("positions");
      ASSERT_EQ(pos.size(), std::min<size_t>(4, static_cast<size_t>(train.lengths[static_cast<size_t>(row)])));
      for (size_t j = 0; j < pos.size(); ++j) {
        const int64_t t = pos[j].at("position").get<int64_t>();
        EXPECT_LT(t, train.lengths[static_cast<size_t>(row)]);
        EXPECT_EQ(pos[j].at("token").get<int32_t>(), train.int_inputs[static_cast<size_t>(row * kT + t)]);
        if (j > 0) EXPECT_GE(pos[j - 1].at("contribution").get<double>(), pos[j].at("contribution").get<double>());
      }
    }
  }
}

}  // namespace

namespace {

// End to end on token dataset files (the fixture's tok_train.h5 / tok_query.h5, lengths included):
// `attribute` and `featurize` + `score` write the same report.json bytes, per-token scores
// included (score reads the training tokens from data.train, checked against the store's hash).
TEST(TokenDatasets, AttributeAndStoreScoringGiveTheSameReport) {
  ATTRACE_REQUIRE_FIXTURES();
  attrace::test::TempDir d;
  const std::string cfg = d / "lm.toml";
  attrace::test::write_text(cfg, "[run]\ncheckpoints = \"" + fixture("gpt_run.toml") + "\"\n[data]\ntrain = \"" +
                                     fixture("tok_train.h5") + "\"\nquery = \"" + fixture("tok_query.h5") +
                                     "\"\n[gradients]\nloss = \"next_token\"\nexclude = [\"pos\"]\nbatch_size = 5\n"
                                     "[projection]\nkind = \"kronecker\"\nk = 256\n");
  const auto config = ae::load_config(cfg);
  ae::RunOptions o;
  o.out_dir = d / "a";
  o.quiet = true;
  const auto summary = ae::run_attribute(config, o);
  EXPECT_EQ(summary.path_used, "graph");
  ae::FeaturizeOptions fo;
  fo.store = d / "train.h5";
  fo.quiet = true;
  ae::run_featurize(config, fo);
  o.out_dir = d / "s";
  ae::run_score(config, fo.store, "", o);
  const auto a = attrace::test::read_text(d / "a/report.json"), s = attrace::test::read_text(d / "s/report.json");
  EXPECT_EQ(a, s);
  const auto report = nlohmann::json::parse(a);
  ASSERT_TRUE(report.contains("token_scores"));
  ASSERT_EQ(report.at("queries").size(), 5u);
  for (const auto& q : report.at("queries")) {
    ASSERT_EQ(q.at("tokens").size(), 3u);
    EXPECT_EQ(q.at("tokens")[0].at("example"), q.at("proponents")[0].at("id"));
    for (const auto& p : q.at("tokens")[0].at("positions")) {  // the fixture's /vocabulary: a..z, 0..5
      const int token = p.at("token").get<int>();
      EXPECT_EQ(p.at("text").get<std::string>(), token < 26 ? std::string(1, static_cast<char>('a' + token)) : std::to_string(token - 26));
      EXPECT_LE(p.at("before").get<std::string>().size(), static_cast<size_t>(p.at("position").get<int>()));
    }
  }
}

}  // namespace
