// The live recorder (docs/recorder.md): its rows equal the featurizer's bit for bit on the same
// factors; a LibTorch training loop recorded through engine::Recorder and finalized gives the
// features `attrace featurize` computes from the saved checkpoints (to float32 rounding: the
// training forward runs torch's GEMM, the CLI its own fixed-order product); the finalized store
// scores; a writer killed with SIGKILL leaves a recording consistent up to its last segment,
// which a new writer resumes.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/feature_store.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/featurize.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/model_builder.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <thread>

namespace fs = std::filesystem;
using namespace attrace;
using namespace attrace::engine;

namespace {

constexpr int64_t kIn = 12, kHidden = 24, kClasses = 5;

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("attrace-recorder-test-" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A small classification set with two tranches (a training set) or none (queries).
connectors::Dataset make_dataset(int64_t n, uint64_t seed, bool train) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  connectors::Dataset ds;
  ds.input_shape = {n, kIn};
  ds.target_shape = {n};
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < kIn; ++d) ds.inputs.push_back(u(rng));
    ds.class_targets.push_back(static_cast<int64_t>(rng() % kClasses));
    ds.ids.push_back((train ? "t" : "q") + std::to_string(i));
    if (train) ds.tranche.push_back(i % 2);
  }
  if (train) {
    ds.tranches.push_back({"a", "0x" + std::string(40, 'a'), "A", "CC0-1.0"});
    ds.tranches.push_back({"b", "0x" + std::string(40, 'b'), "B", "CC0-1.0"});
  }
  return ds;
}

std::string config_text(const fs::path& dir, int64_t k, uint64_t seed) {
  return "[run]\ncheckpoints = \"run.toml\"\n[data]\ntrain = \"" + (dir / "train.h5").string() + "\"\nquery = \"" +
         (dir / "query.h5").string() + "\"\n[projection]\nkind = \"kronecker\"\nk = " + std::to_string(k) +
         "\nseed = " + std::to_string(seed) + "\n";
}

RecorderSettings settings(int64_t k, uint64_t seed) {
  RecorderSettings s;
  s.k = k;
  s.seed = seed;
  return s;
}

// The recorder's rows from the CLI's own layer factors equal the featurizer's rows bit for bit,
// at a checkpoint index > 0 (streams) with both layers projected (k = 64 < d_in d_out).
TEST(Recorder, RowsEqualFeaturizerBitForBit) {
  const fs::path dir = fresh_dir("rows");
  const auto ds = make_dataset(37, 1, true);
  connectors::write_dataset((dir / "train.h5").string(), ds);
  connectors::write_dataset((dir / "query.h5").string(), make_dataset(5, 2, false));
  save_mlp_torchscript((dir / "a.pt").string(), {kIn, kHidden, kClasses}, 11);
  save_mlp_torchscript((dir / "b.pt").string(), {kIn, kHidden, kClasses}, 12);
  connectors::write_file_atomic((dir / "run.toml").string(),
                                "[[checkpoint]]\nfile = \"a.pt\"\nstep = 3\nlr = 0.5\n"
                                "[[checkpoint]]\nfile = \"b.pt\"\nstep = 9\nlr = 0.3\n");
  connectors::write_file_atomic((dir / "attrace.toml").string(), config_text(dir, 64, 7));
  const Config config = load_config((dir / "attrace.toml").string());
  const auto run = connectors::read_run_file(config.run_file);
  const auto train = connectors::read_dataset(config.train_file, true);
  auto backend = kernels::make_cpu_backend(1);
  for (size_t c = 0; c < 2; ++c) {
    Featurizer fz(config, run, c, {&train}, *backend);
    std::vector<float> want(static_cast<size_t>(train.size() * fz.width()), NAN);
    fz.features(train, 0, train.size(), want.data());

    GradientSettings gs;
    CheckpointModel model(run.checkpoints[c].path, gs, *backend);
    model.prepare(train);
    std::vector<RecordedLayer> layers;
    for (const auto& l : model.kronecker_layers()) layers.push_back({l.name, l.d_in, l.d_out, l.bias});
    const auto plan = plan_recorded_projection(layers, 64, c);
    ASSERT_EQ(plan.size(), fz.use().kronecker.size());
    for (size_t l = 0; l < plan.size(); ++l) {
      EXPECT_EQ(plan[l].k_in, fz.use().kronecker[l].k_in);
      EXPECT_EQ(plan[l].k_out, fz.use().kronecker[l].k_out);
      EXPECT_EQ(plan[l].stream_in, fz.use().kronecker[l].stream_in);
      EXPECT_LT(plan[l].k_in * plan[l].k_out, plan[l].d_in * plan[l].d_out);  // projected, not identity
    }
    ASSERT_EQ(recorded_width(plan), fz.width());
    std::vector<LayerFactors> factors;
    model.layer_factors(train, 0, train.size(), factors);
    std::vector<LayerBatch> lb;
    for (const auto& f : factors) lb.push_back({f.x.data(), f.delta.data(), f.positions});
    std::vector<float> got(want.size(), NAN);  // poisoned: every entry must be written
    recorded_rows(*backend, plan, settings(64, 7), run.checkpoints[c].lr, train.size(), lb, got.data());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << "checkpoint " << c;
    double norm = 0;
    for (const float v : got) norm += std::fabs(v);
    EXPECT_GT(norm, 0.0);
  }
}

// Trains the MLP a few SGD steps through engine::Recorder (every 2nd step), finalizes, and
// compares the store with the featurizer on the saved checkpoints.
TEST(Recorder, LibTorchLoopMatchesCliAndScores) {
  const fs::path dir = fresh_dir("loop");
  const int64_t n = 48, batch = 8;
  const auto train = make_dataset(n, 3, true);
  connectors::write_dataset((dir / "train.h5").string(), train);
  connectors::write_dataset((dir / "query.h5").string(), make_dataset(6, 4, false));
  save_mlp_torchscript((dir / "init.pt").string(), {kIn, kHidden, kClasses}, 5);
  torch::jit::Module model = torch::jit::load((dir / "init.pt").string());
  std::vector<torch::Tensor> params;
  for (const auto& p : model.parameters()) {
    torch::Tensor t = p;
    t.requires_grad_(true);
    params.push_back(t);
  }
  const auto x_all = torch::from_blob(const_cast<float*>(train.inputs.data()), {n, kIn}, torch::kFloat).clone();
  const auto y_all = torch::from_blob(const_cast<int64_t*>(train.class_targets.data()), {n}, torch::kLong).clone();
  RecorderSettings rs = settings(64, 7);
  rs.every = 2;
  rs.flush_steps = 2;
  std::vector<std::vector<int64_t>> batches;
  {
    Recorder rec(model, (dir / "rec").string(), rs);
    std::mt19937_64 rng(9);
    std::vector<int64_t> perm(static_cast<size_t>(n));
    for (int64_t s = 0; s < 6; ++s) {
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::vector<int64_t> ids(perm.begin(), perm.begin() + batch);
      const double lr = 0.5 - 0.05 * static_cast<double>(s);
      const auto idx = torch::tensor(ids, torch::kLong);
      const auto out = rec.forward(x_all.index_select(0, idx));
      const auto loss = torch::nn::functional::cross_entropy(out, y_all.index_select(0, idx));
      const auto grads = torch::autograd::grad({loss}, params);
      EXPECT_EQ(rec.step(ids, lr), s % 2 == 0);
      torch::NoGradGuard ng;
      for (size_t k = 0; k < params.size(); ++k) params[k].sub_(grads[k], lr);
      if (s % 2 == 0) batches.push_back(ids);
    }
  }
  FinalizeOptions fo;
  fo.recording = (dir / "rec").string();
  fo.train_file = (dir / "train.h5").string();
  fo.query_file = (dir / "query.h5").string();
  fo.store = (dir / "store.h5").string();
  const FinalizeSummary fs_ = finalize_recording(fo);
  ASSERT_EQ(fs_.steps, 3);
  const Config config = load_config(fs_.config_file);
  const auto run = connectors::read_run_file(config.run_file);
  ASSERT_EQ(run.checkpoints.size(), 3u);
  EXPECT_EQ(run.checkpoints[1].step, 2);
  EXPECT_EQ(run.checkpoints[1].lr, 0.5 - 0.05 * 2.0);  // the lr round-trips exactly through run.toml
  const auto ds = connectors::read_dataset(config.train_file, true);
  const connectors::FeatureStoreReader store(fo.store);
  auto backend = kernels::make_cpu_backend(1);
  double worst = 0;
  for (size_t c = 0; c < 3; ++c) {
    Featurizer fz(config, run, c, {&ds}, *backend);
    const int64_t w = fz.width();
    std::vector<float> cli(static_cast<size_t>(n * w)), rec(static_cast<size_t>(n * w));
    fz.features(ds, 0, n, cli.data());
    store.read(c, 0, n, rec.data());
    std::vector<bool> in_batch(static_cast<size_t>(n), false);
    for (const auto id : batches[c]) in_batch[static_cast<size_t>(id)] = true;
    for (int64_t i = 0; i < n; ++i) {
      double diff = 0, norm = 0;
      for (int64_t j = 0; j < w; ++j) {
        const double a = rec[static_cast<size_t>(i * w + j)], b = cli[static_cast<size_t>(i * w + j)];
        if (!in_batch[static_cast<size_t>(i)]) {
          ASSERT_EQ(a, 0.0) << "row " << i << " (not in the batch of step " << c << ") must be zero";
          continue;
        }
        diff = std::max(diff, std::fabs(a - b));
        norm = std::max(norm, std::fabs(b));
      }
      if (in_batch[static_cast<size_t>(i)]) {
        ASSERT_GT(norm, 0.0);
        worst = std::max(worst, diff / norm);
      }
    }
  }
  std::printf("recorded vs CLI features, largest rowwise max|diff| / max|cli|: %.3g\n", worst);
  // torch's GEMM (training) and the CLI's fixed-order product (featurize) round differently:
  // a few float32 ulps through two layers, far below this bound.
  EXPECT_LT(worst, 1e-5);

  RunOptions ro;
  ro.out_dir = (dir / "out").string();
  ro.quiet = true;
  const RunSummary summary = run_score(config, fo.store, "", ro);
  EXPECT_EQ(summary.n_train, n);
  EXPECT_TRUE(fs::exists(dir / "out" / "report.json"));
}

// Synthetic factors of step s (a pure function of s), for the crash test.
struct Synthetic {
  std::vector<float> x, d, p;
  std::vector<int64_t> ids;
  explicit Synthetic(int64_t s) {
    std::mt19937_64 rng(static_cast<uint64_t>(1000 + s));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int i = 0; i < 4 * 6; ++i) x.push_back(i % 6 == 5 ? 1.0f : u(rng));
    for (int i = 0; i < 4 * 7; ++i) d.push_back(u(rng));
    for (int i = 0; i < 3; ++i) p.push_back(u(rng));
    ids = {s % 10, 10 + s % 7, 20 + s % 5, 30 + s % 3};
  }
};

const std::vector<RecordedLayer> kLayers = {{"fc", 6, 7, true}};
const std::vector<RecordedParameter> kParams = {{"p", {3}}};

void record_synthetic(RecordingWriter& w, int64_t s) {
  const Synthetic f(s);
  w.record(s, 0.01 * static_cast<double>(s + 1), f.ids.data(), 4, {{f.x.data(), f.d.data(), 1}}, {f.p.data()});
}

RecorderSettings kill_settings() {
  RecorderSettings rs = settings(16, 3);
  rs.flush_steps = 3;
  return rs;
}

// The crash test's writer: this binary run again with ATTRACE_RECORDER_CHILD=DIR (a fresh
// process: GNU OpenMP does not survive a fork after the parent used it) records synthetic steps
// into DIR/rec until it is killed. Runs before main() and never returns.
[[maybe_unused]] const bool kChildDone = [] {
  const char* dir = std::getenv("ATTRACE_RECORDER_CHILD");
  if (dir == nullptr) return false;
  try {
    RecordingWriter w((fs::path(dir) / "rec").string(), kill_settings(), kLayers, kParams, (fs::path(dir) / "template.pt").string());
    for (int64_t s = w.last_step() + 1;; ++s) record_synthetic(w, s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "recorder child: %s\n", e.what());
  }
  ::_exit(3);
}();

// A writer killed with SIGKILL at a random moment leaves only whole segments; every durable
// step reads back as recorded; a new writer resumes after the last durable step.
TEST(Recorder, SigkillLeavesConsistentRecordingAndResumes) {
  const fs::path dir = fresh_dir("kill");
  const fs::path rec = dir / "rec";
  connectors::write_file_atomic((dir / "template.pt").string(), "not a model: the writer only copies it");
  const RecorderSettings rs = kill_settings();
  std::mt19937_64 rng(42);
  for (int round = 0; round < 3; ++round) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::setenv("ATTRACE_RECORDER_CHILD", dir.c_str(), 1);
      ::execl("/proc/self/exe", "recorder_test", static_cast<char*>(nullptr));
      ::_exit(4);
    }
    // Kill once at least two more segments exist, after a random delay.
    const size_t want = static_cast<size_t>(2 * (round + 1));
    for (int k = 0; k < 6000 && !fs::exists(rec / ("segment_00000" + std::to_string(want) + ".bin")); ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer ended by itself (status " << status << ")";

    const RecordingReader r(rec.string());
    ASSERT_GT(r.steps(), 0u);
    EXPECT_EQ(r.steps() % 3, 0u) << "a segment holds 3 steps: only whole segments are durable";
    // Resuming: the writer continues after the last durable step; replayed steps are skipped.
    RecordingWriter w(rec.string(), rs, kLayers, kParams, (dir / "template.pt").string());
    EXPECT_EQ(w.durable(), static_cast<int64_t>(r.steps()));
    EXPECT_EQ(w.last_step(), static_cast<int64_t>(r.steps()) - 1);
    EXPECT_FALSE(w.wants(w.last_step()));
    EXPECT_THROW(record_synthetic(w, w.last_step()), InputError);
  }
  // Every durable step reads back as recorded.
  {
    const RecordingReader r(rec.string());
    auto backend = kernels::make_cpu_backend(1);
    for (size_t c = 0; c < r.steps(); ++c) {
      const RecordedStep st = r.step(c);
      ASSERT_EQ(st.step, static_cast<int64_t>(c));
      const Synthetic f(st.step);
      EXPECT_EQ(st.ids, f.ids);
      EXPECT_EQ(st.parameters, f.p);
      EXPECT_EQ(st.lr, 0.01 * static_cast<double>(st.step + 1));
      std::vector<float> want_rows(st.rows.size());
      recorded_rows(*backend, plan_recorded_projection(kLayers, 16, c), rs, st.lr, 4, {{f.x.data(), f.d.data(), 1}},
                    want_rows.data());
      ASSERT_EQ(st.rows, want_rows) << "step " << c;
    }
  }
  // Other settings on the same directory are refused, naming the field.
  RecorderSettings other = rs;
  other.k = 32;
  try {
    RecordingWriter w(rec.string(), other, kLayers, kParams, (dir / "template.pt").string());
    FAIL() << "a recording with another k was resumed";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("projection"), std::string::npos) << e.what();
  }
  // A damaged (truncated) segment is refused, naming it.
  const auto seg = rec / "segment_000000.bin";
  fs::resize_file(seg, fs::file_size(seg) - 5);
  try {
    RecordingReader r(rec.string());
    FAIL() << "a truncated segment was read";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("segment_000000.bin"), std::string::npos) << e.what();
  }
}

// Bad calls name what is wrong.
TEST(Recorder, RefusesRepeatedIdsAndBadLr) {
  const fs::path dir = fresh_dir("bad");
  connectors::write_file_atomic((dir / "template.pt").string(), "x");
  RecordingWriter w((dir / "rec").string(), settings(16, 3), kLayers, kParams, (dir / "template.pt").string());
  Synthetic f(0);
  f.ids[2] = f.ids[0];
  EXPECT_THROW(w.record(0, 0.1, f.ids.data(), 4, {{f.x.data(), f.d.data(), 1}}, {f.p.data()}), InputError);
  const Synthetic g(0);
  EXPECT_THROW(w.record(0, NAN, g.ids.data(), 4, {{g.x.data(), g.d.data(), 1}}, {g.p.data()}), InputError);
  EXPECT_THROW(w.record(0, 0.1, g.ids.data(), 4, {}, {g.p.data()}), InputError);
}

}  // namespace
