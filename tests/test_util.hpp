#pragma once
// Helpers shared by the tests: fixture locations, temporary directories, file I/O.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

namespace attrace::test {

/// Directory written by tests/fixtures/make_fixtures.py (a ctest fixture); ATTRACE_FIXTURES
/// overrides the build's default.
inline std::string fixtures() {
  if (const char* d = std::getenv("ATTRACE_FIXTURES")) return d;
#ifdef ATTRACE_FIXTURE_DIR
  return ATTRACE_FIXTURE_DIR;
#else
  return "";
#endif
}

/// The attrace binary under test; ATTRACE_BIN overrides the build's default.
inline std::string attrace_bin() {
  if (const char* b = std::getenv("ATTRACE_BIN")) return b;
#ifdef ATTRACE_BIN_PATH
  return ATTRACE_BIN_PATH;
#else
  return "";
#endif
}
inline std::string fixture(const std::string& name) { return fixtures() + "/" + name; }

/// Skips nothing: a missing fixture directory is a failure of the test set-up, reported loudly.
#define ATTRACE_REQUIRE_FIXTURES()                                                                  \
  do {                                                                                              \
    ASSERT_FALSE(::attrace::test::fixtures().empty()) << "fixture directory unknown (set ATTRACE_FIXTURES)"; \
    ASSERT_TRUE(std::filesystem::exists(::attrace::test::fixture("mlp_run.toml")))                  \
        << "fixtures missing in " << ::attrace::test::fixtures();                                   \
  } while (0)

/// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("attrace-") + (info ? info->name() : "test") + "-" +
                       std::to_string(::getpid()) + "-" + std::to_string(counter++);
    for (char& c : name)
      if (c == '/') c = '_';
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string operator/(const std::string& f) const { return (path_ / f).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}
inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace attrace::test

#include <sys/wait.h>

#include <cstdio>

namespace attrace::test {

/// Exit code and combined stdout+stderr of a shell command.
struct CommandResult {
  int code = -1;    ///< exit status; -1 when killed by a signal
  std::string out;  ///< stdout and stderr together
};

/// Runs `command` through the shell (stderr joined to stdout).
inline CommandResult run_shell(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

/// Runs the attrace binary under test with `args` (a shell-quoted argument string).
inline CommandResult run_attrace(const std::string& args) {
  const std::string bin = attrace_bin();
  EXPECT_FALSE(bin.empty()) << "attrace binary unknown (set ATTRACE_BIN)";
  if (bin.empty()) return {};
  return run_shell(bin + " " + args);
}

}  // namespace attrace::test
