// ledger-client/: keccak and key known answers, Merkle roots/proofs against OpenZeppelin's
// @openzeppelin/merkle-tree (run with node during the test), exact reward split properties,
// epochs from reports, and the embedded SQLite ledger's rules, history and crash safety.
#include "ledger_fixtures.hpp"

#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/epoch.hpp>
#include <attrace/ledger/files.hpp>
#include <attrace/ledger/merkle.hpp>
#include <attrace/ledger/registry.hpp>
#include <attrace/ledger/rewards.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/hash.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <functional>
#include <filesystem>
#include <map>
#include <random>

namespace al = attrace::ledger;
using attrace::test::read_text;
using attrace::test::refusal_of;
using attrace::test::TempDir;
using attrace::test::contracts_dir;
using attrace::test::write_report;
using attrace::test::write_text;

namespace {

al::Bytes32 random_bytes32(std::mt19937_64& rng) {
  al::Bytes32 b;
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}
al::Address random_address(std::mt19937_64& rng) {
  al::Address a;
  for (auto& x : a) x = static_cast<uint8_t>(rng());
  return a;
}
al::U256 random_u256(std::mt19937_64& rng, int bits) {
  al::U256 v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 64) | rng();
  return bits >= 256 ? v : v >> (256 - bits);
}

TEST(Keccak, KnownAnswers) {
  EXPECT_EQ(al::to_hex(al::keccak256("")), "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
  EXPECT_EQ(al::to_hex(al::keccak256("abc")), "0x4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45");
  // A function selector everybody knows: transfer(address,uint256) = 0xa9059cbb.
  EXPECT_EQ(al::to_hex(al::keccak256("transfer(address,uint256)")).substr(0, 10), "0xa9059cbb");
}

TEST(Keys, AddressOfTheEip155ExampleKey) {
  const auto key = al::PrivateKey::from_hex("0x4646464646464646464646464646464646464646464646464646464646464646");
  EXPECT_EQ(al::checksum_address(key.address()), "0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F");
  const auto digest = al::keccak256("attrace");
  const auto sig = key.sign(digest);
  EXPECT_EQ(al::recover_address(digest, sig), key.address());
  // Low s: s <= n/2 (OpenZeppelin's ECDSA rejects the high half).
  const al::U256 half_n("0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0");
  EXPECT_LE(al::from_word(sig.s.data()), half_n);
}

TEST(Keys, BadKeysNeverEchoTheKey) {
  const std::string secret = "0x12345678deadbeef";
  try {
    al::PrivateKey::from_hex(secret);
    FAIL();
  } catch (const attrace::InputError& e) {
    EXPECT_EQ(std::string(e.what()).find("deadbeef"), std::string::npos) << e.what();
  }
  EXPECT_THROW(al::PrivateKey::from_hex(std::string(64, '0')), attrace::InputError);  // zero is not a key
  EXPECT_THROW(al::PrivateKey::from_env("ATTRACE_TEST_UNSET_KEY_VARIABLE"), attrace::InputError);
}

TEST(Addresses, ChecksumIsEnforcedOnMixedCase) {
  EXPECT_NO_THROW(al::address_from_hex("0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F", "a"));
  EXPECT_NO_THROW(al::address_from_hex("0x9d8a62f656a8d1615c1294fd71e9cfb3e4855a4f", "a"));
  EXPECT_THROW(al::address_from_hex("0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4f", "a"), attrace::InputError);
}

// Roots and proofs equal OpenZeppelin's for random leaf sets made here, and verify.
class MerkleVsOpenZeppelin : public ::testing::TestWithParam<int> {};

TEST_P(MerkleVsOpenZeppelin, RootsProofsAndLeafHashes) {
  ASSERT_FALSE(contracts_dir().empty());
  ASSERT_TRUE(std::filesystem::exists(contracts_dir() + "/node_modules/@openzeppelin/merkle-tree"))
      << "npm packages missing: run scripts/setup.sh";
  const int n = GetParam();
  std::mt19937_64 rng(1000 + n);
  std::vector<al::Leaf> leaves;
  nlohmann::json rows = nlohmann::json::array();
  for (int i = 0; i < n; ++i) {
    al::Leaf l;
    l.epoch = rng();
    l.tranche_id = random_bytes32(rng);
    l.account = random_address(rng);
    l.score = random_u256(rng, 1 + static_cast<int>(rng() % 256));
    l.amount = random_u256(rng, 1 + static_cast<int>(rng() % 256));
    leaves.push_back(l);
    rows.push_back({std::to_string(l.epoch), al::to_hex(l.tranche_id), al::to_hex(l.account), al::to_decimal(l.score),
                    al::to_decimal(l.amount)});
  }
  TempDir d;
  write_text(d / "in.json", nlohmann::json{{"rows", rows}}.dump());
  const std::string cmd = "cd '" + contracts_dir() + "' && node tools/oz_merkle.mjs '" + (d / "in.json") + "' '" + (d / "out.json") + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto ref = nlohmann::json::parse(read_text(d / "out.json"));
  std::vector<al::Bytes32> hashes;
  for (int i = 0; i < n; ++i) {
    hashes.push_back(al::leaf_hash(leaves[static_cast<size_t>(i)]));
    ASSERT_EQ(al::to_hex(hashes.back()), ref["leaves"][static_cast<size_t>(i)]) << "leaf " << i;
  }
  const al::MerkleTree tree(hashes);
  ASSERT_EQ(al::to_hex(tree.root()), ref["root"]);
  for (int i = 0; i < n; ++i) {
    const auto proof = tree.proof(hashes[static_cast<size_t>(i)]);
    std::vector<std::string> hex;
    for (const auto& p : proof) hex.push_back(al::to_hex(p));
    ASSERT_EQ(nlohmann::json(hex), ref["proofs"][static_cast<size_t>(i)]) << "proof " << i;
    ASSERT_TRUE(al::verify_proof(proof, tree.root(), hashes[static_cast<size_t>(i)]));
  }
  if (n > 1) {  // a proof of one leaf does not prove another
    EXPECT_FALSE(al::verify_proof(tree.proof(hashes[0]), tree.root(), hashes[1]));
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, MerkleVsOpenZeppelin, ::testing::Values(1, 2, 3, 7, 1025));

TEST(Rewards, QuantizeIsExactRoundHalfEven) {
  EXPECT_EQ(al::quantize_share(0.5, "s"), al::U256("500000000000000000"));
  EXPECT_EQ(al::quantize_share(1.0, "s"), al::kScoreScale);
  EXPECT_EQ(al::quantize_share(0.0, "s"), al::U256(0));
  // 0.1 is 3602879701896397 / 2^55 = 0.1000000000000000055511151231257827...
  EXPECT_EQ(al::quantize_share(0.1, "s"), al::U256("100000000000000006"));
  EXPECT_EQ(al::quantize_share(1e-300, "s"), al::U256(0));
  EXPECT_THROW(al::quantize_share(-0.25, "s"), attrace::InputError);
  EXPECT_THROW(al::quantize_share(1.5, "s"), attrace::InputError);
  EXPECT_THROW(al::quantize_share(std::nan(""), "s"), attrace::InputError);
}

TEST(Rewards, SplitSumsToThePoolForRandom256BitPools) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t n = 1 + rng() % 40;
    const al::U256 pool = 1 + random_u256(rng, 1 + static_cast<int>(rng() % 256)) % ((std::numeric_limits<al::U256>::max)() - 1);
    std::vector<al::SplitEntry> e(n);
    al::U512 total = 0;
    for (auto& x : e) {
      x.score = rng() % 3 == 0 ? al::U256(0) : random_u256(rng, 1 + static_cast<int>(rng() % 200));
      x.account = random_address(rng);
      x.tranche_id = random_bytes32(rng);
      total += x.score;
    }
    if (total == 0) e[0].score = 1, total = 1;
    const auto a = al::split_rewards(pool, e);
    al::U512 sum = 0;
    for (size_t i = 0; i < n; ++i) {
      sum += a[i];
      const al::U512 exact_floor = al::U512(pool) * e[i].score / total;
      ASSERT_TRUE(al::U512(a[i]) == exact_floor || al::U512(a[i]) == exact_floor + 1) << "trial " << trial;
    }
    ASSERT_EQ(sum, al::U512(pool)) << "trial " << trial;
  }
}

TEST(Rewards, RemainderGoesToLargestRemaindersThenAccountOrder) {
  // Pool 10 over three equal scores: 3 each, remainder 1 to the smallest account.
  std::vector<al::SplitEntry> e(3);
  for (size_t i = 0; i < 3; ++i) {
    e[i].score = 1;
    e[i].account.fill(static_cast<uint8_t>(9 - i));
  }
  const auto a = al::split_rewards(10, e);
  EXPECT_EQ(a[0], 3);
  EXPECT_EQ(a[1], 3);
  EXPECT_EQ(a[2], 4);
  EXPECT_THROW(al::split_rewards(0, e), attrace::InputError);
  for (auto& x : e) x.score = 0;
  EXPECT_THROW(al::split_rewards(10, e), attrace::InputError);
}

const std::string kA = "0x" + std::string(40, 'a'), kB = "0x" + std::string(40, 'b'), kC = "0x" + std::string(40, 'c');

TEST(Epoch, FromReportToLeavesTreeAndManifest) {
  TempDir d;
  write_report(d / "r", {{"alpha", kA, 0.5}, {"beta", kB, 0.3}, {"gamma", kC, 0.2}});
  const auto c = al::build_epoch(d / "r", 7, al::U256(1000001));
  ASSERT_EQ(c.leaves.size(), 3u);
  EXPECT_EQ(c.leaves[0].leaf.tranche_id, al::keccak256("alpha"));
  al::U256 sum = 0;
  for (const auto& l : c.leaves) sum += l.leaf.amount;
  EXPECT_EQ(sum, al::U256(1000001));
  EXPECT_EQ(c.manifest_hash, al::keccak256(c.manifest));
  const auto back = al::load_epoch_manifest(c.manifest, "manifest");
  EXPECT_EQ(back.root, c.root);
  EXPECT_EQ(back.manifest_hash, c.manifest_hash);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(al::verify_proof(c.proof(i), c.root, c.leaves[i].hash));
  std::string tampered = c.manifest;
  tampered.replace(tampered.find("\"amount\":\""), 10, "\"amount\":\"9");
  EXPECT_THROW(al::load_epoch_manifest(tampered, "manifest"), attrace::InputError);
}

TEST(Epoch, BadReportsAreRefused) {
  TempDir d;
  write_report(d / "dup", {{"alpha", kA, 0.5}, {"alpha", kA, 0.5}});
  EXPECT_THROW(al::build_epoch(d / "dup", 1, 100), attrace::InputError);
  write_report(d / "zero", {{"alpha", kA, 0.0}, {"beta", kB, 0.0}});
  try {
    al::build_epoch(d / "zero", 1, 100);
    FAIL();
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("all scores are zero"), std::string::npos);
  }
  write_report(d / "ok", {{"alpha", kA, 1.0}});
  EXPECT_THROW(al::build_epoch(d / "ok", 1, 0), attrace::InputError);
  write_text(d / "ok/report.json", read_text(d / "ok/report.json") + " ");  // no longer matches the manifest
  EXPECT_THROW(al::build_epoch(d / "ok", 1, 100), attrace::InputError);
  std::filesystem::create_directories(d / "bad");
  write_text(d / "bad/report.json", "{not json");
  write_text(d / "bad/manifest.json", "{}");
  EXPECT_THROW(al::build_epoch(d / "bad", 1, 100), attrace::InputError);
  write_report(d / "acct", {{"alpha", "0x1234", 1.0}});
  EXPECT_THROW(al::build_epoch(d / "acct", 1, 100), attrace::InputError);
}

TEST(EmbeddedLedger, FullEpochLifecycle) {
  TempDir d;
  write_report(d / "r", {{"alpha", kA, 0.5}, {"beta", kB, 0.3}, {"gamma", kC, 0.2}});
  int64_t now = 1'000'000;
  al::create_embedded_ledger(d / "ledger.db", {3600, "judge"});
  al::EmbeddedOptions o;
  o.clock = [&] { return now; };
  auto ledger = al::open_embedded_ledger(d / "ledger.db", o, "alice");
  const al::U256 pool("123456789012345678901234567890");
  const auto c = al::build_epoch(d / "r", 1, pool);
  const auto r1 = ledger->commit(c, "file://epoch1.json");
  EXPECT_FALSE(r1.already_committed);
  EXPECT_EQ(r1.status.challenge_ends, now + 3600);
  EXPECT_TRUE(ledger->commit(c, "file://epoch1.json").already_committed);  // idempotent re-run
  const auto other = al::build_epoch(d / "r", 1, pool + 1);
  EXPECT_EQ(refusal_of([&] { ledger->commit(other, ""); }), al::Refusal::epoch_exists);
  EXPECT_EQ(ledger->manifest(1), c.manifest);

  EXPECT_EQ(refusal_of([&] { ledger->claim(c.leaves[0].leaf, c.proof(0)); }), al::Refusal::not_final);
  now += 3600;
  EXPECT_EQ(refusal_of([&] { ledger->dispute(1, al::keccak256("late")); }), al::Refusal::window_closed);
  // Tampered claims: changed amount, changed account, wrong sibling.
  auto more = c.leaves[0].leaf;
  more.amount += 1;
  EXPECT_EQ(refusal_of([&] { ledger->claim(more, c.proof(0)); }), al::Refusal::invalid_proof);
  auto moved = c.leaves[0].leaf;
  moved.account = c.leaves[1].leaf.account;
  EXPECT_EQ(refusal_of([&] { ledger->claim(moved, c.proof(0)); }), al::Refusal::invalid_proof);
  auto wrong = c.proof(0);
  wrong[0][5] ^= 1;
  EXPECT_EQ(refusal_of([&] { ledger->claim(c.leaves[0].leaf, wrong); }), al::Refusal::invalid_proof);

  for (size_t i = 0; i < c.leaves.size(); ++i) ledger->claim(c.leaves[i].leaf, c.proof(i));
  EXPECT_EQ(ledger->status(1).claimed, pool);
  EXPECT_EQ(refusal_of([&] { ledger->claim(c.leaves[1].leaf, c.proof(1)); }), al::Refusal::already_claimed);
  EXPECT_TRUE(ledger->claimed(c.leaves[2].leaf));
}

TEST(EmbeddedLedger, DisputeFreezesArbiterDecides) {
  TempDir d;
  write_report(d / "r", {{"alpha", kA, 0.6}, {"beta", kB, 0.4}});
  int64_t now = 5000;
  al::create_embedded_ledger(d / "ledger.db", {100, "judge"});
  al::EmbeddedOptions o;
  o.clock = [&] { return now; };
  const auto c = al::build_epoch(d / "r", 9, 1000);
  auto alice = al::open_embedded_ledger(d / "ledger.db", o, "alice");
  auto judge = al::open_embedded_ledger(d / "ledger.db", o, "judge");
  alice->commit(c, "");
  alice->dispute(9, al::keccak256("recomputed shares differ"));
  EXPECT_EQ(alice->status(9).state, "disputed");
  EXPECT_EQ(refusal_of([&] { alice->dispute(9, {}); }), al::Refusal::disputed);
  now += 200;
  EXPECT_EQ(refusal_of([&] { alice->claim(c.leaves[0].leaf, c.proof(0)); }), al::Refusal::disputed);
  EXPECT_EQ(refusal_of([&] { alice->resolve(9, true); }), al::Refusal::unauthorized);
  judge->resolve(9, false);  // rejected: the epoch continues
  EXPECT_EQ(judge->status(9).state, "committed");
  alice->claim(c.leaves[0].leaf, c.proof(0));
  EXPECT_EQ(refusal_of([&] { judge->resolve(9, true); }), al::Refusal::not_disputed);

  // Upheld: cancelled, then a new commitment for the same epoch is accepted.
  const auto c2 = al::build_epoch(d / "r", 10, 1000);
  alice->commit(c2, "");
  alice->dispute(10, al::keccak256("wrong"));
  judge->resolve(10, true);
  EXPECT_EQ(alice->status(10).state, "cancelled");
  EXPECT_EQ(refusal_of([&] { alice->claim(c2.leaves[0].leaf, c2.proof(0)); }), al::Refusal::cancelled);
  const auto c3 = al::build_epoch(d / "r", 10, 999);
  EXPECT_FALSE(alice->commit(c3, "").already_committed);
  EXPECT_EQ(alice->status(10).state, "committed");
  EXPECT_EQ(alice->status(10).total_reward, al::U256(999));
  EXPECT_EQ(refusal_of([&] { alice->claim(c.leaves[0].leaf, c.proof(0)); }), al::Refusal::already_claimed);
}

TEST(EmbeddedLedger, ProcessKilledMidCommitLeavesAConsistentDatabase) {
  TempDir d;
  std::vector<std::tuple<std::string, std::string, double>> ts;
  for (int i = 0; i < 20; ++i) {
    char acct[43];
    std::snprintf(acct, sizeof acct, "0x%040x", i + 1);
    ts.emplace_back("t" + std::to_string(i), acct, 0.05);
  }
  write_report(d / "r", ts);
  const auto c = al::build_epoch(d / "r", 3, 10000);
  al::create_embedded_ledger(d / "ledger.db", {0, "local"});
  al::EmbeddedOptions o;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    al::EmbeddedOptions killer = o;
    killer.on_leaf_written = [](size_t k) {
      if (k == 7) ::raise(SIGKILL);  // dies with the transaction half written
    };
    auto l = al::open_embedded_ledger(d / "ledger.db", killer);
    l->commit(c, "");
    ::_exit(0);  // not reached
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child was not killed mid-write";
  auto l = al::open_embedded_ledger(d / "ledger.db", o);
  EXPECT_FALSE(l->status(3).exists) << "a half-written commit is visible";
  const auto r = l->commit(c, "");  // the re-run commits once, completely
  EXPECT_FALSE(r.already_committed);
  for (size_t i = 0; i < c.leaves.size(); ++i) l->claim(c.leaves[i].leaf, c.proof(i));
  EXPECT_EQ(l->status(3).claimed, al::U256(10000));
}

TEST(EmbeddedLedger, UnopenablePathIsAnInputError) {
  EXPECT_THROW(al::open_embedded_ledger("/nonexistent-dir/ledger.db"), attrace::InputError);
  EXPECT_THROW(al::create_embedded_ledger("/nonexistent-dir/ledger.db", {}), attrace::InputError);
}

// ---- Opening and creating ledgers; what a commit reads (issue 9) ----

namespace fs = std::filesystem;

/// Every entry of a directory, with the sha256 of each regular file: "nothing changed" means equal.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> s;
  for (const auto& e : fs::directory_iterator(dir))
    s[e.path().filename().string()] = e.is_regular_file() ? attrace::connectors::sha256_file(e.path().string()) : "(not a file)";
  return s;
}

/// The message of the InputError `fn` raises (a test failure if it raises none or another type).
template <class F>
std::string input_error_of(F fn) {
  try {
    fn();
  } catch (const attrace::InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an InputError: " << e.what();
    return "";
  }
  ADD_FAILURE() << "not refused";
  return "";
}

/// Runs SQL on a database with the system Python's sqlite3 module (the test itself has no SQLite).
void python_sql(const std::string& db, const std::string& sql) {
  const std::string cmd = "/usr/bin/python3 -c \"import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); "
                          "c.commit(); c.close()\" '" + db + "' \"" + sql + "\"";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST(EmbeddedLedger, OpeningAMissingFileCreatesNothing) {
  TempDir d;
  const std::string msg = input_error_of([&] { al::open_embedded_ledger(d / "typo.db"); });
  EXPECT_NE(msg.find(d / "typo.db"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  EXPECT_NE(msg.find("attrace ledger init"), std::string::npos) << msg;
  EXPECT_TRUE(snapshot(d.str()).empty()) << "a file was created by opening";
}

TEST(EmbeddedLedger, CreatedOnceWithItsSettingsNeverReplaced) {
  TempDir d;
  const std::string db = d / "l.db";
  al::create_embedded_ledger(db, {42, "judge"});
  const auto before = snapshot(d.str());
  ASSERT_EQ(before.size(), 1u) << "only the database: no WAL, no temporary file";
  const std::string again = input_error_of([&] { al::create_embedded_ledger(db, {0, "other"}); });
  EXPECT_NE(again.find(db), std::string::npos) << again;
  EXPECT_NE(again.find("already exists"), std::string::npos) << again;
  EXPECT_EQ(snapshot(d.str()), before);
  // Not only ledgers: no file of any kind is replaced.
  write_text(d / "notes.txt", "keep me");
  EXPECT_NE(input_error_of([&] { al::create_embedded_ledger(d / "notes.txt", {}); }).find("already exists"), std::string::npos);
  EXPECT_EQ(read_text(d / "notes.txt"), "keep me");
  EXPECT_THROW(al::create_embedded_ledger(d / "neg.db", {-1, "judge"}), attrace::InputError);
  EXPECT_THROW(al::create_embedded_ledger(d / "anon.db", {10, ""}), attrace::InputError);
  EXPECT_FALSE(fs::exists(d / "neg.db") || fs::exists(d / "anon.db"));
  // The stored settings rule, whoever opens it: period 42 s, only "judge" resolves.
  write_report(d / "r", {{"alpha", kA, 1.0}});
  al::EmbeddedOptions o;
  o.clock = [] { return int64_t{1000}; };
  auto alice = al::open_embedded_ledger(db, o, "alice");
  EXPECT_EQ(alice->commit(al::build_epoch(d / "r", 1, 10), "").status.challenge_ends, 1042);
  alice->dispute(1, al::keccak256("r"));
  EXPECT_EQ(refusal_of([&] { alice->resolve(1, true); }), al::Refusal::unauthorized);
  al::open_embedded_ledger(db, o, "judge")->resolve(1, true);
}

TEST(EmbeddedLedger, StaleTemporaryFilesOfDeadInitsAreRemoved) {
  TempDir d;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ::_exit(0);
  int st = 0;
  ::waitpid(pid, &st, 0);  // a PID that is certainly dead now
  const std::string stale = d / (".l.db.init-" + std::to_string(pid));
  write_text(stale, "half a database");
  write_text(d / ".other.db.init-1", "init of another name: not touched");
  al::create_embedded_ledger(d / "l.db", {});
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(d / ".other.db.init-1"));
}

// Files that are not intact attrace ledgers: refused with the file's name, and left as they were
// (no -wal/-shm appears next to them either).
TEST(EmbeddedLedger, FilesThatAreNotIntactLedgersAreRefused) {
  TempDir d;
  write_text(d / "empty.db", "");
  write_text(d / "text.db", "epoch,root\n1,0xabc\n");
  fs::create_directories(d / "dir.db");
  ASSERT_EQ(::mkfifo((d / "fifo.db").c_str(), 0600), 0);
  python_sql(d / "foreign.db", "CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES ('hello');");
  al::create_embedded_ledger(d / "future.db", {});
  python_sql(d / "future.db", "UPDATE meta SET value = '9' WHERE key = 'schema';");
  al::create_embedded_ledger(d / "nometa.db", {});
  python_sql(d / "nometa.db", "DELETE FROM meta WHERE key = 'schema';");
  al::create_embedded_ledger(d / "noleaves.db", {});
  python_sql(d / "noleaves.db", "DROP TABLE leaves;");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty.db", "is empty"},
      {"text.db", "not an SQLite database"},
      {"dir.db", "is a directory"},
      {"fifo.db", "not a regular file"},
      {"foreign.db", "not an attrace ledger (table 'meta'"},
      {"future.db", "schema version '9' is not supported"},
      {"nometa.db", "no schema version"},
      {"noleaves.db", "table 'leaves' is missing"},
  };
  const auto before = snapshot(d.str());
  for (const auto& [name, fragment] : cases) {
    const std::string msg = input_error_of([&] { al::open_embedded_ledger(d / name)->status(1); });
    EXPECT_NE(msg.find("ledger database '" + (d / name) + "'"), std::string::npos) << name << ": " << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << name << ": " << msg;
  }
  EXPECT_EQ(snapshot(d.str()), before) << "refusing a file changed the directory";
}

// Garbage over any one page of a ledger: it is refused (naming the file), or — for a page the
// database does not use for what is asked — answers exactly what the intact ledger answers.
// Never a plausible wrong answer.
TEST(EmbeddedLedger, GarbageInAnyPageIsRefusedNeverAnsweredWrongly) {
  TempDir d;
  std::vector<std::tuple<std::string, std::string, double>> ts;
  for (int i = 0; i < 300; ++i) {
    char acct[43];
    std::snprintf(acct, sizeof acct, "0x%040x", i + 1);
    ts.emplace_back("tranche-" + std::to_string(i), acct, 1.0 / 300);
  }
  write_report(d / "r", ts);
  const std::string pristine = d / "pristine.db";
  al::create_embedded_ledger(pristine, {0, "local"});
  const auto c = al::build_epoch(d / "r", 1, 1'000'000);
  {
    auto l = al::open_embedded_ledger(pristine);
    l->commit(c, "file://epoch-1.json");
    for (size_t i = 0; i < c.leaves.size(); i += 3) l->claim(c.leaves[i].leaf, c.proof(i));
  }
  ASSERT_FALSE(fs::exists(pristine + "-wal")) << "the WAL must be checkpointed into the file on close";
  const std::string bytes = read_text(pristine);
  const size_t page = 4096, pages = bytes.size() / page;
  ASSERT_EQ(bytes.size() % page, 0u);
  ASSERT_GE(pages, 20u) << "the ledger should span many pages";
  auto answer = [](const std::string& db) {
    auto l = al::open_embedded_ledger(db);
    const auto s = l->status(1);
    return al::to_hex(s.root) + al::to_hex(s.manifest_hash) + al::to_decimal(s.claimed) + s.state + l->manifest(1);
  };
  const std::string truth = answer(pristine);
  size_t refused = 0;
  std::mt19937_64 rng(9);
  for (size_t p = 0; p < pages; ++p) {
    std::string bad = bytes;
    for (size_t k = 0; k < page; ++k) bad[p * page + k] = static_cast<char>(rng());
    const std::string db = d / ("page-" + std::to_string(p) + ".db");
    write_text(db, bad);
    try {
      EXPECT_EQ(answer(db), truth) << "page " << p << " of " << pages << ": a damaged ledger answered differently";
    } catch (const attrace::InputError& e) {
      ++refused;
      EXPECT_NE(std::string(e.what()).find(db), std::string::npos) << e.what();
    }
    EXPECT_EQ(attrace::connectors::sha256_file(db), attrace::connectors::sha256_hex(bad)) << "page " << p;
    fs::remove(db);
  }
  // Pages on the freelist (left by the claims' row updates) hold nothing; every other page is in a
  // b-tree that quick_check walks. The count is the big-endian word at offset 36 of the header.
  const size_t free_pages = (static_cast<size_t>(static_cast<uint8_t>(bytes[36])) << 24) |
                            (static_cast<size_t>(static_cast<uint8_t>(bytes[37])) << 16) |
                            (static_cast<size_t>(static_cast<uint8_t>(bytes[38])) << 8) | static_cast<uint8_t>(bytes[39]);
  std::printf("[ garbage ] %zu of %zu damaged pages refused; %zu pages are free (the rest answered exactly as the intact ledger)\n",
              refused, pages, free_pages);
  EXPECT_GE(refused, pages - free_pages) << "garbage in a page in use went unnoticed";
}

TEST(Files, OnlyRegularNonEmptyFilesAreRead) {
  TempDir d;
  write_text(d / "ok.txt", "reason");
  EXPECT_EQ(al::read_input_file(d / "ok.txt", "--reason"), "reason");
  write_text(d / "empty.txt", "");
  fs::create_directories(d / "dir");
  ASSERT_EQ(::mkfifo((d / "fifo").c_str(), 0600), 0);  // would block forever if opened for reading
  for (const auto& [name, fragment] : std::vector<std::pair<std::string, std::string>>{
           {"empty.txt", "is empty"}, {"dir", "is a directory"}, {"fifo", "is a FIFO"}, {"missing", "does not exist"}}) {
    const std::string msg = input_error_of([&] { al::read_input_file(d / name, "--reason"); });
    EXPECT_NE(msg.find("--reason '" + (d / name) + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << name << ": " << msg;
  }
}

// Every output manifest.json pins is checked before a commit, not only report.json.
TEST(Epoch, EveryPinnedOutputIsCheckedBeforeACommit) {
  TempDir d;
  const std::string r = d / "r";
  write_report(r, {{"alpha", kA, 0.75}, {"beta", kB, 0.25}});
  write_text(r + "/attribution.csv", "tranche,account,share\nalpha,0xaa,0.75\nbeta,0xbb,0.25\n");
  write_text(r + "/scores.h5", std::string(1000, 's'));
  auto manifest = nlohmann::json::parse(read_text(r + "/manifest.json"));
  manifest["outputs"]["attribution.csv"] = attrace::connectors::sha256_file(r + "/attribution.csv");
  manifest["outputs"]["scores.h5"] = attrace::connectors::sha256_file(r + "/scores.h5");
  write_text(r + "/manifest.json", manifest.dump());
  const auto good = al::build_epoch(r, 1, 100);

  const std::string pinned_csv = manifest["outputs"]["attribution.csv"];
  write_text(r + "/attribution.csv", "tranche,account,share\nalpha,0xaa,0.95\nbeta,0xbb,0.05\n");
  const std::string csv_sha = attrace::connectors::sha256_file(r + "/attribution.csv");
  std::string msg = input_error_of([&] { al::build_epoch(r, 1, 100); });
  EXPECT_NE(msg.find(r + "/attribution.csv"), std::string::npos) << msg;
  EXPECT_NE(msg.find(pinned_csv), std::string::npos) << "pinned hash: " << msg;
  EXPECT_NE(msg.find(csv_sha), std::string::npos) << "actual hash: " << msg;
  fs::remove(r + "/attribution.csv");
  msg = input_error_of([&] { al::build_epoch(r, 1, 100); });
  EXPECT_NE(msg.find(r + "/attribution.csv"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  fs::create_directories(r + "/attribution.csv");
  EXPECT_NE(input_error_of([&] { al::build_epoch(r, 1, 100); }).find("is a directory"), std::string::npos);
  fs::remove(r + "/attribution.csv");
  write_text(r + "/attribution.csv", "tranche,account,share\nalpha,0xaa,0.75\nbeta,0xbb,0.25\n");
  EXPECT_EQ(al::build_epoch(r, 1, 100).manifest_hash, good.manifest_hash);  // restored: accepted again

  write_text(r + "/scores.h5", std::string(999, 's') + "t");
  EXPECT_NE(input_error_of([&] { al::build_epoch(r, 1, 100); }).find(r + "/scores.h5"), std::string::npos);
  write_text(r + "/scores.h5", std::string(1000, 's'));

  const std::string report = read_text(r + "/report.json");
  write_text(r + "/report.json", report + "\n");
  msg = input_error_of([&] { al::build_epoch(r, 1, 100); });
  EXPECT_NE(msg.find(r + "/report.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find(manifest["outputs"]["report.json"].get<std::string>()), std::string::npos) << msg;
  EXPECT_NE(msg.find(attrace::connectors::sha256_hex(report + "\n")), std::string::npos) << msg;
  write_text(r + "/report.json", report);

  // A pinned name must stay inside the report directory.
  auto escaping = manifest;
  escaping["outputs"]["../manifest.json"] = manifest["outputs"]["report.json"];
  write_text(r + "/manifest.json", escaping.dump());
  EXPECT_NE(input_error_of([&] { al::build_epoch(r, 1, 100); }).find("not a file name inside the report directory"),
            std::string::npos);
}

// Values changed inside intact pages (quick_check sees only structure): `status` cross-checks the
// recorded root, manifest hash and pool against the stored manifest, so a changed digit is refused,
// or sits where status does not read it (history) and changes nothing it reports.
TEST(EmbeddedLedger, ChangedValuesInIntactPagesAreRefusedByStatus) {
  TempDir d;
  write_report(d / "r", {{"alpha", kA, 0.5}, {"beta", kB, 0.5}});
  const std::string pristine = d / "pristine.db";
  al::create_embedded_ledger(pristine, {0, "local"});
  const auto c = al::build_epoch(d / "r", 1, 1000);
  al::open_embedded_ledger(pristine)->commit(c, "");
  const std::string bytes = read_text(pristine);
  auto answer = [](const std::string& db) {
    const auto s = al::open_embedded_ledger(db)->status(1);
    return al::to_hex(s.root) + al::to_hex(s.manifest_hash) + al::to_decimal(s.total_reward);
  };
  const std::string truth = answer(pristine);
  // The row stores root, manifest hash and total reward as adjacent text: the pool's last digit is
  // found right after the manifest hash.
  for (const std::string& value : {al::to_hex(c.root), al::to_hex(c.manifest_hash), al::to_hex(c.manifest_hash) + "1000"}) {
    size_t seen = 0, refused = 0;
    for (size_t at = bytes.find(value); at != std::string::npos; at = bytes.find(value, at + 1), ++seen) {
      std::string bad = bytes;
      char& digit = bad[at + value.size() - 1];
      digit = digit == '1' ? '2' : '1';
      const std::string db = d / "bad.db";
      write_text(db, bad);
      try {
        EXPECT_EQ(answer(db), truth) << "occurrence " << seen << " of " << value;
      } catch (const attrace::InputError& e) {
        ++refused;
        EXPECT_NE(std::string(e.what()).find(db), std::string::npos) << e.what();
      }
      fs::remove(db);
    }
    EXPECT_GE(seen, 1u) << value;
    EXPECT_GE(refused, 1u) << value << ": the column status reads was not checked";
  }
}

// ---- registry plane ----

// Content roots and proofs equal OpenZeppelin's StandardMerkleTree.of(rows, ["bytes32"]), and
// OpenZeppelin's verify accepts every proof made here.
class ContentRootVsOpenZeppelin : public ::testing::TestWithParam<int> {};

TEST_P(ContentRootVsOpenZeppelin, RootsLeavesAndProofs) {
  ASSERT_TRUE(std::filesystem::exists(contracts_dir() + "/node_modules/@openzeppelin/merkle-tree"));
  const int n = GetParam();
  std::mt19937_64 rng(7000 + n);
  std::vector<al::Bytes32> digests;
  for (int i = 0; i < n; ++i) digests.push_back(random_bytes32(rng));
  if (n >= 3) digests[2] = digests[0];  // a tranche may hold the same example twice
  nlohmann::json rows = nlohmann::json::array(), mine = nlohmann::json::array();
  for (size_t i = 0; i < digests.size(); ++i) {
    rows.push_back({al::to_hex(digests[i])});
    nlohmann::json p = nlohmann::json::array();
    for (const auto& x : al::content_proof(digests, i)) p.push_back(al::to_hex(x));
    mine.push_back(p);
  }
  TempDir d;
  write_text(d / "in.json", nlohmann::json{{"types", {"bytes32"}}, {"rows", rows}, {"check", mine}}.dump());
  const std::string cmd = "cd '" + contracts_dir() + "' && node tools/oz_merkle.mjs '" + (d / "in.json") + "' '" + (d / "out.json") + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto ref = nlohmann::json::parse(read_text(d / "out.json"));
  const al::Bytes32 root = al::content_root(digests);
  ASSERT_EQ(al::to_hex(root), ref["root"]);
  for (size_t i = 0; i < digests.size(); ++i) {
    ASSERT_EQ(al::to_hex(al::content_leaf(digests[i])), ref["leaves"][i]) << "leaf " << i;
    ASSERT_TRUE(ref["checked"][i].get<bool>()) << "OpenZeppelin refuses the C++ proof of example " << i;
    if (n < 3 || (i != 0 && i != 2)) {  // a duplicated digest has two valid proofs
      ASSERT_EQ(mine[i], ref["proofs"][i]) << "proof " << i;
    }
    ASSERT_TRUE(al::verify_content_proof(al::content_proof(digests, i), root, digests[i]));
  }
  auto other = digests[0];
  other[0] ^= 1;
  EXPECT_FALSE(al::verify_content_proof(al::content_proof(digests, 0), root, other));
  // The root commits to the multiset of digests, not to their order.
  auto shuffled = digests;
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  EXPECT_EQ(al::content_root(shuffled), root);
}

INSTANTIATE_TEST_SUITE_P(Sizes, ContentRootVsOpenZeppelin, ::testing::Values(1, 2, 3, 8, 301));

TEST(Registry, EmptyTrancheHasNoRoot) { EXPECT_THROW(al::content_root({}), attrace::InputError); }

// A small training set: 3 tranches (the third an exact copy of the first under another account).
attrace::connectors::Dataset registry_dataset() {
  attrace::connectors::Dataset ds;
  const int64_t n = 15, w = 4;
  ds.input_shape = {n, w};
  ds.target_shape = {n};
  std::mt19937_64 rng(42);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < w; ++k) ds.inputs.push_back(static_cast<float>(rng() % 1000) / 100.0f);
    ds.class_targets.push_back(static_cast<int64_t>(rng() % 3));
    ds.ids.push_back("ex" + std::to_string(i));
    ds.tranche.push_back(i < 6 ? 0 : i < 10 ? 1 : 2);
  }
  for (int64_t i = 10; i < 15; ++i) {  // tranche 2 = copies of examples 0..4 of tranche 0
    std::copy(ds.inputs.begin() + (i - 10) * w, ds.inputs.begin() + (i - 9) * w, ds.inputs.begin() + i * w);
    ds.class_targets[static_cast<size_t>(i)] = ds.class_targets[static_cast<size_t>(i - 10)];
  }
  ds.tranches = {{"clinic", kA, "", "CC-BY-4.0"}, {"school", kB, "", "CC0"}, {"mirror", kC, "", "CC-BY-4.0"}};
  return ds;
}

std::vector<al::Registration> register_all(al::Ledger& l, const std::vector<al::TrancheContent>& contents) {
  std::vector<al::Registration> out;
  for (const auto& c : contents) {
    al::TrancheRegistration r;
    r.tranche = c.id;
    r.account = al::address_from_hex(c.account, "account");
    r.license = c.license;
    r.digests = c.digests;
    r.example_count = c.digests.size();
    r.content_root = c.root();
    out.push_back(l.register_tranche(r).registration);
  }
  return out;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const attrace::InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no InputError";
  return "";
}

TEST(Registry, EmbeddedRegistrationsAreOrderedIdempotentAndNameCopies) {
  TempDir d;
  int64_t now = 1'700'000'000;
  al::create_embedded_ledger(d / "l.db", {60, "judge"});
  al::EmbeddedOptions o;
  o.clock = [&] { return now; };
  auto l = al::open_embedded_ledger(d / "l.db", o, "registrar");
  auto ds = registry_dataset();
  const auto contents = al::tranche_contents(ds, "train.h5");
  ASSERT_EQ(contents.size(), 3u);
  EXPECT_EQ(contents[1].examples, (std::vector<int64_t>{6, 7, 8, 9}));
  const auto regs = register_all(*l, {contents[0], contents[1]});
  // The copy of 5 of clinic's 6 examples has its own root; a full copy has the same root.
  auto copy = contents[0];
  copy.id = "mirror-full";
  copy.account = kC;
  now += 10;
  const auto copy_reg = register_all(*l, {copy})[0];
  EXPECT_EQ(copy_reg.order, 3u);
  EXPECT_EQ(copy_reg.registered_at, now);
  EXPECT_EQ(copy_reg.registrant, "registrar");
  const auto all = l->registrations();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].order, 1u);
  EXPECT_EQ(all[0].tranche_id, al::keccak256("clinic"));
  EXPECT_EQ(all[0].license, "CC-BY-4.0");
  EXPECT_EQ(all[1].example_count, 4u);
  const al::Registration* first = al::same_content_as(all, all[2]);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->tranche, "clinic");
  EXPECT_EQ(al::same_content_as(all, all[0]), nullptr);
  EXPECT_EQ(al::same_content_as(all, all[1]), nullptr);
  // Idempotent: the same registration again changes nothing.
  al::TrancheRegistration again;
  again.tranche = "clinic";
  again.account = al::address_from_hex(kA, "a");
  again.digests = contents[0].digests;
  again.example_count = again.digests.size();
  again.content_root = contents[0].root();
  const auto r = l->register_tranche(again);
  EXPECT_TRUE(r.already_registered);
  EXPECT_EQ(r.registration.order, 1u);
  EXPECT_EQ(l->registrations().size(), 3u);
  // The same id with other content, or for another account: refused.
  auto changed = again;
  changed.digests.pop_back();
  changed.example_count = changed.digests.size();
  changed.content_root = al::content_root(changed.digests);
  EXPECT_EQ(refusal_of([&] { l->register_tranche(changed); }), al::Refusal::tranche_exists);
  auto moved = again;
  moved.account = al::address_from_hex(kB, "b");
  EXPECT_EQ(refusal_of([&] { l->register_tranche(moved); }), al::Refusal::tranche_exists);
  // Digests that do not hash to the claimed root are refused before anything is written.
  auto lying = again;
  lying.tranche = "liar";
  lying.content_root = contents[1].root();
  EXPECT_THROW(l->register_tranche(lying), attrace::InputError);
  EXPECT_EQ(l->registrations().size(), 3u);
  EXPECT_EQ(l->registered_digests("school"), contents[1].digests);
  EXPECT_TRUE(l->registered_digests("nobody").empty());
  EXPECT_EQ(l->source(), "embedded:" + std::filesystem::absolute(d / "l.db").string());
}

TEST(Registry, ATrainingSetIsCheckedAgainstTheRegistryNamingTheFirstDifferingExample) {
  TempDir d;
  al::create_embedded_ledger(d / "l.db", {60, "judge"});
  auto l = al::open_embedded_ledger(d / "l.db");
  auto ds = registry_dataset();
  const auto contents = al::tranche_contents(ds, "train.h5");
  register_all(*l, contents);
  auto check = [&](const attrace::connectors::Dataset& x) {
    const auto c = al::tranche_contents(x, "train.h5");
    std::vector<std::vector<al::Bytes32>> digests;
    for (const auto& t : c) digests.push_back(l->registered_digests(t.id));
    return al::check_against_registry(c, l->registrations(), digests, "registry l.db");
  };
  const auto ok = check(ds);
  ASSERT_EQ(ok.size(), 3u);
  EXPECT_EQ(ok[2].order, 3u);
  EXPECT_EQ(ok[1].content_root, contents[1].root());

  auto changed = ds;
  changed.inputs[8 * 4 + 1] += 0.5f;  // example 8, in tranche school
  std::string e = error_of([&] { check(changed); });
  EXPECT_NE(e.find("tranche 'school'"), std::string::npos) << e;
  EXPECT_NE(e.find("dataset example 8 (id 'ex8'"), std::string::npos) << e;

  auto relabeled = ds;
  relabeled.class_targets[3] = (relabeled.class_targets[3] + 1) % 3;  // a label is content too
  e = error_of([&] { check(relabeled); });
  EXPECT_NE(e.find("tranche 'clinic'"), std::string::npos) << e;
  EXPECT_NE(e.find("dataset example 3 "), std::string::npos) << e;

  auto reordered = ds;  // swapping two examples of a tranche keeps its content
  std::swap_ranges(reordered.inputs.begin() + 6 * 4, reordered.inputs.begin() + 7 * 4, reordered.inputs.begin() + 7 * 4);
  std::swap(reordered.class_targets[6], reordered.class_targets[7]);
  EXPECT_NO_THROW(check(reordered));

  auto dropped = ds;  // example 9 moved out of school into clinic
  dropped.tranche[9] = 0;
  e = error_of([&] { check(dropped); });
  EXPECT_NE(e.find("tranche 'clinic'"), std::string::npos) << e;
  EXPECT_NE(e.find("dataset example 9 "), std::string::npos) << e;

  auto shrunk = ds;  // school's last example removed entirely: named as missing
  shrunk.input_shape[0] = 14;
  shrunk.inputs.erase(shrunk.inputs.begin() + 9 * 4, shrunk.inputs.begin() + 10 * 4);
  shrunk.class_targets.erase(shrunk.class_targets.begin() + 9);
  shrunk.ids.erase(shrunk.ids.begin() + 9);
  shrunk.tranche.erase(shrunk.tranche.begin() + 9);
  shrunk.target_shape = {14};
  e = error_of([&] { check(shrunk); });
  EXPECT_NE(e.find("tranche 'school'"), std::string::npos) << e;
  EXPECT_NE(e.find("registered example 3 of the tranche"), std::string::npos) << e;

  auto other_account = ds;
  other_account.tranches[1].account = kC;
  e = error_of([&] { check(other_account); });
  EXPECT_NE(e.find("tranche 'school' is registered"), std::string::npos) << e;

  auto unregistered = ds;
  unregistered.tranches[2].id = "newcomer";
  e = error_of([&] { check(unregistered); });
  EXPECT_NE(e.find("tranche 'newcomer' is not registered"), std::string::npos) << e;

  // Without per-example digests (an EVM registry), the mismatch still names the tranche.
  e = error_of([&] { al::check_against_registry(al::tranche_contents(changed, "t"), l->registrations(), {}, "the contract"); });
  EXPECT_NE(e.find("tranche 'school'"), std::string::npos) << e;
  EXPECT_NE(e.find("keeps only the root"), std::string::npos) << e;
  // A dataset rebuilt from a feature store (digests, no inputs) checks the same way.
  auto from_store = ds;
  from_store.digests = attrace::connectors::example_digests(ds);
  from_store.inputs.clear();
  EXPECT_NO_THROW(check(from_store));
}

// ---- revisions and schema migration ----

TEST(Revisions, UpheldDisputeThenCorrectedRevisionClaimsFollowIt) {
  TempDir d;
  write_report(d / "r", {{"alpha", kA, 0.6}, {"beta", kB, 0.4}});
  write_report(d / "fixed", {{"alpha", kA, 0.5}, {"beta", kB, 0.5}});
  int64_t now = 10'000;
  al::create_embedded_ledger(d / "l.db", {100, "judge"});
  al::EmbeddedOptions o;
  o.clock = [&] { return now; };
  auto alice = al::open_embedded_ledger(d / "l.db", o, "alice");
  auto judge = al::open_embedded_ledger(d / "l.db", o, "judge");
  const auto wrong = al::build_epoch(d / "r", 4, 1000);
  EXPECT_EQ(alice->commit(wrong, "").status.revision, 1u);
  alice->dispute(4, al::keccak256("verification.json"));
  judge->resolve(4, true);
  EXPECT_EQ(alice->status(4).revision, 1u);
  EXPECT_EQ(alice->status(4).state, "cancelled");
  const auto fixed = al::build_epoch(d / "fixed", 4, 1000);
  const auto r = alice->commit(fixed, "");
  EXPECT_EQ(r.status.revision, 2u);
  EXPECT_EQ(alice->status(4).root, fixed.root);
  EXPECT_EQ(alice->manifest(4), fixed.manifest);
  now += 100;
  EXPECT_EQ(refusal_of([&] { alice->claim(wrong.leaves[0].leaf, wrong.proof(0)); }), al::Refusal::invalid_proof);
  al::U256 paid = 0;
  for (size_t i = 0; i < fixed.leaves.size(); ++i) {
    alice->claim(fixed.leaves[i].leaf, fixed.proof(i));
    paid += fixed.leaves[i].leaf.amount;
  }
  EXPECT_EQ(paid, al::U256(1000));
  EXPECT_EQ(alice->status(4).claimed, al::U256(1000));
  EXPECT_EQ(alice->balance_of(al::address_from_hex(kA, "a")), fixed.leaves[0].leaf.amount);
  EXPECT_EQ(alice->balance_of(al::address_from_hex(kC, "c")), al::U256(0));
  // A third revision only after another upheld dispute.
  EXPECT_EQ(refusal_of([&] { alice->commit(wrong, ""); }), al::Refusal::epoch_exists);
  alice->commit(al::build_epoch(d / "r", 2, 10), "");
  const auto list = alice->epochs();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].epoch, 2u);
  EXPECT_EQ(list[1].epoch, 4u);
  EXPECT_EQ(list[1].revision, 2u);
  EXPECT_EQ(alice->current_time(), now);
}

// The schema-1 layout, exactly as attrace wrote it before registrations and revisions.
constexpr const char* kSchemaV1 = R"(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE commitments(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  epoch TEXT NOT NULL, root TEXT NOT NULL, manifest_hash TEXT NOT NULL, total_reward TEXT NOT NULL,
  claimed TEXT NOT NULL DEFAULT '0', uri TEXT NOT NULL, manifest BLOB NOT NULL,
  committed_at INTEGER NOT NULL, challenge_ends INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('committed', 'disputed', 'cancelled')), submitter TEXT NOT NULL);
CREATE UNIQUE INDEX one_live_commitment_per_epoch ON commitments(epoch) WHERE state != 'cancelled';
CREATE TABLE leaves(
  commitment INTEGER NOT NULL REFERENCES commitments(id), tranche TEXT NOT NULL, tranche_id TEXT NOT NULL,
  account TEXT NOT NULL, score TEXT NOT NULL, amount TEXT NOT NULL, leaf TEXT NOT NULL,
  claimed_at INTEGER, claimed_by TEXT, PRIMARY KEY (commitment, tranche_id, account));
CREATE TABLE balances(account TEXT PRIMARY KEY, amount TEXT NOT NULL);
CREATE TABLE history(
  id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL,
  epoch TEXT, detail TEXT NOT NULL);
INSERT INTO meta(key, value) VALUES ('schema', '1'), ('challenge_period', '0'), ('arbiter', 'local');
)";

void sql(const std::string& db, const std::string& text) {
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(h, text.c_str(), nullptr, nullptr, &err);
  const std::string msg = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(h);
  ASSERT_EQ(rc, SQLITE_OK) << msg;
}

TEST(Migration, SchemaOneIsRefusedNamingMigrateThenUpgradedKeepingEverything) {
  TempDir d;
  const std::string db = d / "old.db";
  write_report(d / "r", {{"alpha", kA, 0.6}, {"beta", kB, 0.4}});
  const auto c = al::build_epoch(d / "r", 1, 1000);
  // An old ledger with epoch 1 committed twice (the first cancelled) and one claim.
  std::string rows = kSchemaV1;
  for (int id = 1; id <= 2; ++id) {
    rows += "INSERT INTO commitments(epoch, root, manifest_hash, total_reward, uri, manifest, committed_at, challenge_ends, state,"
            " submitter) VALUES ('1', '" + al::to_hex(c.root) + "', '" + al::to_hex(c.manifest_hash) + "', '1000', '', X'" +
            al::to_hex(al::Bytes(c.manifest.begin(), c.manifest.end())).substr(2) + "', 5, 5, '" +
            (id == 1 ? "cancelled" : "committed") + "', 'local');";
    for (const auto& l : c.leaves)
      rows += "INSERT INTO leaves(commitment, tranche, tranche_id, account, score, amount, leaf) VALUES (" + std::to_string(id) +
              ", '" + l.tranche + "', '" + al::to_hex(l.leaf.tranche_id) + "', '" + al::to_hex(l.leaf.account) + "', '" +
              al::to_decimal(l.leaf.score) + "', '" + al::to_decimal(l.leaf.amount) + "', '" + al::to_hex(l.hash) + "');";
  }
  sql(db, rows);
  const std::string before = attrace::connectors::sha256_file(db);
  std::string e = error_of([&] { al::open_embedded_ledger(db); });
  EXPECT_NE(e.find("schema version 1"), std::string::npos) << e;
  EXPECT_NE(e.find("attrace ledger migrate --db " + db), std::string::npos) << e;
  EXPECT_EQ(attrace::connectors::sha256_file(db), before) << "a refused open changed the file";

  EXPECT_EQ(al::migrate_embedded_ledger(db), "1");
  auto l = al::open_embedded_ledger(db);
  const auto s = l->status(1);
  EXPECT_EQ(s.state, "committed");
  EXPECT_EQ(s.revision, 2u) << "the live commitment was the epoch's second";
  EXPECT_EQ(s.root, c.root);
  l->claim(c.leaves[0].leaf, c.proof(0));  // claims work on the migrated file
  EXPECT_TRUE(l->registrations().empty());
  register_all(*l, al::tranche_contents(registry_dataset(), "train.h5"));
  EXPECT_EQ(l->registrations().size(), 3u);
  l.reset();
  EXPECT_EQ(al::migrate_embedded_ledger(db), al::kEmbeddedSchemaVersion);  // again: nothing to do
  // A file of an unknown future schema stays refused, by name.
  sql(db, "UPDATE meta SET value = '3' WHERE key = 'schema';");
  e = error_of([&] { al::migrate_embedded_ledger(db); });
  EXPECT_NE(e.find("schema version '3' is not supported"), std::string::npos) << e;
}

// ---- the ledger commands as a newcomer uses them (the real binary) ----

using attrace::test::fixture;
using attrace::test::run_attrace;

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(LedgerCommands, ChallengePeriodsInHumanDurationsAndTimesInWords) {
  TempDir d;
  for (const auto& [text, seconds] : std::vector<std::pair<std::string, int64_t>>{
           {"3d", 259200}, {"10m", 600}, {"0", 0}, {"1h30m", 5400}, {"3600", 3600}, {"2w", 1209600}}) {
    const std::string db = d / ("p" + std::to_string(seconds) + ".db");
    const auto r = run_attrace("ledger init --json --challenge-period " + text + " --db " + db);
    ASSERT_EQ(r.code, 0) << text << ": " << r.out;
    EXPECT_EQ(nlohmann::json::parse(r.out)["challengePeriod"], seconds) << text;
  }
  for (const std::string bad : {"3q", "d", "1.5d", "-1", "10m5", ""}) {
    const auto r = run_attrace("ledger init --challenge-period '" + bad + "' --db " + (d / "bad.db"));
    EXPECT_EQ(r.code, 2) << bad << ": " << r.out;
    EXPECT_FALSE(fs::exists(d / "bad.db")) << bad;
  }
  const auto r = run_attrace("ledger init --challenge-period 3d --db " + (d / "l.db"));
  EXPECT_NE(r.out.find("challenge period 3 d 0 h"), std::string::npos) << r.out;
  write_report(d / "r", {{"alpha", kA, 0.6}, {"beta", kB, 0.4}});
  auto c = run_attrace("ledger commit " + (d / "r") + " --epoch 1 --pool 1000 --db " + (d / "l.db"));
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("UTC (3 d 0 h after the commit"), std::string::npos) << c.out;
  c = run_attrace("ledger status 1 --db " + (d / "l.db"));
  EXPECT_NE(c.out.find("(revision 1)"), std::string::npos) << c.out;
  // Committed moments ago: 3 d 0 h left within the commit's second, 2 d 23 h after it.
  EXPECT_TRUE(c.out.find("2 d 23 h left") != std::string::npos || c.out.find("3 d 0 h left") != std::string::npos) << c.out;
  const auto st = nlohmann::json::parse(run_attrace("ledger status 1 --json --db " + (d / "l.db")).out);
  EXPECT_GT(st["secondsLeft"].get<int64_t>(), 259000);
  EXPECT_NE(st["challengeEndsUtc"].get<std::string>().find(" UTC"), std::string::npos);
  c = run_attrace("ledger claim 1 --all --db " + (d / "l.db"));
  EXPECT_EQ(c.code, 2);
  EXPECT_NE(c.out.find("NotFinal"), std::string::npos) << c.out;
}

TEST(LedgerCommands, EpochsBalanceProofByTrancheAndEpochFilesNeverReplaced) {
  TempDir d;
  write_report(d / "r", {{"alpha", kA, 0.6}, {"beta", kB, 0.4}});
  const std::string a = " --db " + (d / "a.db"), b = " --db " + (d / "b.db");
  ASSERT_EQ(run_attrace("ledger init --challenge-period 0" + a).code, 0);
  ASSERT_EQ(run_attrace("ledger init --challenge-period 0" + b).code, 0);
  auto r = run_attrace("ledger epochs" + a);
  EXPECT_NE(r.out.find("no epochs committed"), std::string::npos) << r.out;
  ASSERT_EQ(run_attrace("ledger commit " + (d / "r") + " --epoch 1 --pool 1000" + a).code, 0);
  const std::string first = read_text(d / "r/epoch-1.json");
  // The same report, another pool, another ledger: refused before anything is committed.
  r = run_attrace("ledger commit " + (d / "r") + " --epoch 1 --pool 5000" + b);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("epoch-1.json already exists"), std::string::npos) << r.out;
  EXPECT_EQ(read_text(d / "r/epoch-1.json"), first);
  EXPECT_NE(run_attrace("ledger status 1" + b).out.find("not committed"), std::string::npos);
  r = run_attrace("ledger commit " + (d / "r") + " --epoch 1 --pool 5000 --manifest-out " + (d / "b-epoch-1.json") + b);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_text(d / "r/epoch-1.json"), first);
  // The same commitment to a second ledger writes nothing new and is accepted (identical bytes).
  ASSERT_EQ(run_attrace("ledger init --challenge-period 0 --db " + (d / "c.db")).code, 0);
  EXPECT_EQ(run_attrace("ledger commit " + (d / "r") + " --epoch 1 --pool 1000 --db " + (d / "c.db")).code, 0);
  // Proofs against the first ledger still work (its manifest is intact).
  r = run_attrace("ledger proof 1 beta --json" + a);  // by tranche id
  ASSERT_EQ(r.code, 0) << r.out;
  const auto leaf = nlohmann::json::parse(r.out);
  EXPECT_EQ(leaf["tranche"], "beta");
  EXPECT_EQ(leaf["account"], al::checksum_address(al::address_from_hex(kB, "b")));
  EXPECT_EQ(run_attrace("ledger proof 1 gamma" + a).code, 2);
  ASSERT_EQ(run_attrace("ledger claim 1 beta" + a).code, 0);
  r = run_attrace("ledger balance " + kB + " --json" + a);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["balance"], leaf["amount"]);
  EXPECT_EQ(nlohmann::json::parse(run_attrace("ledger balance " + kA + " --json" + a).out)["balance"], "0");
  r = run_attrace("ledger epochs --json" + a);
  const auto list = nlohmann::json::parse(r.out);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["claimed"], leaf["amount"]);
  EXPECT_EQ(list[0]["revision"], 1);
  r = run_attrace("ledger migrate" + a);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("nothing to do"), std::string::npos) << r.out;
}

TEST(LedgerCommands, RegisterListProveAndCheckARunAgainstTheRegistry) {
  TempDir d;
  auto ds = registry_dataset();
  ds.tranche[5] = 1;  // clinic = examples 0..4, mirror (10..14) an exact copy of it
  attrace::connectors::write_dataset(d / "train.h5", ds);
  const std::string db = " --db " + (d / "l.db");
  ASSERT_EQ(run_attrace("ledger init" + db).code, 0);
  auto r = run_attrace("ledger register --dataset " + (d / "train.h5") + db);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count(r.out, "registered now"), 3u) << r.out;
  const std::string sha = attrace::connectors::sha256_file(d / "l.db");
  r = run_attrace("ledger register --dataset " + (d / "train.h5") + db);  // idempotent
  EXPECT_EQ(count(r.out, "already registered"), 3u) << r.out;
  r = run_attrace("ledger registrations" + db);
  EXPECT_NE(r.out.find("same content as 'clinic' registered earlier (order 1) by " + al::checksum_address(al::address_from_hex(kA, "a"))),
            std::string::npos)
      << r.out;
  const auto regs = nlohmann::json::parse(run_attrace("ledger registrations --json" + db).out);
  ASSERT_EQ(regs.size(), 3u);
  EXPECT_EQ(regs[2]["sameContentAs"], "clinic");
  EXPECT_EQ(regs[1]["sameContentAs"], nullptr);
  r = run_attrace("ledger prove-example --json --dataset " + (d / "train.h5") + " --example ex7" + db);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto p = nlohmann::json::parse(r.out);
  EXPECT_EQ(p["tranche"], "school");
  EXPECT_EQ(p["verified"], true);
  std::vector<al::Bytes32> proof;
  for (const auto& x : p["proof"]) proof.push_back(al::bytes32_from_hex(x.get<std::string>(), "proof"));
  EXPECT_TRUE(al::verify_content_proof(proof, al::bytes32_from_hex(p["contentRoot"].get<std::string>(), "root"),
                                       al::bytes32_from_hex(p["digest"].get<std::string>(), "digest")));
  // A changed example: its proof no longer reaches the registered root (exit 2, named).
  auto changed = ds;
  changed.inputs[7 * 4] += 1.0f;
  attrace::connectors::write_dataset(d / "changed.h5", changed);
  r = run_attrace("ledger prove-example --dataset " + (d / "changed.h5") + " --example 7" + db);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("example 7 is not in the registered content of tranche 'school'"), std::string::npos) << r.out;
  EXPECT_EQ(attrace::connectors::sha256_file(d / "l.db"), sha) << "re-registering or proving wrote to the ledger";

  // attribute --registry-db: the fixture run is checked against a registry of another dataset
  // that uses the same tranche ids (refused, the tranche and example named), then against its own.
  const std::string config = d / "c.toml";
  write_text(config, "[run]\ncheckpoints = \"" + fixture("mlp_run.toml") + "\"\n[data]\ntrain = \"" + fixture("vec_train.h5") +
                         "\"\nquery = \"" + fixture("vec_query.h5") + "\"\n[gradients]\nbatch_size = 8\n");
  ASSERT_EQ(run_attrace("ledger init --db " + (d / "other.db")).code, 0);
  ASSERT_EQ(run_attrace("ledger register --dataset " + fixture("digits_train.h5") + " --db " + (d / "other.db")).code, 0);
  r = run_attrace("attribute -q -c " + config + " -o " + (d / "out") + " --registry-db " + (d / "other.db"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("tranche 't0'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("first differing example: dataset example 0 (id"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(d / "out"));
  r = run_attrace("attribute -q -c " + config + " -o " + (d / "out") + " --registry-db " + (d / "l.db"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("is not registered in the registry"), std::string::npos) << r.out;
  ASSERT_EQ(run_attrace("ledger init --db " + (d / "own.db")).code, 0);
  ASSERT_EQ(run_attrace("ledger register --dataset " + fixture("vec_train.h5") + " --db " + (d / "own.db")).code, 0);
  r = run_attrace("attribute -q -c " + config + " -o " + (d / "out") + " --registry-db " + (d / "own.db"));
  ASSERT_EQ(r.code, 0) << r.out;
  // score checks the store's training set (ids, tranche table, digests) the same way.
  ASSERT_EQ(run_attrace("featurize -q -c " + config + " -o " + (d / "store.h5")).code, 0);
  r = run_attrace("score -q -c " + config + " --store " + (d / "store.h5") + " -o " + (d / "scored") + " --registry-db " +
                  (d / "other.db"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("tranche 't0'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("first differing example: dataset example 0 (id"), std::string::npos) << r.out;
  r = run_attrace("score -q -c " + config + " --store " + (d / "store.h5") + " -o " + (d / "scored") + " --registry-db " +
                  (d / "own.db"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_text(d / "scored/report.json"), read_text(d / "out/report.json"));
  EXPECT_NE(run_attrace("attribute -q -c " + config + " -o " + (d / "out2") + " --registry-db " + (d / "own.db") +
                        " --registry-evm " + (d / "evm.toml"))
                .code,
            0);  // one registry at a time
}

}  // namespace
