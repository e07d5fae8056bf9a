#include <attrace/engine/report.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/engine/score.hpp>
#include <attrace/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#ifndef ATTRACE_VERSION
#error "ATTRACE_VERSION must be defined by the build"
#endif
#ifndef ATTRACE_GIT_REVISION
#error "ATTRACE_GIT_REVISION must be defined by the build"
#endif

namespace attrace::engine {

std::string engine_version() { return ATTRACE_VERSION; }
std::string engine_git_revision() { return ATTRACE_GIT_REVISION; }

namespace {

/// A tranche whose median self-influence is this many times the training set's median is
/// flagged: mislabeled or out-of-distribution examples are those the model fits least easily.
constexpr double kHighSelfInfluenceRatio = 2.0;

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Nearest-rank percentile of a sorted vector.
double percentile_sorted(const std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// True when examples i and j have identical inputs and targets (bitwise). `digests`: content
// digests to compare instead (a dataset rebuilt from a store, or a token dataset).
bool same_example(const connectors::Dataset& ds, const std::vector<uint8_t>& digests, int64_t i, int64_t j) {
  if (!digests.empty()) return std::memcmp(digests.data() + i * 32, digests.data() + j * 32, 32) == 0;
  const int64_t w = ds.example_width();
  if (std::memcmp(ds.inputs.data() + i * w, ds.inputs.data() + j * w, static_cast<size_t>(w) * sizeof(float)) != 0)
    return false;
  if (ds.target_kind == connectors::TargetKind::class_index)
    return ds.class_targets[static_cast<size_t>(i)] == ds.class_targets[static_cast<size_t>(j)];
  const int64_t tw = ds.target_width();
  return std::memcmp(ds.regression_targets.data() + i * tw, ds.regression_targets.data() + j * tw,
                     static_cast<size_t>(tw) * sizeof(float)) == 0;
}

}  // namespace

// Groups of identical examples (each group sorted, groups ordered by first member).
std::vector<std::vector<int64_t>> identical_examples(const connectors::Dataset& ds) {
  std::map<uint64_t, std::vector<int64_t>> buckets;
  const int64_t w = ds.example_width(), tw = ds.target_width();
  // Token datasets (ids, lengths, per-position targets) are compared by their content digests.
  const bool tokens = ds.input_kind == connectors::InputKind::integers;
  const std::vector<uint8_t> digests =
      tokens ? connectors::example_digests(ds) : ds.inputs.empty() ? ds.digests : std::vector<uint8_t>{};
  const bool by_digest = !digests.empty();
  for (int64_t i = 0; i < ds.size(); ++i) {
    if (by_digest) {
      buckets[fnv1a(digests.data() + i * 32, 32)].push_back(i);
      continue;
    }
    uint64_t h = fnv1a(ds.inputs.data() + i * w, static_cast<size_t>(w) * sizeof(float));
    if (ds.target_kind == connectors::TargetKind::class_index)
      h = fnv1a(&ds.class_targets[static_cast<size_t>(i)], sizeof(int64_t), h);
    else
      h = fnv1a(ds.regression_targets.data() + i * tw, static_cast<size_t>(tw) * sizeof(float), h);
    buckets[h].push_back(i);
  }
  std::vector<std::vector<int64_t>> groups;
  for (auto& [h, members] : buckets) {
    (void)h;
    std::vector<bool> used(members.size(), false);
    for (size_t a = 0; a < members.size(); ++a) {
      if (used[a]) continue;
      std::vector<int64_t> g{members[a]};
      for (size_t b = a + 1; b < members.size(); ++b)
        if (!used[b] && same_example(ds, digests, members[a], members[b])) {
          used[b] = true;
          g.push_back(members[b]);
        }
      if (g.size() > 1) groups.push_back(std::move(g));
    }
  }
  std::sort(groups.begin(), groups.end());
  return groups;
}

namespace {

nlohmann::json top_list(const std::vector<kernels::TopEntry>& entries, const connectors::Dataset& train) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& e : entries)
    out.push_back({{"id", train.ids[static_cast<size_t>(e.row)]},
                   {"tranche", train.tranches[static_cast<size_t>(train.tranche[static_cast<size_t>(e.row)])].id},
                   {"score", e.score}});
  return out;
}

}  // namespace

Attribution summarize(const Config& config, const connectors::Dataset& train, const TracinResult& r) {
  const int64_t n_tr = static_cast<int64_t>(train.tranches.size());
  const auto counts = train.tranche_counts();
  Attribution a;
  std::vector<std::vector<double>> si(static_cast<size_t>(n_tr));
  for (int64_t i = 0; i < r.n_train; ++i)
    si[static_cast<size_t>(train.tranche[static_cast<size_t>(i)])].push_back(r.self_influence[static_cast<size_t>(i)]);
  const double global_median = median_of(r.self_influence);

  for (int64_t t = 0; t < n_tr; ++t) {
    TrancheSummary s;
    s.index = t;
    s.tranche = train.tranches[static_cast<size_t>(t)];
    s.examples = counts[static_cast<size_t>(t)];
    const double* row = r.tranche_query.data() + t * r.n_query;
    double total = 0, clipped = 0;
    for (int64_t j = 0; j < r.n_query; ++j) {
      total += row[j];
      clipped += std::max(row[j], 0.0);
    }
    s.total_influence = total;
    s.mean_influence = s.examples ? total / static_cast<double>(s.examples) : 0;
    s.positive_mass = config.negative_policy == NegativePolicy::clip ? std::max(total, 0.0) : clipped;
    auto v = si[static_cast<size_t>(t)];
    std::sort(v.begin(), v.end());
    double sum = 0;
    for (double x : v) sum += x;
    s.self_influence_mean = v.empty() ? 0 : sum / static_cast<double>(v.size());
    s.self_influence_median = median_of(v);
    s.self_influence_p90 = percentile_sorted(v, 0.9);
    s.self_influence_max = v.empty() ? 0 : v.back();
    s.self_influence_ratio = global_median > 0 ? s.self_influence_median / global_median : 0;
    if (s.total_influence < 0) s.flags.push_back("negative_influence");
    if (s.self_influence_ratio > kHighSelfInfluenceRatio) s.flags.push_back("high_self_influence");
    a.tranches.push_back(std::move(s));
  }
  for (const auto& t : a.tranches) a.total_positive_mass += t.positive_mass;
  for (auto& t : a.tranches) t.share = a.total_positive_mass > 0 ? t.positive_mass / a.total_positive_mass : 0;

  // Duplicates: per group of identical examples, which tranches hold a copy.
  std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> shared;  // (a,b) -> (in a, in b)
  for (const auto& g : identical_examples(train)) {
    std::map<int64_t, int64_t> per_tranche;  // tranche -> members in this group
    for (int64_t i : g) ++per_tranche[train.tranche[static_cast<size_t>(i)]];
    for (const auto& [t, k] : per_tranche)
      if (k > 1) a.tranches[static_cast<size_t>(t)].internal_duplicates += k - 1;
    for (auto x = per_tranche.begin(); x != per_tranche.end(); ++x)
      for (auto y = std::next(x); y != per_tranche.end(); ++y) {
        auto& e = shared[{x->first, y->first}];
        e.first += x->second;
        e.second += y->second;
      }
  }
  for (const auto& [key, val] : shared) {
    DuplicatePair d;
    d.a = key.first;
    d.b = key.second;
    d.shared_a = val.first;
    d.shared_b = val.second;
    d.fraction_a = static_cast<double>(d.shared_a) / static_cast<double>(a.tranches[static_cast<size_t>(d.a)].examples);
    d.fraction_b = static_cast<double>(d.shared_b) / static_cast<double>(a.tranches[static_cast<size_t>(d.b)].examples);
    d.flagged = d.fraction_a >= config.duplicate_threshold || d.fraction_b >= config.duplicate_threshold;
    if (d.flagged) {
      a.tranches[static_cast<size_t>(d.a)].flags.push_back("duplicates:" + a.tranches[static_cast<size_t>(d.b)].tranche.id);
      a.tranches[static_cast<size_t>(d.b)].flags.push_back("duplicates:" + a.tranches[static_cast<size_t>(d.a)].tranche.id);
    }
    a.duplicates.push_back(d);
  }
  for (auto& t : a.tranches)
    if (t.internal_duplicates > 0) t.flags.push_back("internal_duplicates");
  return a;
}

std::vector<uint64_t> registration_order(const connectors::Dataset& train, const std::optional<RegistryBinding>& registry) {
  std::vector<uint64_t> order;
  if (!registry) {
    for (size_t t = 0; t < train.tranches.size(); ++t) order.push_back(t + 1);
    return order;
  }
  ATTRACE_CHECK(registry->tranches.size() == train.tranches.size(), InputError,
                "registry " + registry->source + ": " + std::to_string(registry->tranches.size()) + " registered tranches for " +
                    std::to_string(train.tranches.size()) + " tranches in " + train.path);
  for (size_t t = 0; t < train.tranches.size(); ++t) {
    const auto& reg = registry->tranches[t];
    ATTRACE_CHECK(reg.id == train.tranches[t].id, InputError,
                  "registry " + registry->source + ": entry " + std::to_string(t) + " is tranche '" + reg.id + "' but " +
                      train.path + " has '" + train.tranches[t].id + "' there (the binding must follow dataset order)");
    ATTRACE_CHECK(reg.order > 0, InputError,
                  "registry " + registry->source + ": tranche '" + reg.id + "' has no registration order (0)");
    order.push_back(reg.order);
  }
  return order;
}

void apply_rewards(const Config& config, const connectors::Dataset& train, const TracinResult& r,
                   const std::vector<ExamplePair>* near_pairs, const std::optional<RegistryBinding>& registry,
                   double outlier_top_fraction, Attribution& a) {
  ATTRACE_CHECK(static_cast<int64_t>(r.example_total.size()) == r.n_train && static_cast<int64_t>(r.self_influence.size()) == r.n_train,
                InputError, "reward rules: the scorer's per-example totals or self-influence are missing");
  const auto groups = identical_examples(train);
  RewardInput in;
  in.n = r.n_train;
  in.n_tranches = static_cast<int64_t>(a.tranches.size());
  in.tranche = train.tranche.data();
  in.example_total = r.example_total.data();
  in.self_influence = r.self_influence.data();
  in.exact_groups = &groups;
  in.near_pairs = near_pairs;
  in.order = registration_order(train, registry);
  in.outlier_top_fraction = outlier_top_fraction;
  std::vector<double> before;
  for (const auto& t : a.tranches) before.push_back(t.positive_mass);
  a.rewards = reward_rules(config, in, before);
  a.rewards.order_source = registry ? "registry" : "dataset";
  // The total adds the masses in ascending order of value: the same multiset of masses gives the
  // same bits whatever the tranche order, and a tranche credited 0 changes nothing.
  std::vector<double> masses;
  for (size_t t = 0; t < a.tranches.size(); ++t) {
    a.tranches[t].positive_mass = a.rewards.tranches[t].mass_after_hold;
    masses.push_back(a.tranches[t].positive_mass);
    if (a.rewards.tranches[t].held) a.tranches[t].flags.push_back("quality_hold");
  }
  std::sort(masses.begin(), masses.end());
  a.total_positive_mass = 0;
  for (double m : masses) a.total_positive_mass += m;
  for (auto& t : a.tranches) t.share = a.total_positive_mass > 0 ? t.positive_mass / a.total_positive_mass : 0;
}

nlohmann::json rewards_json(const Config& config, const Attribution& a) {
  if (!a.rewards.applied) return nlohmann::json::object();
  nlohmann::json per = nlohmann::json::array();
  for (size_t t = 0; t < a.tranches.size(); ++t) {
    const auto& w = a.rewards.tranches[t];
    per.push_back({{"id", a.tranches[t].tranche.id},
                   {"order", std::to_string(w.order)},
                   {"grouped_examples", w.grouped_examples},
                   {"uncredited_examples", w.uncredited_examples},
                   {"credited_total", w.credited_total},
                   {"duplicate_rule_changed", w.duplicate_rule_changed},
                   {"mass_before", w.mass_before},
                   {"mass_after_duplicate_credit", w.mass_after_duplicates},
                   {"quality_hold",
                    {{"units", w.hold_units},
                     {"outliers", w.hold_outliers},
                     {"outlier_share", w.hold_outlier_share},
                     {"held", w.held},
                     {"factor", w.hold_factor}}},
                   {"mass_after_quality_hold", w.mass_after_hold}});
  }
  return {{"rule_order", "negative policy, then duplicate credit, then quality hold, then shares"},
          {"duplicate_credit", to_string(config.duplicate_credit)},
          {"duplicate_match", to_string(config.duplicate_match)},
          {"registration_order", a.rewards.order_source},
          {"quality_hold", to_string(config.quality_hold)},
          {"quality_hold_threshold", config.quality_hold_threshold},
          {"quality_hold_min_outliers", config.quality_hold_min_outliers},
          {"outlier_top_fraction", a.rewards.outlier_top_fraction},
          {"groups", a.rewards.groups},
          {"grouped_examples", a.rewards.grouped_examples},
          {"largest_group", a.rewards.largest_group},
          {"units", a.rewards.units},
          {"outlier_units", a.rewards.outlier_units},
          {"tranches", per}};
}

nlohmann::json registry_json(const RegistryBinding& registry) {
  nlohmann::json per = nlohmann::json::array();
  for (const auto& t : registry.tranches)
    per.push_back({{"id", t.id},
                   {"account", t.account},
                   {"license", t.license},
                   {"content_root", t.content_root},
                   {"order", std::to_string(t.order)}});
  return {{"source", registry.source}, {"tranches", per}};
}

nlohmann::json report_json(const Config& config, const connectors::Dataset& train, const connectors::Dataset& query,
                           const TracinResult& r, const Attribution& a) {
  nlohmann::json j;
  j["format"] = "attrace.report/1";
  j["method"] = config.projection == Projection::none ? "tracin_exact" : "tracin_projected";
  j["negative_policy"] = to_string(config.negative_policy);
  j["counts"] = {{"train", r.n_train},
                 {"query", r.n_query},
                 {"checkpoints", r.checkpoints.size()},
                 {"tranches", a.tranches.size()},
                 {"gradient_dim", r.checkpoints.empty() ? 0 : r.checkpoints.front().dim},
                 {"feature_dim", r.checkpoints.empty() ? 0 : r.checkpoints.front().feature_dim}};
  j["total_positive_mass"] = a.total_positive_mass;
  j["self_influence_median"] = median_of(r.self_influence);
  j["attribution"] = nlohmann::json::array();
  j["tranches"] = nlohmann::json::array();
  for (const auto& t : a.tranches) {
    j["attribution"].push_back({{"tranche", t.tranche.id}, {"account", t.tranche.account}, {"share", t.share}});
    j["tranches"].push_back({{"index", t.index},
                             {"id", t.tranche.id},
                             {"account", t.tranche.account},
                             {"name", t.tranche.name},
                             {"license", t.tranche.license},
                             {"examples", t.examples},
                             {"total_influence", t.total_influence},
                             {"mean_influence", t.mean_influence},
                             {"positive_mass", t.positive_mass},
                             {"share", t.share},
                             {"self_influence",
                              {{"mean", t.self_influence_mean},
                               {"median", t.self_influence_median},
                               {"p90", t.self_influence_p90},
                               {"max", t.self_influence_max},
                               {"ratio_to_median", t.self_influence_ratio}}},
                             {"internal_duplicates", t.internal_duplicates},
                             {"flags", t.flags}});
  }
  if (a.rewards.applied) {
    j["rewards"] = rewards_json(config, a);
    for (size_t t = 0; t < a.tranches.size(); ++t) j["tranches"][t]["rewards"] = j["rewards"]["tranches"][t];
    j["rewards"].erase("tranches");
  }
  j["duplicates"] = nlohmann::json::array();
  for (const auto& d : a.duplicates)
    j["duplicates"].push_back({{"tranches", {a.tranches[static_cast<size_t>(d.a)].tranche.id, a.tranches[static_cast<size_t>(d.b)].tranche.id}},
                               {"shared_examples", {d.shared_a, d.shared_b}},
                               {"fractions", {d.fraction_a, d.fraction_b}},
                               {"flagged", d.flagged}});
  j["queries"] = nlohmann::json::array();
  for (int64_t q = 0; q < r.n_query; ++q) {
    const auto& tk = r.topk[static_cast<size_t>(q)];
    j["queries"].push_back({{"id", query.ids[static_cast<size_t>(q)]},
                            {"proponents", top_list(tk.proponents, train)},
                            {"opponents", top_list(tk.opponents, train)}});
  }
  return j;
}

namespace {
// The manifest's description of how scores were summed (determinism spec, point 1).
std::string score_accumulation(const Config& config) {
  const bool fp64_features = feature_dtype_of(config) == connectors::FeatureDtype::f64;
  if (config.scoring == Scoring::canonical || (config.scoring == Scoring::fma && fp64_features))
    return "fp64, canonical 8-lane order";
  if (config.scoring == Scoring::fma)
    return "fp32 FMA, 8 lanes, 512-element chunks combined in fp64 (kernel fma/1)";
  if (config.gemm_math == kernels::GemmMath::tf32) return "TF32 GEMM (inputs rounded to TF32 ties-away, fp32 sums in library order)";
  if (config.gemm_math == kernels::GemmMath::bf16) return "bf16 GEMM (inputs rounded to bfloat16 nearest-even, fp32 sums in library order)";
  const bool fp64 = config.precision == Precision::fp64 && config.projection == Projection::none;
  return std::string(fp64 ? "fp64" : "fp32") + " BLAS GEMM (library order; batch-size dependent in the last bits)";
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}
std::string num(double v) {
  std::ostringstream o;
  o.precision(17);
  o << v;
  return o.str();
}
}  // namespace

std::string attribution_csv(const Attribution& a) {
  // The reward columns come last, so readers of the first eight columns are unaffected.
  std::string s = "tranche,account,name,examples,total_influence,mean_influence,share,flags";
  if (a.rewards.applied) s += ",mass_before_rules,mass_after_duplicate_credit,quality_hold_factor,mass_after_quality_hold";
  s += "\n";
  for (size_t k = 0; k < a.tranches.size(); ++k) {
    const auto& t = a.tranches[k];
    std::string flags;
    for (const auto& f : t.flags) flags += (flags.empty() ? "" : ";") + f;
    s += csv_field(t.tranche.id) + "," + t.tranche.account + "," + csv_field(t.tranche.name) + "," +
         std::to_string(t.examples) + "," + num(t.total_influence) + "," + num(t.mean_influence) + "," + num(t.share) +
         "," + csv_field(flags);
    if (a.rewards.applied) {
      const auto& w = a.rewards.tranches[k];
      s += "," + num(w.mass_before) + "," + num(w.mass_after_duplicates) + "," + num(w.hold_factor) + "," + num(w.mass_after_hold);
    }
    s += "\n";
  }
  return s;
}

nlohmann::json manifest_json(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                             const connectors::Dataset& query, const TracinResult& r, const std::string& backend) {
  nlohmann::json m;
  m["format"] = "attrace.manifest/1";
  m["engine"] = {{"name", "attrace"}, {"version", engine_version()}, {"git_revision", engine_git_revision()}};
  m["settings"] = to_json(config);
  m["method"] = config.projection == Projection::none ? "tracin_exact" : "tracin_projected";
  if (config.projection == Projection::none) {
    m["projection"] = {{"kind", "none"}};
  } else {
    nlohmann::json p = {{"kind", to_string(config.projection)},
                        {"k", config.projection_k},
                        {"seed", std::to_string(config.projection_seed)},
                        {"distribution", to_string(config.projection_distribution)},
                        {"generator", "philox4x32-10; entry (row, col) of (seed, stream); scale 1/sqrt(k)"},
                        {"features", "sqrt(lr_c) * P_c g_c, float32, stored as " + connectors::to_string(feature_dtype_of(config))},
                        {"feature_dim", r.checkpoints.empty() ? 0 : r.checkpoints.front().feature_dim}};
    nlohmann::json per = nlohmann::json::array();
    for (const auto& c : r.checkpoints) {
      if (config.projection == Projection::dense) {
        per.push_back({{"stream", c.dense_stream}});
      } else {
        nlohmann::json layers = nlohmann::json::array();
        for (const auto& l : c.kronecker)
          layers.push_back({{"layer", l.layer}, {"d_in", l.d_in}, {"d_out", l.d_out}, {"k_in", l.k_in}, {"k_out", l.k_out},
                            {"stream_in", l.stream_in}, {"stream_out", l.stream_out},
                            {"identity_in", l.k_in == l.d_in}, {"identity_out", l.k_out == l.d_out}});
        per.push_back({{"layers", layers}});
      }
    }
    p["checkpoints"] = per;
    m["projection"] = p;
  }
  m["math"] = {{"precision", to_string(config.precision)},
               {"score_accumulation", score_accumulation(config)},
               {"score_checkpoint_order", "score(i, j) = sum over checkpoints in run order of weight_c <f_c(i), f_c(j)>"},
               {"tranche_sum_order", "blocks of " + std::to_string(kTrancheBlock) +
                                         " training rows; rows ascending within a block; block partials added in ascending block order"},
               {"feature_dtype", connectors::to_string(feature_dtype_of(config))},
               {"device", backend},
               {"fp_contract", "off"}};
  m["negative_policy"] = to_string(config.negative_policy);
  m["tolerance"] = {{"kind", "tranche_share_absolute"}, {"value", config.tolerance}};
  nlohmann::json ckpts = nlohmann::json::array();
  for (size_t c = 0; c < run.checkpoints.size(); ++c) {
    const auto& ck = run.checkpoints[c];
    ckpts.push_back({{"file", ck.file},
                     {"sha256", ck.sha256},
                     {"step", std::to_string(ck.step)},
                     {"lr", ck.lr},
                     {"gradient_path", c < r.checkpoints.size() ? to_string(r.checkpoints[c].path) : ""}});
  }
  m["run"] = {{"file", run.path}, {"sha256", run.sha256}, {"checkpoints", ckpts}};
  m["parameters"] = r.checkpoints.empty() ? nlohmann::json::array() : nlohmann::json(r.checkpoints.front().parameters);
  m["gradient_dim"] = r.checkpoints.empty() ? 0 : r.checkpoints.front().dim;
  m["train"] = {{"file", train.path}, {"sha256", train.sha256}, {"examples", train.size()}};
  m["query"] = {{"file", query.path}, {"sha256", query.sha256}, {"examples", query.size()}};
  nlohmann::json tranches = nlohmann::json::array();
  const auto counts = train.tranche_counts();
  for (size_t t = 0; t < train.tranches.size(); ++t)
    tranches.push_back({{"id", train.tranches[t].id}, {"account", train.tranches[t].account}, {"examples", counts[t]}});
  m["tranches"] = tranches;
  return m;
}

std::string canonical(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict); }

}  // namespace attrace::engine
