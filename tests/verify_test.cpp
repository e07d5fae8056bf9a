// `attrace verify` end to end with the real binary: a small attribution run (the MLP fixture, 37
// training examples in 5 tranches, 11 queries) committed to a real SQLite ledger and to the
// contract on a real anvil node, verified, then tampered with in every way the issue names, each
// of which must be disputed with the right tranche, input or field named; a dispute, an upheld
// resolution and a corrected commitment that verifies and pays out the whole pool.
#include "ledger_fixtures.hpp"
#include "test_util.hpp"

#include <attrace/connectors/hash.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/embedded.hpp>
#include <attrace/ledger/epoch.hpp>
#include <attrace/ledger/evm.hpp>
#include <attrace/ledger/merkle.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <thread>

namespace al = attrace::ledger;
namespace fs = std::filesystem;
using attrace::test::fixture;
using attrace::test::read_text;
using attrace::test::run_attrace;
using attrace::test::TempDir;
using attrace::test::write_text;
using nlohmann::json;

namespace {

const char* kPool = "1000000007";  // a prime: the split has remainders to hand out

std::string q(const std::string& s) { return "'" + s + "'"; }

// Copies the fixture inputs into DIR (run file, its checkpoints, both datasets) with a config
// that names them relatively, as a model builder would publish them.
void make_inputs(const std::string& dir) {
  fs::create_directories(dir);
  for (const char* f : {"mlp_run.toml", "mlp_1.pt", "mlp_2.pt", "mlp_3.pt", "vec_train.h5", "vec_query.h5"})
    fs::copy_file(fixture(f), dir + "/" + f, fs::copy_options::overwrite_existing);
  write_text(dir + "/attrace.toml",
             "[run]\ncheckpoints = \"mlp_run.toml\"\n[data]\ntrain = \"vec_train.h5\"\nquery = \"vec_query.h5\"\n");
}

json read_json(const std::string& path) { return json::parse(read_text(path)); }

// The findings of kind `kind` in a verification.json.
std::vector<json> findings(const json& v, const std::string& kind) {
  std::vector<json> out;
  for (const auto& f : v.at("findings"))
    if (f.at("kind") == kind) out.push_back(f);
  return out;
}

bool names_tranche(const std::vector<json>& fs_, const std::string& tranche) {
  for (const auto& f : fs_)
    if (f.value("tranche", "") == tranche) return true;
  return false;
}

// Rewrites an epoch manifest's leaves with `edit` (leaf index, leaf json), recomputing each leaf
// hash from its content and the root, unless `keep_hashes` (then the stated content and the
// hashes in the tree disagree). Returns a commitment ready to be committed.
template <class Edit>
al::EpochCommitment edited_epoch(const std::string& manifest, uint64_t epoch, Edit edit, bool honest_hashes) {
  json m = json::parse(manifest);
  m["epoch"] = std::to_string(epoch);
  al::EpochCommitment c;
  c.epoch = epoch;
  c.pool = al::u256_from_decimal(m["pool"].get<std::string>(), "pool");
  std::vector<al::Bytes32> hashes;
  for (size_t k = 0; k < m["leaves"].size(); ++k) {
    json& j = m["leaves"][k];
    al::EpochLeaf l;
    l.tranche = j["tranche"];
    l.leaf.epoch = epoch;
    l.leaf.tranche_id = al::keccak256(l.tranche);
    l.leaf.account = al::address_from_hex(j["account"].get<std::string>(), "account");
    l.leaf.score = al::u256_from_decimal(j["score"].get<std::string>(), "score");
    l.leaf.amount = al::u256_from_decimal(j["amount"].get<std::string>(), "amount");
    l.hash = al::leaf_hash(l.leaf);  // hash of the honest content
    edit(k, j, l.leaf);              // content (j) and/or the leaf in the tree (l.leaf) changed
    if (honest_hashes) {
      l.leaf.score = al::u256_from_decimal(j["score"].get<std::string>(), "score");
      l.leaf.amount = al::u256_from_decimal(j["amount"].get<std::string>(), "amount");
    }
    l.hash = al::leaf_hash(l.leaf);
    j["leaf"] = al::to_hex(l.hash);
    hashes.push_back(l.hash);
    c.leaves.push_back(l);
  }
  c.root = al::MerkleTree(hashes).root();
  m["root"] = al::to_hex(c.root);
  c.manifest = al::canonical_json(m);
  c.manifest_hash = al::keccak256(c.manifest);
  return c;
}

// Shared across the tests: the published inputs and one honest run of them (made once).
class Verify : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_FALSE(attrace::test::fixtures().empty());
    ASSERT_TRUE(fs::exists(fixture("mlp_run.toml"))) << "fixtures missing: run the make_fixtures test first";
    shared_ = new TempDir();
    make_inputs(inputs());
    const auto r = run_attrace("attribute -q -c " + q(inputs() + "/attrace.toml") + " -o " + q(honest()));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  static std::string inputs() { return (*shared_) / "inputs"; }
  static std::string honest() { return (*shared_) / "honest"; }

  // A copy of the honest output directory (commit writes epoch files into it).
  std::string report_copy(const std::string& name) {
    const std::string d = dir_ / name;
    fs::create_directories(d);
    for (const auto& e : fs::directory_iterator(honest()))
      if (e.path().filename().string().rfind("epoch-", 0) != 0) fs::copy(e.path(), d + "/" + e.path().filename().string());
    return d;
  }
  void init_ledger(int64_t period = 3600) {
    const auto r = run_attrace("ledger init --db " + q(db()) + " --challenge-period " + std::to_string(period));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  std::string db() const { return dir_ / "ledger.db"; }
  attrace::test::CommandResult commit(const std::string& report, int epoch, const std::string& extra = "") {
    return run_attrace("ledger commit " + q(report) + " --epoch " + std::to_string(epoch) + " --pool " + kPool + " " + extra);
  }
  attrace::test::CommandResult verify(int epoch, const std::string& out, const std::string& extra = "") {
    return run_attrace("verify " + std::to_string(epoch) + " -q --db " + q(db()) + " --out " + q(out) + " " + extra);
  }
  void commit_library(const al::EpochCommitment& c) {
    auto l = al::open_embedded_ledger(db());
    l->commit(c, "test://crafted");
  }

  static TempDir* shared_;
  TempDir dir_;
};
TempDir* Verify::shared_ = nullptr;

TEST_F(Verify, HonestEpochIsConfirmedBitIdentical) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = verify(1, dir_ / "v.json");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.code, 0) << r.out;
  std::printf("[ verify ] honest epoch (37 x 11 examples, 3 checkpoints) verified in %.2f s\n", secs);
  EXPECT_NE(r.out.find("CONFIRMED (bit-identical"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verified in"), std::string::npos) << r.out;
  const std::string bytes = read_text(dir_ / "v.json");
  const json v = json::parse(bytes);
  EXPECT_EQ(bytes, al::canonical_json(v));  // canonical JSON
  EXPECT_EQ(v["verdict"], "confirmed");
  EXPECT_EQ(v["match"], "bit_identical");
  EXPECT_TRUE(v["findings"].empty());
  ASSERT_EQ(v["tranches"].size(), 5u);
  for (const auto& t : v["tranches"]) {
    EXPECT_EQ(t["verdict"], "identical");
    EXPECT_EQ(t["amount_committed"], t["amount_recomputed"]);
  }
  // Every input pinned by the manifest was hashed: run file, 3 checkpoints, two datasets.
  ASSERT_EQ(v["inputs"].size(), 6u);
  for (const auto& i : v["inputs"]) {
    EXPECT_TRUE(i["match"].get<bool>()) << i.dump();
    EXPECT_EQ(i["sha256"], attrace::connectors::sha256_file(i["path"]));
  }
  EXPECT_EQ(v["recomputation"]["root"], v["commitment"]["root"]);
  EXPECT_FALSE(v["engine"]["version"].get<std::string>().empty());
}

TEST_F(Verify, AnotherPrecisionOrKernelIsWithinToleranceAndTooStrictToleranceDisputes) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  // fp64 gradients and features: other numbers in the last bits of float32, well inside 1e-6.
  auto r = verify(1, dir_ / "fp64.json", "--precision fp64");
  ASSERT_EQ(r.code, 0) << r.out;
  json v = read_json(dir_ / "fp64.json");
  EXPECT_EQ(v["match"], "within_tolerance");
  EXPECT_EQ(v["recomputation"]["path"], "other");
  EXPECT_EQ(v["recomputation"]["overrides"]["gradients.precision"], "fp64");
  double worst = 0;
  for (const auto& t : v["tranches"]) worst = std::max(worst, std::abs(t["difference"].get<double>()));
  EXPECT_GT(worst, 0.0);
  EXPECT_LE(worst, 1e-6);
  // The same recomputation held to a tolerance below the differences it found: disputed.
  r = verify(1, dir_ / "strict.json", "--precision fp64 --tolerance " + std::to_string(worst / 2));
  ASSERT_EQ(r.code, 3) << r.out;
  v = read_json(dir_ / "strict.json");
  EXPECT_EQ(v["verdict"], "disputed");
  EXPECT_FALSE(findings(v, "share_out_of_tolerance").empty());
  // The slow fp64 checking kernel on the committed float32 features: within tolerance too.
  r = verify(1, dir_ / "canonical.json", "--scoring canonical");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_json(dir_ / "canonical.json")["recomputation"]["path"], "other");
}

TEST_F(Verify, SwappedCheckpointIsNamedByItsHash) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  const std::string pub = dir_ / "published";
  make_inputs(pub);
  fs::copy_file(fixture("mlp_3.pt"), pub + "/mlp_2.pt", fs::copy_options::overwrite_existing);
  const auto r = verify(1, dir_ / "v.json", "--inputs-dir " + q(pub));
  ASSERT_EQ(r.code, 3) << r.out;
  const json v = read_json(dir_ / "v.json");
  const auto f = findings(v, "input_hash");
  ASSERT_EQ(f.size(), 1u) << v.dump(1);
  EXPECT_NE(f[0]["input"].get<std::string>().find("mlp_2.pt"), std::string::npos);
  EXPECT_EQ(f[0]["recomputed"], attrace::connectors::sha256_file(pub + "/mlp_2.pt"));
  EXPECT_EQ(f[0]["committed"], attrace::connectors::sha256_file(fixture("mlp_2.pt")));
  EXPECT_TRUE(v["recomputation"].is_null());  // nothing computed from unpinned inputs
  EXPECT_NE(r.out.find("mlp_2.pt"), std::string::npos) << r.out;
}

TEST_F(Verify, OtherDatasetIsNamed) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  const std::string pub = dir_ / "published";
  make_inputs(pub);
  fs::copy_file(fixture("reg_train.h5"), pub + "/vec_train.h5", fs::copy_options::overwrite_existing);
  const auto r = verify(1, dir_ / "v.json", "--inputs-dir " + q(pub));
  ASSERT_EQ(r.code, 3) << r.out;
  const auto f = findings(read_json(dir_ / "v.json"), "input_hash");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0]["input"], "data.train");
}

TEST_F(Verify, ConfigLocatesRelocatedInputs) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  const std::string pub = dir_ / "elsewhere";
  make_inputs(pub);
  const auto r = verify(1, dir_ / "v.json", "--config " + q(pub + "/attrace.toml"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_json(dir_ / "v.json")["inputs"][0]["path"], pub + "/mlp_run.toml");
}

TEST_F(Verify, ChangedReportSharesAreDisputedNamingTheTranches) {
  init_ledger();
  // The builder moves 3% of the attribution from one tranche to another in report.json, re-pins
  // its hash in manifest.json and commits: the epoch manifest is honest about manipulated values.
  const std::string d = report_copy("manipulated");
  json rep = read_json(d + "/report.json");
  std::string from, to;
  for (auto& t : rep["tranches"]) {
    if (from.empty() && t["share"].get<double>() > 0.05) {
      from = t["id"];
      t["share"] = t["share"].get<double>() - 0.03;
    } else if (to.empty() && !from.empty()) {
      to = t["id"];
      t["share"] = t["share"].get<double>() + 0.03;
    }
  }
  ASSERT_FALSE(to.empty());
  const std::string bytes = rep.dump(2);
  write_text(d + "/report.json", bytes);
  json man = read_json(d + "/manifest.json");
  man["outputs"]["report.json"] = attrace::connectors::sha256_hex(bytes);
  write_text(d + "/manifest.json", man.dump());
  ASSERT_EQ(commit(d, 2, "--db " + q(db())).code, 0);
  const auto r = verify(2, dir_ / "v.json");
  ASSERT_EQ(r.code, 3) << r.out;
  const json v = read_json(dir_ / "v.json");
  const auto f = findings(v, "share_out_of_tolerance");
  EXPECT_EQ(f.size(), 2u) << v.dump(1);
  EXPECT_TRUE(names_tranche(f, from));
  EXPECT_TRUE(names_tranche(f, to));
  EXPECT_FALSE(findings(v, "report_differs").empty());
  EXPECT_NE(r.out.find("DISPUTED"), std::string::npos);
  for (const auto& t : v["tranches"]) {
    if (t["tranche"] == from) {
      EXPECT_NEAR(t["difference"].get<double>(), 0.03, 1e-9);
    }
  }
}

TEST_F(Verify, ChangedAmountIsDisputedNamingTheTranches) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  const std::string honest_manifest = read_text(honest() + "/epoch-1.json");
  std::string a, b;
  // Amounts moved from leaf 1 to leaf 0, the manifest's leaf hashes and root honestly over them.
  const auto c = edited_epoch(
      honest_manifest, 3,
      [&](size_t k, json& j, al::Leaf&) {
        if (k > 1) return;
        const al::U256 amount = al::u256_from_decimal(j["amount"].get<std::string>(), "amount");
        j["amount"] = al::to_decimal(k == 0 ? amount + 1000 : amount - 1000);
        (k == 0 ? a : b) = j["tranche"];
      },
      true);
  ASSERT_NO_THROW(al::load_epoch_manifest(c.manifest, "crafted"));  // consistent in itself
  commit_library(c);
  const auto r = verify(3, dir_ / "v.json");
  ASSERT_EQ(r.code, 3) << r.out;
  const json v = read_json(dir_ / "v.json");
  const auto f = findings(v, "amount_mismatch");
  ASSERT_EQ(f.size(), 2u) << v.dump(1);
  EXPECT_TRUE(names_tranche(f, a));
  EXPECT_TRUE(names_tranche(f, b));
  EXPECT_TRUE(findings(v, "share_out_of_tolerance").empty());  // the shares are the honest ones
}

TEST_F(Verify, LeafThatDoesNotMatchItsContentIsNamed) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  std::string a;
  // The manifest states the honest amounts, but the tree (and the root on the ledger) pays 500
  // more to leaf 0 and 500 less to leaf 1.
  const auto c = edited_epoch(
      read_text(honest() + "/epoch-1.json"), 4,
      [&](size_t k, json& j, al::Leaf& l) {
        if (k == 0) {
          l.amount += 500;
          a = j["tranche"];
        }
        if (k == 1) l.amount -= 500;
      },
      false);
  EXPECT_THROW(al::load_epoch_manifest(c.manifest, "crafted"), attrace::InputError);
  commit_library(c);
  const auto r = verify(4, dir_ / "v.json");
  ASSERT_EQ(r.code, 3) << r.out;
  const json v = read_json(dir_ / "v.json");
  const auto f = findings(v, "leaf_mismatch");
  ASSERT_EQ(f.size(), 2u) << v.dump(1);
  EXPECT_TRUE(names_tranche(f, a));
}

TEST_F(Verify, SettingOrPolicyChangedAfterTheFactIsDisputed) {
  init_ledger();
  // (a) The policy edited consistently in settings and in the manifest's policy field: the
  // recomputation under the stated policy does not reproduce the committed report.
  std::string d = report_copy("policy");
  json man = read_json(d + "/manifest.json");
  ASSERT_EQ(man["negative_policy"], "clip");
  man["negative_policy"] = "clip_per_query";
  man["settings"]["attribution"]["negative_policy"] = "clip_per_query";
  write_text(d + "/manifest.json", man.dump());
  ASSERT_EQ(commit(d, 5, "--db " + q(db())).code, 0);
  auto r = verify(5, dir_ / "a.json");
  ASSERT_EQ(r.code, 3) << r.out;
  json v = read_json(dir_ / "a.json");
  EXPECT_FALSE(findings(v, "report_differs").empty()) << v.dump(1);
  // (b) Only the declared tolerance raised (to hide a difference) in the manifest's tolerance
  // block, not in the settings it was run with: the field is named.
  d = report_copy("tolerance");
  man = read_json(d + "/manifest.json");
  man["tolerance"]["value"] = 0.5;
  write_text(d + "/manifest.json", man.dump());
  ASSERT_EQ(commit(d, 6, "--db " + q(db())).code, 0);
  r = verify(6, dir_ / "b.json");
  ASSERT_EQ(r.code, 3) << r.out;
  v = read_json(dir_ / "b.json");
  const auto f = findings(v, "manifest_field");
  ASSERT_EQ(f.size(), 1u) << v.dump(1);
  EXPECT_EQ(f[0]["field"], "tolerance.value");
}

TEST_F(Verify, BadInputsExitTwoAndWriteNoVerdict) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  const std::string out = dir_ / "v.json";
  // An epoch the ledger does not know.
  auto r = verify(99, out);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("epoch 99 is not committed"), std::string::npos) << r.out;
  // A missing input, named (and the folder where it was looked for).
  const std::string pub = dir_ / "published";
  make_inputs(pub);
  fs::remove(pub + "/vec_query.h5");
  r = verify(1, out, "--inputs-dir " + q(pub));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("data.query: '" + pub + "/vec_query.h5'"), std::string::npos) << r.out;
  // A manifest from a newer format (committed by a newer attrace).
  json m = read_json(honest() + "/epoch-1.json");
  m["format"] = "attrace.epoch/2";
  m["epoch"] = "7";
  al::EpochCommitment c;
  c.epoch = 7;
  c.pool = al::U256(kPool);
  c.root = al::bytes32_from_hex(m["root"].get<std::string>(), "root");
  c.manifest = al::canonical_json(m);
  c.manifest_hash = al::keccak256(c.manifest);
  commit_library(c);
  r = verify(7, out);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("newer attrace"), std::string::npos) << r.out;
  // A ledger file that does not exist.
  r = run_attrace("verify 1 --db " + q(dir_ / "typo.db") + " --out " + q(out));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(Verify, DisputeResolveCorrectedCommitConfirmedClaimsAddUpToThePool) {
  init_ledger(12);  // seconds: long enough to verify and dispute, short enough to wait for
  const std::string d = report_copy("manipulated");
  json rep = read_json(d + "/report.json");
  size_t top = 0;
  for (size_t k = 0; k < rep["tranches"].size(); ++k)
    if (rep["tranches"][k]["share"].get<double>() > rep["tranches"][top]["share"].get<double>()) top = k;
  rep["tranches"][top]["share"] = rep["tranches"][top]["share"].get<double>() - 0.01;
  rep["tranches"][(top + 1) % rep["tranches"].size()]["share"] =
      rep["tranches"][(top + 1) % rep["tranches"].size()]["share"].get<double>() + 0.01;
  const std::string bytes = rep.dump(2);
  write_text(d + "/report.json", bytes);
  json man = read_json(d + "/manifest.json");
  man["outputs"]["report.json"] = attrace::connectors::sha256_hex(bytes);
  write_text(d + "/manifest.json", man.dump());
  ASSERT_EQ(commit(d, 1, "--db " + q(db())).code, 0);

  auto r = verify(1, dir_ / "v.json", "--file-dispute");
  ASSERT_EQ(r.code, 3) << r.out;
  const std::string vbytes = read_text(dir_ / "v.json");
  EXPECT_NE(r.out.find("reason hash " + al::to_hex(al::keccak256(vbytes))), std::string::npos) << r.out;
  r = run_attrace("ledger status 1 --json --db " + q(db()));
  EXPECT_EQ(json::parse(r.out)["state"], "disputed") << r.out;
  // Filing again: the epoch is already disputed, the verdict stands, exit 4.
  EXPECT_EQ(verify(1, dir_ / "again.json", "--file-dispute").code, 4);

  ASSERT_EQ(run_attrace("ledger resolve 1 --upheld --db " + q(db())).code, 0);
  const std::string fixed = report_copy("corrected");
  ASSERT_EQ(commit(fixed, 1, "--db " + q(db())).code, 0);
  r = verify(1, dir_ / "fixed.json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_json(dir_ / "fixed.json")["match"], "bit_identical");
  EXPECT_EQ(read_json(dir_ / "fixed.json")["commitment"]["revision"], 2);  // the corrected commitment

  // Claims follow the corrected commitment once its window has passed.
  const json st = json::parse(run_attrace("ledger status 1 --json --db " + q(db())).out);
  while (std::chrono::system_clock::now().time_since_epoch() <= std::chrono::seconds(st["challengeEnds"].get<int64_t>()))
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  r = run_attrace("ledger claim 1 --all --json --db " + q(db()));
  ASSERT_EQ(r.code, 0) << r.out;
  al::U256 paid = 0;
  for (const auto& c : json::parse(r.out)) paid += al::u256_from_decimal(c["amount"].get<std::string>(), "amount");
  EXPECT_EQ(paid, al::U256(kPool));
  EXPECT_EQ(json::parse(run_attrace("ledger status 1 --json --db " + q(db())).out)["claimed"], kPool);
}

// ---- The registry plane ------------------------------------------------------------------------

// Writes a variant of a training set with h5py: "changed" alters one input value of example 2
// (tranche t2); "merged" moves tranche t1's examples into t0 under the new id t0b (t1 left out).
void dataset_variant(const std::string& from, const std::string& to, const std::string& kind) {
  const std::string py =
      "import h5py, numpy as np, sys\n"
      "src, dst, kind = sys.argv[1:4]\n"
      "with h5py.File(src, 'r') as f:\n"
      "    x = f['inputs'][:]; y = f['targets'][:]; ids = [s.decode() if isinstance(s, bytes) else s for s in f['ids'][:]]\n"
      "    tr = f['tranche'][:]; g = f['tranches']\n"
      "    tab = {k: [s.decode() if isinstance(s, bytes) else s for s in g[k][:]] for k in ('id', 'account', 'name', 'license')}\n"
      "if kind == 'changed':\n"
      "    x[2, 0] += 1.0\n"
      "else:\n"
      "    tr = np.array([0 if t == 1 else (t - 1 if t > 1 else t) for t in tr])\n"
      "    for k in tab: del tab[k][1]\n"
      "    tab['id'][0] = 't0b'\n"
      "with h5py.File(dst, 'w') as f:\n"
      "    f['inputs'] = x; f['targets'] = y\n"
      "    f.create_dataset('ids', data=ids, dtype=h5py.string_dtype())\n"
      "    f['tranche'] = tr.astype(np.int32)\n"
      "    g = f.create_group('tranches')\n"
      "    for k, v in tab.items(): g.create_dataset(k, data=v, dtype=h5py.string_dtype())\n";
  write_text(to + ".py", py);
  const auto r = attrace::test::run_shell("/usr/bin/python3 " + q(to + ".py") + " " + q(from) + " " + q(to) + " " + kind);
  ASSERT_EQ(r.code, 0) << r.out;
}

TEST_F(Verify, FromAFeatureStoreConfirmedAndAStoreOfOtherDataNamed) {
  init_ledger();
  ASSERT_EQ(commit(honest(), 1, "--db " + q(db())).code, 0);
  auto r = run_attrace("featurize -q -c " + q(inputs() + "/attrace.toml") + " -o " + q(dir_ / "train-features.h5"));
  ASSERT_EQ(r.code, 0) << r.out;
  r = verify(1, dir_ / "v.json", "--store " + q(dir_ / "train-features.h5"));
  ASSERT_EQ(r.code, 0) << r.out;
  json v = read_json(dir_ / "v.json");
  EXPECT_EQ(v["match"], "bit_identical");
  EXPECT_EQ(v["recomputation"]["store"], dir_ / "train-features.h5");
  // A store featurized from another training set (example 2 changed): named by its dataset hash.
  const std::string other = dir_ / "other";
  make_inputs(other);
  dataset_variant(inputs() + "/vec_train.h5", other + "/vec_train.h5", "changed");
  r = run_attrace("featurize -q -c " + q(other + "/attrace.toml") + " -o " + q(dir_ / "other-features.h5"));
  ASSERT_EQ(r.code, 0) << r.out;
  r = verify(1, dir_ / "other.json", "--store " + q(dir_ / "other-features.h5"));
  ASSERT_EQ(r.code, 3) << r.out;
  v = read_json(dir_ / "other.json");
  const auto f = findings(v, "input_hash");
  ASSERT_EQ(f.size(), 1u) << v.dump(1);
  EXPECT_EQ(f[0]["recomputed"], attrace::connectors::sha256_file(other + "/vec_train.h5"));
}

class VerifyRegistry : public Verify {
 protected:
  // Registers `dataset`'s tranches, then attributes the published inputs with the registry check
  // (config `cfg`, default the published one) into DIR/NAME.
  std::string registered_run(const std::string& name, const std::string& cfg = "") {
    const std::string out = dir_ / name;
    const auto r = run_attrace("attribute -q -c " + q(cfg.empty() ? inputs() + "/attrace.toml" : cfg) + " -o " + q(out) +
                               " --registry-db " + q(db()));
    EXPECT_EQ(r.code, 0) << r.out;
    return out;
  }
  void register_dataset(const std::string& dataset) {
    const auto r = run_attrace("ledger register --dataset " + q(dataset) + " --db " + q(db()));
    ASSERT_EQ(r.code, 0) << r.out;
  }
};

TEST_F(VerifyRegistry, RegisteredRunIsConfirmedAndAFakedOrderIsNamed) {
  init_ledger();
  register_dataset(inputs() + "/vec_train.h5");
  const std::string out = registered_run("good");
  ASSERT_TRUE(read_json(out + "/manifest.json").contains("registry"));
  ASSERT_EQ(commit(out, 1, "--db " + q(db())).code, 0);
  auto r = verify(1, dir_ / "v.json");
  ASSERT_EQ(r.code, 0) << r.out;
  json v = read_json(dir_ / "v.json");
  EXPECT_EQ(v["match"], "bit_identical");
  EXPECT_EQ(v["registry"]["checked"], true);

  // The builder swaps two registration orders in the manifest (first_registered credit moves).
  const std::string d = report_copy("faked");
  for (const auto& e : fs::directory_iterator(out))
    fs::copy(e.path(), d + "/" + e.path().filename().string(), fs::copy_options::overwrite_existing);
  json man = read_json(d + "/manifest.json");
  std::swap(man["registry"]["tranches"][0]["order"], man["registry"]["tranches"][3]["order"]);
  write_text(d + "/manifest.json", man.dump());
  fs::remove(d + "/epoch-1.json");
  ASSERT_EQ(commit(d, 2, "--db " + q(db())).code, 0);
  r = verify(2, dir_ / "faked.json");
  ASSERT_EQ(r.code, 3) << r.out;
  v = read_json(dir_ / "faked.json");
  const auto f = findings(v, "registry_mismatch");
  ASSERT_EQ(f.size(), 2u) << v.dump(1);
  EXPECT_TRUE(names_tranche(f, "t0"));
  EXPECT_TRUE(names_tranche(f, "t3"));
  EXPECT_EQ(f[0]["field"], "registry.order");
}

TEST_F(VerifyRegistry, DatasetThatIsNotTheRegisteredOneIsNamed) {
  init_ledger();
  // Registered: a training set whose example 2 (tranche t2) differs from the published one. The
  // builder attributes the published set without the check and copies a registered run's
  // registry block into its manifest.
  const std::string other = dir_ / "other";
  make_inputs(other);
  dataset_variant(inputs() + "/vec_train.h5", other + "/vec_train.h5", "changed");
  register_dataset(other + "/vec_train.h5");
  const std::string reg_run = registered_run("registered", other + "/attrace.toml");
  const std::string d = report_copy("unregistered");
  json man = read_json(d + "/manifest.json");
  man["registry"] = read_json(reg_run + "/manifest.json")["registry"];
  write_text(d + "/manifest.json", man.dump());
  ASSERT_EQ(commit(d, 1, "--db " + q(db())).code, 0);
  const auto r = verify(1, dir_ / "v.json");
  ASSERT_EQ(r.code, 3) << r.out;
  const json v = read_json(dir_ / "v.json");
  const auto f = findings(v, "registry_mismatch");
  ASSERT_EQ(f.size(), 1u) << v.dump(1);
  EXPECT_NE(f[0]["message"].get<std::string>().find("'t2'"), std::string::npos) << f[0].dump();
  EXPECT_NE(f[0]["message"].get<std::string>().find("ex002"), std::string::npos) << f[0].dump();
  EXPECT_TRUE(findings(v, "share_out_of_tolerance").empty());  // the shares are honest for these inputs
}

TEST_F(VerifyRegistry, TrancheLeftOutWhileItsRegisteredExamplesAreInTheDataIsNamed) {
  init_ledger();
  register_dataset(inputs() + "/vec_train.h5");
  // The builder publishes a training set where t0's and t1's examples form one new tranche t0b
  // (t0's account), registers that, and runs with the registry check: every tranche in the data
  // is registered, t0 and t1 are simply gone.
  const std::string pub = dir_ / "published";
  make_inputs(pub);
  dataset_variant(inputs() + "/vec_train.h5", pub + "/vec_train.h5", "merged");
  register_dataset(pub + "/vec_train.h5");
  const std::string out = registered_run("merged", pub + "/attrace.toml");
  ASSERT_EQ(commit(out, 1, "--db " + q(db())).code, 0);
  const auto r = verify(1, dir_ / "v.json");
  ASSERT_EQ(r.code, 3) << r.out;
  const json v = read_json(dir_ / "v.json");
  // t0 and t1 (registered #1 and #2) are both gone from the tranche table; their 8 examples each
  // (rows k with k % 5 == 0 or 1 of the 37) are all in t0b.
  const auto f = findings(v, "tranche_left_out");
  ASSERT_EQ(f.size(), 2u) << v.dump(1);
  EXPECT_TRUE(names_tranche(f, "t0"));
  EXPECT_TRUE(names_tranche(f, "t1"));
  for (const auto& one : f) {
    EXPECT_EQ(one["examples"], 8);
    EXPECT_EQ(one["in"], json::array({"t0b"}));
  }
  EXPECT_EQ(findings(v, "share_out_of_tolerance").size(), 0u);
}

// ---- The contract on anvil ---------------------------------------------------------------------

class VerifyEvm : public Verify {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(attrace::test::contract_artifact())) << attrace::test::contract_artifact();
    anvil_ = std::make_unique<attrace::test::Anvil>();
    al::RpcClient c(anvil_->url(), std::chrono::milliseconds(500));
    for (int i = 0; i < 100; ++i) {
      try {
        c.call("eth_chainId", json::array());
        break;
      } catch (const al::RpcError&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
    ::setenv("ATTRACE_PRIVATE_KEY", attrace::test::kAnvilKey0, 1);
    write_text(dir_ / "evm.toml", "[evm]\nrpc_url = \"" + anvil_->url() + "\"\nchain_id = 31337\n");
    const auto r = run_attrace("ledger deploy --json --backend evm --evm-config " + q(dir_ / "evm.toml") + " --artifact " +
                               q(attrace::test::contract_artifact()) + " --challenge-period 3600");
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string contract = json::parse(r.out)["contract"];
    contract_ = contract;
    write_text(evm(), "[evm]\nrpc_url = \"" + anvil_->url() + "\"\nchain_id = 31337\ncontract = \"" + contract + "\"\n");
  }
  void TearDown() override { ::unsetenv("ATTRACE_PRIVATE_KEY"); }
  std::string evm() const { return dir_ / "ledger.toml"; }
  std::string on_chain() const { return "--backend evm --evm-config " + q(evm()); }
  // Commits a crafted epoch straight to the contract, its manifest published at a file:// uri.
  void commit_crafted(const al::EpochCommitment& c) {
    al::EvmOptions o;
    o.rpc_url = anvil_->url();
    o.chain_id = 31337;
    o.contract = al::address_from_hex(contract_, "contract");
    al::EvmLedger l(o, al::PrivateKey::from_hex(attrace::test::kAnvilKey0));
    const std::string path = dir_ / ("crafted-" + std::to_string(c.epoch) + ".json");
    write_text(path, c.manifest);
    l.commit(c, "file://" + path);
  }
  std::unique_ptr<attrace::test::Anvil> anvil_;
  std::string contract_;
};

TEST_F(VerifyEvm, TamperMatrixOnTheContract) {
  const std::string good = report_copy("good");
  ASSERT_EQ(commit(good, 1, on_chain()).code, 0);
  const std::string honest_manifest = read_text(good + "/epoch-1.json");
  auto verify_evm = [&](int epoch, const std::string& out, const std::string& extra = "") {
    return run_attrace("verify " + std::to_string(epoch) + " -q " + on_chain() + " --out " + q(dir_ / out) + " " + extra);
  };
  // Swapped checkpoint.
  const std::string pub = dir_ / "published";
  make_inputs(pub);
  fs::copy_file(fixture("mlp_1.pt"), pub + "/mlp_3.pt", fs::copy_options::overwrite_existing);
  auto r = verify_evm(1, "swap.json", "--inputs-dir " + q(pub));
  ASSERT_EQ(r.code, 3) << r.out;
  auto f = findings(read_json(dir_ / "swap.json"), "input_hash");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_NE(f[0]["input"].get<std::string>().find("mlp_3.pt"), std::string::npos);
  // Changed amounts, hashed honestly.
  std::string a;
  commit_crafted(edited_epoch(
      honest_manifest, 3,
      [&](size_t k, json& j, al::Leaf&) {
        if (k > 1) return;
        const al::U256 amount = al::u256_from_decimal(j["amount"].get<std::string>(), "amount");
        j["amount"] = al::to_decimal(k == 0 ? amount + 7 : amount - 7);
        if (k == 0) a = j["tranche"];
      },
      true));
  r = verify_evm(3, "amount.json");
  ASSERT_EQ(r.code, 3) << r.out;
  f = findings(read_json(dir_ / "amount.json"), "amount_mismatch");
  EXPECT_EQ(f.size(), 2u);
  EXPECT_TRUE(names_tranche(f, a));
  // A leaf whose hash in the tree is not its stated content.
  commit_crafted(edited_epoch(
      honest_manifest, 4,
      [&](size_t k, json&, al::Leaf& l) {
        if (k == 0) l.amount += 9;
        if (k == 1) l.amount -= 9;
      },
      false));
  r = verify_evm(4, "leaf.json");
  ASSERT_EQ(r.code, 3) << r.out;
  f = findings(read_json(dir_ / "leaf.json"), "leaf_mismatch");
  EXPECT_EQ(f.size(), 2u);
  EXPECT_TRUE(names_tranche(f, a));
  // A manifest file at the uri that is not the committed one: bad input, no verdict.
  std::string crafted = read_text(dir_ / "crafted-4.json");
  crafted[crafted.size() - 2] = crafted[crafted.size() - 2] == 'a' ? 'b' : 'a';
  write_text(dir_ / "crafted-4.json", crafted);
  r = verify_evm(4, "swapped-manifest.json");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("not the committed manifest"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "swapped-manifest.json"));
  // An epoch the contract does not know.
  EXPECT_EQ(verify_evm(9, "unknown.json").code, 2);
}

TEST_F(VerifyEvm, ConfirmedTamperedDisputedOnChainResolvedCorrectedClaimed) {
  const std::string good = report_copy("good");
  ASSERT_EQ(commit(good, 1, on_chain()).code, 0);
  // The contract keeps the manifest hash: verify reads the manifest from the commitment's uri.
  auto r = run_attrace("verify 1 -q " + on_chain() + " --out " + q(dir_ / "v1.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_json(dir_ / "v1.json")["match"], "bit_identical");
  EXPECT_EQ(read_json(dir_ / "v1.json")["ledger"]["backend"], "evm");

  // A manipulated report committed as epoch 2, disputed on chain with verification.json's hash.
  const std::string bad = report_copy("bad");
  json rep = read_json(bad + "/report.json");
  size_t top = 0;  // the largest share gives 2% to the next tranche
  for (size_t k = 0; k < rep["tranches"].size(); ++k)
    if (rep["tranches"][k]["share"].get<double>() > rep["tranches"][top]["share"].get<double>()) top = k;
  const size_t other = (top + 1) % rep["tranches"].size();
  rep["tranches"][top]["share"] = rep["tranches"][top]["share"].get<double>() - 0.02;
  rep["tranches"][other]["share"] = rep["tranches"][other]["share"].get<double>() + 0.02;
  const std::string bytes = rep.dump(2);
  write_text(bad + "/report.json", bytes);
  json man = read_json(bad + "/manifest.json");
  man["outputs"]["report.json"] = attrace::connectors::sha256_hex(bytes);
  write_text(bad + "/manifest.json", man.dump());
  r = commit(bad, 2, on_chain());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_attrace("verify 2 -q --file-dispute " + on_chain() + " --out " + q(dir_ / "v2.json"));
  ASSERT_EQ(r.code, 3) << r.out;
  const json v2 = read_json(dir_ / "v2.json");
  const auto f = findings(v2, "share_out_of_tolerance");
  EXPECT_TRUE(names_tranche(f, rep["tranches"][top]["id"])) << v2.dump(1);
  EXPECT_TRUE(names_tranche(f, rep["tranches"][other]["id"]));
  EXPECT_NE(r.out.find(al::to_hex(al::keccak256(read_text(dir_ / "v2.json")))), std::string::npos) << r.out;
  EXPECT_EQ(json::parse(run_attrace("ledger status 2 --json " + on_chain()).out)["state"], "disputed");

  // The deployer is the arbiter: uphold, commit the honest run, verify, wait, claim everything.
  ASSERT_EQ(run_attrace("ledger resolve 2 --upheld " + on_chain()).code, 0);
  const std::string fixed = report_copy("fixed");
  ASSERT_EQ(commit(fixed, 2, on_chain()).code, 0);
  r = run_attrace("verify 2 -q " + on_chain() + " --out " + q(dir_ / "v3.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  al::RpcClient rpc(anvil_->url(), std::chrono::milliseconds(5000));
  rpc.call("evm_increaseTime", {3601});
  rpc.call("evm_mine", json::array());
  r = run_attrace("ledger claim 2 --all --json " + on_chain() + " --manifest " + q(fixed + "/epoch-2.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  al::U256 paid = 0;
  for (const auto& c : json::parse(r.out)) paid += al::u256_from_decimal(c["amount"].get<std::string>(), "amount");
  EXPECT_EQ(paid, al::U256(kPool));
}

TEST_F(VerifyEvm, UnreachableNodeExitsOneWithoutVerdict) {
  const int port = attrace::test::free_port();
  write_text(dir_ / "down.toml", "[evm]\nrpc_url = \"http://127.0.0.1:" + std::to_string(port) +
                                     "\"\nchain_id = 31337\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\nrpc_timeout_ms = 2000\n");
  const auto r = run_attrace("verify 1 -q --backend evm --evm-config " + q(dir_ / "down.toml") + " --out " + q(dir_ / "v.json"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "v.json"));
}

}  // namespace
