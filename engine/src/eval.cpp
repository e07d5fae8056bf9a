// `attrace eval`: noisy-label detection and LDS (engine/eval.hpp, docs/eval.md).
#include <attrace/random.hpp>
#include <attrace/engine/eval.hpp>

#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/engine/methods.hpp>
#include <attrace/engine/model_builder.hpp>
#include <attrace/engine/progress.hpp>
#include <attrace/engine/score.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>
#include <attrace/interrupt.hpp>

#include <spdlog/spdlog.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

namespace attrace::engine::eval {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

using attrace::draw_below;

// The inputs of a float dataset for a tensor; token datasets are refused (eval's models are MLPs
// on float inputs).
float* float_inputs(const connectors::Dataset& d) {
  ATTRACE_CHECK(d.input_kind == connectors::InputKind::values, InputError,
                d.path + ": attrace eval trains models on float inputs; token datasets (integer /inputs) are not supported");
  return const_cast<float*>(d.inputs.data());
}

int64_t class_count(const Task& t) {
  int64_t c = 0;
  for (const auto y : t.train.class_targets) c = std::max(c, y + 1);
  for (const auto y : t.query.class_targets) c = std::max(c, y + 1);
  return c;
}

// What a subset record and a resumed run must agree on: the data and the recipe.
std::string task_key(const Task& t, const Recipe& r, const std::string& model_sha, const LdsOptions& o) {
  std::string s = recipe_json(r).dump() + model_sha;
  for (const auto* d : {&t.train, &t.query}) {
    s += connectors::sha256_hex(std::string_view(reinterpret_cast<const char*>(d->inputs.data()), d->inputs.size() * 4));
    s += connectors::sha256_hex(
        std::string_view(reinterpret_cast<const char*>(d->class_targets.data()), d->class_targets.size() * 8));
  }
  s += " alpha=" + std::to_string(o.alpha) + " seed=" + std::to_string(o.seed) + (o.margin ? " margin" : " loss");
  return connectors::sha256_hex(s);
}

// The initial model: the recipe's TorchScript file, or the built-in MLP written once.
std::string init_model(const Task& t, const Recipe& r, const std::string& dir) {
  if (!r.model.empty()) {
    ATTRACE_CHECK(fs::exists(r.model), InputError, "--model " + r.model + ": no such file");
    return r.model;
  }
  std::vector<int64_t> sizes = {t.train.example_width()};
  sizes.insert(sizes.end(), r.hidden.begin(), r.hidden.end());
  sizes.push_back(class_count(t));
  const std::string path = (fs::path(dir) / "init.pt").string();
  save_mlp_torchscript(path, sizes, r.init_seed);
  return path;
}

// Trains copies of one initial model (one Trainer per thread: modules are not shared).
class Trainer {
 public:
  Trainer(const std::string& init_path, const connectors::Dataset& train, const Recipe& r) : recipe_(r) {
    try {
      init_ = torch::jit::load(init_path);
    } catch (const std::exception& e) {
      throw InputError(init_path + ": not a TorchScript model: " + e.what());
    }
    const auto shape = train.input_shape;
    x_ = torch::from_blob(float_inputs(train), shape, torch::kFloat).clone();
    y_ = torch::from_blob(const_cast<int64_t*>(train.class_targets.data()), {train.size()}, torch::kLong).clone();
  }

  // Trains on `rows` (ascending training rows) with data-order seed `seed`; on_phase(p, model)
  // after each phase.
  template <class F>
  torch::jit::Module train(const std::vector<int64_t>& rows, uint64_t seed, F&& on_phase) const {
    torch::jit::Module m = init_.clone();
    m.train();
    std::vector<torch::Tensor> params;
    for (const auto& p : m.parameters()) {
      torch::Tensor t = p;
      t.requires_grad_(true);
      params.push_back(t);
    }
    std::vector<torch::Tensor> m1, m2;
    for (const auto& p : params) {
      m1.push_back(torch::zeros_like(p));
      m2.push_back(torch::zeros_like(p));
    }
    std::mt19937_64 rng(seed);
    std::vector<int64_t> perm(rows);
    int64_t step = 0;
    const bool adam = recipe_.optimizer == "adam";
    for (size_t ph = 0; ph < recipe_.phases.size(); ++ph) {
      const double lr = recipe_.phases[ph].lr;
      for (int64_t e = 0; e < recipe_.phases[ph].epochs; ++e) {
        for (size_t i = perm.size() - 1; i > 0 && !perm.empty(); --i) std::swap(perm[i], perm[draw_below(rng, i + 1)]);
        for (size_t b0 = 0; b0 < perm.size(); b0 += static_cast<size_t>(recipe_.batch_size)) {
          check_interrupt();
          const size_t b1 = std::min(perm.size(), b0 + static_cast<size_t>(recipe_.batch_size));
          const auto idx = torch::from_blob(perm.data() + b0, {static_cast<int64_t>(b1 - b0)}, torch::kLong);
          const auto out = m.forward({x_.index_select(0, idx)}).toTensor();
          const auto loss = torch::nn::functional::cross_entropy(out, y_.index_select(0, idx));
          const auto grads = torch::autograd::grad({loss}, params);
          torch::NoGradGuard ng;
          ++step;
          for (size_t k = 0; k < params.size(); ++k) {
            torch::Tensor g = grads[k];
            if (recipe_.weight_decay != 0) g = g + recipe_.weight_decay * params[k];
            if (adam) {
              const double b1c = 1 - std::pow(recipe_.momentum, static_cast<double>(step));
              const double b2c = 1 - std::pow(0.999, static_cast<double>(step));
              m1[k].mul_(recipe_.momentum).add_(g, 1 - recipe_.momentum);
              m2[k].mul_(0.999).addcmul_(g, g, 0.001);
              params[k].sub_((m1[k] / b1c) / ((m2[k] / b2c).sqrt() + 1e-8) * lr);
            } else if (recipe_.momentum != 0) {
              m1[k].mul_(recipe_.momentum).add_(g);
              params[k].sub_(m1[k], lr);
            } else {
              params[k].sub_(g, lr);
            }
          }
        }
      }
      on_phase(ph, m);
    }
    m.eval();
    return m;
  }

 private:
  void check_interrupt() const { throw_if_interrupted(); }
  Recipe recipe_;
  torch::jit::Module init_;
  torch::Tensor x_, y_;
};

// Per-query outputs of a trained model: -cross-entropy (or the margin logit_y - logsumexp of
// the other logits), float64 from the float32 logits.
std::vector<double> query_outputs(torch::jit::Module& m, const connectors::Dataset& q, bool margin) {
  torch::NoGradGuard ng;
  const auto x = torch::from_blob(float_inputs(q), q.input_shape, torch::kFloat);
  const auto logits = m.forward({x}).toTensor().to(torch::kDouble).contiguous();
  const int64_t n = q.size(), c = logits.size(1);
  const double* l = logits.data_ptr<double>();
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double* r = l + i * c;
    const int64_t y = q.class_targets[static_cast<size_t>(i)];
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < c; ++k)
      if (!margin || k != y) mx = std::max(mx, r[k]);
    double s = 0;
    for (int64_t k = 0; k < c; ++k)
      if (!margin || k != y) s += std::exp(r[k] - mx);
    out[static_cast<size_t>(i)] = r[y] - (mx + std::log(s));  // margin, or log softmax_y = -loss
  }
  return out;
}

// One featurized model: its run file and its train/query features in memory.
struct Featurized {
  connectors::TrainingRun run;
  MemoryFeatures train{0, false}, query{0, false};
  double seconds = 0;
};

Config eval_config(const EvalOptions& o, const std::string& run_file) {
  Config c;
  c.run_file = run_file;
  c.train_file = "(eval train set)";
  c.query_file = "(eval query set)";
  c.batch_size = 256;
  c.projection = o.projection_k > 0 ? Projection::dense : Projection::none;
  c.projection_k = o.projection_k > 0 ? o.projection_k : 4096;
  c.projection_seed = o.projection_seed;
  c.trak_lambda = o.trak_lambda;
  c.top_k = 1;
  return c;
}

// Trains the recipe on the whole training set (model e of the ensemble: init and data order
// shifted by e), saves a checkpoint per phase and featurizes train and query sets.
Featurized train_and_featurize(const Task& task, const EvalOptions& o, const std::string& dir, int64_t e,
                               Progress& progress) {
  fs::create_directories(dir);
  Recipe r = o.recipe;
  r.init_seed += static_cast<uint64_t>(e);
  const std::string init = init_model(task, r, dir);
  Trainer trainer(init, task.train, r);
  std::vector<int64_t> all(static_cast<size_t>(task.train.size()));
  std::iota(all.begin(), all.end(), 0);
  std::string run_toml = "# written by attrace eval: checkpoints of one training run, with the lr in force\n";
  int64_t step = 0;
  const int64_t steps_per_epoch = (task.train.size() + r.batch_size - 1) / r.batch_size;
  auto model = trainer.train(all, r.seed + 1000003ULL * static_cast<uint64_t>(e), [&](size_t ph, torch::jit::Module& m) {
    const std::string file = "ckpt_" + std::to_string(ph + 1) + ".pt";
    m.save((fs::path(dir) / file).string());
    step += r.phases[ph].epochs * steps_per_epoch;
    char lr[64];
    std::snprintf(lr, sizeof lr, "%.17g", r.phases[ph].lr);
    run_toml += "\n[[checkpoint]]\nfile = \"" + file + "\"\nstep = " + std::to_string(step) + "\nlr = " + lr + "\n";
  });
  connectors::write_file_atomic((fs::path(dir) / "run.toml").string(), run_toml);
  Featurized f;
  f.run = connectors::read_run_file((fs::path(dir) / "run.toml").string());
  const Config c = eval_config(o, f.run.path);
  const auto backend = kernels::make_backend("cpu");
  const auto t0 = Clock::now();
  FeaturePair both = featurize_pair_in_memory(c, f.run, task.train, task.query, *backend, progress, nullptr, {},
                                              "model " + std::to_string(e) + " ");  // one load per checkpoint
  f.train = std::move(both.train);
  f.query = std::move(both.query);
  f.seconds = seconds_since(t0);
  {
    torch::NoGradGuard ng;
    const auto x = torch::from_blob(float_inputs(task.query), task.query.input_shape, torch::kFloat);
    const auto y = torch::from_blob(const_cast<int64_t*>(task.query.class_targets.data()), {task.query.size()}, torch::kLong);
    const double acc = model.forward({x}).toTensor().argmax(1).eq(y).to(torch::kDouble).mean().item<double>();
    spdlog::info("model {}: query accuracy {:.1f}%", e, 100.0 * acc);
  }
  return f;
}

// Checkpoints of several models side by side (the TRAK ensemble over independent runs).
class ConcatSource final : public FeatureSource {
 public:
  void add(const FeatureSource& s) {
    for (size_t c = 0; c < s.checkpoints(); ++c) parts_.push_back({&s, c});
  }
  int64_t rows() const override { return parts_.front().first->rows(); }
  size_t checkpoints() const override { return parts_.size(); }
  int64_t width(size_t c) const override { return parts_[c].first->width(parts_[c].second); }
  double weight(size_t c) const override { return parts_[c].first->weight(parts_[c].second); }
  bool fp64() const override { return parts_.front().first->fp64(); }
  void read(size_t c, int64_t b0, int64_t b1, float* out) const override { parts_[c].first->read(parts_[c].second, b0, b1, out); }
  void read(size_t c, int64_t b0, int64_t b1, double* out) const override { parts_[c].first->read(parts_[c].second, b0, b1, out); }
  FeatureLayout layout(size_t c) const override { return parts_[c].first->layout(parts_[c].second); }

 private:
  std::vector<std::pair<const FeatureSource*, size_t>> parts_;
};

// A method's scores on the evaluation's features.
struct MethodRun {
  std::string name, description;
  ScoreResult scores;
  double seconds = 0;  ///< kernel (trak) + scoring, not featurization
  bool self_influence_ranks = true;
};

ScoreSettings eval_score_settings(const Task& t) {
  ScoreSettings s;
  s.scoring = Scoring::fma;
  s.top_k = 1;
  s.keep_scores = true;
  s.tranche.assign(static_cast<size_t>(t.train.size()), 0);
  s.n_tranches = 1;
  s.train_ids = t.train.ids;
  s.query_ids = t.query.ids;
  return s;
}

std::vector<MethodRun> run_methods(const Task& task, const EvalOptions& o, const std::vector<Featurized>& models,
                                   Progress& progress) {
  std::vector<MethodRun> out;
  const auto backend = kernels::make_backend("cpu");
  const ScoreSettings ss = eval_score_settings(task);
  const Featurized& m0 = models.front();
  auto score = [&](const std::string& name, const MethodView& v, const FeatureSource& tb, const FeatureSource& qb,
                   Clock::time_point t0, bool ranks) {
    MethodRun r;
    r.name = name;
    r.description = v.description;
    r.scores = score_all(v.train ? *v.train : tb, v.query ? *v.query : qb, *backend, ss, progress);
    r.seconds = seconds_since(t0);
    r.self_influence_ranks = ranks;
    spdlog::info("method {}: {:.2f} s", name, r.seconds);
    out.push_back(std::move(r));
  };
  for (const Method m : {Method::tracin, Method::grad_dot, Method::grad_cos}) {
    const auto t0 = Clock::now();
    const MethodView v = make_method_view({m, -1}, m0.train, m0.query);
    score(method_name(m), v, m0.train, m0.query, t0, m != Method::grad_cos);
  }
  auto trak = [&](const std::string& name, const FeatureSource& tr, const FeatureSource& qu,
                  const std::vector<std::pair<const Featurized*, size_t>>& ckpts) {
    const auto t0 = Clock::now();
    const Config c = eval_config(o, "");
    std::vector<std::vector<double>> q;
    for (const auto& [f, ck] : ckpts) q.push_back(out_to_loss(c, f->run, ck, task.train));
    auto k = std::make_shared<const TrakKernel>(trak_kernel(tr, q, o.trak_lambda));
    const MethodView v = make_method_view({Method::trak, -1}, tr, qu, k);
    score(name, v, tr, qu, t0, true);
  };
  std::vector<std::pair<const Featurized*, size_t>> ck0;
  for (size_t c = 0; c < m0.run.checkpoints.size(); ++c) ck0.push_back({&m0, c});
  trak("trak", m0.train, m0.query, ck0);
  if (models.size() > 1) {
    ConcatSource tr, qu;
    std::vector<std::pair<const Featurized*, size_t>> cks;
    for (const auto& f : models) {
      tr.add(f.train);
      qu.add(f.query);
      for (size_t c = 0; c < f.run.checkpoints.size(); ++c) cks.push_back({&f, c});
    }
    trak("trak_ens" + std::to_string(models.size()), tr, qu, cks);
  }
  return out;
}

std::vector<Featurized> featurize_models(const Task& task, const EvalOptions& o, const std::string& dir, int64_t models,
                                         Progress& progress) {
  std::vector<Featurized> out;
  for (int64_t e = 0; e < models; ++e)
    out.push_back(train_and_featurize(task, o, (fs::path(dir) / ("model-" + std::to_string(e))).string(), e, progress));
  return out;
}

// Rows of subset s: round(alpha n) rows by a partial Fisher-Yates on the subset's seed, ascending.
std::vector<int64_t> subset_rows(int64_t n, double alpha, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  const auto m = static_cast<size_t>(std::llround(alpha * static_cast<double>(n)));
  for (size_t i = 0; i < m; ++i) std::swap(p[i], p[i + draw_below(rng, static_cast<uint64_t>(n) - i)]);
  p.resize(m);
  std::sort(p.begin(), p.end());
  return p;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json ci_json(const MeanCi& c) { return {{"mean", c.mean}, {"ci95", {c.lo, c.hi}}, {"n", c.n}}; }

}  // namespace

nlohmann::json recipe_json(const Recipe& r) {
  nlohmann::json phases = nlohmann::json::array();
  for (const auto& p : r.phases) phases.push_back({{"epochs", p.epochs}, {"lr", p.lr}});
  return {{"model", r.model.empty() ? "built-in MLP" : r.model},
          {"hidden", r.hidden},
          {"init_seed", std::to_string(r.init_seed)},
          {"optimizer", r.optimizer},
          {"momentum", r.momentum},
          {"weight_decay", r.weight_decay},
          {"phases", phases},
          {"batch_size", r.batch_size},
          {"seed", std::to_string(r.seed)}};
}

std::vector<int64_t> flip_labels(connectors::Dataset& train, double fraction, uint64_t seed, int64_t classes) {
  ATTRACE_CHECK(fraction >= 0 && fraction <= 1, InputError, "--fraction must be in [0, 1]");
  ATTRACE_CHECK(classes >= 2, InputError, "flipping labels needs at least 2 classes");
  auto rows = subset_rows(train.size(), fraction, seed);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  for (const int64_t i : rows) {
    auto& y = train.class_targets[static_cast<size_t>(i)];
    y = (y + 1 + static_cast<int64_t>(draw_below(rng, static_cast<uint64_t>(classes - 1)))) % classes;
  }
  return rows;
}

double auc(const std::vector<double>& score, const std::vector<uint8_t>& positive) {
  const size_t n = score.size();
  std::vector<size_t> o(n);
  std::iota(o.begin(), o.end(), 0);
  std::sort(o.begin(), o.end(), [&](size_t a, size_t b) { return score[a] < score[b] || (score[a] == score[b] && a < b); });
  // Sum of positive ranks (average ranks over ties), Mann-Whitney U.
  double rank_sum = 0;
  int64_t pos = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && score[o[j + 1]] == score[o[i]]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j) + 1.0;
    for (size_t k = i; k <= j; ++k)
      if (positive[o[k]]) {
        rank_sum += avg;
        ++pos;
      }
    i = j + 1;
  }
  const int64_t neg = static_cast<int64_t>(n) - pos;
  ATTRACE_CHECK(pos > 0 && neg > 0, InputError, "AUC needs positives and negatives");
  const double p = static_cast<double>(pos);
  return (rank_sum - p * (p + 1) / 2) / (p * static_cast<double>(neg));
}

double recall_at(const std::vector<double>& score, const std::vector<uint8_t>& positive, double fraction) {
  const size_t n = score.size();
  std::vector<size_t> o(n);
  std::iota(o.begin(), o.end(), 0);
  std::sort(o.begin(), o.end(), [&](size_t a, size_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); });
  const auto top = static_cast<size_t>(std::llround(fraction * static_cast<double>(n)));
  int64_t found = 0, total = 0;
  for (size_t i = 0; i < n; ++i) {
    total += positive[o[i]];
    if (i < top) found += positive[o[i]];
  }
  return total > 0 ? static_cast<double>(found) / static_cast<double>(total) : 0.0;
}

namespace {
std::vector<double> average_ranks(const std::vector<double>& v) {
  const size_t n = v.size();
  std::vector<size_t> o(n);
  std::iota(o.begin(), o.end(), 0);
  std::sort(o.begin(), o.end(), [&](size_t a, size_t b) { return v[a] < v[b] || (v[a] == v[b] && a < b); });
  std::vector<double> r(n);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && v[o[j + 1]] == v[o[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[o[k]] = 0.5 * static_cast<double>(i + j) + 1.0;
    i = j + 1;
  }
  return r;
}
}  // namespace

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  ATTRACE_CHECK(a.size() == b.size() && a.size() >= 2, InputError, "spearman: needs two equal-length vectors of >= 2 values");
  const auto ra = average_ranks(a), rb = average_ranks(b);
  const double n = static_cast<double>(a.size());
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ma += ra[i];
    mb += rb[i];
  }
  ma /= n;
  mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  if (saa == 0 || sbb == 0) return std::numeric_limits<double>::quiet_NaN();
  return sab / std::sqrt(saa * sbb);
}

std::vector<double> lds_per_query(const std::vector<double>& scores, int64_t n_train, int64_t n_query,
                                  const std::vector<uint8_t>& masks, const std::vector<double>& outputs, int64_t m) {
  ATTRACE_CHECK(static_cast<int64_t>(scores.size()) == n_train * n_query && static_cast<int64_t>(masks.size()) == m * n_train &&
                    static_cast<int64_t>(outputs.size()) == m * n_query,
                InputError, "lds: scores, masks and outputs have inconsistent sizes");
  // predicted(s, j) = sum over kept rows i ascending of score(i, j).
  std::vector<double> pred(static_cast<size_t>(m * n_query), 0.0);
  for (int64_t s = 0; s < m; ++s)
    for (int64_t i = 0; i < n_train; ++i)
      if (masks[static_cast<size_t>(s * n_train + i)]) {
        const double* row = scores.data() + i * n_query;
        double* p = pred.data() + s * n_query;
        for (int64_t j = 0; j < n_query; ++j) p[j] += row[j];
      }
  std::vector<double> out(static_cast<size_t>(n_query));
  std::vector<double> a(static_cast<size_t>(m)), b(static_cast<size_t>(m));
  for (int64_t j = 0; j < n_query; ++j) {
    for (int64_t s = 0; s < m; ++s) {
      a[static_cast<size_t>(s)] = pred[static_cast<size_t>(s * n_query + j)];
      b[static_cast<size_t>(s)] = outputs[static_cast<size_t>(s * n_query + j)];
    }
    out[static_cast<size_t>(j)] = spearman(a, b);
  }
  return out;
}

MeanCi bootstrap_mean(const std::vector<double>& v, int64_t resamples, uint64_t seed, double level) {
  std::vector<double> f;
  for (const double x : v)
    if (std::isfinite(x)) f.push_back(x);
  MeanCi r;
  r.n = static_cast<int64_t>(f.size());
  if (f.empty()) return r;
  double s = 0;
  for (const double x : f) s += x;
  r.mean = s / static_cast<double>(f.size());
  std::mt19937_64 rng(seed);
  std::vector<double> means(static_cast<size_t>(std::max<int64_t>(resamples, 1)));
  for (auto& mv : means) {
    double t = 0;
    for (size_t i = 0; i < f.size(); ++i) t += f[draw_below(rng, f.size())];
    mv = t / static_cast<double>(f.size());
  }
  std::sort(means.begin(), means.end());
  const double tail = (1 - level) / 2;
  auto pick = [&](double p) {
    const auto k = static_cast<size_t>(std::clamp(std::floor(p * static_cast<double>(means.size())), 0.0,
                                                  static_cast<double>(means.size() - 1)));
    return means[k];
  };
  r.lo = pick(tail);
  r.hi = pick(1 - tail);
  return r;
}

nlohmann::json run_noisy(const Task& task_in, const EvalOptions& o, const NoisyOptions& no) {
  const auto t0 = Clock::now();
  Task task = task_in;
  const auto flipped = flip_labels(task.train, no.fraction, no.seed, class_count(task));
  std::vector<uint8_t> is_flipped(static_cast<size_t>(task.train.size()), 0);
  for (const auto i : flipped) is_flipped[static_cast<size_t>(i)] = 1;
  spdlog::info("noisy: {} of {} training labels flipped (seed {})", flipped.size(), task.train.size(), no.seed);
  Progress progress(!o.quiet);
  const auto models = featurize_models(task, o, (fs::path(o.out_dir) / "work" / "noisy").string(), o.ensemble, progress);
  const double feat_s = models.front().seconds;
  const auto runs = run_methods(task, o, models, progress);
  nlohmann::json methods = nlohmann::json::array();
  for (const auto& r : runs) {
    nlohmann::json m = {{"method", r.name}, {"description", r.description}, {"seconds", r.seconds}};
    if (!r.self_influence_ranks) {
      m["applicable"] = false;
      m["note"] = "unit-norm features: every self-influence is the same, no ranking";
    } else {
      const auto& si = r.scores.self_influence;
      m["applicable"] = true;
      m["auc"] = auc(si, is_flipped);
      m["found_top5"] = recall_at(si, is_flipped, 0.05);
      m["found_top10"] = recall_at(si, is_flipped, 0.10);
      m["found_top20"] = recall_at(si, is_flipped, 0.20);
      spdlog::info("noisy {}: AUC {:.4f}, found in top 5/10/20%: {:.3f} {:.3f} {:.3f}", r.name, m["auc"].get<double>(),
                   m["found_top5"].get<double>(), m["found_top10"].get<double>(), m["found_top20"].get<double>());
    }
    methods.push_back(m);
  }
  return {{"fraction", no.fraction},
          {"seed", std::to_string(no.seed)},
          {"flipped", flipped.size()},
          {"n_train", task.train.size()},
          {"models", models.size()},
          {"featurize_seconds_per_model", feat_s},
          {"seconds", seconds_since(t0)},
          {"methods", methods}};
}

void read_ground_truth(const std::string& path, const Task& task, std::vector<uint8_t>& masks, std::vector<double>& outputs,
                       int64_t& m);  // eval_ground_truth.cpp

nlohmann::json run_lds(const Task& task, const EvalOptions& o, const LdsOptions& lo) {
  const auto t0 = Clock::now();
  const int64_t n = task.train.size(), nq = task.query.size();
  int64_t M = lo.subsets;
  ATTRACE_CHECK(M >= 2, InputError, "--subsets must be >= 2, got " + std::to_string(M));
  ATTRACE_CHECK(lo.alpha > 0 && lo.alpha < 1, InputError, "--alpha must be in (0, 1)");
  const fs::path work = fs::path(o.out_dir) / "work";
  fs::create_directories(work / "lds");
  std::vector<uint8_t> masks(static_cast<size_t>(M * n), 0);
  std::vector<double> outputs(static_cast<size_t>(M * nq), 0.0);
  double retrain_s = 0;
  int64_t resumed = 0;
  std::string gt_source = "retrained by attrace";
  if (!lo.ground_truth.empty()) {
    read_ground_truth(lo.ground_truth, task, masks, outputs, M);
    gt_source = "read from " + lo.ground_truth;
    spdlog::info("lds: {} subsets of ground truth from {}", M, lo.ground_truth);
  } else {
    const std::string init = init_model(task, o.recipe, work.string());
    const std::string key = task_key(task, o.recipe, connectors::sha256_file(init), lo);
    auto record_path = [&](int64_t s) {
      char name[64];
      std::snprintf(name, sizeof name, "subset-%06lld.json", static_cast<long long>(s));
      return (work / "lds" / name).string();
    };
    std::vector<int64_t> todo;
    for (int64_t s = 0; s < M; ++s) {
      const auto rows = subset_rows(n, lo.alpha, lo.seed + static_cast<uint64_t>(s));
      for (const auto i : rows) masks[static_cast<size_t>(s * n + i)] = 1;
      const std::string p = record_path(s);
      if (!fs::exists(p)) {
        todo.push_back(s);
        continue;
      }
      nlohmann::json rec;
      try {
        rec = nlohmann::json::parse(read_text(p));
      } catch (const std::exception& e) {
        throw InputError(p + ": damaged subset record (" + e.what() + "); delete it to retrain that subset");
      }
      ATTRACE_CHECK(rec.value("key", "") == key, InputError,
                    p + ": recorded with other data, recipe or LDS settings; use a new --out directory");
      const auto& out = rec.at("outputs");
      ATTRACE_CHECK(out.is_array() && static_cast<int64_t>(out.size()) == nq, InputError, p + ": wrong number of outputs");
      for (int64_t j = 0; j < nq; ++j) outputs[static_cast<size_t>(s * nq + j)] = out[static_cast<size_t>(j)].get<double>();
      ++resumed;
    }
    if (resumed > 0) spdlog::info("lds: {} of {} subsets already recorded in {}, resuming", resumed, M, (work / "lds").string());
    const int workers = o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
    const auto tr = Clock::now();
    // Each subset is trained by one thread with one intra-op thread: its bits do not depend on
    // how many workers run.
    const int saved = at::get_num_threads();
    at::set_num_threads(1);
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::exception_ptr failure;
    Progress progress(!o.quiet);
    progress.begin("retraining on " + std::to_string(M) + " subsets (" + std::to_string(workers) + " workers)",
                   static_cast<int64_t>(todo.size()), "lds retraining");
    auto work_fn = [&] {
      try {
        Trainer trainer(init, task.train, o.recipe);
        for (size_t t; (t = next.fetch_add(1)) < todo.size();) {
          {
            std::lock_guard<std::mutex> g(mu);
            if (failure) return;
          }
          const int64_t s = todo[t];
          const auto rows = subset_rows(n, lo.alpha, lo.seed + static_cast<uint64_t>(s));
          auto m = trainer.train(rows, o.recipe.seed + lo.seed + static_cast<uint64_t>(s), [](size_t, torch::jit::Module&) {});
          const auto out = query_outputs(m, task.query, lo.margin);
          nlohmann::json rec = {{"format", "attrace.lds-subset/1"},
                                {"key", key},
                                {"subset", s},
                                {"rows", rows.size()},
                                {"mask", [&] {
                                   std::vector<uint8_t> mk(static_cast<size_t>(n), 0);
                                   for (const auto i : rows) mk[static_cast<size_t>(i)] = 1;
                                   return mk;
                                 }()},
                                {"rows_sha256", connectors::sha256_hex(std::string_view(
                                                    reinterpret_cast<const char*>(rows.data()), rows.size() * 8))},
                                {"outputs", out}};
          connectors::write_file_atomic(record_path(s), rec.dump() + "\n");  // fsync'ed, then renamed
          std::lock_guard<std::mutex> g(mu);
          for (int64_t j = 0; j < nq; ++j) outputs[static_cast<size_t>(s * nq + j)] = out[static_cast<size_t>(j)];
          progress.advance(1);
        }
      } catch (...) {
        std::lock_guard<std::mutex> g(mu);
        if (!failure) failure = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w) pool.emplace_back(work_fn);
    for (auto& t : pool) t.join();
    at::set_num_threads(saved);
    if (failure) std::rethrow_exception(failure);
    progress.end();
    retrain_s = seconds_since(tr);
  }
  Progress progress(!o.quiet);
  const auto models = featurize_models(task, o, (work / "lds-full").string(), o.ensemble, progress);
  const auto runs = run_methods(task, o, models, progress);
  nlohmann::json methods = nlohmann::json::array();
  std::vector<std::pair<double, std::string>> ranking;
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto per = lds_per_query(runs[r].scores.scores, n, nq, masks, outputs, M);
    const auto ci = bootstrap_mean(per, lo.bootstrap, lo.seed * 31 + 7);
    spdlog::info("lds {}: {:.4f} [{:.4f}, {:.4f}] over {} queries", runs[r].name, ci.mean, ci.lo, ci.hi, ci.n);
    nlohmann::json m = {{"method", runs[r].name}, {"description", runs[r].description}, {"seconds", runs[r].seconds},
                        {"lds", ci_json(ci)}};
    methods.push_back(m);
    ranking.push_back({ci.mean, runs[r].name});
  }
  std::stable_sort(ranking.begin(), ranking.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  nlohmann::json rank = nlohmann::json::array();
  for (const auto& [v, name] : ranking) rank.push_back(name);
  return {{"subsets", M},
          {"alpha", lo.alpha},
          {"seed", std::to_string(lo.seed)},
          {"output", lo.margin ? "margin" : "negative loss"},
          {"ground_truth", gt_source},
          {"resumed_subsets", resumed},
          {"retrain_seconds", retrain_s},
          {"n_train", n},
          {"n_query", nq},
          {"models", models.size()},
          {"featurize_seconds_per_model", models.front().seconds},
          {"bootstrap", lo.bootstrap},
          {"seconds", seconds_since(t0)},
          {"methods", methods},
          {"ranking", rank}};
}

void write_eval_outputs(const std::string& out_dir, const nlohmann::json& doc) {
  fs::create_directories(out_dir);
  connectors::write_file_atomic((fs::path(out_dir) / "eval.json").string(), doc.dump(2) + "\n");
  connectors::write_file_atomic((fs::path(out_dir) / "eval.html").string(), eval_html(doc));
}

}  // namespace attrace::engine::eval
