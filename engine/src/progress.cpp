#include <attrace/engine/progress.hpp>
#include <attrace/interrupt.hpp>

#include <unistd.h>

#include <cstdio>

namespace attrace::engine {

namespace {
void add_to(std::vector<std::pair<std::string, double>>& list, const std::string& name, double secs) {
  for (auto& [n, total] : list)
    if (n == name) {
      total += secs;
      return;
    }
  list.emplace_back(name, secs);
}
}  // namespace

Progress::Progress(bool enabled) : enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1) {}

void Progress::begin(const std::string& label, int64_t total, const std::string& stage) {
  label_ = label;
  stage_ = stage.empty() ? label : stage;
  total_ = total;
  done_ = 0;
  start_ = last_ = std::chrono::steady_clock::now();
}

void Progress::advance(int64_t n) {
  throw_if_interrupted();  // SIGINT/SIGTERM: stop at the next batch or tile (attrace/interrupt.hpp)
  done_ += n;
  const auto now = std::chrono::steady_clock::now();
  const auto gap = tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000);
  if (now - last_ >= gap) {
    last_ = now;
    draw(false);
  }
}

void Progress::end() {
  add_to(stages_, stage_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  draw(true);
}


void Progress::add_detail(const std::string& name, double seconds) { add_to(details_, name, seconds); }

void Progress::summary() const {
  if (!enabled_ || stages_.empty()) return;
  std::string line = "time by stage:";
  double all = 0;
  for (const auto& [name, secs] : stages_) all += secs;
  char buf[160];
  for (size_t k = 0; k < stages_.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%s %s %.2f s (%.0f%%)", k == 0 ? "" : ",", stages_[k].first.c_str(), stages_[k].second,
                  all > 0 ? 100.0 * stages_[k].second / all : 0.0);
    line += buf;
  }
  for (size_t k = 0; k < details_.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%s %s %.2f s", k == 0 ? "; within features:" : ",", details_[k].first.c_str(),
                  details_[k].second);
    line += buf;
  }
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void Progress::draw(bool final) {
  if (!enabled_) return;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? static_cast<double>(done_) / secs : 0.0;
  char eta[32] = "";
  if (!final && rate > 0 && total_ > done_)
    std::snprintf(eta, sizeof eta, ", ETA %.0fs", static_cast<double>(total_ - done_) / rate);
  std::fprintf(stderr, "%s%s: %lld/%lld (%.0f ex/s%s%s)%s", tty_ ? "\r\033[K" : "", label_.c_str(),
               static_cast<long long>(done_), static_cast<long long>(total_), rate, eta,
               final ? (", " + std::to_string(static_cast<int>(secs * 1000)) + " ms").c_str() : "",
               final || !tty_ ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace attrace::engine
