#pragma once
// Progress lines on stderr for long steps (examples/s, ETA). Wall-clock time is used only for
// this display, never in any output file.
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace attrace::engine {

/// A progress indicator for one step at a time; silent when disabled (--quiet).
class Progress {
 public:
  explicit Progress(bool enabled);
  /// Starts a step of `total` units named `label`; its time counts towards `stage` in summary()
  /// (the label when empty).
  void begin(const std::string& label, int64_t total, const std::string& stage = "");
  /// Records `n` more units done; redraws at most a few times per second.
  void advance(int64_t n);
  /// Finishes the current step with a final line.
  void end();
  /// Prints one line with the wall time of each stage so far, stages in first-seen order, so a
  /// user sees where the time went (e.g. features vs scoring).
  void summary() const;
  /// Adds `seconds` measured inside a stage to the detail `name` (shown after the stages, e.g.
  /// the gradients vs projection split of featurization).
  void add_detail(const std::string& name, double seconds);
  /// Seconds per stage so far, in first-seen order.
  const std::vector<std::pair<std::string, double>>& stage_seconds() const { return stages_; }

 private:
  void draw(bool final);
  bool enabled_;
  bool tty_;
  std::string label_, stage_;
  std::vector<std::pair<std::string, double>> stages_, details_;
  int64_t total_ = 0, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace attrace::engine
