#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/toml_util.hpp>
#include <attrace/error.hpp>

#include <charconv>
#include <cmath>

#include <fstream>
#include <sstream>

namespace attrace::connectors {

toml::table parse_toml_file(const std::string& path) {
  require_regular_file(path);
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

std::string readable_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  // Shortest text that reads back as the same double: 1e308 stays "1e+308", 0.1 stays "0.1".
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

}  // namespace attrace::connectors
