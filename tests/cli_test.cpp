// The attrace binary as a user runs it: exit codes, one-line errors, atomic outputs, byte-identical
// reruns, the demo.
#include "ledger_fixtures.hpp"

#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/scores_file.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <tuple>
#include <cstdio>
#include <thread>
#include <filesystem>
#include <map>
#include <random>

namespace fs = std::filesystem;
using attrace::test::fixture;
using attrace::test::read_text;
using attrace::test::TempDir;
using attrace::test::write_text;

namespace {

struct Result {
  int code = -1;
  std::string out;  // stdout and stderr together
};

Result run(const std::string& args) {
  const std::string bin = attrace::test::attrace_bin();
  EXPECT_FALSE(bin.empty()) << "attrace binary unknown (set ATTRACE_BIN)";
  Result r;
  if (bin.empty()) return r;
  FILE* p = ::popen((bin + " " + args + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string config_text(const std::string& model, const std::string& data) {
  return "[run]\ncheckpoints = \"" + fixture(model + "_run.toml") + "\"\n[data]\ntrain = \"" + fixture(data + "_train.h5") +
         "\"\nquery = \"" + fixture(data + "_query.h5") + "\"\n[gradients]\nbatch_size = 8\n[attribution]\ntop_k = 4\n";
}

// Only the files a finished run writes, and no staging leftovers.
void expect_no_output(const TempDir& d, const std::string& name) {
  EXPECT_FALSE(fs::exists(d / name)) << name << " exists after a failed run";
  for (const auto& e : fs::directory_iterator(d.str()))
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << "leftover " << e.path();
}

TEST(Cli, AttributeWritesAConsistentOutputDirectory) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  write_text(d / "c.toml", config_text("mlp", "vec"));
  const auto r = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "out"));
  ASSERT_EQ(r.code, 0) << r.out;
  for (auto f : {"report.json", "attribution.csv", "manifest.json", "scores.h5"}) ASSERT_TRUE(fs::exists(d / ("out/" + std::string(f)))) << f;
  const auto report = nlohmann::json::parse(read_text(d / "out/report.json"));
  const auto manifest = nlohmann::json::parse(read_text(d / "out/manifest.json"));
  double total_share = 0;
  for (const auto& t : report["attribution"]) {
    EXPECT_GE(t["share"].get<double>(), 0.0);
    total_share += t["share"].get<double>();
  }
  EXPECT_NEAR(total_share, 1.0, 1e-12);
  EXPECT_EQ(report["counts"]["train"], 37);
  EXPECT_EQ(report["queries"].size(), 11u);
  EXPECT_EQ(report["queries"][0]["proponents"].size(), 4u);
  // The manifest pins inputs and outputs by hash.
  EXPECT_EQ(manifest["run"]["checkpoints"][2]["sha256"], attrace::connectors::sha256_file(fixture("mlp_3.pt")));
  EXPECT_EQ(manifest["run"]["checkpoints"][2]["lr"], 0.02);
  EXPECT_EQ(manifest["train"]["sha256"], attrace::connectors::sha256_file(fixture("vec_train.h5")));
  EXPECT_EQ(manifest["outputs"]["report.json"], attrace::connectors::sha256_file(d / "out/report.json"));
  EXPECT_EQ(manifest["outputs"]["scores.h5"], attrace::connectors::sha256_file(d / "out/scores.h5"));
  // Speed settings (batch size, memory limit, threads) change no number and are not recorded.
  EXPECT_FALSE(manifest["settings"]["gradients"].contains("batch_size"));
  EXPECT_EQ(manifest["negative_policy"], "clip");
  EXPECT_EQ(manifest["tranches"].size(), 5u);
  // Canonical form: the file is exactly the compact, key-sorted dump of itself.
  EXPECT_EQ(read_text(d / "out/manifest.json"), manifest.dump());
  int64_t n = 0, m = 0;
  const auto scores = attrace::connectors::read_scores_h5(d / "out/scores.h5", &n, &m);
  EXPECT_EQ(n, 37);
  EXPECT_EQ(m, 11);
  EXPECT_EQ(scores.size(), 37u * 11u);
}

TEST(Cli, RerunsAreByteIdenticalAndOverridesAreRecorded) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  write_text(d / "c.toml", config_text("deep", "vec"));
  ASSERT_EQ(run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "a")).code, 0);
  ASSERT_EQ(run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "b")).code, 0);
  for (auto f : {"report.json", "attribution.csv", "manifest.json", "scores.h5"})
    EXPECT_EQ(read_text(d / ("a/" + std::string(f))), read_text(d / ("b/" + std::string(f)))) << f << " differs between runs";
  const auto r = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "c") + " --precision fp64 --set attribution.top_k=2 --scores never");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto manifest = nlohmann::json::parse(read_text(d / "c/manifest.json"));
  EXPECT_EQ(manifest["settings"]["gradients"]["precision"], "fp64");
  EXPECT_EQ(manifest["settings"]["attribution"]["top_k"], 2);
  EXPECT_FALSE(fs::exists(d / "c/scores.h5"));
  EXPECT_FALSE(manifest["outputs"].contains("scores.h5"));
}

TEST(Cli, ExistingOutputNeedsForce) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  write_text(d / "c.toml", config_text("mlp", "vec"));
  ASSERT_EQ(run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "out")).code, 0);
  const auto again = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "out"));
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("already exists"), std::string::npos) << again.out;
  write_text(d / "out/stale.txt", "from the previous run");
  EXPECT_EQ(run("attribute -q --force -c " + (d / "c.toml") + " -o " + (d / "out")).code, 0);
  EXPECT_FALSE(fs::exists(d / "out/stale.txt")) << "--force must replace the whole directory";
  EXPECT_TRUE(fs::exists(d / "out/manifest.json"));
  expect_no_output(d, "no-such-name");  // and leave no staging directory behind
}

TEST(Cli, MalformedTomlIsOneLineAndWritesNothing) {
  TempDir d;
  write_text(d / "c.toml", "[gradients]\nbatch_size = = 3\n");
  const auto r = run("attribute -c " + (d / "c.toml") + " -o " + (d / "out"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("attrace: error: " + (d / "c.toml") + ":2:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("malformed TOML"), std::string::npos) << r.out;
  expect_no_output(d, "out");
}

TEST(Cli, UnknownSettingIsRejected) {
  TempDir d;
  write_text(d / "c.toml", "[gradients]\nbatchsize = 3\n");
  const auto r = run("attribute -c " + (d / "c.toml") + " -o " + (d / "out"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("unknown setting 'gradients.batchsize'"), std::string::npos) << r.out;
}

TEST(Cli, OutputDirectoryNotWritable) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  write_text(d / "c.toml", config_text("mlp", "vec"));
  const auto r = run("attribute -q -c " + (d / "c.toml") + " -o /proc/attrace-out");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("/proc/attrace-out"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists("/proc/attrace-out"));
}

TEST(Cli, MissingCheckpointFailsBeforeWritingAnything) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  write_text(d / "run.toml", "[[checkpoint]]\nfile = \"gone.pt\"\nstep = 1\nlr = 0.1\n");
  std::string cfg = config_text("mlp", "vec");
  cfg.replace(cfg.find(fixture("mlp_run.toml")), fixture("mlp_run.toml").size(), d / "run.toml");
  write_text(d / "c.toml", cfg);
  const auto r = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "out"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("gone.pt"), std::string::npos) << r.out;
  expect_no_output(d, "out");
}

TEST(Cli, FailureDuringComputationLeavesNoOutput) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  // Second checkpoint is not a model: the run fails after the first checkpoint's work.
  write_text(d / "junk.pt", "junk");
  write_text(d / "run.toml", "[[checkpoint]]\nfile = \"" + fixture("mlp_1.pt") +
                                 "\"\nstep = 1\nlr = 0.1\n[[checkpoint]]\nfile = \"junk.pt\"\nstep = 2\nlr = 0.1\n");
  std::string cfg = config_text("mlp", "vec");
  cfg.replace(cfg.find(fixture("mlp_run.toml")), fixture("mlp_run.toml").size(), d / "run.toml");
  write_text(d / "c.toml", cfg);
  const auto r = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "out"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("junk.pt"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("not a TorchScript model"), std::string::npos) << r.out;
  expect_no_output(d, "out");
}

TEST(Cli, EverySubcommandHasHelp) {
  for (auto sub : {"", "attribute", "featurize", "score", "demo", "import", "import csv", "version", "verify", "eval", "eval lds",
                   "eval noisy", "ledger", "ledger register", "ledger epochs"}) {
    const auto r = run(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub << ": " << r.out;
  }
  EXPECT_NE(run("attribute").code, 0);  // required options missing
  EXPECT_NE(run("frobnicate").code, 0);
}

TEST(Cli, ImportCsvThenAttribute) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  std::string ex = "id,a,b,c,d,e,f,g,h,label,tranche\n";
  for (int i = 0; i < 12; ++i) {
    ex += "row" + std::to_string(i);
    for (int k = 0; k < 8; ++k) ex += "," + std::to_string(((i * 7 + k * 3) % 11) / 5.0 - 1.0);
    ex += "," + std::to_string(i % 4) + "," + (i % 3 == 0 ? "alpha" : "beta") + "\n";
  }
  write_text(d / "ex.csv", ex);
  write_text(d / "tr.csv", "id,account,name,license\nalpha,0x" + std::string(40, '1') + ",Alpha,CC0\nbeta,0x" + std::string(40, '2') + ",Beta,MIT\n");
  auto r = run("import csv --examples " + (d / "ex.csv") + " --tranches " + (d / "tr.csv") + " -o " + (d / "train.h5"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("wrote 12 examples"), std::string::npos);
  write_text(d / "c.toml", "[run]\ncheckpoints = \"" + fixture("mlp_run.toml") + "\"\n[data]\ntrain = \"train.h5\"\nquery = \"" +
                               fixture("vec_query.h5") + "\"\n");
  r = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "out"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(read_text(d / "out/attribution.csv").find("alpha,0x1111111111111111111111111111111111111111,Alpha,4,"), std::string::npos);
}

TEST(Cli, DemoShowsNoisyTrancheLowestAndFlagsTheDuplicate) {
  TempDir d;
  const auto r = run("demo -q --dir " + (d / "demo"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("lowest share among tranches with data of their own: crowd-labels (the noisy tranche, as expected)"),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("exact copy mirror-north: flagged"), std::string::npos) << r.out;
  // Reward rules (docs/rewards.md): the copy earns nothing, the original keeps its share.
  EXPECT_NE(r.out.find("in a run without it (same model and queries): the same, bit for bit"), std::string::npos) << r.out;
  const auto report = nlohmann::json::parse(read_text(d / "demo/report/report.json"));
  EXPECT_EQ(report["tranches"][5]["share"].get<double>(), 0.0);
  EXPECT_EQ(report["rewards"]["registration_order"], "registry");
  double lowest = 2;
  std::string lowest_id;
  for (const auto& t : report["tranches"])
    if (t["id"] != "mirror-north" && t["id"] != "school-rescan" && t["share"].get<double>() < lowest) {
      lowest = t["share"].get<double>();
      lowest_id = t["id"];
    }
  EXPECT_EQ(lowest_id, "crowd-labels");
  bool flagged = false;
  for (const auto& dup : report["duplicates"])
    flagged |= dup["flagged"].get<bool>() && dup["tranches"][0] == "clinic-north" && dup["tranches"][1] == "mirror-north";
  EXPECT_TRUE(flagged);
  // Identical examples get identical attribution (batch-independent gradients).
  EXPECT_EQ(report["tranches"][0]["total_influence"], report["tranches"][5]["total_influence"]);
  // The demo ends with the epoch on the embedded ledger; the printed amounts add up to the pool.
  EXPECT_NE(r.out.find("epoch 1 committed to the embedded ledger"), std::string::npos) << r.out;
  const auto st = run("ledger status 1 --json --db " + (d / "demo/ledger.db"));
  ASSERT_EQ(st.code, 0) << st.out;
  EXPECT_EQ(nlohmann::json::parse(st.out)["totalReward"], "1000000000");
  const auto epoch = nlohmann::json::parse(read_text(d / "demo/report/epoch-1.json"));
  long long sum = 0;
  for (const auto& l : epoch["leaves"]) sum += std::stoll(l["amount"].get<std::string>());
  EXPECT_EQ(sum, 1000000000);
  // An auditor confirms the demo's epoch in one command (the demo prints it), with its time.
  EXPECT_NE(r.out.find("attrace verify 1 --db " + (d / "demo/ledger.db")), std::string::npos) << r.out;
  const auto v = run("verify 1 --db " + (d / "demo/ledger.db") + " --store " + (d / "demo/train-features.h5") + " -o " +
                     (d / "verification.json"));
  ASSERT_EQ(v.code, 0) << v.out;
  EXPECT_NE(v.out.find("verdict: CONFIRMED (bit-identical"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("verified in"), std::string::npos) << v.out;
  EXPECT_EQ(nlohmann::json::parse(read_text(d / "verification.json"))["verdict"], "confirmed");
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) ma += a[i], mb += b[i];
  ma /= static_cast<double>(a.size());
  mb /= static_cast<double>(b.size());
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

// On the demo, projected TracIn scores track the exact ones (k = 4096, dense and Kronecker;
// Kronecker also at k = 1024, where its first layer is really projected).
TEST(CliProjection, ProjectedScoresCorrelateWithExactOnTheDemo) {
  TempDir d;
  ASSERT_EQ(run("demo -q --dir " + (d / "demo")).code, 0);
  int64_t n = 0, m = 0;
  const auto exact = attrace::connectors::read_scores_h5(d / "demo/report/scores.h5", &n, &m);
  for (const auto& [kind, k, floor] : std::vector<std::tuple<std::string, int, double>>{
           {"dense", 4096, 0.95}, {"kronecker", 4096, 0.95}, {"kronecker", 1024, 0.95}}) {
    const std::string out = d / (kind + std::to_string(k));
    const auto r = run("attribute -q -c " + (d / "demo/attrace.toml") + " -o " + out + " --projection " + kind + " --k " +
                       std::to_string(k) + " --scores always");
    ASSERT_EQ(r.code, 0) << r.out;
    int64_t n2 = 0, m2 = 0;
    const auto approx = attrace::connectors::read_scores_h5(out + "/scores.h5", &n2, &m2);
    ASSERT_EQ(n2 * m2, n * m);
    const double rho = pearson(exact, approx);
    EXPECT_GE(rho, floor) << kind << " k=" << k;
    std::printf("[ pearson ] %s k=%d: %.4f\n", kind.c_str(), k, rho);
    const auto manifest = nlohmann::json::parse(read_text(out + "/manifest.json"));
    EXPECT_EQ(manifest["projection"]["kind"], kind);
    EXPECT_EQ(manifest["method"], "tracin_projected");
    EXPECT_EQ(manifest["projection"]["checkpoints"].size(), 3u);
  }
}

// GEMM scoring in reduced precision: recorded in the manifest, close to the canonical scores,
// and refused where it would mean nothing.
TEST(CliProjection, GemmMathIsRecordedAndValidated) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  write_text(d / "c.toml", config_text("mlp", "vec"));
  ASSERT_EQ(run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "exact") + " --scores always").code, 0);
  int64_t n = 0, m = 0;
  const auto exact = attrace::connectors::read_scores_h5(d / "exact/scores.h5", &n, &m);
  for (const std::string math : {"tf32", "bf16"}) {
    const auto r = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / math) +
                       " --scores always --set 'attribution.scoring=\"blas\"' --set 'attribution.gemm_math=\"" + math + "\"'");
    ASSERT_EQ(r.code, 0) << r.out;
    const auto manifest = nlohmann::json::parse(read_text(d / (math + "/manifest.json")));
    EXPECT_EQ(manifest["settings"]["attribution"]["gemm_math"], math);
    EXPECT_NE(manifest["math"]["score_accumulation"].get<std::string>().find(math == "tf32" ? "TF32" : "bf16"), std::string::npos);
    int64_t n2 = 0, m2 = 0;
    const auto approx = attrace::connectors::read_scores_h5(d / (math + "/scores.h5"), &n2, &m2);
    ASSERT_EQ(n2 * m2, n * m);
    EXPECT_NE(approx, exact) << math << " scores should carry the input rounding";
    EXPECT_GE(pearson(exact, approx), 0.999) << math;
  }
  const auto no_blas = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "x") + " --set 'attribution.gemm_math=\"tf32\"'");
  EXPECT_EQ(no_blas.code, 2);
  EXPECT_NE(no_blas.out.find("needs attribution.scoring = \"blas\""), std::string::npos) << no_blas.out;
  const auto bad = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "x") + " --set 'attribution.gemm_math=\"fp8\"'");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.out.find("attribution.gemm_math: 'fp8' is not one of bf16, ieee, tf32"), std::string::npos) << bad.out;
  const auto fp64 = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "x") +
                        " --precision fp64 --set 'attribution.scoring=\"blas\"' --set 'attribution.gemm_math=\"bf16\"'");
  EXPECT_EQ(fp64.code, 2);
  EXPECT_NE(fp64.out.find("needs float32 features"), std::string::npos) << fp64.out;
  expect_no_output(d, "x");
}

// Runs `attribute` on the MLP fixture into DIR/out.
void attribute_fixture(const TempDir& d) {
  write_text(d / "c.toml", config_text("mlp", "vec"));
  const auto r = run("attribute -q -c " + (d / "c.toml") + " -o " + (d / "out"));
  ASSERT_EQ(r.code, 0) << r.out;
}

TEST(CliLedger, EmbeddedCommitProofClaimDisputeResolve) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  attribute_fixture(d);
  const std::string db = " --db " + (d / "l.db");
  ASSERT_EQ(run("ledger init --challenge-period 0 --arbiter judge" + db).code, 0);
  auto r = run("ledger commit " + (d / "out") + " --epoch 3 --pool 1000000" + db);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("epoch 3 committed to the embedded ledger"), std::string::npos) << r.out;
  r = run("ledger commit " + (d / "out") + " --epoch 3 --pool 1000000" + db);  // idempotent re-run
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("already committed"), std::string::npos) << r.out;
  r = run("ledger commit " + (d / "out") + " --epoch 3 --pool 999" + db);  // another split for a live epoch
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("EpochExists"), std::string::npos) << r.out;

  const auto epoch = nlohmann::json::parse(read_text(d / "out/epoch-3.json"));
  const std::string account = epoch["leaves"][0]["account"];
  r = run("ledger proof 3 " + account + " --json" + db);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["amount"], epoch["leaves"][0]["amount"]);
  r = run("ledger claim 3 " + account + db);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("ledger claim 3 " + account + db);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("AlreadyClaimed"), std::string::npos) << r.out;
  ASSERT_EQ(run("ledger claim 3 --all" + db).code, 0);
  r = run("ledger status 3 --json" + db);
  EXPECT_EQ(nlohmann::json::parse(r.out)["claimed"], "1000000");

  // A second epoch with a window: dispute, non-arbiter refused, arbiter upholds.
  ASSERT_EQ(run("ledger commit " + (d / "out") + " --epoch 4 --pool 10" + db).code, 0);  // period fixed at creation: 0
  write_text(d / "reason.txt", "recomputed shares differ by 3%");
  r = run("ledger dispute 4 --reason " + (d / "reason.txt") + db);
  EXPECT_EQ(r.code, 2) << "the database's challenge period is 0: the window is already closed";
  EXPECT_NE(r.out.find("ChallengeClosed"), std::string::npos) << r.out;
}

TEST(CliLedger, DisputeAndResolveWithAWindow) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  attribute_fixture(d);
  const std::string db = " --db " + (d / "l.db");
  ASSERT_EQ(run("ledger init --challenge-period 3600 --arbiter judge" + db).code, 0);
  ASSERT_EQ(run("ledger commit " + (d / "out") + " --epoch 1 --pool 100" + db).code, 0);
  write_text(d / "reason.txt", "wrong checkpoint");
  ASSERT_EQ(run("ledger dispute 1 --reason " + (d / "reason.txt") + db).code, 0);
  auto r = run("ledger resolve 1 --upheld" + db);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("Unauthorized"), std::string::npos) << r.out;
  r = run("ledger resolve 1 --upheld --as judge" + db);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("ledger status 1 --json" + db);
  EXPECT_EQ(nlohmann::json::parse(r.out)["state"], "cancelled");
  EXPECT_EQ(run("ledger commit " + (d / "out") + " --epoch 1 --pool 100" + db).code, 0);  // re-commit after cancel
}

TEST(CliLedger, BadInputCommitsNothing) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  attribute_fixture(d);
  const std::string db = " --db " + (d / "l.db");
  ASSERT_EQ(run("ledger init" + db).code, 0);
  for (const std::string pool : {"0", "-5", "12abc"}) {
    const auto r = run("ledger commit " + (d / "out") + " --epoch 1 --pool " + pool + db);
    EXPECT_EQ(r.code, 2) << pool << ": " << r.out;
  }
  write_text(d / "out/report.json", "{broken");
  const auto r = run("ledger commit " + (d / "out") + " --epoch 1 --pool 100" + db);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("report.json"), std::string::npos) << r.out;
  const auto st = run("ledger status 1 --json" + db);
  EXPECT_FALSE(nlohmann::json::parse(st.out)["exists"].get<bool>());
}

TEST(CliLedger, EvmDeployCommitClaimAgainstAnvil) {
  ATTRACE_REQUIRE_FIXTURES();
  ASSERT_FALSE(attrace::test::contract_artifact().empty()) << "artifact path not configured";
  TempDir d;
  attribute_fixture(d);
  attrace::test::Anvil anvil;
  // anvil needs a moment after exec: retry the deploy until the node answers.
  write_text(d / "key", attrace::test::kAnvilKey0);
  write_text(d / "evm.toml", "[evm]\nrpc_url = \"" + anvil.url() + "\"\nchain_id = 31337\nkey_file = \"key\"\n");
  Result r;
  for (int i = 0; i < 50; ++i) {
    r = run("ledger deploy --backend evm --evm-config " + (d / "evm.toml") + " --artifact " + attrace::test::contract_artifact() +
            " --challenge-period 0 --json");
    if (r.code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string contract = nlohmann::json::parse(r.out)["contract"];
  write_text(d / "evm.toml", "[evm]\nrpc_url = \"" + anvil.url() + "\"\nchain_id = 31337\nkey_file = \"key\"\ncontract = \"" +
                                 contract + "\"\n");
  const std::string evm = " --backend evm --evm-config " + (d / "evm.toml");
  r = run("ledger commit " + (d / "out") + " --epoch 2 --pool 5000000" + evm);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("transaction 0x"), std::string::npos) << r.out;
  r = run("ledger claim 2 --all --manifest " + (d / "out/epoch-2.json") + evm);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("ledger status 2 --json" + evm);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["claimed"], "5000000");
  r = run("ledger receipt 2 --json" + evm);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["signature"].get<std::string>().size(), 2u + 130u);
  EXPECT_EQ(r.out.find(std::string(attrace::test::kAnvilKey0).substr(2)), std::string::npos) << "key material printed";
  write_text(d / "evm-wrong.toml", "[evm]\nrpc_url = \"" + anvil.url() + "\"\nchain_id = 5\n");
  r = run("ledger status 2 --backend evm --evm-config " + (d / "evm-wrong.toml"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("wrong chain id"), std::string::npos) << r.out;
}

// A node that cannot be reached is a failure of the environment (exit 1, "failure:"), not bad
// input (exit 2): the same configuration works once the node is up.
TEST(CliLedger, UnreachableEvmNodeExitsOne) {
  TempDir d;
  const std::string url = "http://127.0.0.1:" + std::to_string(attrace::test::free_port());
  write_text(d / "evm.toml", "[evm]\nrpc_url = \"" + url + "\"\nchain_id = 31337\n");
  const auto r = run("ledger status 1 --backend evm --evm-config " + (d / "evm.toml"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("attrace: failure:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(url), std::string::npos) << "the message names the node: " << r.out;
}

// ---- Ledger files and what a commit reads: nothing a user types may destroy data or silently
// change a payment (issue 9). After every refusal the ledger's bytes are checked unchanged. ----

/// Every entry of a directory with the sha256 of each regular file.
std::map<std::string, std::string> dir_snapshot(const std::string& dir) {
  std::map<std::string, std::string> s;
  for (const auto& e : fs::directory_iterator(dir))
    s[e.path().filename().string()] = e.is_regular_file() ? attrace::connectors::sha256_file(e.path().string()) : "(not a file)";
  return s;
}

/// An output directory with `n` tranches as `attrace attribute` pins it (report.json hash only).
void write_small_report(const std::string& dir, int n) {
  std::vector<std::tuple<std::string, std::string, double>> ts;
  for (int i = 0; i < n; ++i) {
    char acct[43];
    std::snprintf(acct, sizeof acct, "0x%040x", i + 1);
    ts.emplace_back("t" + std::to_string(i), acct, 1.0 / n);
  }
  attrace::test::write_report(dir, ts);
}

TEST(CliLedger, MissingDatabaseIsAnErrorNeverANewLedger) {
  TempDir d;
  write_small_report(d / "r", 3);
  write_text(d / "reason.txt", "shares differ");
  const auto before = dir_snapshot(d.str());
  const auto report_before = dir_snapshot(d / "r");
  const std::string db = d / "typo.db";
  for (const std::string& cmd : std::vector<std::string>{"status 1", "status 1 --json", "proof 1 0x0000000000000000000000000000000000000001",
                                "claim 1 --all", "dispute 1 --reason " + (d / "reason.txt"), "resolve 1 --upheld",
                                "commit " + (d / "r") + " --epoch 1 --pool 10"}) {
    const auto r = run("ledger " + cmd + " --db " + db);
    EXPECT_EQ(r.code, 2) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("attrace: error: ledger database '" + db + "' does not exist"), std::string::npos) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("attrace ledger init --db " + db), std::string::npos) << cmd << ": " << r.out;
    EXPECT_EQ(dir_snapshot(d.str()), before) << cmd << " created or changed a file";
    EXPECT_EQ(dir_snapshot(d / "r"), report_before) << cmd << " wrote into the report directory";
  }
}

TEST(CliLedger, InitCreatesALedgerOnceWithItsSettings) {
  TempDir d;
  const std::string db = " --db " + (d / "l.db");
  auto r = run("ledger init --challenge-period 60 --arbiter judge --json" + db);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["challengePeriod"], 60);
  EXPECT_EQ(dir_snapshot(d.str()).size(), 1u) << "only the database: no WAL, no temporary file";
  const std::string sha = attrace::connectors::sha256_file(d / "l.db");
  r = run("ledger init --challenge-period 0" + db);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("ledger database '" + (d / "l.db") + "' already exists"), std::string::npos) << r.out;
  r = run("ledger status 7" + db);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("epoch 7: not committed"), std::string::npos) << r.out;
  // Settings belong to init alone: elsewhere they would be silently ignored, so they are refused.
  write_small_report(d / "r", 2);
  r = run("ledger commit " + (d / "r") + " --epoch 1 --pool 10 --challenge-period 0" + db);
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(run("ledger status 1 --arbiter judge" + db).code, 0);
  EXPECT_EQ(attrace::connectors::sha256_file(d / "l.db"), sha);
  // The stored period rules: committed now, final 60 s later.
  r = run("ledger commit " + (d / "r") + " --epoch 1 --pool 10 --json" + db);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto st = nlohmann::json::parse(r.out)["status"];
  EXPECT_EQ(st["challengeEnds"].get<int64_t>() - st["committedAt"].get<int64_t>(), 60);
  EXPECT_NE(run("ledger init --backend evm --db " + (d / "x.db")).code, 0);  // evm ledgers come from `deploy`
  EXPECT_FALSE(fs::exists(d / "x.db"));
}

TEST(CliLedger, DamagedDatabasesAreRefusedNamingTheFile) {
  TempDir d;
  write_small_report(d / "r", 300);  // a ledger of many pages
  const std::string good = d / "good.db";
  ASSERT_EQ(run("ledger init --db " + good).code, 0);
  ASSERT_EQ(run("ledger commit " + (d / "r") + " --epoch 1 --pool 1000000 --db " + good).code, 0);
  const std::string account = "0x0000000000000000000000000000000000000001";
  ASSERT_EQ(run("ledger status 1 --db " + good).code, 0);
  ASSERT_EQ(run("ledger proof 1 " + account + " --db " + good).code, 0);
  const std::string bytes = read_text(good);
  ASSERT_GE(bytes.size(), 16u * 4096u);
  std::string garbled = bytes;  // garbage over two pages in the middle of the file
  std::mt19937_64 rng(3);
  const size_t from = (bytes.size() / 4096 / 2) * 4096;
  for (size_t k = from; k < from + 2 * 4096; ++k) garbled[k] = static_cast<char>(rng());
  write_text(d / "garbled.db", garbled);
  write_text(d / "empty.db", "");
  write_text(d / "text.db", "not a database\n");
  fs::create_directories(d / "dir.db");
  const auto before = dir_snapshot(d.str());
  for (const std::string name : {"garbled.db", "empty.db", "text.db", "dir.db"})
    for (const std::string& cmd : std::vector<std::string>{"status 1", "proof 1 " + account, "claim 1 --all"}) {
      const auto r = run("ledger " + cmd + " --db " + (d / name));
      EXPECT_EQ(r.code, 2) << name << " " << cmd << ": " << r.out;
      EXPECT_NE(r.out.find("attrace: error: ledger database '" + (d / name) + "'"), std::string::npos) << name << ": " << r.out;
      EXPECT_EQ(r.out.find("epoch 1"), std::string::npos) << name << ": answered from a damaged file: " << r.out;
    }
  EXPECT_NE(run("ledger status 1 --db " + (d / "garbled.db")).out.find("is corrupt"), std::string::npos);
  EXPECT_EQ(dir_snapshot(d.str()), before) << "a refused command changed a file";
}

TEST(CliLedger, DisputeReasonMustBeANonEmptyRegularFile) {
  TempDir d;
  write_small_report(d / "r", 2);
  const std::string db = " --db " + (d / "l.db");
  ASSERT_EQ(run("ledger init --challenge-period 3600" + db).code, 0);
  ASSERT_EQ(run("ledger commit " + (d / "r") + " --epoch 1 --pool 10" + db).code, 0);
  write_text(d / "empty.txt", "");
  fs::create_directories(d / "reasons");
  ASSERT_EQ(::mkfifo((d / "fifo").c_str(), 0600), 0);  // opened for reading, it would wait forever
  const auto before = dir_snapshot(d.str());
  for (const auto& [name, fragment] : std::vector<std::pair<std::string, std::string>>{
           {"reasons", "is a directory"}, {"empty.txt", "is empty"}, {"fifo", "is a FIFO"}, {"missing.txt", "does not exist"}}) {
    const auto r = run("ledger dispute 1 --reason " + (d / name) + db);
    EXPECT_EQ(r.code, 2) << name << ": " << r.out;
    EXPECT_NE(r.out.find("attrace: error: --reason '" + (d / name) + "' " + fragment), std::string::npos) << r.out;
  }
  EXPECT_EQ(dir_snapshot(d.str()), before) << "a refused dispute changed the ledger";
  EXPECT_EQ(nlohmann::json::parse(run("ledger status 1 --json" + db).out)["state"], "committed");
  write_text(d / "reason.txt", "recomputed shares differ");
  EXPECT_EQ(run("ledger dispute 1 --reason " + (d / "reason.txt") + db).code, 0);  // a real reason is accepted
}

TEST(CliLedger, TamperedPinnedOutputsAreNeverCommitted) {
  ATTRACE_REQUIRE_FIXTURES();
  TempDir d;
  attribute_fixture(d);
  const std::string db = " --db " + (d / "l.db");
  ASSERT_EQ(run("ledger init" + db).code, 0);
  const auto manifest = nlohmann::json::parse(read_text(d / "out/manifest.json"));
  for (const std::string name : {"attribution.csv", "report.json", "scores.h5"}) {
    ASSERT_TRUE(manifest["outputs"].contains(name)) << name;
    const std::string path = d / ("out/" + name);
    const std::string original = read_text(path);
    std::string tampered = original;
    // attribution.csv: one digit of a share; the others: one byte in the middle.
    const size_t at = name == "attribution.csv" ? tampered.find_first_of("123456789", tampered.find('\n')) : tampered.size() / 2;
    tampered[at] = tampered[at] == '7' ? '8' : '7';
    write_text(path, tampered);
    const auto before = dir_snapshot(d.str());
    const auto out_before = dir_snapshot(d / "out");
    const auto r = run("ledger commit " + (d / "out") + " --epoch 1 --pool 1000" + db);
    EXPECT_EQ(r.code, 2) << name << ": " << r.out;
    EXPECT_NE(r.out.find(path + ": sha256 " + attrace::connectors::sha256_hex(tampered)), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(manifest["outputs"][name].get<std::string>()), std::string::npos) << "pinned hash: " << r.out;
    EXPECT_EQ(dir_snapshot(d.str()), before) << name << ": the ledger changed";
    EXPECT_EQ(dir_snapshot(d / "out"), out_before) << name << ": an epoch manifest was written";
    EXPECT_FALSE(nlohmann::json::parse(run("ledger status 1 --json" + db).out)["exists"].get<bool>()) << name;
    write_text(path, original);
  }
  EXPECT_EQ(run("ledger commit " + (d / "out") + " --epoch 1 --pool 1000" + db).code, 0);  // untouched: committed
}

}  // namespace
