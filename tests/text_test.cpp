// Token datasets (integer /inputs, /lengths, per-position or derived next-token targets) and
// `attrace import text`: reading, validation messages, round trips, content digests (float
// datasets' digests unchanged), duplicate detection, the importer's splits, windows, vocabulary,
// hold-out and tranches, and the CLI's exit codes.
#include "input_error_checks.hpp"
#include "test_util.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/text_import.hpp>
#include <attrace/engine/report.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <set>

namespace ac = attrace::connectors;
namespace fs = std::filesystem;
using attrace::InputError;
using attrace::test::read_text;
using attrace::test::run_attrace;
using attrace::test::run_shell;
using attrace::test::expect_input_error;
using attrace::test::TempDir;
using attrace::test::write_text;

namespace {

// Runs a Python snippet with h5py bound to `f` (the file at `path`, opened for writing): an
// independent writer of the documented layout, with any integer type.
void h5py_write(const std::string& path, const std::string& body) {
  const std::string script = path + ".py";
  write_text(script, "import h5py, numpy as np\nwith h5py.File(" + std::string("'") + path + "', 'w') as f:\n" + body);
  const auto r = run_shell("/usr/bin/python3 " + script);
  ASSERT_EQ(r.code, 0) << r.out;
}

// SHA-256 by OpenSSL's one-shot call (not attrace's hasher).
std::vector<uint8_t> sha256(const std::vector<uint8_t>& bytes) {
  std::vector<uint8_t> d(32);
  unsigned n = 0;
  EXPECT_EQ(EVP_Digest(bytes.data(), bytes.size(), d.data(), &n, EVP_sha256(), nullptr), 1);
  return d;
}
template <class T>
void put(std::vector<uint8_t>& b, T v) {  // little-endian, whatever the host
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof v);
  for (size_t k = 0; k < sizeof v; ++k) b.push_back(static_cast<uint8_t>(u >> (8 * k)));
}

// Two token examples of T = 4: "a" (length 3) and "b" (length 2), padding 0.
ac::Dataset token_dataset() {
  ac::Dataset ds;
  ds.input_kind = ac::InputKind::integers;
  ds.input_shape = {2, 4};
  ds.int_inputs = {5, 6, 7, 0, 8, 9, 0, 0};
  ds.lengths = {3, 2};
  ds.ids = {"a", "b"};
  ds.target_kind = ac::TargetKind::tokens;
  ds.target_shape = {2, 4};
  ds.token_targets = {6, 7, -100, -100, 9, -100, -100, -100};  // the next-token rule, by hand
  ds.tranche = {0, 1};
  ds.tranches = {{"t0", "0x" + std::string(40, 'a'), "", ""}, {"t1", "0x" + std::string(40, 'b'), "", ""}};
  return ds;
}

std::string h5_keys(const std::string& path) {
  const auto r = run_shell("/usr/bin/python3 -c \"import h5py; f = h5py.File('" + path +
                           "', 'r'); print(sorted(f.keys()), f['inputs'].dtype)\"");
  EXPECT_EQ(r.code, 0) << r.out;
  return r.out;
}

}  // namespace

// ---------------------------------------------------------------- token datasets

TEST(TokenDataset, NextTokenTargetsFollowTheRule) {
  const auto ds = token_dataset();
  EXPECT_EQ(ac::next_token_targets(ds), ds.token_targets);
  auto full = ds;
  full.lengths.clear();  // every position valid: the last one has no target
  EXPECT_EQ(ac::next_token_targets(full), (std::vector<int32_t>{6, 7, 0, -100, 9, 0, 0, -100}));
}

TEST(TokenDataset, RoundTripWithDerivedTargetsLeavesThemOut) {
  TempDir d;
  const auto ds = token_dataset();
  ac::write_dataset(d / "t.h5", ds);
  const std::string keys = h5_keys(d / "t.h5");
  EXPECT_NE(keys.find("'lengths'"), std::string::npos) << keys;
  EXPECT_EQ(keys.find("'targets'"), std::string::npos) << keys;  // derived: not written
  EXPECT_NE(keys.find("int32"), std::string::npos) << keys;
  const auto back = ac::read_dataset(d / "t.h5", true);
  EXPECT_EQ(back.input_kind, ac::InputKind::integers);
  EXPECT_TRUE(back.inputs.empty());
  EXPECT_EQ(back.int_inputs, ds.int_inputs);
  EXPECT_EQ(back.lengths, ds.lengths);
  EXPECT_EQ(back.target_kind, ac::TargetKind::tokens);
  EXPECT_EQ(back.target_shape, ds.input_shape);
  EXPECT_EQ(back.token_targets, ds.token_targets);
  EXPECT_EQ(back.ids, ds.ids);
  EXPECT_EQ(back.tranche, ds.tranche);
  EXPECT_EQ(ac::example_digests(back), ac::example_digests(ds));
}

TEST(TokenDataset, RoundTripWithOwnTargetsWritesThem) {
  TempDir d;
  auto ds = token_dataset();
  ds.token_targets = {-100, 7, 1, -100, 3, 4, -100, -100};  // e.g. a prompt masked out
  ac::write_dataset(d / "t.h5", ds);
  EXPECT_NE(h5_keys(d / "t.h5").find("'targets'"), std::string::npos);
  const auto back = ac::read_dataset(d / "t.h5", true);
  EXPECT_EQ(back.token_targets, ds.token_targets);
  EXPECT_EQ(back.target_kind, ac::TargetKind::tokens);
  // Without lengths, too.
  ds.lengths.clear();
  ds.token_targets = {1, 2, 3, 4, 5, 6, 7, 8};
  ac::write_dataset(d / "u.h5", ds);
  const auto u = ac::read_dataset(d / "u.h5", true);
  EXPECT_TRUE(u.lengths.empty());
  EXPECT_EQ(u.token_targets, ds.token_targets);
}

TEST(TokenDataset, IntegerInputsWithLabelsOrFloatTargets) {
  TempDir d;
  auto ds = token_dataset();
  ds.target_kind = ac::TargetKind::class_index;
  ds.target_shape = {2};
  ds.token_targets.clear();
  ds.class_targets = {1, 0};
  ac::write_dataset(d / "c.h5", ds);
  const auto c = ac::read_dataset(d / "c.h5", true);
  EXPECT_EQ(c.input_kind, ac::InputKind::integers);
  EXPECT_EQ(c.target_kind, ac::TargetKind::class_index);
  EXPECT_EQ(c.class_targets, ds.class_targets);
  ds.target_kind = ac::TargetKind::regression;
  ds.class_targets.clear();
  ds.target_shape = {2, 3};
  ds.regression_targets = {0.5f, 1, 2, 3, 4, -1.25f};
  ac::write_dataset(d / "r.h5", ds);
  const auto r = ac::read_dataset(d / "r.h5", true);
  EXPECT_EQ(r.target_kind, ac::TargetKind::regression);
  EXPECT_EQ(r.regression_targets, ds.regression_targets);
  EXPECT_EQ(r.int_inputs, ds.int_inputs);
}

TEST(TokenDataset, ReadsAnyIntegerTypeAndDerivesTargets) {
  TempDir d;
  for (const std::string type : {"uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}) {
    const std::string path = d / (type + ".h5");
    h5py_write(path, "    f['inputs'] = np.array([[1, 2, 3], [250, 4, 0]], dtype='" + type +
                         "')\n    f['lengths'] = np.array([3, 2], dtype='" + type + "')\n");
    const auto ds = ac::read_dataset(path, false);
    EXPECT_EQ(ds.input_kind, ac::InputKind::integers) << type;
    EXPECT_EQ(ds.int_inputs, (std::vector<int32_t>{1, 2, 3, 250, 4, 0})) << type;
    EXPECT_EQ(ds.lengths, (std::vector<int32_t>{3, 2})) << type;
    EXPECT_EQ(ds.ids, (std::vector<std::string>{"0", "1"})) << type;
    EXPECT_EQ(ds.token_targets, (std::vector<int32_t>{2, 3, -100, 4, -100, -100})) << type;
  }
}

// Each refusal names the file, the field, the example and the position.
TEST(TokenDataset, RefusesBadTokenFiles) {
  TempDir d;
  const std::string ids = "    f.create_dataset('ids', data=['a', 'b'], dtype=h5py.string_dtype())\n";
  auto refuse = [&](const std::string& name, const std::string& body, std::initializer_list<std::string> parts) {
    SCOPED_TRACE(name);
    const std::string path = d / (name + ".h5");
    h5py_write(path, ids + body);
    std::vector<std::string> all = {path};
    all.insert(all.end(), parts.begin(), parts.end());
    try {
      (void)ac::read_dataset(path, false);
      ADD_FAILURE() << "accepted";
    } catch (const InputError& e) {
      for (const auto& p : all) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nmissing: " << p;
    }
  };
  refuse("negative_id", "    f['inputs'] = np.array([[1, 2, 3], [4, 5, -3]], dtype='int16')\n",
         {"/inputs of example 'b' (row 1) at position 2 is -3", "token ids must be >= 0"});
  refuse("huge_id", "    f['inputs'] = np.array([[1, 2, 3], [4, 3000000000, 1]], dtype='int64')\n",
         {"/inputs of example 'b' (row 1) at position 1 is 3000000000", "outside 32-bit"});
  refuse("length_zero", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['lengths'] = np.array([3, 0])\n",
         {"/lengths of example 'b' (row 1) is 0, outside 1..3"});
  refuse("length_long", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['lengths'] = np.array([4, 2])\n",
         {"/lengths of example 'a' (row 0) is 4, outside 1..3"});
  refuse("lengths_shape", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['lengths'] = np.array([3, 2, 1])\n",
         {"/lengths must have shape [N] = [2]"});
  refuse("target_low", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['targets'] = np.array([[1, -100, 2], [1, -101, 0]])\n",
         {"/targets of example 'b' (row 1) at position 1 is -101", "ids >= 0 or -100"});
  refuse("target_minus_one", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['targets'] = np.array([[1, -1, 2], [1, 1, 0]])\n",
         {"/targets of example 'a' (row 0) at position 1 is -1"});
  refuse("target_past_length",
         "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['lengths'] = np.array([3, 2])\n"
         "    f['targets'] = np.array([[1, 1, 2], [1, 1, 5]])\n",
         {"/targets of example 'b' (row 1) at position 2 is 5, past the example's length 2"});
  refuse("no_target_derived", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['lengths'] = np.array([3, 1])\n",
         {"example 'b' (row 1) has no target at any position", "length 1", "no loss term"});
  refuse("no_target_given", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['targets'] = np.array([[-100] * 3, [1, 2, 3]])\n",
         {"example 'a' (row 0) has no target at any position", "no loss term"});
  refuse("target_shape", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['targets'] = np.ones((2, 4), dtype='int32')\n",
         {"per-position /targets must have the shape of /inputs [2,3], got [2,4]"});
  refuse("rank3", "    f['inputs'] = np.ones((2, 3, 2), dtype='uint8')\n    f['targets'] = np.array([0, 1])\n",
         {"integer /inputs are token ids and must have shape [N, T], got [2,3,2]"});
  refuse("float_lengths", "    f['inputs'] = np.ones((2, 3), dtype='int32')\n    f['lengths'] = np.array([3.0, 2.0])\n",
         {"/lengths must hold integers"});
  refuse("lengths_with_floats",
         "    f['inputs'] = np.ones((2, 3), dtype='float32')\n    f['targets'] = np.array([0, 1])\n"
         "    f['lengths'] = np.array([3, 2])\n",
         {"/lengths is only for token datasets"});
}

TEST(TokenDataset, ValidateRefusesInMemoryMistakes) {
  auto ds = token_dataset();
  ds.int_inputs[5] = -7;
  expect_input_error([&] { ac::validate_dataset(ds, true, "mem"); },
                     {"mem: /inputs of example 'b' (row 1) at position 1 is -7"});
  ds = token_dataset();
  ds.inputs = {1.0f};  // both representations
  expect_input_error([&] { ac::validate_dataset(ds, true, "mem"); }, {"holds both float and integer inputs"});
  ds = token_dataset();
  ds.input_kind = ac::InputKind::values;  // token targets need token inputs
  ds.inputs.assign(8, 1.0f);
  ds.int_inputs.clear();
  ds.lengths.clear();
  expect_input_error([&] { ac::validate_dataset(ds, true, "mem"); }, {"per-position token /targets need integer /inputs"});
}

// ---------------------------------------------------------------- digests

TEST(TokenDataset, FloatDigestsAreTheDocumentedBytes) {
  // The pre-existing digest of float datasets (feature stores and tranche registries hold it):
  // SHA-256 of the float32 input bytes then the int64 label or float32 targets, little-endian.
  ac::Dataset c;
  c.input_shape = {3, 2};
  c.inputs = {1.5f, -2, 0, 3.25f, 1e-3f, 7};
  c.target_shape = {3};
  c.class_targets = {2, 0, 11};
  c.ids = {"x", "y", "z"};
  ac::Dataset r = c;
  r.target_kind = ac::TargetKind::regression;
  r.class_targets.clear();
  r.target_shape = {3, 2};
  r.regression_targets = {0.5f, -1, 2, 3, 4, 5};
  for (const auto* ds : {&c, &r}) {
    const auto got = ac::example_digests(*ds);
    ASSERT_EQ(got.size(), 3u * 32);
    for (int64_t i = 0; i < 3; ++i) {
      std::vector<uint8_t> b;
      for (int k = 0; k < 2; ++k) put(b, ds->inputs[static_cast<size_t>(i * 2 + k)]);
      if (ds == &c) {
        put(b, c.class_targets[static_cast<size_t>(i)]);
      } else {
        for (int k = 0; k < 2; ++k) put(b, r.regression_targets[static_cast<size_t>(i * 2 + k)]);
      }
      EXPECT_EQ(std::vector<uint8_t>(got.begin() + i * 32, got.begin() + i * 32 + 32), sha256(b)) << "row " << i;
    }
  }
  // One value pinned: the first row of `c` as the code before token datasets (e23b7b7) computed
  // it, equal to `printf '\x00\x00\xc0\x3f\x00\x00\x00\xc0\x02\0\0\0\0\0\0\0' | sha256sum`.
  const auto d0 = ac::example_digests(c);
  std::string hex;
  for (int k = 0; k < 32; ++k) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02x", d0[static_cast<size_t>(k)]);
    hex += buf;
  }
  EXPECT_EQ(hex, "dae78a4e38725e12e87d7c1f436e55e2c4e67baae09fa27b87e6998d597cf05c");
}

TEST(TokenDataset, TokenDigestsCoverIdsLengthAndTargets) {
  const auto ds = token_dataset();
  const auto got = ac::example_digests(ds);
  for (int64_t i = 0; i < 2; ++i) {  // the documented bytes (docs/formats.md#example-digests)
    std::vector<uint8_t> b;
    for (const char ch : std::string("attrace.token-example/1")) b.push_back(static_cast<uint8_t>(ch));
    put(b, ds.lengths[static_cast<size_t>(i)]);
    for (int t = 0; t < 4; ++t) put(b, ds.int_inputs[static_cast<size_t>(i * 4 + t)]);
    for (int t = 0; t < 4; ++t) put(b, ds.token_targets[static_cast<size_t>(i * 4 + t)]);
    EXPECT_EQ(std::vector<uint8_t>(got.begin() + i * 32, got.begin() + i * 32 + 32), sha256(b)) << "row " << i;
  }
  auto row0 = [](const ac::Dataset& d) {
    const auto g = ac::example_digests(d);
    return std::vector<uint8_t>(g.begin(), g.begin() + 32);
  };
  const auto base = row0(ds);
  auto changed = ds;
  changed.int_inputs[1] = 60;  // an id
  changed.token_targets = ac::next_token_targets(changed);
  EXPECT_NE(row0(changed), base);
  changed = ds;
  changed.lengths[0] = 4;  // the length alone (targets kept)
  EXPECT_NE(row0(changed), base);
  changed = ds;
  changed.int_inputs[3] = 1;  // padding: what the model is given
  EXPECT_NE(row0(changed), base);
  changed = ds;
  changed.token_targets[0] = -100;  // a target
  EXPECT_NE(row0(changed), base);
}

TEST(TokenDataset, IdenticalTokenExamplesAreFound) {
  auto ds = token_dataset();
  ds.input_shape = {4, 4};
  ds.ids = {"a", "b", "c", "d"};
  ds.int_inputs = {5, 6, 7, 0, 8, 9, 0, 0, 5, 6, 7, 0, 5, 6, 7, 9};
  ds.lengths = {3, 2, 3, 3};  // d differs from a only in its padding
  ds.target_shape = {4, 4};
  ds.token_targets = ac::next_token_targets(ds);
  ds.tranche = {0, 1, 1, 0};
  const auto groups = attrace::engine::identical_examples(ds);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0], (std::vector<int64_t>{0, 2}));
}

// ---------------------------------------------------------------- import text

namespace {
ac::TextImportOptions opts(const std::string& dir, const std::string& out) {
  ac::TextImportOptions o;
  o.dir = dir;
  o.output_h5 = out;
  return o;
}
std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> v;
  for (const unsigned char c : s) v.push_back(c);
  return v;
}
// Row i's valid tokens.
std::vector<int32_t> row(const ac::Dataset& ds, int64_t i) {
  const int64_t t = ds.input_shape[1];
  return {ds.int_inputs.begin() + i * t, ds.int_inputs.begin() + i * t + ds.lengths[static_cast<size_t>(i)]};
}
int64_t index_of(const ac::Dataset& ds, const std::string& id) {
  const auto it = std::find(ds.ids.begin(), ds.ids.end(), id);
  EXPECT_NE(it, ds.ids.end()) << id;
  return it - ds.ids.begin();
}
}  // namespace

TEST(ImportText, FortuneStyleFilesWithDelimiter) {
  TempDir d;
  fs::create_directories(d / "in");
  write_text(d / "in/cats", "Cats sleep.\n%\nA cat\r\nis fine.\n%\n%\n\n  \nX\n%\n");
  write_text(d / "in/dogs", "Dogs bark.\n%\nWoof woof.");
  auto o = opts(d / "in", d / "t.h5");
  ac::parse_text_split("delimiter:%", o);
  o.max_tokens = 16;
  const auto r = ac::build_text_datasets(o);
  // Items: cats/0 "Cats sleep.", cats/1 "A cat\nis fine." (CRLF read as LF), cats/2 "X" (1 token: dropped),
  // dogs/0, dogs/1; the empty items between "%" lines are not numbered.
  EXPECT_EQ(r.files, 2);
  EXPECT_EQ(r.items, 5);
  EXPECT_EQ(r.dropped_short, 1);
  EXPECT_EQ(r.train.ids, (std::vector<std::string>{"cats/0", "cats/1", "dogs/0", "dogs/1"}));
  EXPECT_EQ(row(r.train, 1), bytes_of("A cat\nis fine."));
  EXPECT_EQ(row(r.train, 3), bytes_of("Woof woof."));
  EXPECT_EQ(r.train.input_shape, (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(r.train.tranche, (std::vector<int64_t>{0, 0, 1, 1}));
  ASSERT_EQ(r.train.tranches.size(), 2u);
  EXPECT_EQ(r.train.tranches[0].id, "cats");
  EXPECT_EQ(r.train.tranches[1].id, "dogs");
  EXPECT_EQ(r.train.token_targets, ac::next_token_targets(r.train));
  for (int64_t i = 0; i < 4; ++i)  // padding
    for (int64_t t = r.train.lengths[static_cast<size_t>(i)]; t < 16; ++t) EXPECT_EQ(r.train.int_inputs[static_cast<size_t>(i * 16 + t)], 0);
  // Written without --accounts: ids, no tranche table; read back as a query set.
  ac::import_text(o);
  const auto back = ac::read_dataset(d / "t.h5", false);
  EXPECT_TRUE(back.tranches.empty());
  EXPECT_EQ(back.ids, r.train.ids);
  EXPECT_EQ(back.int_inputs, r.train.int_inputs);
  EXPECT_EQ(back.lengths, r.train.lengths);
}

TEST(ImportText, LongItemsBecomeWindowsThatCoverEveryPairOnce) {
  TempDir d;
  fs::create_directories(d / "in/sub");
  std::string text;
  for (int k = 0; k < 23; ++k) text.push_back(static_cast<char>('a' + k));
  write_text(d / "in/sub/long.txt", text);  // 23 tokens, T = 8: windows [0,8) [7,15) [14,22) [21,23)
  auto o = opts(d / "in", d / "t.h5");
  o.max_tokens = 8;
  const auto r = ac::build_text_datasets(o);
  EXPECT_EQ(r.train.ids, (std::vector<std::string>{"sub/long#0", "sub/long#1", "sub/long#2", "sub/long#3"}));
  EXPECT_EQ(r.train.lengths, (std::vector<int32_t>{8, 8, 8, 2}));
  EXPECT_EQ(r.long_items, 1);
  // Every (token, next token) pair of the text is a target exactly once.
  std::multiset<std::pair<int32_t, int32_t>> pairs;
  for (int64_t i = 0; i < r.train.size(); ++i)
    for (int64_t t = 0; t < 8; ++t) {
      const int32_t y = r.train.token_targets[static_cast<size_t>(i * 8 + t)];
      if (y != ac::kIgnoreTarget) pairs.insert({r.train.int_inputs[static_cast<size_t>(i * 8 + t)], y});
    }
  std::multiset<std::pair<int32_t, int32_t>> want;
  for (size_t k = 0; k + 1 < text.size(); ++k) want.insert({text[k], text[k + 1]});
  EXPECT_EQ(pairs, want);
}

TEST(ImportText, SplitsByParagraphLineAndFile) {
  TempDir d;
  fs::create_directories(d / "in");
  write_text(d / "in/a.txt", "one two\nthree\n\n \nfour five\n\nsix seven\n");
  auto o = opts(d / "in", d / "t.h5");
  ac::parse_text_split("paragraph", o);
  EXPECT_EQ(ac::build_text_datasets(o).train.ids, (std::vector<std::string>{"a/0", "a/1", "a/2"}));
  ac::parse_text_split("line", o);
  const auto lines = ac::build_text_datasets(o);
  EXPECT_EQ(lines.train.ids.size(), 4u);
  EXPECT_EQ(row(lines.train, 1), bytes_of("three"));
  ac::parse_text_split("file", o);
  const auto file = ac::build_text_datasets(o);
  EXPECT_EQ(file.train.ids, (std::vector<std::string>{"a"}));
  EXPECT_EQ(row(file.train, 0), bytes_of("one two\nthree\n\n \nfour five\n\nsix seven"));
  expect_input_error([&] { ac::parse_text_split("words", o); }, {"--split must be file, paragraph, line or delimiter:S", "'words'"});
  expect_input_error([&] { ac::parse_text_split("delimiter:", o); }, {"--split must be"});
}

TEST(ImportText, VocabularyMatchesGreedilyLongestFirst) {
  TempDir d;
  write_text(d / "v.txt", "th\nthe\n\nhe\n\\n\\n\nen\n");
  const auto tk = ac::TextTokenizer::from_vocab_file(d / "v.txt");
  EXPECT_EQ(tk.vocab_size(), 256 + 5);
  // "the then\n\nhe": the(257) ' ' the(257) n, "\n\n"(259), he(258)
  EXPECT_EQ(tk.encode("the then\n\nhe"), (std::vector<int32_t>{257, ' ', 257, 'n', 259, 258}));
  EXPECT_EQ(tk.encode("tx"), (std::vector<int32_t>{'t', 'x'}));  // no entry matches: bytes
  EXPECT_EQ(tk.decode(259), "\n\n");
  EXPECT_EQ(tk.decode('q'), "q");
  EXPECT_EQ(tk.decode(999), "");
  write_text(d / "one.txt", "ab\nc\n");
  expect_input_error([&] { (void)ac::TextTokenizer::from_vocab_file(d / "one.txt"); }, {d / "one.txt:2", "single byte"});
  write_text(d / "dup.txt", "ab\ncd\nab\n");
  expect_input_error([&] { (void)ac::TextTokenizer::from_vocab_file(d / "dup.txt"); }, {d / "dup.txt:3", "repeats", "dup.txt:1"});
  write_text(d / "esc.txt", "ab\\q\n");
  expect_input_error([&] { (void)ac::TextTokenizer::from_vocab_file(d / "esc.txt"); }, {d / "esc.txt:1", "unknown escape"});
  // Through the importer: ids 256+ in the dataset.
  fs::create_directories(d / "in");
  write_text(d / "in/x", "the then");
  auto o = opts(d / "in", d / "t.h5");
  o.vocab_file = d / "v.txt";
  const auto r = ac::build_text_datasets(o);
  EXPECT_EQ(row(r.train, 0), (std::vector<int32_t>{257, ' ', 257, 'n'}));
  EXPECT_EQ(r.vocab_size, 261);
}

TEST(ImportText, HoldoutSendsEveryKthItemToTheQueries) {
  TempDir d;
  fs::create_directories(d / "in");
  write_text(d / "in/a", "a0\na1\na2\na3\n");
  write_text(d / "in/b", "b0\nb1\nb2\n");
  auto o = opts(d / "in", d / "t.h5");
  ac::parse_text_split("line", o);
  o.queries_h5 = d / "q.h5";
  o.holdout_every = 3;
  write_text(d / "acc.csv", "tranche,account,name,license\na,0x" + std::string(40, '1') + ",Ann,CC0\nb,0x" +
                                std::string(40, '2') + ",Bo,\nunused,0x" + std::string(40, '3') + ",,\n");
  o.accounts_csv = d / "acc.csv";
  ac::import_text(o);
  const auto t = ac::read_dataset(d / "t.h5", true);
  const auto q = ac::read_dataset(d / "q.h5", false);
  // Sorted items a/0 a/1 a/2 a/3 b/0 b/1 b/2: the 3rd and 6th are held out.
  EXPECT_EQ(q.ids, (std::vector<std::string>{"a/2", "b/1"}));
  EXPECT_EQ(t.ids, (std::vector<std::string>{"a/0", "a/1", "a/3", "b/0", "b/2"}));
  EXPECT_TRUE(q.tranches.empty());
  ASSERT_EQ(t.tranches.size(), 2u);  // the unused row is not a tranche
  EXPECT_EQ(t.tranches[0].account, "0x" + std::string(40, '1'));
  EXPECT_EQ(t.tranches[0].name, "Ann");
  EXPECT_EQ(t.tranches[0].license, "CC0");
  EXPECT_EQ(t.tranches[1].id, "b");
  EXPECT_EQ(row(q, 1), bytes_of("b1"));
  // Same inputs, same bytes.
  auto o2 = o;
  o2.output_h5 = d / "t2.h5";
  o2.queries_h5 = d / "q2.h5";
  ac::import_text(o2);
  EXPECT_EQ(read_text(d / "t.h5"), read_text(d / "t2.h5"));
  EXPECT_EQ(read_text(d / "q.h5"), read_text(d / "q2.h5"));
}

TEST(ImportText, TranchePerFolderGlobExcludeAndHiddenFiles) {
  TempDir d;
  fs::create_directories(d / "in/alice/deep");
  fs::create_directories(d / "in/bob");
  fs::create_directories(d / "in/.git");
  write_text(d / "in/alice/x.txt", "alice x");
  write_text(d / "in/alice/deep/y.txt", "alice y");
  write_text(d / "in/alice/blob.dat", std::string("\xff\xfe\x00\x01", 4));  // binary: excluded
  write_text(d / "in/bob/z.txt", "bob z");
  write_text(d / "in/bob/.hidden.txt", "not me");
  write_text(d / "in/.git/HEAD", std::string("\xff", 1));
  auto o = opts(d / "in", d / "t.h5");
  o.tranche_per = ac::TranchePer::folder;
  o.excludes = {"*.dat"};
  auto r = ac::build_text_datasets(o);
  EXPECT_EQ(r.train.ids, (std::vector<std::string>{"alice/deep/y", "alice/x", "bob/z"}));
  EXPECT_EQ(r.train.tranche, (std::vector<int64_t>{0, 0, 1}));
  EXPECT_EQ(r.train.tranches[0].id, "alice");
  EXPECT_EQ(r.train.tranches[1].id, "bob");
  o.excludes.clear();
  o.globs = {"*.txt"};
  EXPECT_EQ(ac::build_text_datasets(o).train.ids.size(), 3u);
  o.globs.clear();  // now the binary file is taken: refused, naming it and the byte
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {d / "in/alice/blob.dat", "not valid UTF-8 at byte offset 0"});
  write_text(d / "in/top.txt", "top");
  o.globs = {"*.txt"};
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"top.txt", "with --tranche-per folder every file must be in a subfolder"});
}

TEST(ImportText, RefusesBadInput) {
  TempDir d;
  fs::create_directories(d / "in");
  write_text(d / "in/good", "fine text");
  write_text(d / "in/bad", std::string("ok so far \xc3\x28 then", 17));
  auto o = opts(d / "in", d / "t.h5");
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {d / "in/bad", "not valid UTF-8 at byte offset 10"});
  fs::remove(d / "in/bad");
  write_text(d / "in/good.md", "same id");
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"both give the id 'good'"});
  fs::remove(d / "in/good.md");
  write_text(d / "acc.csv", "tranche,account\nother,0x" + std::string(40, '1') + "\n");
  o.accounts_csv = d / "acc.csv";
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"acc.csv: no row for 1 tranche(s)", "'good'"});
  write_text(d / "acc.csv", "tranche,account\ngood,0x12\n");
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"/tranches/account of tranche 'good' is '0x12'"});
  o.accounts_csv.clear();
  o.min_tokens = 100;
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"no training examples", "1 shorter than --min-tokens 100"});
  o.min_tokens = 2;
  o.queries_h5 = d / "q.h5";
  o.holdout_every = 2;
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"no item was held out"});
  o.holdout_every = 0;
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"--queries and --holdout-every go together"});
  o = opts(d / "in", d / "t.h5");
  o.max_tokens = 1;
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"--max-tokens must be >= 2"});
  o = opts(d / "nowhere", d / "t.h5");
  expect_input_error([&] { (void)ac::build_text_datasets(o); }, {"nowhere: not a directory"});
  EXPECT_FALSE(fs::exists(d / "t.h5"));
  EXPECT_FALSE(fs::exists(d / "q.h5"));
}

// The real binary: exit 0 and the files, or exit 2, one message and nothing written.
TEST(ImportText, CliExitCodes) {
  TempDir d;
  fs::create_directories(d / "in");
  write_text(d / "in/cats", "Cats sleep.\n%\nCats purr.\n%\nCats hunt.\n");
  const std::string in = "'" + d / "in" + "'";
  auto ok = run_attrace("-q import text " + in + " -o '" + d / "t.h5" + "' --split delimiter:% --queries '" + d / "q.h5" +
                        "' --holdout-every 3");
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(ok.out.find("wrote 2 examples x 128 tokens"), std::string::npos) << ok.out;
  EXPECT_EQ(ac::read_dataset(d / "q.h5", false).ids, (std::vector<std::string>{"cats/2"}));
  // Existing output without --force.
  auto again = run_attrace("-q import text " + in + " -o '" + d / "t.h5" + "'");
  EXPECT_EQ(again.code, 2) << again.out;
  EXPECT_NE(again.out.find("already exists"), std::string::npos) << again.out;
  auto forced = run_attrace("-q import text " + in + " -o '" + d / "t.h5" + "' --force");
  EXPECT_EQ(forced.code, 0) << forced.out;
  // Bad inputs: exit 2, nothing written (no output, no temporary file).
  write_text(d / "in/broken", std::string("\xff", 1));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"-o '" + d / "n.h5" + "'", "not valid UTF-8 at byte offset 0"},
      {"-o '" + d / "n.h5" + "' --exclude broken --split sentences", "--split must be"},
      {"-o '" + d / "n.h5" + "' --exclude broken --vocab '" + d / "missing.txt" + "'", "missing.txt"},
      {"-o '" + d / "n.h5" + "' --exclude broken --queries '" + d / "nq.h5" + "' --holdout-every 50", "no item was held out"},
  };
  for (const auto& [args, message] : bad) {
    const auto r = run_attrace("-q import text " + in + " " + args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("attrace: error: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(message), std::string::npos) << r.out;
  }
  for (const auto& e : fs::directory_iterator(d.str())) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name == "in" || name == "t.h5" || name == "q.h5" || name == "t.h5.py") << "left behind: " << name;
  }
  auto help = run_attrace("import text --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--tranche-per"), std::string::npos);
}

// The fortunes package (scripts/setup.sh installs it): each category file a tranche, items
// separated by "%" lines.
TEST(ImportText, DebianFortunes) {
  const std::string dir = "/usr/share/games/fortunes";
  if (!fs::exists(dir + "/computers")) GTEST_SKIP() << dir << " is missing (apt-get install fortunes)";
  TempDir d;
  auto o = opts(dir, d / "t.h5");
  ac::parse_text_split("delimiter:%", o);
  o.excludes = {"*.dat", "*.u8"};
  o.queries_h5 = d / "q.h5";
  o.holdout_every = 10;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = ac::import_text(o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("fortunes: %lld files, %lld items, %lld train + %lld query examples x %lld tokens, %zu tranches, "
              "%lld tokens, %lld cut into windows, %lld dropped, %.2f s\n",
              static_cast<long long>(r.files), static_cast<long long>(r.items), static_cast<long long>(r.train.size()),
              static_cast<long long>(r.queries.size()), static_cast<long long>(o.max_tokens), r.train.tranches.size(),
              static_cast<long long>(r.tokens), static_cast<long long>(r.long_items), static_cast<long long>(r.dropped_short), s);
  EXPECT_EQ(static_cast<int64_t>(r.train.tranches.size()), r.files);
  const auto computers = index_of(r.train, "computers/0");
  EXPECT_EQ(r.train.tranches[static_cast<size_t>(r.train.tranche[static_cast<size_t>(computers)])].id, "computers");
  // No example holds a separator line.
  for (int64_t i = 0; i < r.train.size(); ++i) {
    const auto v = row(r.train, i);
    const std::string text(v.begin(), v.end());
    ASSERT_EQ(("\n" + text + "\n").find("\n%\n"), std::string::npos) << r.train.ids[static_cast<size_t>(i)];
  }
  const auto back = ac::read_dataset(d / "t.h5", false);
  EXPECT_EQ(back.size(), r.train.size());
}
