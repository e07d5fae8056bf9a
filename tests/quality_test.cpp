// engine/quality: near-duplicates against a brute-force float64 reference, planted copies
// across and within tranches, thread-count invariance, outlier shares on a hand-checked case,
// and bad input.
#include <attrace/engine/quality.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <vector>

namespace ae = attrace::engine;

namespace {

// A data set in the layout quality_signals reads.
struct Data {
  int64_t dim = 0, n_tranches = 0;
  std::vector<float> sketch;
  std::vector<int64_t> tranche;
  std::vector<double> self_influence;
  int64_t n() const { return static_cast<int64_t>(tranche.size()); }
  ae::QualityInput input() const { return {sketch.data(), n(), dim, tranche.data(), n_tranches, self_influence.data()}; }
  void add(const std::vector<float>& row, int64_t t, double si = 1.0) {
    sketch.insert(sketch.end(), row.begin(), row.end());
    tranche.push_back(t);
    self_influence.push_back(si);
  }
  std::vector<float> row(int64_t i) const { return {sketch.begin() + i * dim, sketch.begin() + (i + 1) * dim}; }
};

std::vector<float> gaussian(std::mt19937_64& rng, int64_t dim, double sigma) {
  std::normal_distribution<double> g(0.0, sigma);
  std::vector<float> v(static_cast<size_t>(dim));
  for (auto& x : v) x = static_cast<float>(g(rng));
  return v;
}

// `base` plus isotropic noise of relative size `rel` (cosine to base about 1/sqrt(1 + rel^2)),
// times `scale`.
std::vector<float> perturbed(std::mt19937_64& rng, const std::vector<float>& base, double rel, double scale = 1.0) {
  double sq = 0;
  for (float x : base) sq += static_cast<double>(x) * x;
  const double sigma = rel * std::sqrt(sq / static_cast<double>(base.size()));
  std::normal_distribution<double> g(0.0, sigma);
  std::vector<float> v(base.size());
  for (size_t d = 0; d < base.size(); ++d) v[d] = static_cast<float>((base[d] + g(rng)) * scale);
  return v;
}

// Brute-force O(n^2) cosine in float64, plain left-to-right sums.
double cosine(const Data& d, int64_t i, int64_t j) {
  double dot = 0, ni = 0, nj = 0;
  for (int64_t k = 0; k < d.dim; ++k) {
    const double a = d.sketch[static_cast<size_t>(i * d.dim + k)], b = d.sketch[static_cast<size_t>(j * d.dim + k)];
    dot += a * b;
    ni += a * a;
    nj += b * b;
  }
  return dot / (std::sqrt(ni) * std::sqrt(nj));
}

// Clusters of points whose within-cluster cosines straddle 0.98, with random scales and a few
// exact copies and zero rows: many pairs sit close to the threshold.
Data clustered(int64_t clusters, int64_t per_cluster, int64_t dim, int64_t n_tranches, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> spread(0.05, 0.25), scale(0.1, 10.0), si(0.0, 1.0);
  Data d;
  d.dim = dim;
  d.n_tranches = n_tranches;
  for (int64_t c = 0; c < clusters; ++c) {
    const auto center = gaussian(rng, dim, 1.0);
    for (int64_t k = 0; k < per_cluster; ++k)
      d.add(perturbed(rng, center, spread(rng), scale(rng)), static_cast<int64_t>(rng() % static_cast<uint64_t>(n_tranches)), si(rng));
  }
  for (int64_t k = 0; k < 25; ++k)
    d.add(d.row(static_cast<int64_t>(rng() % static_cast<uint64_t>(d.n()))), static_cast<int64_t>(rng() % static_cast<uint64_t>(n_tranches)),
          si(rng));
  for (int64_t k = 0; k < 3; ++k) d.add(std::vector<float>(static_cast<size_t>(dim), 0.0f), k % n_tranches, si(rng));
  return d;
}

// Points near a random 5-dimensional subspace of R^dim: near pairs form a continuum, so k-means
// lists cut through them and pairs straddle list boundaries (the hard case for the index).
Data subspace(int64_t n, int64_t dim, int64_t n_tranches, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> scale(0.1, 10.0);
  const int64_t latent = 5;
  std::vector<std::vector<float>> basis;
  for (int64_t k = 0; k < latent; ++k) basis.push_back(gaussian(rng, dim, 1.0));
  Data d;
  d.dim = dim;
  d.n_tranches = n_tranches;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> v(static_cast<size_t>(dim));
    for (int64_t k = 0; k < latent; ++k) {
      const double a = g(rng);
      for (int64_t q = 0; q < dim; ++q) v[static_cast<size_t>(q)] += a * basis[static_cast<size_t>(k)][static_cast<size_t>(q)];
    }
    std::vector<float> row(static_cast<size_t>(dim));
    const double s = scale(rng);
    for (int64_t q = 0; q < dim; ++q) row[static_cast<size_t>(q)] = static_cast<float>(s * (v[static_cast<size_t>(q)] + 0.05 * g(rng)));
    d.add(row, static_cast<int64_t>(rng() % static_cast<uint64_t>(n_tranches)), scale(rng));
  }
  return d;
}

// The report's per-tranche and per-pair counts, recomputed from the example pairs it found.
void expect_counts_match_pairs(const Data& d, const ae::QualityReport& r, const std::vector<ae::ExamplePair>& pairs) {
  std::vector<std::set<int64_t>> flags(static_cast<size_t>(d.n()));
  for (const auto& p : pairs) {
    flags[static_cast<size_t>(p.i)].insert(d.tranche[static_cast<size_t>(p.j)]);
    flags[static_cast<size_t>(p.j)].insert(d.tranche[static_cast<size_t>(p.i)]);
  }
  std::vector<int64_t> within(static_cast<size_t>(d.n_tranches)), cross(static_cast<size_t>(d.n_tranches));
  std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> shared;
  for (int64_t i = 0; i < d.n(); ++i) {
    const int64_t t = d.tranche[static_cast<size_t>(i)];
    bool other = false;
    for (int64_t u : flags[static_cast<size_t>(i)]) {
      if (u == t) {
        ++within[static_cast<size_t>(t)];
        continue;
      }
      other = true;
      auto& s = shared[{std::min(t, u), std::max(t, u)}];
      ++(t < u ? s.first : s.second);
    }
    cross[static_cast<size_t>(t)] += other;
  }
  ASSERT_EQ(r.pairs_found, static_cast<int64_t>(pairs.size()));
  ASSERT_EQ(r.tranches.size(), static_cast<size_t>(d.n_tranches));
  for (int64_t t = 0; t < d.n_tranches; ++t) {
    EXPECT_EQ(r.tranches[static_cast<size_t>(t)].near_duplicate_examples, within[static_cast<size_t>(t)]) << "tranche " << t;
    EXPECT_EQ(r.tranches[static_cast<size_t>(t)].cross_duplicate_examples, cross[static_cast<size_t>(t)]) << "tranche " << t;
  }
  ASSERT_EQ(r.pairs.size(), shared.size());
  size_t k = 0;
  for (const auto& [key, counts] : shared) {
    const auto& p = r.pairs[k++];
    EXPECT_EQ(p.a, key.first);
    EXPECT_EQ(p.b, key.second);
    EXPECT_EQ(p.examples_a, counts.first);
    EXPECT_EQ(p.examples_b, counts.second);
  }
}

// Every field, doubles compared bit for bit.
void expect_identical(const ae::QualityReport& x, const ae::QualityReport& y) {
  auto same = [](double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; };
  ASSERT_EQ(x.tranches.size(), y.tranches.size());
  for (size_t t = 0; t < x.tranches.size(); ++t) {
    const auto &a = x.tranches[t], &b = y.tranches[t];
    EXPECT_EQ(a.examples, b.examples);
    EXPECT_EQ(a.near_duplicate_examples, b.near_duplicate_examples);
    EXPECT_EQ(a.cross_duplicate_examples, b.cross_duplicate_examples);
    EXPECT_EQ(a.outlier_examples, b.outlier_examples);
    EXPECT_TRUE(same(a.near_duplicate_rate, b.near_duplicate_rate) && same(a.outlier_share, b.outlier_share)) << t;
  }
  ASSERT_EQ(x.pairs.size(), y.pairs.size());
  for (size_t k = 0; k < x.pairs.size(); ++k) {
    EXPECT_EQ(x.pairs[k].a, y.pairs[k].a);
    EXPECT_EQ(x.pairs[k].b, y.pairs[k].b);
    EXPECT_EQ(x.pairs[k].examples_a, y.pairs[k].examples_a);
    EXPECT_EQ(x.pairs[k].examples_b, y.pairs[k].examples_b);
    EXPECT_TRUE(same(x.pairs[k].fraction_a, y.pairs[k].fraction_a) && same(x.pairs[k].fraction_b, y.pairs[k].fraction_b));
  }
  EXPECT_EQ(x.pairs_found, y.pairs_found);
  EXPECT_EQ(x.exact_copy_examples, y.exact_copy_examples);
  EXPECT_EQ(x.zero_sketch_examples, y.zero_sketch_examples);
  EXPECT_EQ(x.outliers, y.outliers);
  EXPECT_TRUE(same(x.self_influence_threshold, y.self_influence_threshold));
  EXPECT_EQ(x.lists_used, y.lists_used);
  EXPECT_EQ(x.kmeans_iterations_run, y.kmeans_iterations_run);
}

// Recall of the index against a brute-force float64 reference on `d`, for several list counts.
void check_against_brute_force(const Data& d, const std::vector<int64_t>& list_counts, size_t min_pairs) {
  const double t = 0.98;
  // above_sure leaves out pairs within 1e-9 of the threshold, where summation order may decide.
  std::set<std::pair<int64_t, int64_t>> above, above_margin, above_sure;
  for (int64_t i = 0; i < d.n(); ++i)
    for (int64_t j = i + 1; j < d.n(); ++j) {
      const double c = cosine(d, i, j);
      if (!std::isfinite(c)) continue;  // zero rows
      if (c >= t) above.insert({i, j});
      if (c >= t + 0.002) above_margin.insert({i, j});
      if (c >= t + 1e-9) above_sure.insert({i, j});
    }
  ASSERT_GT(above.size(), min_pairs) << "the data should put many pairs above the threshold";
  ASSERT_GT(above.size(), above_margin.size() + min_pairs / 10) << "and many close to it";
  for (int64_t lists : list_counts) {
    ae::QualitySettings s;
    s.near_duplicate_cosine = t;
    s.lists = lists;
    std::vector<ae::ExamplePair> found;
    const auto r = ae::quality_signals(d.input(), s, &found);
    int64_t hit = 0, hit_margin = 0, hit_sure = 0;
    for (const auto& p : found) {
      ASSERT_LT(p.i, p.j);
      EXPECT_GE(cosine(d, p.i, p.j), t - 1e-12) << "pair " << p.i << "," << p.j << " reported below the threshold";
      hit += above.count({p.i, p.j});
      hit_margin += above_margin.count({p.i, p.j});
      hit_sure += above_sure.count({p.i, p.j});
    }
    const double recall = static_cast<double>(hit) / static_cast<double>(above.size());
    std::printf("lists=%lld (used %lld): %zu pairs found, recall %.4f of %zu pairs >= %.3f, %lld of %zu >= %.3f\n",
                static_cast<long long>(lists), static_cast<long long>(r.lists_used), found.size(), recall, above.size(), t,
                static_cast<long long>(hit_margin), above_margin.size(), t + 0.002);
    EXPECT_EQ(hit_margin, static_cast<int64_t>(above_margin.size())) << "lists " << lists;
    if (r.lists_used == 1) {
      EXPECT_EQ(hit_sure, static_cast<int64_t>(above_sure.size())) << "the exhaustive list is exact";
    }
    expect_counts_match_pairs(d, r, found);
  }
}

TEST(Quality, ClustersWithCopiesAndZeroRowsAgainstBruteForce) {
  const Data d = clustered(60, 50, 128, 7, 101);
  check_against_brute_force(d, {1, 40, 0}, 1000);
  const auto r = ae::quality_signals(d.input(), ae::QualitySettings{});
  EXPECT_EQ(r.zero_sketch_examples, 3);
  EXPECT_GE(r.exact_copy_examples, 25);
}

TEST(Quality, ContinuumAcrossListBoundariesAgainstBruteForce) {
  check_against_brute_force(subspace(3000, 100, 7, 303), {1, 8, 40, 120}, 1000);  // 100: padded rows
}

TEST(Quality, PlantedNoisyCopiesAcrossAndWithinTranchesAndNothingElse) {
  std::mt19937_64 rng(7);
  const int64_t dim = 128;
  Data d;
  d.dim = dim;
  d.n_tranches = 4;
  std::vector<std::vector<float>> base;
  for (int k = 0; k < 200; ++k) {  // tranche 0: originals
    base.push_back(gaussian(rng, dim, 1.0));
    d.add(base.back(), 0);
  }
  for (int k = 0; k < 100; ++k) d.add(perturbed(rng, base[static_cast<size_t>(k)], 0.03, 3.0), 1);  // copies of 0..99
  for (int k = 0; k < 150; ++k) d.add(gaussian(rng, dim, 1.0), 1);
  std::vector<std::vector<float>> own;
  for (int k = 0; k < 60; ++k) {  // tranche 2: 20 of its own 60 examples copied inside it
    own.push_back(gaussian(rng, dim, 1.0));
    d.add(own.back(), 2);
  }
  for (int k = 0; k < 20; ++k) d.add(perturbed(rng, own[static_cast<size_t>(k)], 0.03), 2);
  for (int k = 0; k < 300; ++k) d.add(gaussian(rng, dim, 1.0), 3);  // tranche 3: unrelated
  for (int64_t lists : {1, 16}) {
    ae::QualitySettings s;
    s.lists = lists;
    std::vector<ae::ExamplePair> found;
    const auto r = ae::quality_signals(d.input(), s, &found);
    EXPECT_EQ(r.pairs_found, 120) << "lists " << lists;
    ASSERT_EQ(r.pairs.size(), 1u);
    EXPECT_EQ(r.pairs[0].a, 0);
    EXPECT_EQ(r.pairs[0].b, 1);
    EXPECT_EQ(r.pairs[0].examples_a, 100);
    EXPECT_EQ(r.pairs[0].examples_b, 100);
    EXPECT_DOUBLE_EQ(r.pairs[0].fraction_a, 0.5);
    EXPECT_DOUBLE_EQ(r.pairs[0].fraction_b, 100.0 / 250.0);
    EXPECT_EQ(r.tranches[0].near_duplicate_examples, 0);
    EXPECT_EQ(r.tranches[1].near_duplicate_examples, 0);
    EXPECT_EQ(r.tranches[2].near_duplicate_examples, 40);
    EXPECT_DOUBLE_EQ(r.tranches[2].near_duplicate_rate, 0.5);
    EXPECT_EQ(r.tranches[3].near_duplicate_examples, 0);
    EXPECT_EQ(r.tranches[3].cross_duplicate_examples, 0);
    EXPECT_EQ(r.exact_copy_examples, 0);
    for (const auto& p : found) {  // each found pair is a planted one
      const int64_t ti = d.tranche[static_cast<size_t>(p.i)], tj = d.tranche[static_cast<size_t>(p.j)];
      if (ti == 0) {
        EXPECT_EQ(p.j, 200 + p.i);
      } else {
        EXPECT_TRUE(ti == 2 && tj == 2 && p.j == p.i + 60) << p.i << "," << p.j;
      }
    }
  }
}

TEST(Quality, SameBitsForOneTwoAndThreeThreads) {
  // Over 4096 distinct sketches, so the automatic setting builds the index (k-means included).
  const Data d = clustered(120, 50, 128, 5, 202);
  ae::QualitySettings s;
  s.threads = 1;
  std::vector<ae::ExamplePair> p1, p2;
  const auto r1 = ae::quality_signals(d.input(), s, &p1);
  EXPECT_GT(r1.lists_used, 1);
  EXPECT_GT(r1.kmeans_iterations_run, 1);
  EXPECT_GT(r1.pairs_found, 0);
  for (int threads : {2, 3}) {
    s.threads = threads;
    const auto r2 = ae::quality_signals(d.input(), s, &p2);
    expect_identical(r1, r2);
    EXPECT_TRUE(p1 == p2) << threads << " threads";
  }
  s.threads = 2;
  expect_identical(r1, ae::quality_signals(d.input(), s));  // without the pair list
}

TEST(Quality, OutlierSharesOnAHandCheckedCase) {
  Data d;
  d.dim = 4;
  d.n_tranches = 4;
  const double si[] = {5, 1, 5, 3, 9, 0, 2, 5, 7, 4};
  const int64_t tr[] = {0, 0, 1, 1, 1, 2, 2, 2, 2, 2};
  std::mt19937_64 rng(3);
  for (int i = 0; i < 10; ++i) d.add(gaussian(rng, 4, 1.0), tr[i], si[i]);
  ae::QualitySettings s;
  s.near_duplicate_cosine = 0.999999;
  s.outlier_top_fraction = 0.3;  // 3 outliers: 9 (example 4), 7 (8), then 5 (0: lowest index of the three 5s)
  auto r = ae::quality_signals(d.input(), s);
  EXPECT_EQ(r.outliers, 3);
  EXPECT_EQ(r.self_influence_threshold, 5.0);
  EXPECT_EQ(r.tranches[0].outlier_examples, 1);
  EXPECT_DOUBLE_EQ(r.tranches[0].outlier_share, 0.5);
  EXPECT_EQ(r.tranches[1].outlier_examples, 1);
  EXPECT_DOUBLE_EQ(r.tranches[1].outlier_share, 1.0 / 3.0);
  EXPECT_EQ(r.tranches[2].outlier_examples, 1);
  EXPECT_DOUBLE_EQ(r.tranches[2].outlier_share, 0.2);
  EXPECT_EQ(r.tranches[3].examples, 0);
  EXPECT_EQ(r.tranches[3].outlier_share, 0.0) << "an empty tranche has share 0, not 0/0";
  s.outlier_top_fraction = 0.4;  // adds example 2 (the next 5), in tranche 1
  r = ae::quality_signals(d.input(), s);
  EXPECT_EQ(r.outliers, 4);
  EXPECT_EQ(r.tranches[0].outlier_examples, 1);
  EXPECT_EQ(r.tranches[1].outlier_examples, 2);
  EXPECT_EQ(r.tranches[2].outlier_examples, 1);
  s.outlier_top_fraction = 0.01;  // round(0.1) = 0, but at least one
  r = ae::quality_signals(d.input(), s);
  EXPECT_EQ(r.outliers, 1);
  EXPECT_EQ(r.self_influence_threshold, 9.0);
  EXPECT_EQ(r.tranches[1].outlier_examples, 1);
}

// The message of the exception `f` throws (empty if none).
template <class E, class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

TEST(Quality, BadInputNamesTheFieldOrExample) {
  Data d;
  d.dim = 8;
  d.n_tranches = 2;
  std::mt19937_64 rng(5);
  for (int i = 0; i < 12; ++i) d.add(gaussian(rng, 8, 1.0), i % 2, 1.0);
  const ae::QualitySettings s;
  auto run = [&](const Data& x, const ae::QualitySettings& st = ae::QualitySettings{}) {
    return [&x, st] { ae::quality_signals(x.input(), st); };
  };
  ASSERT_NO_THROW(run(d)());
  Data empty = d;
  empty.sketch.clear();
  empty.tranche.clear();
  empty.self_influence.clear();
  EXPECT_NE(error_of<attrace::InputError>(run(empty)).find("no examples"), std::string::npos);
  Data flat = d;
  flat.dim = 0;
  EXPECT_NE(error_of<attrace::InputError>(run(flat)).find("dim = 0"), std::string::npos);
  Data nan = d;
  nan.sketch[7 * 8 + 3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NE(error_of<attrace::NumericError>(run(nan)).find("sketch of example 7 is not finite at column 3"), std::string::npos);
  Data inf_si = d;
  inf_si.self_influence[5] = std::numeric_limits<double>::infinity();
  EXPECT_NE(error_of<attrace::NumericError>(run(inf_si)).find("self-influence of example 5"), std::string::npos);
  Data bad_t = d;
  bad_t.tranche[9] = 2;
  EXPECT_NE(error_of<attrace::InputError>(run(bad_t)).find("example 9 has tranche index 2, outside [0, 2)"), std::string::npos);
  ae::QualitySettings bad = s;
  bad.near_duplicate_cosine = 1.0;
  EXPECT_NE(error_of<attrace::InputError>(run(d, bad)).find("near_duplicate_cosine"), std::string::npos);
  bad = s;
  bad.outlier_top_fraction = 0;
  EXPECT_NE(error_of<attrace::InputError>(run(d, bad)).find("outlier_top_fraction"), std::string::npos);
  bad = s;
  bad.probes = 0;
  EXPECT_NE(error_of<attrace::InputError>(run(d, bad)).find("probes"), std::string::npos);
}

TEST(Quality, ExactCopiesAreNearDuplicatesAndZeroSketchesAreNot) {
  Data d;
  d.dim = 16;
  d.n_tranches = 3;
  std::mt19937_64 rng(9);
  const auto x = gaussian(rng, 16, 1.0);
  d.add(x, 0);
  d.add(x, 0);
  d.add(x, 1);
  d.add(std::vector<float>(16, 0.0f), 2);
  d.add(std::vector<float>(16, 0.0f), 2);
  d.add(gaussian(rng, 16, 1.0), 2);
  std::vector<ae::ExamplePair> found;
  const auto r = ae::quality_signals(d.input(), ae::QualitySettings{}, &found);
  EXPECT_EQ(r.exact_copy_examples, 3);
  EXPECT_EQ(r.zero_sketch_examples, 2);
  EXPECT_EQ(r.pairs_found, 3);
  EXPECT_EQ(r.tranches[0].near_duplicate_examples, 2);
  EXPECT_EQ(r.tranches[0].cross_duplicate_examples, 2);
  EXPECT_EQ(r.tranches[1].near_duplicate_examples, 0);
  EXPECT_EQ(r.tranches[1].cross_duplicate_examples, 1);
  EXPECT_EQ(r.tranches[2].near_duplicate_examples, 0);
  ASSERT_EQ(r.pairs.size(), 1u);
  EXPECT_EQ(r.pairs[0].examples_a, 2);
  EXPECT_EQ(r.pairs[0].examples_b, 1);
  expect_counts_match_pairs(d, r, found);
}

}  // namespace
