// `attrace demo --lm`: real English text from Debian's fortunes package, one contributor tranche
// per category; a GPT-style decoder built and trained here with LibTorch (engine/gpt.hpp), saved
// as TorchScript checkpoints with their learning rates; held-out fortunes attributed to the
// training tranches through the graph gradient path with Kronecker projection on every Linear
// and Embedding; printed: how often a query's largest tranche mass is its own category's.
#include "demo_lm.hpp"

#include <attrace/connectors/csv_import.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/scores_file.hpp>
#include <attrace/connectors/text_import.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/gpt.hpp>
#include <attrace/error.hpp>
#include <attrace/random.hpp>

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

namespace attrace::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kSeed = 20261201;

// Everything that sizes the demo. The full plan is sized so that the whole demo (import, train,
// featurize, score, report) stays under 5 minutes on 2 cores; quick is for tests.
struct Plan {
  std::vector<std::string> categories;
  int64_t items_per_category = 0;  // fortunes taken per category (a multiple of holdout_every)
  int64_t holdout_every = 6;       // every K-th fortune is a query
  int64_t min_bytes = 24;          // shorter fortunes are skipped
  engine::GptConfig gpt;           // context = the longest fortune taken, in bytes (= tokens)
  std::vector<engine::LmPhase> phases;
  int64_t batch_size = 16;
  int64_t k = 4096;                // Kronecker budget per layer
};

Plan make_plan(bool quick) {
  Plan p;
  if (quick) {
    p.categories = {"definitions", "startrek", "zippy"};
    p.items_per_category = 24;
    p.holdout_every = 4;
    p.gpt.context = 80;
    p.gpt.d_model = 32;
    p.gpt.layers = 1;
    p.gpt.heads = 2;
    p.gpt.d_ff = 64;
    p.phases = {{30, 3e-3}, {20, 1e-3}};
    p.batch_size = 8;
    p.k = 256;
  } else {
    // Categories with a voice of their own (docs/lm.md has the numbers for a blander set).
    p.categories = {"computers", "definitions", "linux", "riddles", "startrek", "zippy"};
    p.items_per_category = 72;
    p.holdout_every = 6;
    p.gpt.context = 128;
    p.gpt.d_model = 128;
    p.gpt.layers = 4;
    p.gpt.heads = 4;
    p.gpt.d_ff = 512;
    p.phases = {{150, 2e-3}, {100, 1e-3}, {50, 3e-4}};
    p.batch_size = 16;
    p.k = 4096;
  }
  p.gpt.vocab = 256;  // byte-level tokens
  p.gpt.seed = kSeed;
  // The graph path cannot yet capture a Linear without a bias (aten::linear with bias None).
  p.gpt.head_bias = true;
  return p;
}

std::string account_for(const std::string& name) {
  return "0x" + connectors::sha256_hex("attrace-demo-lm:" + name).substr(0, 40);
}

// The fortunes of one category file: items between lines that are exactly "%".
std::vector<std::string> read_fortunes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ATTRACE_CHECK(in, InputError,
                path + ": cannot read it (Debian's fortunes package provides it: apt-get install fortunes)");
  std::vector<std::string> items;
  std::string line, item;
  auto flush = [&] {
    while (!item.empty() && item.back() == '\n') item.pop_back();
    if (!item.empty()) items.push_back(item);
    item.clear();
  };
  while (std::getline(in, line)) {
    if (line == "%") {
      flush();
      continue;
    }
    item += line + "\n";
  }
  flush();
  return items;
}

// What a query or training example reads like, on one line.
std::string excerpt(const connectors::Dataset& ds, int64_t row, size_t width) {
  const int64_t t = ds.input_shape[1];
  const int64_t len = ds.lengths.empty() ? t : ds.lengths[static_cast<size_t>(row)];
  std::string s;
  for (int64_t q = 0; q < len; ++q) {
    const int32_t id = ds.int_inputs[static_cast<size_t>(row * t + q)];
    const char c = static_cast<char>(id);
    if (c == '\n' || c == '\t') {
      if (!s.empty() && s.back() != ' ') s += ' ';
    } else {
      s += c;
    }
  }
  if (s.size() > width) s = s.substr(0, width - 3) + "...";
  return s;
}

// Token text on one line: report.json's <0x09>-style escapes and control bytes become spaces.
std::string one_line(std::string s) {
  for (const char* esc : {"<0x09>", "<0x0a>", "<0x0d>"})
    for (size_t at; (at = s.find(esc)) != std::string::npos;) s.replace(at, 6, " ");
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  return s;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

int run_demo_lm(const DemoLmOptions& options) {
  const auto t0 = Clock::now();
  const Plan plan = make_plan(options.quick);
  const fs::path dir(options.dir);
  fs::create_directories(dir);
  auto say = [&](const char* fmt, auto... args) {
    if (!options.quiet) std::fprintf(stderr, fmt, args...);
  };

  // 1. Text: per category, the fortunes that fit the context, in a seeded order; the first
  // items_per_category of them go to the text folder, one file per category (= tranche).
  const fs::path text_dir = dir / "text";
  fs::remove_all(text_dir);
  fs::create_directories(text_dir);
  std::mt19937_64 rng(kSeed);
  std::string accounts = "tranche,account,name,license\n";
  for (const auto& c : plan.categories) {
    auto items = read_fortunes((fs::path(options.fortunes) / c).string());
    std::vector<std::string> fit;
    for (auto& s : items)
      if (static_cast<int64_t>(s.size()) >= plan.min_bytes && static_cast<int64_t>(s.size()) <= plan.gpt.context &&
          connectors::first_invalid_utf8(s) == std::string::npos)
        fit.push_back(std::move(s));
    ATTRACE_CHECK(static_cast<int64_t>(fit.size()) >= plan.items_per_category, InputError,
                  (fs::path(options.fortunes) / c).string() + ": only " + std::to_string(fit.size()) + " fortunes of " +
                      std::to_string(plan.min_bytes) + ".." + std::to_string(plan.gpt.context) + " bytes, the demo needs " +
                      std::to_string(plan.items_per_category));
    for (size_t i = fit.size() - 1; i > 0; --i) std::swap(fit[i], fit[draw_below(rng, i + 1)]);
    std::string text;
    for (int64_t i = 0; i < plan.items_per_category; ++i) text += fit[static_cast<size_t>(i)] + "\n%\n";
    connectors::write_file_atomic((text_dir / (c + ".txt")).string(), text);
    accounts += c + "," + account_for(c) + ",fortunes: " + c + ",fortune-mod (BSD-4-Clause)\n";
  }
  const std::string accounts_csv = (dir / "tranches.csv").string();
  connectors::write_file_atomic(accounts_csv, accounts);

  // 2. attrace import text: byte tokens, one tranche per file, every K-th fortune held out.
  connectors::TextImportOptions io;
  io.dir = text_dir.string();
  io.output_h5 = (dir / "train.h5").string();
  io.queries_h5 = (dir / "query.h5").string();
  io.holdout_every = plan.holdout_every;
  io.split = connectors::TextSplit::delimiter;
  io.delimiter = "%";
  io.max_tokens = plan.gpt.context;
  io.accounts_csv = accounts_csv;
  io.replace = true;
  const auto imported = connectors::import_text(io);
  const connectors::Dataset& train = imported.train;
  const connectors::Dataset& query = imported.queries;
  const double t_import = seconds_since(t0);
  say("data: %zu fortune categories from %s (one tranche each): %lld training fortunes, %lld held-out queries, "
      "%lld byte tokens\n",
      plan.categories.size(), options.fortunes.c_str(), static_cast<long long>(train.size()),
      static_cast<long long>(query.size()), static_cast<long long>(imported.tokens));

  // 3. Train the GPT natively; one checkpoint per phase, run.toml with each lr.
  const auto t1 = Clock::now();
  auto model = engine::build_gpt(plan.gpt);
  const int64_t params = engine::gpt_parameter_count(plan.gpt);
  engine::LmTrainOptions to;
  to.out_dir = dir.string();
  to.phases = plan.phases;
  to.batch_size = plan.batch_size;
  to.seed = kSeed;
  int64_t total_steps = 0;
  for (const auto& p : plan.phases) total_steps += p.steps;
  to.on_step = [&](int64_t step, double loss) {
    if (step % 50 == 0 || step == total_steps) say("  step %lld/%lld  batch loss %.3f\n", static_cast<long long>(step),
                                                   static_cast<long long>(total_steps), loss);
  };
  say("training a GPT (%lld parameters: d_model %lld, %lld layers, %lld heads, d_ff %lld, context %lld) with AdamW\n",
      static_cast<long long>(params), static_cast<long long>(plan.gpt.d_model), static_cast<long long>(plan.gpt.layers),
      static_cast<long long>(plan.gpt.heads), static_cast<long long>(plan.gpt.d_ff),
      static_cast<long long>(plan.gpt.context));
  const auto untrained = engine::lm_example_losses(model, query, 0, query.size());
  const auto trained = engine::train_lm(model, train, to);
  const auto after = engine::lm_example_losses(model, query, 0, query.size());
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / static_cast<double>(v.size());
  };
  const double t_train = seconds_since(t1);

  // 4. Attribute: graph path, Kronecker projection on every Linear, Embedding and LayerNorm; plain
  // attribution shares (no reward rules), scores.h5 for the per-query check.
  const auto t2 = Clock::now();
  const std::string config_path = (dir / "attrace.toml").string();
  connectors::write_file_atomic(
      config_path,
      "# attrace configuration written by `attrace demo --lm`\n"
      "[run]\ncheckpoints = \"run.toml\"\n\n"
      "[data]\ntrain = \"train.h5\"\nquery = \"query.h5\"\n\n"
      "[gradients]\nloss = \"next_token\"\npath = \"graph\"\nparameters = [\"*\"]\nbatch_size = 16\n"
      "precision = \"fp32\"\n\n"
      "[projection]\nkind = \"kronecker\"\nk = " +
          std::to_string(plan.k) +
          "\nseed = 0\n\n"
          "[attribution]\ntop_k = 5\nnegative_policy = \"clip\"\n\n"
          "[rewards]\nduplicate_credit = \"none\"\nquality_hold = \"none\"\n\n"
          "[output]\nscores = \"always\"\n");
  const auto config = engine::load_config(config_path);
  const std::string out_dir = (dir / "report").string();
  const auto summary = engine::run_attribute(config, {out_dir, true, options.quiet, std::nullopt});
  const double t_attr = seconds_since(t2);

  // 5. Per query: positive influence mass per tranche; is its own category's the largest?
  int64_t n = 0, m = 0;
  const auto scores = connectors::read_scores_h5((fs::path(out_dir) / "scores.h5").string(), &n, &m);
  ATTRACE_CHECK(n == train.size() && m == query.size(), RuntimeFailure, "demo --lm: scores.h5 has an unexpected shape");
  const size_t n_tranches = train.tranches.size();
  std::map<std::string, size_t> tranche_of;
  for (size_t t = 0; t < n_tranches; ++t) tranche_of[train.tranches[t].id] = t;
  std::vector<int64_t> queries_of(n_tranches, 0), own_top(n_tranches, 0);
  std::vector<double> own_share(n_tranches, 0.0);
  std::vector<std::pair<int64_t, int64_t>> shown;  // (query, top proponent) for a few queries
  for (int64_t j = 0; j < m; ++j) {
    const std::string& id = query.ids[static_cast<size_t>(j)];
    const auto it = tranche_of.find(id.substr(0, id.find('/')));
    ATTRACE_CHECK(it != tranche_of.end(), RuntimeFailure, "demo --lm: query '" + id + "' names no tranche");
    const size_t own = it->second;
    std::vector<double> mass(n_tranches, 0.0);
    int64_t best_row = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double s = scores[static_cast<size_t>(i * m + j)];
      if (s > 0) mass[static_cast<size_t>(train.tranche[static_cast<size_t>(i)])] += s;
      if (s > scores[static_cast<size_t>(best_row * m + j)]) best_row = i;
    }
    double total = 0;
    size_t top = 0;
    for (size_t t = 0; t < n_tranches; ++t) {
      total += mass[t];
      if (mass[t] > mass[top]) top = t;
    }
    ++queries_of[own];
    if (top == own && mass[own] > 0) ++own_top[own];
    own_share[own] += total > 0 ? mass[own] / total : 0.0;
    if (queries_of[own] == 1 && shown.size() < 3) shown.emplace_back(j, best_row);
  }
  int64_t hits = 0;
  for (auto h : own_top) hits += h;
  const double fraction = m > 0 ? static_cast<double>(hits) / static_cast<double>(m) : 0.0;
  const double chance = 1.0 / static_cast<double>(n_tranches);

  std::printf("\nLanguage-model attribution: %lld held-out fortunes attributed to %lld training fortunes in %zu category "
              "tranches\n",
              static_cast<long long>(m), static_cast<long long>(n), n_tranches);
  std::printf("(GPT with %lld parameters trained for %lld AdamW steps, query loss %.3f -> %.3f nats/byte; TracIn over %zu "
              "checkpoints, graph path, Kronecker k = %lld per layer)\n\n",
              static_cast<long long>(params), static_cast<long long>(trained.steps.back()), mean(untrained), mean(after),
              trained.checkpoints.size(), static_cast<long long>(plan.k));
  std::printf("  %-12s %8s %8s %8s %18s %16s\n", "tranche", "examples", "share", "queries", "own tranche on top",
              "mean own share");
  const auto& ts = summary.attribution.tranches;
  for (size_t t = 0; t < n_tranches; ++t) {
    const double q = static_cast<double>(queries_of[t]);
    std::printf("  %-12s %8lld %7.2f%% %8lld %11lld (%3.0f%%) %15.1f%%\n", ts[t].tranche.id.c_str(),
                static_cast<long long>(ts[t].examples), 100.0 * ts[t].share, static_cast<long long>(queries_of[t]),
                static_cast<long long>(own_top[t]), q > 0 ? 100.0 * static_cast<double>(own_top[t]) / q : 0.0,
                q > 0 ? 100.0 * own_share[t] / q : 0.0);
  }
  std::printf("\n  queries attributed mostly to their own category's tranche: %lld of %lld = %.1f%% (chance %.1f%%)\n",
              static_cast<long long>(hits), static_cast<long long>(m), 100.0 * fraction, 100.0 * chance);
  // Per-token scores from report.json: the proponent's positions that carried most of its score.
  nlohmann::json report;
  {
    std::ifstream in((fs::path(out_dir) / "report.json").string());
    report = nlohmann::json::parse(in, nullptr, false);
  }
  std::printf("\n  a few queries, their strongest proponent and its tokens that carried the most influence:\n");
  for (const auto& [j, i] : shown) {
    std::printf("    query      [%s] %s\n", query.ids[static_cast<size_t>(j)].c_str(), excerpt(query, j, 90).c_str());
    std::printf("    proponent  [%s] %s\n", train.ids[static_cast<size_t>(i)].c_str(), excerpt(train, i, 90).c_str());
    if (report.is_discarded() || !report.contains("queries")) continue;
    const auto& q = report["queries"][static_cast<size_t>(j)];
    if (!q.contains("tokens")) continue;
    for (const auto& e : q["tokens"]) {
      if (e.value("example", std::string()) != train.ids[static_cast<size_t>(i)]) continue;
      std::string line;
      int shown_tokens = 0;
      for (const auto& pos : e["positions"]) {
        if (shown_tokens++ == 3) break;
        std::string before = one_line(pos.value("before", std::string()));
        if (before.size() > 14) before = "..." + before.substr(before.size() - 14);
        char buf[64];
        std::snprintf(buf, sizeof buf, " %+.2g", pos.value("contribution", 0.0));
        line += "  \"" + before + "[" + one_line(pos.value("text", std::string())) + "]\"" + buf;
      }
      std::printf("    tokens    %s\n", line.c_str());
    }
  }
  const double secs = seconds_since(t0);
  std::printf("\n  time: import %.1f s, training %.1f s, attribution %.1f s (featurize + score), total %.1f s\n", t_import,
              t_train, t_attr, secs);
  std::printf("  report: %s/report.json  manifest: %s/manifest.json  scores: %s/scores.h5\n", out_dir.c_str(),
              out_dir.c_str(), out_dir.c_str());
  return fraction >= 1.5 * chance ? 0 : 1;
}

}  // namespace attrace::cli
