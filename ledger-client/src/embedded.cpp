#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/merkle.hpp>
#include <attrace/ledger/registry.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <algorithm>
#include <map>
#include <utility>
#include <vector>

namespace attrace::ledger {

std::string refusal_name(Refusal r) {
  switch (r) {
    case Refusal::epoch_exists: return "EpochExists";
    case Refusal::unknown_epoch: return "UnknownEpoch";
    case Refusal::not_final: return "NotFinal";
    case Refusal::window_closed: return "ChallengeClosed";
    case Refusal::disputed: return "Disputed";
    case Refusal::not_disputed: return "NotDisputed";
    case Refusal::cancelled: return "Cancelled";
    case Refusal::already_claimed: return "AlreadyClaimed";
    case Refusal::invalid_proof: return "InvalidProof";
    case Refusal::over_budget: return "ExceedsTotal";
    case Refusal::unauthorized: return "Unauthorized";
    case Refusal::tranche_exists: return "TrancheExists";
  }
  return "Refused";
}

namespace {

/// The sqlite member of the check-macro family: a success code passes; otherwise the connection
/// throws, naming its file and choosing the error kind.
#define ATTRACE_SQLITE_CHECK(conn, rc, what)                                                     \
  do {                                                                                           \
    const int attrace_rc_ = (rc);                                                                \
    if (attrace_rc_ != SQLITE_OK && attrace_rc_ != SQLITE_DONE && attrace_rc_ != SQLITE_ROW)     \
      (conn).fail(attrace_rc_, what);                                                            \
  } while (0)

/// An open database and the path the user named it by, for every message about it.
class Connection {
 public:
  Connection(const std::string& path, int flags) : path_(path) {
    const int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
    if (rc != SQLITE_OK) {
      const std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw InputError(where() + ": cannot open (" + msg + ")");
    }
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, 10000);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() { sqlite3_close(db_); }
  sqlite3* get() const { return db_; }
  const std::string& path() const { return path_; }
  std::string where() const { return "ledger database '" + path_ + "'"; }

  /// Throws for a failed SQLite call: a damaged file is bad input (exit 2, "corrupt"), anything
  /// else (busy, I/O, full disk, read-only) a failure of the environment. Both name the file.
  [[noreturn]] void fail(int rc, const std::string& what) const {
    const std::string msg = std::string(sqlite3_errmsg(db_)) + " (" + what + ")";
    const int primary = rc & 0xff;
    if (primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB)
      throw InputError(where() + " is corrupt: " + msg + "; restore it from a backup");
    throw RuntimeFailure(where() + ": sqlite: " + msg);
  }

  /// Runs statements that return no rows.
  void exec(const char* sql) const {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
    sqlite3_free(err);  // sqlite3_errmsg still holds the same message
    ATTRACE_SQLITE_CHECK(*this, rc, sql);
  }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
};

/// Move-only prepared statement with typed binders and readers.
class Stmt {
 public:
  Stmt(const Connection& c, const char* sql) : c_(c) { ATTRACE_SQLITE_CHECK(c_, sqlite3_prepare_v2(c_.get(), sql, -1, &st_, nullptr), sql); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt& bind(int i, const std::string& v) {
    ATTRACE_SQLITE_CHECK(c_, sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT), "bind");
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    ATTRACE_SQLITE_CHECK(c_, sqlite3_bind_int64(st_, i, v), "bind");
    return *this;
  }
  Stmt& bind_blob(int i, const std::string& v) {
    ATTRACE_SQLITE_CHECK(c_, sqlite3_bind_blob(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT), "bind");
    return *this;
  }
  /// Steps once; true if a row is available.
  bool step() {
    const int rc = sqlite3_step(st_);
    ATTRACE_SQLITE_CHECK(c_, rc, sqlite3_sql(st_));
    return rc == SQLITE_ROW;
  }
  std::string text(int c) const {
    const auto* p = sqlite3_column_blob(st_, c);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(st_, c))) : std::string();
  }
  int64_t integer(int c) const { return sqlite3_column_int64(st_, c); }
  bool is_null(int c) const { return sqlite3_column_type(st_, c) == SQLITE_NULL; }

 private:
  const Connection& c_;
  sqlite3_stmt* st_ = nullptr;
};

/// BEGIN IMMEDIATE ... COMMIT; rolls back when destroyed uncommitted.
class Transaction {
 public:
  explicit Transaction(const Connection& c) : c_(c) { c_.exec("BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (!done_) sqlite3_exec(c_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    c_.exec("COMMIT");
    done_ = true;
  }

 private:
  const Connection& c_;
  bool done_ = false;
};

// Added by schema 2, both to new ledgers and by the 1 -> 2 migration.
constexpr const char* kRegistrySchema = R"(
CREATE TABLE registrations(
  seq INTEGER PRIMARY KEY, tranche TEXT NOT NULL UNIQUE, tranche_id TEXT NOT NULL, account TEXT NOT NULL,
  license TEXT NOT NULL, content_root TEXT NOT NULL, example_count INTEGER NOT NULL, registered_at INTEGER NOT NULL,
  registrant TEXT NOT NULL, digests BLOB NOT NULL);
CREATE INDEX registrations_by_content ON registrations(content_root);
)";

constexpr const char* kSchema = R"(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE commitments(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  epoch TEXT NOT NULL, root TEXT NOT NULL, manifest_hash TEXT NOT NULL, total_reward TEXT NOT NULL,
  claimed TEXT NOT NULL DEFAULT '0', uri TEXT NOT NULL, manifest BLOB NOT NULL,
  committed_at INTEGER NOT NULL, challenge_ends INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('committed', 'disputed', 'cancelled')), submitter TEXT NOT NULL,
  revision INTEGER NOT NULL DEFAULT 1);
CREATE UNIQUE INDEX one_live_commitment_per_epoch ON commitments(epoch) WHERE state != 'cancelled';
CREATE TABLE leaves(
  commitment INTEGER NOT NULL REFERENCES commitments(id), tranche TEXT NOT NULL, tranche_id TEXT NOT NULL,
  account TEXT NOT NULL, score TEXT NOT NULL, amount TEXT NOT NULL, leaf TEXT NOT NULL,
  claimed_at INTEGER, claimed_by TEXT, PRIMARY KEY (commitment, tranche_id, account));
CREATE TABLE balances(account TEXT PRIMARY KEY, amount TEXT NOT NULL);
CREATE TABLE history(
  id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL,
  epoch TEXT, detail TEXT NOT NULL);
)";  // + kRegistrySchema: schema 2 adds registrations and the revision column above

// Every table with every column the ledger reads or writes: a file that cannot answer these is
// not an attrace ledger (of this schema version).
constexpr std::pair<const char*, const char*> kTables[] = {
    {"meta", "SELECT key, value FROM meta"},
    {"commitments",
     "SELECT id, epoch, root, manifest_hash, total_reward, claimed, uri, manifest, committed_at, challenge_ends, state,"
     " submitter, revision FROM commitments"},
    {"leaves", "SELECT commitment, tranche, tranche_id, account, score, amount, leaf, claimed_at, claimed_by FROM leaves"},
    {"balances", "SELECT account, amount FROM balances"},
    {"history", "SELECT id, time, actor, event, epoch, detail FROM history"},
    {"registrations",
     "SELECT seq, tranche, tranche_id, account, license, content_root, example_count, registered_at, registrant, digests"
     " FROM registrations"},
};

/// What the `meta` table fixes for the life of a ledger.
struct Stored {
  int64_t challenge_period = 0;
  std::string arbiter;
};

[[noreturn]] void file_error(const std::string& path, const std::string& what) {
  throw InputError("ledger database '" + path + "'" + what);
}

// Checks made before SQLite sees the file: SQLite takes a zero-length file for a new, empty
// database and would block on a FIFO, so such files must never reach it.
void check_ledger_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT)
      file_error(path, " does not exist (check the --db path; `attrace ledger init --db " + path +
                           "` creates a new, empty ledger)");
    file_error(path, std::string(": ") + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) file_error(path, " is a directory, not a ledger file");
  if (!S_ISREG(st.st_mode)) file_error(path, " is not a regular file");
  if (st.st_size == 0) file_error(path, " is empty (0 bytes), not an attrace ledger; restore it from a backup");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) file_error(path, std::string(": cannot read (") + std::strerror(errno) + ")");
  char header[16] = {};
  const ssize_t n = ::read(fd, header, sizeof header);
  ::close(fd);
  static const char kMagic[16] = {'S', 'Q', 'L', 'i', 't', 'e', ' ', 'f', 'o', 'r', 'm', 'a', 't', ' ', '3', '\0'};
  if (n != 16 || std::memcmp(header, kMagic, 16) != 0)
    file_error(path, " is not an attrace ledger (not an SQLite database, or its header is damaged)");
}

// What a file's meta table says, read before the other tables are checked: an older schema is
// named as such (with the command that upgrades it) instead of as "not an attrace ledger".
std::map<std::string, std::string> read_meta(const Connection& c) {
  {
    sqlite3_stmt* st = nullptr;
    const int rc = sqlite3_prepare_v2(c.get(), "SELECT key, value FROM meta", -1, &st, nullptr);
    sqlite3_finalize(st);
    if ((rc & 0xff) == SQLITE_ERROR)
      throw InputError(c.where() + " is not an attrace ledger (table 'meta' is missing or incomplete: " +
                       sqlite3_errmsg(c.get()) + ")");
    ATTRACE_SQLITE_CHECK(c, rc, "SELECT key, value FROM meta");
  }
  std::map<std::string, std::string> meta;
  Stmt q(c, "SELECT key, value FROM meta");
  while (q.step()) meta[q.text(0)] = q.text(1);
  if (!meta.count("schema")) throw InputError(c.where() + " is not an attrace ledger (no schema version in its meta table)");
  return meta;
}

// Opens an existing ledger and proves it is one, intact, before anything reads or writes it.
// With `schema_out` a schema-1 ledger is accepted (for the migration) and its version returned.
std::unique_ptr<Connection> open_checked(const std::string& path, Stored* stored, std::string* schema_out = nullptr) {
  check_ledger_file(path);
  auto c = std::make_unique<Connection>(path, SQLITE_OPEN_READWRITE);  // never SQLITE_OPEN_CREATE
  // quick_check reads every page and checks the b-tree structure (not index contents): garbage
  // written into the file is found here instead of answering later with plausible rows.
  std::vector<std::string> problems;
  {
    Stmt q(*c, "PRAGMA quick_check(5)");
    while (q.step()) problems.push_back(q.text(0));
  }
  if (problems.size() != 1 || problems[0] != "ok") {
    std::string list;
    for (const auto& p : problems) list += (list.empty() ? "" : "; ") + p;
    throw InputError(c->where() + " is corrupt (PRAGMA quick_check: " + list + "); restore it from a backup");
  }
  auto meta = read_meta(*c);
  const std::string schema = meta["schema"];
  const bool old = schema == kEmbeddedSchemaVersionV1;
  if (old && !schema_out)
    throw InputError(c->where() + " has schema version 1 (written by an older attrace); run `attrace ledger migrate --db " + path +
                     "` once to upgrade it to version " + kEmbeddedSchemaVersion +
                     " (adds tranche registrations and epoch revisions; commitments, claims and history are kept)");
  ATTRACE_CHECK(old || schema == kEmbeddedSchemaVersion, InputError,
                c->where() + ": schema version '" + schema + "' is not supported (this attrace reads version " +
                    kEmbeddedSchemaVersion + ")");
  for (const auto& [table, sql] : kTables) {
    std::string q = sql;
    if (old && std::string(table) == "registrations") continue;
    if (old && std::string(table) == "commitments") q.replace(q.find(", revision"), 10, "");
    sqlite3_stmt* st = nullptr;
    const int rc = sqlite3_prepare_v2(c->get(), q.c_str(), -1, &st, nullptr);
    sqlite3_finalize(st);
    if ((rc & 0xff) == SQLITE_ERROR)  // no such table / column
      throw InputError(c->where() + " is not an attrace ledger (table '" + table + "' is missing or incomplete: " +
                       sqlite3_errmsg(c->get()) + ")");
    ATTRACE_SQLITE_CHECK(*c, rc, sql);
  }
  const std::string period = meta.count("challenge_period") ? meta["challenge_period"] : "";
  const bool digits = !period.empty() && period.size() <= 18 && period.find_first_not_of("0123456789") == std::string::npos;
  ATTRACE_CHECK(digits, InputError, c->where() + ": meta.challenge_period '" + period + "' is not a number of seconds");
  stored->challenge_period = std::stoll(period);
  stored->arbiter = meta.count("arbiter") ? meta["arbiter"] : "";
  ATTRACE_CHECK(!stored->arbiter.empty(), InputError, c->where() + ": meta.arbiter is missing");
  c->exec("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
  if (schema_out) *schema_out = schema;
  return c;
}

class EmbeddedLedger final : public Ledger {
 public:
  EmbeddedLedger(std::unique_ptr<Connection> conn, const Stored& stored, EmbeddedOptions opts, std::string actor)
      : opts_(std::move(opts)),
        actor_(std::move(actor)),
        conn_(std::move(conn)),
        period_(stored.challenge_period),
        arbiter_(stored.arbiter) {}

  std::string kind() const override { return "embedded"; }

  CommitResult commit(const EpochCommitment& c, const std::string& uri) override {
    const std::string epoch = std::to_string(c.epoch);
    Transaction tx(*conn_);
    CommitResult r;
    const EpochStatus live = load(c.epoch);
    if (live.exists && live.state != "cancelled") {
      if (live.root == c.root && live.manifest_hash == c.manifest_hash && live.total_reward == c.pool) {
        r.already_committed = true;
        r.status = live;
        return r;
      }
      throw LedgerRefusal(Refusal::epoch_exists, "epoch " + epoch + " already has root " + to_hex(live.root) +
                                                     " (dispute and cancel it before committing another)");
    }
    const int64_t t = now();
    // Revision n+1 replaces the cancelled revision n (only a cancelled epoch is committed again).
    const int64_t revision = live.exists ? live.revision + 1 : 1;
    Stmt ins(*conn_,
             "INSERT INTO commitments(epoch, root, manifest_hash, total_reward, uri, manifest, committed_at, challenge_ends,"
             " state, submitter, revision) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'committed', ?9, ?10)");
    ins.bind(1, epoch).bind(2, to_hex(c.root)).bind(3, to_hex(c.manifest_hash)).bind(4, to_decimal(c.pool)).bind(5, uri);
    ins.bind_blob(6, c.manifest).bind(7, t).bind(8, t + period_).bind(9, actor_).bind(10, revision).step();
    const int64_t id = sqlite3_last_insert_rowid(conn_->get());
    for (size_t k = 0; k < c.leaves.size(); ++k) {
      const auto& l = c.leaves[k];
      Stmt one(*conn_,
               "INSERT INTO leaves(commitment, tranche, tranche_id, account, score, amount, leaf) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
      one.bind(1, id).bind(2, l.tranche).bind(3, to_hex(l.leaf.tranche_id)).bind(4, to_hex(l.leaf.account));
      one.bind(5, to_decimal(l.leaf.score)).bind(6, to_decimal(l.leaf.amount)).bind(7, to_hex(l.hash)).step();
      if (opts_.on_leaf_written) opts_.on_leaf_written(k);
    }
    record(t, "EpochCommitted", epoch,
           "root=" + to_hex(c.root) + " manifestHash=" + to_hex(c.manifest_hash) + " totalReward=" + to_decimal(c.pool) +
               " challengeEnds=" + std::to_string(t + period_) + " uri=" + uri + " revision=" + std::to_string(revision));
    tx.commit();
    r.status = load(c.epoch);
    return r;
  }

  EpochStatus status(uint64_t epoch) override {
    const EpochStatus s = load(epoch);
    if (s.exists) check_against_manifest(s);
    return s;
  }

  std::string manifest(uint64_t epoch) override {
    Stmt q(*conn_, "SELECT manifest FROM commitments WHERE epoch = ?1 ORDER BY id DESC LIMIT 1");
    q.bind(1, std::to_string(epoch));
    return q.step() ? q.text(0) : std::string();
  }

  std::string dispute(uint64_t epoch, const Bytes32& reason) override {
    Transaction tx(*conn_);
    const EpochStatus s = live_or_throw(epoch);
    const int64_t t = now();
    if (s.state == "disputed") throw LedgerRefusal(Refusal::disputed, "epoch " + std::to_string(epoch) + " is already disputed");
    if (t >= s.challenge_ends)
      throw LedgerRefusal(Refusal::window_closed, "epoch " + std::to_string(epoch) + ": challenge window ended at " +
                                                      std::to_string(s.challenge_ends));
    set_state(epoch, "disputed");
    record(t, "EpochDisputed", std::to_string(epoch), "reasonHash=" + to_hex(reason));
    tx.commit();
    return "";
  }

  std::string resolve(uint64_t epoch, bool upheld) override {
    Transaction tx(*conn_);
    if (actor_ != arbiter_) throw LedgerRefusal(Refusal::unauthorized, "only the arbiter ('" + arbiter_ + "') may resolve disputes");
    const EpochStatus s = live_or_throw(epoch);
    if (s.state != "disputed") throw LedgerRefusal(Refusal::not_disputed, "epoch " + std::to_string(epoch) + " is not disputed");
    set_state(epoch, upheld ? "cancelled" : "committed");
    record(now(), "EpochResolved", std::to_string(epoch), upheld ? "upheld=true (epoch cancelled)" : "upheld=false");
    tx.commit();
    return "";
  }

  std::string claim(const Leaf& leaf, const std::vector<Bytes32>& proof) override {
    Transaction tx(*conn_);
    const std::string epoch = std::to_string(leaf.epoch);
    const EpochStatus s = live_or_throw(leaf.epoch);
    const int64_t t = now();
    if (s.state == "disputed") throw LedgerRefusal(Refusal::disputed, "epoch " + epoch + " is frozen by a dispute");
    if (t < s.challenge_ends)
      throw LedgerRefusal(Refusal::not_final, "epoch " + epoch + " is final at " + std::to_string(s.challenge_ends) + " (now " +
                                                  std::to_string(t) + ")");
    const Bytes32 h = leaf_hash(leaf);
    if (!verify_proof(proof, s.root, h)) throw LedgerRefusal(Refusal::invalid_proof, "proof does not lead to the root of epoch " + epoch);
    Stmt q(*conn_, "SELECT l.claimed_at FROM leaves l JOIN commitments c ON c.id = l.commitment"
                " WHERE c.epoch = ?1 AND c.state != 'cancelled' AND l.leaf = ?2");
    q.bind(1, epoch).bind(2, to_hex(h));
    ATTRACE_CHECK(q.step(), InputError,
                  conn_->where() + " is inconsistent: leaf " + to_hex(h) + " of epoch " + epoch +
                      " has a valid proof but no row in the leaves table");
    if (!q.is_null(0)) throw LedgerRefusal(Refusal::already_claimed, "leaf " + to_hex(h) + " of epoch " + epoch + " was claimed");
    const U256 total = s.claimed + leaf.amount;
    if (total > s.total_reward) throw LedgerRefusal(Refusal::over_budget, "claims would exceed the epoch's total reward");
    Stmt up(*conn_, "UPDATE leaves SET claimed_at = ?1, claimed_by = ?2 WHERE leaf = ?3 AND commitment ="
                 " (SELECT id FROM commitments WHERE epoch = ?4 AND state != 'cancelled')");
    up.bind(1, t).bind(2, actor_).bind(3, to_hex(h)).bind(4, epoch).step();
    Stmt uc(*conn_, "UPDATE commitments SET claimed = ?1 WHERE epoch = ?2 AND state != 'cancelled'");
    uc.bind(1, to_decimal(total)).bind(2, epoch).step();
    const std::string account = to_hex(leaf.account);
    Stmt bal(*conn_, "SELECT amount FROM balances WHERE account = ?1");
    bal.bind(1, account);
    const U256 before = bal.step() ? u256_from_decimal(bal.text(0), "balance") : U256(0);
    Stmt setb(*conn_, "INSERT INTO balances(account, amount) VALUES (?1, ?2) ON CONFLICT(account) DO UPDATE SET amount = ?2");
    setb.bind(1, account).bind(2, to_decimal(before + leaf.amount)).step();
    record(t, "Claimed", epoch,
           "trancheId=" + to_hex(leaf.tranche_id) + " account=" + account + " score=" + to_decimal(leaf.score) +
               " amount=" + to_decimal(leaf.amount));
    tx.commit();
    return "";
  }

  int64_t current_time() override { return now(); }
  std::string source() const override { return "embedded:" + std::filesystem::absolute(conn_->path()).string(); }

  std::vector<EpochStatus> epochs() override {
    std::vector<uint64_t> numbers;
    {
      Stmt q(*conn_, "SELECT DISTINCT epoch FROM commitments");
      while (q.step()) {
        const U256 e = u256_from_decimal(q.text(0), conn_->where() + ": commitments.epoch");
        ATTRACE_CHECK(e <= U256(UINT64_MAX), InputError, conn_->where() + ": commitments.epoch " + q.text(0) + " exceeds uint64");
        numbers.push_back(static_cast<uint64_t>(e));
      }
    }
    std::sort(numbers.begin(), numbers.end());
    std::vector<EpochStatus> out;
    for (const uint64_t e : numbers) out.push_back(status(e));
    return out;
  }

  U256 balance_of(const Address& account) override {
    Stmt q(*conn_, "SELECT amount FROM balances WHERE account = ?1");
    q.bind(1, to_hex(account));
    return q.step() ? u256_from_decimal(q.text(0), conn_->where() + ": balance of " + to_hex(account)) : U256(0);
  }

  RegisterResult register_tranche(const TrancheRegistration& r) override {
    ATTRACE_CHECK(!r.tranche.empty(), InputError, "register: the tranche id is empty");
    ATTRACE_CHECK(r.example_count > 0 && r.digests.size() == r.example_count, InputError,
                  "register: tranche '" + r.tranche + "': " + std::to_string(r.digests.size()) + " example digests for " +
                      std::to_string(r.example_count) + " examples");
    ATTRACE_CHECK(content_root(r.digests) == r.content_root, InputError,
                  "register: tranche '" + r.tranche + "': the example digests do not hash to content root " + to_hex(r.content_root));
    Transaction tx(*conn_);
    RegisterResult out;
    for (const auto& have : registrations())
      if (have.tranche == r.tranche) {
        if (have.content_root == r.content_root && have.account == r.account) {
          out.already_registered = true;
          out.registration = have;
          return out;
        }
        throw LedgerRefusal(Refusal::tranche_exists,
                            "tranche '" + r.tranche + "' is registered (order " + std::to_string(have.order) + ") with content root " +
                                to_hex(have.content_root) + " for " + checksum_address(have.account) +
                                "; a tranche id is registered once: changed content needs a new tranche id");
      }
    Stmt next(*conn_, "SELECT COALESCE(MAX(seq), 0) + 1 FROM registrations");
    next.step();
    const int64_t seq = next.integer(0), t = now();
    std::string blob;
    blob.reserve(r.digests.size() * 32);
    for (const auto& d : r.digests) blob.append(reinterpret_cast<const char*>(d.data()), 32);
    Stmt ins(*conn_,
             "INSERT INTO registrations(seq, tranche, tranche_id, account, license, content_root, example_count, registered_at,"
             " registrant, digests) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
    ins.bind(1, seq).bind(2, r.tranche).bind(3, to_hex(keccak256(r.tranche))).bind(4, to_hex(r.account)).bind(5, r.license);
    ins.bind(6, to_hex(r.content_root)).bind(7, static_cast<int64_t>(r.example_count)).bind(8, t).bind(9, actor_);
    ins.bind_blob(10, blob).step();
    record(t, "TrancheRegistered", "",
           "tranche=" + r.tranche + " trancheId=" + to_hex(keccak256(r.tranche)) + " account=" + to_hex(r.account) +
               " contentRoot=" + to_hex(r.content_root) + " examples=" + std::to_string(r.example_count) +
               " order=" + std::to_string(seq) + " license=" + r.license);
    tx.commit();
    for (const auto& have : registrations())
      if (have.tranche == r.tranche) out.registration = have;
    return out;
  }

  std::vector<Registration> registrations() override {
    Stmt q(*conn_,
           "SELECT seq, tranche, tranche_id, account, license, content_root, example_count, registered_at, registrant"
           " FROM registrations ORDER BY seq");
    std::vector<Registration> out;
    while (q.step()) {
      Registration r;
      const std::string where = conn_->where() + ": registration " + std::to_string(q.integer(0)) + " ";
      r.order = static_cast<uint64_t>(q.integer(0));
      r.tranche = q.text(1);
      r.tranche_id = bytes32_from_hex(q.text(2), where + "tranche_id");
      r.account = address_from_hex(q.text(3), where + "account");
      r.license = q.text(4);
      r.content_root = bytes32_from_hex(q.text(5), where + "content_root");
      r.example_count = static_cast<uint64_t>(q.integer(6));
      r.registered_at = q.integer(7);
      r.registrant = q.text(8);
      out.push_back(std::move(r));
    }
    return out;
  }

  std::vector<Bytes32> registered_digests(const std::string& tranche) override {
    Stmt q(*conn_, "SELECT digests, content_root, example_count FROM registrations WHERE tranche = ?1");
    q.bind(1, tranche);
    if (!q.step()) return {};
    const std::string blob = q.text(0);
    const std::string where = conn_->where() + " is inconsistent: registration of tranche '" + tranche + "': ";
    ATTRACE_CHECK(blob.size() % 32 == 0 && blob.size() / 32 == static_cast<size_t>(q.integer(2)), InputError,
                  where + "the stored digests do not match its example count");
    std::vector<Bytes32> out(blob.size() / 32);
    for (size_t k = 0; k < out.size(); ++k) std::copy(blob.begin() + k * 32, blob.begin() + (k + 1) * 32, out[k].begin());
    ATTRACE_CHECK(content_root(out) == bytes32_from_hex(q.text(1), where + "content_root"), InputError,
                  where + "the stored digests do not hash to its content root");
    return out;
  }

  bool claimed(const Leaf& leaf) override {
    Stmt q(*conn_, "SELECT l.claimed_at FROM leaves l JOIN commitments c ON c.id = l.commitment"
                " WHERE c.epoch = ?1 AND c.state != 'cancelled' AND l.leaf = ?2");
    q.bind(1, std::to_string(leaf.epoch)).bind(2, to_hex(leaf_hash(leaf)));
    return q.step() && !q.is_null(0);
  }

 private:
  int64_t now() const { return opts_.clock ? opts_.clock() : static_cast<int64_t>(std::time(nullptr)); }

  // The newest commitment of an epoch (live if any, else the last cancelled one).
  EpochStatus load(uint64_t epoch) {
    Stmt q(*conn_,
           "SELECT root, manifest_hash, total_reward, claimed, committed_at, challenge_ends, state, uri, revision FROM commitments"
           " WHERE epoch = ?1 ORDER BY (state = 'cancelled'), id DESC LIMIT 1");
    q.bind(1, std::to_string(epoch));
    EpochStatus s;
    s.epoch = epoch;
    if (!q.step()) return s;
    s.exists = true;
    const std::string where = conn_->where() + ": epoch " + std::to_string(epoch) + " ";
    s.root = bytes32_from_hex(q.text(0), where + "root");
    s.manifest_hash = bytes32_from_hex(q.text(1), where + "manifest hash");
    s.total_reward = u256_from_decimal(q.text(2), where + "total reward");
    s.claimed = u256_from_decimal(q.text(3), where + "claimed total");
    s.committed_at = q.integer(4);
    s.challenge_ends = q.integer(5);
    s.state = q.text(6);
    s.uri = q.text(7);
    const int64_t revision = q.integer(8);
    ATTRACE_CHECK(revision >= 1 && revision <= int64_t{0xffffffff}, InputError, where + "revision " + std::to_string(revision) + " is not valid");
    s.revision = static_cast<uint32_t>(revision);
    return s;
  }

  // quick_check proves the file's structure, not its values: before `status` reports a root,
  // manifest hash and pool, they must agree with the stored manifest they were committed with.
  void check_against_manifest(const EpochStatus& s) {
    Stmt q(*conn_, "SELECT manifest FROM commitments WHERE epoch = ?1 ORDER BY (state = 'cancelled'), id DESC LIMIT 1");
    q.bind(1, std::to_string(s.epoch));
    const std::string bytes = q.step() ? q.text(0) : std::string();
    const std::string where = conn_->where() + " is inconsistent: epoch " + std::to_string(s.epoch) + ": ";
    ATTRACE_CHECK(keccak256(bytes) == s.manifest_hash, InputError, where + "the stored manifest does not hash to the recorded manifest hash");
    const auto m = nlohmann::json::parse(bytes, nullptr, false);
    const bool agree = m.is_object() && m.contains("root") && m.contains("pool") && m.at("root") == to_hex(s.root) &&
                       m.at("pool") == to_decimal(s.total_reward);
    ATTRACE_CHECK(agree,
                  InputError, where + "the recorded root or total reward differs from the stored manifest");
  }

  EpochStatus live_or_throw(uint64_t epoch) {
    const EpochStatus s = load(epoch);
    if (!s.exists) throw LedgerRefusal(Refusal::unknown_epoch, "epoch " + std::to_string(epoch) + " was never committed");
    if (s.state == "cancelled") throw LedgerRefusal(Refusal::cancelled, "epoch " + std::to_string(epoch) + " was cancelled");
    return s;
  }

  void set_state(uint64_t epoch, const char* state) {
    Stmt up(*conn_, "UPDATE commitments SET state = ?1 WHERE epoch = ?2 AND state != 'cancelled'");
    up.bind(1, std::string(state)).bind(2, std::to_string(epoch)).step();
  }

  void record(int64_t t, const char* event, const std::string& epoch, const std::string& detail) {
    Stmt h(*conn_, "INSERT INTO history(time, actor, event, epoch, detail) VALUES (?1, ?2, ?3, ?4, ?5)");
    h.bind(1, t).bind(2, actor_).bind(3, std::string(event)).bind(4, epoch).bind(5, detail).step();
  }

  EmbeddedOptions opts_;
  std::string actor_;
  std::unique_ptr<Connection> conn_;
  int64_t period_ = 0;
  std::string arbiter_;
};

}  // namespace

namespace {

// Removes files left by a create_embedded_ledger that died (".NAME.init-PID" of a dead PID).
void remove_stale_init_files(const std::filesystem::path& dir, const std::string& name) {
  const std::string prefix = "." + name + ".init-";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (f.compare(0, prefix.size(), prefix) != 0) continue;
    std::string pid = f.substr(prefix.size());
    for (const char* suffix : {"-wal", "-shm", "-journal"})
      if (pid.size() > std::strlen(suffix) && pid.compare(pid.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        pid.resize(pid.size() - std::strlen(suffix));
    if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH) std::filesystem::remove(e.path(), ec);
  }
}

void fsync_file(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  ATTRACE_CHECK(fd >= 0, RuntimeFailure, "cannot open '" + path + "' to flush it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  ATTRACE_CHECK(rc == 0, RuntimeFailure, "fsync of '" + path + "' failed: " + std::strerror(err));
}

// Moves `from` to `to` unless `to` exists (then false), atomically: a concurrent init or an
// existing file is never replaced.
bool move_no_replace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return true;
  if (errno == EEXIST) return false;
  ATTRACE_CHECK(errno == EINVAL || errno == ENOSYS || errno == ENOTSUP, RuntimeFailure,
                "cannot move '" + from + "' to '" + to + "': " + std::strerror(errno));
  // File systems without RENAME_NOREPLACE: link() also refuses an existing name.
  if (::link(from.c_str(), to.c_str()) != 0) {
    if (errno == EEXIST) return false;
    throw RuntimeFailure("cannot link '" + from + "' to '" + to + "': " + std::strerror(errno));
  }
  ::unlink(from.c_str());
  return true;
}

}  // namespace

void create_embedded_ledger(const std::string& path, const EmbeddedSettings& settings) {
  namespace fs = std::filesystem;
  ATTRACE_CHECK(settings.challenge_period >= 0, InputError,
                "challenge period: " + std::to_string(settings.challenge_period) + " s is negative");
  ATTRACE_CHECK(!settings.arbiter.empty(), InputError, "arbiter: must not be empty");
  const std::string exists = " already exists; a ledger is created once and keeps its settings (use it without `init`, or "
                             "choose a new --db path)";
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) file_error(path, exists);
  if (errno != ENOENT) file_error(path, std::string(": ") + std::strerror(errno));
  const fs::path p(path);
  const std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") file_error(path, ": not a file name");
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) file_error(path, ": directory '" + dir.string() + "' does not exist");
  remove_stale_init_files(dir, name);

  // Built under a hidden name and moved into place complete: a crash mid-init leaves no file at
  // `path` that would later look like a (damaged) ledger.
  const std::string tmp = (dir / ("." + name + ".init-" + std::to_string(::getpid()))).string();
  struct Cleanup {
    std::string tmp;
    void run() const {
      for (const char* suffix : {"", "-wal", "-shm", "-journal"}) ::unlink((tmp + suffix).c_str());
    }
    ~Cleanup() { run(); }
  } cleanup{tmp};
  cleanup.run();  // a file of an earlier process with the same PID
  {
    Connection c(tmp, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    c.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
    Transaction tx(c);
    c.exec(kSchema);
    c.exec(kRegistrySchema);
    Stmt ins(c, "INSERT INTO meta(key, value) VALUES ('schema', ?1), ('challenge_period', ?2), ('arbiter', ?3)");
    ins.bind(1, std::string(kEmbeddedSchemaVersion)).bind(2, std::to_string(settings.challenge_period)).bind(3, settings.arbiter).step();
    tx.commit();
  }  // the last connection closes: the WAL is checkpointed into the file and removed
  fsync_file(tmp, O_RDONLY);
  if (!move_no_replace(tmp, path)) file_error(path, exists);
  fsync_file(dir.string(), O_RDONLY | O_DIRECTORY);
}

std::unique_ptr<Ledger> open_embedded_ledger(const std::string& path, const EmbeddedOptions& options, const std::string& actor) {
  Stored stored;
  auto conn = open_checked(path, &stored);
  return std::make_unique<EmbeddedLedger>(std::move(conn), stored, options, actor);
}

std::string migrate_embedded_ledger(const std::string& path) {
  Stored stored;
  std::string schema;
  auto c = open_checked(path, &stored, &schema);
  if (schema == kEmbeddedSchemaVersion) return schema;
  Transaction tx(*c);
  // Revisions of existing commitments: 1, 2, ... per epoch in commit (id) order, as a schema-2
  // ledger would have numbered them.
  c->exec("ALTER TABLE commitments ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;"
          "UPDATE commitments SET revision = (SELECT COUNT(*) FROM commitments AS o WHERE o.epoch = commitments.epoch"
          " AND o.id <= commitments.id);");
  c->exec(kRegistrySchema);
  Stmt up(*c, "UPDATE meta SET value = ?1 WHERE key = 'schema'");
  up.bind(1, std::string(kEmbeddedSchemaVersion)).step();
  Stmt h(*c, "INSERT INTO history(time, actor, event, epoch, detail) VALUES (?1, 'attrace', 'SchemaMigrated', NULL, ?2)");
  h.bind(1, static_cast<int64_t>(std::time(nullptr))).bind(2, std::string("schema 1 -> ") + kEmbeddedSchemaVersion).step();
  tx.commit();
  return schema;
}

}  // namespace attrace::ledger
