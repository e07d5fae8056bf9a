// Attribution methods as views of one featurization (engine/methods.hpp, docs/eval.md).
// Every float64 sum below runs in a fixed order owned by one thread (OpenMP splits rows or
// kernel entries, never a sum), so the bits do not depend on the thread count.
#include <attrace/engine/methods.hpp>

#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>

#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace attrace::engine {
namespace {

// Fixed-order float64 dot product in four lanes (q mod 4), combined (l0+l1)+(l2+l3): the
// order is part of the method's definition, independent of vector width and threads.
double dot4(const double* a, const double* b, int64_t n) {
  double l0 = 0, l1 = 0, l2 = 0, l3 = 0;
  int64_t q = 0;
  for (; q + 4 <= n; q += 4) {
    l0 += a[q] * b[q];
    l1 += a[q + 1] * b[q + 1];
    l2 += a[q + 2] * b[q + 2];
    l3 += a[q + 3] * b[q + 3];
  }
  if (q < n) l0 += a[q] * b[q];
  if (q + 1 < n) l1 += a[q + 1] * b[q + 1];
  if (q + 2 < n) l2 += a[q + 2] * b[q + 2];
  return (l0 + l1) + (l2 + l3);
}

// Rows of the base source in float64 as stored (its own layout, not expanded).
void base_rows(const FeatureSource& f, size_t c, int64_t b0, int64_t b1, std::vector<double>& out) {
  const int64_t w = f.width(c);
  out.resize(static_cast<size_t>((b1 - b0) * w));
  if (f.fp64()) {
    f.read(c, b0, b1, out.data());
  } else {
    std::vector<float> tmp(out.size());
    f.read(c, b0, b1, tmp.data());
    for (size_t q = 0; q < tmp.size(); ++q) out[q] = tmp[q];
  }
}

// A view of checkpoints `ckpts` of the base with new weights: as stored (grad_dot), or each row
// expanded to its dense gradient in float64 and scaled to unit norm (grad_cos; factored rows are
// float32 factors, and a unit gradient is no longer a product of the stored factors' scale).
class ScaledView final : public FeatureSource {
 public:
  ScaledView(const FeatureSource& base, std::vector<size_t> ckpts, std::vector<double> weights, bool unit)
      : base_(base), ckpts_(std::move(ckpts)), weights_(std::move(weights)), unit_(unit) {}
  int64_t rows() const override { return base_.rows(); }
  size_t checkpoints() const override { return ckpts_.size(); }
  int64_t width(size_t c) const override { return unit_ ? dense_width(base_, ckpts_[c]) : base_.width(ckpts_[c]); }
  double weight(size_t c) const override { return weights_[c]; }
  bool fp64() const override { return unit_ || base_.fp64(); }
  FeatureLayout layout(size_t c) const override {
    return unit_ ? FeatureLayout{width(c), {}} : base_.layout(ckpts_[c]);
  }
  void read(size_t c, int64_t b0, int64_t b1, float* out) const override {
    ATTRACE_CHECK(!unit_, RuntimeFailure, "grad_cos view read as float32");
    base_.read(ckpts_[c], b0, b1, out);
  }
  void read(size_t c, int64_t b0, int64_t b1, double* out) const override {
    if (!unit_) {
      base_.read(ckpts_[c], b0, b1, out);
      return;
    }
    std::vector<double> rows;
    dense_rows(base_, ckpts_[c], b0, b1, rows);
    const int64_t w = width(c);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < b1 - b0; ++i) {
      const double* row = rows.data() + i * w;
      const double n2 = dot4(row, row, w);
      // A zero gradient has no direction: it stays zero (cosine 0 with everything).
      const double inv = n2 > 0 ? 1.0 / std::sqrt(n2) : 0.0;
      for (int64_t q = 0; q < w; ++q) out[i * w + q] = row[q] * inv;
    }
  }

 private:
  const FeatureSource& base_;
  std::vector<size_t> ckpts_;
  std::vector<double> weights_;
  bool unit_;
};

// TRAK's whitened rows: L_c^-1 phi (forward substitution, fixed order), times Q_i for training rows.
class TrakView final : public FeatureSource {
 public:
  TrakView(const FeatureSource& base, std::shared_ptr<const TrakKernel> k, bool train)
      : base_(base), k_(std::move(k)), train_(train) {}
  int64_t rows() const override { return base_.rows(); }
  size_t checkpoints() const override { return base_.checkpoints(); }
  int64_t width(size_t c) const override { return k_->dim[c]; }
  double weight(size_t) const override { return 1.0 / static_cast<double>(base_.checkpoints()); }
  bool fp64() const override { return true; }
  void read(size_t, int64_t, int64_t, float*) const override {
    throw RuntimeFailure("trak view read as float32");
  }
  void read(size_t c, int64_t b0, int64_t b1, double* out) const override {
    std::vector<double> rows;
    dense_rows(base_, c, b0, b1, rows);
    const int64_t k = k_->dim[c];
    const double* L = k_->chol[c].data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < b1 - b0; ++i) {
      const double* phi = rows.data() + i * k;
      double* y = out + i * k;
      for (int64_t a = 0; a < k; ++a) y[a] = (phi[a] - dot4(L + a * k, y, a)) / L[a * k + a];
      if (train_) {
        const double qi = k_->q[c][static_cast<size_t>(b0 + i)];
        for (int64_t a = 0; a < k; ++a) y[a] *= qi;
      }
    }
  }

 private:
  const FeatureSource& base_;
  std::shared_ptr<const TrakKernel> k_;
  bool train_;
};

std::string double_bits(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return std::to_string(u);
}

}  // namespace

std::string method_name(Method m) { return to_string(m); }

namespace {
// The first row of a source: a one-query scoring pass that yields the self-influence sink.
class FirstRow final : public FeatureSource {
 public:
  explicit FirstRow(const FeatureSource& b) : b_(b) {}
  int64_t rows() const override { return 1; }
  size_t checkpoints() const override { return b_.checkpoints(); }
  int64_t width(size_t c) const override { return b_.width(c); }
  double weight(size_t c) const override { return b_.weight(c); }
  bool fp64() const override { return b_.fp64(); }
  void read(size_t c, int64_t, int64_t, float* out) const override { b_.read(c, 0, 1, out); }
  void read(size_t c, int64_t, int64_t, double* out) const override { b_.read(c, 0, 1, out); }
  FeatureLayout layout(size_t c) const override { return b_.layout(c); }

 private:
  const FeatureSource& b_;
};
}  // namespace

void keep_tracin_self_influence(const Config& config, const MethodView& view, const FeatureSource& train,
                                const FeatureSource& query, kernels::Backend& backend, Progress& progress, ScoreResult& result) {
  if (!view.train || query.rows() == 0) return;
  ScoreSettings s;
  s.scoring = config.scoring;
  s.gemm_math = config.gemm_math;
  s.top_k = 0;
  s.memory_limit = config.memory_limit;
  s.tranche.assign(static_cast<size_t>(train.rows()), 0);
  s.n_tranches = 1;
  s.train_ids.assign(static_cast<size_t>(train.rows()), "");
  s.query_ids = {""};
  const FirstRow one(query);
  result.self_influence = score_all(train, one, backend, s, progress).self_influence;
}

int64_t dense_width(const FeatureSource& f, size_t c) {
  const FeatureLayout lay = f.layout(c);
  int64_t w = lay.dense;
  for (const auto& l : lay.factored) w += l.d_in * l.d_out;
  return w;
}

void dense_rows(const FeatureSource& f, size_t c, int64_t b0, int64_t b1, std::vector<double>& out) {
  const FeatureLayout lay = f.layout(c);
  if (lay.factored.empty()) {
    base_rows(f, c, b0, b1, out);
    return;
  }
  std::vector<double> rows;
  base_rows(f, c, b0, b1, rows);
  const int64_t w = f.width(c), dw = dense_width(f, c);
  out.assign(static_cast<size_t>((b1 - b0) * dw), 0.0);
  for (int64_t i = 0; i < b1 - b0; ++i) {
    const double* row = rows.data() + i * w;
    double* o = out.data() + i * dw;
    std::memcpy(o, row, static_cast<size_t>(lay.dense) * sizeof(double));
    int64_t at = lay.dense;
    for (const auto& l : lay.factored) {
      // Gradient (o, q) = sum_t delta_t[o] x_t[q], t ascending.
      for (int64_t t = 0; t < l.positions; ++t) {
        const double* x = row + l.offset + t * l.d_in;
        const double* d = row + l.delta_offset() + t * l.d_out;
        for (int64_t a = 0; a < l.d_out; ++a)
          for (int64_t q = 0; q < l.d_in; ++q) o[at + a * l.d_in + q] += d[a] * x[q];
      }
      at += l.d_in * l.d_out;
    }
  }
}

TrakKernel trak_kernel(const FeatureSource& train, const std::vector<std::vector<double>>& q, double lambda,
                       const std::string& features_id) {
  ATTRACE_CHECK(lambda > 0 && std::isfinite(lambda), InputError, "attribution.trak_lambda must be finite and > 0");
  ATTRACE_CHECK(q.size() == train.checkpoints(), InputError, "trak: one Q vector per checkpoint is needed");
  TrakKernel out;
  out.lambda = lambda;
  const int64_t n = train.rows();
  std::string key = features_id + "attrace.trak/1 lambda=" + double_bits(lambda) + " rows=" + std::to_string(n);
  for (size_t c = 0; c < train.checkpoints(); ++c) {
    const int64_t k = dense_width(train, c);
    ATTRACE_CHECK(k <= kTrakMaxDim, InputError,
                  "attribution.method = \"trak\": checkpoint " + std::to_string(c + 1) + " has " + std::to_string(k) +
                      " feature dimensions, above " + std::to_string(kTrakMaxDim) +
                      " (a k x k float64 kernel); use a projection (projection.kind = \"dense\", projection.k <= " +
                      std::to_string(kTrakMaxDim) + ")");
    ATTRACE_CHECK(static_cast<int64_t>(q[c].size()) == n, InputError, "trak: Q has the wrong number of rows");
    std::vector<double> K(static_cast<size_t>(k * k), 0.0), rows;
    constexpr int64_t kBlock = 1024;
    for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
      const int64_t b1 = std::min(n, b0 + kBlock);
      dense_rows(train, c, b0, b1, rows);
      // Entry (a, b), b <= a, adds rows in ascending order; each kernel row belongs to one thread.
#pragma omp parallel for schedule(dynamic, 16)
      for (int64_t a = 0; a < k; ++a) {
        double* Ka = K.data() + a * k;
        for (int64_t i = 0; i < b1 - b0; ++i) {
          const double* phi = rows.data() + i * k;
          const double pa = phi[a];
          if (pa == 0.0) continue;  // adds exactly nothing
          for (int64_t b = 0; b <= a; ++b) Ka[b] += pa * phi[b];
        }
      }
    }
    double diag = 0;
    for (int64_t a = 0; a < k; ++a) diag += K[static_cast<size_t>(a * k + a)];
    const double ridge = lambda * (diag > 0 ? diag / static_cast<double>(k) : 1.0);
    for (int64_t a = 0; a < k; ++a) K[static_cast<size_t>(a * k + a)] += ridge;
    // Left-looking Cholesky, column by column; L(i, j) for i > j computed by one thread each.
    std::vector<double> L(static_cast<size_t>(k * k), 0.0);
    for (int64_t j = 0; j < k; ++j) {
      const double d = K[static_cast<size_t>(j * k + j)] - dot4(L.data() + j * k, L.data() + j * k, j);
      ATTRACE_CHECK(d > 0 && std::isfinite(d), NumericError,
                    "trak: the kernel of checkpoint " + std::to_string(c + 1) + " is not positive definite at column " +
                        std::to_string(j) + "; raise attribution.trak_lambda");
      const double ljj = std::sqrt(d);
      L[static_cast<size_t>(j * k + j)] = ljj;
#pragma omp parallel for schedule(static)
      for (int64_t i = j + 1; i < k; ++i)
        L[static_cast<size_t>(i * k + j)] =
            (K[static_cast<size_t>(i * k + j)] - dot4(L.data() + i * k, L.data() + j * k, j)) / ljj;
    }
    out.dim.push_back(k);
    out.ridge.push_back(ridge);
    out.chol.push_back(std::move(L));
    out.q.push_back(q[c]);
    key += " c" + std::to_string(c) + " k=" + std::to_string(k) + " w=" + double_bits(train.weight(c)) + " q=" +
           connectors::sha256_hex(std::string_view(reinterpret_cast<const char*>(q[c].data()), q[c].size() * sizeof(double)));
  }
  out.key = connectors::sha256_hex(key);
  return out;
}

void save_trak_kernel(const std::string& path, const TrakKernel& k) {
  std::string bytes = "attrace.trak-kernel/1\n" + k.key + "\n" + double_bits(k.lambda) + "\n" + std::to_string(k.dim.size()) + "\n";
  for (size_t c = 0; c < k.dim.size(); ++c) {
    bytes += std::to_string(k.dim[c]) + " " + std::to_string(k.q[c].size()) + " " + double_bits(k.ridge[c]) + "\n";
    bytes.append(reinterpret_cast<const char*>(k.chol[c].data()), k.chol[c].size() * sizeof(double));
    bytes.append(reinterpret_cast<const char*>(k.q[c].data()), k.q[c].size() * sizeof(double));
  }
  bytes += connectors::sha256_hex(bytes) + "\n";
  connectors::write_file_atomic(path, bytes);
}

bool load_trak_kernel(const std::string& path, const std::string& key, TrakKernel& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  ATTRACE_CHECK(bytes.size() > 65 && bytes.back() == '\n', InputError, path + ": not a complete TRAK kernel file");
  const std::string body = bytes.substr(0, bytes.size() - 65);
  ATTRACE_CHECK(connectors::sha256_hex(body) == bytes.substr(bytes.size() - 65, 64), InputError,
                path + ": TRAK kernel file is damaged (checksum mismatch); delete it to recompute");
  size_t at = 0;
  auto line = [&] {
    const size_t e = body.find('\n', at);
    ATTRACE_CHECK(e != std::string::npos, InputError, path + ": TRAK kernel file is truncated");
    std::string l = body.substr(at, e - at);
    at = e + 1;
    return l;
  };
  ATTRACE_CHECK(line() == "attrace.trak-kernel/1", InputError, path + ": not a TRAK kernel file");
  TrakKernel k;
  k.key = line();
  if (k.key != key) return false;
  const uint64_t lam = std::stoull(line());
  std::memcpy(&k.lambda, &lam, sizeof lam);
  const size_t C = std::stoull(line());
  for (size_t c = 0; c < C; ++c) {
    std::istringstream hdr(line());
    int64_t dim = 0;
    size_t rows = 0;
    uint64_t ridge = 0;
    hdr >> dim >> rows >> ridge;
    const size_t nl = static_cast<size_t>(dim * dim), need = (nl + rows) * sizeof(double);
    ATTRACE_CHECK(dim > 0 && at + need <= body.size(), InputError, path + ": TRAK kernel file is truncated");
    k.dim.push_back(dim);
    double r;
    std::memcpy(&r, &ridge, sizeof r);
    k.ridge.push_back(r);
    k.chol.emplace_back(nl);
    std::memcpy(k.chol.back().data(), body.data() + at, nl * sizeof(double));
    at += nl * sizeof(double);
    k.q.emplace_back(rows);
    std::memcpy(k.q.back().data(), body.data() + at, rows * sizeof(double));
    at += rows * sizeof(double);
  }
  out = std::move(k);
  return true;
}

std::vector<double> out_to_loss(const Config& config, const connectors::TrainingRun& run, size_t c,
                                const connectors::Dataset& ds) {
  const int64_t n = ds.size();
  std::vector<double> q(static_cast<size_t>(n), 1.0);
  if (config.loss != Loss::cross_entropy) return q;
  const std::string& file = run.checkpoints.at(c).path;
  torch::jit::Module m;
  try {
    m = torch::jit::load(file);
  } catch (const std::exception& e) {
    throw InputError(file + ": cannot load the checkpoint for TRAK's out-to-loss term: " + e.what());
  }
  m.to(torch::kDouble);
  m.eval();
  torch::NoGradGuard ng;
  // One intra-op thread: LibTorch's matrix products may split sums over threads.
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  std::vector<int64_t> shape = ds.input_shape;
  const int64_t per = ds.example_width();
  const bool token_ids = ds.input_kind == connectors::InputKind::integers;  // passed as int64, as the featurizer does
  try {
    for (int64_t b0 = 0; b0 < n; b0 += 256) {
      const int64_t b1 = std::min(n, b0 + 256);
      shape[0] = b1 - b0;
      auto x = token_ids ? torch::from_blob(const_cast<int32_t*>(ds.int_inputs.data()) + b0 * per, shape, torch::kInt).to(torch::kLong)
                         : torch::from_blob(const_cast<float*>(ds.inputs.data()) + b0 * per, shape, torch::kFloat).to(torch::kDouble);
      auto p = torch::softmax(m.forward({x}).toTensor(), 1).contiguous();
      const double* pp = p.data_ptr<double>();
      const int64_t classes = p.size(1);
      for (int64_t i = b0; i < b1; ++i) {
        const int64_t y = ds.class_targets[static_cast<size_t>(i)];
        ATTRACE_CHECK(y >= 0 && y < classes, InputError,
                      ds.path + ": example '" + ds.ids[static_cast<size_t>(i)] + "' has label " + std::to_string(y) +
                          " outside the model's " + std::to_string(classes) + " classes");
        q[static_cast<size_t>(i)] = 1.0 - pp[(i - b0) * classes + y];
      }
    }
  } catch (...) {
    at::set_num_threads(saved);
    throw;
  }
  at::set_num_threads(saved);
  return q;
}

MethodView make_method_view(const MethodSettings& s, const FeatureSource& train, const FeatureSource& query,
                            std::shared_ptr<const TrakKernel> kernel) {
  MethodView v;
  const size_t C = train.checkpoints();
  ATTRACE_CHECK(C > 0 && query.checkpoints() == C, InputError, "method view: train and query have different checkpoints");
  switch (s.method) {
    case Method::tracin:
      v.description = "TracIn: sum over checkpoints of weight_c <f_c(i), f_c(z)>";
      break;
    case Method::grad_dot: {
      ATTRACE_CHECK(s.checkpoint < static_cast<int64_t>(C), InputError,
                    "attribution.checkpoint = " + std::to_string(s.checkpoint) + ", but the run has " + std::to_string(C) +
                        " checkpoints (0-based)");
      const size_t c = s.checkpoint < 0 ? C - 1 : static_cast<size_t>(s.checkpoint);
      v.train = std::make_shared<ScaledView>(train, std::vector<size_t>{c}, std::vector<double>{train.weight(c)}, false);
      v.query = std::make_shared<ScaledView>(query, std::vector<size_t>{c}, std::vector<double>{query.weight(c)}, false);
      v.description = "Grad-Dot: weight_c <f_c(i), f_c(z)> at checkpoint " + std::to_string(c) + " (0-based)";
      break;
    }
    case Method::grad_cos: {
      std::vector<size_t> all(C);
      for (size_t c = 0; c < C; ++c) all[c] = c;
      const std::vector<double> w(C, 1.0 / static_cast<double>(C));
      v.train = std::make_shared<ScaledView>(train, all, w, true);
      v.query = std::make_shared<ScaledView>(query, all, w, true);
      v.description = "Grad-Cos: mean over checkpoints of the cosine of the two gradients (float64 norms)";
      break;
    }
    case Method::trak: {
      ATTRACE_CHECK(kernel != nullptr && kernel->dim.size() == C, InputError, "trak: no kernel for these features");
      for (size_t c = 0; c < C; ++c)
        ATTRACE_CHECK(dense_width(query, c) == kernel->dim[c] && static_cast<int64_t>(kernel->q[c].size()) == train.rows(),
                      InputError, "trak: the kernel was computed from other features");
      v.kernel = kernel;
      v.train = std::make_shared<TrakView>(train, kernel, true);
      v.query = std::make_shared<TrakView>(query, kernel, false);
      v.description = "TRAK: mean over checkpoints of Q_i phi_i^T (Phi^T Phi + lambda I)^-1 phi_z, lambda = " +
                      std::to_string(kernel->lambda) + " x mean diagonal";
      break;
    }
  }
  return v;
}

MethodView method_view(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train_ds,
                       const FeatureSource& train, const FeatureSource& query, const std::string& cache_path,
                       const std::string& features_id) {
  const MethodSettings s{config.method, config.method_checkpoint};
  if (config.method != Method::trak) return make_method_view(s, train, query);
  // A dataset rebuilt from a store has digests, not inputs: Q needs the inputs themselves.
  connectors::Dataset read_back;
  const connectors::Dataset* ds = &train_ds;
  if (train_ds.inputs.empty() && train_ds.int_inputs.empty() && train_ds.size() > 0) {
    read_back = connectors::read_dataset(config.train_file, true);
    ATTRACE_CHECK(read_back.ids == train_ds.ids, InputError,
                  config.train_file + ": its example ids differ from the feature store's; TRAK's Q needs the same examples");
    ds = &read_back;
  }
  std::vector<std::vector<double>> q;
  for (size_t c = 0; c < train.checkpoints(); ++c) q.push_back(out_to_loss(config, run, c, *ds));
  auto k = std::make_shared<TrakKernel>();
  bool cached = false;
  if (!cache_path.empty()) {
    // The key needs Q and the features' shape only; compute it the way trak_kernel does.
    std::string key = features_id + "attrace.trak/1 lambda=" + double_bits(config.trak_lambda) + " rows=" + std::to_string(train.rows());
    for (size_t c = 0; c < train.checkpoints(); ++c)
      key += " c" + std::to_string(c) + " k=" + std::to_string(dense_width(train, c)) + " w=" + double_bits(train.weight(c)) +
             " q=" + connectors::sha256_hex(std::string_view(reinterpret_cast<const char*>(q[c].data()), q[c].size() * sizeof(double)));
    cached = load_trak_kernel(cache_path, connectors::sha256_hex(key), *k);
  }
  if (!cached) {
    *k = trak_kernel(train, q, config.trak_lambda, features_id);
    if (!cache_path.empty()) save_trak_kernel(cache_path, *k);
  }
  return make_method_view(s, train, query, k);
}

}  // namespace attrace::engine
