#pragma once
// `attrace demo`: a realistic attribution scenario built from data on this machine.
#include <string>

namespace attrace::cli {

/// Options of the demo.
struct DemoOptions {
  std::string dir = "attrace-demo";  ///< work directory (inputs, checkpoints, report)
  bool quiet = false;
};

/// Builds the scenario, trains, attributes and prints the attribution vector. Returns the exit
/// code: 0 when the noisy tranche has the lowest share and the duplicated pair is flagged.
int run_demo(const DemoOptions& options);

}  // namespace attrace::cli
