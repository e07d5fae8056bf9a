#pragma once
// Reading human-written TOML files with errors that name the file, line and column.
#include <toml++/toml.h>

#include <string>

namespace attrace::connectors {

/// Parses a TOML file; InputError "FILE:LINE:COL: description" on a syntax error, or naming the
/// file when it cannot be read.
toml::table parse_toml_file(const std::string& path);

/// A number as a person reads it in an error message: the shortest text that reads back as the
/// same double (1e308 -> "1e+308", never 309 digits), "nan" / "inf" / "-inf" otherwise.
std::string readable_number(double v);

}  // namespace attrace::connectors
