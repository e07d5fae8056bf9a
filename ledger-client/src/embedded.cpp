#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/merkle.hpp>

#include <sqlite3.h>

#include <ctime>
#include <utility>

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
  }
  return "Refused";
}

namespace {

#define ATTRACE_SQLITE_CHECK(db, rc, what)                                                             \
  do {                                                                                                 \
    const int attrace_rc_ = (rc);                                                                      \
    ATTRACE_CHECK(attrace_rc_ == SQLITE_OK || attrace_rc_ == SQLITE_DONE || attrace_rc_ == SQLITE_ROW, \
                  RuntimeFailure, std::string("sqlite: ") + (what) + ": " + sqlite3_errmsg(db));     \
  } while (0)

/// Move-only prepared statement with typed binders and readers.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    ATTRACE_SQLITE_CHECK(db_, sqlite3_prepare_v2(db_, sql, -1, &st_, nullptr), sql);
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt& bind(int i, const std::string& v) {
    ATTRACE_SQLITE_CHECK(db_, sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT), "bind");
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    ATTRACE_SQLITE_CHECK(db_, sqlite3_bind_int64(st_, i, v), "bind");
    return *this;
  }
  Stmt& bind_blob(int i, const std::string& v) {
    ATTRACE_SQLITE_CHECK(db_, sqlite3_bind_blob(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT), "bind");
    return *this;
  }
  /// Steps once; true if a row is available.
  bool step() {
    const int rc = sqlite3_step(st_);
    ATTRACE_SQLITE_CHECK(db_, rc, sqlite3_sql(st_));
    return rc == SQLITE_ROW;
  }
  std::string text(int c) const {
    const auto* p = sqlite3_column_blob(st_, c);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(st_, c))) : std::string();
  }
  int64_t integer(int c) const { return sqlite3_column_int64(st_, c); }
  bool is_null(int c) const { return sqlite3_column_type(st_, c) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

void exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
  const std::string msg = err ? err : "";
  sqlite3_free(err);
  ATTRACE_CHECK(rc == SQLITE_OK, RuntimeFailure, std::string("sqlite: ") + msg);
}

/// BEGIN IMMEDIATE ... COMMIT; rolls back when destroyed uncommitted.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) { exec(db_, "BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    exec(db_, "COMMIT");
    done_ = true;
  }

 private:
  sqlite3* db_;
  bool done_ = false;
};

constexpr const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commitments(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  epoch TEXT NOT NULL, root TEXT NOT NULL, manifest_hash TEXT NOT NULL, total_reward TEXT NOT NULL,
  claimed TEXT NOT NULL DEFAULT '0', uri TEXT NOT NULL, manifest BLOB NOT NULL,
  committed_at INTEGER NOT NULL, challenge_ends INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('committed', 'disputed', 'cancelled')), submitter TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_commitment_per_epoch ON commitments(epoch) WHERE state != 'cancelled';
CREATE TABLE IF NOT EXISTS leaves(
  commitment INTEGER NOT NULL REFERENCES commitments(id), tranche TEXT NOT NULL, tranche_id TEXT NOT NULL,
  account TEXT NOT NULL, score TEXT NOT NULL, amount TEXT NOT NULL, leaf TEXT NOT NULL,
  claimed_at INTEGER, claimed_by TEXT, PRIMARY KEY (commitment, tranche_id, account));
CREATE TABLE IF NOT EXISTS balances(account TEXT PRIMARY KEY, amount TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history(
  id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL,
  epoch TEXT, detail TEXT NOT NULL);
)";

class EmbeddedLedger final : public Ledger {
 public:
  EmbeddedLedger(const std::string& path, EmbeddedOptions opts, std::string actor)
      : opts_(std::move(opts)), actor_(std::move(actor)) {
    const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    if (rc != SQLITE_OK) {
      const std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw InputError("ledger database '" + path + "': cannot open (" + msg + ")");
    }
    sqlite3_busy_timeout(db_, 10000);
    try {
      exec(db_, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
      Transaction tx(db_);
      exec(db_, kSchema);
      // Settings are fixed by whoever creates the database; later opens read them back.
      Stmt ins(db_, "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '1'), ('challenge_period', ?1), ('arbiter', ?2)");
      ins.bind(1, std::to_string(opts_.challenge_period)).bind(2, opts_.arbiter).step();
      tx.commit();
      Stmt q(db_, "SELECT key, value FROM meta");
      while (q.step()) {
        if (q.text(0) == "challenge_period") period_ = std::stoll(q.text(1));
        if (q.text(0) == "arbiter") arbiter_ = q.text(1);
      }
    } catch (...) {
      sqlite3_close(db_);
      db_ = nullptr;
      throw;
    }
  }
  ~EmbeddedLedger() override { sqlite3_close(db_); }

  std::string kind() const override { return "embedded"; }

  CommitResult commit(const EpochCommitment& c, const std::string& uri) override {
    const std::string epoch = std::to_string(c.epoch);
    Transaction tx(db_);
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
    Stmt ins(db_,
             "INSERT INTO commitments(epoch, root, manifest_hash, total_reward, uri, manifest, committed_at, challenge_ends,"
             " state, submitter) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'committed', ?9)");
    ins.bind(1, epoch).bind(2, to_hex(c.root)).bind(3, to_hex(c.manifest_hash)).bind(4, to_decimal(c.pool)).bind(5, uri);
    ins.bind_blob(6, c.manifest).bind(7, t).bind(8, t + period_).bind(9, actor_).step();
    const int64_t id = sqlite3_last_insert_rowid(db_);
    for (size_t k = 0; k < c.leaves.size(); ++k) {
      const auto& l = c.leaves[k];
      Stmt one(db_,
               "INSERT INTO leaves(commitment, tranche, tranche_id, account, score, amount, leaf) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
      one.bind(1, id).bind(2, l.tranche).bind(3, to_hex(l.leaf.tranche_id)).bind(4, to_hex(l.leaf.account));
      one.bind(5, to_decimal(l.leaf.score)).bind(6, to_decimal(l.leaf.amount)).bind(7, to_hex(l.hash)).step();
      if (opts_.on_leaf_written) opts_.on_leaf_written(k);
    }
    record(t, "EpochCommitted", epoch,
           "root=" + to_hex(c.root) + " manifestHash=" + to_hex(c.manifest_hash) + " totalReward=" + to_decimal(c.pool) +
               " challengeEnds=" + std::to_string(t + period_) + " uri=" + uri);
    tx.commit();
    r.status = load(c.epoch);
    return r;
  }

  EpochStatus status(uint64_t epoch) override { return load(epoch); }

  std::string manifest(uint64_t epoch) override {
    Stmt q(db_, "SELECT manifest FROM commitments WHERE epoch = ?1 ORDER BY id DESC LIMIT 1");
    q.bind(1, std::to_string(epoch));
    return q.step() ? q.text(0) : std::string();
  }

  std::string dispute(uint64_t epoch, const Bytes32& reason) override {
    Transaction tx(db_);
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
    Transaction tx(db_);
    if (actor_ != arbiter_) throw LedgerRefusal(Refusal::unauthorized, "only the arbiter ('" + arbiter_ + "') may resolve disputes");
    const EpochStatus s = live_or_throw(epoch);
    if (s.state != "disputed") throw LedgerRefusal(Refusal::not_disputed, "epoch " + std::to_string(epoch) + " is not disputed");
    set_state(epoch, upheld ? "cancelled" : "committed");
    record(now(), "EpochResolved", std::to_string(epoch), upheld ? "upheld=true (epoch cancelled)" : "upheld=false");
    tx.commit();
    return "";
  }

  std::string claim(const Leaf& leaf, const std::vector<Bytes32>& proof) override {
    Transaction tx(db_);
    const std::string epoch = std::to_string(leaf.epoch);
    const EpochStatus s = live_or_throw(leaf.epoch);
    const int64_t t = now();
    if (s.state == "disputed") throw LedgerRefusal(Refusal::disputed, "epoch " + epoch + " is frozen by a dispute");
    if (t < s.challenge_ends)
      throw LedgerRefusal(Refusal::not_final, "epoch " + epoch + " is final at " + std::to_string(s.challenge_ends) + " (now " +
                                                  std::to_string(t) + ")");
    const Bytes32 h = leaf_hash(leaf);
    if (!verify_proof(proof, s.root, h)) throw LedgerRefusal(Refusal::invalid_proof, "proof does not lead to the root of epoch " + epoch);
    Stmt q(db_, "SELECT l.claimed_at FROM leaves l JOIN commitments c ON c.id = l.commitment"
                " WHERE c.epoch = ?1 AND c.state != 'cancelled' AND l.leaf = ?2");
    q.bind(1, epoch).bind(2, to_hex(h));
    ATTRACE_CHECK(q.step(), RuntimeFailure, "ledger database: leaf with a valid proof is missing from the leaves table");
    if (!q.is_null(0)) throw LedgerRefusal(Refusal::already_claimed, "leaf " + to_hex(h) + " of epoch " + epoch + " was claimed");
    const U256 total = s.claimed + leaf.amount;
    if (total > s.total_reward) throw LedgerRefusal(Refusal::over_budget, "claims would exceed the epoch's total reward");
    Stmt up(db_, "UPDATE leaves SET claimed_at = ?1, claimed_by = ?2 WHERE leaf = ?3 AND commitment ="
                 " (SELECT id FROM commitments WHERE epoch = ?4 AND state != 'cancelled')");
    up.bind(1, t).bind(2, actor_).bind(3, to_hex(h)).bind(4, epoch).step();
    Stmt uc(db_, "UPDATE commitments SET claimed = ?1 WHERE epoch = ?2 AND state != 'cancelled'");
    uc.bind(1, to_decimal(total)).bind(2, epoch).step();
    const std::string account = to_hex(leaf.account);
    Stmt bal(db_, "SELECT amount FROM balances WHERE account = ?1");
    bal.bind(1, account);
    const U256 before = bal.step() ? u256_from_decimal(bal.text(0), "balance") : U256(0);
    Stmt setb(db_, "INSERT INTO balances(account, amount) VALUES (?1, ?2) ON CONFLICT(account) DO UPDATE SET amount = ?2");
    setb.bind(1, account).bind(2, to_decimal(before + leaf.amount)).step();
    record(t, "Claimed", epoch,
           "trancheId=" + to_hex(leaf.tranche_id) + " account=" + account + " score=" + to_decimal(leaf.score) +
               " amount=" + to_decimal(leaf.amount));
    tx.commit();
    return "";
  }

  bool claimed(const Leaf& leaf) override {
    Stmt q(db_, "SELECT l.claimed_at FROM leaves l JOIN commitments c ON c.id = l.commitment"
                " WHERE c.epoch = ?1 AND c.state != 'cancelled' AND l.leaf = ?2");
    q.bind(1, std::to_string(leaf.epoch)).bind(2, to_hex(leaf_hash(leaf)));
    return q.step() && !q.is_null(0);
  }

 private:
  int64_t now() const { return opts_.clock ? opts_.clock() : static_cast<int64_t>(std::time(nullptr)); }

  // The newest commitment of an epoch (live if any, else the last cancelled one).
  EpochStatus load(uint64_t epoch) {
    Stmt q(db_,
           "SELECT root, manifest_hash, total_reward, claimed, committed_at, challenge_ends, state, uri FROM commitments"
           " WHERE epoch = ?1 ORDER BY (state = 'cancelled'), id DESC LIMIT 1");
    q.bind(1, std::to_string(epoch));
    EpochStatus s;
    s.epoch = epoch;
    if (!q.step()) return s;
    s.exists = true;
    s.root = bytes32_from_hex(q.text(0), "ledger database root");
    s.manifest_hash = bytes32_from_hex(q.text(1), "ledger database manifest hash");
    s.total_reward = u256_from_decimal(q.text(2), "ledger database total");
    s.claimed = u256_from_decimal(q.text(3), "ledger database claimed");
    s.committed_at = q.integer(4);
    s.challenge_ends = q.integer(5);
    s.state = q.text(6);
    s.uri = q.text(7);
    return s;
  }

  EpochStatus live_or_throw(uint64_t epoch) {
    const EpochStatus s = load(epoch);
    if (!s.exists) throw LedgerRefusal(Refusal::unknown_epoch, "epoch " + std::to_string(epoch) + " was never committed");
    if (s.state == "cancelled") throw LedgerRefusal(Refusal::cancelled, "epoch " + std::to_string(epoch) + " was cancelled");
    return s;
  }

  void set_state(uint64_t epoch, const char* state) {
    Stmt up(db_, "UPDATE commitments SET state = ?1 WHERE epoch = ?2 AND state != 'cancelled'");
    up.bind(1, std::string(state)).bind(2, std::to_string(epoch)).step();
  }

  void record(int64_t t, const char* event, const std::string& epoch, const std::string& detail) {
    Stmt h(db_, "INSERT INTO history(time, actor, event, epoch, detail) VALUES (?1, ?2, ?3, ?4, ?5)");
    h.bind(1, t).bind(2, actor_).bind(3, std::string(event)).bind(4, epoch).bind(5, detail).step();
  }

  EmbeddedOptions opts_;
  std::string actor_;
  sqlite3* db_ = nullptr;
  int64_t period_ = 0;
  std::string arbiter_;
};

}  // namespace

std::unique_ptr<Ledger> open_embedded_ledger(const std::string& path, const EmbeddedOptions& options, const std::string& actor) {
  return std::make_unique<EmbeddedLedger>(path, options, actor);
}

}  // namespace attrace::ledger
