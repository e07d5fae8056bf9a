#pragma once
// The registry plane: tranches anchored by content before they are paid. A tranche's content root
// is an OpenZeppelin StandardMerkleTree root over its examples' content digests, each a `bytes32`
// leaf (leaf hash = keccak256(keccak256(abi.encode(bytes32 digest)))), so any example's membership
// can be proven and checked with OpenZeppelin's MerkleProof on chain. Format: docs/ledger.md,
// "Registry".
#include <attrace/ledger/types.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace attrace::connectors {
struct Dataset;
}

namespace attrace::ledger {

/// StandardMerkleTree leaf hash of one example digest: keccak256(keccak256(abi.encode(digest))).
Bytes32 content_leaf(const Bytes32& example_digest);
/// Content root over a tranche's example digests (any order: leaves are sorted, so the root is a
/// commitment to the multiset of digests). InputError if the list is empty.
Bytes32 content_root(const std::vector<Bytes32>& example_digests);
/// Proof (siblings from the leaf up) that example `index` of `example_digests` is in the root.
std::vector<Bytes32> content_proof(const std::vector<Bytes32>& example_digests, size_t index);
/// OpenZeppelin MerkleProof.verify of an example digest against a content root.
bool verify_content_proof(const std::vector<Bytes32>& proof, const Bytes32& root, const Bytes32& example_digest);

/// One dataset tranche's content: its examples (dataset order) and their digests.
struct TrancheContent {
  std::string id, account, license;
  std::vector<int64_t> examples;      ///< dataset example indices, ascending
  std::vector<std::string> example_ids;
  std::vector<Bytes32> digests;       ///< connectors::example_digests, one per example
  /// The content root of `digests`.
  Bytes32 root() const { return content_root(digests); }
};

/// Splits a training dataset (inputs at hand, or content digests of a dataset rebuilt from a feature
/// store) into its tranches' contents, in tranche table order. InputError if it has no tranches.
std::vector<TrancheContent> tranche_contents(const connectors::Dataset& ds, const std::string& what);

/// What a registration asks for.
struct TrancheRegistration {
  std::string tranche;              ///< tranche id string (UTF-8, as in the dataset)
  Address account{};                ///< who is paid for it
  std::string license;
  Bytes32 content_root{};
  uint64_t example_count = 0;
  std::vector<Bytes32> digests;     ///< per-example digests (kept by the embedded ledger)
};

/// A registration on record.
struct Registration {
  std::string tranche;
  Bytes32 tranche_id{};             ///< keccak256(tranche)
  Address account{};
  std::string license;
  Bytes32 content_root{};
  uint64_t example_count = 0;
  uint64_t order = 0;               ///< registration sequence number, 1 = first ever
  int64_t registered_at = 0;        ///< unix seconds (block time on EVM)
  std::string registrant;           ///< embedded: the `--as` actor; EVM: the sender's address
};

/// Result of a registration.
struct RegisterResult {
  bool already_registered = false;  ///< the same (tranche, content root, account) was on record
  Registration registration;
};

class Ledger;
/// Registers every tranche of a training dataset on `ledger`, in tranche table order (idempotent:
/// see Ledger::register_tranche); `what` names the dataset in messages. Used by `ledger register`
/// and the demo.
std::vector<RegisterResult> register_dataset(Ledger& ledger, const connectors::Dataset& ds, const std::string& what);

/// The earliest registration (lowest order) with the same content root as `r` under another tranche
/// id, or nullptr when `r` is the first with that content.
const Registration* same_content_as(const std::vector<Registration>& all, const Registration& r);

/// Checks each tranche's content against its registration: a tranche that is not registered, is
/// registered under another account, or whose content root differs is an InputError naming the
/// tranche and, when `registered_digests` has the registered examples' digests for it (embedded
/// ledger), the first differing example. Returns the registrations in `tranches` order.
std::vector<Registration> check_against_registry(
    const std::vector<TrancheContent>& tranches, const std::vector<Registration>& registered,
    const std::vector<std::vector<Bytes32>>& registered_digests, const std::string& registry_name);

}  // namespace attrace::ledger
