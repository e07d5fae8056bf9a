#pragma once
// A training run: its TorchScript checkpoints in order, with the step and learning rate of each.
// Run file format: docs/formats.md#run-file.
#include <cstdint>
#include <string>
#include <vector>

namespace attrace::connectors {

/// One checkpoint of a training run.
struct Checkpoint {
  std::string file;    ///< as written in the run file
  std::string path;    ///< resolved path (relative entries are relative to the run file)
  std::string sha256;  ///< SHA-256 of the checkpoint file (hex)
  int64_t step = 0;    ///< training step at which it was saved
  double lr = 0;       ///< learning rate in force for this checkpoint (TracInCP weight)
};

/// A training run read from a run file.
struct TrainingRun {
  std::string path;    ///< the run file
  std::string sha256;  ///< SHA-256 of the run file
  std::vector<Checkpoint> checkpoints;
};

/// Reads a run file, checks every entry (file present and readable, lr present, finite, >= 0,
/// steps increasing) and hashes every checkpoint. Throws InputError naming the entry.
TrainingRun read_run_file(const std::string& path);

}  // namespace attrace::connectors
