#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/epoch.hpp>
#include <attrace/ledger/files.hpp>
#include <attrace/ledger/rewards.hpp>

#include <filesystem>
#include <set>

namespace attrace::ledger {

std::string canonical_json(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict); }

namespace {

// Far deeper than any manifest or report nests (about 8 levels). nlohmann's parser does not
// recurse, but copying and dumping a value do: a crafted file of 300000 '[' overflowed the stack.
constexpr int kMaxJsonDepth = 256;

nlohmann::json parse_json(const std::string& bytes, const std::string& what) {
  const auto limit_depth = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    ATTRACE_CHECK(depth <= kMaxJsonDepth, InputError,
                  what + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  try {
    return nlohmann::json::parse(bytes, limit_depth);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(what + ": malformed JSON (" + e.what() + ")");
  }
}

const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& what) {
  ATTRACE_CHECK(j.is_object() && j.contains(key), InputError, what + ": missing field '" + key + "'");
  return j.at(key);
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& what) {
  const auto& v = field(j, key, what);
  ATTRACE_CHECK(v.is_string(), InputError, what + ": field '" + key + "' must be a string");
  return v.get<std::string>();
}

void finish(EpochCommitment& c, nlohmann::json manifest) {
  std::vector<Bytes32> hashes;
  nlohmann::json leaves = nlohmann::json::array();
  for (auto& l : c.leaves) {
    l.hash = leaf_hash(l.leaf);
    hashes.push_back(l.hash);
    leaves.push_back({{"tranche", l.tranche},
                      {"trancheId", to_hex(l.leaf.tranche_id)},
                      {"account", checksum_address(l.leaf.account)},
                      {"score", to_decimal(l.leaf.score)},
                      {"amount", to_decimal(l.leaf.amount)},
                      {"leaf", to_hex(l.hash)}});
  }
  c.root = MerkleTree(hashes).root();
  manifest["format"] = "attrace.epoch/1";
  manifest["epoch"] = std::to_string(c.epoch);
  manifest["pool"] = to_decimal(c.pool);
  manifest["score_scale"] = to_decimal(kScoreScale);
  manifest["leaf_encoding"] = "abi.encode(uint64 epoch, bytes32 trancheId, address account, uint256 score, uint256 amount)";
  manifest["leaves"] = leaves;
  manifest["root"] = to_hex(c.root);
  c.manifest = canonical_json(manifest);
  c.manifest_hash = keccak256(c.manifest);
}

// Every output the run's manifest pins (report.json, attribution.csv, scores.h5, ...) must be
// present and unchanged before anything is committed: a commit pays by these files, and the epoch
// manifest carries their pinned hashes. report.json is hashed from the very bytes the shares are
// read from.
void check_pinned_outputs(const std::string& report_dir, const nlohmann::json& manifest, const std::string& manifest_path,
                          const std::string& report_bytes) {
  namespace fs = std::filesystem;
  const auto& outputs = field(manifest, "outputs", manifest_path);
  ATTRACE_CHECK(outputs.is_object(), InputError, manifest_path + ": 'outputs' must be an object of file name -> sha256");
  ATTRACE_CHECK(outputs.contains("report.json"), InputError, manifest_path + ": 'outputs' does not pin report.json");
  for (const auto& [name, pinned] : outputs.items()) {
    const std::string where = manifest_path + ": outputs['" + name + "']";
    ATTRACE_CHECK(pinned.is_string(), InputError, where + " must be a sha256 hex string");
    ATTRACE_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
                      name.find('\0') == std::string::npos,
                  InputError, where + ": not a file name inside the report directory");
    const std::string path = (fs::path(report_dir) / name).string();
    std::string actual;
    if (name == "report.json") {
      actual = connectors::sha256_hex(report_bytes);
    } else {
      regular_file_size(path, "output pinned by " + manifest_path);
      actual = connectors::sha256_file(path);
    }
    const std::string expected = pinned.get<std::string>();
    ATTRACE_CHECK(actual == expected, InputError,
                  path + ": sha256 " + actual + " differs from " + expected + " pinned by " + manifest_path +
                      " (the file changed after the run; nothing was committed)");
  }
}

}  // namespace

std::vector<Bytes32> EpochCommitment::proof(size_t i) const {
  ATTRACE_CHECK(i < leaves.size(), InputError, "epoch " + std::to_string(epoch) + ": no leaf " + std::to_string(i));
  std::vector<Bytes32> hashes;
  for (const auto& l : leaves) hashes.push_back(l.hash);
  return MerkleTree(hashes).proof(leaves[i].hash);
}

size_t EpochCommitment::find(const Address& account, const std::string& tranche) const {
  size_t found = leaves.size(), count = 0;
  for (size_t i = 0; i < leaves.size(); ++i)
    if (leaves[i].leaf.account == account && (tranche.empty() || leaves[i].tranche == tranche)) {
      found = i;
      ++count;
    }
  ATTRACE_CHECK(count > 0, InputError,
                "epoch " + std::to_string(epoch) + ": no leaf for account " + checksum_address(account) +
                    (tranche.empty() ? "" : " and tranche '" + tranche + "'"));
  ATTRACE_CHECK(count == 1, InputError,
                "epoch " + std::to_string(epoch) + ": account " + checksum_address(account) +
                    " holds several tranches; name one with --tranche");
  return found;
}

EpochCommitment build_epoch(const std::string& report_dir, uint64_t epoch, const U256& pool) {
  namespace fs = std::filesystem;
  const std::string report_path = (fs::path(report_dir) / "report.json").string();
  const std::string manifest_path = (fs::path(report_dir) / "manifest.json").string();
  const std::string report_bytes = read_input_file(report_path, "report");
  const nlohmann::json manifest = parse_json(read_input_file(manifest_path, "run manifest"), manifest_path);
  ATTRACE_CHECK(pool > 0, InputError, "reward pool must be > 0");
  check_pinned_outputs(report_dir, manifest, manifest_path, report_bytes);
  const nlohmann::json report = parse_json(report_bytes, report_path);
  ATTRACE_CHECK(string_field(report, "format", report_path) == "attrace.report/1", InputError,
                report_path + ": unsupported format");
  const auto& tranches = field(report, "tranches", report_path);
  ATTRACE_CHECK(tranches.is_array() && !tranches.empty(), InputError, report_path + ": 'tranches' must be a non-empty array");

  EpochCommitment c;
  c.epoch = epoch;
  c.pool = pool;
  std::set<std::pair<Bytes32, Address>> seen;
  std::vector<SplitEntry> split;
  for (size_t k = 0; k < tranches.size(); ++k) {
    const std::string where = report_path + ": tranches[" + std::to_string(k) + "]";
    const auto& t = tranches[k];
    EpochLeaf l;
    l.tranche = string_field(t, "id", where);
    ATTRACE_CHECK(!l.tranche.empty(), InputError, where + ": empty tranche id");
    l.leaf.epoch = epoch;
    l.leaf.tranche_id = keccak256(l.tranche);
    l.leaf.account = address_from_hex(string_field(t, "account", where), where + ".account");
    const auto& share = field(t, "share", where);
    ATTRACE_CHECK(share.is_number(), InputError, where + ": 'share' must be a number");
    l.leaf.score = quantize_share(share.get<double>(), where + " ('" + l.tranche + "')");
    ATTRACE_CHECK(seen.insert({l.leaf.tranche_id, l.leaf.account}).second, InputError,
                  where + ": duplicate (epoch, tranche '" + l.tranche + "', account " + checksum_address(l.leaf.account) + ")");
    split.push_back({l.leaf.score, l.leaf.account, l.leaf.tranche_id});
    c.leaves.push_back(std::move(l));
  }
  const auto amounts = split_rewards(pool, split);
  for (size_t k = 0; k < amounts.size(); ++k) c.leaves[k].leaf.amount = amounts[k];

  nlohmann::json m;
  m["attribution"] = manifest;
  m["report_sha256"] = connectors::sha256_hex(report_bytes);
  finish(c, std::move(m));
  return c;
}

EpochCommitment load_epoch_manifest(const std::string& bytes, const std::string& what) {
  const nlohmann::json m = parse_json(bytes, what);
  ATTRACE_CHECK(string_field(m, "format", what) == "attrace.epoch/1", InputError, what + ": not an attrace epoch manifest");
  EpochCommitment c;
  const std::string epoch = string_field(m, "epoch", what);
  const U256 e = u256_from_decimal(epoch, what + ": epoch");
  ATTRACE_CHECK(e <= U256(std::numeric_limits<uint64_t>::max()), InputError, what + ": epoch exceeds uint64");
  c.epoch = static_cast<uint64_t>(e);
  c.pool = u256_from_decimal(string_field(m, "pool", what), what + ": pool");
  for (const auto& j : field(m, "leaves", what)) {
    EpochLeaf l;
    l.tranche = string_field(j, "tranche", what + ": leaf");
    l.leaf.epoch = c.epoch;
    l.leaf.tranche_id = bytes32_from_hex(string_field(j, "trancheId", what), what + ": trancheId");
    ATTRACE_CHECK(l.leaf.tranche_id == keccak256(l.tranche), InputError,
                  what + ": trancheId of '" + l.tranche + "' is not keccak256 of its id");
    l.leaf.account = address_from_hex(string_field(j, "account", what), what + ": account");
    l.leaf.score = u256_from_decimal(string_field(j, "score", what), what + ": score");
    l.leaf.amount = u256_from_decimal(string_field(j, "amount", what), what + ": amount");
    c.leaves.push_back(std::move(l));
  }
  nlohmann::json rest = m;
  finish(c, rest);
  ATTRACE_CHECK(c.manifest == bytes, InputError, what + ": not in canonical form or its leaves/root do not match their content");
  return c;
}

}  // namespace attrace::ledger
