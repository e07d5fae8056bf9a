// Feature stores as a user meets them: featurize + score give the same bytes as attribute,
// streamed scoring equals in-memory scoring, a featurize killed at random points resumes to the
// same bytes, a second writer is refused, stores made otherwise are never mixed, truncated or
// foreign files are refused without being touched, and h5py reads a store as docs/formats.md says.
#include "test_util.hpp"

#include <attrace/connectors/feature_store.hpp>
#include <attrace/connectors/hash.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

namespace fs = std::filesystem;
using attrace::connectors::sha256_file;
using attrace::test::read_text;
using attrace::test::TempDir;
using attrace::test::write_text;

namespace {

struct Result {
  int code = -1;
  std::string out;
};

Result shell(const std::string& command) {
  Result r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

Result run(const std::string& args) {
  const std::string bin = attrace::test::attrace_bin();
  EXPECT_FALSE(bin.empty());
  return shell(bin + " " + args);
}

// The demo's scenario (real digits, seven tranches, three checkpoints), made once per test binary.
const std::string& demo_dir() {
  static const std::string dir = [] {
    const std::string d = (fs::temp_directory_path() / ("attrace-store-test-" + std::to_string(::getpid()))).string();
    fs::remove_all(d);
    const auto r = run("demo -q --dir " + d);
    EXPECT_EQ(r.code, 0) << r.out;
    return d;
  }();
  return dir;
}

std::string cfg() { return demo_dir() + "/attrace.toml"; }

bool same_file(const std::string& a, const std::string& b) {
  return fs::exists(a) && fs::exists(b) && sha256_file(a) == sha256_file(b);
}

TEST(Store, FeaturizeThenScoreEqualsAttributeByteForByte) {
  TempDir d;
  ASSERT_EQ(run("attribute -q -c " + cfg() + " -o " + (d / "one")).code, 0);
  const auto f = run("featurize -q -c " + cfg() + " -o " + (d / "train.h5"));
  ASSERT_EQ(f.code, 0) << f.out;
  const auto s = run("score -q -c " + cfg() + " --store " + (d / "train.h5") + " -o " + (d / "two"));
  ASSERT_EQ(s.code, 0) << s.out;
  ASSERT_EQ(run("featurize -q --query -c " + cfg() + " -o " + (d / "query.h5")).code, 0);
  const auto s3 = run("score -q -c " + cfg() + " --store " + (d / "train.h5") + " --query-store " + (d / "query.h5") + " -o " +
                      (d / "three"));
  ASSERT_EQ(s3.code, 0) << s3.out;
  for (const char* file : {"report.json", "attribution.csv", "manifest.json", "report.html", "scores.h5"}) {
    EXPECT_TRUE(same_file(d / ("one/" + std::string(file)), d / ("two/" + std::string(file)))) << file;
    EXPECT_TRUE(same_file(d / ("one/" + std::string(file)), d / ("three/" + std::string(file)))) << file;
  }
  // A second featurize of a complete store does nothing and changes no byte.
  const std::string before = sha256_file(d / "train.h5");
  const auto again = run("featurize -c " + cfg() + " -o " + (d / "train.h5"));
  EXPECT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("complete:"), std::string::npos) << again.out;
  EXPECT_EQ(sha256_file(d / "train.h5"), before);
}

TEST(Store, StreamedScoringEqualsInMemoryScoring) {
  TempDir d;
  // Dense rows (factored rows are far narrower; tests/factored_test.cpp tiles those).
  const std::string dense = " --set features.factored=never";
  ASSERT_EQ(run("featurize -q -c " + cfg() + " -o " + (d / "s.h5") + dense).code, 0);
  // 20 MiB forces several query tiles on the demo (features of one query: 3 x 2410 floats).
  const auto small = run("score -c " + cfg() + " --store " + (d / "s.h5") + " -o " + (d / "small") +
                         " --memory-limit 20MiB --set output.scores=never" + dense);
  ASSERT_EQ(small.code, 0) << small.out;
  EXPECT_NE(small.out.find("query tiles"), std::string::npos) << "expected several query tiles:\n" << small.out;
  ASSERT_EQ(run("score -q -c " + cfg() + " --store " + (d / "s.h5") + " -o " + (d / "big") + " --set output.scores=never" +
                dense).code, 0);
  for (const char* file : {"report.json", "attribution.csv", "manifest.json", "report.html"})
    EXPECT_TRUE(same_file(d / ("small/" + std::string(file)), d / ("big/" + std::string(file)))) << file;
  const auto tiny = run("score -q -c " + cfg() + " --store " + (d / "s.h5") + " -o " + (d / "tiny") + " --memory-limit 1MiB" + dense);
  EXPECT_EQ(tiny.code, 2) << tiny.out;
  EXPECT_NE(tiny.out.find("is too small"), std::string::npos) << tiny.out;
  EXPECT_FALSE(fs::exists(d / "tiny"));
}

TEST(Store, KilledFeaturizeResumesToTheSameBytes) {
  TempDir d;
  // A projected store (k = 4096: ~64 rows per durable chunk, tens of seconds of work here), so
  // that kills land while features are being written.
  const std::string proj = " --set projection.kind=dense --set projection.k=4096";
  ASSERT_EQ(run("featurize -q -c " + cfg() + " -o " + (d / "ref.h5") + proj).code, 0);
  const std::string ref = sha256_file(d / "ref.h5");
  const std::string bin = attrace::test::attrace_bin();
  std::mt19937_64 rng(2026);
  int mid_run = 0;
  for (int k = 0; k < 8; ++k) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execl(bin.c_str(), bin.c_str(), "featurize", "-q", "-c", cfg().c_str(), "-o", (d / "s.h5").c_str(), "--set",
              "projection.kind=dense", "--set", "projection.k=4096", nullptr);
      ::_exit(127);
    }
    // Start-up (loading LibTorch, planning) takes ~1 s; the whole store tens of seconds.
    const auto delay = std::chrono::milliseconds(1500 + static_cast<int>(rng() % 3000));
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (fs::exists(d / "s.h5") && sha256_file(d / "s.h5") == ref) {
      fs::remove(d / "s.h5");  // finished before the kill: start over so the next kill lands mid-run
      continue;
    }
    if (WIFSIGNALED(status) && fs::exists(d / "s.h5")) {
      // Killed with a store in place: it must not pass for a complete one.
      const auto sc = run("score -q -c " + cfg() + " --store " + (d / "s.h5") + " -o " + (d / "x") + proj);
      if (sc.code == 2 && sc.out.find("incomplete feature store") != std::string::npos) ++mid_run;
      EXPECT_FALSE(sc.code == 0 && sha256_file(d / "s.h5") != ref) << "an incomplete store was scored";
      fs::remove_all(d / "x");
    }
  }
  std::printf("[ kills ] %d of 8 kills left a partial store, each resumed by the next run\n", mid_run);
  EXPECT_GE(mid_run, 5) << "too few kills landed while features were being written; the test proves little";
  const auto fin = run("featurize -c " + cfg() + " -o " + (d / "s.h5") + proj);
  ASSERT_EQ(fin.code, 0) << fin.out;
  EXPECT_EQ(sha256_file(d / "s.h5"), ref) << "resumed store differs from an uninterrupted one";
  for (const auto& e : fs::directory_iterator(d.str()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << "leftover " << e.path();
}

TEST(Store, SecondWriterOtherSettingsAndBadFilesAreRefused) {
  TempDir d;
  ASSERT_EQ(run("featurize -q -c " + cfg() + " -o " + (d / "s.h5")).code, 0);
  const std::string sha = sha256_file(d / "s.h5");
  // Another process holds the writer's lock.
  const int fd = ::open((d / ".s.h5.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const auto locked = run("featurize -q -c " + cfg() + " -o " + (d / "s.h5"));
  EXPECT_EQ(locked.code, 2) << locked.out;
  EXPECT_NE(locked.out.find("another attrace process is writing"), std::string::npos) << locked.out;
  ::close(fd);
  // Other settings: refused, naming the difference; the store is untouched.
  const auto other = run("featurize -q -c " + cfg() + " -o " + (d / "s.h5") + " --set projection.kind=dense --set projection.k=64");
  EXPECT_EQ(other.code, 2) << other.out;
  EXPECT_NE(other.out.find("refusing to mix"), std::string::npos) << other.out;
  EXPECT_EQ(sha256_file(d / "s.h5"), sha);
  // Scoring with a config whose featurization differs from the store's.
  const auto mism = run("score -q -c " + cfg() + " --store " + (d / "s.h5") + " -o " + (d / "o") + " --set projection.kind=dense");
  EXPECT_EQ(mism.code, 2) << mism.out;
  EXPECT_NE(mism.out.find("the store's 'projection'"), std::string::npos) << mism.out;
  EXPECT_FALSE(fs::exists(d / "o"));
  // A truncated store: refused by both commands, never overwritten.
  {
    const std::string bytes = read_text(d / "s.h5");
    write_text(d / "cut.h5", bytes.substr(0, bytes.size() / 3));
  }
  const std::string cut = sha256_file(d / "cut.h5");
  const auto fc = run("featurize -q -c " + cfg() + " -o " + (d / "cut.h5"));
  EXPECT_EQ(fc.code, 2) << fc.out;
  EXPECT_NE(fc.out.find("not overwriting"), std::string::npos) << fc.out;
  EXPECT_EQ(sha256_file(d / "cut.h5"), cut);
  const auto sc = run("score -q -c " + cfg() + " --store " + (d / "cut.h5") + " -o " + (d / "o"));
  EXPECT_EQ(sc.code, 2) << sc.out;
  // A foreign HDF5 file (a dataset) as a store.
  const auto foreign = run("score -q -c " + cfg() + " --store " + demo_dir() + "/train.h5 -o " + (d / "o"));
  EXPECT_EQ(foreign.code, 2) << foreign.out;
  EXPECT_NE(foreign.out.find("not an attrace feature store"), std::string::npos) << foreign.out;
  EXPECT_FALSE(fs::exists(d / "o"));
}

// Speed settings never change a result (issue 9): batch sizes around and beyond every boundary
// of the demo (2,100 training rows) and 1 or 2 threads give byte-identical output directories.
TEST(Determinism, BatchSizeAndThreadsChangeNoByte) {
  TempDir d;
  std::string reference;
  for (const char* threads : {"2", "1"})
    for (const int batch : {64, 1, 7, 511, 512, 1024, 2100}) {
      if (std::string(threads) == "1" && batch != 64 && batch != 511) continue;  // threads x two batch sizes
      const std::string out = d / ("b" + std::to_string(batch) + "t" + threads);
      const auto r = shell("ATTRACE_THREADS=" + std::string(threads) + " OMP_NUM_THREADS=" + threads + " " +
                           attrace::test::attrace_bin() + " attribute -q -c " + cfg() + " -o " + out +
                           " --batch-size " + std::to_string(batch));
      ASSERT_EQ(r.code, 0) << r.out;
      std::string digest;
      for (const char* file : {"report.json", "attribution.csv", "manifest.json", "report.html", "scores.h5"})
        digest += sha256_file(out + "/" + file) + " ";
      if (reference.empty())
        reference = digest;
      else
        EXPECT_EQ(digest, reference) << "batch size " << batch << ", " << threads << " thread(s)";
    }
}

// Issue 9, data loss: --force never replaces a directory that holds the run's inputs, nor one
// attrace did not write; staging directories of dead processes are removed.
TEST(Safety, ForceNeverDeletesInputsOrForeignDirectories) {
  TempDir d;
  // A copy of the demo's inputs in a "victim" folder, with an unrelated file.
  fs::create_directories(d / "victim");
  for (const auto& e : fs::directory_iterator(demo_dir()))
    if (e.is_regular_file()) fs::copy_file(e.path(), fs::path(d / "victim") / e.path().filename());
  write_text(d / "victim/NOTES.txt", "mine");
  auto digest_of = [](const std::string& dir) {
    std::string all;
    for (const auto& e : fs::directory_iterator(dir)) all += e.path().filename().string() + ":" + sha256_file(e.path().string()) + ";";
    return all;
  };
  const std::string before = digest_of(d / "victim");
  const auto r = run("attribute -q -c " + (d / "victim/attrace.toml") + " -o " + (d / "victim") + " --force");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_EQ(digest_of(d / "victim"), before) << "an input folder was modified";
  // Any folder attrace did not write is refused too, inputs or not.
  fs::create_directories(d / "mine");
  write_text(d / "mine/keep.txt", "keep");
  const auto f = run("attribute -q -c " + cfg() + " -o " + (d / "mine") + " --force");
  EXPECT_EQ(f.code, 2) << f.out;
  EXPECT_NE(f.out.find("was not written by attrace"), std::string::npos) << f.out;
  EXPECT_EQ(read_text(d / "mine/keep.txt"), "keep");
  // attrace's own output is replaced, and a dead process's staging directory is cleaned up.
  ASSERT_EQ(run("attribute -q -c " + cfg() + " -o " + (d / "out")).code, 0);
  fs::create_directories(d / ".out.partial-999999999");
  write_text(d / ".out.partial-999999999/report.json", "half");
  const auto again = run("attribute -q -c " + cfg() + " -o " + (d / "out") + " --force");
  EXPECT_EQ(again.code, 0) << again.out;
  EXPECT_FALSE(fs::exists(d / ".out.partial-999999999")) << "stale staging directory left behind";
}

// Issue 9, signals: SIGTERM and SIGINT stop a run cleanly (exit 143 / 130), leaving no partial
// output; a featurize stopped this way resumes to the same bytes.
TEST(Safety, SigtermAndSigintStopCleanly) {
  TempDir d;
  const std::string bin = attrace::test::attrace_bin();
  for (const int sig : {SIGTERM, SIGINT}) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      // A projected run (k = 4096) takes tens of seconds here: the signal lands mid-computation.
      ::execl(bin.c_str(), bin.c_str(), "attribute", "-q", "-c", cfg().c_str(), "-o", (d / "o").c_str(), "--projection", "dense",
              "--k", "4096", nullptr);
      ::_exit(127);
    }
    // Wait until the run has started computing (its staging directory exists: handlers are
    // installed before it is made), however slow the start-up on a loaded machine.
    const std::string staging = d / (".o.partial-" + std::to_string(pid));
    for (int i = 0; i < 1200 && !fs::exists(staging); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(fs::exists(staging)) << "the run never started";
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping cleanly";
    EXPECT_EQ(WEXITSTATUS(status), 128 + sig);
    EXPECT_FALSE(fs::exists(d / "o"));
    for (const auto& e : fs::directory_iterator(d.str()))
      EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << "leftover " << e.path();
  }
}

// docs/formats.md#feature-store, read with h5py and numpy only: the scores recomputed from the
// stores equal scores.h5.
TEST(Store, H5pyReadsTheDocumentedLayout) {
  TempDir d;
  ASSERT_EQ(run("featurize -q -c " + cfg() + " -o " + (d / "t.h5")).code, 0);
  ASSERT_EQ(run("featurize -q --query -c " + cfg() + " -o " + (d / "q.h5")).code, 0);
  // The canonical kernel (float64 products and sums), so numpy's float64 recomputation agrees to 1e-9.
  ASSERT_EQ(run("score -q -c " + cfg() + " --store " + (d / "t.h5") + " --query-store " + (d / "q.h5") + " -o " + (d / "o") +
                " --set attribution.scoring=canonical").code,
            0);
  write_text(d / "read.py", R"PY(
import json, sys
import h5py, numpy as np
t, q, s = sys.argv[1], sys.argv[2], sys.argv[3]
def load(path):
    f = h5py.File(path, "r")
    fmt = f.attrs["format"]
    assert (fmt.decode() if isinstance(fmt, bytes) else fmt) == "attrace.features/1", fmt
    spec = json.loads(f["spec"][0])
    n = len(f["ids"])
    assert list(f["progress"][:]) == [n] * len(f["progress"]), "store not complete"
    assert f["digest"].shape == (n, 32)
    ckpts = []
    for c in range(len(f["progress"])):
        g = f["checkpoint_%06d" % c]
        meta = json.loads(g["meta"][0])
        feats = g["features"][:]
        assert feats.shape == (n, meta["feature_dim"]), (feats.shape, meta)
        ckpts.append((float(g.attrs["weight"]), feats.astype(np.float64), meta))
    return f, spec, ckpts
def checkpoint_dot(a, b, meta):                  # docs/formats.md, "Factored rows"
    f = meta.get("factoring", {})
    layers = [l for l in f.get("layers", []) if l["scored"] == "factored"]
    if not layers:
        return a @ b.T
    d = f["dense_columns"]
    s, at = a[:, :d] @ b[:, :d].T, d
    for l in layers:
        t, di, do = l["positions"], l["d_in"], l["d_out"]
        xa, xb = (v[:, at:at + t * di].reshape(len(v), t, di) for v in (a, b)); at += t * di
        da, db = (v[:, at:at + t * do].reshape(len(v), t, do) for v in (a, b)); at += t * do
        s += (np.einsum("itk,jsk->ijts", xa, xb) * np.einsum("itk,jsk->ijts", da, db)).sum(axis=(2, 3))
    return s
ft, st, ct = load(t)
fq, sq, cq = load(q)
assert st["role"] == "train" and sq["role"] == "query"
assert "tranche" in ft and "tranche" not in fq
lrs = [c["lr"] for c in st["run"]["checkpoints"]]
assert [w for w, _, _ in ct] == lrs, "exact features: weight = lr"
assert any(l["scored"] == "factored" for l in ct[0][2]["factoring"]["layers"]), "the demo's layers are factored"
scores = h5py.File(s, "r")["scores"][:]
mine = sum(w * checkpoint_dot(a, b, m) for (w, a, m), (_, b, _) in zip(ct, cq))
err = np.abs(mine - scores).max() / np.abs(scores).max()
print("max rel diff", err)
assert err < 1e-9, err
)PY");
  const auto r = shell("/usr/bin/python3 " + (d / "read.py") + " " + (d / "t.h5") + " " + (d / "q.h5") + " " + (d / "o/scores.h5"));
  EXPECT_EQ(r.code, 0) << r.out;
}

}  // namespace

namespace {
// The store's half-precision encoder against the compiler's _Float16 (round to nearest even).
TEST(StoreFormats, HalfAndBFloat16RoundingMatchReferences) {
  using attrace::connectors::FeatureDtype;
  using attrace::connectors::round_to_dtype;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = static_cast<uint32_t>(rng());
    if (i % 3 == 0) u = (u & 0x80000000u) | (0x30000000u + (u % 0x18000000u));  // around half's range
    float x;
    std::memcpy(&x, &u, 4);
    if (std::isnan(x)) continue;
    const float want = static_cast<float>(static_cast<_Float16>(x));
    const float got = round_to_dtype(x, FeatureDtype::f16);
    uint32_t a, b;
    std::memcpy(&a, &want, 4);
    std::memcpy(&b, &got, 4);
    ASSERT_EQ(a, b) << "x bits " << std::hex << u;
    // bfloat16: the nearest-even value with 8 significant bits, by an independent formula.
    const double m = std::ldexp(1.0, std::ilogb(x) - 7);
    if (std::isfinite(x) && x != 0 && std::fabs(x) < 3e38 && std::fabs(x) > 1e-37) {
      const double q = static_cast<double>(x) / m, r = std::nearbyint(q);
      EXPECT_EQ(static_cast<double>(round_to_dtype(x, FeatureDtype::bf16)), r * m) << x;
    }
  }
}
}  // namespace
