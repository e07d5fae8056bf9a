// connectors/: datasets (h5py-written and our own), validation errors, run files, CSV import,
// TOML errors, staged output directories.
#include "input_error_checks.hpp"
#include "test_util.hpp"

#include <attrace/connectors/csv_import.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/connectors/run.hpp>
#include <attrace/connectors/toml_util.hpp>
#include <attrace/error.hpp>

#include <gtest/gtest.h>

#include <filesystem>

namespace ac = attrace::connectors;
using attrace::InputError;
using attrace::test::fixture;
using attrace::test::expect_input_error;
using attrace::test::TempDir;
using attrace::test::write_text;

namespace {

ac::Dataset small_dataset() {
  ac::Dataset ds;
  ds.input_shape = {4, 2};
  ds.inputs = {1, 2, 3, 4, 5, 6, 7, 8};
  ds.target_shape = {4};
  ds.class_targets = {0, 1, 1, 0};
  ds.ids = {"a", "b", "c", "d"};
  ds.tranche = {0, 1, 0, 1};
  ds.tranches = {{"alice", "0x" + std::string(40, 'a'), "Alice", "CC0"}, {"bob", "0x" + std::string(40, 'b'), "", ""}};
  return ds;
}

TEST(Dataset, ReadsH5pyWrittenFiles) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto tr = ac::read_dataset(fixture("vec_train.h5"), true);
  EXPECT_EQ(tr.size(), 37);
  EXPECT_EQ(tr.example_width(), 8);
  EXPECT_EQ(tr.tranches.size(), 5u);
  EXPECT_EQ(tr.ids[3], "ex003");
  EXPECT_EQ(tr.tranches[2].id, "t2");
  EXPECT_EQ(tr.tranches[2].license, "CC-BY-4.0");
  EXPECT_EQ(tr.sha256, ac::sha256_file(fixture("vec_train.h5")));
  const auto q = ac::read_dataset(fixture("vec_query.h5"), false);  // fixed-length ASCII ids
  EXPECT_EQ(q.ids[10], "ex010");
  EXPECT_TRUE(q.tranches.empty());
  const auto img = ac::read_dataset(fixture("img_train.h5"), true);
  EXPECT_EQ(img.input_shape, (std::vector<int64_t>{37, 1, 6, 6}));
  const auto reg = ac::read_dataset(fixture("reg_train.h5"), true);
  EXPECT_EQ(reg.target_kind, ac::TargetKind::regression);
  EXPECT_EQ(reg.target_width(), 2);
}

TEST(Dataset, QuerySetWithoutTranchesIsRejectedAsTrainingSet) {
  ATTRACE_REQUIRE_FIXTURES();
  expect_input_error([] { ac::read_dataset(fixture("vec_query.h5"), true); }, {"vec_query.h5", "/tranche"});
}

TEST(Dataset, WriteReadRoundTripIsExactAndByteStable) {
  TempDir d;
  const auto ds = small_dataset();
  ac::write_dataset(d / "a.h5", ds);
  ac::write_dataset(d / "b.h5", ds);
  EXPECT_EQ(ac::sha256_file(d / "a.h5"), ac::sha256_file(d / "b.h5")) << "same content must give the same bytes";
  const auto back = ac::read_dataset(d / "a.h5", true);
  EXPECT_EQ(back.inputs, ds.inputs);
  EXPECT_EQ(back.class_targets, ds.class_targets);
  EXPECT_EQ(back.ids, ds.ids);
  EXPECT_EQ(back.tranche, ds.tranche);
  EXPECT_EQ(back.tranches[0].name, "Alice");
  EXPECT_FALSE(std::filesystem::exists(d / "a.h5.tmp-" + std::to_string(::getpid())));
}

TEST(Dataset, TrancheIndexOutOfRangeNamesTheExample) {
  auto ds = small_dataset();
  ds.tranche[2] = 5;
  expect_input_error([&] { ac::validate_dataset(ds, true, "train.h5"); }, {"train.h5", "'c'", "5", "[0, 2)"});
}

TEST(Dataset, EmptyTrancheIsAnError) {
  auto ds = small_dataset();
  ds.tranches.push_back({"carol", "0x" + std::string(40, 'c'), "", ""});
  expect_input_error([&] { ac::validate_dataset(ds, true, "train.h5"); }, {"train.h5", "'carol'", "no examples"});
}

TEST(Dataset, BadAccountDuplicateIdsNaNInputs) {
  auto ds = small_dataset();
  ds.tranches[1].account = "0x1234";
  expect_input_error([&] { ac::validate_dataset(ds, true, "t.h5"); }, {"'bob'", "0x1234", "EVM address"});
  ds = small_dataset();
  ds.ids[3] = "a";
  expect_input_error([&] { ac::validate_dataset(ds, true, "t.h5"); }, {"'a'", "twice"});
  ds = small_dataset();
  ds.inputs[5] = std::numeric_limits<float>::quiet_NaN();
  expect_input_error([&] { ac::validate_dataset(ds, true, "t.h5"); }, {"'c'", "NaN"});
}

TEST(Dataset, MissingAndNonHdf5Files) {
  TempDir d;
  expect_input_error([&] { ac::read_dataset(d / "nope.h5", true); }, {"nope.h5", "cannot open"});
  write_text(d / "text.h5", "not hdf5");
  expect_input_error([&] { ac::read_dataset(d / "text.h5", true); }, {"text.h5", "not an HDF5 file"});
}

TEST(RunFile, ReadsCheckpointsWithHashes) {
  ATTRACE_REQUIRE_FIXTURES();
  const auto run = ac::read_run_file(fixture("mlp_run.toml"));
  ASSERT_EQ(run.checkpoints.size(), 3u);
  EXPECT_EQ(run.checkpoints[1].lr, 0.05);
  EXPECT_EQ(run.checkpoints[2].step, 300);
  EXPECT_EQ(run.checkpoints[0].sha256, ac::sha256_file(fixture("mlp_1.pt")));
}

TEST(RunFile, LrMissingOrNegative) {
  TempDir d;
  write_text(d / "m.pt", "x");
  write_text(d / "run.toml", "[[checkpoint]]\nfile = \"m.pt\"\nstep = 1\n");
  expect_input_error([&] { ac::read_run_file(d / "run.toml"); }, {"run.toml", "#1", "'lr'", "missing"});
  write_text(d / "run.toml", "[[checkpoint]]\nfile = \"m.pt\"\nstep = 1\nlr = -0.1\n");
  expect_input_error([&] { ac::read_run_file(d / "run.toml"); }, {"run.toml", "lr must be finite and >= 0", "-0.1"});
}

TEST(RunFile, MissingCheckpointAndBadOrder) {
  TempDir d;
  write_text(d / "run.toml", "[[checkpoint]]\nfile = \"gone.pt\"\nstep = 1\nlr = 0.1\n");
  expect_input_error([&] { ac::read_run_file(d / "run.toml"); }, {"gone.pt", "missing"});
  write_text(d / "a.pt", "x");
  write_text(d / "run.toml", "[[checkpoint]]\nfile = \"a.pt\"\nstep = 5\nlr = 0.1\n[[checkpoint]]\nfile = \"a.pt\"\nstep = 5\nlr = 0.1\n");
  expect_input_error([&] { ac::read_run_file(d / "run.toml"); }, {"#2", "steps must increase"});
}

TEST(Toml, MalformedFileNamesLineAndColumn) {
  TempDir d;
  write_text(d / "bad.toml", "[run]\ncheckpoints = \"run.toml\n");
  expect_input_error([&] { ac::parse_toml_file(d / "bad.toml"); }, {"bad.toml:2:", "malformed TOML"});
}

TEST(CsvImport, ImportsExamplesAndTranches) {
  TempDir d;
  write_text(d / "ex.csv", "id,f1,f2,label,tranche\nx1,0.5,1,2,alice\nx2,1.5,-2,0,bob\n\"x,3\",2,3e-1,1,alice\n");
  write_text(d / "tr.csv", "id,account,name,license\nalice,0x" + std::string(40, 'a') + ",Alice,CC0\nbob,0x" + std::string(40, 'b') + ",\"Bob, Inc.\",MIT\n");
  ac::CsvImportOptions o;
  o.examples_csv = d / "ex.csv";
  o.tranches_csv = d / "tr.csv";
  o.output_h5 = d / "out.h5";
  EXPECT_EQ(ac::import_csv(o), 3);
  const auto ds = ac::read_dataset(d / "out.h5", true);
  EXPECT_EQ(ds.inputs, (std::vector<float>{0.5f, 1.f, 1.5f, -2.f, 2.f, 0.3f}));
  EXPECT_EQ(ds.class_targets, (std::vector<int64_t>{2, 0, 1}));
  EXPECT_EQ(ds.ids[2], "x,3");
  EXPECT_EQ(ds.tranche, (std::vector<int64_t>{0, 1, 0}));
  EXPECT_EQ(ds.tranches[1].name, "Bob, Inc.");
}

TEST(CsvImport, BadCellNamesLineAndColumnAndWritesNothing) {
  TempDir d;
  write_text(d / "ex.csv", "f1,label\n1,0\nabc,1\n");
  ac::CsvImportOptions o;
  o.examples_csv = d / "ex.csv";
  o.output_h5 = d / "out.h5";
  expect_input_error([&] { ac::import_csv(o); }, {"ex.csv:3", "'f1'", "'abc'"});
  EXPECT_FALSE(std::filesystem::exists(d / "out.h5"));
  write_text(d / "ex.csv", "f1,label,tranche\n1,0,zed\n");
  write_text(d / "tr.csv", "id,account\nalice,0x" + std::string(40, 'a') + "\n");
  o.tranches_csv = d / "tr.csv";
  expect_input_error([&] { ac::import_csv(o); }, {"ex.csv:2", "'zed'"});
}

TEST(StagedDir, AppearsOnlyOnCommit) {
  TempDir d;
  {
    ac::StagedDir s(d / "out", false);
    write_text(s.file("a.txt"), "hello");
    EXPECT_FALSE(std::filesystem::exists(d / "out"));
  }  // destroyed without commit: nothing left, not even the staging directory
  EXPECT_TRUE(std::filesystem::is_empty(d.str()));
  ac::StagedDir s(d / "out", false);
  write_text(s.file("a.txt"), "hello");
  s.commit();
  EXPECT_EQ(attrace::test::read_text(d / "out/a.txt"), "hello");
  expect_input_error([&] { ac::StagedDir again(d / "out", false); }, {"already exists", "--force"});
}

TEST(StagedDir, UnwritableParentIsAnInputError) {
  // As root, permission bits do not stop writes; /proc refuses new directories for everyone.
  TempDir d;
  std::string parent = "/proc";
  if (::geteuid() != 0) {
    parent = d / "ro";
    std::filesystem::create_directories(parent);
    std::filesystem::permissions(parent, std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  }
  try {
    ac::StagedDir s(parent + "/attrace-out", false);
    ADD_FAILURE() << "no exception";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(parent + "/attrace-out"), std::string::npos) << m;
    EXPECT_TRUE(m.find("not writable") != std::string::npos || m.find("cannot create") != std::string::npos) << m;
  }
  EXPECT_FALSE(std::filesystem::exists(parent + "/attrace-out"));
}

}  // namespace
