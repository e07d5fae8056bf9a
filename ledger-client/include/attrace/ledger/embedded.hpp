#pragma once
// The embedded ledger: a local SQLite database (WAL, synchronous=FULL) enforcing the contract's
// rules, keeping the full history (every commitment, dispute, resolution and claim). Every
// operation is one transaction: a process killed mid-write leaves the database as it was.
//
// A ledger file is made once, by create_embedded_ledger; opening never creates one, so a
// mistyped path is an error instead of a fresh, empty ledger that answers "not committed".
#include <attrace/ledger/ledger.hpp>

#include <functional>
#include <memory>

namespace attrace::ledger {

/// Settings fixed when the database is created (stored in its `meta` table).
struct EmbeddedSettings {
  int64_t challenge_period = 3 * 24 * 3600;  ///< seconds between commit and finality
  std::string arbiter = "local";             ///< identity allowed to resolve disputes
};

/// How a process uses an open ledger (not stored).
struct EmbeddedOptions {
  std::function<int64_t()> clock;  ///< unix seconds; system time when empty
  /// Called after each leaf row is written inside the commit transaction (tests use it to kill
  /// the process mid-write).
  std::function<void(size_t)> on_leaf_written;
};

/// The schema version this build writes and reads (`meta.schema`).
constexpr const char* kEmbeddedSchemaVersion = "2";
/// The previous schema (no registrations, no revisions): refused on open, upgraded by
/// migrate_embedded_ledger.
constexpr const char* kEmbeddedSchemaVersionV1 = "1";

/// Creates a new, empty embedded ledger at `path`. The file appears complete or not at all (built
/// under a hidden temporary name, then linked into place without replacing anything).
/// InputError if anything exists at `path`, its directory is missing or the settings are invalid.
void create_embedded_ledger(const std::string& path, const EmbeddedSettings& settings);

/// Opens an existing embedded ledger; never creates or modifies a file on open. InputError naming
/// the file if it does not exist, is not a regular file, is empty, is not an SQLite database,
/// fails `PRAGMA quick_check` or lacks attrace's tables and schema version.
std::unique_ptr<Ledger> open_embedded_ledger(const std::string& path, const EmbeddedOptions& options = {},
                                             const std::string& actor = "local");

/// Upgrades a schema-1 ledger to the current schema in one transaction (adds the registrations
/// table and the revision of every commitment, numbered per epoch by commit order); the file is
/// checked like open_embedded_ledger first. Returns the version found ("1": migrated; the current
/// version: nothing to do). InputError for anything that is not an intact attrace ledger.
std::string migrate_embedded_ledger(const std::string& path);

}  // namespace attrace::ledger
