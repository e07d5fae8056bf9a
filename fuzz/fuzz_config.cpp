// Fuzzes the config reader: a TOML file plus --set overrides (the input split at NUL bytes: the
// file, then one override per part). Any exception but attrace's own errors is a finding, and a
// config that loads must survive the manifest round trip (to_json -> config_from_json) unchanged.
#include "fuzz_util.hpp"

#include <attrace/engine/config.hpp>
#include <attrace/error.hpp>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = attrace::fuzz::split_parts(data, size, 5);
  const std::string path = attrace::fuzz::scratch_file("config.toml", parts[0]);
  const std::vector<std::string> overrides(parts.begin() + 1, parts.end());
  attrace::engine::Config c;
  try {
    c = attrace::engine::load_config(path, overrides);
  } catch (const attrace::Error&) {
    return 0;  // refused with a message: the expected outcome for bad input
  }
  const nlohmann::json j = attrace::engine::to_json(c);
  attrace::engine::Config back;
  try {
    back = attrace::engine::config_from_json(j, "manifest");
  } catch (const attrace::Error& e) {
    std::fprintf(stderr, "a loaded config does not rebuild from its manifest settings: %s\n", e.what());
    std::abort();
  }
  if (attrace::engine::to_json(back) != j) {
    std::fprintf(stderr, "manifest round trip changed the settings:\n%s\n%s\n", j.dump().c_str(),
                 attrace::engine::to_json(back).dump().c_str());
    std::abort();
  }
  return 0;
}
