#pragma once
// An epoch commitment built from an attribution output directory: leaves (quantized scores and
// exact reward split), the Merkle tree, the canonical epoch manifest and its keccak-256 hash.
#include <attrace/ledger/merkle.hpp>
#include <attrace/ledger/types.hpp>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace attrace::ledger {

/// One tranche's leaf with the tranche id string it was hashed from.
struct EpochLeaf {
  std::string tranche;  ///< tranche id as in the dataset
  Leaf leaf;
  Bytes32 hash{};
};

/// Everything a commit needs and an auditor can rebuild.
struct EpochCommitment {
  uint64_t epoch = 0;
  U256 pool = 0;
  std::vector<EpochLeaf> leaves;  ///< in the report's tranche order
  Bytes32 root{};
  std::string manifest;           ///< canonical JSON bytes
  Bytes32 manifest_hash{};        ///< keccak256(manifest)

  /// Proof of leaf `i`.
  std::vector<Bytes32> proof(size_t i) const;
  /// Index of the leaf for `account` (and optionally tranche id); InputError if none/ambiguous.
  size_t find(const Address& account, const std::string& tranche = "") const;
};

/// Reads REPORT_DIR/report.json and manifest.json, checks every output the manifest pins
/// (`outputs`: report.json, attribution.csv, scores.h5, ...) against its sha256, quantizes shares,
/// splits `pool`, builds leaves, tree and the epoch manifest. InputError on a missing or changed
/// pinned output (naming the file and both hashes), a malformed report, pool == 0, all-zero
/// scores or a duplicate (epoch, tranche, account).
EpochCommitment build_epoch(const std::string& report_dir, uint64_t epoch, const U256& pool);

/// Rebuilds a commitment from an epoch manifest (as stored by a ledger or written next to the
/// report), re-deriving every leaf hash and the root; InputError if it is inconsistent.
EpochCommitment load_epoch_manifest(const std::string& manifest_bytes, const std::string& what);

/// Canonical JSON (keys sorted, no whitespace, UTF-8).
std::string canonical_json(const nlohmann::json& j);

}  // namespace attrace::ledger
