#pragma once
// One interface over the two ledger backends (embedded SQLite, EVM contract), with the rules of
// shared/specs/ledger.md ("Contract behaviour").
#include <attrace/error.hpp>
#include <attrace/ledger/epoch.hpp>
#include <attrace/ledger/registry.hpp>
#include <attrace/ledger/types.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace attrace::ledger {

/// Typed refusals, one per rule (the contract's custom errors carry the same names).
enum class Refusal {
  epoch_exists,     ///< EpochExists: committed and not cancelled
  unknown_epoch,    ///< UnknownEpoch
  not_final,        ///< NotFinal: challenge window still open
  window_closed,    ///< ChallengeClosed: dispute after challengeEnds
  disputed,         ///< Disputed: frozen by a dispute
  not_disputed,     ///< NotDisputed: resolve without a dispute
  cancelled,        ///< Cancelled
  already_claimed,  ///< AlreadyClaimed
  invalid_proof,    ///< InvalidProof
  over_budget,      ///< ExceedsTotal: total claimed would exceed totalReward
  unauthorized,     ///< Unauthorized: wrong submitter/arbiter
  tranche_exists,   ///< TrancheExists: the tranche id is registered with another root or account
};

/// Name of a refusal as the contract's custom error ("NotFinal", ...).
std::string refusal_name(Refusal r);

/// A ledger rule refused the operation (an input error: the request was not allowed).
class LedgerRefusal : public InputError {
 public:
  LedgerRefusal(Refusal r, const std::string& msg) : InputError(refusal_name(r) + ": " + msg), refusal_(r) {}
  Refusal refusal() const { return refusal_; }

 private:
  Refusal refusal_;
};

/// Epoch state as recorded by a ledger.
struct EpochStatus {
  bool exists = false;
  uint64_t epoch = 0;
  Bytes32 root{}, manifest_hash{};
  U256 total_reward = 0, claimed = 0;
  int64_t committed_at = 0, challenge_ends = 0;  ///< unix seconds (chain time for EVM)
  std::string state;  ///< "committed", "disputed", "cancelled"
  std::string uri;
  uint32_t revision = 0;  ///< 1 for the first commitment of the epoch, +1 for each one after a cancel
};

/// Result of a commit: the new commitment, or the identical one found already in place.
struct CommitResult {
  bool already_committed = false;  ///< idempotent re-run: same root and manifest hash on record
  EpochStatus status;
  std::string transaction;  ///< EVM transaction hash (empty for the embedded ledger)
};

/// The operations both backends offer.
class Ledger {
 public:
  virtual ~Ledger() = default;
  /// Backend name for output ("embedded", "evm").
  virtual std::string kind() const = 0;
  /// Commits an epoch (root, manifest hash, pool). Re-running the same commitment returns the
  /// existing one instead of committing twice; a different one for a live epoch is refused.
  virtual CommitResult commit(const EpochCommitment& c, const std::string& uri) = 0;
  /// State of an epoch (exists = false if never committed).
  virtual EpochStatus status(uint64_t epoch) = 0;
  /// The stored epoch manifest bytes (embedded), or "" when the backend keeps only the hash.
  virtual std::string manifest(uint64_t epoch) = 0;
  /// Disputes an epoch before its challenge window ends.
  virtual std::string dispute(uint64_t epoch, const Bytes32& reason_hash) = 0;
  /// Arbiter's decision: upheld cancels the epoch, rejected lets it continue.
  virtual std::string resolve(uint64_t epoch, bool upheld) = 0;
  /// Claims one leaf with its proof; pays leaf.account.
  virtual std::string claim(const Leaf& leaf, const std::vector<Bytes32>& proof) = 0;
  /// Whether a leaf of an epoch has been claimed.
  virtual bool claimed(const Leaf& leaf) = 0;

  /// The ledger's clock now (unix seconds): the embedded ledger's clock, or the latest block's time.
  virtual int64_t current_time() = 0;
  /// Where this ledger lives, for manifests: "embedded:/abs/path.db" or "evm:<chainId>:<contract>".
  virtual std::string source() const = 0;
  /// Every epoch ever committed (its live, or else latest, commitment), ascending by epoch.
  virtual std::vector<EpochStatus> epochs() = 0;
  /// Amount credited to `account` (embedded: sum of its claims; EVM: its native balance).
  virtual U256 balance_of(const Address& account) = 0;

  /// Registers a tranche by content. Idempotent: the same (tranche, content root, account) again
  /// returns the registration on record; the same tranche id with another root or account is
  /// refused (TrancheExists). The same content under another tranche id is recorded (and is
  /// visible through same_content_as).
  virtual RegisterResult register_tranche(const TrancheRegistration& r) = 0;
  /// Every registration, by order.
  virtual std::vector<Registration> registrations() = 0;
  /// The per-example digests registered for a tranche, in registration order (embedded keeps
  /// them; empty when the backend keeps only the root).
  virtual std::vector<Bytes32> registered_digests(const std::string& tranche) = 0;
};

}  // namespace attrace::ledger
