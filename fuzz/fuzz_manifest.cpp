// Fuzzes the readers of manifests: the input split at NUL bytes is (1) a JSON document, (2) a
// report.json, (3) a reward pool in decimal. The document goes to
//   - load_epoch_manifest (an epoch manifest as `ledger proof/claim --manifest` reads it),
//   - build_epoch as the run's manifest.json beside the report.json (`ledger commit`); the text
//     "@report_sha256" in it is replaced by the report's real sha256 first, so inputs can get past
//     the pinned-output check to the report and reward code,
//   - config_from_json with its "settings" (the run manifest's record of the config).
// Any exception but attrace's own errors is a finding, and what is accepted must keep the promises
// checked below (proofs verify, rewards add up to the pool, a built epoch reloads to itself).
#include "fuzz_util.hpp"

#include <attrace/connectors/hash.hpp>
#include <attrace/engine/config.hpp>
#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/epoch.hpp>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace {

namespace al = attrace::ledger;

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "%s\n", why.c_str());
  std::abort();
}

// Every leaf's proof folds to the root, and the manifest hash is the hash of the manifest bytes.
void check_commitment(const al::EpochCommitment& c, const char* where) {
  if (c.leaves.empty()) fail(std::string(where) + ": accepted an epoch without leaves");
  for (size_t i = 0; i < c.leaves.size(); ++i)
    if (!al::verify_proof(c.proof(i), c.root, c.leaves[i].hash)) fail(std::string(where) + ": a leaf's proof does not verify");
  if (al::keccak256(c.manifest) != c.manifest_hash) fail(std::string(where) + ": manifest hash is not keccak256(manifest)");
}

void epoch_manifest(const std::string& bytes) {
  al::EpochCommitment c;
  try {
    c = al::load_epoch_manifest(bytes, "epoch.json");
  } catch (const attrace::Error&) {
    return;
  }
  if (c.manifest != bytes) fail("load_epoch_manifest accepted bytes that are not its canonical manifest");
  check_commitment(c, "load_epoch_manifest");
}

void run_manifest(std::string manifest, const std::string& report, const std::string& pool_text) {
  static const std::string dir = [] {
    const std::string d = attrace::fuzz::scratch_dir() + "/report";
    std::filesystem::create_directories(d);
    return d;
  }();
  const std::string marker = "@report_sha256", hash = attrace::connectors::sha256_hex(report);
  for (size_t at = manifest.find(marker); at != std::string::npos; at = manifest.find(marker, at + hash.size()))
    manifest.replace(at, marker.size(), hash);
  attrace::fuzz::scratch_file("report/manifest.json", manifest);
  attrace::fuzz::scratch_file("report/report.json", report);
  al::U256 pool = 0;
  try {
    pool = al::u256_from_decimal(pool_text, "pool");
  } catch (const attrace::Error&) {
    pool = al::U256("1000000000000000000000");  // no pool in the input: a realistic one
  }
  al::EpochCommitment c;
  try {
    c = al::build_epoch(dir, 3, pool);
  } catch (const attrace::Error&) {
    return;
  }
  check_commitment(c, "build_epoch");
  al::U256 paid = 0;
  for (const auto& l : c.leaves) paid += l.leaf.amount;
  if (paid != pool) fail("build_epoch: the leaves' amounts do not add up to the pool");
  al::EpochCommitment back;
  try {
    back = al::load_epoch_manifest(c.manifest, "built epoch");
  } catch (const attrace::Error& e) {
    fail(std::string("an epoch manifest written by build_epoch does not load: ") + e.what());
  }
  if (back.root != c.root || back.manifest != c.manifest || back.leaves.size() != c.leaves.size())
    fail("an epoch manifest written by build_epoch reloads to another commitment");
}

void settings(const std::string& bytes) {
  // Parsed with the ledger readers' depth limit: config_from_json recurses once per level of
  // nested objects (docs/fuzzing.md, "Open"), and no caller hands it a file's JSON unchecked.
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes, [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
      if (depth > 256) throw std::length_error("nested too deep");
      return true;
    });
  } catch (const std::exception&) {
    return;
  }
  if (!j.is_object()) return;
  const nlohmann::json& s = j.contains("settings") ? j["settings"] : j;
  attrace::engine::Config c;
  try {
    c = attrace::engine::config_from_json(s, "manifest.json: settings");
  } catch (const attrace::Error&) {
    return;
  }
  const nlohmann::json once = attrace::engine::to_json(c);
  try {
    if (attrace::engine::to_json(attrace::engine::config_from_json(once, "rebuilt settings")) != once)
      fail("settings rebuilt from a manifest do not round-trip");
  } catch (const attrace::Error& e) {
    fail(std::string("settings accepted from a manifest do not rebuild: ") + e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = attrace::fuzz::split_parts(data, size, 3);
  epoch_manifest(parts[0]);
  run_manifest(parts[0], parts.size() > 1 ? parts[1] : std::string(), parts.size() > 2 ? parts[2] : std::string());
  settings(parts[0]);
  return 0;
}
