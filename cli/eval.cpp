// `attrace eval noisy|lds`: the command line of engine/eval.hpp. The data is the handwritten
// digits shipped by Debian's python3-sklearn (as in `attrace demo`) unless --train/--query name
// attrace datasets; eval.json and eval.html go to --out, merged with an earlier run's other block.
#include "demo.hpp"
#include <attrace/random.hpp>
#include "eval.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/engine/eval.hpp>
#include <attrace/engine/report.hpp>
#include <attrace/error.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace attrace::cli {
namespace {

namespace fs = std::filesystem;
namespace ev = engine::eval;


struct EvalCli {
  CLI::App *eval = nullptr, *noisy = nullptr, *lds = nullptr;
  ev::EvalOptions o;
  ev::NoisyOptions no;
  ev::LdsOptions lo;
  std::string train, query, phases = "6:0.05,6:0.02,6:0.005", hidden = "32";
  int64_t n_query = 297;
  uint64_t data_seed = 20261130;
} g;

using attrace::draw_below;

connectors::Dataset make_set(const std::vector<std::vector<float>>& x, const std::vector<int64_t>& y,
                             const std::vector<size_t>& rows, const std::string& prefix, bool tranche) {
  connectors::Dataset ds;
  for (size_t k = 0; k < rows.size(); ++k) {
    ds.inputs.insert(ds.inputs.end(), x[rows[k]].begin(), x[rows[k]].end());
    ds.class_targets.push_back(y[rows[k]]);
    ds.ids.push_back(prefix + std::to_string(rows[k]));
    if (tranche) ds.tranche.push_back(0);
  }
  if (tranche) ds.tranches.push_back({"all", "0x0000000000000000000000000000000000000000", "all", ""});
  const auto n = static_cast<int64_t>(rows.size());
  ds.input_shape = {n, static_cast<int64_t>(x.empty() ? 0 : x[0].size())};
  ds.target_shape = {n};
  return ds;
}

// The 1797 sklearn digits scaled to [0, 1], shuffled with data_seed: n_query queries, the rest
// training examples.
ev::Task digits_task(int64_t n_query, uint64_t seed) {
  std::vector<std::vector<float>> x;
  std::vector<int64_t> y;
  ATTRACE_CHECK(read_digits(x, y), InputError,
                std::string(kDigitsPath) + ": not found; install python3-sklearn (scripts/setup.sh) or give --train and --query");
  ATTRACE_CHECK(static_cast<int64_t>(x.size()) > n_query + 10, InputError, std::string(kDigitsPath) + ": too few digits read");
  std::mt19937_64 rng(seed);
  std::vector<size_t> order(x.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[draw_below(rng, i + 1)]);
  ev::Task t;
  t.query = make_set(x, y, std::vector<size_t>(order.begin(), order.begin() + n_query), "digit-", false);
  t.train = make_set(x, y, std::vector<size_t>(order.begin() + n_query, order.end()), "digit-", true);
  t.source = "sklearn handwritten digits (" + std::string(kDigitsPath) + "), " + std::to_string(t.train.size()) +
             " training and " + std::to_string(t.query.size()) + " query examples, shuffle seed " + std::to_string(seed);
  return t;
}

std::vector<ev::Phase> parse_phases(const std::string& s) {
  std::vector<ev::Phase> out;
  std::istringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    const auto colon = part.find(':');
    try {
      ATTRACE_CHECK(colon != std::string::npos, InputError, "");
      ev::Phase p{std::stoll(part.substr(0, colon)), std::stod(part.substr(colon + 1))};
      ATTRACE_CHECK(p.epochs >= 1 && p.lr > 0, InputError, "");
      out.push_back(p);
    } catch (const std::exception&) {
      throw InputError("--phases: '" + part + "' is not EPOCHS:LR with EPOCHS >= 1 and LR > 0 (e.g. 6:0.05,6:0.02)");
    }
  }
  ATTRACE_CHECK(!out.empty(), InputError, "--phases: no phase given");
  return out;
}

std::vector<int64_t> parse_hidden(const std::string& s) {
  std::vector<int64_t> out;
  std::istringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    try {
      out.push_back(std::stoll(part));
    } catch (const std::exception&) {
      out.push_back(0);
    }
    ATTRACE_CHECK(out.back() >= 1, InputError, "--hidden: '" + part + "' is not a positive width");
  }
  return out;
}

void add_common(CLI::App* c) {
  c->add_option("-o,--out", g.o.out_dir, "Output directory: eval.json, eval.html, work/ (checkpoints, subset records)")
      ->capture_default_str();
  c->add_option("--train", g.train, "Training dataset (attrace HDF5; default: the sklearn digits)");
  c->add_option("--query", g.query, "Query dataset (attrace HDF5; default: the sklearn digits)");
  c->add_option("--n-query", g.n_query, "Digits held out as queries")->capture_default_str();
  c->add_option("--data-seed", g.data_seed, "Shuffle of the digits")->capture_default_str();
  c->add_option("--model", g.o.recipe.model, "TorchScript model with its initial weights (default: built-in MLP)");
  c->add_option("--hidden", g.hidden, "Hidden widths of the built-in MLP, comma-separated")->capture_default_str();
  c->add_option("--init-seed", g.o.recipe.init_seed, "Initial weights of the built-in MLP")->capture_default_str();
  c->add_option("--optimizer", g.o.recipe.optimizer, "sgd | adam")->check(CLI::IsMember({"sgd", "adam"}))->capture_default_str();
  c->add_option("--momentum", g.o.recipe.momentum, "SGD momentum (adam: beta1)")->check(CLI::Range(0.0, 0.999))->capture_default_str();
  c->add_option("--weight-decay", g.o.recipe.weight_decay, "L2 weight decay")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  c->add_option("--phases", g.phases, "lr schedule EPOCHS:LR,...; a checkpoint at the end of each phase")->capture_default_str();
  c->add_option("--batch-size", g.o.recipe.batch_size, "Training batch size")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--seed", g.o.recipe.seed, "Training data order")->capture_default_str();
  c->add_option("--projection-k", g.o.projection_k, "Dense projection of the features (0: exact gradients)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  c->add_option("--trak-lambda", g.o.trak_lambda, "TRAK ridge relative to the kernel's mean diagonal")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  c->add_option("--ensemble", g.o.ensemble, "Independently trained models in the TRAK ensemble")
      ->check(CLI::Range(int64_t{1}, int64_t{64}))
      ->capture_default_str();
  c->add_option("--threads", g.o.threads, "Retraining workers (0: all cores)")->check(CLI::NonNegativeNumber)->capture_default_str();
}

}  // namespace

CLI::App* add_eval_command(CLI::App& app) {
  g.o.out_dir = "eval-out";
  g.eval = app.add_subcommand("eval", "Measure attribution methods: LDS by retraining on subsets, noisy-label detection (docs/eval.md)");
  g.eval->require_subcommand(1);
  g.noisy = g.eval->add_subcommand("noisy", "Flip a fraction of training labels and rank by each method's self-influence");
  add_common(g.noisy);
  g.noisy->add_option("--fraction", g.no.fraction, "Share of training labels flipped")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  g.noisy->add_option("--noise-seed", g.no.seed, "Which labels are flipped, and to what")->capture_default_str();
  g.lds = g.eval->add_subcommand("lds", "Linear datamodeling score: retrain on random subsets (resumable), Spearman per query");
  add_common(g.lds);
  g.lds->add_option("--subsets", g.lo.subsets, "M, the number of random subsets")->check(CLI::Range(int64_t{2}, int64_t{100000}))->capture_default_str();
  g.lds->add_option("--alpha", g.lo.alpha, "Subset size as a share of the training set")->check(CLI::Range(0.01, 0.99))->capture_default_str();
  g.lds->add_option("--lds-seed", g.lo.seed, "Subset s uses this seed + s")->capture_default_str();
  g.lds->add_flag("--margin", g.lo.margin, "Query output: the margin instead of the negative loss");
  g.lds->add_option("--ground-truth", g.lo.ground_truth,
                    "HDF5 with /masks (M x n_train, 0/1) and /outputs (M x n_query): no retraining (docs/eval.md)")
      ->check(CLI::ExistingFile);
  g.lds->add_option("--bootstrap", g.lo.bootstrap, "Bootstrap resamples of the queries")->check(CLI::Range(int64_t{10}, int64_t{1000000}))->capture_default_str();
  return g.eval;
}

int run_eval_command(bool quiet) {
  g.o.quiet = quiet;
  g.o.recipe.phases = parse_phases(g.phases);
  g.o.recipe.hidden = parse_hidden(g.hidden);
  ev::Task task;
  if (!g.train.empty() || !g.query.empty()) {
    ATTRACE_CHECK(!g.train.empty() && !g.query.empty(), InputError, "--train and --query go together");
    task.train = connectors::read_dataset(g.train, false);
    task.query = connectors::read_dataset(g.query, false);
    ATTRACE_CHECK(task.train.target_kind == connectors::TargetKind::class_index, InputError,
                  g.train + ": attrace eval needs integer class labels");
    for (const auto* d : {&task.train, &task.query})
      ATTRACE_CHECK(d->input_kind == connectors::InputKind::values, InputError,
                    d->path + ": attrace eval trains models on float inputs; token datasets (integer /inputs) are not supported");
    task.train.tranche.assign(static_cast<size_t>(task.train.size()), 0);
    task.train.tranches = {{"all", "0x0000000000000000000000000000000000000000", "all", ""}};
    task.source = g.train + " and " + g.query;
  } else {
    task = digits_task(g.n_query, g.data_seed);
  }
  fs::create_directories(g.o.out_dir);
  const std::string json_path = (fs::path(g.o.out_dir) / "eval.json").string();
  nlohmann::json doc = nlohmann::json::object();
  if (fs::exists(json_path)) {
    std::ifstream in(json_path);
    try {
      doc = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw InputError(json_path + ": not JSON (" + e.what() + "); remove it or choose another --out");
    }
  }
  doc["format"] = "attrace.eval/1";
  doc["engine_version"] = engine::engine_version();
  doc["data"] = task.source;
  doc["recipe"] = ev::recipe_json(g.o.recipe);
  doc["features"] = {{"projection", g.o.projection_k > 0 ? "dense" : "none"},
                     {"k", g.o.projection_k},
                     {"seed", std::to_string(g.o.projection_seed)},
                     {"trak_lambda", g.o.trak_lambda},
                     {"ensemble", g.o.ensemble}};
  if (*g.noisy) doc["noisy"] = ev::run_noisy(task, g.o, g.no);
  if (*g.lds) doc["lds"] = ev::run_lds(task, g.o, g.lo);
  ev::write_eval_outputs(g.o.out_dir, doc);
  if (*g.lds) std::printf("%-12s %8s %21s %8s\n", "method", "LDS", "95% CI", "time s");
  if (doc.contains("lds") && *g.lds)
    for (const auto& m : doc["lds"]["methods"])
      std::printf("%-12s %8.4f [%8.4f, %8.4f] %8.2f\n", m["method"].get<std::string>().c_str(), m["lds"]["mean"].get<double>(),
                  m["lds"]["ci95"][0].get<double>(), m["lds"]["ci95"][1].get<double>(), m["seconds"].get<double>());
  if (doc.contains("noisy") && *g.noisy)
    for (const auto& m : doc["noisy"]["methods"]) {
      if (!m["applicable"].get<bool>()) {
        std::printf("%-12s noisy: n/a (%s)\n", m["method"].get<std::string>().c_str(), m["note"].get<std::string>().c_str());
        continue;
      }
      std::printf("%-12s noisy AUC %.4f, found in top 5/10/20%%: %.3f %.3f %.3f (%.2f s)\n", m["method"].get<std::string>().c_str(),
                  m["auc"].get<double>(), m["found_top5"].get<double>(), m["found_top10"].get<double>(),
                  m["found_top20"].get<double>(), m["seconds"].get<double>());
    }
  std::printf("wrote %s/eval.json and eval.html\n", g.o.out_dir.c_str());
  return 0;
}

}  // namespace attrace::cli
