// Per-example gradients of the chain path with Conv2d layers (issue 10): equal to the general
// path's (one backward per example) within the precision's tolerance, Kronecker factors that
// reproduce the dense gradient, bits that do not depend on the batch or the thread count, and
// the refusals (selected batch-norm parameters, grouped or traced convolutions).
#include "gradient_checks.hpp"
#include "test_util.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>

#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace ac = attrace::connectors;
namespace ae = attrace::engine;
using attrace::test::all_gradients;
using attrace::test::expect_rows_close;
using attrace::test::fixture;

namespace {

ae::GradientSettings settings(ae::GradPath path, ae::Precision precision = ae::Precision::fp32,
                              std::vector<std::string> parameters = {"*"}) {
  ae::GradientSettings gs;
  gs.path = path;
  gs.precision = precision;
  gs.parameters = std::move(parameters);
  return gs;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Model {
  std::string name, data;
};

class ConvChain : public ::testing::TestWithParam<std::tuple<Model, ae::Precision>> {};

// The chain path takes these CNNs (no refusal) and its gradients are the general path's.
TEST_P(ConvChain, GradientsEqualThePerExampleBackward) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto& [m, precision] = GetParam();
  const auto ds = ac::read_dataset(fixture(m.data + "_train.h5"), true);
  auto backend = attrace::kernels::make_cpu_backend();
  for (int c = 1; c <= 3; ++c) {
    const std::string file = fixture(m.name + "_" + std::to_string(c) + ".pt");
    ae::CheckpointModel chain(file, settings(ae::GradPath::automatic, precision), *backend);
    chain.prepare(ds);
    ASSERT_EQ(chain.path_in_use(), ae::GradPath::chain) << file << ": " << chain.chain_refusal();
    ae::CheckpointModel general(file, settings(ae::GradPath::general, precision), *backend);
    general.prepare(ds);
    ASSERT_EQ(general.path_in_use(), ae::GradPath::general);
    ASSERT_EQ(chain.dim(), general.dim());
    ASSERT_EQ(chain.parameter_names(), general.parameter_names());
    if (precision == ae::Precision::fp64)
      expect_rows_close(all_gradients<double>(chain, ds, 8), all_gradients<double>(general, ds, 8), chain.dim(), 1e-11,
                        file + " fp64");
    else
      expect_rows_close(all_gradients<float>(chain, ds, 8), all_gradients<float>(general, ds, 8), chain.dim(), 2e-5,
                        file + " fp32");
  }
}

std::string model_name(const ::testing::TestParamInfo<std::tuple<Model, ae::Precision>>& info) {
  return std::get<0>(info.param).name + (std::get<1>(info.param) == ae::Precision::fp64 ? "_fp64" : "_fp32");
}

// cnn2: padding, frozen batch-norm, max-pooling, stride 2, dropout. cnn3: dilation with
// padding "same", rectangular kernel and stride, no bias, average pooling, nested Sequential.
// cnn: the older 6x6 fixture (no padding). digitcnn: the benchmark CNN.
INSTANTIATE_TEST_SUITE_P(Models, ConvChain,
                         ::testing::Combine(::testing::Values(Model{"cnn2", "digits"}, Model{"cnn3", "digits"},
                                                              Model{"cnn", "img"}, Model{"digitcnn", "digits"}),
                                            ::testing::Values(ae::Precision::fp32, ae::Precision::fp64)),
                         model_name);

TEST(ConvChainSelection, ParameterSubsetsIncludingAConvWithoutBias) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = ac::read_dataset(fixture("digits_train.h5"), true);
  auto backend = attrace::kernels::make_cpu_backend();
  for (const auto& pattern : {std::vector<std::string>{"1.weight"}, std::vector<std::string>{"0.0.*", "4.*"},
                              std::vector<std::string>{"0.0.bias"}}) {
    ae::CheckpointModel chain(fixture("cnn3_2.pt"), settings(ae::GradPath::chain, ae::Precision::fp32, pattern), *backend);
    chain.prepare(ds);
    ae::CheckpointModel general(fixture("cnn3_2.pt"), settings(ae::GradPath::general, ae::Precision::fp32, pattern), *backend);
    general.prepare(ds);
    expect_rows_close(all_gradients<float>(chain, ds, 16), all_gradients<float>(general, ds, 16), chain.dim(), 2e-5,
                      "cnn3 " + pattern[0]);
  }
}

// Frozen batch-norm is a called step; selected batch-norm parameters refuse the chain, by name.
TEST(ConvChainSelection, SelectedBatchNormParametersTakeTheGeneralPath) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = ac::read_dataset(fixture("digits_train.h5"), true);
  auto backend = attrace::kernels::make_cpu_backend();
  ae::CheckpointModel all(fixture("cnnbn_1.pt"), settings(ae::GradPath::automatic), *backend);
  all.prepare(ds);
  EXPECT_EQ(all.path_in_use(), ae::GradPath::general);
  EXPECT_NE(all.chain_refusal().find("child '1'"), std::string::npos) << all.chain_refusal();
  EXPECT_NE(all.chain_refusal().find("batch-norm layers frozen only"), std::string::npos) << all.chain_refusal();
  try {
    ae::CheckpointModel forced(fixture("cnnbn_1.pt"), settings(ae::GradPath::chain), *backend);
    forced.prepare(ds);
    ADD_FAILURE() << "path = chain accepted selected batch-norm parameters";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("path = chain requested"), std::string::npos) << e.what();
  }
  const std::vector<std::string> frozen_bn = {"0.*", "4.*"};
  ae::CheckpointModel chain(fixture("cnnbn_1.pt"), settings(ae::GradPath::automatic, ae::Precision::fp32, frozen_bn), *backend);
  chain.prepare(ds);
  ASSERT_EQ(chain.path_in_use(), ae::GradPath::chain) << chain.chain_refusal();
  ae::CheckpointModel general(fixture("cnnbn_1.pt"), settings(ae::GradPath::general, ae::Precision::fp32, frozen_bn), *backend);
  general.prepare(ds);
  expect_rows_close(all_gradients<float>(chain, ds, 8), all_gradients<float>(general, ds, 8), chain.dim(), 2e-5, "cnnbn");
}

TEST(ConvChainSelection, GroupedAndTracedConvolutionsAreRefused) {
  ATTRACE_REQUIRE_FIXTURES();
  auto backend = attrace::kernels::make_cpu_backend();
  const auto digits = ac::read_dataset(fixture("digits_train.h5"), true);
  ae::CheckpointModel grouped(fixture("cnngroups_1.pt"), settings(ae::GradPath::automatic), *backend);
  grouped.prepare(digits);
  EXPECT_EQ(grouped.path_in_use(), ae::GradPath::general);
  EXPECT_NE(grouped.chain_refusal().find("groups = 2"), std::string::npos) << grouped.chain_refusal();
  ae::CheckpointModel traced(fixture("cnntraced_1.pt"), settings(ae::GradPath::automatic), *backend);
  traced.prepare(digits);
  EXPECT_EQ(traced.path_in_use(), ae::GradPath::general);
  EXPECT_NE(traced.chain_refusal().find("traced"), std::string::npos) << traced.chain_refusal();
  // A grouped model still gets its gradients (general path), finite and non-zero.
  const auto g = all_gradients<float>(grouped, digits, 8);
  double norm = 0;
  for (float v : g) norm += static_cast<double>(v) * v;
  EXPECT_TRUE(std::isfinite(norm) && norm > 0);
}

// layer_factors of conv layers: one position per output pixel, patches with a ones column;
// sum_t delta_t [x_t, 1]^T, formed here in float64, is the dense per-example gradient.
TEST(ConvKronecker, FactorsReproduceTheDenseGradient) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto ds = ac::read_dataset(fixture("digits_train.h5"), true);
  auto backend = attrace::kernels::make_cpu_backend();
  for (const std::string name : {"cnn2", "digitcnn", "cnn3"}) {
    ae::CheckpointModel model(fixture(name + "_1.pt"), settings(ae::GradPath::automatic), *backend);
    model.prepare(ds);
    ASSERT_EQ(model.path_in_use(), ae::GradPath::chain) << model.chain_refusal();
    const auto layers = model.kronecker_layers();
    const int64_t n = 11, p = model.dim();  // an odd batch
    std::vector<float> dense(static_cast<size_t>(n * p));
    model.gradients(ds, 0, n, dense.data());
    std::vector<ae::LayerFactors> factors;
    model.layer_factors(ds, 0, n, factors);
    ASSERT_EQ(factors.size(), layers.size());
    int64_t off = 0, convs = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& f = factors[l];
      SCOPED_TRACE(name + " layer " + f.name);
      EXPECT_EQ(f.name, layers[l].name);
      EXPECT_EQ(f.d_in, layers[l].d_in);
      EXPECT_EQ(f.d_out, layers[l].d_out);
      EXPECT_EQ(f.positions, layers[l].positions) << "kronecker_layers() knows the positions after prepare()";
      ASSERT_EQ(static_cast<int64_t>(f.x.size()), n * f.positions * f.d_in);
      ASSERT_EQ(static_cast<int64_t>(f.delta.size()), n * f.positions * f.d_out);
      convs += f.positions > 1;
      const bool bias = layers[l].bias;
      const int64_t k = f.d_in - (bias ? 1 : 0);
      for (int64_t e = 0; e < n; ++e) {
        std::vector<double> want(static_cast<size_t>(f.d_out * f.d_in), 0.0);
        for (int64_t t = 0; t < f.positions; ++t) {
          const float* x = f.x.data() + (e * f.positions + t) * f.d_in;
          const float* d = f.delta.data() + (e * f.positions + t) * f.d_out;
          if (bias) {
            ASSERT_EQ(x[k], 1.0f) << "bias column";
          }
          for (int64_t o = 0; o < f.d_out; ++o)
            for (int64_t q = 0; q < f.d_in; ++q) want[static_cast<size_t>(o * f.d_in + q)] += static_cast<double>(d[o]) * x[q];
        }
        double scale = 0, err = 0;
        const float* row = dense.data() + e * p;
        for (int64_t o = 0; o < f.d_out; ++o) {
          for (int64_t q = 0; q < k; ++q) {  // weight [o, q] at off + o * k + q
            const double w = want[static_cast<size_t>(o * f.d_in + q)];
            scale = std::max(scale, std::abs(w));
            err = std::max(err, std::abs(w - row[off + o * k + q]));
          }
          if (bias) {  // bias [o] after the whole weight
            const double w = want[static_cast<size_t>(o * f.d_in + k)];
            scale = std::max(scale, std::abs(w));
            err = std::max(err, std::abs(w - row[off + f.d_out * k + o]));
          }
        }
        ASSERT_GT(scale, 0);
        EXPECT_LE(err, 1e-6 * scale) << "example " << e;
      }
      off += f.d_out * f.d_in;
    }
    EXPECT_EQ(off, p) << "the layers cover every selected parameter";
    EXPECT_GE(convs, 2) << "at least two conv layers with several positions";
  }
}

// A row's gradient bits are a function of that row only: batches of 1, 3 and 64 rows and one or
// two LibTorch threads give the same bytes, for the gradients and for the Kronecker factors.
TEST(ChainDeterminism, BatchSizeAndThreadsChangeNoBit) {
  ATTRACE_REQUIRE_FIXTURES();
  auto backend = attrace::kernels::make_cpu_backend();
  const int threads_before = at::get_num_threads();
  for (const auto& [name, data] : {std::pair<std::string, std::string>{"cnn2", "digits"}, {"cnn3", "digits"},
                                   {"digitcnn", "digits"}, {"deep", "vec"}}) {
    SCOPED_TRACE(name);
    const auto ds = ac::read_dataset(fixture(data + "_train.h5"), true);
    ae::CheckpointModel model(fixture(name + "_3.pt"), settings(ae::GradPath::chain), *backend);
    model.prepare(ds);
    at::set_num_threads(2);
    const auto ref = all_gradients<float>(model, ds, 64);
    for (const int64_t batch : {1, 3, 64}) {
      for (const int threads : {1, 2}) {
        at::set_num_threads(threads);
        EXPECT_TRUE(bit_equal(all_gradients<float>(model, ds, batch), ref)) << "batch " << batch << ", threads " << threads;
      }
    }
    at::set_num_threads(threads_before);
    std::vector<ae::LayerFactors> whole, one;
    model.layer_factors(ds, 0, ds.size(), whole);
    for (const int64_t row : {int64_t{0}, int64_t{17}, ds.size() - 1}) {
      model.layer_factors(ds, row, row + 1, one);
      ASSERT_EQ(one.size(), whole.size());
      for (size_t l = 0; l < one.size(); ++l) {
        const size_t xw = static_cast<size_t>(one[l].positions * one[l].d_in), dw = static_cast<size_t>(one[l].positions * one[l].d_out);
        EXPECT_EQ(std::memcmp(one[l].x.data(), whole[l].x.data() + static_cast<size_t>(row) * xw, xw * sizeof(float)), 0)
            << "x of layer " << l << " row " << row;
        EXPECT_EQ(std::memcmp(one[l].delta.data(), whole[l].delta.data() + static_cast<size_t>(row) * dw, dw * sizeof(float)), 0)
            << "delta of layer " << l << " row " << row;
      }
    }
  }
  at::set_num_threads(threads_before);
}

// End to end: Kronecker projection of a CNN whose every layer fits the budget (identity
// factors, no randomness) gives the exact TracIn scores.
TEST(ConvKronecker, ExactBudgetGivesExactScores) {
  ATTRACE_REQUIRE_FIXTURES();
  ae::Config cfg;
  cfg.run_file = fixture("cnn2_run.toml");
  cfg.train_file = fixture("digits_train.h5");
  cfg.query_file = fixture("digits_query.h5");
  cfg.batch_size = 8;
  cfg.top_k = 3;
  const auto run = ac::read_run_file(cfg.run_file);
  const auto train = ac::read_dataset(cfg.train_file, true), query = ac::read_dataset(cfg.query_file, false);
  auto backend = attrace::kernels::make_cpu_backend();
  ae::Progress quiet(false);
  const auto exact = ae::compute_tracin(cfg, run, train, query, *backend, quiet);
  ASSERT_EQ(exact.checkpoints.front().path, ae::GradPath::chain) << exact.checkpoints.front().chain_refusal;
  cfg.projection = ae::Projection::kronecker;
  cfg.projection_k = 1024;  // >= d_in * d_out of every layer of cnn2 (largest: 8 x (6*9+1) = 440)
  const auto kron = ae::compute_tracin(cfg, run, train, query, *backend, quiet);
  double scale = 0, err = 0;
  for (size_t i = 0; i < exact.scores.size(); ++i) {
    scale = std::max(scale, std::abs(exact.scores[i]));
    err = std::max(err, std::abs(kron.scores[i] - exact.scores[i]));
  }
  ASSERT_GT(scale, 0);
  EXPECT_LE(err, 1e-5 * scale);
}

}  // namespace

// One model serves the training and the query set (attribute loads each checkpoint once): the
// chain path is decided on the first set's rows and must also reproduce forward() on the second
// set's. A Sequential whose forward adds 1 when the input sum is large agrees with its children on
// small rows and not on large ones: preparing the large set is refused, naming both files.
TEST(ChainSelection, ChainMustHoldOnEveryPreparedSet) {
  attrace::test::TempDir dir;
  torch::jit::Module fc("attrace_test.Linear");
  torch::manual_seed(3);
  fc.register_parameter("weight", torch::randn({3, 4}), false);
  fc.register_parameter("bias", torch::randn({3}), false);
  fc.define("def forward(self, x):\n  return torch.addmm(self.bias, x, self.weight.t())\n");
  torch::jit::Module seq("attrace_test.Sequential");
  seq.register_module("fc", fc);
  seq.define(
      "def forward(self, x):\n"
      "  y = self.fc.forward(x)\n"
      "  if bool(x.sum() > 1000.0):\n"
      "    y = y + 1.0\n"
      "  return y\n");
  const std::string path = dir / "branchy.pt";
  seq.save(path);
  const auto make = [](const std::string& name, float value) {
    ac::Dataset ds;
    ds.path = name;
    ds.input_shape = {8, 4};
    ds.inputs.assign(32, value);
    ds.target_shape = {8};
    ds.class_targets.assign(8, 1);
    for (int i = 0; i < 8; ++i) ds.ids.push_back(name + "-" + std::to_string(i));
    return ds;
  };
  const auto small = make("small.h5", 0.5f), large = make("large.h5", 100.0f);
  auto backend = attrace::kernels::make_cpu_backend();
  {
    ae::CheckpointModel m(path, settings(ae::GradPath::automatic), *backend);
    m.prepare(small);
    ASSERT_EQ(m.path_in_use(), ae::GradPath::chain) << m.chain_refusal();
    try {
      m.prepare(large);
      FAIL() << "the chain was accepted for rows where it does not reproduce forward()";
    } catch (const attrace::InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("'small.h5' but not on those of 'large.h5'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("gradients.path"), std::string::npos) << msg;
    }
  }
  // Decided on the large rows first, the chain is refused and another path serves both sets.
  ae::CheckpointModel m(path, settings(ae::GradPath::automatic), *backend);
  m.prepare(large);
  EXPECT_NE(m.path_in_use(), ae::GradPath::chain);
  EXPECT_NO_THROW(m.prepare(small));
}
