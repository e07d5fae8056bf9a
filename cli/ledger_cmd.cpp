#include "ledger_cmd.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/feature_store.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/toml_util.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/evm.hpp>
#include <attrace/ledger/files.hpp>
#include <attrace/ledger/registry.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
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
  std::string challenge_period = "3d";
  std::string arbiter = "local";
  std::string evm_config;
  std::string key_file;
  bool json = false;
  // per command
  std::string report_dir, epoch, pool, uri, account, tranche, manifest_file, reason_file, artifact, evm_arbiter;
  std::string dataset, example, manifest_out;
  bool all = false, upheld = false, rejected = false;
};

Options opts;

uint64_t parse_epoch(const std::string& s) {
  const al::U256 v = al::u256_from_decimal(s, "epoch");
  ATTRACE_CHECK(v <= al::U256(std::numeric_limits<uint64_t>::max()), InputError, "epoch: '" + s + "' exceeds uint64");
  return static_cast<uint64_t>(v);
}

// Human durations: "3d", "10m", "1h30m", "90s", "0", or plain seconds ("3600").
int64_t parse_duration(const std::string& text, const std::string& what) {
  const std::string bad = what + ": '" + text + "' is not a duration (seconds, or e.g. 3d, 12h, 10m, 90s, 1h30m, 0)";
  ATTRACE_CHECK(!text.empty(), InputError, bad);
  int64_t total = 0;
  size_t i = 0;
  bool any_unit = false;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
    ATTRACE_CHECK(j > i && j - i <= 12, InputError, bad);
    const int64_t n = std::stoll(text.substr(i, j - i));
    int64_t unit = 1;
    if (j < text.size()) {
      switch (text[j]) {
        case 'w': unit = 7 * 86400; break;
        case 'd': unit = 86400; break;
        case 'h': unit = 3600; break;
        case 'm': unit = 60; break;
        case 's': unit = 1; break;
        default: throw InputError(bad);
      }
      any_unit = true;
      ++j;
    } else {
      ATTRACE_CHECK(!any_unit || i == 0, InputError, bad + " (a number after units needs its own unit)");
    }
    total += n * unit;
    ATTRACE_CHECK(total <= (int64_t{1} << 40), InputError, what + ": '" + text + "' is longer than 2^40 seconds");
    i = j;
  }
  return total;
}

// "2026-12-03 21:15:29 UTC".
std::string utc_time(int64_t t) {
  const std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  if (!gmtime_r(&tt, &tm)) return std::to_string(t) + " (unix time)";
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// "2 d 23 h", "5 h 10 m", "3 m 20 s", "42 s": the two leading units.
std::string duration_words(int64_t s) {
  if (s < 0) s = 0;
  const int64_t d = s / 86400, h = s % 86400 / 3600, m = s % 3600 / 60, sec = s % 60;
  char buf[64];
  if (d > 0)
    std::snprintf(buf, sizeof buf, "%lld d %lld h", static_cast<long long>(d), static_cast<long long>(h));
  else if (h > 0)
    std::snprintf(buf, sizeof buf, "%lld h %lld m", static_cast<long long>(h), static_cast<long long>(m));
  else if (m > 0)
    std::snprintf(buf, sizeof buf, "%lld m %lld s", static_cast<long long>(m), static_cast<long long>(sec));
  else
    std::snprintf(buf, sizeof buf, "%lld s", static_cast<long long>(sec));
  return buf;
}

// Where an epoch stands against its challenge window, in words.
std::string window_words(const al::EpochStatus& s, int64_t now) {
  if (s.state == "cancelled") return "cancelled by an upheld dispute";
  if (s.state == "disputed") return "frozen by a dispute until the arbiter resolves it";
  if (now < s.challenge_ends)
    return duration_words(s.challenge_ends - now) + " left; disputes until then, claims after";
  return "window closed: final, claims open";
}

std::optional<al::PrivateKey> load_key(const std::string& key_file) { return load_private_key(key_file); }

al::EvmOptions evm_options(std::string* key_file, const std::string& evm_config = opts.evm_config) {
  return read_evm_config(evm_config, key_file);
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

nlohmann::json status_json(const al::EpochStatus& s, int64_t now) {
  nlohmann::json j = {{"epoch", std::to_string(s.epoch)},       {"exists", s.exists},
                      {"state", s.state},                       {"root", al::to_hex(s.root)},
                      {"manifestHash", al::to_hex(s.manifest_hash)}, {"totalReward", al::to_decimal(s.total_reward)},
                      {"claimed", al::to_decimal(s.claimed)},   {"committedAt", s.committed_at},
                      {"challengeEnds", s.challenge_ends},      {"uri", s.uri},
                      {"revision", s.revision}};
  if (s.exists) {
    j["committedAtUtc"] = utc_time(s.committed_at);
    j["challengeEndsUtc"] = utc_time(s.challenge_ends);
    j["now"] = now;
    j["secondsLeft"] = std::max<int64_t>(0, s.challenge_ends - now);
  }
  return j;
}

void print_status(const al::EpochStatus& s, int64_t now) {
  if (!s.exists) {
    std::printf("epoch %llu: not committed\n", static_cast<unsigned long long>(s.epoch));
    return;
  }
  std::printf("epoch %llu: %s (revision %u%s)\n  root          %s\n  manifest hash %s\n  total reward  %s\n  claimed       %s\n"
              "  committed at  %s\n  challenge end %s (%s)\n",
              static_cast<unsigned long long>(s.epoch), s.state.c_str(), s.revision,
              s.revision > 1 ? (", replaces the cancelled revision " + std::to_string(s.revision - 1)).c_str() : "",
              al::to_hex(s.root).c_str(), al::to_hex(s.manifest_hash).c_str(), al::to_decimal(s.total_reward).c_str(),
              al::to_decimal(s.claimed).c_str(), utc_time(s.committed_at).c_str(), utc_time(s.challenge_ends).c_str(),
              window_words(s, now).c_str());
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

bool looks_like_address(const std::string& s) {
  return s.size() == 42 && s.compare(0, 2, "0x") == 0 && s.find_first_not_of("0123456789abcdefABCDEF", 2) == std::string::npos;
}

// The leaf `proof`/`claim` act on: ACCOUNT is an address (with --tranche when it holds several) or a
// tranche id.
size_t select_leaf(const al::EpochCommitment& c) {
  if (looks_like_address(opts.account)) return c.find(al::address_from_hex(opts.account, "account"), opts.tranche);
  for (size_t i = 0; i < c.leaves.size(); ++i)
    if (c.leaves[i].tranche == opts.account && (opts.tranche.empty() || opts.tranche == opts.account)) return i;
  std::string names;
  for (const auto& l : c.leaves) names += (names.empty() ? "" : ", ") + l.tranche;
  throw InputError("epoch " + std::to_string(c.epoch) + " has no leaf for '" + opts.account +
                   "' (give an account 0x... or one of its tranche ids: " + names + ")");
}

// Refuses an existing epoch manifest file that holds another commitment (same bytes: a re-run).
void refuse_other_manifest(const std::string& path, const al::EpochCommitment& c) {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) return;
  std::string have;
  try {
    have = al::read_input_file(path, "epoch manifest");
  } catch (const InputError&) {
    have.clear();
  }
  if (have == c.manifest) return;
  throw InputError(path + " already exists and holds another commitment (e.g. this report committed to another ledger or "
                          "with another pool); epoch files are never replaced: pass --manifest-out FILE to write this one "
                          "elsewhere");
}

// Writes the manifest under `path` unless a file is there (link() never replaces); an identical
// file is fine, another one is refused as above.
void write_manifest_no_replace(const std::string& path, const al::EpochCommitment& c) {
  refuse_other_manifest(path, c);
  if (std::filesystem::exists(path)) return;
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  connectors::write_file_atomic(tmp, c.manifest);
  const int rc = ::link(tmp.c_str(), path.c_str());
  const int err = errno;
  ::unlink(tmp.c_str());
  if (rc != 0 && err == EEXIST) return refuse_other_manifest(path, c);
  ATTRACE_CHECK(rc == 0, RuntimeFailure, "cannot write " + path + ": " + std::strerror(err));
}

std::string registration_note(const std::vector<al::Registration>& all, const al::Registration& r) {
  const al::Registration* first = al::same_content_as(all, r);
  if (!first) return "";
  return "same content as '" + first->tranche + "' registered earlier (order " + std::to_string(first->order) + ") by " +
         al::checksum_address(first->account);
}

nlohmann::json registration_json(const std::vector<al::Registration>& all, const al::Registration& r) {
  const al::Registration* first = al::same_content_as(all, r);
  return {{"order", r.order},
          {"tranche", r.tranche},
          {"trancheId", al::to_hex(r.tranche_id)},
          {"account", al::checksum_address(r.account)},
          {"license", r.license},
          {"contentRoot", al::to_hex(r.content_root)},
          {"examples", r.example_count},
          {"registeredAt", r.registered_at},
          {"registeredAtUtc", utc_time(r.registered_at)},
          {"registrant", r.registrant},
          {"sameContentAs", first ? nlohmann::json(first->tranche) : nlohmann::json(nullptr)}};
}

void print_registration_row(const std::vector<al::Registration>& all, const al::Registration& r, const char* status) {
  std::printf("%5llu  %-20s %-42s %8llu  %s  %s%s%s\n", static_cast<unsigned long long>(r.order), r.tranche.c_str(),
              al::checksum_address(r.account).c_str(), static_cast<unsigned long long>(r.example_count),
              al::to_hex(r.content_root).c_str(), status, *status && !registration_note(all, r).empty() ? "; " : "",
              registration_note(all, r).c_str());
}

int cmd_register() {
  const auto ds = connectors::read_dataset(opts.dataset, true);
  auto l = open_ledger();
  const auto done = al::register_dataset(*l, ds, opts.dataset);
  const auto all = l->registrations();
  if (opts.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : done) {
      auto e = registration_json(all, r.registration);
      e["alreadyRegistered"] = r.already_registered;
      j.push_back(e);
    }
    std::printf("%s\n", nlohmann::json{{"dataset", opts.dataset}, {"registry", l->source()}, {"tranches", j}}.dump(2).c_str());
    return 0;
  }
  std::printf("%s: %zu tranches on %s\n", opts.dataset.c_str(), done.size(), l->source().c_str());
  std::printf("%5s  %-20s %-42s %8s  %-66s  %s\n", "order", "tranche", "account", "examples", "content root", "");
  for (const auto& r : done)
    print_registration_row(all, r.registration, r.already_registered ? "already registered" : "registered now");
  return 0;
}

int cmd_registrations() {
  auto l = open_ledger();
  const auto all = l->registrations();
  if (opts.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : all) j.push_back(registration_json(all, r));
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  if (all.empty()) {
    std::printf("no tranches registered on %s (attrace ledger register --dataset FILE registers a dataset's tranches)\n",
                l->source().c_str());
    return 0;
  }
  std::printf("%5s  %-20s %-42s %8s  %-66s  %s\n", "order", "tranche", "account", "examples", "content root", "");
  for (const auto& r : all) print_registration_row(all, r, "");
  return 0;
}

int cmd_prove_example() {
  const auto ds = connectors::read_dataset(opts.dataset, true);
  int64_t index = -1;
  if (!opts.example.empty() && opts.example.find_first_not_of("0123456789") == std::string::npos && opts.example.size() <= 18)
    index = std::stoll(opts.example);
  else
    for (size_t i = 0; i < ds.ids.size(); ++i)
      if (ds.ids[i] == opts.example) index = static_cast<int64_t>(i);
  ATTRACE_CHECK(index >= 0 && index < ds.size(), InputError,
                opts.dataset + ": no example '" + opts.example + "' (give an index 0.." + std::to_string(ds.size() - 1) +
                    " or an example id)");
  const auto contents = al::tranche_contents(ds, opts.dataset);
  const auto& c = contents[static_cast<size_t>(ds.tranche[static_cast<size_t>(index)])];
  const size_t k = static_cast<size_t>(std::find(c.examples.begin(), c.examples.end(), index) - c.examples.begin());
  const auto proof = al::content_proof(c.digests, k);
  const al::Bytes32 root = c.root();
  auto l = open_ledger();
  const auto all = l->registrations();
  const al::Registration* reg = nullptr;
  for (const auto& r : all)
    if (r.tranche == c.id) reg = &r;
  ATTRACE_CHECK(reg, InputError, "tranche '" + c.id + "' of example " + std::to_string(index) + " is not registered on " + l->source());
  const bool local = al::verify_content_proof(proof, reg->content_root, c.digests[k]);
  std::optional<bool> on_chain;
  if (auto* evm = dynamic_cast<al::EvmLedger*>(l.get())) on_chain = evm->verify_example(reg->tranche_id, c.digests[k], proof);
  const bool ok = local && (!on_chain || *on_chain);
  if (opts.json) {
    std::vector<std::string> p;
    for (const auto& x : proof) p.push_back(al::to_hex(x));
    nlohmann::json j = {{"example", index}, {"id", ds.ids[static_cast<size_t>(index)]}, {"tranche", c.id},
                        {"digest", al::to_hex(c.digests[k])}, {"leaf", al::to_hex(al::content_leaf(c.digests[k]))},
                        {"contentRoot", al::to_hex(reg->content_root)}, {"datasetRoot", al::to_hex(root)},
                        {"order", reg->order}, {"proof", p}, {"verified", ok}};
    if (on_chain) j["verifiedOnChain"] = *on_chain;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("example %lld (id '%s') of tranche '%s' (registered, order %llu)\n  digest       %s\n  leaf         %s\n"
                "  content root %s\n  proof:\n",
                static_cast<long long>(index), ds.ids[static_cast<size_t>(index)].c_str(), c.id.c_str(),
                static_cast<unsigned long long>(reg->order), al::to_hex(c.digests[k]).c_str(),
                al::to_hex(al::content_leaf(c.digests[k])).c_str(), al::to_hex(reg->content_root).c_str());
    for (const auto& x : proof) std::printf("    %s\n", al::to_hex(x).c_str());
    std::printf("  %s%s\n", local ? "proof verified against the registered root" : "proof does NOT lead to the registered root",
                on_chain ? (*on_chain ? "; the contract's verifyExample accepts it" : "; the contract's verifyExample REFUSES it") : "");
  }
  ATTRACE_CHECK(ok, InputError,
                "example " + std::to_string(index) + " is not in the registered content of tranche '" + c.id +
                    "' (the dataset's tranche root is " + al::to_hex(root) + ", registered " + al::to_hex(reg->content_root) + ")");
  return 0;
}

int cmd_migrate() {
  const std::string was = al::migrate_embedded_ledger(opts.db);
  if (was == al::kEmbeddedSchemaVersion)
    std::printf("%s: already at schema version %s, nothing to do\n", opts.db.c_str(), was.c_str());
  else
    std::printf("%s: migrated from schema version %s to %s (registrations table, epoch revisions)\n", opts.db.c_str(), was.c_str(),
                al::kEmbeddedSchemaVersion);
  return 0;
}

int cmd_init() {
  al::EmbeddedSettings s;
  s.challenge_period = parse_duration(opts.challenge_period, "--challenge-period");
  s.arbiter = opts.arbiter;
  al::create_embedded_ledger(opts.db, s);
  if (opts.json)
    std::printf("%s\n", nlohmann::json{{"db", opts.db}, {"challengePeriod", s.challenge_period}, {"arbiter", s.arbiter},
                                       {"schema", al::kEmbeddedSchemaVersion}}.dump(2).c_str());
  else
    std::printf("created embedded ledger %s (challenge period %s = %lld s: an epoch is final and claimable that long after "
                "its commit; arbiter '%s')\n",
                opts.db.c_str(), duration_words(s.challenge_period).c_str(), static_cast<long long>(s.challenge_period),
                s.arbiter.c_str());
  return 0;
}

int cmd_commit() {
  const uint64_t epoch = parse_epoch(opts.epoch);
  const al::U256 pool = al::u256_from_decimal(opts.pool, "--pool");
  const auto c = al::build_epoch(opts.report_dir, epoch, pool);
  const std::string manifest_path = std::filesystem::absolute(
      opts.manifest_out.empty() ? std::filesystem::path(opts.report_dir) / ("epoch-" + std::to_string(epoch) + ".json")
                                : std::filesystem::path(opts.manifest_out)).string();
  // An epoch file is never replaced: another commitment's file (e.g. the same report committed
  // to a second ledger with another pool) is refused before anything is committed.
  auto l = open_ledger();
  const auto live = l->status(epoch);
  const bool refused_anyway = live.exists && live.state != "cancelled" &&
                              (live.root != c.root || live.manifest_hash != c.manifest_hash || live.total_reward != c.pool);
  if (!refused_anyway) refuse_other_manifest(manifest_path, c);  // else the ledger's EpochExists says more
  const auto r = l->commit(c, opts.uri.empty() ? "file://" + manifest_path : opts.uri);
  // Written once the ledger holds this commitment (a refused commit must not leave a manifest);
  // a re-run after a crash finds the identical file, or writes it.
  write_manifest_no_replace(manifest_path, c);
  if (opts.json) {
    nlohmann::json j = {{"backend", l->kind()}, {"already_committed", r.already_committed}, {"transaction", r.transaction},
                        {"manifest", manifest_path}, {"status", status_json(r.status, l->current_time())}};
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
  const int64_t now = l->current_time();
  if (opts.json)
    std::printf("%s\n", status_json(s, now).dump(2).c_str());
  else
    print_status(s, now);
  return 0;
}

int cmd_epochs() {
  auto l = open_ledger();
  const auto all = l->epochs();
  const int64_t now = l->current_time();
  if (opts.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& s : all) j.push_back(status_json(s, now));
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  if (all.empty()) {
    std::printf("no epochs committed on this ledger yet\n");
    return 0;
  }
  std::printf("%-8s %-4s %-10s %24s %24s  %-24s %s\n", "epoch", "rev", "state", "total reward", "claimed", "challenge end", "");
  for (const auto& s : all)
    std::printf("%-8llu %-4u %-10s %24s %24s  %-24s %s\n", static_cast<unsigned long long>(s.epoch), s.revision, s.state.c_str(),
                al::to_decimal(s.total_reward).c_str(), al::to_decimal(s.claimed).c_str(), utc_time(s.challenge_ends).c_str(),
                window_words(s, now).c_str());
  return 0;
}

int cmd_balance() {
  auto l = open_ledger();
  const al::Address a = al::address_from_hex(opts.account, "account");
  const al::U256 b = l->balance_of(a);
  if (opts.json)
    std::printf("%s\n", nlohmann::json{{"account", al::checksum_address(a)}, {"balance", al::to_decimal(b)}, {"backend", l->kind()}}.dump(2).c_str());
  else
    std::printf("%s: %s %s\n", al::checksum_address(a).c_str(), al::to_decimal(b).c_str(),
                l->kind() == "embedded" ? "(claimed on this ledger, smallest unit)" : "(native balance on chain, smallest unit)");
  return 0;
}

int cmd_proof() {
  auto l = open_ledger();
  const auto c = epoch_manifest(*l, parse_epoch(opts.epoch));
  const size_t i = select_leaf(c);
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
    which.push_back(select_leaf(c));
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
  const int64_t period = parse_duration(opts.challenge_period, "--challenge-period");
  const al::Address a = l.deploy(opts.artifact, arbiter, static_cast<uint64_t>(period));
  if (opts.json)
    std::printf("%s\n", nlohmann::json{{"contract", al::checksum_address(a)}, {"arbiter", al::checksum_address(arbiter)},
                                       {"challengePeriod", period}}.dump(2).c_str());
  else
    std::printf("AttributionLedger deployed at %s (arbiter %s, challenge period %s = %lld s)\n", al::checksum_address(a).c_str(),
                al::checksum_address(arbiter).c_str(), duration_words(period).c_str(), static_cast<long long>(period));
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

std::optional<al::PrivateKey> load_private_key(const std::string& key_file) {
  if (!key_file.empty()) return al::PrivateKey::from_file(key_file);
  if (std::getenv("ATTRACE_PRIVATE_KEY")) return al::PrivateKey::from_env("ATTRACE_PRIVATE_KEY");
  return std::nullopt;
}

al::EvmOptions read_evm_config(const std::string& evm_config, std::string* key_file) {
  ATTRACE_CHECK(!evm_config.empty(), InputError, "--backend evm needs --evm-config FILE (see docs/cli.md)");
  const toml::table doc = connectors::parse_toml_file(evm_config);
  const toml::table* t = doc["evm"].as_table();
  ATTRACE_CHECK(t, InputError, evm_config + ": missing [evm] section");
  const std::string f = evm_config + ": evm.";
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
      *key_file = p.is_absolute() ? *k : (std::filesystem::path(evm_config).parent_path() / p).string();
    }
  }
  return o;
}

void print_commitment(const al::EpochCommitment& c, const al::CommitResult& r, const std::string& where) {
  std::printf("epoch %llu %s %s\n", static_cast<unsigned long long>(c.epoch),
              r.already_committed ? "was already committed (identical) on the" : "committed to the", where.c_str());
  std::printf("  revision %u%s\n  root %s\n  manifest hash %s\n  pool %s\n  challenge window ends %s (%s after the commit; "
              "disputes until then, claims after)%s%s\n\n",
              r.status.revision,
              r.status.revision > 1 ? (" (replaces the cancelled revision " + std::to_string(r.status.revision - 1) + ")").c_str() : "",
              al::to_hex(c.root).c_str(), al::to_hex(c.manifest_hash).c_str(), al::to_decimal(c.pool).c_str(),
              utc_time(r.status.challenge_ends).c_str(), duration_words(r.status.challenge_ends - r.status.committed_at).c_str(),
              r.transaction.empty() ? "" : "\n  transaction ", r.transaction.c_str());
  std::printf("  %-16s %-44s %22s %18s\n", "tranche", "account", "score (1e18 = 100%)", "amount");
  for (const auto& l : c.leaves)
    std::printf("  %-16s %-44s %22s %18s\n", l.tranche.c_str(), al::checksum_address(l.leaf.account).c_str(),
                al::to_decimal(l.leaf.score).c_str(), al::to_decimal(l.leaf.amount).c_str());
}

void add_registry_options(CLI::App* cmd, RegistryOptions& o) {
  auto* db = cmd->add_option("--registry-db", o.db,
                             "Check the training set against the tranches registered on this embedded ledger (content roots)");
  auto* evm = cmd->add_option("--registry-evm", o.evm_config,
                              "Check the training set against the tranches registered on the contract of this [evm] config");
  db->excludes(evm);
}

std::unique_ptr<al::Ledger> open_registry_ledger(const RegistryOptions& o) {
  if (!o.db.empty()) return al::open_embedded_ledger(o.db, {}, "registry-check");
  const al::EvmOptions e = evm_options(nullptr, o.evm_config);
  return std::make_unique<al::EvmLedger>(e, std::nullopt);
}

engine::RegistryBinding check_registry(const RegistryOptions& o, const connectors::Dataset& ds, const std::string& what) {
  auto l = open_registry_ledger(o);
  const auto contents = al::tranche_contents(ds, what);
  std::vector<std::vector<al::Bytes32>> digests;
  for (const auto& c : contents) digests.push_back(l->registered_digests(c.id));
  const std::string name = l->kind() == "embedded" ? "the registry " + o.db : "the registry contract (" + o.evm_config + ")";
  const auto regs = al::check_against_registry(contents, l->registrations(), digests, name);
  engine::RegistryBinding b;
  b.source = l->source();
  for (size_t t = 0; t < contents.size(); ++t)
    b.tranches.push_back({contents[t].id, contents[t].account, contents[t].license, al::to_hex(regs[t].content_root), regs[t].order});
  return b;
}

std::optional<engine::RegistryBinding> check_registry_for_dataset(const RegistryOptions& o, const std::string& train_file) {
  if (o.db.empty() && o.evm_config.empty()) return std::nullopt;
  return check_registry(o, connectors::read_dataset(train_file, true), train_file);
}

std::optional<engine::RegistryBinding> check_registry_for_store(const RegistryOptions& o, const std::string& store) {
  if (o.db.empty() && o.evm_config.empty()) return std::nullopt;
  const connectors::FeatureStoreReader reader(store);
  const auto& l = reader.layout();
  connectors::Dataset d;
  d.path = store;
  d.input_shape = {l.rows};
  d.ids = l.ids;
  d.tranche = l.tranche;
  d.digests = l.digests;
  nlohmann::json spec;
  try {
    spec = nlohmann::json::parse(l.spec);
    for (const auto& t : spec.at("tranches"))
      d.tranches.push_back({t.at("id").get<std::string>(), t.at("account").get<std::string>(), t.value("name", std::string()),
                            t.value("license", std::string())});
  } catch (const nlohmann::json::exception& e) {
    throw InputError(store + ": the store's spec has no readable tranche table (" + e.what() + ")");
  }
  return check_registry(o, d, store);
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
    auto* account = c->add_option("ACCOUNT", opts.account, "Contributor account (0x...) or tranche id");
    c->add_option("--tranche", opts.tranche, "Tranche id, when the account holds several");
    c->add_option("--manifest", opts.manifest_file, "Epoch manifest file (evm; embedded keeps its own)");
    return account;
  };
  auto* init = ledger->add_subcommand("init", "Create a new embedded ledger database (its settings are fixed then)");
  init->add_option("--db", opts.db, "Database file to create (must not exist)")->capture_default_str();
  init->add_option("--challenge-period", opts.challenge_period,
                   "Time from commit until an epoch is final and claimable: seconds or 3d, 12h, 10m, 90s, 1h30m, 0")
      ->capture_default_str();
  init->add_option("--arbiter", opts.arbiter, "Identity (`--as NAME`) allowed to resolve disputes")->capture_default_str();
  init->add_flag("--json", opts.json, "Machine-readable output");
  auto* commit = ledger->add_subcommand("commit", "Commit an attribution output directory as an epoch");
  commit->add_option("REPORT_DIR", opts.report_dir, "Output directory of `attrace attribute`")->required()->check(CLI::ExistingDirectory);
  commit->add_option("--epoch", opts.epoch, "Epoch number (uint64)")->required();
  commit->add_option("--pool", opts.pool, "Reward pool in the token's smallest unit (uint256, decimal)")->required();
  commit->add_option("--uri", opts.uri, "Where the epoch manifest can be fetched (default: file:// path written next to the report)");
  commit->add_option("--manifest-out", opts.manifest_out,
                     "Epoch manifest file to write (default REPORT_DIR/epoch-N.json; an existing file with another commitment is "
                     "refused, never replaced)");
  common(commit);
  auto* status = ledger->add_subcommand("status", "Show an epoch's state");
  status->add_option("EPOCH", opts.epoch, "Epoch number")->required();
  common(status);
  auto* epochs = ledger->add_subcommand("epochs", "List every committed epoch: revision, state, pool, claimed, challenge window");
  common(epochs);
  auto* balance = ledger->add_subcommand("balance", "Amount an account has received (embedded: its claims; evm: native balance)");
  balance->add_option("ACCOUNT", opts.account, "Account (0x...)")->required();
  common(balance);
  auto* reg = ledger->add_subcommand("register", "Register every tranche of a training dataset by content root (idempotent)");
  reg->add_option("--dataset", opts.dataset, "Training dataset (.h5) with a tranche table")->required();
  common(reg);
  auto* regs = ledger->add_subcommand("registrations", "List registered tranches in registration order (duplicated content named)");
  common(regs);
  auto* prove = ledger->add_subcommand("prove-example", "Membership proof of one example in its tranche's registered content root");
  prove->add_option("--dataset", opts.dataset, "Training dataset (.h5)")->required();
  prove->add_option("--example", opts.example, "Example index (0-based) or example id")->required();
  common(prove);
  auto* migrate = ledger->add_subcommand("migrate", "Upgrade an embedded ledger of an older schema (1) to the current one");
  migrate->add_option("--db", opts.db, "Embedded ledger database")->required();
  auto* proof = ledger->add_subcommand("proof", "Print a leaf (by account or tranche id) and its Merkle proof");
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
  deploy->add_option("--challenge-period", opts.challenge_period,
                     "Time from commit until an epoch is final: seconds or 3d, 12h, 10m, 90s, 1h30m, 0")
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
    if (n == "epochs") return cmd_epochs();
    if (n == "balance") return cmd_balance();
    if (n == "register") return cmd_register();
    if (n == "registrations") return cmd_registrations();
    if (n == "prove-example") return cmd_prove_example();
    if (n == "migrate") return cmd_migrate();
  }
  return 2;
}

}  // namespace attrace::cli
