#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/connectors/scores_file.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/tracin.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/backend.hpp>

#include <spdlog/spdlog.h>

namespace attrace::engine {

RunSummary run_attribute(const Config& config, const RunOptions& options) {
  validate(config);
  // Fail on an unusable output location before any computation.
  connectors::StagedDir out(options.out_dir, options.replace);
  const auto backend = kernels::make_backend(config.device);
  ATTRACE_CHECK(config.scoring != "blas" || kernels::blas_compiled(), InputError,
                "attribution.scoring = \"blas\" but this build has no BLAS");

  const auto run = connectors::read_run_file(config.run_file);
  const auto train = connectors::read_dataset(config.train_file, true);
  const auto query = connectors::read_dataset(config.query_file, false);
  spdlog::info("run '{}': {} checkpoints; train '{}': {} examples in {} tranches; query '{}': {} examples",
               run.path, run.checkpoints.size(), train.path, train.size(), train.tranches.size(), query.path,
               query.size());

  Progress progress(!options.quiet);
  const TracinResult r = compute_tracin(config, run, train, query, *backend, progress);
  RunSummary summary;
  summary.attribution = summarize(config, train, r);
  summary.n_train = r.n_train;
  summary.n_query = r.n_query;
  summary.dim = r.checkpoints.front().dim;
  summary.path_used = to_string(r.checkpoints.front().path);

  const std::string report = report_json(config, train, query, r, summary.attribution).dump(2) + "\n";
  const std::string csv = attribution_csv(summary.attribution);
  nlohmann::json manifest = manifest_json(config, run, train, query, r, backend->name());
  connectors::write_file_atomic(out.file("report.json"), report);
  connectors::write_file_atomic(out.file("attribution.csv"), csv);
  nlohmann::json outputs = {{"report.json", connectors::sha256_hex(report)},
                            {"attribution.csv", connectors::sha256_hex(csv)}};
  const int64_t entries = r.n_train * r.n_query;
  summary.wrote_scores = config.scores == ScoresOutput::always ||
                         (config.scores == ScoresOutput::automatic && entries <= config.scores_max_entries);
  if (summary.wrote_scores) {
    connectors::write_scores_h5(out.file("scores.h5"), r.scores, r.self_influence, train.ids, query.ids);
    outputs["scores.h5"] = connectors::sha256_file(out.file("scores.h5"));
  } else {
    spdlog::info("scores.h5 not written ({} entries; output.scores = {}, limit {})", entries, to_string(config.scores),
                 config.scores_max_entries);
  }
  manifest["outputs"] = outputs;
  // The manifest goes last: a directory with a manifest names every other file by hash.
  connectors::write_file_atomic(out.file("manifest.json"), canonical(manifest));
  out.commit();
  return summary;
}

}  // namespace attrace::engine
