#pragma once
// SIGINT and SIGTERM stop attrace cleanly: the handler only records the signal; long loops call
// throw_if_interrupted() (Progress::advance does, for every batch and tile), the exception unwinds
// through the RAII owners of partial outputs (staging directories, temporary files), and the CLI
// exits 128 + signal (130 for SIGINT, 143 for SIGTERM). A feature store keeps what was durably
// written and resumes on the next run.
#include <attrace/error.hpp>

#include <csignal>
#include <string>

namespace attrace {

/// Thrown at the next check after SIGINT or SIGTERM arrived.
class Interrupted : public Error {
 public:
  explicit Interrupted(int sig)
      : Error(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal") +
              "; partial output removed"),
        signal_(sig) {}
  /// The signal that stopped the run.
  int signal_number() const { return signal_; }

 private:
  int signal_;
};

namespace detail {
inline volatile std::sig_atomic_t& pending_signal() {
  static volatile std::sig_atomic_t s = 0;
  return s;
}
// The first signal is recorded; a second one gets the default action (stop at once), so a user
// is never stuck behind a loop that does not poll.
inline void record_signal(int sig) {
  if (pending_signal() != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  pending_signal() = sig;
}
}  // namespace detail

/// Routes SIGINT and SIGTERM to the flag (call once, before a long computation that polls).
inline void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = detail::record_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

/// Throws Interrupted if a stop signal arrived since the program started.
inline void throw_if_interrupted() {
  const int sig = detail::pending_signal();
  if (sig != 0) throw Interrupted(sig);
}

}  // namespace attrace
