#pragma once
// `attrace demo`: a realistic attribution scenario built from data on this machine.
#include <cstdint>
#include <string>
#include <vector>

namespace attrace::cli {

/// Where Debian's python3-sklearn ships the handwritten digits (the demo's and eval's data).
inline constexpr const char* kDigitsPath = "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz";

/// Reads the 1797 sklearn digits (8x8 images, values 0..16) scaled to [0, 1] into `x` and their
/// labels into `y`; false when the file is absent.
bool read_digits(std::vector<std::vector<float>>& x, std::vector<int64_t>& y);

/// Options of the demo.
struct DemoOptions {
  std::string dir = "attrace-demo";  ///< work directory (inputs, checkpoints, report)
  bool quiet = false;
};

/// Builds the scenario, trains, attributes and prints the attribution vector. Returns the exit
/// code: 0 when the noisy tranche has the lowest share and the duplicated pair is flagged.
int run_demo(const DemoOptions& options);

}  // namespace attrace::cli
