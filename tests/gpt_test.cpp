// The GPT builder and the native LM trainer (engine/gpt.hpp): the saved module loads back in C++
// and in Python with the same outputs, forward shapes, causality, training lowers the loss, and
// two runs with one seed write the same checkpoint bytes.
#include "test_util.hpp"

#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/gpt.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

namespace attrace {
namespace {

namespace fs = std::filesystem;
using engine::GptConfig;

GptConfig tiny_config(uint64_t seed = 7) {
  GptConfig c;
  c.vocab = 23;  // odd sizes, so a transposed weight cannot pass for the right one
  c.context = 12;
  c.d_model = 16;
  c.layers = 2;
  c.heads = 4;
  c.d_ff = 24;
  c.seed = seed;
  return c;
}

torch::Tensor tokens_for(const GptConfig& c, int64_t b, int64_t t, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto x = torch::empty({b, t}, torch::kLong);
  auto a = x.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < t; ++s) a[i][s] = static_cast<int64_t>(rng() % static_cast<uint64_t>(c.vocab));
  return x;
}

// Sequences of a few repeated patterns, so a small model can learn them; varied lengths.
connectors::Dataset pattern_dataset(int64_t n, int64_t t, int64_t vocab) {
  connectors::Dataset ds;
  ds.input_kind = connectors::InputKind::integers;
  ds.input_shape = {n, t};
  ds.int_inputs.assign(static_cast<size_t>(n * t), 0);
  ds.lengths.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t stride = 1 + i % 3, start = i % vocab;
    const int64_t len = t - (i % 4);
    ds.lengths[static_cast<size_t>(i)] = static_cast<int32_t>(len);
    for (int64_t s = 0; s < len; ++s) ds.int_inputs[static_cast<size_t>(i * t + s)] = static_cast<int32_t>((start + stride * s) % vocab);
    ds.ids.push_back("seq-" + std::to_string(i));
  }
  ds.target_kind = connectors::TargetKind::tokens;
  return ds;
}

double mean(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()); }

TEST(Gpt, ParameterNamesAndCount) {
  const GptConfig c = tiny_config();
  auto m = engine::build_gpt(c);
  int64_t total = 0;
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) {
    total += p.value.numel();
    names.push_back(p.name);
  }
  EXPECT_EQ(total, engine::gpt_parameter_count(c));
  for (const char* want : {"tok_emb.weight", "pos_emb.weight", "h0.ln1.weight", "h0.attn.q.weight", "h0.attn.k.bias",
                           "h0.attn.v.weight", "h0.attn.o.weight", "h1.mlp.fc1.weight", "h1.mlp.fc2.bias", "ln_f.bias",
                           "head.weight"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  EXPECT_EQ(std::find(names.begin(), names.end(), "head.bias"), names.end()) << "head_bias = false";
  EXPECT_EQ(m.attr("head").toModule().attr("weight").toTensor().sizes(), (std::vector<int64_t>{c.vocab, c.d_model}));
  EXPECT_EQ(m.attr("h0").toModule().attr("mlp").toModule().attr("fc1").toModule().attr("weight").toTensor().sizes(),
            (std::vector<int64_t>{c.d_ff, c.d_model}));
  GptConfig b = c;
  b.head_bias = true;
  EXPECT_EQ(engine::gpt_parameter_count(b), engine::gpt_parameter_count(c) + c.vocab);
}

TEST(Gpt, BadConfigIsRefused) {
  GptConfig c = tiny_config();
  c.heads = 5;
  EXPECT_THROW(engine::build_gpt(c), InputError);
  c = tiny_config();
  c.layers = 0;
  EXPECT_THROW(engine::build_gpt(c), InputError);
}

TEST(Gpt, InitDependsOnlyOnSeed) {
  auto a = engine::build_gpt(tiny_config(1)), b = engine::build_gpt(tiny_config(1)), d = engine::build_gpt(tiny_config(2));
  auto pa = a.named_parameters(), pb = b.named_parameters(), pd = d.named_parameters();
  auto ib = pb.begin(), id = pd.begin();
  bool any_differs = false;
  for (const auto& p : pa) {
    EXPECT_TRUE(torch::equal(p.value, (*ib).value)) << p.name;
    if (p.value.dim() == 2) any_differs |= !torch::equal(p.value, (*id).value);
    ++ib;
    ++id;
  }
  EXPECT_TRUE(any_differs);
  // GPT-2's scale: N(0, 0.02) for q, N(0, 0.02 / sqrt(2 L)) for the residual projections.
  const auto q = a.attr("h0").toModule().attr("attn").toModule().attr("q").toModule().attr("weight").toTensor();
  const auto o = a.attr("h0").toModule().attr("attn").toModule().attr("o").toModule().attr("weight").toTensor();
  EXPECT_NEAR(q.std().item<double>(), 0.02, 0.004);
  EXPECT_NEAR(o.std().item<double>(), 0.01, 0.002);
}

TEST(Gpt, ForwardShapeAndDictOutput) {
  GptConfig c = tiny_config();
  auto m = engine::build_gpt(c);
  const auto x = tokens_for(c, 3, c.context, 1);
  const auto y = m.forward({x}).toTensor();
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, c.context, c.vocab}));
  EXPECT_EQ(y.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  // Shorter sequences run too (positions 0..T'-1).
  EXPECT_EQ(m.forward({x.slice(1, 0, 5)}).toTensor().sizes(), (std::vector<int64_t>{3, 5, c.vocab}));
  c.dict_output = true;
  auto md = engine::build_gpt(c);
  const auto out = md.forward({x});
  ASSERT_TRUE(out.isGenericDict());
  const auto logits = out.toGenericDict().at(c10::IValue(std::string("logits"))).toTensor();
  EXPECT_TRUE(torch::equal(logits, y)) << "same seed, same weights: dict output must hold the same logits";
}

TEST(Gpt, SavedModuleLoadsBackInCpp) {
  test::TempDir dir;
  const GptConfig c = tiny_config();
  const std::string path = dir / "gpt.pt";
  engine::save_gpt(path, c);
  auto m = engine::build_gpt(c);
  auto loaded = torch::jit::load(path);
  const auto x = tokens_for(c, 2, c.context, 3);
  EXPECT_TRUE(torch::equal(m.forward({x}).toTensor(), loaded.forward({x}).toTensor()));
  int64_t n = 0;
  for (const auto& p : loaded.parameters()) n += p.numel();
  EXPECT_EQ(n, engine::gpt_parameter_count(c));
}

TEST(Gpt, SavedModuleLoadsInPython) {
  test::TempDir dir;
  GptConfig c = tiny_config();
  c.dict_output = true;
  const std::string path = dir / "gpt.pt";
  engine::save_gpt(path, c);
  // Python computes the logits of fixed tokens and writes them as text; C++ compares.
  const std::string out = dir / "logits.txt";
  const std::string script = dir / "load.py";
  std::ofstream(script) << "import sys, torch\n"
                           "m = torch.jit.load(sys.argv[1])\n"
                           "x = (torch.arange(2 * 12).reshape(2, 12) * 7) % 23\n"
                           "y = m(x)['logits']\n"
                           "assert tuple(y.shape) == (2, 12, 23), y.shape\n"
                           "names = [n for n, _ in m.named_parameters()]\n"
                           "assert 'h1.attn.q.weight' in names and 'head.weight' in names, names\n"
                           "open(sys.argv[2], 'w').write(' '.join(repr(v) for v in y.flatten().tolist()))\n";
  const auto r = test::run_shell("/usr/bin/python3 " + script + " " + path + " " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream in(out);
  std::vector<double> py;
  for (double v; in >> v;) py.push_back(v);
  auto x = (torch::arange(2 * 12).reshape({2, 12}) * 7).remainder(23);
  auto m = engine::build_gpt(c);
  const auto y = m.forward({x}).toGenericDict().at(c10::IValue(std::string("logits"))).toTensor().flatten();
  ASSERT_EQ(static_cast<int64_t>(py.size()), y.numel());
  const auto a = y.accessor<float, 1>();
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(py[static_cast<size_t>(i)], a[i], 1e-5) << i;
}

TEST(Gpt, IsCausal) {
  const GptConfig c = tiny_config();
  auto m = engine::build_gpt(c);
  const auto x = tokens_for(c, 2, c.context, 5);
  const auto y = m.forward({x}).toTensor();
  for (int64_t t : {0, 4, 10}) {
    auto x2 = x.clone();
    x2.select(1, t + 1).add_(1).remainder_(c.vocab);  // change token t+1 only
    const auto y2 = m.forward({x2}).toTensor();
    // Up to t nothing may change: the future's attention weights are exactly 0.
    EXPECT_TRUE(torch::equal(y.slice(1, 0, t + 1), y2.slice(1, 0, t + 1))) << "t = " << t;
    EXPECT_FALSE(torch::allclose(y.select(1, t + 1), y2.select(1, t + 1))) << "t + 1 = " << t + 1;
  }
}

TEST(Gpt, ExampleLossIsMeanOverValidPositions) {
  const GptConfig c = tiny_config();
  auto m = engine::build_gpt(c);
  auto ds = pattern_dataset(5, c.context, c.vocab);
  const auto losses = engine::lm_example_losses(m, ds, 0, 5, 2);
  ASSERT_EQ(losses.size(), 5u);
  // Recompute example 3 by hand: positions 0 .. len-2 predict the next token.
  const int64_t i = 3, len = ds.lengths[3];
  auto x = torch::from_blob(ds.int_inputs.data() + i * c.context, {1, c.context}, torch::kInt).to(torch::kLong);
  const auto lp = torch::log_softmax(m.forward({x}).toTensor()[0], -1);
  double sum = 0;
  for (int64_t s = 0; s + 1 < len; ++s) sum -= lp[s][x[0][s + 1].item<int64_t>()].item<double>();
  EXPECT_NEAR(losses[3], sum / static_cast<double>(len - 1), 1e-5);
  // Untrained: close to log(vocab).
  EXPECT_NEAR(mean(losses), std::log(static_cast<double>(c.vocab)), 0.3);
}

engine::LmTrainOptions train_options(const std::string& dir, uint64_t seed) {
  engine::LmTrainOptions o;
  o.out_dir = dir;
  o.phases = {{30, 1e-2}, {20, 3e-3}, {10, 1e-3}};
  o.batch_size = 8;
  o.seed = seed;
  return o;
}

TEST(Gpt, TrainingLowersTheLossAndWritesARunFile) {
  test::TempDir dir;
  const GptConfig c = tiny_config();
  auto m = engine::build_gpt(c);
  const auto ds = pattern_dataset(40, c.context, c.vocab);
  const double before = mean(engine::lm_example_losses(m, ds, 0, ds.size()));
  int64_t calls = 0;
  auto o = train_options(dir.str(), 11);
  o.on_step = [&](int64_t step, double loss) {
    EXPECT_EQ(step, ++calls);
    EXPECT_TRUE(std::isfinite(loss));
  };
  const auto r = engine::train_lm(m, ds, o);
  EXPECT_EQ(calls, 60);
  const double after = mean(engine::lm_example_losses(m, ds, 0, ds.size()));
  EXPECT_LT(after, 0.5 * before) << "before " << before << ", after " << after;
  ASSERT_EQ(r.checkpoints.size(), 3u);
  EXPECT_EQ(r.steps, (std::vector<int64_t>{30, 50, 60}));
  // The run file reads back with the steps and lrs in force; the last checkpoint is the model.
  const auto run = connectors::read_run_file(r.run_file);
  ASSERT_EQ(run.checkpoints.size(), 3u);
  EXPECT_EQ(run.checkpoints[1].step, 50);
  EXPECT_EQ(run.checkpoints[1].lr, 3e-3);
  EXPECT_EQ(run.checkpoints[2].lr, 1e-3);
  auto last = torch::jit::load(run.checkpoints[2].path);
  EXPECT_EQ(mean(engine::lm_example_losses(last, ds, 0, ds.size())), after);
  // The first checkpoint is an earlier model: its loss lies between.
  auto first = torch::jit::load(run.checkpoints[0].path);
  const double mid = mean(engine::lm_example_losses(first, ds, 0, ds.size()));
  EXPECT_LT(mid, before);
  EXPECT_GT(mid, after);
}

TEST(Gpt, TrainingIsDeterministicForASeed) {
  test::TempDir a, b, d;
  const GptConfig c = tiny_config();
  const auto ds = pattern_dataset(40, c.context, c.vocab);
  auto ma = engine::build_gpt(c), mb = engine::build_gpt(c), md = engine::build_gpt(c);
  // Training runs on options.threads (1) whatever the caller's setting, and restores it.
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  const auto ra = engine::train_lm(ma, ds, train_options(a.str(), 3));
  EXPECT_EQ(at::get_num_threads(), 2);
  at::set_num_threads(before);
  const auto rb = engine::train_lm(mb, ds, train_options(b.str(), 3));
  const auto rd = engine::train_lm(md, ds, train_options(d.str(), 4));
  for (size_t k = 0; k < ra.checkpoints.size(); ++k) {
    EXPECT_EQ(connectors::sha256_file(ra.checkpoints[k]), connectors::sha256_file(rb.checkpoints[k])) << k;
    EXPECT_NE(connectors::sha256_file(ra.checkpoints[k]), connectors::sha256_file(rd.checkpoints[k]))
        << k << ": another batch order must give other weights";
  }
  EXPECT_EQ(connectors::sha256_file(ra.run_file), connectors::sha256_file(rb.run_file));
}

TEST(Gpt, SgdTrainsToo) {
  test::TempDir dir;
  const GptConfig c = tiny_config();
  auto m = engine::build_gpt(c);
  const auto ds = pattern_dataset(24, c.context, c.vocab);
  const double before = mean(engine::lm_example_losses(m, ds, 0, ds.size()));
  auto o = train_options(dir.str(), 1);
  o.optimizer = engine::LmOptimizer::sgd;
  o.phases = {{40, 0.5}};
  engine::train_lm(m, ds, o);
  EXPECT_LT(mean(engine::lm_example_losses(m, ds, 0, ds.size())), before - 0.2);
}

TEST(Gpt, TrainerRefusesBadInput) {
  test::TempDir dir;
  const GptConfig c = tiny_config();
  auto m = engine::build_gpt(c);
  auto o = train_options(dir.str(), 1);
  connectors::Dataset values;
  values.input_shape = {2, 3};
  values.inputs.assign(6, 0.f);
  EXPECT_THROW(engine::train_lm(m, values, o), InputError);
  auto ds = pattern_dataset(4, c.context, c.vocab);
  ds.lengths[2] = 0;
  EXPECT_THROW(engine::train_lm(m, ds, o), InputError);
  ds = pattern_dataset(4, c.context, c.vocab);
  o.phases = {{0, 1e-3}};
  EXPECT_THROW(engine::train_lm(m, ds, o), InputError);
  o.phases = {{1, std::nan("")}};
  EXPECT_THROW(engine::train_lm(m, ds, o), InputError);
}

// The graph gradient path takes the built GPT as it is: every parameter is the weight or bias of
// a captured Linear, Embedding (tokens and positions) or LayerNorm, and its per-example
// gradients equal the general path's (one backward per example).
TEST(Gpt, GraphPathServesTheModel) {
  test::TempDir dir;
  GptConfig c = tiny_config();
  c.head_bias = true;  // the graph path refuses a Linear without a bias today
  const std::string path = dir / "gpt.pt";
  engine::save_gpt(path, c);
  auto ds = pattern_dataset(6, c.context, c.vocab);
  ds.path = "patterns";
  ds.token_targets = connectors::next_token_targets(ds);  // as read_dataset fills them
  ds.target_shape = {6, c.context};
  auto backend = kernels::make_cpu_backend();
  engine::GradientSettings gs;
  gs.loss = engine::Loss::next_token;
  gs.path = engine::GradPath::graph;
  engine::CheckpointModel graph(path, gs, *backend);
  graph.prepare(ds);
  ASSERT_EQ(graph.path_in_use(), engine::GradPath::graph);
  EXPECT_EQ(graph.dim(), engine::gpt_parameter_count(c));
  std::vector<std::string> layers;
  for (const auto& l : graph.kronecker_layers()) layers.push_back(l.name);
  for (const char* want : {"tok_emb", "pos_emb", "h0.attn.q", "h0.attn.o", "h1.mlp.fc2", "head"})
    EXPECT_NE(std::find(layers.begin(), layers.end(), want), layers.end()) << want;
  gs.path = engine::GradPath::general;
  engine::CheckpointModel general(path, gs, *backend);
  general.prepare(ds);
  const int64_t p = graph.dim();
  std::vector<float> a(static_cast<size_t>(6 * p)), b(a.size());
  graph.gradients(ds, 0, 6, a.data());
  general.gradients(ds, 0, 6, b.data());
  for (int64_t i = 0; i < 6; ++i) {
    double scale = 0, err = 0;
    for (int64_t q = 0; q < p; ++q) {
      const size_t k = static_cast<size_t>(i * p + q);
      scale = std::max(scale, std::abs(static_cast<double>(b[k])));
      err = std::max(err, std::abs(static_cast<double>(a[k]) - static_cast<double>(b[k])));
    }
    EXPECT_GT(scale, 0) << i;
    EXPECT_LE(err, 1e-4 * scale) << "example " << i;
  }
}

// `attrace demo --lm --quick`: the whole pipeline (fortunes, import text, training, graph path,
// Kronecker projection, scores) in seconds; twice in two folders, with the same report bytes.
TEST(DemoLm, QuickRunIsCompleteAndRepeatable) {
  test::TempDir dir;
  std::string first;
  for (const char* sub : {"a", "b"}) {
    const std::string d = dir / sub;
    const auto r = test::run_attrace("demo --lm --quick -q --dir " + d);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("queries attributed mostly to their own category's tranche"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("(chance 33.3%)"), std::string::npos) << r.out;
    for (const char* f : {"train.h5", "query.h5", "run.toml", "ckpt_1.pt", "ckpt_2.pt", "report/report.json", "report/scores.h5"})
      EXPECT_TRUE(fs::exists(fs::path(d) / f)) << f;
    const auto run = connectors::read_run_file((fs::path(d) / "run.toml").string());
    EXPECT_EQ(run.checkpoints.size(), 2u);
    const std::string report = test::read_text((fs::path(d) / "report/report.json").string());
    EXPECT_NE(report.find("\"tokens\""), std::string::npos) << "per-token scores of the top proponents";
    if (first.empty())
      first = report;
    else
      EXPECT_EQ(report, first) << "the same demo twice must give the same report bytes";
  }
}

}  // namespace
}  // namespace attrace
