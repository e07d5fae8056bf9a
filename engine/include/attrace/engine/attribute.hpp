#pragma once
// The `attrace attribute` pipeline: read inputs, compute exact TracIn, write the outputs
// atomically (nothing appears under the output name unless every file is complete).
#include <attrace/engine/config.hpp>
#include <attrace/engine/report.hpp>

#include <string>

namespace attrace::engine {

/// Options of one run that are not attribution settings (they change no number).
struct RunOptions {
  std::string out_dir;   ///< directory to create
  bool replace = false;  ///< replace an existing out_dir
  bool quiet = false;    ///< no progress on stderr
};

/// What a finished run produced, for printing.
struct RunSummary {
  Attribution attribution;
  bool wrote_scores = false;
  int64_t n_train = 0, n_query = 0, dim = 0;
  std::string path_used;
};

/// Runs attribution end to end. Checks the output location before computing anything.
RunSummary run_attribute(const Config& config, const RunOptions& options);

}  // namespace attrace::engine
