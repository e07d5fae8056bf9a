#pragma once
// Leaves, tree and proofs exactly as OpenZeppelin's StandardMerkleTree builds them for
// (uint64 epoch, bytes32 trancheId, address account, uint256 score, uint256 amount).
#include <attrace/ledger/types.hpp>

#include <string>
#include <vector>

namespace attrace::ledger {

/// One claimable entry of an epoch.
struct Leaf {
  uint64_t epoch = 0;
  Bytes32 tranche_id{};  ///< keccak-256 of the tranche id string (UTF-8)
  Address account{};
  U256 score = 0;   ///< quantized share, scale 10^18
  U256 amount = 0;  ///< reward in the token's smallest unit
};

/// abi.encode(epoch, trancheId, account, score, amount): five 32-byte words.
Bytes abi_encode(const Leaf& leaf);
/// keccak256(keccak256(abi.encode(...))), the StandardMerkleTree leaf hash.
Bytes32 leaf_hash(const Leaf& leaf);
/// keccak256 of the sorted pair (the inner-node rule).
Bytes32 hash_pair(const Bytes32& a, const Bytes32& b);

/// A StandardMerkleTree over leaf hashes: sorted leaves, array of 2n-1 nodes, root at 0.
class MerkleTree {
 public:
  /// Builds the tree; InputError if `leaves` is empty.
  explicit MerkleTree(std::vector<Bytes32> leaf_hashes);
  /// The root.
  const Bytes32& root() const { return nodes_.front(); }
  /// Proof (siblings from the leaf up) of the leaf with this hash; InputError if absent.
  std::vector<Bytes32> proof(const Bytes32& leaf) const;
  /// Number of leaves.
  size_t size() const { return (nodes_.size() + 1) / 2; }

 private:
  std::vector<Bytes32> nodes_;
};

/// OpenZeppelin MerkleProof.verify: folds the proof with hash_pair and compares to the root.
bool verify_proof(const std::vector<Bytes32>& proof, const Bytes32& root, const Bytes32& leaf);

}  // namespace attrace::ledger
