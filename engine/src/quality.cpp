// Data-quality signals: near-duplicates through an inverted-file (IVF) index over feature
// sketches, and self-influence outliers.
//
// The index (spherical k-means centroids, each sketch stored in its nearest list, searched in its
// `probes` nearest lists) runs on float32 dot products of unit vectors with a fixed summation
// order; it only proposes pairs. A proposed pair within a rounding margin of the threshold is
// decided by a float64 cosine of the raw sketches, summed left to right. Every per-row result is
// computed by one thread in a fixed order, and what threads add up (pair counts, sets of
// tranches) does not depend on the order of addition, so the report has the same bits for any
// thread count and on every run (docs/architecture.md, "Data-quality signals").
#include <attrace/random.hpp>
#include <attrace/engine/quality.hpp>
#include <attrace/error.hpp>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <utility>

namespace attrace::engine {
namespace {

// Below this many distinct sketches one list (an exhaustive, exact comparison) costs little.
constexpr int64_t kExhaustiveBelow = 4096;
// Index rows are padded with zeros to a multiple of this many floats (adding +-0 changes no sum).
constexpr int64_t kLanes = 16;

using v8 = float __attribute__((vector_size(32)));

void validate(const QualityInput& in, const QualitySettings& s) {
  ATTRACE_CHECK(in.n > 0, InputError, "quality: no examples (n = " + std::to_string(in.n) + ")");
  ATTRACE_CHECK(in.dim > 0, InputError, "quality: sketch dimension must be positive (dim = " + std::to_string(in.dim) + ")");
  ATTRACE_CHECK(in.n_tranches > 0, InputError, "quality: n_tranches must be positive (" + std::to_string(in.n_tranches) + ")");
  ATTRACE_CHECK(in.sketch && in.tranche && in.self_influence, InputError,
                "quality: sketch, tranche and self_influence must all be given");
  ATTRACE_CHECK(s.near_duplicate_cosine > 0 && s.near_duplicate_cosine < 1, InputError,
                "quality: near_duplicate_cosine must lie in (0, 1), got " + std::to_string(s.near_duplicate_cosine));
  ATTRACE_CHECK(s.outlier_top_fraction > 0 && s.outlier_top_fraction <= 1, InputError,
                "quality: outlier_top_fraction must lie in (0, 1], got " + std::to_string(s.outlier_top_fraction));
  ATTRACE_CHECK(s.lists >= 0, InputError, "quality: lists must be >= 0 (0: automatic), got " + std::to_string(s.lists));
  ATTRACE_CHECK(s.probes >= 1, InputError, "quality: probes must be >= 1, got " + std::to_string(s.probes));
  ATTRACE_CHECK(s.kmeans_iterations >= 1, InputError,
                "quality: kmeans_iterations must be >= 1, got " + std::to_string(s.kmeans_iterations));
  ATTRACE_CHECK(s.kmeans_sample_per_list >= 1, InputError,
                "quality: kmeans_sample_per_list must be >= 1, got " + std::to_string(s.kmeans_sample_per_list));
  ATTRACE_CHECK(s.threads >= 0, InputError, "quality: threads must be >= 0 (0: one per core), got " + std::to_string(s.threads));
  ATTRACE_CHECK(in.n <= INT64_MAX / (in.dim + kLanes), InputError, "quality: n x dim overflows");
  for (int64_t i = 0; i < in.n; ++i) {
    const int64_t t = in.tranche[i];
    ATTRACE_CHECK(t >= 0 && t < in.n_tranches, InputError,
                  "quality: example " + std::to_string(i) + " has tranche index " + std::to_string(t) +
                      ", outside [0, " + std::to_string(in.n_tranches) + ")");
    ATTRACE_CHECK(std::isfinite(in.self_influence[i]), NumericError,
                  "quality: self-influence of example " + std::to_string(i) + " is not finite");
    const float* row = in.sketch + i * in.dim;
    for (int64_t d = 0; d < in.dim; ++d)
      ATTRACE_CHECK(std::isfinite(row[d]), NumericError,
                    "quality: sketch of example " + std::to_string(i) + " is not finite at column " + std::to_string(d));
  }
}

using attrace::draw_below;

uint64_t hash_row(const float* row, int64_t dim) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (int64_t d = 0; d < dim; ++d) {
    uint32_t bits;
    std::memcpy(&bits, row + d, sizeof bits);
    h ^= bits;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  return h;
}

// float64 dot product summed left to right: the decision arithmetic.
double dot64(const float* a, const float* b, int64_t dim) {
  double s = 0;
  for (int64_t d = 0; d < dim; ++d) s += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return s;
}

// The helpers below are always inlined into dot_rows' clones, so the out-of-line ABI of vector
// arguments (-Wpsabi) never applies.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
__attribute__((always_inline)) inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((always_inline)) inline float reduce(const v8& lo, const v8& hi) {
  const v8 s = lo + hi;
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// out[j] = dot(a, b[j]) over `width` floats (a multiple of kLanes): element q goes to lane
// q % 16, lanes are combined in a fixed tree. Four rows share the loads of `a` but each keeps its
// own accumulators, so every dot has the same order whatever the row count or the vector width
// chosen at load time (no FMA: the build disables contraction).
__attribute__((target_clones("avx2", "default"))) void dot_rows(const float* a, const float* const* b, int64_t nb,
                                                                 int64_t width, float* out) {
  int64_t j = 0;
  for (; j + 4 <= nb; j += 4) {
    const float *b0 = b[j], *b1 = b[j + 1], *b2 = b[j + 2], *b3 = b[j + 3];
    v8 l0 = {}, h0 = {}, l1 = {}, h1 = {}, l2 = {}, h2 = {}, l3 = {}, h3 = {};
    for (int64_t q = 0; q < width; q += kLanes) {
      const v8 al = load8(a + q), ah = load8(a + q + 8);
      l0 += al * load8(b0 + q);
      h0 += ah * load8(b0 + q + 8);
      l1 += al * load8(b1 + q);
      h1 += ah * load8(b1 + q + 8);
      l2 += al * load8(b2 + q);
      h2 += ah * load8(b2 + q + 8);
      l3 += al * load8(b3 + q);
      h3 += ah * load8(b3 + q + 8);
    }
    out[j] = reduce(l0, h0);
    out[j + 1] = reduce(l1, h1);
    out[j + 2] = reduce(l2, h2);
    out[j + 3] = reduce(l3, h3);
  }
  for (; j < nb; ++j) {
    v8 l = {}, h = {};
    for (int64_t q = 0; q < width; q += kLanes) {
      l += load8(a + q) * load8(b[j] + q);
      h += load8(a + q + 8) * load8(b[j] + q + 8);
    }
    out[j] = reduce(l, h);
  }
}

#pragma GCC diagnostic pop

// Rows of the `b` side per call of dot_rows in the loops below: about 16 KiB, so they stay in the
// L1 cache while many `a` rows pass over them (the loops are bound by memory otherwise).
int64_t block_rows(int64_t width) { return std::max<int64_t>(4, 4096 / width); }
// Rows of the `a` side kept in cache while the blocks pass (with 128 floats: 8 KiB).
constexpr int64_t kQueryChunk = 16;

// For each row (pointers `x`), the `probes` centroids with the largest dots, best first, ties to
// the lower centroid index; `best` (optional) receives the largest dot.
void nearest_centroids(const std::vector<const float*>& x, const std::vector<float>& centroids, int64_t lists, int64_t width,
                       int64_t probes, int threads, int32_t* out, float* best) {
  std::vector<const float*> cent(static_cast<size_t>(lists));
  for (int64_t c = 0; c < lists; ++c) cent[static_cast<size_t>(c)] = centroids.data() + c * width;
  const auto rows = static_cast<int64_t>(x.size());
  const int64_t chunk = kQueryChunk, block = block_rows(width);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> dots(static_cast<size_t>(chunk * lists));
#pragma omp for schedule(static)
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t rc = std::min(chunk, rows - r0);
      for (int64_t c0 = 0; c0 < lists; c0 += block)
        for (int64_t r = 0; r < rc; ++r)
          dot_rows(x[static_cast<size_t>(r0 + r)], cent.data() + c0, std::min(block, lists - c0), width, dots.data() + r * lists + c0);
      for (int64_t r = 0; r < rc; ++r) {
        const float* d = dots.data() + r * lists;
        int32_t* o = out + (r0 + r) * probes;
        int64_t have = 0;
        // Insertion into a short sorted list; a later centroid displaces only on a strictly larger dot.
        for (int64_t c = 0; c < lists; ++c) {
          if (have == probes && !(d[c] > d[o[probes - 1]])) continue;
          int64_t k = have < probes ? have++ : probes - 1;
          while (k > 0 && d[o[k - 1]] < d[c]) {
            o[k] = o[k - 1];
            --k;
          }
          o[k] = static_cast<int32_t>(c);
        }
        if (best) best[r0 + r] = d[o[0]];
      }
    }
  }
}

// Spherical k-means on a seeded sample of the unit rows: unit centroids, float64 sums in sample
// order, an emptied list re-seeded with the worst-fitting sample row (lowest dot to its
// centroid, ties to the lower sample position). Returns the rounds run.
int64_t train_centroids(const std::vector<const float*>& unit, int64_t width, const QualitySettings& s, int64_t lists,
                        int threads, std::vector<float>& centroids) {
  const auto reps = static_cast<int64_t>(unit.size());
  const int64_t sample = std::min(reps, std::max(lists, s.kmeans_sample_per_list * lists));
  // Partial Fisher-Yates over the rows: the first `sample` entries are the sample.
  std::vector<int64_t> pick(static_cast<size_t>(reps));
  for (int64_t k = 0; k < reps; ++k) pick[static_cast<size_t>(k)] = k;
  std::mt19937_64 rng(s.seed);
  for (int64_t k = 0; k < sample; ++k)
    std::swap(pick[static_cast<size_t>(k)],
              pick[static_cast<size_t>(k + static_cast<int64_t>(draw_below(rng, static_cast<uint64_t>(reps - k))))]);
  std::vector<const float*> xs(static_cast<size_t>(sample));
  for (int64_t k = 0; k < sample; ++k) xs[static_cast<size_t>(k)] = unit[static_cast<size_t>(pick[static_cast<size_t>(k)])];
  // Initial centroids: the first `lists` sample rows (a seeded random choice of distinct sketches).
  centroids.assign(static_cast<size_t>(lists * width), 0.0f);
  for (int64_t c = 0; c < lists; ++c) std::copy(xs[static_cast<size_t>(c)], xs[static_cast<size_t>(c)] + width, centroids.begin() + c * width);
  std::vector<int32_t> assign(static_cast<size_t>(sample), -1), next(static_cast<size_t>(sample));
  std::vector<float> fit(static_cast<size_t>(sample));
  std::vector<double> sum(static_cast<size_t>(lists * width));
  std::vector<int64_t> count(static_cast<size_t>(lists));
  int64_t rounds = 0;
  for (; rounds < s.kmeans_iterations; ++rounds) {
    nearest_centroids(xs, centroids, lists, width, 1, threads, next.data(), fit.data());
    if (next == assign) break;  // converged: the centroids below would not change
    assign = next;
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(count.begin(), count.end(), 0);
    for (int64_t k = 0; k < sample; ++k) {
      const int64_t c = assign[static_cast<size_t>(k)];
      ++count[static_cast<size_t>(c)];
      const float* x = xs[static_cast<size_t>(k)];
      double* acc = sum.data() + c * width;
      for (int64_t d = 0; d < width; ++d) acc[d] += x[d];
    }
    std::vector<int64_t> worst;  // sample positions; back() is the next to re-seed with
    for (int64_t c = 0; c < lists; ++c) {
      float* cent = centroids.data() + c * width;
      if (count[static_cast<size_t>(c)] == 0) {
        if (worst.empty()) {
          worst.resize(static_cast<size_t>(sample));
          for (int64_t k = 0; k < sample; ++k) worst[static_cast<size_t>(k)] = k;
          // Descending fit, ties by descending position: back() is the worst, lowest position first.
          std::sort(worst.begin(), worst.end(), [&](int64_t a, int64_t b) {
            return fit[static_cast<size_t>(a)] > fit[static_cast<size_t>(b)] ||
                   (fit[static_cast<size_t>(a)] == fit[static_cast<size_t>(b)] && a > b);
          });
        }
        const float* x = xs[static_cast<size_t>(worst.back())];
        worst.pop_back();
        std::copy(x, x + width, cent);
        continue;
      }
      const double* acc = sum.data() + c * width;
      double sq = 0;
      for (int64_t d = 0; d < width; ++d) sq += acc[d] * acc[d];
      if (!(sq > 0)) continue;  // members cancel exactly: keep the previous centroid
      const double inv = 1.0 / std::sqrt(sq);
      for (int64_t d = 0; d < width; ++d) cent[d] = static_cast<float>(acc[d] * inv);
    }
  }
  return rounds;
}

// Examples grouped by bit-identical sketches (zero sketches left out): each group is indexed once
// through its smallest example index, the representative.
struct Groups {
  std::vector<int64_t> rep;     // representative example per group, ascending
  std::vector<int64_t> start;   // members of group g: member[start[g] .. start[g+1]), ascending
  std::vector<int64_t> member;
  int64_t size(int64_t g) const { return start[static_cast<size_t>(g) + 1] - start[static_cast<size_t>(g)]; }
};

Groups group_exact_copies(const QualityInput& in, const std::vector<char>& zero) {
  std::vector<std::pair<uint64_t, int64_t>> keyed;
  for (int64_t i = 0; i < in.n; ++i)
    if (!zero[static_cast<size_t>(i)]) keyed.emplace_back(hash_row(in.sketch + i * in.dim, in.dim), i);
  std::sort(keyed.begin(), keyed.end());
  std::vector<int64_t> leader(static_cast<size_t>(in.n), -1);
  const size_t row_bytes = static_cast<size_t>(in.dim) * sizeof(float);
  for (size_t a = 0; a < keyed.size();) {
    size_t b = a;
    while (b < keyed.size() && keyed[b].first == keyed[a].first) ++b;
    // Within one hash value (almost always one row) compare bytes with the earlier leaders;
    // indices ascend here, so a leader is its group's smallest index.
    for (size_t k = a; k < b; ++k) {
      const int64_t i = keyed[k].second;
      leader[static_cast<size_t>(i)] = i;
      for (size_t j = a; j < k; ++j) {
        const int64_t c = keyed[j].second;
        if (leader[static_cast<size_t>(c)] == c && std::memcmp(in.sketch + i * in.dim, in.sketch + c * in.dim, row_bytes) == 0) {
          leader[static_cast<size_t>(i)] = c;
          break;
        }
      }
    }
    a = b;
  }
  Groups g;
  std::vector<int64_t> slot(static_cast<size_t>(in.n), -1);
  for (int64_t i = 0; i < in.n; ++i)
    if (leader[static_cast<size_t>(i)] == i) {
      slot[static_cast<size_t>(i)] = static_cast<int64_t>(g.rep.size());
      g.rep.push_back(i);
    }
  g.start.assign(g.rep.size() + 1, 0);
  for (int64_t i = 0; i < in.n; ++i) {
    const int64_t l = leader[static_cast<size_t>(i)];
    if (l >= 0) ++g.start[static_cast<size_t>(slot[static_cast<size_t>(l)]) + 1];
  }
  for (size_t k = 0; k < g.rep.size(); ++k) g.start[k + 1] += g.start[k];
  g.member.resize(static_cast<size_t>(g.start.back()));
  std::vector<int64_t> fill(g.start.begin(), g.start.end() - 1);
  for (int64_t i = 0; i < in.n; ++i) {
    const int64_t l = leader[static_cast<size_t>(i)];
    if (l >= 0) g.member[static_cast<size_t>(fill[static_cast<size_t>(slot[static_cast<size_t>(l)])]++)] = i;
  }
  return g;
}

// Adds `t` to the sorted set `v`.
void insert_sorted(std::vector<int64_t>& v, int64_t t) {
  const auto it = std::lower_bound(v.begin(), v.end(), t);
  if (it == v.end() || *it != t) v.insert(it, t);
}

}  // namespace

QualityReport quality_signals(const QualityInput& in, const QualitySettings& s, std::vector<ExamplePair>* example_pairs) {
  validate(in, s);
  if (example_pairs) example_pairs->clear();
  QualityReport rep;
  rep.settings = s;
  const int threads = s.threads > 0 ? s.threads : omp_get_num_procs();
  const int64_t n = in.n, dim = in.dim;
  const int64_t width = (dim + kLanes - 1) / kLanes * kLanes;

  // ---- Exact copies, then the distinct sketches as padded float32 unit rows.
  std::vector<char> zero(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float* x = in.sketch + i * dim;
    zero[static_cast<size_t>(i)] = std::all_of(x, x + dim, [](float v) { return v == 0.0f; });
    rep.zero_sketch_examples += zero[static_cast<size_t>(i)];
  }
  const Groups g = group_exact_copies(in, zero);
  const auto reps = static_cast<int64_t>(g.rep.size());
  std::vector<double> norm(static_cast<size_t>(reps));
  std::vector<float> unit_rows(static_cast<size_t>(reps * width), 0.0f);
  std::vector<const float*> unit(static_cast<size_t>(reps));
  for (int64_t r = 0; r < reps; ++r) {
    const float* x = in.sketch + g.rep[static_cast<size_t>(r)] * dim;
    norm[static_cast<size_t>(r)] = std::sqrt(dot64(x, x, dim));
    float* u = unit_rows.data() + r * width;
    for (int64_t d = 0; d < dim; ++d) u[d] = static_cast<float>(x[d] / norm[static_cast<size_t>(r)]);
    unit[static_cast<size_t>(r)] = u;
  }

  // ---- Inverted lists: k-means centroids, then each row's `probes` nearest lists; a row is
  // stored in the first of them, its home.
  int64_t lists = s.lists > 0 ? s.lists
                  : reps < kExhaustiveBelow
                      ? 1
                      : std::llround(std::sqrt(static_cast<double>(s.probes) * static_cast<double>(reps)));
  lists = std::max<int64_t>(1, std::min(lists, reps));
  const int64_t probes = std::min(s.probes, lists);
  std::vector<int32_t> probe(static_cast<size_t>(reps * probes), 0);
  if (lists > 1) {
    std::vector<float> centroids;
    rep.kmeans_iterations_run = train_centroids(unit, width, s, lists, threads, centroids);
    nearest_centroids(unit, centroids, lists, width, probes, threads, probe.data(), nullptr);
  }
  rep.lists_used = reps > 0 ? lists : 0;
  auto home = [&](int64_t r) { return static_cast<int64_t>(probe[static_cast<size_t>(r * probes)]); };
  auto probes_list = [&](int64_t r, int64_t c) {
    for (int64_t k = 0; k < probes; ++k)
      if (probe[static_cast<size_t>(r * probes + k)] == c) return true;
    return false;
  };
  // Rows stored in each list and rows probing each list, both in row order.
  std::vector<int64_t> list_start(static_cast<size_t>(lists + 1), 0), query_start(static_cast<size_t>(lists + 1), 0);
  for (int64_t r = 0; r < reps; ++r) {
    ++list_start[static_cast<size_t>(home(r) + 1)];
    for (int64_t k = 0; k < probes; ++k) ++query_start[static_cast<size_t>(probe[static_cast<size_t>(r * probes + k)] + 1)];
  }
  for (int64_t c = 0; c < lists; ++c) {
    list_start[static_cast<size_t>(c + 1)] += list_start[static_cast<size_t>(c)];
    query_start[static_cast<size_t>(c + 1)] += query_start[static_cast<size_t>(c)];
  }
  std::vector<int64_t> list_row(static_cast<size_t>(reps)), query_row(static_cast<size_t>(reps * probes));
  {
    std::vector<int64_t> lf(list_start.begin(), list_start.end() - 1), qf(query_start.begin(), query_start.end() - 1);
    for (int64_t r = 0; r < reps; ++r) {
      list_row[static_cast<size_t>(lf[static_cast<size_t>(home(r))]++)] = r;
      for (int64_t k = 0; k < probes; ++k)
        query_row[static_cast<size_t>(qf[static_cast<size_t>(probe[static_cast<size_t>(r * probes + k)])]++)] = r;
    }
  }

  // ---- Search, list by list. A pair {q, l} is seen from q when l's home is among q's probes (and
  // from l likewise) and kept once: from the lower row when that side sees it, else from the
  // other. The float32 cosine of unit rows is within `margin` of the exact one (the 16-lane sum
  // of width/16 terms per lane, plus the rounding of the unit rows, with a factor 2 to spare), so
  // no pair at or above the threshold is lost; the float64 cosine decides.
  const double threshold = s.near_duplicate_cosine;
  const double margin = static_cast<double>(width / kLanes + 16) * std::ldexp(1.0, -23);
  const auto screen = static_cast<float>(threshold - margin);
  std::vector<std::vector<int64_t>> near_tranches(static_cast<size_t>(reps));  // tranches of partners found
  std::vector<std::vector<int64_t>> group_tranches(static_cast<size_t>(reps));
  for (int64_t r = 0; r < reps; ++r)
    for (int64_t k = g.start[static_cast<size_t>(r)]; k < g.start[static_cast<size_t>(r) + 1]; ++k)
      insert_sorted(group_tranches[static_cast<size_t>(r)], in.tranche[g.member[static_cast<size_t>(k)]]);
  // Every pair of members of groups r1 and r2 (r1 == r2: the pairs within one group).
  auto list_pairs = [&](int64_t r1, int64_t r2) {
    for (int64_t a = g.start[static_cast<size_t>(r1)]; a < g.start[static_cast<size_t>(r1) + 1]; ++a)
      for (int64_t b = r1 == r2 ? a + 1 : g.start[static_cast<size_t>(r2)]; b < g.start[static_cast<size_t>(r2) + 1]; ++b) {
        const int64_t i = g.member[static_cast<size_t>(a)], j = g.member[static_cast<size_t>(b)];
        example_pairs->push_back({std::min(i, j), std::max(i, j)});
      }
  };
  // Found pairs are applied in batches under a lock; each application is a sum of integers or a
  // set union, so the order of batches changes nothing.
  auto apply = [&](const std::vector<std::pair<int64_t, int64_t>>& found) {
    for (const auto& [q, l] : found) {
      rep.pairs_found += g.size(q) * g.size(l);
      for (int64_t t : group_tranches[static_cast<size_t>(l)]) insert_sorted(near_tranches[static_cast<size_t>(q)], t);
      for (int64_t t : group_tranches[static_cast<size_t>(q)]) insert_sorted(near_tranches[static_cast<size_t>(l)], t);
      if (example_pairs) list_pairs(q, l);
    }
  };
#pragma omp parallel num_threads(threads)
  {
    const int64_t block = block_rows(width);
    std::vector<float> d(static_cast<size_t>(block));
    std::vector<const float*> members;
    std::vector<float> lbuf;
    std::vector<std::pair<int64_t, int64_t>> found;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < lists; ++c) {
      const int64_t* lrow = list_row.data() + list_start[static_cast<size_t>(c)];
      const int64_t lcount = list_start[static_cast<size_t>(c + 1)] - list_start[static_cast<size_t>(c)];
      const int64_t q0 = query_start[static_cast<size_t>(c)], q1 = query_start[static_cast<size_t>(c + 1)];
      // The list's rows contiguous (prefetch-friendly); queries in chunks that stay in L1 while
      // every block of members passes over them.
      lbuf.resize(static_cast<size_t>(lcount * width));
      members.resize(static_cast<size_t>(lcount));
      for (int64_t k = 0; k < lcount; ++k) {
        std::copy(unit[static_cast<size_t>(lrow[k])], unit[static_cast<size_t>(lrow[k])] + width, lbuf.begin() + k * width);
        members[static_cast<size_t>(k)] = lbuf.data() + k * width;
      }
      for (int64_t c0 = q0; c0 < q1; c0 += kQueryChunk) {
        const int64_t c1 = std::min(q1, c0 + kQueryChunk);
        for (int64_t b0 = 0; b0 < lcount; b0 += block) {
          const int64_t bc = std::min(block, lcount - b0);
          for (int64_t qi = c0; qi < c1; ++qi) {
            const int64_t q = query_row[static_cast<size_t>(qi)];
            dot_rows(unit[static_cast<size_t>(q)], members.data() + b0, bc, width, d.data());
            for (int64_t k = 0; k < bc; ++k) {
              const int64_t l = lrow[b0 + k];
              if (l == q || !(d[static_cast<size_t>(k)] >= screen)) continue;
              if (q > l && probes_list(l, home(q))) continue;  // l's side keeps it
              const double cosine =
                  dot64(in.sketch + g.rep[static_cast<size_t>(q)] * dim, in.sketch + g.rep[static_cast<size_t>(l)] * dim, dim) /
                  (norm[static_cast<size_t>(q)] * norm[static_cast<size_t>(l)]);
              if (cosine >= threshold) found.emplace_back(q, l);
            }
          }
        }
        if (found.size() >= 65536) {
#pragma omp critical(attrace_quality_apply)
          apply(found);
          found.clear();
        }
      }
    }
#pragma omp critical(attrace_quality_apply)
    apply(found);
  }

  // ---- Per example: the tranches where it has a near-duplicate (partners found through the
  // index, plus the other members of its exact-copy group).
  rep.tranches.assign(static_cast<size_t>(in.n_tranches), TrancheQuality{});
  for (int64_t i = 0; i < n; ++i) ++rep.tranches[static_cast<size_t>(in.tranche[i])].examples;
  std::map<std::pair<int64_t, int64_t>, NearDuplicatePair> pairs;
  std::vector<int64_t> flags;
  for (int64_t r = 0; r < reps; ++r) {
    const int64_t size = g.size(r);
    if (size > 1) {
      rep.exact_copy_examples += size;
      rep.pairs_found += size * (size - 1) / 2;
      if (example_pairs) list_pairs(r, r);
    }
    for (int64_t k = g.start[static_cast<size_t>(r)]; k < g.start[static_cast<size_t>(r) + 1]; ++k) {
      const int64_t t = in.tranche[g.member[static_cast<size_t>(k)]];
      flags = near_tranches[static_cast<size_t>(r)];
      for (int64_t k2 = g.start[static_cast<size_t>(r)]; k2 < g.start[static_cast<size_t>(r) + 1]; ++k2)
        if (k2 != k) insert_sorted(flags, in.tranche[g.member[static_cast<size_t>(k2)]]);
      TrancheQuality& tq = rep.tranches[static_cast<size_t>(t)];
      bool cross = false;
      for (int64_t u : flags) {
        if (u == t) {
          ++tq.near_duplicate_examples;
          continue;
        }
        cross = true;
        NearDuplicatePair& p = pairs[{std::min(t, u), std::max(t, u)}];
        ++(t < u ? p.examples_a : p.examples_b);
      }
      tq.cross_duplicate_examples += cross;
    }
  }
  if (example_pairs)
    std::sort(example_pairs->begin(), example_pairs->end(),
              [](const ExamplePair& x, const ExamplePair& y) { return x.i < y.i || (x.i == y.i && x.j < y.j); });
  auto fraction = [](int64_t part, int64_t whole) { return whole > 0 ? static_cast<double>(part) / static_cast<double>(whole) : 0.0; };
  for (auto& [key, p] : pairs) {
    p.a = key.first;
    p.b = key.second;
    p.fraction_a = fraction(p.examples_a, rep.tranches[static_cast<size_t>(p.a)].examples);
    p.fraction_b = fraction(p.examples_b, rep.tranches[static_cast<size_t>(p.b)].examples);
    rep.pairs.push_back(p);
  }

  // ---- Outliers: the round(f n) (at least one) examples of highest self-influence, ties broken
  // by the lower example index.
  rep.outliers = std::max<int64_t>(1, std::min<int64_t>(n, std::llround(s.outlier_top_fraction * static_cast<double>(n))));
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::partial_sort(order.begin(), order.begin() + rep.outliers, order.end(), [&](int64_t a, int64_t b) {
    return in.self_influence[a] > in.self_influence[b] || (in.self_influence[a] == in.self_influence[b] && a < b);
  });
  for (int64_t k = 0; k < rep.outliers; ++k) ++rep.tranches[static_cast<size_t>(in.tranche[order[static_cast<size_t>(k)]])].outlier_examples;
  rep.self_influence_threshold = in.self_influence[order[static_cast<size_t>(rep.outliers - 1)]];
  for (auto& tq : rep.tranches) {
    tq.near_duplicate_rate = fraction(tq.near_duplicate_examples, tq.examples);
    tq.outlier_share = fraction(tq.outlier_examples, tq.examples);
  }
  return rep;
}

}  // namespace attrace::engine
