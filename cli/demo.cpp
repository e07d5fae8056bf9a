// `attrace demo`: real handwritten digits (shipped by Debian's python3-sklearn), seven contributor
// tranches (one with 35% flipped labels, one an exact copy of another, one a copy of another with
// pixel noise that exact matching cannot see), a small MLP trained with LibTorch through the live
// recorder (engine::Recorder), the recording finalized into checkpoints and a feature store, then
// `attrace score`'s pipeline on it.
#include <attrace/random.hpp>
#include "demo.hpp"
#include "ledger_cmd.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/model_builder.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/registry.hpp>

#include <spdlog/spdlog.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>

namespace attrace::cli {
namespace {

namespace fs = std::filesystem;
using connectors::Dataset;

constexpr uint64_t kSeed = 20261122;
constexpr int kFeatures = 64, kClasses = 10;

using attrace::draw_below;

struct Examples {
  std::vector<std::vector<float>> x;
  std::vector<int64_t> y;
  std::string source;
};

Examples load_digits() {
  Examples e;
  if (read_digits(e.x, e.y)) e.source = std::string("handwritten digits from ") + kDigitsPath;
  return e;
}

// Fallback when python3-sklearn is absent: 10 Gaussian clusters in 64 dimensions.
Examples synthetic_digits(std::mt19937_64& rng) {
  Examples e;
  std::vector<std::vector<float>> centers(kClasses, std::vector<float>(kFeatures));
  auto unit = [&] { return static_cast<float>(static_cast<double>(rng() >> 11) / 9007199254740992.0); };
  for (auto& c : centers)
    for (auto& v : c) v = unit();
  for (int i = 0; i < 1797; ++i) {
    const int label = i % kClasses;
    std::vector<float> x(kFeatures);
    for (int d = 0; d < kFeatures; ++d) x[d] = centers[label][d] + 0.35f * (unit() - 0.5f);
    e.x.push_back(std::move(x));
    e.y.push_back(label);
  }
  e.source = "synthetic clusters (python3-sklearn's digits file not found)";
  return e;
}

std::string account_for(const std::string& name) { return "0x" + connectors::sha256_hex("attrace-demo:" + name).substr(0, 40); }

struct TrancheSpec {
  std::string id, name, license, note;
};

Dataset make_dataset(const Examples& ex, const std::vector<std::vector<size_t>>& members,
                     const std::vector<TrancheSpec>& specs, const std::vector<int64_t>& labels, const std::string& prefix) {
  Dataset ds;
  for (size_t t = 0; t < members.size(); ++t) {
    for (size_t k = 0; k < members[t].size(); ++k) {
      const size_t i = members[t][k];
      ds.inputs.insert(ds.inputs.end(), ex.x[i].begin(), ex.x[i].end());
      ds.class_targets.push_back(labels[i]);
      ds.ids.push_back(prefix + (specs.empty() ? "" : specs[t].id + "-") + std::to_string(k));
      if (!specs.empty()) ds.tranche.push_back(static_cast<int64_t>(t));
    }
    if (!specs.empty())
      ds.tranches.push_back({specs[t].id, account_for(specs[t].id), specs[t].name, specs[t].license});
  }
  const auto n = static_cast<int64_t>(ds.class_targets.size());
  ds.input_shape = {n, kFeatures};
  ds.target_shape = {n};
  return ds;
}

struct Phase {
  int epochs;
  double lr;
};

}  // namespace

bool read_digits(std::vector<std::vector<float>>& x, std::vector<int64_t>& y) {
  gzFile f = gzopen(kDigitsPath, "rb");
  if (!f) return false;
  std::string text;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  gzclose(f);
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<float> row;
    std::istringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) row.push_back(std::stof(cell));
    if (row.size() != kFeatures + 1) continue;
    y.push_back(static_cast<int64_t>(row.back()));
    row.pop_back();
    for (float& v : row) v /= 16.0f;
    x.push_back(std::move(row));
  }
  return true;
}

int run_demo(const DemoOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  fs::create_directories(options.dir);
  std::mt19937_64 rng(kSeed);
  Examples ex = load_digits();
  if (ex.x.empty()) ex = synthetic_digits(rng);

  // Shuffle (Fisher-Yates on raw draws), hold out a query set, split the rest in five tranches;
  // two more re-upload one of them, exactly and with pixel noise.
  std::vector<size_t> order(ex.x.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[draw_below(rng, i + 1)]);
  const size_t n_query = 297, per_tranche = 300;
  std::vector<size_t> query_idx(order.begin(), order.begin() + n_query);

  const std::vector<TrancheSpec> specs = {
      {"clinic-north", "North clinic scans", "CC-BY-4.0", "clean"},
      {"school-survey", "School handwriting survey", "CC-BY-4.0", "clean"},
      {"postal-batch", "Postal sorting batch", "CC0-1.0", "clean"},
      {"archive-scan", "Archive scans", "CC-BY-SA-4.0", "clean"},
      {"crowd-labels", "Crowd-labelled batch", "CC-BY-4.0", "35% labels flipped"},
      {"mirror-north", "Re-upload of North clinic", "CC-BY-4.0", "exact copy of clinic-north"},
      {"school-rescan", "Re-scan of the school survey", "CC-BY-4.0", "school-survey + pixel noise"},
  };
  const size_t noisy = 4, copy = 5, copied = 0, rescan = 6, rescanned = 1;
  std::vector<std::vector<size_t>> members(specs.size());
  for (size_t t = 0; t < 5; ++t)
    members[t].assign(order.begin() + static_cast<long>(n_query + t * per_tranche),
                      order.begin() + static_cast<long>(n_query + (t + 1) * per_tranche));
  members[copy] = members[copied];
  std::vector<int64_t> labels = ex.y;
  size_t flipped = 0;
  for (size_t k = 0; k < members[noisy].size(); ++k) {
    if (draw_below(rng, 100) < 35) {
      const size_t i = members[noisy][k];
      labels[i] = (labels[i] + 1 + static_cast<int64_t>(draw_below(rng, kClasses - 1))) % kClasses;
      ++flipped;
    }
  }
  // The re-scan: every pixel of each school-survey image plus uniform noise in [-0.04, 0.04]
  // (under one of the 16 grey levels, 0.0625), clipped to [0, 1], with the original label. No
  // image may come out bit-identical to its source, or exact matching would see the copy.
  for (const size_t i : members[rescanned]) {
    std::vector<float> x = ex.x[i];
    for (float& v : x) {
      const double u = static_cast<double>(rng() >> 11) / 9007199254740992.0;  // [0, 1)
      v = std::min(1.0f, std::max(0.0f, v + static_cast<float>(0.08 * u - 0.04)));
    }
    if (x == ex.x[i]) throw RuntimeFailure("demo: the re-scanned copy of digit " + std::to_string(i) + " is unchanged");
    members[rescan].push_back(ex.x.size());
    ex.x.push_back(std::move(x));
    ex.y.push_back(ex.y[i]);
    labels.push_back(labels[i]);
  }
  Dataset train = make_dataset(ex, members, specs, labels, "train-");
  Dataset query = make_dataset(ex, {query_idx}, {}, ex.y, "query-");
  const std::string train_path = (fs::path(options.dir) / "train.h5").string();
  const std::string query_path = (fs::path(options.dir) / "query.h5").string();
  connectors::write_dataset(train_path, train);
  connectors::write_dataset(query_path, query);
  if (!options.quiet)
    std::fprintf(stderr, "data: %s; %lld training examples in %zu tranches (%zu labels flipped in '%s'), %zu queries\n",
                 ex.source.c_str(), static_cast<long long>(train.size()), specs.size(), flipped,
                 specs[noisy].id.c_str(), n_query);

  // Train an MLP with plain mini-batch SGD through the live recorder (docs/recorder.md). At the
  // end of each phase the state it reached is recorded: one forward and backward pass over every
  // training example (a summed loss, so each captured output gradient is that example's own)
  // through the recorder, with the phase's lr; the optimizer does not step on it. The recorder
  // records exact gradients (projection none: each Linear layer's input and output gradient,
  // laid out as `attrace attribute` lays out exact features), so the recording holds every
  // example's own gradient at the three phase-end states: exact TracIn over those checkpoints,
  // Sum_c lr_c <g_c(i), g_c(q)>, which the checkpoints it saves let the CLI recompute.
  const std::string init_path = (fs::path(options.dir) / "ckpt_0_init.pt").string();
  engine::save_mlp_torchscript(init_path, {kFeatures, 32, kClasses}, kSeed);
  torch::jit::Module model = torch::jit::load(init_path);
  fs::remove(init_path);
  std::vector<torch::Tensor> params;
  for (const auto& p : model.parameters()) {
    torch::Tensor t = p;
    t.requires_grad_(true);
    params.push_back(t);
  }
  const auto x_all = torch::from_blob(train.inputs.data(), {train.size(), kFeatures}, torch::kFloat).clone();
  const auto y_all = torch::from_blob(train.class_targets.data(), {train.size()}, torch::kLong).clone();
  const std::vector<Phase> phases = {{8, 0.5}, {8, 0.2}, {8, 0.05}};
  const int64_t batch = 32;
  const int64_t steps_per_epoch = (train.size() + batch - 1) / batch;
  engine::RecorderSettings rs;
  rs.projection = engine::Projection::none;  // exact per-example gradients, as `attrace attribute` computes them
  for (size_t ph = 0, at = 0; ph < phases.size(); ++ph) {
    at += static_cast<size_t>(phases[ph].epochs * steps_per_epoch);
    rs.steps.push_back(static_cast<int64_t>(at));  // the state after the phase's updates
  }
  const std::string rec_dir = (fs::path(options.dir) / "recording").string();
  fs::remove_all(rec_dir);  // a new demo run records anew
  std::vector<int64_t> all_ids(static_cast<size_t>(train.size()));
  for (size_t i = 0; i < all_ids.size(); ++i) all_ids[i] = static_cast<int64_t>(i);
  int64_t step = 0;
  double record_seconds = 0;
  {
    engine::Recorder rec(model, rec_dir, rs);
    const auto sgd = [&](const std::vector<torch::Tensor>& grads, double lr) {
      torch::NoGradGuard ng;
      for (size_t k = 0; k < params.size(); ++k) params[k].sub_(grads[k], lr);
      ++step;
    };
    std::vector<int64_t> perm(static_cast<size_t>(train.size()));
    for (size_t ph = 0; ph < phases.size(); ++ph) {
      for (int e = 0; e < phases[ph].epochs; ++e) {
        for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
        for (size_t i = perm.size() - 1; i > 0; --i) std::swap(perm[i], perm[draw_below(rng, i + 1)]);
        for (int64_t b0 = 0; b0 < train.size(); b0 += batch) {
          const int64_t b1 = std::min(train.size(), b0 + batch);
          const std::vector<int64_t> ids(perm.begin() + b0, perm.begin() + b1);
          const auto idx = torch::from_blob(perm.data() + b0, {b1 - b0}, torch::kLong);
          const auto out = rec.forward(x_all.index_select(0, idx));
          const auto loss = torch::nn::functional::cross_entropy(out, y_all.index_select(0, idx));
          const auto grads = torch::autograd::grad({loss}, params);
          rec.step(ids, phases[ph].lr);  // not a recorded step: returns at once
          sgd(grads, phases[ph].lr);
        }
      }
      // The recorded pass at the phase's end state (step = updates so far): a summed loss, so
      // the captured output gradients are each example's own (loss_scale 1); no update.
      const auto t_rec = std::chrono::steady_clock::now();
      const int64_t state = rec.current_step();
      const auto out = rec.forward(x_all);
      const auto loss = torch::nn::functional::cross_entropy(out, y_all, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
      (void)torch::autograd::grad({loss}, params);  // the backward pass the recorder captures; not applied
      if (!rec.step(all_ids, phases[ph].lr, 1.0)) throw RuntimeFailure("demo: the recorder skipped the state after step " + std::to_string(state));
      rec.set_step(state);  // the pass made no update: the next training step keeps this number
      record_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_rec).count();
    }
    const auto t_close = std::chrono::steady_clock::now();
    rec.close();  // waits for the background writer: every recorded step durable
    record_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_close).count();
  }
  {
    torch::NoGradGuard ng;
    const auto xq = torch::from_blob(query.inputs.data(), {query.size(), kFeatures}, torch::kFloat);
    const auto yq = torch::from_blob(query.class_targets.data(), {query.size()}, torch::kLong);
    const auto acc = model.forward({xq}).toTensor().argmax(1).eq(yq).to(torch::kFloat).mean().item<float>();
    if (!options.quiet)
      std::fprintf(stderr,
                   "trained MLP 64-32-10 for %lld SGD steps through the live recorder (%zu phase-end states recorded, %.2f s "
                   "on the training thread); query accuracy %.1f%%\n",
                   static_cast<long long>(step), phases.size(), record_seconds, 100.0 * acc);
  }
  const std::string config_path = (fs::path(options.dir) / "attrace.toml").string();
  auto config_text = [](const std::string& train_file) {
    return "# attrace configuration written by `attrace demo`: the recorded run, scored from the stores\n"
           "# the recording was finalized into (train-features.h5, train-without-copy-features.h5)\n"
           "[run]\ncheckpoints = \"recording/run.toml\"\n\n"
           "[data]\ntrain = \"" + train_file + "\"\nquery = \"query.h5\"\n\n"
           "[gradients]\nloss = \"cross_entropy\"\nparameters = [\"*\"]\nbatch_size = 64\n"
           "precision = \"fp32\"\n\n"
           "[attribution]\ntop_k = 5\nnegative_policy = \"clip\"\n";
  };
  connectors::write_file_atomic(config_path, config_text("train.h5"));
  // The recording becomes checkpoints (one per recorded step), recording/run.toml and a training
  // feature store that `attrace score` reads.
  engine::FinalizeOptions fo;
  fo.recording = rec_dir;
  fo.train_file = train_path;
  fo.query_file = query_path;
  fo.store = (fs::path(options.dir) / "train-features.h5").string();
  fo.config_file = config_path;
  fo.replace = true;
  engine::finalize_recording(fo);

  // Every tranche is registered by content on a fresh embedded ledger before it is used, in
  // tranche table order (so mirror-north registers after clinic-north); the run is checked
  // against the registry and duplicate credit follows its registration order.
  const std::string db = (fs::path(options.dir) / "ledger.db").string();
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(db + suffix);
  ledger::create_embedded_ledger(db, {});  // opening never creates a ledger
  ledger::register_dataset(*ledger::open_embedded_ledger(db), train, train_path);
  RegistryOptions registry;
  registry.db = db;

  const auto config = engine::load_config(config_path);
  const std::string out_dir = (fs::path(options.dir) / "report").string();
  const auto summary =
      engine::run_score(config, fo.store, "", {out_dir, true, options.quiet, check_registry(registry, train, train_path)});

  // The same model and queries on the training set without the copy: what clinic-north earns
  // when nobody copied it. Duplicate credit must leave it exactly that (docs/rewards.md).
  std::vector<std::vector<size_t>> members_alone;
  std::vector<TrancheSpec> specs_alone;
  for (size_t t = 0; t < specs.size(); ++t)
    if (t != copy) {
      members_alone.push_back(members[t]);
      specs_alone.push_back(specs[t]);
    }
  const Dataset train_alone = make_dataset(ex, members_alone, specs_alone, labels, "train-");
  const std::string alone_path = (fs::path(options.dir) / "train-without-copy.h5").string();
  connectors::write_dataset(alone_path, train_alone);
  const std::string alone_config = (fs::path(options.dir) / "attrace-without-copy.toml").string();
  connectors::write_file_atomic(alone_config, config_text("train-without-copy.h5"));
  // The same recording, finalized for the training set without the copy (rows matched by
  // example id): every remaining example keeps its recorded features.
  engine::FinalizeOptions fo_alone = fo;
  fo_alone.train_file = alone_path;
  fo_alone.recorded_train = train_path;
  fo_alone.store = (fs::path(options.dir) / "train-without-copy-features.h5").string();
  fo_alone.config_file = alone_config;
  engine::finalize_recording(fo_alone);
  const auto without = engine::load_config(alone_config);
  const auto alone = engine::run_score(without, fo_alone.store, "", {(fs::path(options.dir) / "report-without-copy").string(), true,
                                                                    true, check_registry(registry, train_alone, alone_path)});

  const auto& ts = summary.attribution.tranches;
  const auto& rw = summary.attribution.rewards;
  double before_total = 0;
  for (const auto& w : rw.tranches) before_total += w.mass_before;
  std::printf("\nAttribution vector (exact TracIn over %zu checkpoints recorded live while training; %lld train x %lld queries, "
              "%lld gradient dims; reward rules: duplicate credit %s, quality hold %s)\n\n",
              phases.size(), static_cast<long long>(summary.n_train), static_cast<long long>(summary.n_query),
              static_cast<long long>(summary.dim), engine::to_string(config.duplicate_credit).c_str(),
              engine::to_string(config.quality_hold).c_str());
  std::printf("  %-14s %8s %9s %7s %8s  %-28s %-36s %s\n", "tranche", "examples", "no rules", "share", "self-inf", "scenario",
              "reward rules", "flags");
  size_t lowest = 0;  // among the tranches with data of their own (not the two copies)
  for (size_t t = 0; t < ts.size(); ++t) {
    if (t != copy && t != rescan && ts[t].share < ts[lowest].share) lowest = t;
    std::string flags, rule;
    for (const auto& f : ts[t].flags)
      if (f != "quality_hold") flags += (flags.empty() ? "" : " ") + f;
    const auto& w = rw.tranches[t];
    char buf[160];
    if (w.uncredited_examples > 0) {
      std::snprintf(buf, sizeof buf, "%lld ex. credited elsewhere", static_cast<long long>(w.uncredited_examples));
      rule = buf;
    }
    if (w.held) {
      std::snprintf(buf, sizeof buf, "%sheld x%.2f", rule.empty() ? "" : ", ", w.hold_factor);
      rule += buf;
    }
    std::printf("  %-14s %8lld %8.2f%% %6.2f%% %7.2fx  %-28s %-36s %s\n", ts[t].tranche.id.c_str(),
                static_cast<long long>(ts[t].examples), before_total > 0 ? 100.0 * w.mass_before / before_total : 0.0,
                100.0 * ts[t].share, ts[t].self_influence_ratio, specs[t].note.c_str(), rule.empty() ? "-" : rule.c_str(),
                flags.c_str());
  }
  bool dup_flagged = false;
  for (const auto& d : summary.attribution.duplicates)
    dup_flagged |= d.flagged && static_cast<size_t>(d.a) == copied && static_cast<size_t>(d.b) == copy;
  std::printf("\n  (\"no rules\": the shares before duplicate credit and the quality hold, as attrace paid until issue 11; "
              "registration order: %s)\n",
              rw.order_source == "registry" ? ("the registry's, " + db).c_str() : "dataset tranche order");
  std::printf("  lowest share among tranches with data of their own: %s (%s)\n", ts[lowest].tranche.id.c_str(),
              lowest == noisy ? "the noisy tranche, as expected" : "NOT the noisy tranche");
  const bool copy_unpaid = ts[copy].share == 0.0;
  std::printf("  exact copy %s: %s; %lld of %lld examples credited to an earlier holder, share %.2f%%%s\n", specs[copy].id.c_str(),
              dup_flagged ? "flagged" : "NOT flagged", static_cast<long long>(rw.tranches[copy].uncredited_examples),
              static_cast<long long>(ts[copy].examples), 100.0 * ts[copy].share, copy_unpaid ? "" : " (NOT zero)");
  const double alone_share = alone.attribution.tranches[copied].share;
  const bool original_kept = ts[copied].share == alone_share;
  std::printf("  original %s: share %.4f%% with the copy present, %.4f%% in a run without it (same model and queries): %s\n",
              specs[copied].id.c_str(), 100.0 * ts[copied].share, 100.0 * alone_share,
              original_kept ? "the same, bit for bit" : "DIFFERENT");
  bool rescan_exact = false;
  for (const auto& d : summary.attribution.duplicates)
    rescan_exact |= static_cast<size_t>(d.a) == rescanned && static_cast<size_t>(d.b) == rescan && d.shared_b > 0;
  const auto& rescan_flags = ts[rescanned].flags;
  const bool rescan_near = std::find(rescan_flags.begin(), rescan_flags.end(), "near_duplicates:" + specs[rescan].id) != rescan_flags.end();
  std::printf("  noisy copy %s / %s: %s, %s; %lld of %lld examples credited to an earlier holder\n", specs[rescanned].id.c_str(),
              specs[rescan].id.c_str(),
              rescan_exact ? "matched exactly (unexpected: the noise should hide it)" : "invisible to exact matching",
              rescan_near ? "flagged as near-duplicates" : "NOT flagged as near-duplicates",
              static_cast<long long>(rw.tranches[rescan].uncredited_examples), static_cast<long long>(ts[rescan].examples));
  const auto& hw = rw.tranches[noisy];
  std::printf("  quality hold on %s: outlier share %.3f of its units (threshold %.2f): %s\n", specs[noisy].id.c_str(),
              hw.hold_outlier_share, config.quality_hold_threshold,
              hw.held ? ("held, mass x" + std::to_string(hw.hold_factor).substr(0, 4)).c_str() : "not held");

  // The epoch goes to the same embedded ledger: integer scores, the exact split of the pool, the
  // Merkle root and the manifest hash, ready for claims after the challenge window.
  const ledger::U256 pool(1'000'000'000);
  const auto epoch = ledger::build_epoch(out_dir, 1, pool);
  connectors::write_file_atomic((fs::path(out_dir) / "epoch-1.json").string(), epoch.manifest);
  auto book = ledger::open_embedded_ledger(db);
  const auto committed = book->commit(epoch, "file://" + fs::absolute(fs::path(out_dir) / "epoch-1.json").string());
  std::printf("\n");
  print_commitment(epoch, committed, "embedded ledger " + db);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\n  report: %s/report.json  manifest: %s/manifest.json  (%.1f s)\n", out_dir.c_str(), out_dir.c_str(), secs);
  const fs::path html = fs::path(out_dir) / "report.html";
  if (fs::exists(html)) std::printf("  open in a browser: %s\n", fs::absolute(html).string().c_str());
  // An auditor's check of the epoch just committed, from the same folder (docs/verify.md).
  std::printf("  recompute and check it as an auditor would: attrace verify 1 --db %s --store %s\n", db.c_str(), fo.store.c_str());
  return lowest == noisy && dup_flagged && copy_unpaid && original_kept ? 0 : 1;
}

}  // namespace attrace::cli
