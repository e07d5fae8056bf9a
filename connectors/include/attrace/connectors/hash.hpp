#pragma once
// File and byte hashing used to pin inputs in manifests.
#include <string>
#include <string_view>

namespace attrace::connectors {

/// SHA-256 of a file's bytes as lowercase hex. Throws InputError if it cannot be read.
std::string sha256_file(const std::string& path);
/// SHA-256 of bytes as lowercase hex.
std::string sha256_hex(std::string_view bytes);

}  // namespace attrace::connectors
