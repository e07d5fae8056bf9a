// Hostile inputs and faults, as a user (or an attacker) hands them to the real attrace binary:
// bad, missing, truncated and garbage configs, run files, checkpoints, datasets, feature stores,
// CSV files, ledgers and flags; absurd sizes; non-UTF-8 ids; FIFOs and directories where files
// are expected; unwritable outputs. Each row of the table states the command, the mutation, the
// exit code and a fragment of the message that names the file/field/example at fault; every row
// also checks that no output that looks complete (or any staging leftover) was left and that no
// input file was changed or created.
#include "test_util.hpp"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using attrace::test::fixture;
using attrace::test::read_text;
using attrace::test::run_attrace;
using attrace::test::run_shell;
using attrace::test::TempDir;
using attrace::test::write_text;

namespace {

// Inputs made once per test binary and copied into each row's directory when a row needs them:
// datasets mutated with h5py, a real output directory, a feature store and an empty ledger.
struct Shared {
  std::string dir;
  bool ok = false;
};

// Writes the mutated datasets (python3 + h5py, as tests/fixtures/make_fixtures.py does).
const char* kMutations = R"PY(
import h5py, numpy as np, shutil, sys
src, out = sys.argv[1], sys.argv[2]
def mutate(name, base, fn):
    p = f"{out}/{name}.h5"
    shutil.copy(f"{src}/{base}.h5", p)
    with h5py.File(p, "r+") as f:
        fn(f)
def replace(f, key, data, dtype=None):
    del f[key]
    f.create_dataset(key, data=data, dtype=dtype)
vlen = h5py.string_dtype("utf-8")
raw = h5py.vlen_dtype(np.dtype("uint8"))
def bad_ids(f, key, row):
    ids = [x if isinstance(x, bytes) else x.encode() for x in f[key][()]]
    ids[row] = b"id\xff\xfe" + bytes([row])
    replace(f, key, np.array(ids, dtype=f"S{max(map(len, ids))}"))
mutate("train_bad_utf8_id", "vec_train", lambda f: bad_ids(f, "ids", 3))
mutate("query_bad_utf8_id", "vec_query", lambda f: bad_ids(f, "ids", 5))
mutate("train_bad_utf8_tranche", "vec_train", lambda f: bad_ids(f, "tranches/name", 1))
mutate("train_dup_ids", "vec_train", lambda f: replace(f, "ids", [b"same"] * f["ids"].shape[0], dtype=vlen))
def nan_input(f):
    x = f["inputs"][()]; x[4, 2] = np.nan; replace(f, "inputs", x)
mutate("train_nan_input", "vec_train", nan_input)
def tranche_range(f):
    t = f["tranche"][()]; t[6] = 99; replace(f, "tranche", t)
mutate("train_tranche_range", "vec_train", tranche_range)
def bad_account(f):
    a = list(f["tranches/account"][()]); a[2] = b"not-an-address"; replace(f, "tranches/account", a, dtype=vlen)
mutate("train_bad_account", "vec_train", bad_account)
def empty_tranche(f):
    t = f["tranche"][()]; t[t == 4] = 0; replace(f, "tranche", t)
mutate("train_empty_tranche", "vec_train", empty_tranche)
mutate("train_no_inputs", "vec_train", lambda f: f.__delitem__("inputs"))
mutate("train_no_tranche", "vec_train", lambda f: f.__delitem__("tranche"))
mutate("train_string_targets", "vec_train", lambda f: replace(f, "targets", [b"x"] * f["targets"].shape[0], dtype=vlen))
def neg_label(f):
    t = f["targets"][()]; t[7] = -1; replace(f, "targets", t)
mutate("train_negative_label", "vec_train", neg_label)
mutate("train_short_targets", "vec_train", lambda f: replace(f, "targets", f["targets"][()][:-3]))
mutate("train_1d_inputs", "vec_train", lambda f: replace(f, "inputs", f["inputs"][()][:, 0]))
mutate("train_short_ids", "vec_train", lambda f: replace(f, "ids", f["ids"][()][:-1], dtype=vlen))
mutate("train_empty_id", "vec_train", lambda f: replace(f, "ids", [b""] + list(f["ids"][()][1:]), dtype=vlen))
mutate("train_short_accounts", "vec_train", lambda f: replace(f, "tranches/account", f["tranches/account"][()][:-1], dtype=vlen))
mutate("train_wide_inputs", "vec_train", lambda f: replace(f, "inputs", np.zeros((37, 9), dtype=np.float32)))
mutate("train_zero_rows", "vec_train", lambda f: replace(f, "inputs", np.zeros((0, 8), dtype=np.float32)))
def huge_shape(f):
    del f["inputs"]; f.create_dataset("inputs", shape=(37, 2**40), dtype="f4", chunks=(1, 1024))
mutate("train_huge_shape", "vec_train", huge_shape)
)PY";

const Shared& shared() {
  static const Shared s = [] {
    Shared r;
    // Rows with damaged HDF5 files that make libhdf5 loop wait this long (the default is 120 s).
    ::setenv("ATTRACE_HDF5_CHECK_TIMEOUT", "10", 1);
    r.dir = (fs::temp_directory_path() / ("attrace-hostile-" + std::to_string(::getpid()))).string();
    fs::remove_all(r.dir);
    fs::create_directories(r.dir);
    write_text(r.dir + "/mutate.py", kMutations);
    const auto py = run_shell("/usr/bin/python3 " + r.dir + "/mutate.py " + attrace::test::fixtures() + " " + r.dir);
    EXPECT_EQ(py.code, 0) << py.out;
    const std::string cfg = r.dir + "/good.toml";
    write_text(cfg, "[run]\ncheckpoints = \"" + fixture("mlp_run.toml") + "\"\n[data]\ntrain = \"" + fixture("vec_train.h5") +
                        "\"\nquery = \"" + fixture("vec_query.h5") + "\"\n[gradients]\nbatch_size = 8\n[attribution]\ntop_k = 3\n" +
                        "[projection]\nkind = \"dense\"\nk = 16\n");
    const auto a = run_attrace("attribute -q -c " + cfg + " -o " + r.dir + "/report");
    EXPECT_EQ(a.code, 0) << a.out;
    const auto f = run_attrace("featurize -q -c " + cfg + " -o " + r.dir + "/store.h5");
    EXPECT_EQ(f.code, 0) << f.out;
    const auto l = run_attrace("ledger init --db " + r.dir + "/ledger.db");
    EXPECT_EQ(l.code, 0) << l.out;
    r.ok = py.code == 0 && a.code == 0 && f.code == 0 && l.code == 0;
    static std::string to_remove;
    to_remove = r.dir;
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(to_remove, ec);
    });
    return r;
  }();
  return s;
}

// One row's world: its own directory `d`, with helpers to build inputs in it.
struct Env {
  TempDir d;
  std::vector<std::string> outputs;  // paths the command would create: must not exist afterwards

  std::string operator/(const std::string& f) const { return d / f; }
  std::string path(const std::string& f) const { return d / f; }
  std::string shared(const std::string& f) const { return ::shared().dir + "/" + f; }
  // A config in d (c.toml) over the fixtures, with extra TOML appended (later tables win over
  // nothing: callers append whole sections the base lacks, or use keys() to replace them).
  std::string config(const std::string& extra = "", const std::string& run = "", const std::string& train = "",
                     const std::string& query = "") {
    write_text(d / "c.toml", "[run]\ncheckpoints = \"" + (run.empty() ? fixture("mlp_run.toml") : run) + "\"\n[data]\ntrain = \"" +
                                  (train.empty() ? fixture("vec_train.h5") : train) + "\"\nquery = \"" +
                                  (query.empty() ? fixture("vec_query.h5") : query) + "\"\n" + extra);
    return d / "c.toml";
  }
  // A run file in d (r.toml) with the given body; "mlp_1.pt" etc. resolve to the fixtures.
  std::string run_file(const std::string& body) {
    write_text(d / "r.toml", body);
    return d / "r.toml";
  }
  std::string fifo(const std::string& f) {
    ::mkfifo((d / f).c_str(), 0644);
    return d / f;
  }
  std::string dir(const std::string& f) {
    fs::create_directories(d / f);
    return d / f;
  }
  std::string file(const std::string& f, const std::string& bytes) {
    write_text(d / f, bytes);
    return d / f;
  }
  std::string copy(const std::string& from, const std::string& f) {
    fs::copy(from, d / f, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    return d / f;
  }
  std::string truncated(const std::string& from, const std::string& f, double fraction) {
    const std::string bytes = read_text(from);
    return file(f, bytes.substr(0, static_cast<size_t>(static_cast<double>(bytes.size()) * fraction)));
  }
  // A copy of `from` whose global heap of variable-length strings (the ids) is damaged the way
  // that makes libhdf5 1.10.8 fault (SIGSEGV in H5HG_read, shown with h5py on the same files):
  // `object_size` declares the first heap object 2^47 bytes long, `collection_size` shrinks the
  // heap collection to its 16-byte header. Layout: "GCOL", version, 3 reserved, uint64 collection
  // size; then per object uint16 index, uint16 refcount, 4 reserved, uint64 size.
  std::string heap_damaged(const std::string& from, const std::string& f, bool object_size) {
    std::string bytes = read_text(from);
    const size_t at = bytes.find("GCOL");
    EXPECT_NE(at, std::string::npos) << from << " has no global heap";
    if (at == std::string::npos) return file(f, bytes);
    const uint64_t value = object_size ? uint64_t{0x7fffffffffff} : uint64_t{16};
    const size_t field = object_size ? at + 16 + 8 : at + 8;
    for (int b = 0; b < 8; ++b) bytes[field + static_cast<size_t>(b)] = static_cast<char>((value >> (8 * b)) & 0xff);
    return file(f, bytes);
  }
  // The attribute command on config `c` writing d/out (registered as an output).
  std::string attribute(const std::string& c, const std::string& extra = "") {
    outputs.push_back(d / "out");
    return "attribute -q -c " + c + " -o " + (d / "out") + (extra.empty() ? "" : " " + extra);
  }
};

std::string garbage(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

std::string checkpoint_entry(const std::string& file, const std::string& step = "1", const std::string& lr = "0.1") {
  return "[[checkpoint]]\nfile = \"" + file + "\"\nstep = " + step + "\nlr = " + lr + "\n";
}

struct Row {
  std::string name;
  std::function<std::string(Env&)> setup;  // builds the inputs, returns the arguments
  int code;                                 // expected exit code
  std::string fragment;                     // expected in the output; "{d}" is the row's directory
};

// Every regular file below `dir` with its bytes (FIFOs and other special files by kind only).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    const auto st = it->symlink_status();
    const std::string rel = fs::relative(it->path(), dir).string();
    if (fs::is_regular_file(st))
      m[rel] = read_text(it->path().string());
    else
      m[rel] = fs::is_directory(st) ? "<dir>" : "<special>";
  }
  return m;
}

// Lock files beside stores and SQLite's side files are bookkeeping, not outputs.
bool bookkeeping(const std::string& rel) {
  auto ends = [&](const std::string& s) { return rel.size() >= s.size() && rel.compare(rel.size() - s.size(), s.size(), s) == 0; };
  return ends(".lock") || ends("-wal") || ends("-shm");
}

const std::string kAcct = "0x1111111111111111111111111111111111111111";

std::vector<Row> rows() {
  std::vector<Row> r;
  auto add = [&](std::string name, std::function<std::string(Env&)> f, int code, std::string frag) {
    r.push_back({std::move(name), std::move(f), code, std::move(frag)});
  };
  // ---------------------------------------------------------------- configs
  add("ConfigMissing", [](Env& e) { return e.attribute(e / "nope.toml"); }, 105, "File does not exist");
  add("ConfigIsDirectory", [](Env& e) { return e.attribute(e.dir("c.toml")); }, 105, "is actually a directory");
  add("ConfigIsFifo", [](Env& e) { return e.attribute(e.fifo("c.toml")); }, 2, "c.toml: is a FIFO");
  add("ConfigEmpty", [](Env& e) { return e.attribute(e.file("c.toml", "")); }, 2, "run.checkpoints (the run file) is not set");
  add("ConfigGarbage", [](Env& e) { return e.attribute(e.file("c.toml", garbage(600, 1))); }, 2, "c.toml:1:");
  add("ConfigTruncatedString", [](Env& e) {
        return e.attribute(e.file("c.toml", "[run]\ncheckpoints = \"/tmp/run.to"));
      }, 2, "c.toml:2:");
  add("ConfigInvalidUtf8", [](Env& e) { return e.attribute(e.file("c.toml", "[run]\ncheckpoints = \"r\xff\xfe.toml\"\n")); }, 2,
      "c.toml:2:");
  add("ConfigDuplicateKey", [](Env& e) { return e.attribute(e.file("c.toml", "[gradients]\nbatch_size = 1\nbatch_size = 2\n")); }, 2,
      "c.toml:3:");
  add("ConfigUnknownSection", [](Env& e) { return e.attribute(e.config("[bogus]\nx = 1\n")); }, 2, "unknown section or key 'bogus'");
  add("ConfigUnknownTopKey", [](Env& e) { return e.attribute(e.file("c.toml", "top_k = 3\n" + read_text(e.config()))); }, 2, "unknown section or key 'top_k'");
  add("ConfigUnknownSetting", [](Env& e) { return e.attribute(e.config("[gradients]\nbatchsize = 8\n")); }, 2,
      "c.toml: unknown setting 'gradients.batchsize'");
  add("ConfigSectionNotTable", [](Env& e) { return e.attribute(e.file("c.toml", "gradients = 3\n")); }, 2, "[gradients] must be a table");
  add("ConfigNoTrain", [](Env& e) {
        return e.attribute(e.file("c.toml", "[run]\ncheckpoints = \"" + fixture("mlp_run.toml") + "\"\n[data]\nquery = \"q.h5\"\n"));
      }, 2, "data.train is not set");
  add("ConfigBatchZero", [](Env& e) { return e.attribute(e.config("[gradients]\nbatch_size = 0\n")); }, 2,
      "c.toml: gradients.batch_size must be a positive integer or \"auto\", got 0");
  add("ConfigBatchString", [](Env& e) { return e.attribute(e.config("[gradients]\nbatch_size = \"8\"\n")); }, 2,
      "gradients.batch_size must be a positive integer or \"auto\", got '8'");
  add("ConfigBatchHugeProjected", [](Env& e) {
        return e.attribute(e.config("[gradients]\nbatch_size = 9223372036854775807\n[projection]\nkind = \"dense\"\nk = 64\n"));
      }, 2, "projection.k = 64: one batch of 9223372036854775807 examples' projected features needs at least");
  add("ConfigTopKNegative", [](Env& e) { return e.attribute(e.config("[attribution]\ntop_k = -1\n")); }, 2,
      "attribution.top_k must be >= 0, got -1");
  add("ConfigLossUnknown", [](Env& e) { return e.attribute(e.config("[gradients]\nloss = \"hinge\"\n")); }, 2,
      "gradients.loss: 'hinge' is not one of");
  add("ConfigPrecisionNumber", [](Env& e) { return e.attribute(e.config("[gradients]\nprecision = 16\n")); }, 2,
      "gradients.precision must be a string");
  add("ConfigDeviceUnknown", [](Env& e) { return e.attribute(e.config("[gradients]\ndevice = \"tpu\"\n")); }, 2,
      "gradients.device: 'tpu' is not one of");
  add("ConfigParametersEmpty", [](Env& e) { return e.attribute(e.config("[gradients]\nparameters = []\n")); }, 2,
      "gradients.parameters is empty");
  add("ConfigParametersNumbers", [](Env& e) { return e.attribute(e.config("[gradients]\nparameters = [1, 2]\n")); }, 2,
      "gradients.parameters must be an array of strings");
  add("ConfigProjectionKZero", [](Env& e) { return e.attribute(e.config("[projection]\nkind = \"dense\"\nk = 0\n")); }, 2,
      "projection.k must be in [1, 2^31], got 0");
  add("ConfigProjectionKTwoPow31", [](Env& e) { return e.attribute(e.config("[projection]\nkind = \"dense\"\nk = 2147483648\n")); }, 2,
      "c.toml: projection.k = 2147483648: one batch of");
  add("ConfigProjectionKTwoPow40", [](Env& e) { return e.attribute(e.config("[projection]\nkind = \"dense\"\nk = 1099511627776\n")); }, 2,
      "projection.k must be in [1, 2^31], got 1099511627776");
  add("ConfigProjectionKindUnknown", [](Env& e) { return e.attribute(e.config("[projection]\nkind = \"pca\"\n")); }, 2,
      "projection.kind: 'pca' is not one of");
  add("ConfigSeedNegative", [](Env& e) { return e.attribute(e.config("[projection]\nseed = -1\n")); }, 2, "projection.seed must be >= 0");
  add("ConfigSeedText", [](Env& e) { return e.attribute(e.config("[projection]\nseed = \"12ab\"\n")); }, 2,
      "projection.seed: '12ab' is not a non-negative integer");
  add("ConfigDuplicateThresholdHuge", [](Env& e) { return e.attribute(e.config("[attribution]\nduplicate_threshold = 1e308\n")); }, 2,
      "attribution.duplicate_threshold must be in (0, 1], got 1e+308");
  add("ConfigToleranceInfinite", [](Env& e) { return e.attribute(e.config("[attribution]\ntolerance = inf\n")); }, 2,
      "attribution.tolerance must be finite and >= 0, got inf");
  add("ConfigToleranceNegative", [](Env& e) { return e.attribute(e.config("[attribution]\ntolerance = -1e308\n")); }, 2,
      "got -1e+308");
  add("ConfigMemoryLimitWord", [](Env& e) { return e.attribute(e.config("[attribution]\nmemory_limit = \"lots\"\n")); }, 2,
      "attribution.memory_limit: 'lots' is not a size");
  add("ConfigMemoryLimitHuge", [](Env& e) { return e.attribute(e.config("[attribution]\nmemory_limit = \"1e30GiB\"\n")); }, 2,
      "attribution.memory_limit: '1e30GiB' is not a size");
  add("ConfigMemoryLimitNegative", [](Env& e) { return e.attribute(e.config("[attribution]\nmemory_limit = -5\n")); }, 2,
      "attribution.memory_limit must be >= 0");
  add("ConfigExactLimitZero", [](Env& e) { return e.attribute(e.config("[features]\nexact_limit = 0\n")); }, 2,
      "features.exact_limit must be > 0");
  add("ConfigExactLimitTooSmall", [](Env& e) { return e.attribute(e.config("[features]\nexact_limit = 1000\n")); }, 2,
      "exact features would take");
  add("ConfigGemmMathWithoutBlas", [](Env& e) { return e.attribute(e.config("[attribution]\ngemm_math = \"tf32\"\n")); }, 2,
      "attribution.gemm_math = 'tf32' needs attribution.scoring = \"blas\"");
  add("ConfigDtypeF64WithFp32", [](Env& e) { return e.attribute(e.config("[features]\ndtype = \"f64\"\n")); }, 2,
      "features.dtype = 'f64' needs exact float64 gradients");
  add("ConfigScoresUnknown", [](Env& e) { return e.attribute(e.config("[output]\nscores = \"sometimes\"\n")); }, 2,
      "output.scores: 'sometimes' is not one of");
  add("ConfigScoresMaxNegative", [](Env& e) { return e.attribute(e.config("[output]\nscores_max_entries = -5\n")); }, 2,
      "output.scores_max_entries must be >= 0");
  add("ConfigNegativePolicyUnknown", [](Env& e) { return e.attribute(e.config("[attribution]\nnegative_policy = \"abs\"\n")); }, 2,
      "attribution.negative_policy: 'abs' is not one of");
  add("ConfigPathsNotUtf8", [](Env& e) {  // paths go into manifest.json: refused before the run, not by the JSON writer after it
        const std::string dir = e.dir("in\xff");
        for (const char* f : {"mlp_run.toml", "mlp_1.pt", "mlp_2.pt", "mlp_3.pt", "vec_train.h5", "vec_query.h5"}) e.copy(fixture(f), std::string("in\xff/") + f);
        write_text(dir + "/c.toml", "[run]\ncheckpoints = \"mlp_run.toml\"\n[data]\ntrain = \"vec_train.h5\"\nquery = \"vec_query.h5\"\n");
        return e.attribute("'" + dir + "/c.toml'");
      }, 2, "run.checkpoints: the path (resolved against the config's folder) is not valid UTF-8");
  add("SetPathNotUtf8", [](Env& e) { return e.attribute(e.config(), "--set 'data.train=\"t\xff.h5\"'"); }, 2, "--set 'data.train=");
  add("ConfigRunPathIsDirectory", [](Env& e) { return e.attribute(e.config("", e.dir("runs"))); }, 2, "runs: is a directory");
  // ---------------------------------------------------------------- --set overrides and flags
  add("SetWithoutEquals", [](Env& e) { return e.attribute(e.config(), "--set attribution.top_k"); }, 2,
      "--set 'attribution.top_k': expected section.key=value");
  add("SetEmptyKey", [](Env& e) { return e.attribute(e.config(), "--set =3"); }, 2, "--set '=3': expected section.key=value");
  add("SetTopKNegative", [](Env& e) { return e.attribute(e.config(), "--set attribution.top_k=-3"); }, 2,
      "--set 'attribution.top_k=-3': attribution.top_k must be >= 0, got -3");
  add("SetUnknownSetting", [](Env& e) { return e.attribute(e.config(), "--set gradients.bogus=1"); }, 2,
      "--set 'gradients.bogus=1': unknown setting 'gradients.bogus'");
  add("SetUnknownSection", [](Env& e) { return e.attribute(e.config(), "--set bogus.x=1"); }, 2,
      "--set 'bogus.x=1': unknown section or key 'bogus'");
  add("SetBatchText", [](Env& e) { return e.attribute(e.config(), "--set gradients.batch_size=eight"); }, 2,
      "--set 'gradients.batch_size=eight': gradients.batch_size must be a positive integer or \"auto\", got 'eight'");
  add("SetInlineTable", [](Env& e) { return e.attribute(e.config(), "--set 'gradients={batch_size=0}'"); }, 2,
      "--set 'gradients={batch_size=0}': gradients.batch_size must be a positive integer or \"auto\", got 0");
  add("SetDuplicateThreshold", [](Env& e) { return e.attribute(e.config(), "--set attribution.duplicate_threshold=1e308"); }, 2,
      "--set 'attribution.duplicate_threshold=1e308': attribution.duplicate_threshold must be in (0, 1], got 1e+308");
  add("SetProjectionKTwoPow31", [](Env& e) {
        return e.attribute(e.config(), "--set projection.kind=dense --set projection.k=2147483648");
      }, 2, "--set 'projection.k=2147483648': projection.k = 2147483648: one batch of");
  add("SetMemoryLimitWord", [](Env& e) { return e.attribute(e.config(), "--set attribution.memory_limit=lots"); }, 2,
      "--set 'attribution.memory_limit=lots': attribution.memory_limit: 'lots' is not a size");
  add("SetFileValueStillBlamesFile", [](Env& e) {
        return e.attribute(e.config("[attribution]\ntop_k = -2\n"), "--set gradients.loss=mse");
      }, 2, "c.toml: attribution.top_k must be >= 0, got -2");
  add("SetMalformedValue", [](Env& e) { return e.attribute(e.config(), "--set 'gradients.parameters=[\"a\",'"); }, 2,
      "--set 'gradients.parameters=[\"a\",'");
  add("FlagBatchSizeZero", [](Env& e) { return e.attribute(e.config(), "--batch-size 0"); }, 105,
      "--batch-size: must be an integer >= 1, got '0'");
  add("FlagTopKNegative", [](Env& e) { return e.attribute(e.config(), "--top-k -1"); }, 105, "--top-k: must be an integer >= 0");
  add("FlagKHugeText", [](Env& e) { return e.attribute(e.config(), "--k 99999999999999999999999"); }, 105,
      "--k: must be an integer >= 1, got '99999999999999999999999'");
  add("FlagKTwoPow31", [](Env& e) { return e.attribute(e.config(), "--projection dense --k 2147483648"); }, 2,
      "projection.k = 2147483648: one batch of");
  add("FlagPrecisionUnknown", [](Env& e) { return e.attribute(e.config(), "--precision fp16"); }, 105, "--precision");
  add("FlagMemoryLimitWord", [](Env& e) { return e.attribute(e.config(), "--memory-limit lots"); }, 2,
      "attribution.memory_limit: 'lots' is not a size");
  add("FlagUnknown", [](Env& e) { return e.attribute(e.config(), "--frobnicate"); }, 109, "--frobnicate");
  add("FlagOutMissing", [](Env& e) { return "attribute -q -c " + e.config(); }, 106, "--out is required");
  add("NoSubcommand", [](Env&) { return std::string(); }, 106, "A subcommand is required");
  // ---------------------------------------------------------------- run files and checkpoints
  add("RunMissing", [](Env& e) { return e.attribute(e.config("", e / "r.toml")); }, 2, "r.toml: cannot open file");
  add("RunIsFifo", [](Env& e) { return e.attribute(e.config("", e.fifo("r.toml"))); }, 2, "r.toml: is a FIFO");
  add("RunEmpty", [](Env& e) { return e.attribute(e.config("", e.run_file(""))); }, 2, "r.toml: no [[checkpoint]] entries");
  add("RunGarbage", [](Env& e) { return e.attribute(e.config("", e.run_file(garbage(400, 2)))); }, 2, "r.toml:1:");
  add("RunCheckpointNotTable", [](Env& e) { return e.attribute(e.config("", e.run_file("checkpoint = [1, 2]\n"))); }, 2,
      "r.toml: [[checkpoint]] #1 is not a table");
  add("RunNoFileField", [](Env& e) { return e.attribute(e.config("", e.run_file("[[checkpoint]]\nstep = 1\nlr = 0.1\n"))); }, 2,
      "[[checkpoint]] #1: field 'file' (string) is missing");
  add("RunCheckpointMissing", [](Env& e) { return e.attribute(e.config("", e.run_file(checkpoint_entry("gone.pt")))); }, 2,
      "gone.pt' is missing or not a file");
  add("RunCheckpointIsDirectory", [](Env& e) {
        e.dir("ck.pt");
        return e.attribute(e.config("", e.run_file(checkpoint_entry("ck.pt"))));
      }, 2, "ck.pt' is missing or not a file");
  add("RunCheckpointIsFifo", [](Env& e) {
        e.fifo("ck.pt");
        return e.attribute(e.config("", e.run_file(checkpoint_entry("ck.pt"))));
      }, 2, "ck.pt' is missing or not a file");
  add("RunCheckpointGarbage", [](Env& e) {
        e.file("ck.pt", garbage(5000, 3));
        return e.attribute(e.config("", e.run_file(checkpoint_entry("ck.pt"))));
      }, 2, "ck.pt': not a TorchScript model");
  add("RunCheckpointTruncated", [](Env& e) {
        e.truncated(fixture("mlp_1.pt"), "ck.pt", 0.5);
        return e.attribute(e.config("", e.run_file(checkpoint_entry("ck.pt"))));
      }, 2, "ck.pt': not a TorchScript model");
  add("RunCheckpointEmpty", [](Env& e) {
        e.file("ck.pt", "");
        return e.attribute(e.config("", e.run_file(checkpoint_entry("ck.pt"))));
      }, 2, "ck.pt'");
  add("RunLrHugeNegative", [](Env& e) {
        return e.attribute(e.config("", e.run_file(checkpoint_entry(fixture("mlp_1.pt"), "1", "-1e308"))));
      }, 2, "lr must be finite and >= 0, got -1e+308");
  add("RunLrNan", [](Env& e) { return e.attribute(e.config("", e.run_file(checkpoint_entry(fixture("mlp_1.pt"), "1", "nan")))); }, 2,
      "lr must be finite and >= 0, got nan");
  add("RunLrText", [](Env& e) { return e.attribute(e.config("", e.run_file(checkpoint_entry(fixture("mlp_1.pt"), "1", "\"0.1\"")))); }, 2,
      "field 'lr' (number) is missing");
  add("RunStepMissing", [](Env& e) {
        return e.attribute(e.config("", e.run_file("[[checkpoint]]\nfile = \"" + fixture("mlp_1.pt") + "\"\nlr = 0.1\n")));
      }, 2, "field 'step' (integer) is missing");
  add("RunStepsDecrease", [](Env& e) {
        return e.attribute(e.config("", e.run_file(checkpoint_entry(fixture("mlp_1.pt"), "5") + checkpoint_entry(fixture("mlp_2.pt"), "5"))));
      }, 2, "steps must increase (5 after 5)");
  add("RunStepFloatOutOfRange", [](Env& e) {  // found by fuzz_run_file: toml++ converted 1e22 to int64 (UB)
        return e.attribute(e.config("", e.run_file(checkpoint_entry(fixture("mlp_1.pt"), "1e22"))));
      }, 2, "field 'step' (integer) is missing");
  add("EvmConfigChainIdFloat", [](Env& e) {
        return "ledger status 1 --backend evm --evm-config " +
               e.file("evm.toml", "[evm]\nrpc_url = \"http://127.0.0.1:9\"\nchain_id = 1e22\n");
      }, 2, "evm.toml: evm.chain_id (positive integer) is required");
  add("EvmConfigConfirmationsNegative", [](Env& e) {
        return "ledger status 1 --backend evm --evm-config " +
               e.file("evm.toml", "[evm]\nrpc_url = \"http://127.0.0.1:9\"\nchain_id = 5\nconfirmations = -1\n");
      }, 2, "evm.toml: evm.confirmations must be an integer in [0, 1000000]");
  add("RunUnknownField", [](Env& e) {
        return e.attribute(e.config("", e.run_file(checkpoint_entry(fixture("mlp_1.pt")) + "epoch = 3\n")));
      }, 2, "unknown field 'epoch'");
  add("RunCheckpointOtherModel", [](Env& e) {
        return e.attribute(e.config("", e.run_file(checkpoint_entry(fixture("cnn_1.pt")))));
      }, 2, "cnn_1.pt");
  // ---------------------------------------------------------------- datasets
  add("TrainMissing", [](Env& e) { return e.attribute(e.config("", "", e / "t.h5")); }, 2, "t.h5: cannot open file");
  add("TrainIsDirectory", [](Env& e) { return e.attribute(e.config("", "", e.dir("t.h5"))); }, 2, "t.h5: is a directory");
  add("TrainIsFifo", [](Env& e) { return e.attribute(e.config("", "", e.fifo("t.h5"))); }, 2, "t.h5: is a FIFO");
  add("QueryIsFifo", [](Env& e) { return e.attribute(e.config("", "", "", e.fifo("q.h5"))); }, 2, "q.h5: is a FIFO");
  add("TrainEmpty", [](Env& e) { return e.attribute(e.config("", "", e.file("t.h5", ""))); }, 2, "t.h5: not an HDF5 file");
  add("TrainGarbage", [](Env& e) { return e.attribute(e.config("", "", e.file("t.h5", garbage(4096, 4)))); }, 2, "t.h5: not an HDF5 file");
  add("TrainTruncated", [](Env& e) { return e.attribute(e.config("", "", e.truncated(fixture("vec_train.h5"), "t.h5", 0.5))); }, 2,
      "t.h5");
  add("TrainIsQuerySet", [](Env& e) { return e.attribute(e.config("", "", fixture("vec_query.h5"))); }, 2,
      "vec_query.h5: missing dataset '/tranche'");
  add("TrainIsConfig", [](Env& e) { return e.attribute(e.config("", "", fixture("mlp_run.toml"))); }, 2, "mlp_run.toml: not an HDF5 file");
  auto ds_row = [&](const std::string& name, const std::string& file, bool as_query, const std::string& frag) {
    add(name, [file, as_query](Env& e) {
          const std::string p = e.copy(e.shared(file + ".h5"), file + ".h5");
          return e.attribute(as_query ? e.config("", "", "", p) : e.config("", "", p));
        }, 2, file + ".h5: " + frag);
  };
  // libhdf5 itself faults on these files; attrace reads every HDF5 input through a child process
  // first (h5::check_in_child), so they end as a refusal naming the file.
  add("TrainHeapObjectSizeDamaged", [](Env& e) {
        return e.attribute(e.config("", "", e.heap_damaged(fixture("vec_train.h5"), "t.h5", true)));
      }, 2, "t.h5: damaged dataset: libhdf5 crashed (signal 11, SIGSEGV)");
  add("TrainHeapCollectionSizeDamaged", [](Env& e) {
        return e.attribute(e.config("", "", e.heap_damaged(fixture("vec_train.h5"), "t.h5", false)));
      }, 2, "t.h5: damaged dataset: libhdf5 crashed");
  add("QueryHeapDamaged", [](Env& e) {
        return e.attribute(e.config("", "", "", e.heap_damaged(fixture("vec_train.h5"), "q.h5", true)));
      }, 2, "q.h5: damaged dataset: libhdf5 crashed");
  ds_row("TrainInvalidUtf8Id", "train_bad_utf8_id", false, "/ids row 3 is not valid UTF-8");
  ds_row("QueryInvalidUtf8Id", "query_bad_utf8_id", true, "/ids row 5 is not valid UTF-8");
  ds_row("TrainInvalidUtf8TrancheName", "train_bad_utf8_tranche", false, "/tranches/name row 1 is not valid UTF-8");
  ds_row("TrainDuplicateIds", "train_dup_ids", false, "/ids: example id 'same' appears twice (rows 0 and 1)");
  ds_row("TrainNanInput", "train_nan_input", false, "/inputs of example 'ex004' (row 4) contains NaN or Inf");
  ds_row("TrainTrancheOutOfRange", "train_tranche_range", false, "/tranche of example 'ex006' (row 6) is 99, outside the tranche table");
  ds_row("TrainBadAccount", "train_bad_account", false, "/tranches/account of tranche 't2' is 'not-an-address', not an EVM address");
  ds_row("TrainEmptyTranche", "train_empty_tranche", false, "tranche 't4' (index 4) has no examples");
  ds_row("TrainNoInputs", "train_no_inputs", false, "missing dataset '/inputs'");
  ds_row("TrainNoTrancheIndex", "train_no_tranche", false, "missing dataset '/tranche'");
  ds_row("TrainStringTargets", "train_string_targets", false, "/targets must be integer class labels or float regression targets");
  ds_row("TrainNegativeLabel", "train_negative_label", false, "/targets of example 'ex007' is a negative class label (-1)");
  ds_row("TrainShortTargets", "train_short_targets", false, "/targets has shape [34]");
  ds_row("Train1dInputs", "train_1d_inputs", false, "/inputs must have shape [N, ...] with at least 2 dimensions");
  ds_row("TrainShortIds", "train_short_ids", false, "/ids has 36 entries, expected 37");
  ds_row("TrainEmptyId", "train_empty_id", false, "/ids row 0 is empty");
  ds_row("TrainShortAccounts", "train_short_accounts", false, "/tranches/account has 4 rows but /tranches/id has 5");
  ds_row("TrainHugeDeclaredShape", "train_huge_shape", false, "'/inputs' declares 40681930227712 elements");
  ds_row("TrainZeroRows", "train_zero_rows", false, "/inputs");
  add("TrainWiderThanModel", [](Env& e) {
        return e.attribute(e.config("", "", e.copy(e.shared("train_wide_inputs.h5"), "t.h5")));
      }, 2, "t.h5");
  // ---------------------------------------------------------------- output locations
  add("OutParentMissing", [](Env& e) {
        e.outputs.push_back(e / "no/out");
        return "attribute -q -c " + e.config() + " -o " + (e / "no/out");
      }, 2, "parent '" "{d}/no' does not exist");
  add("OutExistsWithoutForce", [](Env& e) {
        e.dir("out");
        return "attribute -q -c " + e.config() + " -o " + (e / "out");
      }, 2, "{d}/out' already exists (use --force");
  add("OutForeignDirWithForce", [](Env& e) {
        e.dir("out");
        e.file("out/NOTES.txt", "mine");
        return "attribute -q --force -c " + e.config() + " -o " + (e / "out");
      }, 2, "was not written by attrace");
  add("OutIsFileWithForce", [](Env& e) {
        e.file("out", "a file");
        return "attribute -q --force -c " + e.config() + " -o " + (e / "out");
      }, 2, "{d}/out' exists and is not a directory");
  add("OutHoldsInputsWithForce", [](Env& e) {
        e.copy(e.shared("report"), "victim");
        const std::string c = e.file("victim/c.toml", read_text(e.config()));
        return "attribute -q --force -c " + c + " -o " + (e / "victim");
      }, 2, "holds an input of this run");
  add("OutOnReadOnlyFilesystem", [](Env& e) { return "attribute -q -c " + e.config() + " -o /proc/attrace-out"; }, 2,
      "/proc/attrace-out");
  // ---------------------------------------------------------------- featurize and score
  add("FeaturizeOutIsFifo", [](Env& e) { return "featurize -q -c " + e.config() + " -o " + e.fifo("s.h5"); }, 2,
      "s.h5: exists and is not a regular file");
  add("FeaturizeOutIsDirectory", [](Env& e) { return "featurize -q -c " + e.config() + " -o " + e.dir("s.h5"); }, 2,
      "s.h5: exists and is not a regular file");
  add("FeaturizeOutGarbage", [](Env& e) { return "featurize -q -c " + e.config() + " -o " + e.file("s.h5", garbage(3000, 5)); }, 2,
      "s.h5");
  add("FeaturizeOutIsDataset", [](Env& e) {
        return "featurize -q -c " + e.config() + " -o " + e.copy(fixture("vec_train.h5"), "s.h5");
      }, 2, "s.h5");
  add("FeaturizeKTwoPow31", [](Env& e) {
        e.outputs.push_back(e / "s.h5");
        return "featurize -q -c " + e.config() + " -o " + (e / "s.h5") + " --set projection.kind=dense --set projection.k=2147483648";
      }, 2, "projection.k = 2147483648: one batch of");
  add("FeaturizeInvalidUtf8Id", [](Env& e) {
        e.outputs.push_back(e / "s.h5");
        return "featurize -q -c " + e.config("", "", e.copy(e.shared("train_bad_utf8_id.h5"), "t.h5")) + " -o " + (e / "s.h5");
      }, 2, "t.h5: /ids row 3 is not valid UTF-8");
  auto score = [](Env& e, const std::string& store, const std::string& extra = "") {
    e.outputs.push_back(e / "out");
    return "score -q -c " + e.config("[projection]\nkind = \"dense\"\nk = 16\n") + " --store " + store + " -o " + (e / "out") + extra;
  };
  add("ScoreStoreMissing", [score](Env& e) { return score(e, e / "s.h5"); }, 2, "s.h5");
  add("ScoreStoreIsFifo", [score](Env& e) { return score(e, e.fifo("s.h5")); }, 2, "s.h5");
  add("ScoreStorePathNotUtf8", [score](Env& e) { return score(e, "'" + e.copy(e.shared("store.h5"), "s\xff.h5") + "'"); }, 2,
      "--store/--query-store: the path is not valid UTF-8");
  add("ScoreStoreIsDirectory", [score](Env& e) { return score(e, e.dir("s.h5")); }, 2, "s.h5");
  add("ScoreStoreGarbage", [score](Env& e) { return score(e, e.file("s.h5", garbage(5000, 6))); }, 2, "s.h5");
  add("ScoreStoreTruncated", [score](Env& e) { return score(e, e.truncated(e.shared("store.h5"), "s.h5", 0.6)); }, 2, "s.h5");
  add("ScoreStoreHeapDamaged", [score](Env& e) { return score(e, e.heap_damaged(e.shared("store.h5"), "s.h5", true)); }, 2,
      "s.h5: damaged feature store: libhdf5 crashed");
  add("ScoreQueryStoreHeapDamaged", [score](Env& e) {
        return score(e, e.copy(e.shared("store.h5"), "s.h5"), " --query-store " + e.heap_damaged(e.shared("store.h5"), "q.h5", false));
      }, 2, "q.h5: damaged feature store: libhdf5 crashed");
  // Reproducers found by fuzz_feature_store (docs/fuzzing.md): a SIGSEGV and an endless loop in H5HG_read.
  add("ScoreStoreFuzzFindingSegv", [score](Env& e) {
        return score(e, e.copy(std::string(ATTRACE_FINDINGS_DIR) + "/feature_store-libhdf5-segv.h5", "s.h5"));
      }, 2, "s.h5: damaged feature store: libhdf5 crashed");
  add("ScoreStoreFuzzFindingHang", [score](Env& e) {
        return score(e, e.copy(std::string(ATTRACE_FINDINGS_DIR) + "/feature_store-libhdf5-hang.h5", "s.h5"));
      }, 2, "s.h5: damaged feature store: libhdf5 did not finish reading its structure within 10 s");
  add("FeaturizeOverHeapDamagedStore", [](Env& e) {
        return "featurize -q -c " + e.config("[projection]\nkind = \"dense\"\nk = 16\n") + " -o " +
               e.heap_damaged(e.shared("store.h5"), "s.h5", true);
      }, 2, "s.h5: damaged feature store: libhdf5 crashed (signal 11, SIGSEGV) while reading its structure in a separate "
            "check process; not reading it (--force replaces it)");
  add("ScoreStoreIsDataset", [score](Env& e) { return score(e, e.copy(fixture("vec_train.h5"), "s.h5")); }, 2, "s.h5");
  add("ScoreStoreOtherSettings", [](Env& e) {
        e.outputs.push_back(e / "out");
        return "score -q -c " + e.config("[projection]\nkind = \"dense\"\nk = 32\n") + " --store " + e.copy(e.shared("store.h5"), "s.h5") +
               " -o " + (e / "out");
      }, 2, "s.h5");
  add("ScoreQueryStoreIsTrainStore", [score](Env& e) {
        const std::string s = e.copy(e.shared("store.h5"), "s.h5");
        return score(e, s, " --query-store " + s);
      }, 2, "s.h5");
  add("ScoreQueryStoreGarbage", [score](Env& e) {
        return score(e, e.copy(e.shared("store.h5"), "s.h5"), " --query-store " + e.file("q.h5", garbage(2000, 7)));
      }, 2, "q.h5");
  // ---------------------------------------------------------------- import csv
  auto import = [](Env& e, const std::string& examples, const std::string& extra = "") {
    e.outputs.push_back(e / "o.h5");
    return "import csv --examples " + examples + " -o " + (e / "o.h5") + extra;
  };
  const std::string good_csv = "id,x1,x2,label,tranche\na,1,2,0,t1\nb,3,4,1,t1\n";
  const std::string good_tranches = "id,account\nt1," + kAcct + "\n";
  add("ImportOverwritesExisting", [good_csv, good_tranches](Env& e) {
        return "import csv --examples " + e.file("e.csv", good_csv) + " --tranches " + e.file("t.csv", good_tranches) + " -o " +
               e.copy(fixture("vec_train.h5"), "o.h5");
      }, 2, "o.h5: already exists; not replacing it");
  add("ImportOutIsDirectory", [good_csv, good_tranches](Env& e) {
        return "import csv --examples " + e.file("e.csv", good_csv) + " --tranches " + e.file("t.csv", good_tranches) + " -o " + e.dir("o.h5");
      }, 2, "o.h5: already exists");
  add("ImportOutParentMissing", [good_csv, good_tranches](Env& e) {
        e.outputs.push_back(e / "no/o.h5");
        return "import csv --examples " + e.file("e.csv", good_csv) + " --tranches " + e.file("t.csv", good_tranches) + " -o " + (e / "no/o.h5");
      }, 1, "no/o.h5");
  add("ImportExamplesFifo", [import](Env& e) { return import(e, e.fifo("e.csv")); }, 2, "e.csv: is a FIFO");
  add("ImportExamplesEmpty", [import](Env& e) { return import(e, e.file("e.csv", "")); }, 2, "e.csv: empty file");
  add("ImportExamplesGarbage", [import](Env& e) { return import(e, e.file("e.csv", garbage(3000, 8))); }, 2, "e.csv");
  add("ImportInvalidUtf8Id", [import](Env& e) { return import(e, e.file("e.csv", "id,x,label\nok,1,0\nb\xc3\x28,2,1\n")); }, 2,
      "e.csv:3 column 'id': the example id is not valid UTF-8");
  add("ImportNulInId", [import](Env& e) {  // found by fuzz_dataset: HDF5 C strings would cut "a\0b" to "a"
        return import(e, e.file("e.csv", std::string("id,x,label\nok,1,0\na\0b,2,1\n", 26)));
      }, 2, "e.csv:3 column 'id': the example id contains a NUL byte");
  add("ImportFieldCount", [import](Env& e) { return import(e, e.file("e.csv", "id,x,label\na,1,0\nb,2\n")); }, 2,
      "e.csv:3: 2 fields, header has 3");
  add("ImportNotANumber", [import](Env& e) { return import(e, e.file("e.csv", "id,x,label\na,one,0\n")); }, 2,
      "e.csv:2 column 'x': 'one' is not a number");
  add("ImportInfinite", [import](Env& e) { return import(e, e.file("e.csv", "id,x,label\na,1e999,0\n")); }, 2, "e.csv:2 column 'x'");
  add("ImportNoTarget", [import](Env& e) { return import(e, e.file("e.csv", "id,x\na,1\n")); }, 2, "e.csv: no column 'label'");
  add("ImportUnterminatedQuote", [import](Env& e) { return import(e, e.file("e.csv", "id,x,label\n\"a,1,0\n")); }, 2,
      "e.csv:2: unterminated quoted field");
  add("ImportDuplicateIds", [import](Env& e) { return import(e, e.file("e.csv", "id,x,label\na,1,0\na,2,1\n")); }, 2,
      "example id 'a' appears twice");
  add("ImportTrancheColumnWithoutTable", [import, good_csv](Env& e) { return import(e, e.file("e.csv", good_csv)); }, 2,
      "has a 'tranche' column but no --tranches table");
  add("ImportUnknownTranche", [import](Env& e) {
        return import(e, e.file("e.csv", "id,x,label,tranche\na,1,0,t9\n"), " --tranches " + e.file("t.csv", "id,account\nt1," + kAcct + "\n"));
      }, 2, "e.csv:2: tranche 't9' is not in");
  add("ImportTranchesNoAccount", [import, good_csv](Env& e) {
        return import(e, e.file("e.csv", good_csv), " --tranches " + e.file("t.csv", "id,name\nt1,One\n"));
      }, 2, "t.csv: header must name columns 'id' and 'account'");
  add("ImportTranchesBadAccount", [import, good_csv](Env& e) {
        return import(e, e.file("e.csv", good_csv), " --tranches " + e.file("t.csv", "id,account\nt1,0xabc\n"));
      }, 2, "is '0xabc', not an EVM address");
  add("ImportTranchesInvalidUtf8", [import, good_csv](Env& e) {
        return import(e, e.file("e.csv", good_csv), " --tranches " + e.file("t.csv", "id,account,name\nt1," + kAcct + ",\xff\n"));
      }, 2, "t.csv:2: a field is not valid UTF-8");
  add("ImportTranchesDuplicate", [import, good_csv](Env& e) {
        return import(e, e.file("e.csv", good_csv), " --tranches " + e.file("t.csv", "id,account\nt1," + kAcct + "\nt1," + kAcct + "\n"));
      }, 2, "t.csv:3: tranche id 't1' appears twice");
  add("ImportTranchesFifo", [import, good_csv](Env& e) {
        return import(e, e.file("e.csv", good_csv), " --tranches " + e.fifo("t.csv"));
      }, 2, "t.csv: is a FIFO");
  add("ImportUnusedTranche", [import, good_csv](Env& e) {
        return import(e, e.file("e.csv", good_csv), " --tranches " + e.file("t.csv", "id,account\nt1," + kAcct + "\nt2," + kAcct + "\n"));
      }, 2, "tranche 't2' (index 1) has no examples");
  // ---------------------------------------------------------------- ledgers
  add("LedgerMissing", [](Env& e) { return "ledger status 1 --db " + (e / "typo.db"); }, 2, "typo.db");
  add("LedgerIsDirectory", [](Env& e) { return "ledger status 1 --db " + e.dir("l.db"); }, 2, "l.db");
  add("LedgerEmpty", [](Env& e) { return "ledger status 1 --db " + e.file("l.db", ""); }, 2, "l.db");
  add("LedgerGarbage", [](Env& e) { return "ledger status 1 --db " + e.file("l.db", garbage(8192, 9)); }, 2, "l.db");
  add("LedgerIsFifo", [](Env& e) { return "ledger status 1 --db " + e.fifo("l.db"); }, 2, "l.db");
  add("LedgerTruncated", [](Env& e) { return "ledger status 1 --db " + e.truncated(e.shared("ledger.db"), "l.db", 0.5); }, 2, "l.db");
  add("LedgerIsDataset", [](Env& e) { return "ledger status 1 --db " + e.copy(fixture("vec_train.h5"), "l.db"); }, 2, "l.db");
  add("LedgerInitExisting", [](Env& e) { return "ledger init --db " + e.copy(e.shared("ledger.db"), "l.db"); }, 2, "l.db");
  add("LedgerCommitMissingReport", [](Env& e) {
        return "ledger commit " + (e / "nope") + " --epoch 1 --pool 100 --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 105, "nope");
  add("LedgerCommitTamperedCsv", [](Env& e) {
        e.copy(e.shared("report"), "rep");
        e.file("rep/attribution.csv", read_text(e / "rep/attribution.csv") + "extra,row\n");
        return "ledger commit " + (e / "rep") + " --epoch 1 --pool 100 --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "attribution.csv");
  add("LedgerCommitGarbageManifest", [](Env& e) {
        e.copy(e.shared("report"), "rep");
        e.file("rep/manifest.json", garbage(300, 10));
        return "ledger commit " + (e / "rep") + " --epoch 1 --pool 100 --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "manifest.json");
  add("LedgerCommitReportMissing", [](Env& e) {
        e.copy(e.shared("report"), "rep");
        fs::remove(e / "rep/report.json");
        return "ledger commit " + (e / "rep") + " --epoch 1 --pool 100 --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "report.json");
  add("LedgerCommitPoolText", [](Env& e) {
        e.copy(e.shared("report"), "rep");
        return "ledger commit " + (e / "rep") + " --epoch 1 --pool lots --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "lots");
  add("LedgerCommitPoolNegative", [](Env& e) {
        e.copy(e.shared("report"), "rep");
        return "ledger commit " + (e / "rep") + " --epoch 1 --pool -5 --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "-5");
  add("LedgerDisputeReasonDirectory", [](Env& e) {
        return "ledger dispute 1 --reason " + e.dir("why") + " --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "why");
  add("LedgerDisputeReasonFifo", [](Env& e) {
        return "ledger dispute 1 --reason " + e.fifo("why") + " --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "why");
  add("LedgerProofUncommitted", [](Env& e) {
        return "ledger proof 7 " + kAcct + " --db " + e.copy(e.shared("ledger.db"), "l.db");
      }, 2, "7");
  return r;
}

// gtest prints a row by its name, not as bytes.
void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

class Hostile : public ::testing::TestWithParam<Row> {};

TEST_P(Hostile, RefusedWithAMessageAndNothingLeft) {
  ATTRACE_REQUIRE_FIXTURES();
  ASSERT_TRUE(shared().ok) << "shared inputs could not be made in " << shared().dir;
  const Row& row = GetParam();
  Env e;
  const std::string args = row.setup(e);
  const auto before = snapshot(e.d.str());
  // A hang (a FIFO read, a lock) fails the row instead of the whole suite.
  const auto r = run_shell("timeout -s KILL 120 " + attrace::test::attrace_bin() + " " + args);
  std::string frag = row.fragment;
  for (size_t at = frag.find("{d}"); at != std::string::npos; at = frag.find("{d}")) frag.replace(at, 3, e.d.str());
  EXPECT_EQ(r.code, row.code) << "attrace " << args << "\n" << r.out;
  EXPECT_NE(r.out.find(frag), std::string::npos) << "expected '" << frag << "' in:\n" << r.out;
  if (r.code == 2 || r.code == 1) {
    EXPECT_NE(r.out.find("attrace: "), std::string::npos) << "one-line attrace message expected:\n" << r.out;
  }
  EXPECT_EQ(r.out.find("std::"), std::string::npos) << "a raw C++ exception reached the user:\n" << r.out;
  // Nothing complete-looking, no staging or temporary leftovers, no input changed.
  for (const auto& o : e.outputs) {
    if (!before.count(fs::relative(o, e.d.str()).string())) {
      EXPECT_FALSE(fs::exists(fs::symlink_status(o))) << o << " was created";
    }
  }
  const auto after = snapshot(e.d.str());
  for (const auto& [rel, bytes] : after) {
    if (bookkeeping(rel)) continue;
    const auto it = before.find(rel);
    EXPECT_TRUE(it != before.end()) << rel << " appeared";
    if (it != before.end()) {
      EXPECT_TRUE(it->second == bytes) << rel << " was changed";
    }
  }
  for (const auto& [rel, bytes] : before) EXPECT_TRUE(after.count(rel)) << rel << " was removed";
}

INSTANTIATE_TEST_SUITE_P(Table, Hostile, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });

TEST(HostileTable, HasAtLeastOneHundredRows) { EXPECT_GE(rows().size(), 100u); }

}  // namespace
