#pragma once
// `attrace demo --lm`: a GPT-style language model trained here on real English text (Debian's
// fortunes, one contributor tranche per category), held-out fortunes attributed back to the
// tranches through the graph gradient path with Kronecker projection (docs/lm.md).
#include <string>

namespace attrace::cli {

/// Where Debian's fortunes package keeps its category files.
inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

/// Options of the language-model demo.
struct DemoLmOptions {
  std::string dir = "attrace-demo-lm";     ///< work directory (text, datasets, checkpoints, report)
  std::string fortunes = kFortunesDir;     ///< folder with the fortune category files
  bool quick = false;  ///< a small model and few items (seconds, for tests); same pipeline
  bool quiet = false;
};

/// Builds the text scenario, trains the GPT, attributes the held-out fortunes and prints, per
/// category, how many of its queries are attributed mostly to its own tranche. Returns the exit
/// code: 0 when that fraction is at least 1.5 times the chance level (1 / categories).
int run_demo_lm(const DemoLmOptions& options);

}  // namespace attrace::cli
