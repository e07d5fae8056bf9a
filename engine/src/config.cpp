#include <attrace/connectors/toml_util.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/error.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

namespace attrace::engine {

std::string to_string(Loss v) { return v == Loss::mse ? "mse" : "cross_entropy"; }
std::string to_string(Precision v) { return v == Precision::fp64 ? "fp64" : "fp32"; }
std::string to_string(GradPath v) {
  return v == GradPath::chain ? "chain" : v == GradPath::general ? "general" : "auto";
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

class Reader {
 public:
  Reader(const toml::table& doc, std::string file) : doc_(doc), file_(std::move(file)) {}

  const toml::table* section(const std::string& name, const std::set<std::string>& keys) {
    const toml::node* n = doc_.get(name);
    if (!n) return nullptr;
    const toml::table* t = n->as_table();
    ATTRACE_CHECK(t, InputError, file_ + ": [" + name + "] must be a table");
    for (auto&& [k, v] : *t) {
      (void)v;
      ATTRACE_CHECK(keys.count(std::string(k.str())), InputError,
                    file_ + ": unknown setting '" + name + "." + std::string(k.str()) + "'");
    }
    return t;
  }
  std::string where(const std::string& sec, const std::string& key) const {
    return file_ + ": " + sec + "." + key;
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
};

std::string resolve(const std::string& base, const std::string& p) {
  if (p.empty() || std::filesystem::path(p).is_absolute()) return p;
  return (std::filesystem::path(base) / p).lexically_normal().string();
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  toml::table doc = connectors::parse_toml_file(path);
  for (const auto& o : overrides) merge(doc, parse_override(o));
  for (auto&& [k, v] : doc) {
    (void)v;
    static const std::set<std::string> sections = {"run", "data", "gradients", "projection", "attribution", "output"};
    ATTRACE_CHECK(sections.count(std::string(k.str())), InputError,
                  path + ": unknown section or key '" + std::string(k.str()) +
                      "' (sections: run, data, gradients, projection, attribution, output)");
  }
  Reader r(doc, path);
  Config c;
  c.config_file = path;
  const auto* run = r.section("run", {"checkpoints"});
  r.get(run, "run", "checkpoints", c.run_file);
  const auto* data = r.section("data", {"train", "query"});
  r.get(data, "data", "train", c.train_file);
  r.get(data, "data", "query", c.query_file);

  const auto* g = r.section("gradients", {"loss", "parameters", "batch_size", "path", "precision", "device"});
  std::string s = to_string(c.loss);
  r.get(g, "gradients", "loss", s);
  c.loss = parse_enum<Loss>(r.where("gradients", "loss"), s,
                            {{"cross_entropy", Loss::cross_entropy}, {"mse", Loss::mse}});
  r.get(g, "gradients", "parameters", c.parameters);
  r.get(g, "gradients", "batch_size", c.batch_size);
  s = to_string(c.path);
  r.get(g, "gradients", "path", s);
  c.path = parse_enum<GradPath>(r.where("gradients", "path"), s,
                                {{"auto", GradPath::automatic}, {"chain", GradPath::chain}, {"general", GradPath::general}});
  s = to_string(c.precision);
  r.get(g, "gradients", "precision", s);
  c.precision = parse_enum<Precision>(r.where("gradients", "precision"), s,
                                      {{"fp32", Precision::fp32}, {"fp64", Precision::fp64}});
  r.get(g, "gradients", "device", c.device);

  const auto* pr = r.section("projection", {"kind", "k", "seed", "distribution"});
  s = to_string(c.projection);
  r.get(pr, "projection", "kind", s);
  c.projection = parse_enum<Projection>(r.where("projection", "kind"), s,
                                        {{"none", Projection::none}, {"dense", Projection::dense}, {"kronecker", Projection::kronecker}});
  r.get(pr, "projection", "k", c.projection_k);
  int64_t seed = static_cast<int64_t>(c.projection_seed);
  r.get(pr, "projection", "seed", seed);
  ATTRACE_CHECK(seed >= 0, InputError, r.where("projection", "seed") + " must be >= 0");
  c.projection_seed = static_cast<uint64_t>(seed);
  r.get(pr, "projection", "distribution", c.projection_distribution);

  const auto* a = r.section("attribution", {"top_k", "scoring", "gemm_math", "negative_policy", "duplicate_threshold", "tolerance"});
  r.get(a, "attribution", "top_k", c.top_k);
  r.get(a, "attribution", "scoring", c.scoring);
  r.get(a, "attribution", "gemm_math", c.gemm_math);
  s = to_string(c.negative_policy);
  r.get(a, "attribution", "negative_policy", s);
  c.negative_policy = parse_enum<NegativePolicy>(
      r.where("attribution", "negative_policy"), s,
      {{"clip", NegativePolicy::clip}, {"clip_per_query", NegativePolicy::clip_per_query}});
  r.get(a, "attribution", "duplicate_threshold", c.duplicate_threshold);
  r.get(a, "attribution", "tolerance", c.tolerance);

  const auto* o = r.section("output", {"scores", "scores_max_entries"});
  s = to_string(c.scores);
  r.get(o, "output", "scores", s);
  c.scores = parse_enum<ScoresOutput>(r.where("output", "scores"), s,
                                      {{"auto", ScoresOutput::automatic}, {"always", ScoresOutput::always}, {"never", ScoresOutput::never}});
  r.get(o, "output", "scores_max_entries", c.scores_max_entries);

  const std::string base = std::filesystem::path(path).parent_path().string();
  c.run_file = resolve(base, c.run_file);
  c.train_file = resolve(base, c.train_file);
  c.query_file = resolve(base, c.query_file);
  validate(c);
  return c;
}

void validate(const Config& c) {
  const std::string f = c.config_file.empty() ? "config" : c.config_file;
  ATTRACE_CHECK(!c.run_file.empty(), InputError, f + ": run.checkpoints (the run file) is not set");
  ATTRACE_CHECK(!c.train_file.empty(), InputError, f + ": data.train is not set");
  ATTRACE_CHECK(!c.query_file.empty(), InputError, f + ": data.query is not set");
  ATTRACE_CHECK(!c.parameters.empty(), InputError, f + ": gradients.parameters is empty");
  ATTRACE_CHECK(c.batch_size > 0, InputError,
                f + ": gradients.batch_size must be > 0, got " + std::to_string(c.batch_size));
  ATTRACE_CHECK(c.device == "cpu" || c.device == "cuda" || c.device == "auto", InputError,
                f + ": gradients.device must be cpu, cuda or auto, got '" + c.device + "'");
  ATTRACE_CHECK(c.top_k >= 0, InputError, f + ": attribution.top_k must be >= 0, got " + std::to_string(c.top_k));
  ATTRACE_CHECK(c.scoring == "canonical" || c.scoring == "blas", InputError,
                f + ": attribution.scoring must be canonical or blas, got '" + c.scoring + "'");
  ATTRACE_CHECK(c.gemm_math == "ieee" || c.gemm_math == "tf32" || c.gemm_math == "bf16", InputError,
                f + ": attribution.gemm_math must be ieee, tf32 or bf16, got '" + c.gemm_math + "'");
  ATTRACE_CHECK(c.gemm_math == "ieee" || c.scoring == "blas", InputError,
                f + ": attribution.gemm_math = '" + c.gemm_math + "' needs attribution.scoring = \"blas\"");
  ATTRACE_CHECK(c.gemm_math == "ieee" || c.precision == Precision::fp32 || c.projection != Projection::none, InputError,
                f + ": attribution.gemm_math = '" + c.gemm_math + "' needs float32 features (gradients.precision = \"fp32\" or a projection)");
  ATTRACE_CHECK(c.duplicate_threshold > 0 && c.duplicate_threshold <= 1, InputError,
                f + ": attribution.duplicate_threshold must be in (0, 1]");
  ATTRACE_CHECK(std::isfinite(c.tolerance) && c.tolerance >= 0, InputError,
                f + ": attribution.tolerance must be >= 0");
  ATTRACE_CHECK(c.projection_k >= 1 && c.projection_k <= (int64_t{1} << 31), InputError,
                f + ": projection.k must be in [1, 2^31], got " + std::to_string(c.projection_k));
  ATTRACE_CHECK(c.projection_distribution == "rademacher" || c.projection_distribution == "gaussian", InputError,
                f + ": projection.distribution must be rademacher or gaussian, got '" + c.projection_distribution + "'");
  ATTRACE_CHECK(c.scores_max_entries >= 0, InputError, f + ": output.scores_max_entries must be >= 0");
}

nlohmann::json to_json(const Config& c) {
  return {
      {"run", {{"checkpoints", c.run_file}}},
      {"data", {{"train", c.train_file}, {"query", c.query_file}}},
      {"gradients",
       {{"loss", to_string(c.loss)},
        {"parameters", c.parameters},
        {"batch_size", c.batch_size},
        {"path", to_string(c.path)},
        {"precision", to_string(c.precision)},
        {"device", c.device}}},
      {"projection",
       {{"kind", to_string(c.projection)},
        {"k", c.projection_k},
        {"seed", std::to_string(c.projection_seed)},
        {"distribution", c.projection_distribution}}},
      {"attribution",
       {{"top_k", c.top_k},
        {"scoring", c.scoring},
        {"gemm_math", c.gemm_math},
        {"negative_policy", to_string(c.negative_policy)},
        {"duplicate_threshold", c.duplicate_threshold},
        {"tolerance", c.tolerance}}},
      {"output", {{"scores", to_string(c.scores)}, {"scores_max_entries", c.scores_max_entries}}},
  };
}

}  // namespace attrace::engine
