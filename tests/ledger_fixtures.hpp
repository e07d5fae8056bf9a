#pragma once
// Report directories and an anvil process for the ledger tests.
#include "test_util.hpp"

#include <attrace/connectors/hash.hpp>
#include <attrace/ledger/ledger.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <tuple>
#include <vector>

namespace attrace::test {

/// A minimal output directory as `attrace attribute` writes it (report hash in the manifest).
inline void write_report(const std::string& dir, const std::vector<std::tuple<std::string, std::string, double>>& tranches) {
  std::filesystem::create_directories(dir);
  nlohmann::json r;
  r["format"] = "attrace.report/1";
  r["tranches"] = nlohmann::json::array();
  for (const auto& [id, account, share] : tranches) r["tranches"].push_back({{"id", id}, {"account", account}, {"share", share}});
  const std::string bytes = r.dump(2);
  write_text(dir + "/report.json", bytes);
  write_text(dir + "/manifest.json",
             nlohmann::json{{"format", "attrace.manifest/1"}, {"outputs", {{"report.json", connectors::sha256_hex(bytes)}}}}.dump());
}

/// The refusal `fn` raises (a test failure if it raises none).
template <class F>
ledger::Refusal refusal_of(F fn) {
  try {
    fn();
  } catch (const ledger::LedgerRefusal& r) {
    return r.refusal();
  }
  ADD_FAILURE() << "not refused";
  return ledger::Refusal::unauthorized;
}

/// The folder with the contract, its npm packages and tools.
inline std::string contracts_dir() {
#ifdef ATTRACE_CONTRACTS_DIR
  return ATTRACE_CONTRACTS_DIR;
#else
  return "";
#endif
}

/// The AttributionLedger artifact that the forge_build ctest fixture writes.
inline std::string contract_artifact() {
#ifdef ATTRACE_CONTRACT_ARTIFACT
  return ATTRACE_CONTRACT_ARTIFACT;
#else
  return "";
#endif
}

/// A TCP port nobody listens on right now.
inline int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

/// anvil from npm, on 127.0.0.1 and a free port, stopped by PID.
class Anvil {
 public:
  explicit Anvil(std::vector<std::string> extra = {}, int port = 0) : port_(port ? port : free_port()) {
    const std::string bin = contracts_dir() + "/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<std::string> args = {bin, "--host", "127.0.0.1", "--port", std::to_string(port_), "--silent"};
      args.insert(args.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
  }
  Anvil(const Anvil&) = delete;
  Anvil& operator=(const Anvil&) = delete;
  ~Anvil() { stop(); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  /// SIGTERM (anvil dumps --state on it) and wait.
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int st = 0;
      ::waitpid(pid_, &st, 0);
      pid_ = -1;
    }
  }

 private:
  int port_;
  pid_t pid_ = -1;
};

/// Anvil's first two well-known development accounts.
inline const char* kAnvilKey0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
inline const char* kAnvilKey1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

}  // namespace attrace::test
