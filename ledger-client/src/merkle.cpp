#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/merkle.hpp>

#include <algorithm>
#include <cstring>

namespace attrace::ledger {

Bytes abi_encode(const Leaf& leaf) {
  Bytes out(5 * 32, 0);
  const Bytes32 e = to_word(U256(leaf.epoch));
  std::memcpy(out.data(), e.data(), 32);
  std::memcpy(out.data() + 32, leaf.tranche_id.data(), 32);
  std::memcpy(out.data() + 64 + 12, leaf.account.data(), 20);  // address: left-padded
  const Bytes32 s = to_word(leaf.score), a = to_word(leaf.amount);
  std::memcpy(out.data() + 96, s.data(), 32);
  std::memcpy(out.data() + 128, a.data(), 32);
  return out;
}

Bytes32 leaf_hash(const Leaf& leaf) {
  const Bytes32 inner = keccak256(abi_encode(leaf));
  return keccak256(inner.data(), inner.size());
}

Bytes32 hash_pair(const Bytes32& a, const Bytes32& b) {
  uint8_t buf[64];
  const bool a_first = a < b;  // std::array compares lexicographically = bytewise
  std::memcpy(buf, (a_first ? a : b).data(), 32);
  std::memcpy(buf + 32, (a_first ? b : a).data(), 32);
  return keccak256(buf, 64);
}

MerkleTree::MerkleTree(std::vector<Bytes32> leaves) {
  ATTRACE_CHECK(!leaves.empty(), InputError, "Merkle tree: no leaves");
  std::sort(leaves.begin(), leaves.end());
  const size_t n = leaves.size();
  nodes_.resize(2 * n - 1);
  for (size_t k = 0; k < n; ++k) nodes_[2 * n - 2 - k] = leaves[k];
  for (size_t i = n - 1; i-- > 0;) nodes_[i] = hash_pair(nodes_[2 * i + 1], nodes_[2 * i + 2]);
}

std::vector<Bytes32> MerkleTree::proof(const Bytes32& leaf) const {
  const size_t n = size();
  size_t j = nodes_.size();
  for (size_t k = n - 1; k < nodes_.size(); ++k)
    if (nodes_[k] == leaf) {
      j = k;
      break;
    }
  ATTRACE_CHECK(j < nodes_.size(), InputError, "Merkle tree: leaf " + to_hex(leaf) + " is not in the tree");
  std::vector<Bytes32> p;
  while (j > 0) {
    p.push_back(nodes_[j % 2 == 1 ? j + 1 : j - 1]);
    j = (j - 1) / 2;
  }
  return p;
}

bool verify_proof(const std::vector<Bytes32>& proof, const Bytes32& root, const Bytes32& leaf) {
  Bytes32 h = leaf;
  for (const auto& s : proof) h = hash_pair(h, s);
  return h == root;
}

}  // namespace attrace::ledger
