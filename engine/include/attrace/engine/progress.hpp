#pragma once
// Progress lines on stderr for long steps (examples/s, ETA). Wall-clock time is used only for
// this display, never in any output file.
#include <chrono>
#include <cstdint>
#include <string>

namespace attrace::engine {

/// A progress indicator for one step at a time; silent when disabled (--quiet).
class Progress {
 public:
  explicit Progress(bool enabled);
  /// Starts a step of `total` units named `label`.
  void begin(const std::string& label, int64_t total);
  /// Records `n` more units done; redraws at most a few times per second.
  void advance(int64_t n);
  /// Finishes the current step with a final line.
  void end();

 private:
  void draw(bool final);
  bool enabled_;
  bool tty_;
  std::string label_;
  int64_t total_ = 0, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace attrace::engine
