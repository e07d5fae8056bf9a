#pragma once
// The embedded ledger: a local SQLite database (WAL, synchronous=FULL) enforcing the contract's
// rules, keeping the full history (every commitment, dispute, resolution and claim). Every
// operation is one transaction: a process killed mid-write leaves the database as it was.
#include <attrace/ledger/ledger.hpp>

#include <functional>
#include <memory>

namespace attrace::ledger {

/// Settings fixed when the database is created.
struct EmbeddedOptions {
  int64_t challenge_period = 3 * 24 * 3600;  ///< seconds between commit and finality
  std::string arbiter = "local";             ///< identity allowed to resolve disputes
  std::function<int64_t()> clock;            ///< unix seconds; system time when empty
  /// Called after each leaf row is written inside the commit transaction (tests use it to kill
  /// the process mid-write).
  std::function<void(size_t)> on_leaf_written;
};

/// Opens (creating if needed) an embedded ledger database.
std::unique_ptr<Ledger> open_embedded_ledger(const std::string& path, const EmbeddedOptions& options,
                                             const std::string& actor = "local");

}  // namespace attrace::ledger
