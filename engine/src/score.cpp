#include <attrace/engine/score.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/topk_order.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace attrace::engine {

size_t MemoryFeatures::add_checkpoint(int64_t width, double weight) { return add_checkpoint(FeatureLayout{width, {}}, weight); }

size_t MemoryFeatures::add_checkpoint(const FeatureLayout& layout, double weight) {
  const int64_t width = layout.width();
  ATTRACE_CHECK(width >= 0 && (width == 0 || rows_ <= std::numeric_limits<int64_t>::max() / width), InputError,
                "size overflow holding features in memory");
  ATTRACE_CHECK(layout.factored.empty() || !fp64_, RuntimeFailure, "factored features are float32");
  widths_.push_back(width);
  layouts_.push_back(layout);
  weights_.push_back(weight);
  if (fp64_)
    f64_.emplace_back(static_cast<size_t>(rows_ * width));
  else
    f32_.emplace_back(static_cast<size_t>(rows_ * width));
  return widths_.size() - 1;
}

void MemoryFeatures::read(size_t c, int64_t b0, int64_t b1, float* out) const {
  ATTRACE_CHECK(!fp64_, RuntimeFailure, "float32 read of float64 features");
  std::copy(f32_[c].begin() + b0 * widths_[c], f32_[c].begin() + b1 * widths_[c], out);
}
void MemoryFeatures::read(size_t c, int64_t b0, int64_t b1, double* out) const {
  ATTRACE_CHECK(fp64_, RuntimeFailure, "float64 read of float32 features");
  std::copy(f64_[c].begin() + b0 * widths_[c], f64_[c].begin() + b1 * widths_[c], out);
}

StoreFeatures::StoreFeatures(const connectors::FeatureStoreReader& store) : store_(store) {
  const auto& l = store.layout();
  for (size_t c = 0; c < l.checkpoints.size(); ++c) {
    const std::string what = store.path() + ": checkpoint " + std::to_string(c) + " meta";
    nlohmann::json meta;
    try {
      meta = nlohmann::json::parse(l.checkpoints[c].meta);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(what + " is not JSON: " + e.what());
    }
    layouts_.push_back(checkpoint_use_from_json(meta, what).layout);
    ATTRACE_CHECK(layouts_.back().width() == l.checkpoints[c].width, InputError,
                  what + " describes rows of " + std::to_string(layouts_.back().width()) + " columns but the store holds " +
                      std::to_string(l.checkpoints[c].width));
    ATTRACE_CHECK(layouts_.back().factored.empty() || l.dtype != connectors::FeatureDtype::f64, InputError,
                  what + " describes factored layers in a float64 store (factors are float32)");
  }
}

int64_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), size = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && size > 0 ? static_cast<int64_t>(pages) * size : 0;
}

std::string gib(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g GiB", bytes / 1073741824.0);
  return buf;
}

namespace {

// The one top-k order of attrace (kernels/topk_order.hpp, shared with the CPU and CUDA kernels).
bool ranks_before(const kernels::TopEntry& a, const kernels::TopEntry& b, bool high) {
  return kernels::ranks_before(a.score, a.row, b.score, b.row, high);
}

// Running top-k lists of every query of a query tile, fed tile by tile with training rows in
// ascending order. A row enters a column's heap only if it beats the column's current k-th entry
// (a contiguous threshold array is scanned, the heaps are touched rarely); since later rows lose
// ties, a strict comparison is exact. The lists are the unique answer under (score, row), so any
// split of the rows into tiles, and the column ranges given to threads, give the same lists.
class TopKSink {
 public:
  TopKSink(int64_t columns, int64_t k)
      : k_(k), hi_(static_cast<size_t>(columns)), lo_(static_cast<size_t>(columns)),
        thr_hi_(static_cast<size_t>(columns), -std::numeric_limits<double>::infinity()),
        thr_lo_(static_cast<size_t>(columns), std::numeric_limits<double>::infinity()),
        full_(static_cast<size_t>(columns), 0) {}

  // Rows [t0, t0 + nt) of the score tile (nt x columns, row-major, finite).
  void add(const double* tile, int64_t t0, int64_t nt) {
    const auto m = static_cast<int64_t>(hi_.size());
    constexpr int64_t kBlock = 512;  // columns per work item: one thread owns a column's lists
    const int64_t blocks = (m + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t j0 = b * kBlock, j1 = std::min(m, j0 + kBlock);
      for (int64_t i = 0; i < nt; ++i) {
        const double* row = tile + i * m;
        for (int64_t j = j0; j < j1; ++j) {
          const double v = row[j];
          const auto uj = static_cast<size_t>(j);
          if (full_[uj] && v <= thr_hi_[uj] && v >= thr_lo_[uj]) continue;
          push(uj, {t0 + i, v});
        }
      }
    }
  }

  // Best-first lists per column.
  std::vector<kernels::TopK> take() {
    std::vector<kernels::TopK> out(hi_.size());
    for (size_t j = 0; j < hi_.size(); ++j) {
      std::sort_heap(hi_[j].begin(), hi_[j].end(), better_high);
      std::sort_heap(lo_[j].begin(), lo_[j].end(), better_low);
      out[j].proponents = std::move(hi_[j]);
      out[j].opponents = std::move(lo_[j]);
    }
    return out;
  }

 private:
  static bool better_high(const kernels::TopEntry& a, const kernels::TopEntry& b) { return ranks_before(a, b, true); }
  static bool better_low(const kernels::TopEntry& a, const kernels::TopEntry& b) { return ranks_before(a, b, false); }

  template <class Better>
  void push_one(std::vector<kernels::TopEntry>& heap, kernels::TopEntry e, Better better) {
    if (static_cast<int64_t>(heap.size()) < k_) {
      heap.push_back(e);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(e, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = e;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }

  void push(size_t j, kernels::TopEntry e) {
    push_one(hi_[j], e, better_high);
    push_one(lo_[j], e, better_low);
    if (static_cast<int64_t>(hi_[j].size()) == k_) {
      full_[j] = 1;
      thr_hi_[j] = hi_[j].front().score;  // the worst kept entry: later rows must beat it strictly
      thr_lo_[j] = lo_[j].front().score;
    }
  }

  int64_t k_;
  std::vector<std::vector<kernels::TopEntry>> hi_, lo_;
  std::vector<double> thr_hi_, thr_lo_;
  std::vector<char> full_;
};

// Features of one checkpoint for a range of rows, in the source's precision.
struct Tile {
  std::vector<float> f32;
  std::vector<double> f64;
};

bool any_factored(const FeatureSource& f) {
  for (size_t c = 0; c < f.checkpoints(); ++c)
    if (!f.layout(c).factored.empty()) return true;
  return false;
}

// The dot-product kernel of the scoring setting, for float32 rows. Self-influence takes the
// fixed-order kernel of the setting (FMA, or canonical for canonical and blas), as dense rows do.
struct DotKernel {
  kernels::Backend& backend;
  Scoring scoring;
  kernels::GemmMath math;

  void score(kernels::HostMatrix<float> a, kernels::HostMatrix<float> b, kernels::HostMatrixMut<double> out) const {
    if (scoring == Scoring::blas)
      backend.score_accumulate_blas(a, b, 1.0, math, out);
    else if (scoring == Scoring::fma)
      backend.score_accumulate_fma(a, b, 1.0, out);
    else
      backend.score_accumulate(a, b, 1.0, out);
  }
  void self_score(kernels::HostMatrix<float> a, kernels::HostMatrixMut<double> out) const {
    if (scoring == Scoring::fma)
      backend.score_accumulate_fma(a, a, 1.0, out);
    else
      backend.score_accumulate(a, a, 1.0, out);
  }
  void sqnorm(kernels::HostMatrix<float> a, double* out) const {
    if (scoring == Scoring::fma)
      backend.sqnorm_accumulate_fma(a, 1.0, out);
    else
      backend.sqnorm_accumulate(a, 1.0, out);
  }
};

// Scratch of the factored scorer, reused across tiles.
struct FactoredScratch {
  std::vector<float> xa, da, xb, db;
  std::vector<double> gx, gd, sx, sd;
};

// Rows [r0, r1) of the block of `cols` columns at `offset` of rows of width w, made contiguous.
kernels::HostMatrix<float> gathered(const float* f, int64_t r0, int64_t r1, int64_t w, int64_t offset, int64_t cols,
                                    int64_t positions, std::vector<float>& buf) {
  const int64_t n = r1 - r0;
  if (positions == 1) return {f + r0 * w + offset, n, cols, w};  // one row per example: a strided view
  buf.resize(static_cast<size_t>(n * positions * cols));
  for (int64_t r = 0; r < n; ++r)
    std::copy(f + (r0 + r) * w + offset, f + (r0 + r) * w + offset + positions * cols, buf.begin() + r * positions * cols);
  return kernels::view(static_cast<const float*>(buf.data()), n * positions, cols);
}

// out[i][j] += alpha * sum_{t,s} <x_it, x_js> <delta_it, delta_js> for one factored layer: a (na
// rows) against b (nb rows), both rows of width w; out is na x nb with row stride ldo. The Gram
// blocks are computed in pieces of at most `cap` float64 entries each; every (i, j) sums its
// T^2 products in (t, s) order, so the pieces change no bit.
void factored_scores(const FactoredLayer& l, const float* a, int64_t na, const float* b, int64_t nb, int64_t w, double alpha,
                     const DotKernel& k, double* out, int64_t ldo, int64_t cap, FactoredScratch& sc) {
  const int64_t t_n = l.positions, t2 = t_n * t_n;
  int64_t qb = nb, rb = 1;
  if (t2 * nb <= cap)
    rb = std::max<int64_t>(1, cap / (t2 * nb));
  else
    qb = std::max<int64_t>(1, cap / t2);
  for (int64_t j0 = 0; j0 < nb; j0 += qb) {
    const int64_t j1 = std::min(nb, j0 + qb), nj = j1 - j0;
    const auto xb = gathered(b, j0, j1, w, l.offset, l.d_in, t_n, sc.xb);
    const auto db = gathered(b, j0, j1, w, l.delta_offset(), l.d_out, t_n, sc.db);
    for (int64_t i0 = 0; i0 < na; i0 += rb) {
      const int64_t i1 = std::min(na, i0 + rb), ni = i1 - i0;
      const auto xa = gathered(a, i0, i1, w, l.offset, l.d_in, t_n, sc.xa);
      const auto da = gathered(a, i0, i1, w, l.delta_offset(), l.d_out, t_n, sc.da);
      const int64_t gr = ni * t_n, gc = nj * t_n;
      sc.gx.assign(static_cast<size_t>(gr * gc), 0.0);
      sc.gd.assign(static_cast<size_t>(gr * gc), 0.0);
      k.score(xa, xb, kernels::view_mut(sc.gx.data(), gr, gc));
      k.score(da, db, kernels::view_mut(sc.gd.data(), gr, gc));
      const double* gx = sc.gx.data();
      const double* gd = sc.gd.data();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < ni; ++i)
        for (int64_t j = 0; j < nj; ++j) {
          double v = 0.0;
          for (int64_t t = 0; t < t_n; ++t) {
            const int64_t at = (i * t_n + t) * gc + j * t_n;
            for (int64_t u = 0; u < t_n; ++u) v += gx[at + u] * gd[at + u];
          }
          out[(i0 + i) * ldo + j0 + j] += alpha * v;
        }
    }
  }
}

// self[i] += alpha * sum_{t,s} <x_it, x_is> <delta_it, delta_is>: the same value factored_scores
// gives for the pair (i, i) (same kernel on the same rows, same order of the products).
void factored_self(const FactoredLayer& l, const float* a, int64_t na, int64_t w, double alpha, const DotKernel& k,
                   double* self, FactoredScratch& sc) {
  const int64_t t_n = l.positions;
  if (t_n == 1) {
    sc.sx.assign(static_cast<size_t>(na), 0.0);
    sc.sd.assign(static_cast<size_t>(na), 0.0);
    k.sqnorm({a + l.offset, na, l.d_in, w}, sc.sx.data());
    k.sqnorm({a + l.delta_offset(), na, l.d_out, w}, sc.sd.data());
    for (int64_t i = 0; i < na; ++i) {
      double v = 0.0;
      v += sc.sx[static_cast<size_t>(i)] * sc.sd[static_cast<size_t>(i)];
      self[i] += alpha * v;
    }
    return;
  }
  for (int64_t i = 0; i < na; ++i) {
    sc.gx.assign(static_cast<size_t>(t_n * t_n), 0.0);
    sc.gd.assign(static_cast<size_t>(t_n * t_n), 0.0);
    k.self_score({a + i * w + l.offset, t_n, l.d_in, l.d_in}, kernels::view_mut(sc.gx.data(), t_n, t_n));
    k.self_score({a + i * w + l.delta_offset(), t_n, l.d_out, l.d_out}, kernels::view_mut(sc.gd.data(), t_n, t_n));
    double v = 0.0;
    for (int64_t q = 0; q < t_n * t_n; ++q) v += sc.gx[static_cast<size_t>(q)] * sc.gd[static_cast<size_t>(q)];
    self[i] += alpha * v;
  }
}

}  // namespace

ScorePlan plan_scoring(const FeatureSource& train, const FeatureSource& query, const ScoreSettings& s) {
  ScorePlan plan;
  const int64_t phys = physical_memory();
  plan.budget = s.memory_limit > 0 ? s.memory_limit : (phys > 0 ? phys / 2 : int64_t{8} << 30);
  const int64_t n = train.rows(), m = query.rows(), eb = train.element_bytes();
  int64_t all_width = 0, max_width = 0;
  for (size_t c = 0; c < query.checkpoints(); ++c) all_width += query.width(c);
  for (size_t c = 0; c < train.checkpoints(); ++c) max_width = std::max(max_width, train.width(c));
  const double kept = s.keep_scores ? 8.0 * static_cast<double>(n) * static_cast<double>(m) : 0.0;
  // Fixed costs: the results (self-influence, per-example totals, tranche sums, top-k lists) and the kept matrix.
  const double fixed = 16.0 * n + 16.0 * s.n_tranches * m + 2.0 * 16.0 * std::max<int64_t>(s.top_k, 0) * m + kept;
  const double free_bytes = static_cast<double>(plan.budget) - fixed;
  // Per query row: its features at every checkpoint, its tranche partials; per train row: one
  // checkpoint's features and a row of the score tile (plus the top-k scratch of one tile).
  const double per_query = static_cast<double>(all_width) * eb + 16.0 * s.n_tranches + 64.0 * std::max<int64_t>(s.top_k, 1);
  const int64_t min_train = std::min<int64_t>(std::max<int64_t>(n, 1), kTrancheBlock);
  // Factored layers need two Gram blocks as scratch, together at most one score tile.
  const double score_bytes = any_factored(train) || any_factored(query) ? 16.0 : 8.0;
  const auto need = [&](int64_t qt, int64_t tt) {
    return per_query * static_cast<double>(qt) + static_cast<double>(tt) * (static_cast<double>(max_width) * eb + score_bytes * qt);
  };
  ATTRACE_CHECK(free_bytes > 0 && need(std::min<int64_t>(std::max<int64_t>(m, 1), 1), min_train) <= free_bytes, InputError,
                "attribution.memory_limit = " + gib(static_cast<double>(plan.budget)) + " is too small: scoring needs at least " +
                    gib(fixed + need(1, min_train)) + (s.keep_scores ? " (including the full score matrix for scores.h5)" : ""));
  // Query tile: as many rows as half the free memory holds (all of them when they fit).
  int64_t qt = std::max<int64_t>(1, std::min<int64_t>(m, static_cast<int64_t>(0.5 * free_bytes / per_query)));
  // Train tile: whole tranche blocks in the rest; shrink the query tile if not even one fits.
  while (qt > 1 && need(qt, min_train) > free_bytes) qt = qt / 2;
  const double per_train = static_cast<double>(max_width) * eb + score_bytes * qt;
  int64_t tt = static_cast<int64_t>((free_bytes - per_query * static_cast<double>(qt)) / per_train);
  tt = std::min<int64_t>(tt, std::max<int64_t>(n, 1));
  if (tt < n) tt = std::max<int64_t>(kTrancheBlock, tt / kTrancheBlock * kTrancheBlock);
  plan.query_tile = std::max<int64_t>(qt, 1);
  plan.train_tile = std::max<int64_t>(tt, 1);
  return plan;
}

ScoreResult score_all(const FeatureSource& train, const FeatureSource& query, kernels::Backend& backend,
                      const ScoreSettings& s, Progress& progress) {
  const int64_t n = train.rows(), m = query.rows();
  ATTRACE_CHECK(train.checkpoints() == query.checkpoints() && train.fp64() == query.fp64(), InputError,
                "training and query features were made differently (" + std::to_string(train.checkpoints()) + " vs " +
                    std::to_string(query.checkpoints()) + " checkpoints)");
  for (size_t c = 0; c < train.checkpoints(); ++c)
    ATTRACE_CHECK(train.width(c) == query.width(c) && train.weight(c) == query.weight(c), InputError,
                  "checkpoint " + std::to_string(c) + ": training and query features differ in width or weight (" +
                      std::to_string(train.width(c)) + " vs " + std::to_string(query.width(c)) + ")");
  std::vector<FeatureLayout> layouts;
  for (size_t c = 0; c < train.checkpoints(); ++c) {
    layouts.push_back(train.layout(c));
    ATTRACE_CHECK(layouts.back() == query.layout(c) && layouts.back().width() == train.width(c), InputError,
                  "checkpoint " + std::to_string(c) + ": training and query features are laid out differently (factored layers " +
                      std::to_string(layouts.back().factored.size()) + " vs " + std::to_string(query.layout(c).factored.size()) +
                      "; features.factored must be the same for both)");
    ATTRACE_CHECK(layouts.back().factored.empty() || !train.fp64(), InputError,
                  "checkpoint " + std::to_string(c) + ": factored layers in float64 features");
  }
  ATTRACE_CHECK(static_cast<int64_t>(s.tranche.size()) == n, RuntimeFailure, "score_all: tranche index size mismatch");
  ScoreResult r;
  r.n_train = n;
  r.n_query = m;
  r.plan = plan_scoring(train, query, s);
  r.self_influence.assign(static_cast<size_t>(n), 0.0);
  r.tranche_query.assign(static_cast<size_t>(s.n_tranches * m), 0.0);
  r.example_total.assign(static_cast<size_t>(n), 0.0);
  r.topk.resize(static_cast<size_t>(m));
  if (s.keep_scores) r.scores.assign(static_cast<size_t>(n * m), 0.0);
  const size_t n_ckpt = train.checkpoints();
  const bool f64 = train.fp64();
  const int64_t qt = r.plan.query_tile, tt = r.plan.train_tile;

  std::vector<Tile> qtiles(n_ckpt);
  Tile ttile;
  std::vector<double> scores, partial;
  const auto blas = s.scoring == Scoring::blas;
  // fp64 features have no FMA kernel: they are scored in the canonical fp64 order.
  const auto fma = s.scoring == Scoring::fma;
  const DotKernel dot{backend, s.scoring, s.gemm_math};
  FactoredScratch scratch;
  // Entries per Gram block of a factored layer: half the scratch the plan holds (one score tile).
  const int64_t gram_cap = std::max<int64_t>(1, qt * tt / 2);
  const int64_t query_tiles = (m + qt - 1) / qt;
  progress.begin("scoring (" + std::to_string(query_tiles) + " query tile" + (query_tiles == 1 ? "" : "s") + ")", n * query_tiles,
                 "scoring");
  for (int64_t q0 = 0; q0 < m; q0 += qt) {
    const int64_t q1 = std::min(m, q0 + qt), nq = q1 - q0;
    for (size_t c = 0; c < n_ckpt; ++c) {
      const auto count = static_cast<size_t>(nq * query.width(c));
      if (f64) {
        qtiles[c].f64.resize(count);
        query.read(c, q0, q1, qtiles[c].f64.data());
      } else {
        qtiles[c].f32.resize(count);
        query.read(c, q0, q1, qtiles[c].f32.data());
      }
    }
    std::vector<double> acc(static_cast<size_t>(s.n_tranches * nq), 0.0);
    TopKSink top(nq, std::max<int64_t>(s.top_k, 0));
    for (int64_t t0 = 0; t0 < n; t0 += tt) {
      const int64_t t1 = std::min(n, t0 + tt), nt = t1 - t0;
      scores.assign(static_cast<size_t>(nt * nq), 0.0);
      const auto sv = kernels::view_mut(scores.data(), nt, nq);
      for (size_t c = 0; c < n_ckpt; ++c) {
        const int64_t w = train.width(c);
        const double alpha = train.weight(c);
        if (f64) {
          ttile.f64.resize(static_cast<size_t>(nt * w));
          train.read(c, t0, t1, ttile.f64.data());
          const auto a = kernels::view<double>(ttile.f64.data(), nt, w);
          const auto b = kernels::view<double>(qtiles[c].f64.data(), nq, w);
          if (blas)
            backend.score_accumulate_blas(a, b, alpha, sv);
          else
            backend.score_accumulate(a, b, alpha, sv);
          if (q0 == 0) backend.sqnorm_accumulate(a, alpha, r.self_influence.data() + t0);
        } else {
          ttile.f32.resize(static_cast<size_t>(nt * w));
          train.read(c, t0, t1, ttile.f32.data());
          const auto& lay = layouts[c];
          // The dense columns first (all of them for a plain gradient row)...
          const kernels::HostMatrix<float> a{ttile.f32.data(), nt, lay.dense, w};
          const kernels::HostMatrix<float> b{qtiles[c].f32.data(), nq, lay.dense, w};
          if (lay.dense > 0 || lay.factored.empty()) {
            if (blas)
              backend.score_accumulate_blas(a, b, alpha, s.gemm_math, sv);
            else if (fma)
              backend.score_accumulate_fma(a, b, alpha, sv);
            else
              backend.score_accumulate(a, b, alpha, sv);
            if (q0 == 0) {
              if (fma)
                backend.sqnorm_accumulate_fma(a, alpha, r.self_influence.data() + t0);
              else
                backend.sqnorm_accumulate(a, alpha, r.self_influence.data() + t0);
            }
          }
          // ... then each factored layer in chain order.
          for (const auto& fl : lay.factored) {
            factored_scores(fl, ttile.f32.data(), nt, qtiles[c].f32.data(), nq, w, alpha, dot, scores.data(), nq, gram_cap,
                            scratch);
            if (q0 == 0) factored_self(fl, ttile.f32.data(), nt, w, alpha, dot, r.self_influence.data() + t0, scratch);
          }
        }
      }
      // A non-finite score is an error that names the examples (before any sink sees it).
      for (int64_t i = 0; i < nt; ++i)
        for (int64_t j = 0; j < nq; ++j)
          if (!std::isfinite(scores[static_cast<size_t>(i * nq + j)]))
            throw NumericError("non-finite TracIn score for training example '" +
                               (s.train_ids.empty() ? std::to_string(t0 + i) : s.train_ids[static_cast<size_t>(t0 + i)]) +
                               "' and query '" +
                               (s.query_ids.empty() ? std::to_string(q0 + j) : s.query_ids[static_cast<size_t>(q0 + j)]) + "'");
      // Tranche sums: block by block (tiles hold whole blocks), rows ascending within a block.
      for (int64_t b0 = t0; b0 < t1; b0 += kTrancheBlock) {
        const int64_t b1 = std::min(t1, b0 + kTrancheBlock);
        partial.assign(static_cast<size_t>(s.n_tranches * nq), 0.0);
        backend.segmented_row_sum(kernels::view<double>(scores.data() + (b0 - t0) * nq, b1 - b0, nq), s.tranche.data() + b0,
                                  kernels::view_mut(partial.data(), s.n_tranches, nq));
        for (size_t e = 0; e < acc.size(); ++e) acc[e] += partial[e];
      }
      // Per-example totals: each row's running sum continues where the previous query tile left
      // it, columns ascending, so the order is j = 0, 1, ..., m - 1 for any tiling.
      for (int64_t i = 0; i < nt; ++i) {
        double total = r.example_total[static_cast<size_t>(t0 + i)];
        const double* row = scores.data() + i * nq;
        for (int64_t j = 0; j < nq; ++j) total += row[j];
        r.example_total[static_cast<size_t>(t0 + i)] = total;
      }
      // Top-k: the rows of this tile against each query's running lists.
      if (s.top_k > 0) top.add(scores.data(), t0, nt);
      if (s.keep_scores)
        for (int64_t i = 0; i < nt; ++i)
          std::copy(scores.begin() + i * nq, scores.begin() + (i + 1) * nq, r.scores.begin() + (t0 + i) * m + q0);
      progress.advance(nt);
    }
    for (int64_t t = 0; t < s.n_tranches; ++t)
      std::copy(acc.begin() + t * nq, acc.begin() + (t + 1) * nq, r.tranche_query.begin() + t * m + q0);
    if (s.top_k > 0) {
      auto lists = top.take();
      for (int64_t j = 0; j < nq; ++j) r.topk[static_cast<size_t>(q0 + j)] = std::move(lists[static_cast<size_t>(j)]);
    }
  }
  progress.end();
  return r;
}

}  // namespace attrace::engine
