// `attrace verify EPOCH`: an auditor's recomputation of a committed epoch. Reads the commitment
// from a ledger, the epoch manifest it hashes to, checks every input the manifest names against
// its pinned sha256 before computing, recomputes with the engine (same settings, or another
// scoring path on request), rebuilds the integer split, leaves and root with the same pool, and
// compares. Reference: docs/verify.md.
#include "verify.hpp"

#include "ledger_cmd.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/feature_store.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/connectors/toml_util.hpp>
#include <attrace/engine/attribute.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/engine/report.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/epoch.hpp>
#include <attrace/ledger/evm.hpp>
#include <attrace/ledger/files.hpp>
#include <attrace/ledger/registry.hpp>
#include <attrace/ledger/rewards.hpp>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <cmath>
#include <algorithm>
#include <map>
#include <set>
#include <tuple>

namespace attrace::cli {
namespace {

namespace al = attrace::ledger;
namespace eng = attrace::engine;
namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kEpochFormat = "attrace.epoch/1";
constexpr const char* kRunManifestFormat = "attrace.manifest/1";
constexpr const char* kVerificationFormat = "attrace.verification/1";

struct VerifyOptions {
  std::string epoch;
  std::string backend = "embedded", db = "attrace-ledger.db", actor = "local", evm_config, key_file, manifest_file;
  std::string config, inputs_dir, store, out = "verification.json", keep;
  std::string scoring, gemm_math, precision, device, memory_limit;
  long long batch_size = 0;
  double tolerance = -1;  // < 0: the manifest's declared tolerance
  bool file_dispute = false, quiet = false;
  RegistryOptions registry;  // --registry-db / --registry-evm (default: the ledger verified)
};

VerifyOptions vo;

// ---- Ledger access ---------------------------------------------------------------------------

std::optional<al::PrivateKey> load_key(const std::string& key_file) { return load_private_key(key_file); }

// The [evm] table of --evm-config, read as `attrace ledger` reads it; verify also needs the contract.
al::EvmOptions evm_options(std::string* key_file) {
  const al::EvmOptions o = read_evm_config(vo.evm_config, key_file);
  ATTRACE_CHECK(o.contract != al::Address{}, InputError,
                vo.evm_config + ": evm.contract (the AttributionLedger address) is required to verify");
  return o;
}

struct OpenLedger {
  std::unique_ptr<al::Ledger> ledger;
  json where;                           // which ledger, for verification.json
  std::optional<al::Address> contract;  // EVM: the AttributionLedger address
};

OpenLedger open_ledger() {
  if (vo.backend == "embedded")
    return {al::open_embedded_ledger(vo.db, {}, vo.actor), {{"backend", "embedded"}, {"db", fs::absolute(vo.db).string()}}, std::nullopt};
  std::string key_file = vo.key_file;
  const al::EvmOptions o = evm_options(&key_file);
  // A key is needed only to file a dispute; reading the commitment needs none.
  auto key = vo.file_dispute ? load_key(key_file) : std::nullopt;
  ATTRACE_CHECK(!vo.file_dispute || key.has_value(), InputError,
                "--file-dispute on --backend evm needs a signing key (ATTRACE_PRIVATE_KEY, --key-file or evm.key_file)");
  json where = {{"backend", "evm"}, {"chain_id", std::to_string(o.chain_id)}, {"contract", al::checksum_address(o.contract)},
                {"rpc_url", o.rpc_url}};
  return {std::make_unique<al::EvmLedger>(o, std::move(key)), where, o.contract};
}

// ---- The committed epoch manifest ------------------------------------------------------------

json parse_json(const std::string& bytes, const std::string& what) {
  // Same depth limit as the ledger's reader: copying a deeply nested value overflows the stack.
  const auto limit_depth = [&](int depth, json::parse_event_t, json&) {
    ATTRACE_CHECK(depth <= 256, InputError, what + ": JSON nested deeper than 256 levels");
    return true;
  };
  try {
    return json::parse(bytes, limit_depth);
  } catch (const json::exception& e) {
    throw InputError(what + ": malformed JSON (" + e.what() + ")");
  }
}

const json& member(const json& j, const char* key, const std::string& what) {
  ATTRACE_CHECK(j.is_object() && j.contains(key), InputError, what + ": missing field '" + key + "'");
  return j.at(key);
}

std::string text(const json& j, const char* key, const std::string& what) {
  const json& v = member(j, key, what);
  ATTRACE_CHECK(v.is_string(), InputError, what + ": field '" + key + "' must be a string");
  return v.get<std::string>();
}

// A format tag "NAME/VERSION": this build reads version 1; a higher one is a newer attrace's.
void check_format(const std::string& got, const std::string& want, const std::string& what) {
  const std::string family = want.substr(0, want.find('/') + 1);
  if (got == want) return;
  if (got.rfind(family, 0) == 0) {
    const std::string v = got.substr(family.size());
    const bool newer = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos && v != "0" && v != "1";
    ATTRACE_CHECK(!newer, InputError,
                  what + ": format '" + got + "' was written by a newer attrace; this build reads '" + want + "' (upgrade attrace to verify it)");
  }
  throw InputError(what + ": format '" + got + "' is not '" + want + "'");
}

// One leaf as the committed manifest states it, with the hash it records for it.
struct CommittedLeaf {
  std::string tranche;
  al::Leaf leaf;
  al::Bytes32 recorded_hash{}, recorded_tranche_id{};
};

struct Committed {
  json manifest;     // the whole epoch manifest
  json attribution;  // its run manifest
  uint64_t epoch = 0;
  al::U256 pool = 0;
  std::vector<CommittedLeaf> leaves;
  al::Bytes32 root{};
  std::string report_sha256;
};

Committed read_committed(const std::string& bytes, const std::string& what) {
  Committed c;
  c.manifest = parse_json(bytes, what);
  ATTRACE_CHECK(c.manifest.is_object(), InputError, what + ": not a JSON object");
  check_format(text(c.manifest, "format", what), kEpochFormat, what);
  const al::U256 e = al::u256_from_decimal(text(c.manifest, "epoch", what), what + ": epoch");
  ATTRACE_CHECK(e <= al::U256(std::numeric_limits<uint64_t>::max()), InputError, what + ": epoch exceeds uint64");
  c.epoch = static_cast<uint64_t>(e);
  c.pool = al::u256_from_decimal(text(c.manifest, "pool", what), what + ": pool");
  c.root = al::bytes32_from_hex(text(c.manifest, "root", what), what + ": root");
  c.report_sha256 = text(c.manifest, "report_sha256", what);
  c.attribution = member(c.manifest, "attribution", what);
  const std::string aw = what + ": attribution";
  ATTRACE_CHECK(c.attribution.is_object(), InputError, aw + " must be an object (the run's manifest.json)");
  check_format(text(c.attribution, "format", aw), kRunManifestFormat, aw);
  const json& leaves = member(c.manifest, "leaves", what);
  ATTRACE_CHECK(leaves.is_array() && !leaves.empty(), InputError, what + ": 'leaves' must be a non-empty array");
  for (size_t k = 0; k < leaves.size(); ++k) {
    const std::string lw = what + ": leaves[" + std::to_string(k) + "]";
    CommittedLeaf l;
    l.tranche = text(leaves[k], "tranche", lw);
    l.leaf.epoch = c.epoch;
    l.recorded_tranche_id = al::bytes32_from_hex(text(leaves[k], "trancheId", lw), lw + ".trancheId");
    l.leaf.tranche_id = l.recorded_tranche_id;
    l.leaf.account = al::address_from_hex(text(leaves[k], "account", lw), lw + ".account");
    l.leaf.score = al::u256_from_decimal(text(leaves[k], "score", lw), lw + ".score");
    l.leaf.amount = al::u256_from_decimal(text(leaves[k], "amount", lw), lw + ".amount");
    l.recorded_hash = al::bytes32_from_hex(text(leaves[k], "leaf", lw), lw + ".leaf");
    c.leaves.push_back(std::move(l));
  }
  return c;
}

// The uri the contract's EpochCommitted event recorded for this commitment (the latest event of
// the epoch whose manifestHash is the one on record); "" if none is found.
std::string evm_commitment_uri(al::EvmLedger& l, const al::Address& contract, const al::EpochStatus& s) {
  const std::string topic = al::to_hex(al::keccak256("EpochCommitted(uint64,bytes32,bytes32,uint256,uint64,string)"));
  const json logs = l.rpc().call("eth_getLogs", {{{"address", al::to_hex(contract)},
                                                   {"fromBlock", "0x0"},
                                                   {"toBlock", "latest"},
                                                   {"topics", {topic, al::to_hex(al::to_word(s.epoch))}}}});
  ATTRACE_CHECK(logs.is_array(), al::RpcError, "eth_getLogs: the reply is not an array");
  for (auto it = logs.rbegin(); it != logs.rend(); ++it) {
    // data: manifestHash, totalReward, challengeEnds, offset of uri; then its length and bytes.
    const al::Bytes d = al::parse_data(al::reply_field(*it, "data", "EpochCommitted log"), "EpochCommitted log data");
    if (d.size() < 6 * 32 || !std::equal(s.manifest_hash.begin(), s.manifest_hash.end(), d.begin())) continue;
    const al::U256 offset = al::from_word(d.data() + 3 * 32);
    if (offset + 32 > d.size()) continue;
    const size_t at = static_cast<size_t>(offset);
    const al::U256 length = al::from_word(d.data() + at);
    if (at + 32 + length > d.size()) continue;
    return std::string(d.begin() + static_cast<std::ptrdiff_t>(at + 32),
                       d.begin() + static_cast<std::ptrdiff_t>(at + 32 + static_cast<size_t>(length)));
  }
  return "";
}

// The commitment's manifest bytes: --manifest, the ledger's stored copy (embedded), or the file
// the commitment's uri names. They must hash to the manifestHash on record.
std::string manifest_bytes(al::Ledger& l, const al::EpochStatus& s, const std::optional<al::Address>& contract) {
  std::string bytes, from;
  if (!vo.manifest_file.empty()) {
    bytes = al::read_input_file(vo.manifest_file, "--manifest");
    from = vo.manifest_file;
  } else {
    bytes = l.manifest(s.epoch);
    from = "the ledger's stored manifest";
    if (bytes.empty()) {
      std::string uri = s.uri;
      if (uri.empty() && contract) uri = evm_commitment_uri(dynamic_cast<al::EvmLedger&>(l), *contract, s);
      ATTRACE_CHECK(uri.rfind("file://", 0) == 0, InputError,
                    "epoch " + std::to_string(s.epoch) + ": this ledger keeps only the manifest hash and its uri ('" + uri +
                        "') is not a local file; fetch the epoch manifest and pass --manifest FILE");
      from = uri.substr(7);
      bytes = al::read_input_file(from, "epoch manifest (the commitment's uri)");
    }
  }
  const al::Bytes32 h = al::keccak256(bytes);
  ATTRACE_CHECK(h == s.manifest_hash, InputError,
                from + ": keccak256 " + al::to_hex(h) + " is not the manifestHash " + al::to_hex(s.manifest_hash) +
                    " committed for epoch " + std::to_string(s.epoch) + " (not the committed manifest)");
  return bytes;
}

// ---- Findings --------------------------------------------------------------------------------

struct Report {
  json findings = json::array();
  void add(const std::string& kind, const std::string& message, json extra = json::object()) {
    extra["kind"] = kind;
    extra["message"] = message;
    findings.push_back(std::move(extra));
  }
};

std::string share_text(const al::U256& score) {
  // score / 10^18 exactly, as a decimal fraction (scores are at most 10^18).
  std::string d = al::to_decimal(score);
  if (d.size() < 19) d.insert(0, 19 - d.size(), '0');
  return d.substr(0, d.size() - 18) + "." + d.substr(d.size() - 18);
}

double share_of(const al::U256& score) { return score.convert_to<double>() / 1e18; }

// Signed (b - a) / 10^18 of two scores.
double share_difference(const al::U256& a, const al::U256& b) {
  return b >= a ? share_of(b - a) : -share_of(a - b);
}

std::string signed_difference(const al::U256& a, const al::U256& b) {
  if (a == b) return "0";
  return b > a ? "+" + al::to_decimal(b - a) : "-" + al::to_decimal(a - b);
}

// Index paths: "a.b", "a[3]"; a pattern uses [*] for any index.
std::string pattern_of(const std::string& path) {
  std::string out;
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '[') {
      out += "[*]";
      i = path.find(']', i);
    } else {
      out += path[i];
    }
  }
  return out;
}

// Every difference between the committed and the recomputed run manifest outside `ignored`.
void diff_manifest(const json& committed, const json& recomputed, const std::string& path, const std::set<std::string>& ignored,
                   bool other_path, Report& r) {
  if (!path.empty() && ignored.count(pattern_of(path))) return;
  // On another path computed floating-point values (e.g. the rewards block's masses) differ in
  // their last bits by design; settings and the declared tolerance are still compared.
  if (other_path && committed.is_number_float() && recomputed.is_number_float() && path.rfind("settings.", 0) != 0 &&
      path.rfind("tolerance.", 0) != 0)
    return;
  if (r.findings.size() >= 200) return;
  if (committed.is_object() && recomputed.is_object()) {
    std::set<std::string> keys;
    for (const auto& [k, v] : committed.items()) keys.insert(k);
    for (const auto& [k, v] : recomputed.items()) keys.insert(k);
    for (const auto& k : keys) {
      const std::string p = path.empty() ? k : path + "." + k;
      if (!committed.contains(k) || !recomputed.contains(k)) {
        if (ignored.count(pattern_of(p))) continue;
        r.add("manifest_field", "manifest field '" + p + "' is " + (committed.contains(k) ? "committed but not produced by the recomputation" : "produced by the recomputation but absent from the commitment"),
              {{"field", p}, {"committed", committed.contains(k) ? committed.at(k) : json()},
               {"recomputed", recomputed.contains(k) ? recomputed.at(k) : json()}});
        continue;
      }
      diff_manifest(committed.at(k), recomputed.at(k), p, ignored, other_path, r);
    }
    return;
  }
  if (committed.is_array() && recomputed.is_array() && committed.size() == recomputed.size()) {
    for (size_t i = 0; i < committed.size(); ++i)
      diff_manifest(committed[i], recomputed[i], path + "[" + std::to_string(i) + "]", ignored, other_path, r);
    return;
  }
  if (committed != recomputed)
    r.add("manifest_field", "manifest field '" + path + "' differs: committed " + committed.dump() + ", recomputed " + recomputed.dump(),
          {{"field", path}, {"committed", committed}, {"recomputed", recomputed}});
}

// ---- Inputs ----------------------------------------------------------------------------------

// Where an input recorded in the manifest is looked for (docs/verify.md, "Locating the inputs").
std::string locate(const std::string& recorded, const std::string& from_config) {
  if (!from_config.empty()) return from_config;
  if (!vo.inputs_dir.empty()) return (fs::path(vo.inputs_dir) / fs::path(recorded).filename()).string();
  return recorded;
}

bool is_regular(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

struct InputCheck {
  json checked = json::array();
  std::vector<std::string> missing;
  void compare(const std::string& role, const std::string& path, const std::string& recorded, const std::string& pinned,
               const std::string& actual, Report& r) {
    const bool ok = pinned == actual;
    checked.push_back({{"input", role}, {"path", path}, {"recorded_path", recorded}, {"pinned_sha256", pinned},
                       {"sha256", actual}, {"match", ok}});
    if (!ok)
      r.add("input_hash",
            role + " '" + path + "': sha256 " + actual + " differs from " + pinned + " pinned by the epoch manifest (" +
                (role.rfind("checkpoint", 0) == 0 ? "a swapped checkpoint" : "other data") + " than the committed run used)",
            {{"input", role}, {"path", path}, {"committed", pinned}, {"recomputed", actual}});
  }
};

// Rebuilds the registry binding the run was made with from its manifest block, so the
// recomputation applies the same registration order (first_registered) and writes the same block.
std::optional<eng::RegistryBinding> registry_of(const json& attribution, const std::string& what) {
  if (!attribution.contains("registry")) return std::nullopt;
  const json& g = attribution.at("registry");
  eng::RegistryBinding b;
  b.source = text(g, "source", what + ".registry");
  for (const auto& t : member(g, "tranches", what + ".registry")) {
    eng::RegisteredTranche rt;
    rt.id = text(t, "id", what + ".registry.tranches");
    rt.account = text(t, "account", what + ".registry.tranches");
    rt.license = t.contains("license") && t.at("license").is_string() ? t.at("license").get<std::string>() : "";
    rt.content_root = text(t, "content_root", what + ".registry.tranches");
    const json& o = member(t, "order", what + ".registry.tranches");
    if (o.is_string())
      rt.order = static_cast<uint64_t>(al::u256_from_decimal(o.get<std::string>(), what + ".registry.order"));
    else if (o.is_number_unsigned())
      rt.order = o.get<uint64_t>();
    else
      throw InputError(what + ".registry.tranches: 'order' must be a non-negative integer");
    b.tranches.push_back(std::move(rt));
  }
  return b;
}

// The registry plane (docs/verify.md, "Registry"): the training set's content against what is
// registered, the run manifest's registry block against the registrations on record (a faked
// registration order would buy first_registered credit), and registered tranches whose examples
// are in the data under another tranche.
json registry_checks(al::Ledger& reg, const connectors::Dataset& ds, const json& attribution, Report& rep) {
  const auto contents = al::tranche_contents(ds, ds.path);
  const auto regs = reg.registrations();
  std::vector<std::vector<al::Bytes32>> digests;
  for (const auto& c : contents) digests.push_back(reg.registered_digests(c.id));
  const std::string name = "the registry " + reg.source();
  try {
    al::check_against_registry(contents, regs, digests, name);
  } catch (const InputError& e) {
    rep.add("registry_mismatch", std::string("the training set is not the registered content: ") + e.what());
  }
  std::map<std::string, const al::Registration*> by_id;
  for (const auto& r : regs) by_id[r.tranche] = &r;
  if (attribution.contains("registry")) {
    const json& block = attribution.at("registry");
    std::set<std::string> named;
    for (const auto& t : block.value("tranches", json::array())) {
      const std::string id = t.value("id", "");
      named.insert(id);
      const auto it = by_id.find(id);
      if (it == by_id.end()) {
        rep.add("registry_mismatch", "tranche '" + id + "' is in the run manifest's registry block but not registered on " + reg.source(),
                {{"tranche", id}});
        continue;
      }
      const al::Registration& r = *it->second;
      auto differs = [&](const std::string& field, const std::string& committed, const std::string& registered) {
        rep.add("registry_mismatch",
                "tranche '" + id + "': the run manifest's registry block says " + field + " " + committed + ", the registry " + registered,
                {{"tranche", id}, {"field", "registry." + field}, {"committed", committed}, {"recomputed", registered}});
      };
      const std::string order = t.contains("order") ? (t.at("order").is_string() ? t.at("order").get<std::string>() : t.at("order").dump()) : "";
      if (order != std::to_string(r.order)) differs("order", order, std::to_string(r.order));
      const std::string root = t.value("content_root", "");
      if (root != al::to_hex(r.content_root)) differs("content_root", root, al::to_hex(r.content_root));
      const std::string account = t.value("account", "");
      bool same_account = false;
      try {
        same_account = al::address_from_hex(account, "registry account") == r.account;
      } catch (const InputError&) {
      }
      if (!same_account) differs("account", account, al::checksum_address(r.account));
    }
    for (const auto& c : contents)
      if (!named.count(c.id))
        rep.add("registry_mismatch", "tranche '" + c.id + "' of the training set is missing from the run manifest's registry block",
                {{"tranche", c.id}});
  }
  // Registered tranches absent from the training set whose examples are in it (under another id).
  std::map<al::Bytes32, std::string> where;
  std::set<std::string> in_data;
  for (const auto& c : contents) {
    in_data.insert(c.id);
    for (const auto& d : c.digests) where.emplace(d, c.id);
  }
  for (const auto& r : regs) {
    if (in_data.count(r.tranche)) continue;
    const auto registered = reg.registered_digests(r.tranche);
    size_t found = 0;
    std::set<std::string> holders;
    if (!registered.empty()) {
      for (const auto& d : registered)
        if (const auto it = where.find(d); it != where.end()) {
          ++found;
          holders.insert(it->second);
        }
    } else {
      // The contract keeps roots only: a whole tranche under another id is still visible.
      for (const auto& c : contents)
        if (c.root() == r.content_root) {
          found += c.digests.size();
          holders.insert(c.id);
        }
    }
    if (found == 0) continue;
    std::string list;
    for (const auto& h : holders) list += (list.empty() ? "'" : ", '") + h + "'";
    rep.add("tranche_left_out",
            "tranche '" + r.tranche + "' (registered #" + std::to_string(r.order) + " for " + al::checksum_address(r.account) + ") is not in the training set, but " +
                std::to_string(found) + " of its registered examples are, in " + list,
            {{"tranche", r.tranche}, {"examples", found}, {"in", std::vector<std::string>(holders.begin(), holders.end())}});
  }
  return {{"checked", true}, {"source", reg.source()}, {"registrations", regs.size()}};
}

// A temporary directory removed on scope exit (the recomputation's outputs, unless --keep).
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (fs::temp_directory_path() / "attrace-verify-XXXXXX").string();
    ATTRACE_CHECK(::mkdtemp(tmpl.data()) != nullptr, RuntimeFailure, "cannot create a temporary directory in " + fs::temp_directory_path().string());
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

CLI::App* add_verify_command(CLI::App& app) {
  auto* v = app.add_subcommand("verify",
                               "Recompute a committed epoch from the inputs its manifest names and confirm or dispute it (docs/verify.md)");
  v->add_option("EPOCH", vo.epoch, "Epoch number")->required();
  v->add_option("--backend", vo.backend, "Ledger holding the commitment: embedded (SQLite, default) or evm")
      ->check(CLI::IsMember({"embedded", "evm"}));
  v->add_option("--db", vo.db, "Embedded ledger database")->capture_default_str();
  v->add_option("--evm-config", vo.evm_config, "TOML with [evm] rpc_url, chain_id, contract, ... (docs/ledger.md)");
  v->add_option("--key-file", vo.key_file, "EVM signing key for --file-dispute (default: $ATTRACE_PRIVATE_KEY or evm.key_file)");
  v->add_option("--as", vo.actor, "Embedded ledger: who files the dispute")->capture_default_str();
  v->add_option("--manifest", vo.manifest_file,
                "Epoch manifest file (default: the embedded ledger's copy, or the commitment's file:// uri)");
  v->add_option("-c,--config", vo.config,
                "Config whose run.checkpoints, data.train and data.query locate the inputs (its other settings are not used)")
      ->check(CLI::ExistingFile);
  v->add_option("--inputs-dir", vo.inputs_dir, "Folder holding the run file, training and query sets under their recorded file names")
      ->check(CLI::ExistingDirectory);
  v->add_option("--store", vo.store, "Training-set feature store to score from instead of featurizing data.train");
  v->add_option("-o,--out", vo.out, "verification.json to write (atomically)")->capture_default_str();
  v->add_option("--keep", vo.keep, "Keep the recomputed output directory here (must not exist)");
  v->add_option("--tolerance", vo.tolerance, "Absolute tolerance on tranche shares (default: the manifest's declared one)")
      ->check(CLI::Range(0.0, 1.0));
  v->add_option("--scoring", vo.scoring, "Recompute on another path: attribution.scoring")
      ->check(CLI::IsMember({"fma", "canonical", "blas"}));
  v->add_option("--gemm-math", vo.gemm_math, "Recompute on another path: attribution.gemm_math (blas)")
      ->check(CLI::IsMember({"ieee", "tf32", "bf16"}));
  v->add_option("--precision", vo.precision, "Recompute on another path: gradients.precision")
      ->check(CLI::IsMember({"fp32", "fp64"}));
  v->add_option("--device", vo.device, "Recompute on another backend: gradients.device")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  v->add_option("--batch-size", vo.batch_size, "gradients.batch_size for the recomputation (speed only)")->check(CLI::PositiveNumber);
  v->add_option("--memory-limit", vo.memory_limit, "attribution.memory_limit for the recomputation (speed only)");
  v->add_flag("--file-dispute", vo.file_dispute,
              "If the verdict is disputed, dispute the epoch with keccak256(verification.json) as the reason hash");
  v->add_flag("-q,--quiet", vo.quiet, "No progress or info messages on stderr");
  add_registry_options(v, vo.registry);
  return v;
}

int run_verify_command(bool quiet) {
  const auto started = std::chrono::steady_clock::now();
  quiet = quiet || vo.quiet;
  if (quiet) spdlog::set_level(spdlog::level::warn);
  const al::U256 e = al::u256_from_decimal(vo.epoch, "EPOCH");
  ATTRACE_CHECK(e <= al::U256(std::numeric_limits<uint64_t>::max()), InputError, "EPOCH: '" + vo.epoch + "' exceeds uint64");
  const uint64_t epoch = static_cast<uint64_t>(e);
  ATTRACE_CHECK(connectors::first_invalid_utf8(vo.out) == std::string::npos, InputError, "--out: the path is not valid UTF-8");
  {
    // Refuse an unwritable --out before any work (a verdict that cannot be written is none).
    const fs::path parent = fs::absolute(vo.out).parent_path();
    std::error_code ec;
    ATTRACE_CHECK(fs::is_directory(parent, ec), InputError, "--out " + vo.out + ": folder " + parent.string() + " does not exist");
    ATTRACE_CHECK(!fs::is_directory(vo.out, ec), InputError, "--out " + vo.out + " is a directory; name the verification.json file");
  }

  // 1. The commitment and the manifest it hashes to.
  OpenLedger ol = open_ledger();
  al::Ledger& ledger = *ol.ledger;
  const al::EpochStatus status = ledger.status(epoch);
  ATTRACE_CHECK(status.exists, InputError,
                "epoch " + std::to_string(epoch) + " is not committed on this ledger (" + ol.where.value("db", ol.where.value("contract", "")) + ")");
  const std::string bytes = manifest_bytes(ledger, status, ol.contract);
  const std::string what = "epoch " + std::to_string(epoch) + " manifest";
  const Committed c = read_committed(bytes, what);
  const json& am = c.attribution;
  Report rep;

  // 2. The commitment's own consistency: leaf hashes, tree, root and pool on record.
  if (c.epoch != epoch)
    rep.add("epoch_mismatch", "the manifest committed for epoch " + std::to_string(epoch) + " is for epoch " + std::to_string(c.epoch),
            {{"committed", std::to_string(c.epoch)}, {"recomputed", std::to_string(epoch)}});
  std::vector<al::Bytes32> recorded;
  for (const auto& l : c.leaves) {
    recorded.push_back(l.recorded_hash);
    const al::Bytes32 id = al::keccak256(l.tranche);
    if (id != l.recorded_tranche_id)
      rep.add("leaf_mismatch", "leaf of tranche '" + l.tranche + "': trancheId " + al::to_hex(l.recorded_tranche_id) + " is not keccak256 of its id (" + al::to_hex(id) + ")",
              {{"tranche", l.tranche}, {"committed", al::to_hex(l.recorded_tranche_id)}, {"recomputed", al::to_hex(id)}});
    const al::Bytes32 h = al::leaf_hash(l.leaf);
    if (h != l.recorded_hash)
      rep.add("leaf_mismatch",
              "leaf of tranche '" + l.tranche + "': the committed leaf hash " + al::to_hex(l.recorded_hash) +
                  " is not the hash of its stated score and amount (" + al::to_hex(h) + "): the tree pays something else than the manifest shows",
              {{"tranche", l.tranche}, {"committed", al::to_hex(l.recorded_hash)}, {"recomputed", al::to_hex(h)}});
  }
  const al::Bytes32 tree_root = al::MerkleTree(recorded).root();
  if (tree_root != c.root)
    rep.add("root_mismatch", "the manifest's root " + al::to_hex(c.root) + " is not the root of its leaves (" + al::to_hex(tree_root) + ")",
            {{"committed", al::to_hex(c.root)}, {"recomputed", al::to_hex(tree_root)}});
  if (status.root != c.root)
    rep.add("root_mismatch", "the ledger's root " + al::to_hex(status.root) + " is not the manifest's root " + al::to_hex(c.root),
            {{"committed", al::to_hex(status.root)}, {"recomputed", al::to_hex(c.root)}});
  if (status.total_reward != c.pool)
    rep.add("pool_mismatch", "the ledger's total reward " + al::to_decimal(status.total_reward) + " is not the manifest's pool " + al::to_decimal(c.pool),
            {{"committed", al::to_decimal(status.total_reward)}, {"recomputed", al::to_decimal(c.pool)}});
  if (am.contains("outputs") && am.at("outputs").is_object() && am.at("outputs").contains("report.json") &&
      am.at("outputs").at("report.json") != c.report_sha256)
    rep.add("report_mismatch", "the epoch manifest's report_sha256 " + c.report_sha256 + " is not the run's report.json " + am.at("outputs").at("report.json").dump(),
            {{"committed", c.report_sha256}, {"recomputed", am.at("outputs").at("report.json")}});
  // Amounts must be the exact split of the committed scores over the pool (shared/specs/ledger.md).
  {
    std::vector<al::SplitEntry> entries;
    for (const auto& l : c.leaves) entries.push_back({l.leaf.score, l.leaf.account, l.leaf.tranche_id});
    try {
      const auto amounts = al::split_rewards(c.pool, entries);
      for (size_t k = 0; k < amounts.size(); ++k)
        if (amounts[k] != c.leaves[k].leaf.amount)
          rep.add("amount_mismatch",
                  "tranche '" + c.leaves[k].tranche + "': committed amount " + al::to_decimal(c.leaves[k].leaf.amount) +
                      " is not its exact split of the pool by the committed scores (" + al::to_decimal(amounts[k]) + ", " +
                      signed_difference(amounts[k], c.leaves[k].leaf.amount) + ")",
                  {{"tranche", c.leaves[k].tranche}, {"committed", al::to_decimal(c.leaves[k].leaf.amount)}, {"recomputed", al::to_decimal(amounts[k])}});
    } catch (const InputError& ex) {
      rep.add("amount_mismatch", std::string("the committed scores cannot be split: ") + ex.what());
    }
  }

  // 3. The typed config from the manifest's settings, with the requested other path.
  json settings = member(am, "settings", what + ": attribution");
  ATTRACE_CHECK(settings.is_object(), InputError, what + ": attribution.settings must be an object");
  json overrides = json::object();
  auto override_setting = [&](const char* section, const char* key, const json& value) {
    ATTRACE_CHECK(settings.contains(section) && settings.at(section).is_object(), InputError,
                  what + ": attribution.settings has no [" + section + "] section");
    overrides[std::string(section) + "." + key] = value;
    settings[section][key] = value;
  };
  if (!vo.scoring.empty()) override_setting("attribution", "scoring", vo.scoring);
  if (!vo.gemm_math.empty()) override_setting("attribution", "gemm_math", vo.gemm_math);
  if (!vo.precision.empty()) override_setting("gradients", "precision", vo.precision);
  if (!vo.device.empty()) override_setting("gradients", "device", vo.device);
  // Speed-only settings: not recorded in manifests, change no number (docs/formats.md).
  if (vo.batch_size > 0) settings["gradients"]["batch_size"] = vo.batch_size;
  if (!vo.memory_limit.empty()) settings["attribution"]["memory_limit"] = vo.memory_limit;
  eng::Config config = eng::config_from_json(settings, what + ": attribution.settings");
  const double declared = config.tolerance;
  const double tolerance = vo.tolerance >= 0 ? vo.tolerance : declared;

  // 4. Locate every input and check its sha256 against the manifest before computing.
  eng::Config located;
  if (!vo.config.empty()) located = eng::load_config(vo.config);
  const json& mrun = member(am, "run", what + ": attribution");
  const json& mtrain = member(am, "train", what + ": attribution");
  const json& mquery = member(am, "query", what + ": attribution");
  const std::string rec_run = text(mrun, "file", what + ": attribution.run");
  const std::string rec_train = text(mtrain, "file", what + ": attribution.train");
  const std::string rec_query = text(mquery, "file", what + ": attribution.query");
  config.run_file = locate(rec_run, located.run_file);
  config.train_file = locate(rec_train, located.train_file);
  config.query_file = locate(rec_query, located.query_file);
  config.config_file.clear();
  InputCheck inputs;
  std::string store_train_sha;
  if (!vo.store.empty()) {
    // Scoring from a feature store: the store stands for the training set; its spec must name
    // the pinned dataset. The engine then checks every featurization setting against the store.
    const connectors::FeatureStoreReader store(vo.store);
    const json spec = parse_json(store.layout().spec, vo.store + ": /spec");
    config.train_file = text(member(spec, "dataset", vo.store + ": /spec"), "file", vo.store + ": /spec.dataset");
    store_train_sha = text(member(spec, "dataset", vo.store + ": /spec"), "sha256", vo.store + ": /spec.dataset");
  }
  for (const auto& [role, path, rec] : {std::tuple<std::string, std::string, std::string>{"run.checkpoints (run file)", config.run_file, rec_run},
                                        {"data.train", vo.store.empty() ? config.train_file : "", rec_train},
                                        {"data.query", config.query_file, rec_query}})
    if (!path.empty() && !is_regular(path))
      inputs.missing.push_back(role + ": '" + path + "'" + (path == rec ? "" : " (recorded as '" + rec + "')"));
  ATTRACE_CHECK(inputs.missing.empty(), InputError,
                "missing input" + std::string(inputs.missing.size() > 1 ? "s" : "") + " of epoch " + std::to_string(epoch) + ": " +
                    [&] {
                      std::string s;
                      for (const auto& m : inputs.missing) s += (s.empty() ? "" : "; ") + m;
                      return s;
                    }() +
                    " (locate them with --inputs-dir DIR or --config FILE; docs/verify.md)");
  inputs.compare("run file", config.run_file, rec_run, text(mrun, "sha256", what + ": attribution.run"), connectors::sha256_file(config.run_file), rep);
  if (inputs.checked.back().at("match").get<bool>()) {
    // The run file names the checkpoints (relative to itself); each one is pinned by its hash.
    // (Another run file is a finding already; its checkpoints are not read.)
    const auto run = connectors::read_run_file(config.run_file);
    const json& mck = member(mrun, "checkpoints", what + ": attribution.run");
    ATTRACE_CHECK(mck.is_array(), InputError, what + ": attribution.run.checkpoints must be an array");
    for (size_t k = 0; k < run.checkpoints.size(); ++k) {
      const std::string pinned = k < mck.size() ? text(mck[k], "sha256", what + ": attribution.run.checkpoints") : "(not in the manifest)";
      inputs.compare("checkpoint " + std::to_string(k + 1) + " (" + run.checkpoints[k].file + ")", run.checkpoints[k].path,
                     run.checkpoints[k].file, pinned, run.checkpoints[k].sha256, rep);
    }
    if (mck.size() != run.checkpoints.size())
      rep.add("input_hash", "the run file names " + std::to_string(run.checkpoints.size()) + " checkpoints, the manifest " + std::to_string(mck.size()));
  }
  if (vo.store.empty())
    inputs.compare("data.train", config.train_file, rec_train, text(mtrain, "sha256", what + ": attribution.train"),
                   connectors::sha256_file(config.train_file), rep);
  else
    inputs.compare("data.train (feature store " + vo.store + ")", vo.store, rec_train, text(mtrain, "sha256", what + ": attribution.train"),
                   store_train_sha, rep);
  inputs.compare("data.query", config.query_file, rec_query, text(mquery, "sha256", what + ": attribution.query"),
                 connectors::sha256_file(config.query_file), rep);
  bool inputs_ok = true;
  for (const auto& i : inputs.checked) inputs_ok = inputs_ok && i.at("match").get<bool>();

  // 4b. The registry: --registry-db/--registry-evm, else the ledger verified when the run was
  // checked against a registry (its manifest has a registry block).
  json registry = nullptr;
  {
    std::unique_ptr<al::Ledger> owned;
    al::Ledger* reg = nullptr;
    if (!vo.registry.db.empty() || !vo.registry.evm_config.empty()) {
      owned = open_registry_ledger(vo.registry);
      reg = owned.get();
    } else if (am.contains("registry")) {
      reg = &ledger;
    }
    if (reg && inputs_ok && vo.store.empty())
      registry = registry_checks(*reg, connectors::read_dataset(config.train_file, true), am, rep);
    else if (reg)
      registry = {{"checked", false}, {"why", inputs_ok ? "--store: the training set file is not read" : "inputs do not match"}};
  }

  // 5. Recompute (only from the pinned inputs), then the leaves with the committed pool.
  json recomputation = nullptr;
  json tranches = json::array();
  std::string match;
  double compute_seconds = 0;
  std::vector<std::string> table;
  if (inputs_ok) {
    std::unique_ptr<ScratchDir> scratch;
    std::string out_dir = vo.keep;
    if (out_dir.empty()) {
      scratch = std::make_unique<ScratchDir>();
      out_dir = scratch->path() + "/recomputed";
    }
    eng::RunOptions ro;
    ro.out_dir = out_dir;
    ro.quiet = quiet;
    ro.registry = registry_of(am, what + ": attribution");
    const auto t = std::chrono::steady_clock::now();
    if (vo.store.empty())
      eng::run_attribute(config, ro);
    else
      eng::run_score(config, vo.store, "", ro);
    compute_seconds = seconds_since(t);
    const al::EpochCommitment rc = al::build_epoch(out_dir, epoch, c.pool);
    const json rm = parse_json(al::read_input_file((fs::path(out_dir) / "manifest.json").string(), "recomputed manifest"),
                               "recomputed manifest.json");
    const std::string rreport = connectors::sha256_file((fs::path(out_dir) / "report.json").string());

    // Settings, policies, parameters, inputs, tranche list: everything the run pinned must be
    // what the recomputation from the manifest's own settings pins. Paths are where this machine
    // found the inputs; outputs and the engine build are compared below.
    std::set<std::string> ignored = {"engine", "outputs", "settings.run.checkpoints", "settings.data.train", "settings.data.query",
                                     "run.file", "train.file", "query.file", "math.device", "registry.source"};
    const bool other_path = !overrides.empty();
    for (const auto& [k, v] : overrides.items()) ignored.insert("settings." + k);
    if (other_path)
      for (const char* k : {"math", "factoring", "projection.features", "run.checkpoints[*].gradient_path"}) ignored.insert(k);
    diff_manifest(am, rm, "", ignored, other_path, rep);
    const std::string committed_engine = am.contains("engine") ? am.at("engine").value("version", "") : "";
    const std::string committed_device = am.contains("math") ? am.at("math").value("device", "") : "";
    const std::string recomputed_device = rm.contains("math") ? rm.at("math").value("device", "") : "";
    // Same engine, settings and backend promise byte-identical outputs (shared/specs/determinism.md);
    // blas scoring is repeatable only for the same batch size, which manifests do not record.
    const bool same_path = !other_path && committed_engine == eng::engine_version() && committed_device == recomputed_device &&
                           config.scoring != eng::Scoring::blas;
    if (same_path && rreport != c.report_sha256)
      rep.add("report_differs",
              "report.json recomputed with the same engine, settings and backend has sha256 " + rreport + ", the committed one " +
                  c.report_sha256 + " (the committed report was not produced from these inputs and settings)",
              {{"committed", c.report_sha256}, {"recomputed", rreport}});

    // Per tranche: shares within tolerance, amounts, accounts; tranches left out or added.
    std::map<std::string, size_t> committed_at;
    for (size_t k = 0; k < c.leaves.size(); ++k) committed_at[c.leaves[k].tranche] = k;
    std::set<std::string> seen;
    for (const auto& rl : rc.leaves) {
      seen.insert(rl.tranche);
      json row = {{"tranche", rl.tranche}, {"share_recomputed", share_text(rl.leaf.score)},
                  {"score_recomputed", al::to_decimal(rl.leaf.score)}, {"amount_recomputed", al::to_decimal(rl.leaf.amount)},
                  {"account", al::checksum_address(rl.leaf.account)}};
      const auto it = committed_at.find(rl.tranche);
      if (it == committed_at.end()) {
        row["verdict"] = "missing";
        rep.add("tranche_missing", "tranche '" + rl.tranche + "' is in the training data (share " + share_text(rl.leaf.score) +
                                       ") but has no leaf in the commitment",
                {{"tranche", rl.tranche}, {"recomputed", share_text(rl.leaf.score)}});
        tranches.push_back(row);
        continue;
      }
      const auto& cl = c.leaves[it->second].leaf;
      const double diff = share_difference(cl.score, rl.leaf.score);
      const bool within = std::abs(diff) <= tolerance;
      row["share_committed"] = share_text(cl.score);
      row["score_committed"] = al::to_decimal(cl.score);
      row["amount_committed"] = al::to_decimal(cl.amount);
      row["difference"] = diff;
      row["amount_difference"] = signed_difference(cl.amount, rl.leaf.amount);
      row["within_tolerance"] = within;
      row["verdict"] = within ? (cl.score == rl.leaf.score ? "identical" : "within tolerance") : "differs";
      if (!within)
        rep.add("share_out_of_tolerance",
                "tranche '" + rl.tranche + "': committed share " + share_text(cl.score) + ", recomputed " + share_text(rl.leaf.score) +
                    " (difference " + connectors::readable_number(diff) + ", tolerance " + connectors::readable_number(tolerance) + ")",
                {{"tranche", rl.tranche}, {"committed", share_text(cl.score)}, {"recomputed", share_text(rl.leaf.score)}, {"difference", diff}});
      if (cl.account != rl.leaf.account) {
        row["verdict"] = "differs";
        rep.add("account_mismatch", "tranche '" + rl.tranche + "': committed account " + al::checksum_address(cl.account) +
                                        ", the training data's " + al::checksum_address(rl.leaf.account),
                {{"tranche", rl.tranche}, {"committed", al::checksum_address(cl.account)}, {"recomputed", al::checksum_address(rl.leaf.account)}});
      }
      tranches.push_back(row);
    }
    for (const auto& l : c.leaves)
      if (!seen.count(l.tranche)) {
        rep.add("tranche_extra", "tranche '" + l.tranche + "' has a leaf in the commitment (amount " + al::to_decimal(l.leaf.amount) +
                                     ") but is not in the training data",
                {{"tranche", l.tranche}, {"committed", share_text(l.leaf.score)}});
        tranches.push_back({{"tranche", l.tranche}, {"share_committed", share_text(l.leaf.score)}, {"score_committed", al::to_decimal(l.leaf.score)},
                            {"amount_committed", al::to_decimal(l.leaf.amount)}, {"account", al::checksum_address(l.leaf.account)},
                            {"verdict", "not in data"}});
      }
    const bool identical = rc.root == c.root && rreport == c.report_sha256;
    match = identical ? "bit_identical" : "within_tolerance";
    recomputation = {{"path", other_path ? "other" : "same"}, {"overrides", overrides}, {"device", recomputed_device},
                     {"committed_device", committed_device}, {"root", al::to_hex(rc.root)}, {"report_sha256", rreport},
                     {"committed_engine_version", committed_engine}};
    if (!vo.store.empty()) recomputation["store"] = vo.store;
    if (!vo.keep.empty()) recomputation["kept"] = fs::absolute(vo.keep).string();
  }
  const bool disputed = !rep.findings.empty();

  // 6. verification.json (canonical, atomic), then the table.
  json v;
  v["format"] = kVerificationFormat;
  v["epoch"] = std::to_string(epoch);
  v["ledger"] = ol.where;
  v["commitment"] = {{"root", al::to_hex(status.root)}, {"manifestHash", al::to_hex(status.manifest_hash)},
                     {"totalReward", al::to_decimal(status.total_reward)}, {"state", status.state},
                     {"revision", status.revision}};
  v["engine"] = {{"version", eng::engine_version()}, {"git_revision", eng::engine_git_revision()}};
  v["tolerance"] = {{"declared", declared}, {"applied", tolerance}};
  v["inputs"] = inputs.checked;
  v["registry"] = registry;
  v["recomputation"] = recomputation;
  v["tranches"] = tranches;
  v["findings"] = rep.findings;
  v["verdict"] = disputed ? "disputed" : "confirmed";
  v["match"] = disputed ? json(nullptr) : json(match);
  const std::string vbytes = eng::canonical(v);
  connectors::write_file_atomic(vo.out, vbytes);

  std::printf("epoch %llu (revision %u) on the %s ledger (%s): root %s, pool %s\n", static_cast<unsigned long long>(epoch),
              static_cast<unsigned>(status.revision), ledger.kind().c_str(), status.state.c_str(), al::to_hex(status.root).c_str(), al::to_decimal(status.total_reward).c_str());
  std::printf("inputs: %zu checked against the manifest, %s\n", inputs.checked.size(), inputs_ok ? "all match" : "MISMATCH (not recomputed)");
  if (!tranches.empty()) {
    std::printf("\n  %-20s %22s %22s %12s %20s %20s  %s\n", "tranche", "committed share", "recomputed share", "difference",
                "committed amount", "recomputed amount", "verdict");
    for (const auto& r : tranches) {
      const std::string diff = r.contains("difference") ? connectors::readable_number(r.at("difference").get<double>()) : "-";
      std::printf("  %-20s %22s %22s %12s %20s %20s  %s\n", r.at("tranche").get<std::string>().c_str(),
                  r.value("share_committed", "-").c_str(), r.value("share_recomputed", "-").c_str(), diff.c_str(),
                  r.value("amount_committed", "-").c_str(), r.value("amount_recomputed", "-").c_str(),
                  r.at("verdict").get<std::string>().c_str());
    }
    std::printf("\n");
  }
  for (const auto& f : rep.findings) std::printf("  ! %s\n", f.at("message").get<std::string>().c_str());
  if (disputed)
    std::printf("verdict: DISPUTED (%zu finding%s, tolerance %s)\n", rep.findings.size(), rep.findings.size() == 1 ? "" : "s",
                connectors::readable_number(tolerance).c_str());
  else
    std::printf("verdict: CONFIRMED (%s, tolerance %s)\n",
                match == "bit_identical" ? "bit-identical: same leaves, root and report" : "within tolerance",
                connectors::readable_number(tolerance).c_str());
  std::printf("wrote %s; verified in %.2f s (recomputation %.2f s)\n", vo.out.c_str(), seconds_since(started), compute_seconds);

  if (!disputed) return 0;
  if (vo.file_dispute) {
    // The reason hash is keccak256 of verification.json's bytes, as `ledger dispute --reason` computes it.
    const al::Bytes32 reason = al::keccak256(vbytes);
    try {
      const std::string tx = ledger.dispute(epoch, reason);
      std::printf("dispute filed for epoch %llu (reason hash %s = keccak256 of %s)%s%s\n", static_cast<unsigned long long>(epoch),
                  al::to_hex(reason).c_str(), vo.out.c_str(), tx.empty() ? "" : ", tx ", tx.c_str());
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "attrace: error: the verdict is disputed but the dispute was not filed: %s\n", ex.what());
      return kExitDisputeNotFiled;
    }
  }
  return kExitDisputed;
}

}  // namespace attrace::cli
