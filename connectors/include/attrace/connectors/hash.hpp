#pragma once
// File and byte hashing used to pin inputs in manifests.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace attrace::connectors {

/// SHA-256 of a file's bytes as lowercase hex. Throws InputError if it cannot be read.
std::string sha256_file(const std::string& path);
/// SHA-256 of bytes as lowercase hex.
std::string sha256_hex(std::string_view bytes);

struct Dataset;
/// SHA-256 of each example's content (float inputs: its float32 input bytes, then its target:
/// int64 label or float32 values, little-endian; token examples: a tag, the length, the ids and
/// the target, docs/formats.md#example-digests), 32 bytes per example in dataset order. Equal
/// digests mean identical examples (exact-duplicate detection without the inputs at hand).
std::vector<uint8_t> example_digests(const Dataset& ds);

}  // namespace attrace::connectors
