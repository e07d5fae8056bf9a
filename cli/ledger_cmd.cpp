#include "ledger_cmd.hpp"

#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/toml_util.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/evm.hpp>
#include <attrace/ledger/files.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <limits>
#include <set>

namespace attrace::cli {
namespace {

namespace al = attrace::ledger;

struct Options {
  std::string backend = "embedded";
  std::string db = "attrace-ledger.db";
  std::string actor = "local";
  int64_t challenge_period = 3 * 24 * 3600;
  std::string arbiter = "local";
  std::string evm_config;
  std::string key_file;
  bool json = false;
  // per command
  std::string report_dir, epoch, pool, uri, account, tranche, manifest_file, reason_file, artifact, evm_arbiter;
  bool all = false, upheld = false, rejected = false;
};

Options opts;

uint64_t parse_epoch(const std::string& s) {
  const al::U256 v = al::u256_from_decimal(s, "epoch");
  ATTRACE_CHECK(v <= al::U256(std::numeric_limits<uint64_t>::max()), InputError, "epoch: '" + s + "' exceeds uint64");
  return static_cast<uint64_t>(v);
}

std::optional<al::PrivateKey> load_key(const std::string& key_file) {
  if (!key_file.empty()) return al::PrivateKey::from_file(key_file);
  if (std::getenv("ATTRACE_PRIVATE_KEY")) return al::PrivateKey::from_env("ATTRACE_PRIVATE_KEY");
  return std::nullopt;
}

al::EvmOptions evm_options(std::string* key_file) {
  ATTRACE_CHECK(!opts.evm_config.empty(), InputError, "--backend evm needs --evm-config FILE (see docs/cli.md)");
  const toml::table doc = connectors::parse_toml_file(opts.evm_config);
  const toml::table* t = doc["evm"].as_table();
  ATTRACE_CHECK(t, InputError, opts.evm_config + ": missing [evm] section");
  const std::string f = opts.evm_config + ": evm.";
  al::EvmOptions o;
  for (auto&& [k, v] : *t) {
    (void)v;
    static const std::set<std::string> keys = {"rpc_url", "chain_id", "contract", "confirmations", "rpc_timeout_ms",
                                               "receipt_timeout_ms", "legacy", "key_file"};
    ATTRACE_CHECK(keys.count(std::string(k.str())), InputError, f + std::string(k.str()) + ": unknown setting");
  }
  o.rpc_url = (*t)["rpc_url"].value_or(o.rpc_url);
  // Integers only (toml++ would convert a float such as 1e22 without a range check), in range.
  auto integer = [&](const char* key, int64_t fallback, int64_t lowest, int64_t highest) {
    const toml::node_view<const toml::node> n = (*t)[key];
    if (!n) return fallback;
    ATTRACE_CHECK(n.is_integer() && *n.value<int64_t>() >= lowest && *n.value<int64_t>() <= highest, InputError,
                  f + key + " must be an integer in [" + std::to_string(lowest) + ", " + std::to_string(highest) + "]");
    return *n.value<int64_t>();
  };
  ATTRACE_CHECK((*t)["chain_id"].is_integer(), InputError, f + "chain_id (positive integer) is required");
  o.chain_id = static_cast<uint64_t>(integer("chain_id", 0, 1, std::numeric_limits<int64_t>::max()));
  if (auto c = (*t)["contract"].value<std::string>()) o.contract = al::address_from_hex(*c, f + "contract");
  o.confirmations = static_cast<unsigned>(integer("confirmations", 1, 0, 1000000));
  o.rpc_timeout = std::chrono::milliseconds(integer("rpc_timeout_ms", 10000, 1, int64_t{1} << 40));
  o.receipt_timeout = std::chrono::milliseconds(integer("receipt_timeout_ms", 120000, 1, int64_t{1} << 40));
  o.legacy = (*t)["legacy"].value_or(false);
  if (key_file && key_file->empty()) {
    if (auto k = (*t)["key_file"].value<std::string>()) {
      const std::filesystem::path p(*k);
      *key_file = p.is_absolute() ? *k : (std::filesystem::path(opts.evm_config).parent_path() / p).string();
    }
  }
  return o;
}

std::unique_ptr<al::Ledger> open_ledger() {
  if (opts.backend == "embedded") {
    // Only `ledger init` creates a database: every other command needs an existing, intact one.
    return al::open_embedded_ledger(opts.db, {}, opts.actor);
  }
  std::string key_file = opts.key_file;
  const al::EvmOptions o = evm_options(&key_file);
  return std::make_unique<al::EvmLedger>(o, load_key(key_file));
}

nlohmann::json status_json(const al::EpochStatus& s) {
  return {{"epoch", std::to_string(s.epoch)},       {"exists", s.exists},
          {"state", s.state},                       {"root", al::to_hex(s.root)},
          {"manifestHash", al::to_hex(s.manifest_hash)}, {"totalReward", al::to_decimal(s.total_reward)},
          {"claimed", al::to_decimal(s.claimed)},   {"committedAt", s.committed_at},
          {"challengeEnds", s.challenge_ends},      {"uri", s.uri}};
}

void print_status(const al::EpochStatus& s) {
  if (!s.exists) {
    std::printf("epoch %llu: not committed\n", static_cast<unsigned long long>(s.epoch));
    return;
  }
  std::printf("epoch %llu: %s\n  root          %s\n  manifest hash %s\n  total reward  %s\n  claimed       %s\n"
              "  committed at  %lld\n  challenge end %lld\n",
              static_cast<unsigned long long>(s.epoch), s.state.c_str(), al::to_hex(s.root).c_str(),
              al::to_hex(s.manifest_hash).c_str(), al::to_decimal(s.total_reward).c_str(), al::to_decimal(s.claimed).c_str(),
              static_cast<long long>(s.committed_at), static_cast<long long>(s.challenge_ends));
  if (!s.uri.empty()) std::printf("  uri           %s\n", s.uri.c_str());
}

// The epoch's manifest: from --manifest, else from the ledger (embedded keeps it). It must hash
// to what the ledger recorded.
al::EpochCommitment epoch_manifest(al::Ledger& l, uint64_t epoch) {
  std::string bytes = opts.manifest_file.empty() ? l.manifest(epoch) : al::read_input_file(opts.manifest_file, "epoch manifest");
  ATTRACE_CHECK(!bytes.empty(), InputError,
                "epoch " + std::to_string(epoch) + ": this ledger keeps only the manifest hash; pass --manifest FILE");
  const auto c = al::load_epoch_manifest(bytes, opts.manifest_file.empty() ? "stored manifest" : opts.manifest_file);
  ATTRACE_CHECK(c.epoch == epoch, InputError, "manifest is for epoch " + std::to_string(c.epoch) + ", not " + std::to_string(epoch));
  const auto s = l.status(epoch);
  ATTRACE_CHECK(s.exists, InputError, "epoch " + std::to_string(epoch) + " is not on the ledger");
  ATTRACE_CHECK(s.manifest_hash == c.manifest_hash && s.root == c.root, InputError,
                "epoch " + std::to_string(epoch) + ": manifest does not match the ledger's root/manifest hash");
  return c;
}

nlohmann::json leaf_json(const al::EpochCommitment& c, size_t i) {
  const auto& l = c.leaves[i];
  std::vector<std::string> proof;
  for (const auto& p : c.proof(i)) proof.push_back(al::to_hex(p));
  return {{"epoch", std::to_string(c.epoch)}, {"tranche", l.tranche}, {"trancheId", al::to_hex(l.leaf.tranche_id)},
          {"account", al::checksum_address(l.leaf.account)}, {"score", al::to_decimal(l.leaf.score)},
          {"amount", al::to_decimal(l.leaf.amount)}, {"leaf", al::to_hex(l.hash)}, {"proof", proof}};
}

int cmd_init() {
  al::EmbeddedSettings s;
  s.challenge_period = opts.challenge_period;
  s.arbiter = opts.arbiter;
  al::create_embedded_ledger(opts.db, s);
  if (opts.json)
    std::printf("%s\n", nlohmann::json{{"db", opts.db}, {"challengePeriod", s.challenge_period}, {"arbiter", s.arbiter},
                                       {"schema", al::kEmbeddedSchemaVersion}}.dump(2).c_str());
  else
    std::printf("created embedded ledger %s (challenge period %lld s, arbiter '%s')\n", opts.db.c_str(),
                static_cast<long long>(s.challenge_period), s.arbiter.c_str());
  return 0;
}

int cmd_commit() {
  const uint64_t epoch = parse_epoch(opts.epoch);
  const al::U256 pool = al::u256_from_decimal(opts.pool, "--pool");
  const auto c = al::build_epoch(opts.report_dir, epoch, pool);
  const std::string manifest_path =
      std::filesystem::absolute(std::filesystem::path(opts.report_dir) / ("epoch-" + std::to_string(epoch) + ".json")).string();
  auto l = open_ledger();
  const auto r = l->commit(c, opts.uri.empty() ? "file://" + manifest_path : opts.uri);
  // Written once the ledger holds this commitment (a refused commit must not replace the
  // manifest of the one on record); a re-run after a crash writes it again, identically.
  connectors::write_file_atomic(manifest_path, c.manifest);
  if (opts.json) {
    nlohmann::json j = {{"backend", l->kind()}, {"already_committed", r.already_committed}, {"transaction", r.transaction},
                        {"manifest", manifest_path}, {"status", status_json(r.status)}};
    j["leaves"] = nlohmann::json::array();
    for (size_t i = 0; i < c.leaves.size(); ++i) j["leaves"].push_back(leaf_json(c, i));
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    print_commitment(c, r, l->kind() == "embedded" ? "embedded ledger " + opts.db : "EVM ledger");
    std::printf("  epoch manifest: %s\n", manifest_path.c_str());
  }
  return 0;
}

int cmd_status() {
  auto l = open_ledger();
  const auto s = l->status(parse_epoch(opts.epoch));
  if (opts.json)
    std::printf("%s\n", status_json(s).dump(2).c_str());
  else
    print_status(s);
  return 0;
}

int cmd_proof() {
  auto l = open_ledger();
  const auto c = epoch_manifest(*l, parse_epoch(opts.epoch));
  const size_t i = c.find(al::address_from_hex(opts.account, "account"), opts.tranche);
  const auto j = leaf_json(c, i);
  if (opts.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("epoch %s  tranche %s  account %s\n  score  %s\n  amount %s\n  leaf   %s\n  proof:\n", j["epoch"].get<std::string>().c_str(),
                j["tranche"].get<std::string>().c_str(), j["account"].get<std::string>().c_str(),
                j["score"].get<std::string>().c_str(), j["amount"].get<std::string>().c_str(), j["leaf"].get<std::string>().c_str());
    for (const auto& p : j["proof"]) std::printf("    %s\n", p.get<std::string>().c_str());
  }
  return 0;
}

int cmd_claim() {
  auto l = open_ledger();
  const auto c = epoch_manifest(*l, parse_epoch(opts.epoch));
  std::vector<size_t> which;
  if (opts.all) {
    for (size_t i = 0; i < c.leaves.size(); ++i)
      if (!l->claimed(c.leaves[i].leaf)) which.push_back(i);
  } else {
    ATTRACE_CHECK(!opts.account.empty(), InputError, "claim: name an ACCOUNT or pass --all");
    which.push_back(c.find(al::address_from_hex(opts.account, "account"), opts.tranche));
  }
  nlohmann::json out = nlohmann::json::array();
  for (size_t i : which) {
    const std::string tx = l->claim(c.leaves[i].leaf, c.proof(i));
    out.push_back({{"tranche", c.leaves[i].tranche}, {"account", al::checksum_address(c.leaves[i].leaf.account)},
                   {"amount", al::to_decimal(c.leaves[i].leaf.amount)}, {"transaction", tx}});
    if (!opts.json)
      std::printf("claimed %s for %s (tranche %s)%s%s\n", al::to_decimal(c.leaves[i].leaf.amount).c_str(),
                  al::checksum_address(c.leaves[i].leaf.account).c_str(), c.leaves[i].tranche.c_str(), tx.empty() ? "" : "  tx ",
                  tx.c_str());
  }
  if (opts.json) std::printf("%s\n", out.dump(2).c_str());
  if (!opts.json && which.empty()) std::printf("nothing left to claim in epoch %s\n", opts.epoch.c_str());
  return 0;
}

int cmd_dispute() {
  // A directory, an empty file or a FIFO is refused here: its "content" would be hashed as empty
  // input and freeze the epoch for no stated reason.
  const std::string reason = al::read_input_file(opts.reason_file, "--reason");
  const al::Bytes32 h = al::keccak256(reason);
  auto l = open_ledger();
  const std::string tx = l->dispute(parse_epoch(opts.epoch), h);
  if (opts.json)
    std::printf("%s\n", nlohmann::json{{"epoch", opts.epoch}, {"reasonHash", al::to_hex(h)}, {"transaction", tx}}.dump(2).c_str());
  else
    std::printf("epoch %s disputed (reason hash %s)%s%s\n", opts.epoch.c_str(), al::to_hex(h).c_str(), tx.empty() ? "" : ", tx ", tx.c_str());
  return 0;
}

int cmd_resolve() {
  ATTRACE_CHECK(opts.upheld != opts.rejected, InputError, "resolve: pass exactly one of --upheld or --rejected");
  auto l = open_ledger();
  const std::string tx = l->resolve(parse_epoch(opts.epoch), opts.upheld);
  if (opts.json)
    std::printf("%s\n", nlohmann::json{{"epoch", opts.epoch}, {"upheld", opts.upheld}, {"transaction", tx}}.dump(2).c_str());
  else
    std::printf("epoch %s: dispute %s%s%s\n", opts.epoch.c_str(), opts.upheld ? "upheld, epoch cancelled" : "rejected, epoch continues",
                tx.empty() ? "" : ", tx ", tx.c_str());
  return 0;
}

// EVM settings and a signing key that `command` cannot do without.
struct EvmSigner {
  al::EvmOptions options;
  al::PrivateKey key;
};
EvmSigner evm_signer(const std::string& command) {
  ATTRACE_CHECK(opts.backend == "evm", InputError, command + ": only for --backend evm");
  std::string key_file = opts.key_file;
  al::EvmOptions o = evm_options(&key_file);
  auto key = load_key(key_file);
  ATTRACE_CHECK(key.has_value(), InputError, command + ": no private key (set ATTRACE_PRIVATE_KEY, --key-file or evm.key_file)");
  return {std::move(o), *key};
}

int cmd_deploy() {
  const auto [o, signer] = evm_signer("deploy");
  const auto key = std::optional<al::PrivateKey>(signer);
  al::EvmLedger l(o, key);
  const al::Address arbiter = opts.evm_arbiter.empty() ? key->address() : al::address_from_hex(opts.evm_arbiter, "--arbiter");
  const al::Address a = l.deploy(opts.artifact, arbiter, static_cast<uint64_t>(opts.challenge_period));
  if (opts.json)
    std::printf("%s\n", nlohmann::json{{"contract", al::checksum_address(a)}, {"arbiter", al::checksum_address(arbiter)},
                                       {"challengePeriod", opts.challenge_period}}.dump(2).c_str());
  else
    std::printf("AttributionLedger deployed at %s (arbiter %s, challenge period %lld s)\n", al::checksum_address(a).c_str(),
                al::checksum_address(arbiter).c_str(), static_cast<long long>(opts.challenge_period));
  return 0;
}

int cmd_receipt() {
  const auto [o, signer] = evm_signer("receipt");
  const auto key = std::optional<al::PrivateKey>(signer);
  al::EvmLedger l(o, key);
  const auto s = l.status(parse_epoch(opts.epoch));
  ATTRACE_CHECK(s.exists, InputError, "epoch " + opts.epoch + " is not on the ledger");
  const auto sig = key->sign(al::receipt_digest(o.chain_id, o.contract, s.epoch, s.root, s.manifest_hash, s.total_reward));
  const nlohmann::json j = {{"signer", al::checksum_address(key->address())}, {"epoch", opts.epoch}, {"root", al::to_hex(s.root)},
                            {"manifestHash", al::to_hex(s.manifest_hash)}, {"totalReward", al::to_decimal(s.total_reward)},
                            {"signature", al::to_hex(sig.rsv())}};
  std::printf("%s\n", j.dump(2).c_str());  // a receipt is data to pass on: always JSON
  return 0;
}

}  // namespace

void print_commitment(const al::EpochCommitment& c, const al::CommitResult& r, const std::string& where) {
  std::printf("epoch %llu %s %s\n", static_cast<unsigned long long>(c.epoch),
              r.already_committed ? "was already committed (identical) on the" : "committed to the", where.c_str());
  std::printf("  root %s\n  manifest hash %s\n  pool %s, challenge window ends at %lld (unix time)%s%s\n\n",
              al::to_hex(c.root).c_str(), al::to_hex(c.manifest_hash).c_str(), al::to_decimal(c.pool).c_str(),
              static_cast<long long>(r.status.challenge_ends), r.transaction.empty() ? "" : "\n  transaction ",
              r.transaction.c_str());
  std::printf("  %-16s %-44s %22s %18s\n", "tranche", "account", "score (1e18 = 100%)", "amount");
  for (const auto& l : c.leaves)
    std::printf("  %-16s %-44s %22s %18s\n", l.tranche.c_str(), al::checksum_address(l.leaf.account).c_str(),
                al::to_decimal(l.leaf.score).c_str(), al::to_decimal(l.leaf.amount).c_str());
}

CLI::App* add_ledger_commands(CLI::App& app) {
  auto* ledger = app.add_subcommand("ledger", "Commit attribution vectors and reward splits; proofs, claims, disputes");
  ledger->require_subcommand(1);
  auto common = [](CLI::App* c) {
    c->add_option("--backend", opts.backend, "embedded (SQLite, default) or evm")->check(CLI::IsMember({"embedded", "evm"}));
    c->add_option("--db", opts.db, "Embedded ledger database")->capture_default_str();
    c->add_option("--as", opts.actor, "Embedded ledger: who acts (the arbiter resolves)")->capture_default_str();
    c->add_option("--evm-config", opts.evm_config, "TOML with [evm] rpc_url, chain_id, contract, ... (docs/cli.md)");
    c->add_option("--key-file", opts.key_file, "File holding the signing key (hex); default: $ATTRACE_PRIVATE_KEY");
    c->add_flag("--json", opts.json, "Machine-readable output");
  };
  // EPOCH ACCOUNT [--tranche] [--manifest]: which leaf `proof` and `claim` act on. Returns ACCOUNT.
  auto leaf_selector = [](CLI::App* c) {
    c->add_option("EPOCH", opts.epoch, "Epoch number")->required();
    auto* account = c->add_option("ACCOUNT", opts.account, "Contributor account (0x...)");
    c->add_option("--tranche", opts.tranche, "Tranche id, when the account holds several");
    c->add_option("--manifest", opts.manifest_file, "Epoch manifest file (evm; embedded keeps its own)");
    return account;
  };
  auto* init = ledger->add_subcommand("init", "Create a new embedded ledger database (its settings are fixed then)");
  init->add_option("--db", opts.db, "Database file to create (must not exist)")->capture_default_str();
  init->add_option("--challenge-period", opts.challenge_period, "Seconds from commit until an epoch is final")
      ->capture_default_str();
  init->add_option("--arbiter", opts.arbiter, "Identity (`--as NAME`) allowed to resolve disputes")->capture_default_str();
  init->add_flag("--json", opts.json, "Machine-readable output");
  auto* commit = ledger->add_subcommand("commit", "Commit an attribution output directory as an epoch");
  commit->add_option("REPORT_DIR", opts.report_dir, "Output directory of `attrace attribute`")->required()->check(CLI::ExistingDirectory);
  commit->add_option("--epoch", opts.epoch, "Epoch number (uint64)")->required();
  commit->add_option("--pool", opts.pool, "Reward pool in the token's smallest unit (uint256, decimal)")->required();
  commit->add_option("--uri", opts.uri, "Where the epoch manifest can be fetched (default: file:// path written next to the report)");
  common(commit);
  auto* status = ledger->add_subcommand("status", "Show an epoch's state");
  status->add_option("EPOCH", opts.epoch, "Epoch number")->required();
  common(status);
  auto* proof = ledger->add_subcommand("proof", "Print an account's leaf and Merkle proof");
  leaf_selector(proof)->required();
  common(proof);
  auto* claim = ledger->add_subcommand("claim", "Claim an account's reward (or every unclaimed leaf with --all)");
  leaf_selector(claim);
  claim->add_flag("--all", opts.all, "Claim every unclaimed leaf");
  common(claim);
  auto* dispute = ledger->add_subcommand("dispute", "Dispute an epoch within its challenge window");
  dispute->add_option("EPOCH", opts.epoch, "Epoch number")->required();
  dispute->add_option("--reason", opts.reason_file, "File stating the reason (its keccak-256 is recorded)")->required();
  common(dispute);
  auto* resolve = ledger->add_subcommand("resolve", "Arbiter: uphold (cancel the epoch) or reject a dispute");
  resolve->add_option("EPOCH", opts.epoch, "Epoch number")->required();
  resolve->add_flag("--upheld", opts.upheld, "Uphold the dispute: the epoch is cancelled");
  resolve->add_flag("--rejected", opts.rejected, "Reject the dispute: the epoch continues");
  common(resolve);
  auto* deploy = ledger->add_subcommand("deploy", "Deploy the AttributionLedger contract (evm)");
  deploy->add_option("--artifact", opts.artifact, "forge artifact: out/AttributionLedger.sol/AttributionLedger.json")->required();
  deploy->add_option("--arbiter-address", opts.evm_arbiter, "Arbiter address (default: the deployer)");
  deploy->add_option("--challenge-period", opts.challenge_period, "Seconds from commit until an epoch is final")
      ->capture_default_str();
  common(deploy);
  auto* receipt = ledger->add_subcommand("receipt", "Sign an EIP-712 EpochCommitment receipt for an epoch on chain (evm)");
  receipt->add_option("EPOCH", opts.epoch, "Epoch number")->required();
  common(receipt);
  return ledger;
}

int run_ledger_command(CLI::App* ledger) {
  for (auto* sub : ledger->get_subcommands()) {
    const std::string n = sub->get_name();
    if (n == "init") return cmd_init();
    if (n == "commit") return cmd_commit();
    if (n == "status") return cmd_status();
    if (n == "proof") return cmd_proof();
    if (n == "claim") return cmd_claim();
    if (n == "dispute") return cmd_dispute();
    if (n == "resolve") return cmd_resolve();
    if (n == "deploy") return cmd_deploy();
    if (n == "receipt") return cmd_receipt();
  }
  return 2;
}

}  // namespace attrace::cli
