#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/ledger.hpp>
#include <attrace/ledger/merkle.hpp>
#include <attrace/ledger/registry.hpp>

#include <algorithm>
#include <map>

namespace attrace::ledger {

Bytes32 content_leaf(const Bytes32& example_digest) {
  // abi.encode(bytes32) is the digest itself (one word), hashed twice as StandardMerkleTree does.
  const Bytes32 inner = keccak256(example_digest.data(), example_digest.size());
  return keccak256(inner.data(), inner.size());
}

namespace {
std::vector<Bytes32> leaves_of(const std::vector<Bytes32>& digests) {
  ATTRACE_CHECK(!digests.empty(), InputError, "content root: a tranche without examples has no content root");
  std::vector<Bytes32> leaves;
  leaves.reserve(digests.size());
  for (const auto& d : digests) leaves.push_back(content_leaf(d));
  return leaves;
}
}  // namespace

Bytes32 content_root(const std::vector<Bytes32>& example_digests) { return MerkleTree(leaves_of(example_digests)).root(); }

std::vector<Bytes32> content_proof(const std::vector<Bytes32>& example_digests, size_t index) {
  ATTRACE_CHECK(index < example_digests.size(), InputError,
                "content proof: example " + std::to_string(index) + " of a tranche with " +
                    std::to_string(example_digests.size()) + " examples");
  return MerkleTree(leaves_of(example_digests)).proof(content_leaf(example_digests[index]));
}

bool verify_content_proof(const std::vector<Bytes32>& proof, const Bytes32& root, const Bytes32& example_digest) {
  return verify_proof(proof, root, content_leaf(example_digest));
}

std::vector<TrancheContent> tranche_contents(const connectors::Dataset& ds, const std::string& what) {
  ATTRACE_CHECK(!ds.tranches.empty() && ds.tranche.size() == static_cast<size_t>(ds.size()), InputError,
                what + ": has no tranche table; only a training set with tranches can be registered");
  // A dataset rebuilt from a feature store carries its digests; one read from a file has inputs.
  const std::vector<uint8_t> flat = ds.digests.empty() ? connectors::example_digests(ds) : ds.digests;
  ATTRACE_CHECK(flat.size() == static_cast<size_t>(ds.size()) * 32, InputError,
                what + ": " + std::to_string(flat.size() / 32) + " content digests for " + std::to_string(ds.size()) +
                    " examples");
  std::vector<TrancheContent> out(ds.tranches.size());
  for (size_t t = 0; t < ds.tranches.size(); ++t) {
    out[t].id = ds.tranches[t].id;
    out[t].account = ds.tranches[t].account;
    out[t].license = ds.tranches[t].license;
  }
  for (int64_t i = 0; i < ds.size(); ++i) {
    const int64_t t = ds.tranche[static_cast<size_t>(i)];
    ATTRACE_CHECK(t >= 0 && static_cast<size_t>(t) < out.size(), InputError,
                  what + ": example " + std::to_string(i) + " has tranche index " + std::to_string(t) + " out of range");
    auto& c = out[static_cast<size_t>(t)];
    c.examples.push_back(i);
    c.example_ids.push_back(static_cast<size_t>(i) < ds.ids.size() ? ds.ids[static_cast<size_t>(i)] : std::to_string(i));
    Bytes32 d;
    std::copy(flat.begin() + i * 32, flat.begin() + (i + 1) * 32, d.begin());
    c.digests.push_back(d);
  }
  for (const auto& c : out)
    ATTRACE_CHECK(!c.digests.empty(), InputError, what + ": tranche '" + c.id + "' has no examples");
  return out;
}

std::vector<RegisterResult> register_dataset(Ledger& ledger, const connectors::Dataset& ds, const std::string& what) {
  std::vector<RegisterResult> out;
  for (const auto& c : tranche_contents(ds, what)) {
    TrancheRegistration r;
    r.tranche = c.id;
    r.account = address_from_hex(c.account, what + ": tranche '" + c.id + "' account");
    r.license = c.license;
    r.digests = c.digests;
    r.example_count = c.digests.size();
    r.content_root = c.root();
    out.push_back(ledger.register_tranche(r));
  }
  return out;
}

const Registration* same_content_as(const std::vector<Registration>& all, const Registration& r) {
  const Registration* first = nullptr;
  for (const auto& o : all)
    if (o.content_root == r.content_root && o.tranche != r.tranche && o.order < r.order && (!first || o.order < first->order))
      first = &o;
  return first;
}

namespace {

// Names the first example of `c` (dataset order) whose digest is not among the registered ones
// (a multiset: a duplicate example beyond the registered count differs too), else the first
// registered example the dataset lacks.
std::string first_difference(const TrancheContent& c, const std::vector<Bytes32>& registered) {
  std::map<Bytes32, size_t> left;
  for (const auto& d : registered) ++left[d];
  for (size_t k = 0; k < c.digests.size(); ++k) {
    auto it = left.find(c.digests[k]);
    if (it == left.end() || it->second == 0)
      return "first differing example: dataset example " + std::to_string(c.examples[k]) + " (id '" + c.example_ids[k] +
             "', digest " + to_hex(c.digests[k]) + ") is not in the registered content";
    --it->second;
  }
  for (size_t k = 0; k < registered.size(); ++k) {
    auto it = left.find(registered[k]);
    if (it != left.end() && it->second > 0)
      return "first differing example: registered example " + std::to_string(k) + " of the tranche (digest " +
             to_hex(registered[k]) + ") is missing from the dataset";
  }
  return "the registered example digests hash to another root than the one recorded";
}

}  // namespace

std::vector<Registration> check_against_registry(const std::vector<TrancheContent>& tranches,
                                                 const std::vector<Registration>& registered,
                                                 const std::vector<std::vector<Bytes32>>& registered_digests,
                                                 const std::string& registry_name) {
  std::map<std::string, const Registration*> by_id;
  for (const auto& r : registered) by_id[r.tranche] = &r;
  std::vector<Registration> out;
  for (size_t t = 0; t < tranches.size(); ++t) {
    const auto& c = tranches[t];
    const auto it = by_id.find(c.id);
    ATTRACE_CHECK(it != by_id.end(), InputError,
                  "tranche '" + c.id + "' is not registered in " + registry_name +
                      " (attrace ledger register --dataset ... registers a dataset's tranches)");
    const Registration& r = *it->second;
    const Address account = address_from_hex(c.account, "tranche '" + c.id + "' account");
    ATTRACE_CHECK(r.account == account, InputError,
                  "tranche '" + c.id + "' is registered in " + registry_name + " for account " + checksum_address(r.account) +
                      ", the dataset names " + checksum_address(account));
    const Bytes32 root = c.root();
    if (root != r.content_root || c.digests.size() != r.example_count) {
      std::string detail = "tranche '" + c.id + "': content root " + to_hex(root) + " over " +
                           std::to_string(c.digests.size()) + " examples differs from the registered " +
                           to_hex(r.content_root) + " over " + std::to_string(r.example_count) + " examples";
      if (t < registered_digests.size() && !registered_digests[t].empty())
        detail += "; " + first_difference(c, registered_digests[t]);
      else
        detail += " (" + registry_name + " keeps only the root: the differing example cannot be named; compare with the "
                                         "registered dataset, e.g. attrace ledger prove-example)";
      throw InputError(detail);
    }
    out.push_back(r);
  }
  return out;
}

}  // namespace attrace::ledger
