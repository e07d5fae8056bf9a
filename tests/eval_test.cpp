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

std::string quote(const std::string& s);

// Ground truth brought in HDF5 (written here with h5py from a retrained run's records) gives the
// same LDS as the retrained run; malformed files are refused naming the dataset.
TEST(Eval, GroundTruthFromHdf5GivesTheSameLds) {
  TempDir dir;
  const auto task = tiny_task();
  auto o = tiny_options(dir.path / "run");
  ev::LdsOptions lo;
  lo.subsets = 5;
  lo.bootstrap = 50;
  const auto retrained = ev::run_lds(task, o, lo);
  // Each subset record holds its mask and outputs: converted to the documented HDF5 layout.
  nlohmann::json gt = {{"outputs", nlohmann::json::array()}, {"masks", nlohmann::json::array()}, {"train_ids", task.train.ids}};
  for (int s = 0; s < 5; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "subset-%06d.json", s);
    const auto rec = nlohmann::json::parse(read_text(dir.path / "run" / "work" / "lds" / name));
    gt["outputs"].push_back(rec["outputs"]);
    gt["masks"].push_back(rec["mask"]);
  }
  std::ofstream(dir.path / "gt.json") << gt.dump();
  const std::string py = "import h5py, json, numpy as np\n"
                         "d = json.load(open('" + (dir.path / "gt.json").string() + "'))\n"
                         "with h5py.File('" + (dir.path / "gt.h5").string() + "', 'w') as f:\n"
                         "    f['masks'] = np.asarray(d['masks'], dtype=np.uint8)\n"
                         "    f['outputs'] = np.asarray(d['outputs'], dtype=np.float64)\n"
                         "    f['train_ids'] = np.asarray(d['train_ids'], dtype=h5py.string_dtype())\n"
                         "with h5py.File('" + (dir.path / "bad.h5").string() + "', 'w') as f:\n"
                         "    f['masks'] = np.full((5, 60), 2, dtype=np.uint8)\n"
                         "    f['outputs'] = np.asarray(d['outputs'], dtype=np.float64)\n";
  std::ofstream(dir.path / "w.py") << py;
  ASSERT_EQ(std::system(("/usr/bin/python3 " + quote((dir.path / "w.py").string())).c_str()), 0);
  lo.ground_truth = (dir.path / "gt.h5").string();
  auto o2 = tiny_options(dir.path / "gt-run");
  const auto read = ev::run_lds(task, o2, lo);
  ASSERT_EQ(read["methods"].size(), retrained["methods"].size());
  for (size_t k = 0; k < read["methods"].size(); ++k)
    EXPECT_EQ(read["methods"][k]["lds"].dump(), retrained["methods"][k]["lds"].dump());
  lo.ground_truth = (dir.path / "bad.h5").string();
  try {
    ev::run_lds(task, o2, lo);
    ADD_FAILURE() << "a mask of 2 was accepted";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/masks holds 2"), std::string::npos) << e.what();
  }
}

std::string quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// The real binary, killed with SIGKILL while it records subsets, then run again: it resumes and
// ends with the same eval.json LDS block as an uninterrupted run.
TEST(Eval, CliLdsKilledAndResumedGivesTheSameResult) {
  TempDir dir;
  const std::string common = std::string(ATTRACE_BIN_PATH) +
                             " -q eval lds --subsets 40 --ensemble 1 --projection-k 64 --hidden 8 --phases 2:0.05,2:0.02"
                             " --bootstrap 100 --threads 2 --out ";
  const fs::path a = dir.path / "a", b = dir.path / "b";
  ASSERT_EQ(std::system((common + quote(a.string()) + " > /dev/null").c_str()), 0);
  // Start, wait for a few records, kill.
  const std::string start = "( " + common + quote(b.string()) + " > /dev/null 2>&1 & echo $! > " +
                            quote((dir.path / "pid").string()) + " )";
  ASSERT_EQ(std::system(start.c_str()), 0);
  const fs::path records = b / "work" / "lds";
  int seen = 0;
  for (int i = 0; i < 600 && seen < 5; ++i) {
    std::system("sleep 0.1");
    seen = 0;
    if (fs::exists(records))
      for (const auto& e : fs::directory_iterator(records)) seen += e.path().extension() == ".json";
  }
  const std::string pid = read_text(dir.path / "pid");
  std::system(("kill -9 " + pid + " 2>/dev/null; sleep 0.5").c_str());
  ASSERT_GE(seen, 5) << "no subset records appeared";
  ASSERT_FALSE(fs::exists(b / "eval.json")) << "the run finished before it was killed: nothing resumed";
  ASSERT_EQ(std::system((common + quote(b.string()) + " > /dev/null").c_str()), 0);
  const auto ja = nlohmann::json::parse(read_text(a / "eval.json")), jb = nlohmann::json::parse(read_text(b / "eval.json"));
  EXPECT_GE(jb["lds"]["resumed_subsets"].get<int>(), 5);
  EXPECT_EQ(ja["lds"]["methods"].dump(), [&] {
    auto m = jb["lds"]["methods"];
    for (size_t k = 0; k < m.size(); ++k) m[k]["seconds"] = ja["lds"]["methods"][k]["seconds"];  // wall time differs
    return m.dump();
  }());
}

// eval.html renders in headless chromium: the charts are drawn, no console message, a screenshot.
TEST(Eval, HtmlRendersInChromium) {
  if (!fs::exists("/usr/bin/chromium")) GTEST_SKIP() << "/usr/bin/chromium is not installed (scripts/setup.sh installs it)";
  TempDir dir;
  nlohmann::json m = nlohmann::json::array();
  for (const char* name : {"tracin", "trak"})
    m.push_back({{"method", name}, {"description", "d"}, {"seconds", 1.5}, {"lds", {{"mean", 0.3}, {"ci95", {0.25, 0.35}}, {"n", 9}}}});
  nlohmann::json noisy = nlohmann::json::array();
  noisy.push_back({{"method", "tracin"}, {"applicable", true}, {"auc", 0.97}, {"found_top5", 0.4}, {"found_top10", 0.8},
                   {"found_top20", 1.0}, {"seconds", 0.5}});
  noisy.push_back({{"method", "grad_cos"}, {"applicable", false}, {"seconds", 0.5}});
  const nlohmann::json doc = {
      {"data", "<script>alert(1)</script> digits"},
      {"lds", {{"methods", m}, {"subsets", 10}, {"alpha", 0.5}, {"n_train", 60}, {"n_query", 9}, {"output", "negative loss"},
               {"ground_truth", "retrained by attrace"}, {"bootstrap", 100}}},
      {"noisy", {{"methods", noisy}, {"flipped", 6}, {"n_train", 60}, {"fraction", 0.1}}}};
  ev::write_eval_outputs(dir.path.string(), doc);
  const std::string html = read_text(dir.path / "eval.html");
  EXPECT_EQ(html.find("<script>alert"), std::string::npos) << "user text must be escaped";
  const fs::path png = dir.path / "shot.png", dom = dir.path / "dom.html", err = dir.path / "err.txt";
  const std::string cmd = "timeout 120 /usr/bin/chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=" +
                          quote((dir.path / "profile").string()) + " --enable-logging=stderr --v=0 --window-size=1100,1400" +
                          " --screenshot=" + quote(png.string()) + " --dump-dom " +
                          quote("file://" + (dir.path / "eval.html").string()) + " > " + quote(dom.string()) + " 2> " +
                          quote(err.string());
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_text(err);
  const std::string d = read_text(dom);
  EXPECT_EQ(std::count(d.begin(), d.end(), '\0'), 0);
  size_t svgs = 0;
  for (size_t at = d.find("<svg"); at != std::string::npos; at = d.find("<svg", at + 1)) ++svgs;
  EXPECT_EQ(svgs, 4u) << "LDS, LDS time, AUC and top-10% charts";
  EXPECT_NE(d.find("trak"), std::string::npos);
  EXPECT_EQ(read_text(err).find(":CONSOLE"), std::string::npos) << read_text(err);
  EXPECT_GT(fs::file_size(png), 5000u);
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
