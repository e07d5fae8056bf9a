// attrace eval's measurements (engine/eval.hpp): AUC, recall, Spearman and bootstrap on
// hand-checkable cases; the LDS computation against an independent numpy/scipy implementation
// (tests/eval_lds_check.py run by Debian's /usr/bin/python3); label flipping; and a small LDS run
// that is killed part-way (records deleted) and resumed to the same bits.
#include <attrace/engine/eval.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace {

namespace ev = attrace::engine::eval;
namespace fs = std::filesystem;

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("eval_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(Eval, AucByHand) {
  // Pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4: 3 of 4.
  EXPECT_DOUBLE_EQ(ev::auc({0.1, 0.4, 0.35, 0.8}, {0, 0, 1, 1}), 0.75);
  // A tie between a positive and a negative counts one half: (1 + 0.5) / 2.
  EXPECT_DOUBLE_EQ(ev::auc({0.2, 0.5, 0.5, 0.9}, {0, 0, 1, 1}), (1.0 + 0.5 + 1.0 + 1.0) / 4.0);
  EXPECT_DOUBLE_EQ(ev::auc({3, 2, 1}, {1, 0, 0}), 1.0);
  EXPECT_THROW(ev::auc({1, 2}, {0, 0}), attrace::InputError);
}

TEST(Eval, RecallAtTopFraction) {
  // 10 rows, positives at 0, 3, 9; scores descending by row except row 9 highest.
  std::vector<double> s = {9, 8, 7, 6, 5, 4, 3, 2, 1, 10};
  std::vector<uint8_t> p = {1, 0, 0, 1, 0, 0, 0, 0, 0, 1};
  EXPECT_DOUBLE_EQ(ev::recall_at(s, p, 0.2), 2.0 / 3.0);  // rows 9, 0
  EXPECT_DOUBLE_EQ(ev::recall_at(s, p, 0.4), 2.0 / 3.0);  // rows 9, 0, 1, 2
  EXPECT_DOUBLE_EQ(ev::recall_at(s, p, 0.5), 1.0);        // ... and row 3
}

TEST(Eval, SpearmanByHand) {
  // Ranks a = 1,2,3,4,5; b = 2,1,4,3,5: d^2 = 4 -> rho = 1 - 6*4/(5*24) = 0.8.
  EXPECT_NEAR(ev::spearman({1, 2, 3, 4, 5}, {20, 10, 40, 30, 50}), 0.8, 1e-15);
  EXPECT_NEAR(ev::spearman({1, 2, 3}, {3, 2, 1}), -1.0, 1e-15);
  EXPECT_TRUE(std::isnan(ev::spearman({1, 2, 3}, {7, 7, 7})));
}

TEST(Eval, BootstrapIsSeededAndBracketsTheMean) {
  std::vector<double> v;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> d(0.3, 0.1);
  for (int i = 0; i < 200; ++i) v.push_back(d(rng));
  v.push_back(std::nan(""));  // undefined queries are left out
  const auto a = ev::bootstrap_mean(v, 1000, 5), b = ev::bootstrap_mean(v, 1000, 5);
  EXPECT_EQ(a.n, 200);
  EXPECT_EQ(a.lo, b.lo);
  EXPECT_EQ(a.hi, b.hi);
  EXPECT_LT(a.lo, a.mean);
  EXPECT_GT(a.hi, a.mean);
  // About mean +- 1.96 * 0.1 / sqrt(200) = +-0.0139.
  EXPECT_NEAR(a.hi - a.lo, 2 * 1.96 * 0.1 / std::sqrt(200.0), 0.008);
}

TEST(Eval, FlipLabelsChangesExactlyTheChosenRows) {
  attrace::connectors::Dataset ds;
  for (int i = 0; i < 100; ++i) ds.class_targets.push_back(i % 10);
  ds.input_shape = {100, 1};
  ds.inputs.assign(100, 0.f);
  const auto before = ds.class_targets;
  const auto rows = ev::flip_labels(ds, 0.1, 42, 10);
  ASSERT_EQ(rows.size(), 10u);
  int changed = 0;
  for (int i = 0; i < 100; ++i) {
    const bool flipped = std::find(rows.begin(), rows.end(), i) != rows.end();
    EXPECT_EQ(ds.class_targets[i] != before[i], flipped) << i;
    EXPECT_GE(ds.class_targets[i], 0);
    EXPECT_LT(ds.class_targets[i], 10);
    changed += ds.class_targets[i] != before[i];
  }
  EXPECT_EQ(changed, 10);
}

// The LDS computation against scipy on random masks, outputs (with ties and a constant query)
// and scores.
TEST(Eval, LdsMatchesScipy) {
  const int64_t n = 40, q = 7, m = 30;
  std::mt19937_64 rng(9);
  std::normal_distribution<double> d;
  std::vector<double> scores(n * q), outputs(m * q);
  std::vector<uint8_t> masks(m * n);
  for (auto& s : scores) s = d(rng);
  for (auto& x : masks) x = static_cast<uint8_t>(rng() & 1);
  for (int64_t s = 0; s < m; ++s)
    for (int64_t j = 0; j < q; ++j) {
      double v = d(rng);
      if (j == 2) v = std::round(v * 2) / 2;  // ties
      if (j == 5) v = 1.25;                   // constant: undefined
      outputs[s * q + j] = v;
    }
  const auto per = ev::lds_per_query(scores, n, q, masks, outputs, m);
  TempDir dir;
  nlohmann::json in = {{"n_train", n}, {"n_query", q}, {"m", m}, {"scores", scores}, {"masks", masks}, {"outputs", outputs}};
  std::ofstream(dir.path / "in.json") << in.dump();
  const std::string cmd = "/usr/bin/python3 " + std::string(ATTRACE_SOURCE_DIR) + "/tests/eval_lds_check.py " +
                          (dir.path / "in.json").string() + " " + (dir.path / "out.json").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << " (needs python3-numpy and python3-scipy)";
  const auto out = nlohmann::json::parse(read_text(dir.path / "out.json"));
  double sum = 0;
  int defined = 0;
  for (int64_t j = 0; j < q; ++j) {
    if (out["per_query"][j].is_null()) {
      EXPECT_TRUE(std::isnan(per[j])) << j;
      continue;
    }
    EXPECT_NEAR(per[j], out["per_query"][j].get<double>(), 1e-12) << j;
    sum += per[j];
    ++defined;
  }
  EXPECT_EQ(defined, q - 1);
  EXPECT_NEAR(ev::bootstrap_mean(per, 100, 1).mean, out["mean"].get<double>(), 1e-12);
  EXPECT_NEAR(sum / defined, out["mean"].get<double>(), 1e-12);
}

// A tiny classification task: two Gaussian blobs per class in 6 dimensions.
ev::Task tiny_task() {
  ev::Task t;
  std::mt19937_64 rng(5);
  std::normal_distribution<double> d;
  auto fill = [&](attrace::connectors::Dataset& ds, int n, bool tranche) {
    for (int i = 0; i < n; ++i) {
      const int y = i % 3;
      for (int k = 0; k < 6; ++k) ds.inputs.push_back(static_cast<float>((k % 3 == y ? 1.5 : 0.0) + 0.7 * d(rng)));
      ds.class_targets.push_back(y);
      ds.ids.push_back("e" + std::to_string(i));
      if (tranche) ds.tranche.push_back(0);
    }
    if (tranche) ds.tranches.push_back({"all", "0x0000000000000000000000000000000000000000", "all", ""});
    ds.input_shape = {n, 6};
    ds.target_shape = {n};
  };
  fill(t.train, 60, true);
  fill(t.query, 9, false);
  t.source = "tiny synthetic";
  return t;
}

ev::EvalOptions tiny_options(const fs::path& out) {
  ev::EvalOptions o;
  o.out_dir = out.string();
  o.recipe.hidden = {8};
  o.recipe.phases = {{3, 0.1}, {3, 0.05}};
  o.recipe.batch_size = 16;
  o.projection_k = 0;
  o.ensemble = 2;
  o.threads = 2;
  o.quiet = true;
  return o;
}

TEST(Eval, LdsResumesToTheSameBits) {
  TempDir dir;
  const auto task = tiny_task();
  auto o = tiny_options(dir.path);
  ev::LdsOptions lo;
  lo.subsets = 6;
  lo.bootstrap = 50;
  const auto first = ev::run_lds(task, o, lo);
  EXPECT_EQ(first["resumed_subsets"], 0);
  // A killed run leaves some records: remove two, run again with one worker.
  fs::remove(dir.path / "work" / "lds" / "subset-000001.json");
  fs::remove(dir.path / "work" / "lds" / "subset-000004.json");
  o.threads = 1;
  const auto second = ev::run_lds(task, o, lo);
  EXPECT_EQ(second["resumed_subsets"], 4);
  ASSERT_EQ(first["methods"].size(), second["methods"].size());
  EXPECT_EQ(first["methods"].size(), 5u);  // tracin, grad_dot, grad_cos, trak, trak_ens2
  for (size_t k = 0; k < first["methods"].size(); ++k)
    EXPECT_EQ(first["methods"][k]["lds"].dump(), second["methods"][k]["lds"].dump()) << first["methods"][k]["method"];
  // A record made with another recipe is refused, naming the file.
  o.recipe.batch_size = 8;
  try {
    ev::run_lds(task, o, lo);
    ADD_FAILURE() << "a record from another recipe was accepted";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("subset-000000.json"), std::string::npos) << e.what();
  }
  // eval.json and eval.html are written.
  ev::write_eval_outputs(dir.path.string(), {{"lds", first}, {"data", "tiny"}});
  EXPECT_NE(read_text(dir.path / "eval.html").find("<svg"), std::string::npos);
}

TEST(Eval, NoisyReportsEveryMethod) {
  TempDir dir;
  const auto task = tiny_task();
  const auto r = ev::run_noisy(task, tiny_options(dir.path), {0.2, 3});
  EXPECT_EQ(r["flipped"], 12);
  for (const auto& m : r["methods"]) {
    if (m["method"] == "grad_cos") {
      EXPECT_FALSE(m["applicable"].get<bool>());
      continue;
    }
    const double a = m["auc"].get<double>();
    EXPECT_GE(a, 0.0);
    EXPECT_LE(a, 1.0);
  }
}

}  // namespace
