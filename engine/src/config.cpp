#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/toml_util.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/score.hpp>
#include <attrace/error.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <set>

namespace attrace::engine {

std::string to_string(Loss v) { return v == Loss::mse ? "mse" : v == Loss::next_token ? "next_token" : "cross_entropy"; }
std::string to_string(Precision v) { return v == Precision::fp64 ? "fp64" : "fp32"; }
std::string to_string(GradPath v) {
  return v == GradPath::chain ? "chain" : v == GradPath::graph ? "graph" : v == GradPath::general ? "general" : "auto";
}
std::string to_string(NegativePolicy v) {
  return v == NegativePolicy::clip_per_query ? "clip_per_query" : "clip";
}
std::string to_string(Projection v) {
  return v == Projection::dense ? "dense" : v == Projection::kronecker ? "kronecker" : "none";
}
std::string to_string(ScoresOutput v) {
  return v == ScoresOutput::always ? "always" : v == ScoresOutput::never ? "never" : "auto";
}
std::string to_string(Device v) { return v == Device::cuda ? "cuda" : v == Device::automatic ? "auto" : "cpu"; }
std::string to_string(Scoring v) { return v == Scoring::blas ? "blas" : v == Scoring::canonical ? "canonical" : "fma"; }
std::string to_string(Distribution v) { return v == Distribution::gaussian ? "gaussian" : "rademacher"; }
std::string to_string(FeatureType v) {
  switch (v) {
    case FeatureType::f32:
      return "f32";
    case FeatureType::f64:
      return "f64";
    case FeatureType::bf16:
      return "bf16";
    case FeatureType::f16:
      return "f16";
    default:
      return "auto";
  }
}

std::string to_string(Factoring v) {
  return v == Factoring::never ? "never" : v == Factoring::always ? "always" : "auto";
}

std::string to_string(DuplicateCredit v) {
  return v == DuplicateCredit::split ? "split" : v == DuplicateCredit::none ? "none" : "first_registered";
}
std::string to_string(DuplicateMatch v) { return v == DuplicateMatch::exact ? "exact" : "near"; }
std::string to_string(QualityHold v) { return v == QualityHold::none ? "none" : "downweight"; }
std::string to_string(Method v) {
  return v == Method::grad_dot ? "grad_dot" : v == Method::grad_cos ? "grad_cos" : v == Method::trak ? "trak" : "tracin";
}

connectors::FeatureDtype feature_dtype_of(const Config& c) {
  switch (c.feature_dtype) {
    case FeatureType::f32:
      return connectors::FeatureDtype::f32;
    case FeatureType::f64:
      return connectors::FeatureDtype::f64;
    case FeatureType::bf16:
      return connectors::FeatureDtype::bf16;
    case FeatureType::f16:
      return connectors::FeatureDtype::f16;
    default:
      return c.precision == Precision::fp64 && c.projection == Projection::none ? connectors::FeatureDtype::f64
                                                                                 : connectors::FeatureDtype::f32;
  }
}

namespace {

template <class E>
E parse_enum(const std::string& where, const std::string& value, const std::map<std::string, E>& names) {
  auto it = names.find(value);
  if (it != names.end()) return it->second;
  std::string allowed;
  for (const auto& [k, v] : names) allowed += (allowed.empty() ? "" : ", ") + k;
  throw InputError(where + ": '" + value + "' is not one of " + allowed);
}

// Merges `src` into `dst`, recursing into tables (later values win).
void merge(toml::table& dst, const toml::table& src) {
  for (auto&& [k, v] : src) {
    if (v.is_table() && dst[k].is_table()) {
      merge(*dst[k].as_table(), *v.as_table());
    } else {
      dst.insert_or_assign(k, v);
    }
  }
}

toml::table parse_override(const std::string& text) {
  const auto eq = text.find('=');
  ATTRACE_CHECK(eq != std::string::npos && eq > 0, InputError,
                "--set '" + text + "': expected section.key=value");
  try {
    return toml::parse(text);
  } catch (const toml::parse_error&) {
    // Accept bare words for strings: --set gradients.loss=mse
    const std::string quoted = text.substr(0, eq + 1) + "\"" + text.substr(eq + 1) + "\"";
    try {
      return toml::parse(quoted);
    } catch (const toml::parse_error& e) {
      throw InputError("--set '" + text + "': " + std::string(e.description()));
    }
  }
}

// Records every key (and each enclosing table) of an override as set by `option`.
void note_origins(const toml::table& t, const std::string& prefix, const std::string& option,
                  std::map<std::string, std::string>& origins) {
  for (auto&& [k, v] : t) {
    const std::string key = prefix + std::string(k.str());
    origins[key] = option;
    if (const toml::table* sub = v.as_table()) note_origins(*sub, key + ".", option, origins);
  }
}

// Who set each key given on the command line: "sec.key" (and "sec") -> "--set 'TEXT'". Errors
// about such a key blame that option, not the config file.
using Origins = std::map<std::string, std::string>;

// The place to blame for `key` ("section.key" or a section): its --set option or the file.
std::string blame(const Origins* origins, const std::string& file, const std::string& key) {
  if (origins) {
    const auto it = origins->find(key);
    if (it != origins->end()) return it->second;
  }
  return file;
}

class Reader {
 public:
  Reader(const toml::table& doc, std::string file, const Origins* origins = nullptr)
      : doc_(doc), file_(std::move(file)), origins_(origins) {}

  const toml::table* section(const std::string& name, const std::set<std::string>& keys) {
    const toml::node* n = doc_.get(name);
    if (!n) return nullptr;
    const toml::table* t = n->as_table();
    ATTRACE_CHECK(t, InputError, blame(origins_, file_, name) + ": [" + name + "] must be a table");
    for (auto&& [k, v] : *t) {
      (void)v;
      const std::string key = name + "." + std::string(k.str());
      ATTRACE_CHECK(keys.count(std::string(k.str())), InputError,
                    blame(origins_, file_, key) + ": unknown setting '" + key + "'");
    }
    return t;
  }
  std::string where(const std::string& sec, const std::string& key) const {
    return blame(origins_, file_, sec + "." + key) + ": " + sec + "." + key;
  }
  template <class T>
  void get(const toml::table* t, const std::string& sec, const std::string& key, T& out) {
    if (!t || !t->contains(key)) return;
    const toml::node& n = *t->get(key);
    if constexpr (std::is_same_v<T, std::string>) {
      auto v = n.value<std::string>();
      ATTRACE_CHECK(v.has_value() && n.is_string(), InputError, where(sec, key) + " must be a string");
      out = *v;
    } else if constexpr (std::is_same_v<T, int64_t>) {
      ATTRACE_CHECK(n.is_integer(), InputError, where(sec, key) + " must be an integer");
      out = *n.value<int64_t>();
    } else if constexpr (std::is_same_v<T, double>) {
      ATTRACE_CHECK(n.is_number(), InputError, where(sec, key) + " must be a number");
      out = *n.value<double>();
    } else {
      static_assert(std::is_same_v<T, std::vector<std::string>>);
      const toml::array* a = n.as_array();
      ATTRACE_CHECK(a, InputError, where(sec, key) + " must be an array of strings");
      out.clear();
      for (const auto& e : *a) {
        ATTRACE_CHECK(e.is_string(), InputError, where(sec, key) + " must be an array of strings");
        out.push_back(*e.value<std::string>());
      }
    }
  }

 private:
  const toml::table& doc_;
  std::string file_;
  const Origins* origins_;
};

// "8GiB", "512MiB", "2G", "1000000" or an integer: bytes. 0 or "auto": the default.
int64_t parse_size(const std::string& where, const std::string& text) {
  if (text == "auto" || text.empty()) return 0;
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw InputError(where + ": '" + text + "' is not a size (e.g. 8GiB, 512MiB, 1000000)");
  }
  std::string unit = text.substr(pos);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  static const std::map<std::string, double> units = {
      {"", 1},          {"B", 1},          {"K", 1024.0},        {"KB", 1e3},  {"KiB", 1024.0},
      {"M", 1048576.0}, {"MB", 1e6},       {"MiB", 1048576.0},   {"G", 1073741824.0},
      {"GB", 1e9},      {"GiB", 1073741824.0}, {"T", 1099511627776.0}, {"TB", 1e12}, {"TiB", 1099511627776.0}};
  const auto it = units.find(unit);
  ATTRACE_CHECK(it != units.end() && std::isfinite(v) && v >= 0 && v * it->second < 9.0e18, InputError,
                where + ": '" + text + "' is not a size (e.g. 8GiB, 512MiB, 1000000)");
  return static_cast<int64_t>(v * it->second);
}

std::string resolve(const std::string& base, const std::string& p) {
  if (p.empty() || std::filesystem::path(p).is_absolute()) return p;
  return (std::filesystem::path(base) / p).lexically_normal().string();
}

}  // namespace

namespace {

Config config_from_table(const toml::table& doc, const std::string& path, const Origins* origins = nullptr) {
  for (auto&& [k, v] : doc) {
    (void)v;
    static const std::set<std::string> sections = {"run",         "data",    "gradients", "projection",
                                                   "features",    "attribution", "rewards", "output"};
    ATTRACE_CHECK(sections.count(std::string(k.str())), InputError,
                  blame(origins, path, std::string(k.str())) + ": unknown section or key '" + std::string(k.str()) +
                      "' (sections: run, data, gradients, projection, features, attribution, rewards, output)");
  }
  Reader r(doc, path, origins);
  Config c;
  c.config_file = path;
  const auto* run = r.section("run", {"checkpoints"});
  r.get(run, "run", "checkpoints", c.run_file);
  const auto* data = r.section("data", {"train", "query"});
  r.get(data, "data", "train", c.train_file);
  r.get(data, "data", "query", c.query_file);

  const auto* g = r.section("gradients", {"loss", "parameters", "exclude", "batch_size", "path", "model_output", "precision", "device"});
  std::string s = to_string(c.loss);
  r.get(g, "gradients", "loss", s);
  c.loss = parse_enum<Loss>(r.where("gradients", "loss"), s,
                            {{"cross_entropy", Loss::cross_entropy}, {"mse", Loss::mse}, {"next_token", Loss::next_token}});
  r.get(g, "gradients", "parameters", c.parameters);
  r.get(g, "gradients", "exclude", c.exclude);
  if (g && g->contains("batch_size") && g->get("batch_size")->is_string()) {
    std::string b;
    r.get(g, "gradients", "batch_size", b);
    ATTRACE_CHECK(b == "auto", InputError, r.where("gradients", "batch_size") + " must be a positive integer or \"auto\", got '" + b + "'");
    c.batch_size = 0;
  } else {
    r.get(g, "gradients", "batch_size", c.batch_size);
    ATTRACE_CHECK(!g || !g->contains("batch_size") || c.batch_size > 0, InputError,
                  r.where("gradients", "batch_size") + " must be a positive integer or \"auto\", got " + std::to_string(c.batch_size));
  }
  s = to_string(c.path);
  r.get(g, "gradients", "path", s);
  c.path = parse_enum<GradPath>(r.where("gradients", "path"), s,
                                {{"auto", GradPath::automatic}, {"chain", GradPath::chain}, {"graph", GradPath::graph}, {"general", GradPath::general}});
  r.get(g, "gradients", "model_output", c.model_output);
  s = to_string(c.precision);
  r.get(g, "gradients", "precision", s);
  c.precision = parse_enum<Precision>(r.where("gradients", "precision"), s,
                                      {{"fp32", Precision::fp32}, {"fp64", Precision::fp64}});
  s = to_string(c.device);
  r.get(g, "gradients", "device", s);
  c.device = parse_enum<Device>(r.where("gradients", "device"), s,
                                {{"cpu", Device::cpu}, {"cuda", Device::cuda}, {"auto", Device::automatic}});

  const auto* pr = r.section("projection", {"kind", "k", "seed", "distribution"});
  s = to_string(c.projection);
  r.get(pr, "projection", "kind", s);
  c.projection = parse_enum<Projection>(r.where("projection", "kind"), s,
                                        {{"none", Projection::none}, {"dense", Projection::dense}, {"kronecker", Projection::kronecker}});
  r.get(pr, "projection", "k", c.projection_k);
  if (pr && pr->contains("seed") && pr->get("seed")->is_string()) {  // manifests write the seed as a decimal string
    std::string text;
    r.get(pr, "projection", "seed", text);
    try {
      size_t used = 0;
      c.projection_seed = std::stoull(text, &used);
      ATTRACE_CHECK(used == text.size(), InputError, "");
    } catch (const std::exception&) {
      throw InputError(r.where("projection", "seed") + ": '" + text + "' is not a non-negative integer");
    }
  } else {
    int64_t seed = static_cast<int64_t>(c.projection_seed);
    r.get(pr, "projection", "seed", seed);
    ATTRACE_CHECK(seed >= 0, InputError, r.where("projection", "seed") + " must be >= 0");
    c.projection_seed = static_cast<uint64_t>(seed);
  }
  s = to_string(c.projection_distribution);
  r.get(pr, "projection", "distribution", s);
  c.projection_distribution = parse_enum<Distribution>(r.where("projection", "distribution"), s,
                                                       {{"rademacher", Distribution::rademacher}, {"gaussian", Distribution::gaussian}});

  const auto* fe = r.section("features", {"dtype", "exact_limit", "factored"});
  if (fe && fe->contains("exact_limit")) {
    const toml::node& n = *fe->get("exact_limit");
    if (n.is_integer()) {
      c.exact_limit = *n.value<int64_t>();
    } else {
      std::string text;
      r.get(fe, "features", "exact_limit", text);
      c.exact_limit = parse_size(r.where("features", "exact_limit"), text);
    }
    ATTRACE_CHECK(c.exact_limit > 0, InputError, r.where("features", "exact_limit") + " must be > 0");
  }
  s = to_string(c.feature_dtype);
  r.get(fe, "features", "dtype", s);
  c.feature_dtype = parse_enum<FeatureType>(r.where("features", "dtype"), s,
                                            {{"auto", FeatureType::automatic}, {"f32", FeatureType::f32}, {"f64", FeatureType::f64},
                                             {"bf16", FeatureType::bf16}, {"f16", FeatureType::f16}});
  s = to_string(c.factored);
  r.get(fe, "features", "factored", s);
  c.factored = parse_enum<Factoring>(r.where("features", "factored"), s,
                                     {{"auto", Factoring::automatic}, {"never", Factoring::never}, {"always", Factoring::always}});

  const auto* a = r.section("attribution", {"top_k", "token_proponents", "token_top", "scoring", "gemm_math", "negative_policy", "duplicate_threshold",
                                             "tolerance", "memory_limit", "method", "checkpoint", "trak_lambda"});
  r.get(a, "attribution", "top_k", c.top_k);
  r.get(a, "attribution", "token_proponents", c.token_proponents);
  r.get(a, "attribution", "token_top", c.token_top);
  s = to_string(c.scoring);
  r.get(a, "attribution", "scoring", s);
  c.scoring = parse_enum<Scoring>(r.where("attribution", "scoring"), s, {{"fma", Scoring::fma}, {"canonical", Scoring::canonical}, {"blas", Scoring::blas}});
  s = kernels::to_string(c.gemm_math);
  r.get(a, "attribution", "gemm_math", s);
  c.gemm_math = parse_enum<kernels::GemmMath>(
      r.where("attribution", "gemm_math"), s,
      {{"ieee", kernels::GemmMath::ieee}, {"tf32", kernels::GemmMath::tf32}, {"bf16", kernels::GemmMath::bf16}});
  if (a && a->contains("memory_limit")) {
    const toml::node& n = *a->get("memory_limit");
    if (n.is_integer()) {
      c.memory_limit = *n.value<int64_t>();
      ATTRACE_CHECK(c.memory_limit >= 0, InputError, r.where("attribution", "memory_limit") + " must be >= 0");
    } else {
      std::string text;
      r.get(a, "attribution", "memory_limit", text);
      c.memory_limit = parse_size(r.where("attribution", "memory_limit"), text);
    }
  }
  s = to_string(c.negative_policy);
  r.get(a, "attribution", "negative_policy", s);
  c.negative_policy = parse_enum<NegativePolicy>(
      r.where("attribution", "negative_policy"), s,
      {{"clip", NegativePolicy::clip}, {"clip_per_query", NegativePolicy::clip_per_query}});
  r.get(a, "attribution", "duplicate_threshold", c.duplicate_threshold);
  r.get(a, "attribution", "tolerance", c.tolerance);
  s = to_string(c.method);
  r.get(a, "attribution", "method", s);
  c.method = parse_enum<Method>(r.where("attribution", "method"), s,
                                {{"tracin", Method::tracin}, {"grad_dot", Method::grad_dot}, {"grad_cos", Method::grad_cos},
                                 {"trak", Method::trak}});
  r.get(a, "attribution", "checkpoint", c.method_checkpoint);
  r.get(a, "attribution", "trak_lambda", c.trak_lambda);

  const auto* rw = r.section("rewards", {"duplicate_credit", "duplicate_match", "quality_hold", "quality_hold_threshold",
                                         "quality_hold_min_outliers"});
  s = to_string(c.duplicate_credit);
  r.get(rw, "rewards", "duplicate_credit", s);
  c.duplicate_credit = parse_enum<DuplicateCredit>(
      r.where("rewards", "duplicate_credit"), s,
      {{"first_registered", DuplicateCredit::first_registered}, {"split", DuplicateCredit::split}, {"none", DuplicateCredit::none}});
  s = to_string(c.duplicate_match);
  r.get(rw, "rewards", "duplicate_match", s);
  c.duplicate_match = parse_enum<DuplicateMatch>(r.where("rewards", "duplicate_match"), s,
                                                 {{"exact", DuplicateMatch::exact}, {"near", DuplicateMatch::near}});
  s = to_string(c.quality_hold);
  r.get(rw, "rewards", "quality_hold", s);
  c.quality_hold = parse_enum<QualityHold>(r.where("rewards", "quality_hold"), s,
                                           {{"downweight", QualityHold::downweight}, {"none", QualityHold::none}});
  r.get(rw, "rewards", "quality_hold_threshold", c.quality_hold_threshold);
  r.get(rw, "rewards", "quality_hold_min_outliers", c.quality_hold_min_outliers);

  const auto* o = r.section("output", {"scores", "scores_max_entries"});
  s = to_string(c.scores);
  r.get(o, "output", "scores", s);
  c.scores = parse_enum<ScoresOutput>(r.where("output", "scores"), s,
                                      {{"auto", ScoresOutput::automatic}, {"always", ScoresOutput::always}, {"never", ScoresOutput::never}});
  r.get(o, "output", "scores_max_entries", c.scores_max_entries);

  return c;
}

// Deepest table nesting a settings object may have: config files have sections of keys, so
// anything deeper is not a config (and must not reach the recursion below unbounded).
constexpr int kMaxSettingsDepth = 8;

// JSON (the manifest's settings object) to the same TOML document a config file would give.
toml::table table_from_json(const nlohmann::json& j, const std::string& what, int depth = 1) {
  ATTRACE_CHECK(depth <= kMaxSettingsDepth, InputError,
                what + ": settings are nested more than " + std::to_string(kMaxSettingsDepth) + " tables deep");
  toml::table t;
  for (const auto& [key, v] : j.items()) {
    if (v.is_object()) {
      t.insert_or_assign(key, table_from_json(v, what, depth + 1));
    } else if (v.is_string()) {
      t.insert_or_assign(key, v.get<std::string>());
    } else if (v.is_boolean()) {
      t.insert_or_assign(key, v.get<bool>());
    } else if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      throw InputError(what + ": settings." + key + " = " + std::to_string(v.get<uint64_t>()) +
                       " is out of range (largest allowed: " + std::to_string(INT64_MAX) + ")");
    } else if (v.is_number_integer()) {
      t.insert_or_assign(key, v.get<int64_t>());
    } else if (v.is_number()) {
      t.insert_or_assign(key, v.get<double>());
    } else if (v.is_array()) {
      toml::array a;
      for (const auto& e : v) {
        ATTRACE_CHECK(e.is_string(), InputError, what + ": settings." + key + " must be an array of strings");
        a.push_back(e.get<std::string>());
      }
      t.insert_or_assign(key, std::move(a));
    } else {
      throw InputError(what + ": settings." + key + " has an unsupported value");
    }
  }
  return t;
}

}  // namespace

namespace {

// Every rule over the settings; at("section.key") is the place to blame, then the key.
void check_settings(const Config& c, const std::function<std::string(const std::string&)>& at) {
  ATTRACE_CHECK(!c.run_file.empty(), InputError, at("run.checkpoints") + " (the run file) is not set");
  ATTRACE_CHECK(!c.train_file.empty(), InputError, at("data.train") + " is not set");
  ATTRACE_CHECK(!c.query_file.empty(), InputError, at("data.query") + " is not set");
  ATTRACE_CHECK(!c.parameters.empty(), InputError, at("gradients.parameters") + " is empty");
  ATTRACE_CHECK(c.batch_size >= 0, InputError,
                at("gradients.batch_size") + " must be a positive integer or \"auto\", got " + std::to_string(c.batch_size));
  ATTRACE_CHECK(c.top_k >= 0, InputError, at("attribution.top_k") + " must be >= 0, got " + std::to_string(c.top_k));
  ATTRACE_CHECK(c.token_proponents >= 0 && c.token_top >= 0, InputError,
                at("attribution.token_proponents") + " and attribution.token_top must be >= 0");
  const std::string gm = kernels::to_string(c.gemm_math);
  ATTRACE_CHECK(c.gemm_math == kernels::GemmMath::ieee || c.scoring == Scoring::blas, InputError,
                at("attribution.gemm_math") + " = '" + gm + "' needs attribution.scoring = \"blas\"");
  ATTRACE_CHECK(c.gemm_math == kernels::GemmMath::ieee || feature_dtype_of(c) != connectors::FeatureDtype::f64, InputError,
                at("attribution.gemm_math") + " = '" + gm + "' needs float32 features (gradients.precision = \"fp32\" or a projection)");
  ATTRACE_CHECK(c.feature_dtype == FeatureType::automatic || c.feature_dtype == FeatureType::f64 ||
                    c.precision == Precision::fp32 || c.projection != Projection::none,
                InputError, at("features.dtype") + " = '" + to_string(c.feature_dtype) + "' with gradients.precision = \"fp64\" and no projection: exact float64 gradients are stored as f64");
  ATTRACE_CHECK(c.feature_dtype != FeatureType::f64 || (c.precision == Precision::fp64 && c.projection == Projection::none),
                InputError, at("features.dtype") + " = 'f64' needs exact float64 gradients (gradients.precision = \"fp64\", projection.kind = \"none\")");
  ATTRACE_CHECK(c.factored != Factoring::always || (c.projection == Projection::none && c.precision == Precision::fp32),
                InputError, at("features.factored") + " = \"always\" needs exact float32 features (projection.kind = \"none\", " +
                                "gradients.precision = \"fp32\"); layer factors are float32 and projections have their own");
  ATTRACE_CHECK(c.memory_limit >= 0, InputError, at("attribution.memory_limit") + " must be >= 0");
  ATTRACE_CHECK(c.method_checkpoint >= -1, InputError,
                at("attribution.checkpoint") + " must be >= 0 (or -1: the last), got " + std::to_string(c.method_checkpoint));
  ATTRACE_CHECK(std::isfinite(c.trak_lambda) && c.trak_lambda > 0, InputError,
                at("attribution.trak_lambda") + " must be finite and > 0, got " + connectors::readable_number(c.trak_lambda));
  ATTRACE_CHECK(c.duplicate_threshold > 0 && c.duplicate_threshold <= 1, InputError,
                at("attribution.duplicate_threshold") + " must be in (0, 1], got " +
                    connectors::readable_number(c.duplicate_threshold));
  ATTRACE_CHECK(std::isfinite(c.tolerance) && c.tolerance >= 0, InputError,
                at("attribution.tolerance") + " must be finite and >= 0, got " +
                    connectors::readable_number(c.tolerance));
  ATTRACE_CHECK(c.projection_k >= 1 && c.projection_k <= (int64_t{1} << 31), InputError,
                at("projection.k") + " must be in [1, 2^31], got " + std::to_string(c.projection_k));
  if (c.projection != Projection::none) {
    // A batch's projected features alone take batch_size x k floats; refuse sizes this machine
    // cannot hold before anything is allocated (std::bad_alloc is no message).
    const double batch_bytes = static_cast<double>(c.batch_size > 0 ? c.batch_size : 64) * static_cast<double>(c.projection_k) * 4.0;
    const int64_t phys = physical_memory();
    ATTRACE_CHECK(phys <= 0 || batch_bytes <= static_cast<double>(phys), InputError,
                  at("projection.k") + " = " + std::to_string(c.projection_k) + ": one batch of " +
                      std::to_string(c.batch_size) + " examples' projected features needs at least " + gib(batch_bytes) +
                      " (batch_size x k x 4 bytes), more than this machine's memory (" +
                      gib(static_cast<double>(phys)) + "); lower projection.k (or gradients.batch_size)");
  }
  ATTRACE_CHECK(c.scores_max_entries >= 0, InputError, at("output.scores_max_entries") + " must be >= 0");
  ATTRACE_CHECK(std::isfinite(c.quality_hold_threshold) && c.quality_hold_threshold > 0 && c.quality_hold_threshold < 1,
                InputError, at("rewards.quality_hold_threshold") + " must be in (0, 1), got " +
                                connectors::readable_number(c.quality_hold_threshold));
  ATTRACE_CHECK(c.quality_hold_min_outliers >= 1, InputError,
                at("rewards.quality_hold_min_outliers") + " must be >= 1, got " + std::to_string(c.quality_hold_min_outliers));
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  toml::table doc = connectors::parse_toml_file(path);
  Origins origins;
  for (const auto& o : overrides) {
    const toml::table t = parse_override(o);
    note_origins(t, "", "--set '" + o + "'", origins);
    merge(doc, t);
  }
  Config c = config_from_table(doc, path, &origins);
  const std::string base = std::filesystem::path(path).parent_path().string();
  c.run_file = resolve(base, c.run_file);
  c.train_file = resolve(base, c.train_file);
  c.query_file = resolve(base, c.query_file);
  // Input paths are recorded in manifests (JSON): a non-UTF-8 path would fail only after the run.
  for (const auto& [key, p] : {std::pair<const char*, const std::string*>{"run.checkpoints", &c.run_file},
                               {"data.train", &c.train_file}, {"data.query", &c.query_file}})
    ATTRACE_CHECK(connectors::first_invalid_utf8(*p) == std::string::npos, InputError,
                  blame(&origins, path, key) + ": " + key + ": the path (resolved against the config's folder) is not valid UTF-8; attrace records input paths in manifests");
  check_settings(c, [&](const std::string& key) { return blame(&origins, path, key) + ": " + key; });
  return c;
}

Config config_from_json(const nlohmann::json& settings, const std::string& what) {
  ATTRACE_CHECK(settings.is_object(), InputError, what + ": settings must be an object");
  Config c = config_from_table(table_from_json(settings, what), what);
  // A manifest echoes every setting; one without [rewards] was written before the reward rules
  // existed, so it was paid with none of them (not with today's defaults).
  if (!settings.contains("rewards")) {
    c.duplicate_credit = DuplicateCredit::none;
    c.quality_hold = QualityHold::none;
  }
  validate(c);
  return c;
}

void validate(const Config& c) {
  const std::string f = c.config_file.empty() ? "config" : c.config_file;
  check_settings(c, [&](const std::string& key) { return f + ": " + key; });
}

nlohmann::json to_json(const Config& c) {
  nlohmann::json j = {
      {"run", {{"checkpoints", c.run_file}}},
      {"data", {{"train", c.train_file}, {"query", c.query_file}}},
      {"gradients",
       {{"loss", to_string(c.loss)},
        {"parameters", c.parameters},
        {"path", to_string(c.path)},
        {"precision", to_string(c.precision)},
        {"device", to_string(c.device)}}},
      {"projection",
       {{"kind", to_string(c.projection)},
        {"k", c.projection_k},
        {"seed", std::to_string(c.projection_seed)},
        {"distribution", to_string(c.projection_distribution)}}},
      {"features", {{"dtype", to_string(c.feature_dtype)}, {"factored", to_string(c.factored)}}},
      {"attribution",
       {{"top_k", c.top_k},
        {"scoring", to_string(c.scoring)},
        {"gemm_math", kernels::to_string(c.gemm_math)},
        {"negative_policy", to_string(c.negative_policy)},
        {"duplicate_threshold", c.duplicate_threshold},
        {"tolerance", c.tolerance},
        {"method", to_string(c.method)},
        {"checkpoint", c.method_checkpoint},
        {"trak_lambda", c.trak_lambda}}},
      {"rewards",
       {{"duplicate_credit", to_string(c.duplicate_credit)},
        {"duplicate_match", to_string(c.duplicate_match)},
        {"quality_hold", to_string(c.quality_hold)},
        {"quality_hold_threshold", c.quality_hold_threshold},
        {"quality_hold_min_outliers", c.quality_hold_min_outliers}}},
      {"output", {{"scores", to_string(c.scores)}, {"scores_max_entries", c.scores_max_entries}}},
  };
  // Written only when set, so manifests of models returning one tensor keep their bytes.
  if (!c.model_output.empty()) j["gradients"]["model_output"] = c.model_output;
  if (!c.exclude.empty()) j["gradients"]["exclude"] = c.exclude;
  // Per-token output settings (report content only), written when not the defaults.
  if (c.token_proponents != 3) j["attribution"]["token_proponents"] = c.token_proponents;
  if (c.token_top != 5) j["attribution"]["token_top"] = c.token_top;
  return j;
}

}  // namespace attrace::engine
