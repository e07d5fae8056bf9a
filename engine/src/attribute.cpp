// The pipeline's entry points (docs/architecture.md): attribute = featurize + score in one call;
// featurize = features to a store; score = store -> outputs. All three end in the same writers,
// so featurize + score gives the same bytes as attribute.
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/feature_store.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/connectors/scores_file.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/token_scores.hpp>

#include <optional>
#include <attrace/engine/methods.hpp>
#include <attrace/engine/quality.hpp>
#include <attrace/engine/report_html.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>

namespace attrace::engine {
namespace {

// Near-duplicate sketches: the last checkpoint's features through a dense Rademacher projection
// of this many columns, on a stream no checkpoint uses.
constexpr int64_t kSketchDim = 128;
constexpr uint32_t kSketchStream = 0xFFFFFF00u;
// Quality flag: a tranche holding this many times its expected share of the top self-influence
// examples is flagged `self_influence_outliers`.
constexpr double kOutlierFlagRatio = 2.0;
// ... and at least this many of them: in a tiny tranche one outlier is chance, not a signal.
constexpr int64_t kOutlierFlagMinExamples = 5;

std::unique_ptr<kernels::Backend> backend_for(const Config& config) {
  auto backend = kernels::make_backend(to_string(config.device));
  ATTRACE_CHECK(config.scoring != Scoring::blas || kernels::blas_compiled(), InputError,
                "attribution.scoring = \"blas\" but this build has no BLAS");
  return backend;
}

// Exact features (gradients, or factors for factored layers: `width` columns per example and
// checkpoint) are refused above the limit.
void check_exact_size(const Config& config, int64_t rows, int64_t width, size_t checkpoints, const std::string& what) {
  if (config.projection != Projection::none) return;
  const double bytes = static_cast<double>(rows) * static_cast<double>(width) * static_cast<double>(checkpoints) *
                       static_cast<double>(connectors::dtype_bytes(feature_dtype_of(config)));
  ATTRACE_CHECK(bytes <= static_cast<double>(config.exact_limit), InputError,
                what + ": exact features would take " + gib(bytes) + " (" + std::to_string(rows) + " examples x " +
                    std::to_string(width) + " feature columns x " + std::to_string(checkpoints) + " checkpoints), above " +
                    "features.exact_limit = " + gib(static_cast<double>(config.exact_limit)) +
                    "; use a projection ([projection] kind = \"dense\" or \"kronecker\") or raise the limit");
}

// Rows per HDF5 chunk and per durable write: about 1 MiB of features, whole rows, at most 4096.
int64_t chunk_rows_for(int64_t width, int64_t bytes) {
  const int64_t row = std::max<int64_t>(1, width * bytes);
  return std::clamp<int64_t>((int64_t{1} << 20) / row, 1, 4096);
}

// A dataset rebuilt from a feature store: ids, tranches and content digests, no inputs.
connectors::Dataset dataset_from_store(const connectors::FeatureStoreReader& store) {
  const auto& l = store.layout();
  const auto spec = nlohmann::json::parse(l.spec);
  connectors::Dataset d;
  d.path = spec.at("dataset").at("file").get<std::string>();
  d.sha256 = spec.at("dataset").at("sha256").get<std::string>();
  d.input_shape = {l.rows};
  d.ids = l.ids;
  d.tranche = l.tranche;
  d.digests = l.digests;
  for (const auto& t : spec.at("tranches"))
    d.tranches.push_back({t.at("id").get<std::string>(), t.at("account").get<std::string>(), t.at("name").get<std::string>(),
                          t.at("license").get<std::string>()});
  return d;
}

// Kronecker sketch factors of a factored layer: 16 columns for the inputs, 8 for the output
// gradients (16 x 8 = kSketchDim), on streams below kSketchStream that no checkpoint uses.
constexpr int64_t kSketchIn = 16, kSketchOut = 8;
uint32_t sketch_stream_in(size_t layer) { return kSketchStream - 2 * static_cast<uint32_t>(layer + 1); }

// Per-example sketches of the training set for the near-duplicate signal: a random projection
// of the last checkpoint's gradients to kSketchDim columns, so that cosines of sketches estimate
// cosines of gradients. Dense columns go through a dense Rademacher projection (stream
// kSketchStream); each factored layer's gradient sum_t delta_t x_t^T through a Kronecker
// Rademacher projection P_out (x) P_in (8 x 16) computed from its factors, added in chain order.
// Factored rows are never widened to gradients, which would cost n x p x kSketchDim.
std::vector<float> sketches(const FeatureSource& f, uint64_t seed, kernels::Backend& backend, Progress& progress) {
  const size_t c = f.checkpoints() - 1;
  const FeatureLayout lay = f.layout(c);
  const int64_t n = f.rows(), w = f.width(c), tile = 4096;
  std::vector<float> out(static_cast<size_t>(n * kSketchDim)), rows, layer_sketch, xs, ds;
  std::vector<double> rows64;
  const kernels::ProjectionSpec spec{seed, kSketchStream, kSketchDim, kernels::ProjectionKind::rademacher};
  progress.begin("near-duplicate sketches", n, "sketches");
  for (int64_t b0 = 0; b0 < n; b0 += tile) {
    const int64_t b1 = std::min(n, b0 + tile), nb = b1 - b0;
    rows.resize(static_cast<size_t>(nb * w));
    if (f.fp64()) {
      rows64.resize(rows.size());
      f.read(c, b0, b1, rows64.data());
      std::transform(rows64.begin(), rows64.end(), rows.begin(), [](double v) { return static_cast<float>(v); });
    } else {
      f.read(c, b0, b1, rows.data());
    }
    float* sk = out.data() + b0 * kSketchDim;
    if (lay.dense > 0) backend.project_dense({rows.data(), nb, lay.dense, w}, spec, kernels::view_mut(sk, nb, kSketchDim));
    for (size_t l = 0; l < lay.factored.size(); ++l) {
      const auto& fl = lay.factored[l];
      const int64_t t_n = fl.positions;
      xs.resize(static_cast<size_t>(nb * t_n * fl.d_in));
      ds.resize(static_cast<size_t>(nb * t_n * fl.d_out));
      for (int64_t r = 0; r < nb; ++r) {
        const float* row = rows.data() + r * w;
        std::copy(row + fl.offset, row + fl.offset + t_n * fl.d_in, xs.begin() + r * t_n * fl.d_in);
        std::copy(row + fl.delta_offset(), row + fl.delta_offset() + t_n * fl.d_out, ds.begin() + r * t_n * fl.d_out);
      }
      layer_sketch.resize(static_cast<size_t>(nb * kSketchDim));
      const kernels::ProjectionSpec in{seed, sketch_stream_in(l), kSketchIn, kernels::ProjectionKind::rademacher};
      const kernels::ProjectionSpec ou{seed, sketch_stream_in(l) + 1, kSketchOut, kernels::ProjectionKind::rademacher};
      backend.project_kronecker(kernels::view(static_cast<const float*>(xs.data()), nb * t_n, fl.d_in),
                                kernels::view(static_cast<const float*>(ds.data()), nb * t_n, fl.d_out), t_n, in, ou,
                                kernels::view_mut(layer_sketch.data(), nb, kSketchDim));
      for (int64_t q = 0; q < nb * kSketchDim; ++q) sk[q] += layer_sketch[static_cast<size_t>(q)];
    }
    progress.advance(nb);
  }
  progress.end();
  return out;
}

// How the sketches were made (report.json's quality block).
std::string sketch_description(const FeatureSource& f) {
  const std::string dense = "dense Rademacher projection (stream " + std::to_string(kSketchStream) + ")";
  if (f.checkpoints() == 0 || f.layout(f.checkpoints() - 1).factored.empty()) return "last checkpoint's features x " + dense;
  const auto& lay = f.layout(f.checkpoints() - 1);
  return "last checkpoint's gradients: dense columns x " + dense + ", plus each factored layer l (chain order) x Kronecker " +
         "Rademacher projection P_out (8 columns, stream " + std::to_string(kSketchStream) + " - 2(l+1) + 1) (x) P_in (16 " +
         "columns, stream " + std::to_string(kSketchStream) + " - 2(l+1)) from its factors; " +
         std::to_string(lay.factored.size()) + " factored layers";
}

nlohmann::json quality_json(const QualityReport& q, const Attribution& a, const std::string& sketch) {
  nlohmann::json pairs = nlohmann::json::array();
  for (const auto& p : q.pairs)
    pairs.push_back({{"tranches", {a.tranches[static_cast<size_t>(p.a)].tranche.id, a.tranches[static_cast<size_t>(p.b)].tranche.id}},
                     {"examples", {p.examples_a, p.examples_b}},
                     {"fractions", {p.fraction_a, p.fraction_b}}});
  return {{"near_duplicates",
           {{"cosine_threshold", q.settings.near_duplicate_cosine},
            {"sketch_dim", kSketchDim},
            {"sketch", sketch},
            {"pairs", q.pairs_found},
            {"exact_copy_examples", q.exact_copy_examples},
            {"lists", q.lists_used},
            {"probes", q.settings.probes},
            {"tranche_pairs", pairs}}},
          {"outliers",
           {{"top_fraction", q.settings.outlier_top_fraction},
            {"examples", q.outliers},
            {"self_influence_threshold", q.self_influence_threshold},
            {"flag_ratio", kOutlierFlagRatio},
            {"flag_min_examples", kOutlierFlagMinExamples}}}};
}

// Quality flags into the attribution (before any writer runs).
void flag_quality(const Config& config, const QualityReport& q, Attribution& a) {
  for (const auto& p : q.pairs) {
    if (std::max(p.fraction_a, p.fraction_b) < config.duplicate_threshold) continue;
    auto& ta = a.tranches[static_cast<size_t>(p.a)];
    auto& tb = a.tranches[static_cast<size_t>(p.b)];
    const auto has = [](const TrancheSummary& t, const std::string& f) {
      return std::find(t.flags.begin(), t.flags.end(), f) != t.flags.end();
    };
    if (has(ta, "duplicates:" + tb.tranche.id)) continue;  // exact copies are flagged already
    ta.flags.push_back("near_duplicates:" + tb.tranche.id);
    tb.flags.push_back("near_duplicates:" + ta.tranche.id);
  }
  for (size_t t = 0; t < q.tranches.size(); ++t)
    if (q.tranches[t].outlier_share > kOutlierFlagRatio * q.settings.outlier_top_fraction &&
        q.tranches[t].outlier_examples >= kOutlierFlagMinExamples)
      a.tranches[t].flags.push_back("self_influence_outliers");
}

// The writers: shared by attribute and score, so both produce the same bytes.
RunSummary write_outputs(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& train,
                         const connectors::Dataset& query, const TracinResult& r, const FeatureSource& train_features,
                         const FeatureSource& query_features, const connectors::Dataset* token_train,
                         kernels::Backend& backend, connectors::StagedDir& out, Progress& progress,
                         const std::optional<RegistryBinding>& registry) {
  RunSummary summary;
  summary.attribution = summarize(config, train, r);
  summary.n_train = r.n_train;
  summary.n_query = r.n_query;
  summary.dim = r.checkpoints.front().dim;
  summary.path_used = to_string(r.checkpoints.front().path);

  const auto sk = sketches(train_features, config.projection_seed, backend, progress);
  progress.begin("quality signals and outputs", 1, "quality and outputs");
  QualityInput qi;
  qi.sketch = sk.data();
  qi.n = r.n_train;
  qi.dim = kSketchDim;
  qi.tranche = train.tranche.data();
  qi.n_tranches = static_cast<int64_t>(train.tranches.size());
  qi.self_influence = r.self_influence.data();
  QualitySettings qs;
  if (const char* env = std::getenv("ATTRACE_THREADS")) qs.threads = std::max(0, std::atoi(env));  // speed only
  // Near-duplicate example pairs are kept only when duplicate credit uses them.
  const bool want_pairs = config.duplicate_credit != DuplicateCredit::none && config.duplicate_match == DuplicateMatch::near;
  std::vector<ExamplePair> near_pairs;
  const QualityReport quality = quality_signals(qi, qs, want_pairs ? &near_pairs : nullptr);
  flag_quality(config, quality, summary.attribution);
  apply_rewards(config, train, r, want_pairs ? &near_pairs : nullptr, registry, quality.settings.outlier_top_fraction,
                summary.attribution);

  nlohmann::json report = report_json(config, train, query, r, summary.attribution);
  report["quality"] = quality_json(quality, summary.attribution, sketch_description(train_features));
  // Token datasets with Kronecker features: which training tokens carried each top proponent's score.
  if (token_train != nullptr && token_scores_refusal(config, *token_train).empty()) {
    const auto tokens = token_scores(config, run, *token_train, query_features, r, backend);
    for (size_t q = 0; q < tokens.size(); ++q) report["queries"][q]["tokens"] = tokens[q];
    report["token_scores"] = {
        {"method", "tracin"},
        {"proponents_per_query", config.token_proponents},
        {"tokens_per_proponent", config.token_top},
        {"contribution",
         "per input position t of a proponent: the terms of every layer's Kronecker sum at t (layer input x_t, output "
         "gradient delta_t) against the query's features, summed over checkpoints; they add up to the score "
         "(sum_of_positions; the stored features are rounded, the terms are not)"}};
  }
  for (size_t t = 0; t < quality.tranches.size(); ++t) {
    const auto& tq = quality.tranches[t];
    report["tranches"][t]["quality"] = {{"near_duplicate_examples", tq.near_duplicate_examples},
                                        {"near_duplicate_rate", tq.near_duplicate_rate},
                                        {"cross_duplicate_examples", tq.cross_duplicate_examples},
                                        {"outlier_examples", tq.outlier_examples},
                                        {"outlier_share", tq.outlier_share}};
  }
  const std::string report_text = report.dump(2) + "\n";
  const std::string csv = attribution_csv(summary.attribution);
  nlohmann::json manifest = manifest_json(config, run, train, query, r, backend.name());
  if (config.projection == Projection::none) {
    // Exact features: how each checkpoint's layers were scored (dense gradient or factors).
    nlohmann::json per = nlohmann::json::array();
    for (const auto& u : r.checkpoints) per.push_back(checkpoint_use_json(config, u).at("factoring"));
    manifest["factoring"] = {{"setting", to_string(config.factored)},
                             {"rule", "auto: a layer is factored when T^2 (d_in + d_out) < d_in d_out (T positions)"},
                             {"score_order", "per checkpoint: dense columns first, then each factored layer in chain order as "
                                             "sum over t, s ascending of <x_it, x_js> <delta_it, delta_js> (float64 products "
                                             "and sum of the kernel's dot products)"},
                             {"checkpoints", per}};
  }
  manifest["rewards"] = rewards_json(config, summary.attribution);
  if (registry) manifest["registry"] = registry_json(*registry);
  manifest["quality"] = {{"near_duplicate_cosine", quality.settings.near_duplicate_cosine},
                         {"outlier_top_fraction", quality.settings.outlier_top_fraction},
                         {"probes", quality.settings.probes},
                         {"lists", quality.settings.lists},
                         {"kmeans_iterations", quality.settings.kmeans_iterations},
                         {"kmeans_sample_per_list", quality.settings.kmeans_sample_per_list},
                         {"seed", std::to_string(quality.settings.seed)},
                         {"sketch_dim", kSketchDim},
                         {"sketch_stream", kSketchStream}};
  connectors::write_file_atomic(out.file("report.json"), report_text);
  connectors::write_file_atomic(out.file("attribution.csv"), csv);
  nlohmann::json outputs = {{"report.json", connectors::sha256_hex(report_text)}, {"attribution.csv", connectors::sha256_hex(csv)}};
  summary.wrote_scores = !r.scores.empty();
  if (summary.wrote_scores) {
    connectors::write_scores_h5(out.file("scores.h5"), r.scores, r.self_influence, train.ids, query.ids);
    outputs["scores.h5"] = connectors::sha256_file(out.file("scores.h5"));
  } else {
    spdlog::info("scores.h5 not written ({} entries; output.scores = {}, limit {})", r.n_train * r.n_query,
                 to_string(config.scores), config.scores_max_entries);
  }
  manifest["outputs"] = outputs;
  const std::string manifest_text = canonical(manifest);
  // report.html is made from the two documents; the manifest pins report.json, which pins the page's content.
  connectors::write_file_atomic(out.file("report.html"), report_html(report, manifest));
  // The manifest goes last: a directory with a manifest names every other file by hash.
  connectors::write_file_atomic(out.file("manifest.json"), manifest_text);
  progress.advance(1);  // an interrupt stops here, before the output is committed
  out.commit();
  progress.end();
  progress.summary();
  return summary;
}

std::vector<std::string> checkpoint_paths(const connectors::TrainingRun& run) {
  std::vector<std::string> paths;
  for (const auto& ck : run.checkpoints) paths.push_back(ck.path);
  return paths;
}

bool keep_scores(const Config& config, int64_t n, int64_t m) {
  return config.scores == ScoresOutput::always || (config.scores == ScoresOutput::automatic && n * m <= config.scores_max_entries);
}

// The parts of a spec that featurization settings decide (not which dataset was featurized).
nlohmann::json settings_part(nlohmann::json spec) {
  spec.erase("dataset");
  spec.erase("tranches");
  spec.erase("role");
  return spec;
}

}  // namespace

nlohmann::json feature_spec(const Config& config, const connectors::TrainingRun& run, const connectors::Dataset& ds, bool query) {
  nlohmann::json ckpts = nlohmann::json::array();
  for (const auto& ck : run.checkpoints)
    ckpts.push_back({{"file", ck.file}, {"sha256", ck.sha256}, {"step", std::to_string(ck.step)}, {"lr", ck.lr}});
  nlohmann::json tranches = nlohmann::json::array();
  for (const auto& t : ds.tranches)
    tranches.push_back({{"id", t.id}, {"account", t.account}, {"name", t.name}, {"license", t.license}});
  const nlohmann::json settings = to_json(config);
  const nlohmann::json features = {{"dtype", connectors::to_string(feature_dtype_of(config))},
                                   {"factored", to_string(config.factored)}};
  return {{"format", "attrace.features/1"},
          {"engine_version", engine_version()},
          {"role", query ? "query" : "train"},
          {"dataset", {{"file", ds.path}, {"sha256", ds.sha256}, {"examples", ds.size()}}},
          {"tranches", tranches},
          {"run", {{"file", run.path}, {"sha256", run.sha256}, {"checkpoints", ckpts}}},
          {"gradients",
           {{"loss", settings["gradients"]["loss"]},
            {"parameters", settings["gradients"]["parameters"]},
            {"path", settings["gradients"]["path"]},
            {"precision", settings["gradients"]["precision"]}}},
          {"projection", settings["projection"]},
          {"features", features}};
}

RunSummary run_attribute(const Config& config, const RunOptions& options) {
  validate(config);
  // Fail on an unusable output location before any computation.
  connectors::StagedDir out(options.out_dir, options.replace,
                           {config.config_file, config.run_file, config.train_file, config.query_file});
  const auto backend = backend_for(config);
  const auto run = connectors::read_run_file(config.run_file);
  out.protect(checkpoint_paths(run));
  const auto train = connectors::read_dataset(config.train_file, true);
  const auto query = connectors::read_dataset(config.query_file, false);
  registration_order(train, options.registry);  // a registry binding that does not fit is refused before any work
  spdlog::info("run '{}': {} checkpoints; train '{}': {} examples in {} tranches; query '{}': {} examples", run.path,
               run.checkpoints.size(), train.path, train.size(), train.tranches.size(), query.path, query.size());
  Progress progress(!options.quiet);
  std::vector<CheckpointUse> uses;
  // attribute holds both sets' features in memory: the size is checked before any is computed.
  const auto check_memory = [&](const Featurizer& probe) {
    check_exact_size(config, train.size() + query.size(), probe.width(), run.checkpoints.size(), config.train_file);
    const double bytes = static_cast<double>(train.size() + query.size()) * static_cast<double>(probe.width()) *
                         static_cast<double>(run.checkpoints.size()) * (probe.fp64() ? 8.0 : 4.0);
    const int64_t phys = physical_memory();
    const double budget = config.memory_limit > 0 ? static_cast<double>(config.memory_limit) : 0.5 * static_cast<double>(phys);
    ATTRACE_CHECK(budget <= 0 || bytes <= budget, InputError,
                  "attribute holds every feature in memory: " + gib(bytes) + " for " + std::to_string(train.size() + query.size()) +
                      " examples, above the memory limit of " + gib(budget) +
                      "; use attrace featurize + attrace score (features on disk, scored in tiles)");
  };
  const FeaturePair features = featurize_pair_in_memory(config, run, train, query, *backend, progress, &uses, check_memory);
  const MemoryFeatures& tf = features.train;
  const MemoryFeatures& qf = features.query;
  const MethodView mv = method_view(config, run, train, tf, qf);  // attribution.method (engine/methods.hpp)
  ScoreResult s = score_all(mv.train_or(tf), mv.query_or(qf), *backend,
                            score_settings(config, train, query, keep_scores(config, train.size(), query.size())),
                            progress);
  keep_tracin_self_influence(config, mv, tf, qf, *backend, progress, s);
  const TracinResult r = tracin_result(std::move(s), uses);
  return write_outputs(config, run, train, query, r, tf, qf, &train, *backend, out, progress, options.registry);
}

FeaturizeSummary run_featurize(const Config& config, const FeaturizeOptions& options) {
  validate(config);
  const auto backend = backend_for(config);
  const auto run = connectors::read_run_file(config.run_file);
  const auto ds = connectors::read_dataset(options.query ? config.query_file : config.train_file, !options.query);
  const auto dtype = feature_dtype_of(config);
  // Plan every checkpoint first (widths, paths, streams): the store is laid out completely up front.
  connectors::StoreLayout layout;
  layout.spec = canonical(feature_spec(config, run, ds, options.query));
  layout.dtype = dtype;
  layout.rows = ds.size();
  layout.ids = ds.ids;
  layout.tranche = ds.tranche;
  layout.digests = connectors::example_digests(ds);
  int64_t max_width = 0;
  for (size_t c = 0; c < run.checkpoints.size(); ++c) {
    Featurizer fz(config, run, c, {&ds}, *backend);
    layout.checkpoints.push_back({fz.width(), fz.weight(), canonical(checkpoint_use_json(config, fz.use()))});
    max_width = std::max(max_width, fz.width());
  }
  check_exact_size(config, ds.size(), max_width, run.checkpoints.size(), options.store);
  layout.chunk_rows = chunk_rows_for(max_width, connectors::dtype_bytes(dtype));
  connectors::FeatureStoreWriter writer(options.store, layout, options.replace);
  FeaturizeSummary summary;
  summary.rows = ds.size();
  summary.checkpoints = run.checkpoints.size();
  summary.resumed = writer.resumed();
  Progress progress(!options.quiet);
  std::vector<float> buf;
  std::vector<double> buf64;
  for (size_t c = 0; c < run.checkpoints.size(); ++c) {
    const int64_t start = writer.rows_done(c);
    if (start == ds.size()) continue;
    if (start > 0) spdlog::info("checkpoint {}: resuming at row {} of {}", c + 1, start, ds.size());
    Featurizer fz(config, run, c, {&ds}, *backend);
    const int64_t w = fz.width();
    progress.begin("checkpoint " + std::to_string(c + 1) + "/" + std::to_string(run.checkpoints.size()) + " features",
                   ds.size() - start, "features");
    for (int64_t b0 = start; b0 < ds.size(); b0 += layout.chunk_rows) {
      const int64_t b1 = std::min(ds.size(), b0 + layout.chunk_rows);
      if (fz.fp64()) buf64.resize(static_cast<size_t>((b1 - b0) * w));
      else buf.resize(static_cast<size_t>((b1 - b0) * w));
      for (int64_t r0 = b0; r0 < b1; r0 += fz.batch_rows()) {
        const int64_t r1 = std::min(b1, r0 + fz.batch_rows());
        if (fz.fp64())
          fz.features(ds, r0, r1, buf64.data() + (r0 - b0) * w);
        else
          fz.features(ds, r0, r1, buf.data() + (r0 - b0) * w);
      }
      if (fz.fp64())
        writer.write(c, b0, b1, buf64.data());
      else
        writer.write(c, b0, b1, buf.data());
      summary.rows_written += b1 - b0;
      progress.advance(b1 - b0);
    }
    progress.end();
    note_split(config, fz, progress);
  }
  progress.summary();
  return summary;
}

RunSummary run_score(const Config& config, const std::string& store_path, const std::string& query_store_path,
                     const RunOptions& options) {
  validate(config);
  connectors::StagedDir out(options.out_dir, options.replace,
                           {config.config_file, config.run_file, config.train_file, config.query_file, store_path,
                            query_store_path});
  const auto backend = backend_for(config);
  const connectors::FeatureStoreReader store(store_path);
  const auto run = connectors::read_run_file(config.run_file);
  out.protect(checkpoint_paths(run));
  const connectors::Dataset train = dataset_from_store(store);
  ATTRACE_CHECK(!train.tranche.empty() && !train.tranches.empty(), InputError,
                store_path + ": this store holds a query set (no tranches); --store takes a training-set store");
  // The config's featurization settings must be the store's: never mix features made differently.
  const auto stored = nlohmann::json::parse(store.layout().spec);
  const auto wanted = settings_part(feature_spec(config, run, train, false));
  // The run is identified by its hashes (run file and checkpoints), not by how its path was
  // written: a relative path in one config and an absolute one in another name the same run.
  const auto same = [](const std::string& key, nlohmann::json a, nlohmann::json b) {
    if (key == "run" && a.is_object() && b.is_object()) {
      a.erase("file");
      b.erase("file");
    }
    return a == b;
  };
  for (const auto& [key, value] : wanted.items())
    ATTRACE_CHECK(stored.contains(key) && same(key, stored.at(key), value), InputError,
                  store_path + ": the store's '" + key + "' (" + (stored.contains(key) ? stored.at(key).dump() : "absent") +
                      ") differs from the config's (" + value.dump() + "); featurize again or use a matching config");
  registration_order(train, options.registry);  // a registry binding that does not fit is refused before any work
  ATTRACE_CHECK(train.path == config.train_file, InputError,
                store_path + ": the store was made from '" + train.path + "' but the config's data.train is '" +
                    config.train_file + "'");
  std::vector<CheckpointUse> uses;
  for (size_t c = 0; c < store.layout().checkpoints.size(); ++c)
    uses.push_back(checkpoint_use_from_json(nlohmann::json::parse(store.layout().checkpoints[c].meta), store_path));
  const StoreFeatures tf(store);
  Progress progress(!options.quiet);
  std::unique_ptr<connectors::FeatureStoreReader> qstore;
  connectors::Dataset query;
  std::unique_ptr<FeatureSource> qf;
  MemoryFeatures qmem(0, false);
  if (!query_store_path.empty()) {
    qstore = std::make_unique<connectors::FeatureStoreReader>(query_store_path);
    query = dataset_from_store(*qstore);
    const auto qspec = nlohmann::json::parse(qstore->layout().spec);
    ATTRACE_CHECK(settings_part(qspec) == settings_part(stored), InputError,
                  query_store_path + ": the query store was featurized with other settings or another run than " + store_path);
    ATTRACE_CHECK(query.path == config.query_file, InputError,
                  query_store_path + ": the query store was made from '" + query.path + "' but the config's data.query is '" +
                      config.query_file + "'");
    qf = std::make_unique<StoreFeatures>(*qstore);
  } else {
    query = connectors::read_dataset(config.query_file, false);
    qmem = featurize_in_memory(config, run, query, {&query}, *backend, progress, "query features", nullptr);
  }
  const FeatureSource& qsrc = qf ? *qf : static_cast<const FeatureSource&>(qmem);
  spdlog::info("store '{}': {} examples x {} checkpoints; query '{}': {} examples", store_path, train.size(),
               store.layout().checkpoints.size(), query.path, query.size());
  // attribution.method; TRAK's kernel factors are kept beside the store, keyed by its spec.
  const MethodView mv = method_view(config, run, train, tf, qsrc, store_path + ".trak-kernel", store.layout().spec);
  ScoreResult s = score_all(mv.train_or(tf), mv.query_or(qsrc), *backend,
                            score_settings(config, train, query, keep_scores(config, train.size(), query.size())),
                            progress);
  keep_tracin_self_influence(config, mv, tf, qsrc, *backend, progress, s);
  const TracinResult r = tracin_result(std::move(s), uses);
  // Per-token scores read the training tokens from data.train (the store keeps features only),
  // the file the store was made from (its hash).
  std::optional<connectors::Dataset> tokens;
  if (config.projection == Projection::kronecker && config.method == Method::tracin && config.token_proponents > 0 &&
      config.token_top > 0) {
    auto ds = connectors::read_dataset(config.train_file, true);
    if (ds.input_kind == connectors::InputKind::integers) {
      ATTRACE_CHECK(ds.sha256 == train.sha256, InputError,
                    config.train_file + ": changed since the store " + store_path + " was made from it (SHA-256 differs)");
      tokens = std::move(ds);
    }
  }
  return write_outputs(config, run, train, query, r, tf, qsrc, tokens ? &*tokens : nullptr, *backend, out, progress,
                       options.registry);
}

}  // namespace attrace::engine
