// The live recorder (docs/recorder.md): its rows equal the featurizer's bit for bit on the same
// factors; a LibTorch training loop recorded through engine::Recorder and finalized gives the
// features `attrace featurize` computes from the saved checkpoints (to float32 rounding: the
// training forward runs torch's GEMM, the CLI its own fixed-order product); the finalized store
// scores; a writer killed with SIGKILL leaves a recording consistent up to its last segment,
// which a new writer resumes.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/feature_store.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/featurize.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/model_builder.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/error.hpp>

#include "input_error_checks.hpp"

#include <gtest/gtest.h>
#include <torch/nn/functional.h>
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
#include <tuple>

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

// A TorchScript Sequential CNN on 1x8x8 images as `torch.jit.script` saves one (Conv2d children
// carry stride, padding, dilation, groups and padding_mode): Conv2d(1, 4, 3, padding 1), ReLU,
// Conv2d(4, 6, (3, 2), stride (1, 2), padding (1, 0), no bias), ReLU, Flatten, Linear(192, 5).
void save_cnn_torchscript(const std::string& path, uint64_t seed) {
  torch::manual_seed(seed);
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module seq(c10::QualifiedName("__torch__.attrace.test.Sequential"), cu, true);
  const auto conv = [&](const std::string& name, int64_t cin, int64_t cout, int64_t kh, int64_t kw, std::vector<int64_t> stride,
                        std::vector<int64_t> padding, bool bias) {
    torch::jit::Module c(c10::QualifiedName("__torch__.attrace.test." + name + ".Conv2d"), cu, true);
    const double bound = 1.0 / std::sqrt(static_cast<double>(cin * kh * kw));
    c.register_parameter("weight", torch::empty({cout, cin, kh, kw}).uniform_(-bound, bound), false);
    if (bias) c.register_parameter("bias", torch::empty({cout}).uniform_(-bound, bound), false);
    const auto ints = c10::ListType::ofInts();
    c.register_attribute("stride", ints, c10::List<int64_t>(stride));
    c.register_attribute("padding", ints, c10::List<int64_t>(padding));
    c.register_attribute("dilation", ints, c10::List<int64_t>({1, 1}));
    c.register_attribute("groups", c10::IntType::get(), int64_t{1});
    c.register_attribute("padding_mode", c10::StringType::get(), std::string("zeros"));
    c.define(std::string("def forward(self, x):\n    return torch.conv2d(x, self.weight, ") + (bias ? "self.bias" : "None") +
             ", self.stride, self.padding, self.dilation, self.groups)\n");
    seq.register_module(name, c);
  };
  const auto fn = [&](const std::string& name, const std::string& expr) {
    torch::jit::Module m(c10::QualifiedName("__torch__.attrace.test." + name + ".Function"), cu, true);
    m.define("def forward(self, x):\n    return " + expr + "\n");
    seq.register_module(name, m);
  };
  conv("c1", 1, 4, 3, 3, {1, 1}, {1, 1}, true);
  fn("r1", "torch.relu(x)");
  conv("c2", 4, 6, 3, 2, {1, 2}, {1, 0}, false);
  fn("r2", "torch.relu(x)");
  fn("flat", "torch.flatten(x, 1)");
  torch::jit::Module lin(c10::QualifiedName("__torch__.attrace.test.Linear"), cu, true);
  lin.register_parameter("weight", torch::empty({kClasses, 192}).uniform_(-0.07, 0.07), false);
  lin.register_parameter("bias", torch::empty({kClasses}).uniform_(-0.07, 0.07), false);
  lin.define("def forward(self, x):\n    return torch.addmm(self.bias, x, self.weight.t())\n");
  seq.register_module("fc", lin);
  seq.define("def forward(self, x):\n    return self.fc.forward(self.flat.forward(self.r2.forward(self.c2.forward(self.r1.forward(self.c1.forward(x))))))\n");
  seq.save(path);
}

// Images for the CNN: n x 1 x 8 x 8 values in [0, 1].
connectors::Dataset make_images(int64_t n, uint64_t seed, bool train) {
  connectors::Dataset ds = make_dataset(n, seed, train);
  std::mt19937_64 rng(seed + 100);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  ds.inputs.assign(static_cast<size_t>(n * 64), 0.0f);
  for (auto& v : ds.inputs) v = u(rng);
  ds.input_shape = {n, 1, 8, 8};
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

// Finalizing a test folder's recording (rec/) with its train.h5 and query.h5 into store.h5.
FinalizeOptions finalize_options(const fs::path& dir) {
  FinalizeOptions fo;
  fo.recording = (dir / "rec").string();
  fo.train_file = (dir / "train.h5").string();
  fo.query_file = (dir / "query.h5").string();
  fo.store = (dir / "store.h5").string();
  return fo;
}

// A finalized store against `attrace featurize` of its config, checkpoint c = recorded step c
// whose batch was batches[c]: rows outside the batch must be zero (failure otherwise), rows in it
// non-zero. Returns the largest rowwise max|store - cli| / max|cli| over the batches' rows.
double worst_store_vs_cli(const Config& config, const std::string& store_file, const std::vector<std::vector<int64_t>>& batches) {
  const auto run = connectors::read_run_file(config.run_file);
  const auto ds = connectors::read_dataset(config.train_file, true);
  const connectors::FeatureStoreReader store(store_file);
  auto backend = kernels::make_cpu_backend(1);
  const int64_t n = ds.size();
  double worst = 0;
  for (size_t c = 0; c < batches.size(); ++c) {
    Featurizer fz(config, run, c, {&ds}, *backend);
    const int64_t w = fz.width();
    std::vector<float> cli(static_cast<size_t>(n * w)), got(static_cast<size_t>(n * w));
    fz.features(ds, 0, n, cli.data());
    store.read(c, 0, n, got.data());
    std::vector<bool> in_batch(static_cast<size_t>(n), false);
    for (const auto id : batches[c]) in_batch[static_cast<size_t>(id)] = true;
    for (int64_t i = 0; i < n; ++i) {
      double diff = 0, norm = 0;
      for (int64_t j = 0; j < w; ++j) {
        const double g = got[static_cast<size_t>(i * w + j)], e = cli[static_cast<size_t>(i * w + j)];
        if (!in_batch[static_cast<size_t>(i)]) {
          EXPECT_EQ(g, 0.0) << "row " << i << " (not in the batch of step " << c << ") must be zero";
          if (g != 0.0) return INFINITY;
          continue;
        }
        diff = std::max(diff, std::fabs(g - e));
        norm = std::max(norm, std::fabs(e));
      }
      if (in_batch[static_cast<size_t>(i)]) {
        EXPECT_GT(norm, 0.0) << "row " << i << " of step " << c;
        if (!(norm > 0.0)) return INFINITY;
        worst = std::max(worst, diff / norm);
      }
    }
  }
  return worst;
}

// The recorder's rows from the CLI's own layer factors equal the featurizer's rows bit for bit,
// at a checkpoint index > 0 (streams) with projected layers (k = 64 < d_in d_out): for the MLP
// and for the CNN (Conv2d factors: unfolded patches, 64 and 32 positions per example, one conv
// kept exact, one projected).
class RecorderRows : public ::testing::TestWithParam<bool> {};

TEST_P(RecorderRows, EqualFeaturizerBitForBit) {
  const bool cnn = GetParam();
  const fs::path dir = fresh_dir(cnn ? "rows-cnn" : "rows");
  const auto ds = cnn ? make_images(37, 1, true) : make_dataset(37, 1, true);
  connectors::write_dataset((dir / "train.h5").string(), ds);
  connectors::write_dataset((dir / "query.h5").string(), cnn ? make_images(5, 2, false) : make_dataset(5, 2, false));
  for (const auto& [name, seed] : {std::pair<const char*, uint64_t>{"a.pt", 11}, {"b.pt", 12}}) {
    if (cnn)
      save_cnn_torchscript((dir / name).string(), seed);
    else
      save_mlp_torchscript((dir / name).string(), {kIn, kHidden, kClasses}, seed);
  }
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
    int projected = 0;
    for (size_t l = 0; l < plan.size(); ++l) {
      EXPECT_EQ(plan[l].k_in, fz.use().kronecker[l].k_in);
      EXPECT_EQ(plan[l].k_out, fz.use().kronecker[l].k_out);
      EXPECT_EQ(plan[l].stream_in, fz.use().kronecker[l].stream_in);
      projected += plan[l].k_in * plan[l].k_out < plan[l].d_in * plan[l].d_out;
    }
    EXPECT_GE(projected, 2);
    ASSERT_EQ(recorded_width(plan), fz.width());
    std::vector<LayerFactors> factors;
    model.layer_factors(train, 0, train.size(), factors);
    std::vector<LayerBatch> lb;
    for (const auto& f : factors) lb.push_back({f.x.data(), f.delta.data(), f.positions});
    if (cnn) {
      EXPECT_EQ(factors[0].positions, 64);
      EXPECT_EQ(factors[1].positions, 32);
    }
    for (const int threads : {1, 2}) {
      RecorderSettings rs = settings(64, 7);
      rs.threads = threads;
      std::vector<float> got(want.size(), NAN);  // poisoned: every entry must be written
      recorded_rows(layers, rs, c, run.checkpoints[c].lr, train.size(), lb, got.data());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << "checkpoint " << c << ", " << threads << " threads";
      double norm = 0;
      for (const float v : got) norm += std::fabs(v);
      EXPECT_GT(norm, 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, RecorderRows, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return std::string(i.param ? "Cnn" : "Mlp"); });

// A Conv2d capture as training holds it (NCHW input and output gradient, a loss scale) makes the
// same rows as the CLI's unfolded patches (torch's unfold here: the same gather), bit for bit:
// padding, a rectangular kernel, stride (1, 2) and dilation 2, with and without bias.
TEST(Recorder, ConvCaptureUnfoldsLikeTheChainPath) {
  torch::manual_seed(3);
  const int64_t b = 5, cin = 3, h = 9, w = 7, cout = 4;
  for (const bool bias : {true, false}) {
    RecordedLayer l{"conv", cin * 3 * 2 + (bias ? 1 : 0), cout, bias, true};
    l.geometry = {cin, 3, 2, 1, 2, 2, 1, 2, 1};
    const int64_t ho = ConvGeometry::out_size(h, 2, 2, 3, 1), wo = ConvGeometry::out_size(w, 1, 1, 2, 2);
    const auto x = torch::rand({b, cin, h, w});
    const auto g = torch::randn({b, cout, ho, wo});
    const float scale = 3.0f;  // not a power of two: the scaling is rounded, the same way on both sides
    namespace F = torch::nn::functional;
    auto patches = F::unfold(x, F::UnfoldFuncOptions({3, 2}).dilation({2, 1}).padding({2, 1}).stride({1, 2}))
                       .transpose(1, 2)
                       .reshape({b * ho * wo, cin * 6});
    if (bias) patches = torch::cat({patches, torch::ones({b * ho * wo, 1})}, 1);
    patches = patches.contiguous();
    const auto rows_g = (g.reshape({b, cout, ho * wo}).transpose(1, 2).reshape({b * ho * wo, cout}) * scale).contiguous();
    for (const int64_t k : {int64_t{8}, int64_t{4096}}) {  // projected and exact
      const RecorderSettings rs = settings(k, 5);
      const int64_t width = recorded_width(plan_recorded_projection({l}, k, 2));
      std::vector<float> a(static_cast<size_t>(b * width), NAN), c(a.size(), NAN);
      LayerBatch raw{x.data_ptr<float>(), g.data_ptr<float>(), 1, true, scale, h, w};
      recorded_rows({l}, rs, 2, 0.25, b, {raw}, a.data());
      recorded_rows({l}, rs, 2, 0.25, b, {{patches.data_ptr<float>(), rows_g.data_ptr<float>(), ho * wo}}, c.data());
      EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * 4), 0) << "bias " << bias << ", k " << k;
    }
  }
}

// Trains the MLP (or the CNN) a few SGD steps through engine::Recorder (every 2nd step),
// finalizes, and compares the store with the featurizer on the saved checkpoints.
// 0: the MLP, 1: the CNN (both Kronecker, k = 64), 2: the MLP recorded exactly (projection none).
class RecorderLoop : public ::testing::TestWithParam<int> {};

TEST_P(RecorderLoop, MatchesCliAndScores) {
  const bool cnn = GetParam() == 1 || GetParam() == 3, exact = GetParam() == 2, deferred = GetParam() == 3;
  const fs::path dir = fresh_dir(deferred ? "loop-cnn-deferred" : cnn ? "loop-cnn" : exact ? "loop-exact" : "loop");
  const int64_t n = 48, batch = 8;
  const auto train = cnn ? make_images(n, 3, true) : make_dataset(n, 3, true);
  connectors::write_dataset((dir / "train.h5").string(), train);
  connectors::write_dataset((dir / "query.h5").string(), cnn ? make_images(6, 4, false) : make_dataset(6, 4, false));
  if (cnn)
    save_cnn_torchscript((dir / "init.pt").string(), 5);
  else
    save_mlp_torchscript((dir / "init.pt").string(), {kIn, kHidden, kClasses}, 5);
  torch::jit::Module model = torch::jit::load((dir / "init.pt").string());
  std::vector<torch::Tensor> params;
  for (const auto& p : model.parameters()) {
    torch::Tensor t = p;
    t.requires_grad_(true);
    params.push_back(t);
  }
  const auto x_all = torch::from_blob(const_cast<float*>(train.inputs.data()), train.input_shape, torch::kFloat).clone();
  const auto y_all = torch::from_blob(const_cast<int64_t*>(train.class_targets.data()), {n}, torch::kLong).clone();
  RecorderSettings rs = settings(64, 7);
  if (exact) rs.projection = Projection::none;
  rs.defer = deferred ? Deferral::always : Deferral::never;
  rs.every = 2;
  rs.flush_steps = 2;
  rs.queue_steps = 1;  // the smallest queue: step() waits for the writer at every recorded step
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
    rec.close();
    EXPECT_EQ(rec.writer().durable(), 3);
  }
  const FinalizeOptions fo = finalize_options(dir);
  const FinalizeSummary fs_ = finalize_recording(fo);
  ASSERT_EQ(fs_.steps, 3);
  const Config config = load_config(fs_.config_file);
  const auto run = connectors::read_run_file(config.run_file);
  ASSERT_EQ(run.checkpoints.size(), 3u);
  EXPECT_EQ(run.checkpoints[1].step, 2);
  EXPECT_EQ(run.checkpoints[1].lr, 0.5 - 0.05 * 2.0);  // the lr round-trips exactly through run.toml
  const double worst = worst_store_vs_cli(config, fo.store, batches);
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

INSTANTIATE_TEST_SUITE_P(Models, RecorderLoop, ::testing::Values(0, 1, 2, 3), [](const ::testing::TestParamInfo<int>& i) {
  return std::string(i.param == 0 ? "Mlp" : i.param == 1 ? "Cnn" : i.param == 2 ? "MlpExact" : "CnnDeferred");
});

// Windows of W = 3 recorded steps share a checkpoint: the parameters are saved at each window's
// first step only (those of the model then), every step of a window uses the window's matrices
// (live and deferred rows agree bit for bit), and finalize writes one checkpoint per window with
// lr = the sum of its steps' lr, whose store rows are sum_t (sqrt(lr_t) / sqrt(lr_sum)) f_t(i)
// (recomputed here in float64, bit for bit). The first step of a window was taken at the
// checkpoint's parameters, so its rows times sqrt(lr_sum) / sqrt(lr_t) are `attrace featurize`'s
// features of that checkpoint (to float32 rounding): the same matrices and scaling.
TEST(Recorder, WindowsShareCheckpoints) {
  const fs::path dir = fresh_dir("windows");
  const int64_t n = 30, batch = 6, steps = 7, W = 3;
  const auto train = make_dataset(n, 41, true);
  connectors::write_dataset((dir / "train.h5").string(), train);
  connectors::write_dataset((dir / "query.h5").string(), make_dataset(4, 42, false));
  save_mlp_torchscript((dir / "init.pt").string(), {kIn, kHidden, kClasses}, 43);
  const auto x_all = torch::from_blob(const_cast<float*>(train.inputs.data()), train.input_shape, torch::kFloat).clone();
  const auto y_all = torch::from_blob(const_cast<int64_t*>(train.class_targets.data()), {n}, torch::kLong).clone();
  const auto lr_of = [](int64_t s) { return 0.3 - 0.02 * static_cast<double>(s); };
  std::vector<std::vector<float>> rows[2];
  std::vector<std::vector<float>> params_at;  // the model's parameters before step s's update
  for (const int mode : {0, 1}) {
    torch::jit::Module model = torch::jit::load((dir / "init.pt").string());
    std::vector<torch::Tensor> params;
    for (const auto& p : model.parameters()) {
      torch::Tensor t = p;
      t.requires_grad_(true);
      params.push_back(t);
    }
    RecorderSettings rs = settings(64, 7);
    rs.window = W;
    rs.flush_steps = 2;
    rs.defer = mode == 0 ? Deferral::never : Deferral::always;
    const fs::path rec_dir = dir / (mode == 0 ? "rec" : "rec-deferred");
    {
      Recorder rec(model, rec_dir.string(), rs);
      std::mt19937_64 rng(44);
      std::vector<int64_t> perm(static_cast<size_t>(n));
      for (int64_t s = 0; s < steps; ++s) {
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        std::vector<int64_t> ids(perm.begin(), perm.begin() + batch);
        const auto idx = torch::tensor(ids, torch::kLong);
        const auto loss = torch::nn::functional::cross_entropy(rec.forward(x_all.index_select(0, idx)), y_all.index_select(0, idx));
        const auto grads = torch::autograd::grad({loss}, params);
        EXPECT_TRUE(rec.step(ids, lr_of(s)));
        if (mode == 0) {
          std::vector<float> flat;
          for (const auto& p : params) {
            const auto c = p.detach().contiguous();
            flat.insert(flat.end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
          }
          params_at.push_back(flat);
        }
        torch::NoGradGuard ng;
        for (size_t k = 0; k < params.size(); ++k) params[k].sub_(grads[k], lr_of(s));
      }
      rec.close();
    }
    const RecordingReader r(rec_dir.string());
    ASSERT_EQ(r.steps(), static_cast<size_t>(steps));
    for (size_t t = 0; t < r.steps(); ++t) {
      const RecordedStep st = r.step(t);
      rows[mode].push_back(st.rows);
      if (t % W == 0)
        EXPECT_EQ(st.parameters, params_at[t]) << "step " << t << " opens a window: its parameters";
      else
        EXPECT_TRUE(st.parameters.empty()) << "step " << t << " is inside a window: no parameters";
    }
  }
  for (size_t t = 0; t < static_cast<size_t>(steps); ++t) EXPECT_EQ(rows[0][t], rows[1][t]) << "step " << t;

  const FinalizeOptions fo = finalize_options(dir);
  const FinalizeSummary sum = finalize_recording(fo);
  EXPECT_EQ(sum.steps, steps);
  ASSERT_EQ(sum.checkpoints, 3);
  const Config config = load_config(sum.config_file);
  const auto run = connectors::read_run_file(config.run_file);
  ASSERT_EQ(run.checkpoints.size(), 3u);
  const RecordingReader r((dir / "rec").string());
  const connectors::FeatureStoreReader store(fo.store);
  const auto ds = connectors::read_dataset(config.train_file, true);
  auto backend = kernels::make_cpu_backend(1);
  const int64_t width = r.width();
  double worst = 0;
  for (size_t c = 0; c < 3; ++c) {
    const size_t first = c * W, last = std::min<size_t>(steps, first + W);
    double lr_sum = 0;
    for (size_t t = first; t < last; ++t) lr_sum += lr_of(static_cast<int64_t>(t));
    EXPECT_EQ(run.checkpoints[c].lr, lr_sum);
    EXPECT_EQ(run.checkpoints[c].step, static_cast<int64_t>(first));
    std::vector<double> want(static_cast<size_t>(n * width), 0.0);
    std::vector<bool> seen(static_cast<size_t>(n), false);
    for (size_t t = first; t < last; ++t) {
      const RecordedStep st = r.step(t);
      const double f = std::sqrt(st.lr) / std::sqrt(lr_sum);
      for (size_t k = 0; k < st.ids.size(); ++k) {
        seen[static_cast<size_t>(st.ids[k])] = true;
        for (int64_t j = 0; j < width; ++j)
          want[static_cast<size_t>(st.ids[k] * width + j)] += f * static_cast<double>(st.rows[k * static_cast<size_t>(width) + j]);
      }
    }
    std::vector<float> got(static_cast<size_t>(n * width));
    store.read(c, 0, n, got.data());
    for (int64_t q = 0; q < n * width; ++q) ASSERT_EQ(got[static_cast<size_t>(q)], static_cast<float>(want[static_cast<size_t>(q)])) << "checkpoint " << c << ", entry " << q;
    // The window's first step against the CLI's features of the checkpoint.
    Featurizer fz(config, run, c, {&ds}, *backend);
    ASSERT_EQ(fz.width(), width);
    std::vector<float> cli(static_cast<size_t>(n * width));
    fz.features(ds, 0, n, cli.data());
    const RecordedStep st = r.step(first);
    const double up = std::sqrt(lr_sum) / std::sqrt(st.lr);
    for (size_t k = 0; k < st.ids.size(); ++k) {
      double diff = 0, norm = 0;
      for (int64_t j = 0; j < width; ++j) {
        const double a = up * st.rows[k * static_cast<size_t>(width) + j], b = cli[static_cast<size_t>(st.ids[k] * width + j)];
        diff = std::max(diff, std::fabs(a - b));
        norm = std::max(norm, std::fabs(b));
      }
      ASSERT_GT(norm, 0.0);
      worst = std::max(worst, diff / norm);
    }
  }
  std::printf("window's first step vs CLI features of its checkpoint, largest rowwise max|diff| / max|cli|: %.3g\n", worst);
  EXPECT_LT(worst, 1e-5);
  RunOptions ro;
  ro.out_dir = (dir / "out").string();
  ro.quiet = true;
  EXPECT_EQ(run_score(config, fo.store, "", ro).n_train, n);

  RecorderSettings exact = settings(64, 7);
  exact.projection = Projection::none;
  exact.window = 2;
  connectors::write_file_atomic((dir / "template.pt").string(), "x");
  EXPECT_THROW(RecordingWriter((dir / "bad").string(), exact, {{"fc", 6, 7, true}}, {{"p", {3}}}, (dir / "template.pt").string()),
               InputError);
}

// A C++ frontend torch::nn::Sequential (the usual LibTorch model) recorded as users train it:
// torch::optim::SGD on the model's own parameters, loss.backward(), rec.step() between backward
// and the optimizer step. Its TorchScript twin has the same parameter names, shares the tensors
// (the recorded parameters are the model's before each update) and computes the same forward
// bits; the finalized store matches `attrace featurize` on the saved checkpoints.
TEST(Recorder, TorchNnSequential) {
  namespace nn = torch::nn;
  const fs::path dir = fresh_dir("torch-nn");
  const int64_t n = 40, batch = 8;
  const auto train = make_images(n, 31, true);
  connectors::write_dataset((dir / "train.h5").string(), train);
  connectors::write_dataset((dir / "query.h5").string(), make_images(5, 32, false));
  torch::manual_seed(33);
  nn::Sequential model(nn::Conv2d(nn::Conv2dOptions(1, 4, 3).padding(1)), nn::ReLU(), nn::MaxPool2d(2), nn::Flatten(),
                       nn::Linear(64, 16), nn::Tanh(), nn::Linear(nn::LinearOptions(16, kClasses).bias(false)));
  const auto x_all = torch::from_blob(const_cast<float*>(train.inputs.data()), train.input_shape, torch::kFloat).clone();
  const auto y_all = torch::from_blob(const_cast<int64_t*>(train.class_targets.data()), {n}, torch::kLong).clone();

  torch::jit::Module twin = sequential_to_torchscript(model);
  std::vector<std::string> names, want_names;
  for (const auto& p : twin.named_parameters(true)) names.push_back(p.name);
  for (const auto& p : model->named_parameters()) want_names.push_back(p.key());
  EXPECT_EQ(names, want_names);
  EXPECT_EQ(twin.attr("4").toModule().attr("weight").toTensor().data_ptr(), model[4]->as<nn::LinearImpl>()->weight.data_ptr());
  {
    torch::NoGradGuard ng;
    const auto a = model->forward(x_all);
    EXPECT_TRUE(torch::equal(a, twin.forward({x_all}).toTensor()));
    save_sequential_torchscript(model, (dir / "saved.pt").string());
    EXPECT_TRUE(torch::equal(a, torch::jit::load((dir / "saved.pt").string()).forward({x_all}).toTensor()));
  }

  RecorderSettings rs = settings(64, 7);
  rs.flush_steps = 2;
  std::vector<std::vector<int64_t>> batches;
  std::vector<torch::Tensor> before;  // the last layer's weight before each update
  {
    Recorder rec(model, (dir / "rec").string(), rs);
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.2));
    std::mt19937_64 rng(34);
    std::vector<int64_t> perm(static_cast<size_t>(n));
    for (int64_t s = 0; s < 4; ++s) {
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::vector<int64_t> ids(perm.begin(), perm.begin() + batch);
      const auto idx = torch::tensor(ids, torch::kLong);
      opt.zero_grad();
      const auto out = rec.forward(x_all.index_select(0, idx));
      torch::nn::functional::cross_entropy(out, y_all.index_select(0, idx)).backward();
      EXPECT_TRUE(rec.step(ids, 0.2));
      before.push_back(model[6]->as<nn::LinearImpl>()->weight.detach().clone());
      opt.step();
      batches.push_back(ids);
    }
    rec.close();
  }
  {
    const RecordingReader r((dir / "rec").string());
    ASSERT_EQ(r.steps(), 4u);
    const auto& ps = r.parameters();
    ASSERT_EQ(ps.back().name, "6.weight");
    const auto count = static_cast<size_t>(ps.back().numel());
    for (size_t c = 0; c < 4; ++c) {
      const RecordedStep st = r.step(c);
      EXPECT_EQ(std::memcmp(st.parameters.data() + st.parameters.size() - count, before[c].data_ptr<float>(), count * 4), 0)
          << "step " << c;
      if (c > 0) EXPECT_FALSE(torch::equal(before[c], before[c - 1]));  // the optimizer did update the shared tensor
    }
  }
  const FinalizeOptions fo = finalize_options(dir);
  const FinalizeSummary fsum = finalize_recording(fo);
  ASSERT_EQ(fsum.steps, 4);
  const Config config = load_config(fsum.config_file);
  const double worst = worst_store_vs_cli(config, fo.store, batches);
  std::printf("torch::nn recorded vs CLI features, largest rowwise max|diff| / max|cli|: %.3g\n", worst);
  EXPECT_LT(worst, 1e-5);
}

// Dropout in a torch::nn::Sequential: the twin follows the model's train()/eval() at each
// forward (dropped values in training, the identity in evaluation, bit for bit the model's),
// and the recording's template is saved in evaluation mode. Children without a TorchScript form
// or with parameters other than a Linear or Conv2d layer's are refused, naming the child.
TEST(Recorder, TorchNnDropoutAndRefusals) {
  namespace nn = torch::nn;
  const fs::path dir = fresh_dir("torch-nn-dropout");
  torch::manual_seed(35);
  nn::Sequential model(nn::Linear(kIn, kHidden), nn::GELU(), nn::Dropout(0.5), nn::Linear(kHidden, kClasses));
  const auto x = torch::rand({6, kIn});
  Recorder rec(model, (dir / "rec").string(), settings(64, 7));
  model->train();
  const auto dropped = rec.forward(x);
  model->eval();
  const auto kept = rec.forward(x);
  {
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::equal(kept, model->forward(x)));
    EXPECT_FALSE(torch::equal(dropped, kept));
  }
  torch::jit::Module tmpl = torch::jit::load((dir / "rec" / "template.pt").string());
  EXPECT_FALSE(tmpl.is_training());
  rec.close();

  RecorderSettings rs = settings(64, 7);
  test::expect_input_error(
      [&] {
        nn::Sequential bad(nn::Linear(3, 4), nn::Functional(torch::relu), nn::Linear(4, 2));
        Recorder r(bad, (dir / "bad").string(), rs);
      },
      {"child '1'"});
  test::expect_input_error(
      [&] {
        nn::Sequential bad(nn::Conv2d(nn::Conv2dOptions(1, 2, 3)), nn::BatchNorm2d(2), nn::Flatten(), nn::Linear(72, 2));
        Recorder r(bad, (dir / "bad2").string(), rs);
      },
      {"'1'"});
}

// Deferred projection stores the captured tensors and projects them when the recording is read:
// the rows equal the live writer's bit for bit (a Conv2d layer given as NCHW images, a Linear
// layer with 3 positions per example and no bias column, one with the bias column and a loss
// scale, one kept exact; batches of 3 and 4; float32 and bfloat16 features), and so do those of
// the automatic rule, whatever it chooses; the parameters too. A recording made deferred and
// resumed live (the setting changes no feature) reads back with both kinds of steps. (The
// automatic rule defers the steps of the crash and determinism tests below: their layer's
// captures, 13 floats per example, are less than twice its projected factors, 8.)
TEST(Recorder, DeferredEqualsLiveBitForBit) {
  const fs::path dir = fresh_dir("deferred");
  connectors::write_file_atomic((dir / "template.pt").string(), "x");
  RecordedLayer conv{"c", 2 * 3 * 2 + 1, 5, true, true};
  conv.geometry.c_in = 2;
  conv.geometry.kh = 3;
  conv.geometry.kw = 2;
  conv.geometry.sw = 2;
  conv.geometry.ph = 1;
  const std::vector<RecordedLayer> layers = {conv, {"s", 10, 7, true}, {"f", 8, 4, true}, {"e", 3, 4, false}};
  const std::vector<RecordedParameter> params = {{"w", {2, 3}}, {"b", {5}}};
  const int64_t H = 6, W = 5;
  // Step s's captures (a pure function of s).
  const auto record_step = [&](RecordingWriter& w, int64_t s) {
    const int64_t b = 3 + s % 2;
    std::mt19937_64 rng(static_cast<uint64_t>(40 + s));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const auto fill = [&](int64_t n) {
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& e : v) e = u(rng);
      return v;
    };
    auto cx = fill(b * 2 * H * W), cd = fill(b * 5 * 6 * 2);  // output 6 x 2 (pad 1 rows, stride 2 columns)
    auto sx = fill(b * 3 * 9), sd = fill(b * 3 * 7);
    auto fx = fill(b * 8), fd = fill(b * 4), ex = fill(b * 3), ed = fill(b * 4), p = fill(11);
    for (int64_t e = 0; e < b; ++e) fx[static_cast<size_t>(e * 8 + 7)] = 1.0f;  // the bias column
    LayerBatch lc{cx.data(), cd.data(), 1, true, 1.0f, H, W};
    LayerBatch ls{sx.data(), sd.data(), 3, false, 1.0f};
    LayerBatch lf{fx.data(), fd.data(), 1, true, static_cast<float>(b)};
    LayerBatch le{ex.data(), ed.data(), 1, true, 0.5f};
    std::vector<int64_t> ids;
    for (int64_t e = 0; e < b; ++e) ids.push_back(7 * s + 2 * e);
    w.record(s, 0.1 + 0.01 * static_cast<double>(s), ids.data(), b, {lc, ls, lf, le}, {p.data(), p.data() + 6});
  };
  for (const auto dtype : {connectors::FeatureDtype::f32, connectors::FeatureDtype::bf16}) {
    std::vector<std::vector<float>> rows[3], ps[3];
    int64_t deferred[3] = {};
    for (const int mode : {0, 1, 2}) {
      const Deferral defer = mode == 0 ? Deferral::never : mode == 1 ? Deferral::always : Deferral::automatic;
      const fs::path rec = dir / ((mode == 0 ? "live-" : mode == 1 ? "defer-" : "auto-") + connectors::to_string(dtype));
      RecorderSettings rs = settings(16, 21);
      rs.dtype = dtype;
      rs.defer = defer;
      rs.flush_steps = 2;
      {
        RecordingWriter w(rec.string(), rs, layers, params, (dir / "template.pt").string());
        for (int64_t s = 0; s < 5; ++s) record_step(w, s);
        w.flush();
        deferred[mode] = w.timings().deferred;
      }
      const RecordingReader r(rec.string());
      ASSERT_EQ(r.steps(), 5u);
      for (size_t c = 0; c < r.steps(); ++c) {
        const RecordedStep st = r.step(c);
        rows[mode].push_back(st.rows);
        ps[mode].push_back(st.parameters);
      }
      if (mode == 1) {
        // Resumed live: one more step, projected by the writer; every step reads back.
        RecorderSettings live = rs;
        live.defer = Deferral::never;
        {
          RecordingWriter again(rec.string(), live, layers, params, (dir / "template.pt").string());
          EXPECT_EQ(again.last_step(), 4);
          record_step(again, 5);
          again.flush();
          EXPECT_EQ(again.timings().deferred, 0);
        }
        const RecordingReader mixed(rec.string());
        ASSERT_EQ(mixed.steps(), 6u);
        for (size_t c = 0; c < 5; ++c) EXPECT_EQ(mixed.step(c).rows, rows[1][c]) << "step " << c;
        EXPECT_EQ(mixed.step(5).step, 5);
      }
    }
    EXPECT_EQ(deferred[0], 0);
    EXPECT_EQ(deferred[1], 5);
    // Automatic on these shapes: the captures (187 floats per example) are more than twice the
    // projected blocks (47: rows of 16 for the conv and 3-position layers, factors of 8 and 7):
    // every step is projected live.
    EXPECT_EQ(deferred[2], 0);
    for (size_t c = 0; c < 5; ++c) {
      for (const int mode : {1, 2}) {
        ASSERT_EQ(rows[0][c].size(), rows[mode][c].size());
        EXPECT_EQ(std::memcmp(rows[0][c].data(), rows[mode][c].data(), rows[0][c].size() * 4), 0)
            << "step " << c << ", mode " << mode << ", " << connectors::to_string(dtype);
        EXPECT_EQ(ps[0][c], ps[mode][c]);
      }
      double norm = 0;
      for (const float v : rows[1][c]) norm += std::fabs(v);
      EXPECT_GT(norm, 0.0);
    }
  }
}

// Exact recording (projection none): rows from the CLI's own layer factors equal the featurizer's
// exact rows bit for bit, with both layers factored (features.factored auto), both dense
// (never), and lr not applied (the checkpoint's weight is lr).
TEST(Recorder, ExactRowsEqualFeaturizerBitForBit) {
  const fs::path dir = fresh_dir("rows-exact");
  const auto ds = make_dataset(29, 1, true);
  connectors::write_dataset((dir / "train.h5").string(), ds);
  connectors::write_dataset((dir / "query.h5").string(), make_dataset(5, 2, false));
  save_mlp_torchscript((dir / "a.pt").string(), {kIn, kHidden, kClasses}, 11);
  connectors::write_file_atomic((dir / "run.toml").string(), "[[checkpoint]]\nfile = \"a.pt\"\nstep = 3\nlr = 0.5\n");
  for (const auto factored : {Factoring::automatic, Factoring::never}) {
    connectors::write_file_atomic((dir / "attrace.toml").string(),
                                  "[run]\ncheckpoints = \"run.toml\"\n[data]\ntrain = \"train.h5\"\nquery = \"query.h5\"\n"
                                  "[features]\nfactored = \"" + to_string(factored) + "\"\n");
    const Config config = load_config((dir / "attrace.toml").string());
    const auto run = connectors::read_run_file(config.run_file);
    const auto train = connectors::read_dataset(config.train_file, true);
    auto backend = kernels::make_cpu_backend(1);
    Featurizer fz(config, run, 0, {&train}, *backend);
    EXPECT_EQ(fz.weight(), 0.5);
    std::vector<float> want(static_cast<size_t>(train.size() * fz.width()), NAN);
    fz.features(train, 0, train.size(), want.data());
    GradientSettings gs;
    CheckpointModel model(run.checkpoints[0].path, gs, *backend);
    model.prepare(train);
    std::vector<RecordedLayer> layers;
    for (const auto& l : model.kronecker_layers()) layers.push_back({l.name, l.d_in, l.d_out, l.bias});
    const FeatureLayout layout = recorded_exact_layout(layers, factored);
    EXPECT_TRUE(layout == fz.use().layout);
    EXPECT_EQ(layout.factored.size(), factored == Factoring::never ? 0u : 2u);
    std::vector<LayerFactors> factors;
    model.layer_factors(train, 0, train.size(), factors);
    std::vector<LayerBatch> lb;
    for (const auto& f : factors) lb.push_back({f.x.data(), f.delta.data(), f.positions});
    RecorderSettings rs;
    rs.projection = Projection::none;
    rs.factored = factored;
    std::vector<float> got(want.size(), NAN);
    recorded_rows(layers, rs, 0, 0.5, train.size(), lb, got.data());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << to_string(factored);
  }
}

// The C++ example of docs/recorder.md, its lines as they stand there, on a 12-24-5 MLP and three
// batches; then attrace score's pipeline on the store it finalizes.
TEST(Recorder, DocExampleCpp) {
  namespace ae = attrace::engine;
  const fs::path dir = fresh_dir("doc-cpp");
  const fs::path cwd = fs::current_path();
  fs::current_path(dir);
  const auto train = make_dataset(24, 21, true);
  connectors::write_dataset("train.h5", train);
  connectors::write_dataset("query.h5", make_dataset(4, 22, false));
  save_mlp_torchscript("init.pt", {kIn, kHidden, kClasses}, 23);
  const double lr = 0.3;
  std::vector<std::tuple<std::vector<int64_t>, torch::Tensor, torch::Tensor>> batches;
  for (int64_t b = 0; b < 3; ++b) {
    std::vector<int64_t> ids = {b, b + 3, b + 6, b + 9, b + 12, b + 15, b + 18, b + 21};
    const auto idx = torch::tensor(ids, torch::kLong);
    batches.emplace_back(ids, torch::from_blob(const_cast<float*>(train.inputs.data()), {24, kIn}).index_select(0, idx),
                         torch::from_blob(const_cast<int64_t*>(train.class_targets.data()), {24}, torch::kLong).index_select(0, idx));
  }
  {
    // --- docs/recorder.md, "C++ (LibTorch)" ---
    torch::jit::Module model = torch::jit::load("init.pt");   // a scripted Sequential of Linear / Conv2d + activations
    std::vector<torch::Tensor> params;
    for (auto p : model.parameters()) params.push_back(p.requires_grad_());
    ae::Recorder rec(model, "run.rec");                         // every step, Kronecker k = 4096 per layer
    for (auto& [ids, x, y] : batches) {                         // ids: the examples' rows in train.h5
      auto loss = torch::nn::functional::cross_entropy(rec.forward(x), y);   // instead of model.forward({x})
      auto grads = torch::autograd::grad({loss}, params);      // params: model.parameters(), requires_grad
      rec.step(ids, lr);                                        // after the backward pass, before the update
      torch::NoGradGuard ng; for (size_t k = 0; k < params.size(); ++k) params[k].sub_(grads[k], lr);
    }
    rec.close();                                                // waits for the writer: every step durable
    ae::finalize_recording({"run.rec", "train.h5", "query.h5", "train-features.h5"});
    // ---
  }
  const Config config = load_config("run.rec/attrace.toml");
  RunOptions ro;
  ro.out_dir = "results";
  ro.quiet = true;
  const RunSummary summary = run_score(config, "train-features.h5", "", ro);
  fs::current_path(cwd);
  EXPECT_EQ(summary.n_train, 24);
  EXPECT_EQ(summary.n_query, 4);
  EXPECT_EQ(connectors::read_run_file((dir / "run.rec" / "run.toml").string()).checkpoints.size(), 3u);
  EXPECT_TRUE(fs::exists(dir / "results" / "report.json"));
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
    for (size_t c = 0; c < r.steps(); ++c) {
      const RecordedStep st = r.step(c);
      ASSERT_EQ(st.step, static_cast<int64_t>(c));
      const Synthetic f(st.step);
      EXPECT_EQ(st.ids, f.ids);
      EXPECT_EQ(st.parameters, f.p);
      EXPECT_EQ(st.lr, 0.01 * static_cast<double>(st.step + 1));
      std::vector<float> want_rows(st.rows.size());
      recorded_rows(kLayers, rs, c, st.lr, 4, {{f.x.data(), f.d.data(), 1}}, want_rows.data());
      ASSERT_EQ(st.rows, want_rows) << "step " << c;
    }
  }
  // Other settings on the same directory are refused, naming the field.
  RecorderSettings other = rs;
  other.k = 32;
  test::expect_input_error([&] { RecordingWriter w(rec.string(), other, kLayers, kParams, (dir / "template.pt").string()); },
                           {"projection"});
  // A damaged (truncated) segment is refused, naming it.
  const auto seg = rec / "segment_000000.bin";
  fs::resize_file(seg, fs::file_size(seg) - 5);
  test::expect_input_error([&] { RecordingReader r(rec.string()); }, {"segment_000000.bin"});
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

// The files depend only on the record() and flush() calls: the same steps written with a queue
// of 1 or 16, 1 or 2 projection threads, and a writer slowed down or not, are byte-identical
// (segment boundaries at flush_steps and at each flush()).
TEST(Recorder, FilesDoNotDependOnQueueThreadsOrTiming) {
  const fs::path dir = fresh_dir("determinism");
  connectors::write_file_atomic((dir / "template.pt").string(), "x");
  std::vector<std::string> seen;
  for (const auto& [queue, threads, pause] : {std::tuple<int, int, int>{1, 1, 0}, {16, 2, 0}, {3, 1, 2}}) {
    const fs::path rec = dir / ("rec" + std::to_string(queue) + "-" + std::to_string(threads) + "-" + std::to_string(pause));
    RecorderSettings rs = kill_settings();
    rs.queue_steps = queue;
    rs.threads = threads;
    {
      RecordingWriter w(rec.string(), rs, kLayers, kParams, (dir / "template.pt").string());
      for (int64_t s = 0; s < 11; ++s) {
        record_synthetic(w, s);
        if (pause) std::this_thread::sleep_for(std::chrono::milliseconds(pause));
        if (s == 4) w.flush();  // a segment of 2 steps (3 + 2), then 3, 3 and the rest at close
      }
      w.flush();
      EXPECT_EQ(w.timings().deferred, 11);  // the automatic rule defers these steps
    }
    std::string all;
    for (size_t k = 0; fs::exists(rec / ("segment_00000" + std::to_string(k) + ".bin")); ++k)
      all += connectors::sha256_file((rec / ("segment_00000" + std::to_string(k) + ".bin")).string()) + " ";
    seen.push_back(all);
    EXPECT_EQ(RecordingReader(rec.string()).steps(), 11u);
  }
  EXPECT_EQ(std::count(seen[0].begin(), seen[0].end(), ' '), 4) << seen[0];  // segments of 3, 2, 3 and 3 steps
  EXPECT_EQ(seen[0], seen[1]);
  EXPECT_EQ(seen[0], seen[2]);
}

// A step whose features are not finite is reported by the next call (the writer runs behind
// the caller), names the step and example, and leaves every step before it durable.
TEST(Recorder, BackgroundErrorIsReportedAndEarlierStepsStayDurable) {
  for (const bool defer : {false, true}) {
  SCOPED_TRACE(defer ? "deferred projection" : "live projection");
  const fs::path dir = fresh_dir(defer ? "nan-deferred" : "nan");
  connectors::write_file_atomic((dir / "template.pt").string(), "x");
  const fs::path rec = dir / "rec";
  {
    RecorderSettings rs = kill_settings();
    rs.defer = defer ? Deferral::always : Deferral::never;
    RecordingWriter w(rec.string(), rs, kLayers, kParams, (dir / "template.pt").string());
    for (int64_t s = 0; s < 4; ++s) record_synthetic(w, s);
    Synthetic bad(4);
    bad.d[7] = NAN;  // example 1's output gradient
    w.record(4, 0.1, bad.ids.data(), 4, {{bad.x.data(), bad.d.data(), 1}}, {bad.p.data()});
    try {
      w.flush();
      FAIL() << "a NaN feature was recorded";
    } catch (const NumericError& e) {
      EXPECT_NE(std::string(e.what()).find("step 4"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("example id " + std::to_string(bad.ids[1])), std::string::npos) << e.what();
    }
    EXPECT_THROW(record_synthetic(w, 5), NumericError);
    EXPECT_EQ(w.durable(), 4);
  }  // the destructor logs the error instead of throwing it
  EXPECT_EQ(RecordingReader(rec.string()).steps(), 4u);
  }
}

}  // namespace
