#include <attrace/connectors/toml_util.hpp>
#include <attrace/error.hpp>

#include <fstream>
#include <sstream>

namespace attrace::connectors {

toml::table parse_toml_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ATTRACE_CHECK(in.good(), InputError, path + ": cannot open file (missing or unreadable)");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return toml::parse(ss.str(), path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw InputError(path + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) +
                     ": malformed TOML: " + std::string(e.description()));
  }
}

}  // namespace attrace::connectors
