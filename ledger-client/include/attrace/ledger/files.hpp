#pragma once
// The files a ledger command reads (reports, manifests, dispute reasons): only regular files, so a
// directory reads as an error instead of as empty input and a FIFO cannot block a command forever.
#include <cstdint>
#include <string>

namespace attrace::ledger {

/// Size of `path`, which must be a regular file; InputError naming `what` and the path if it is
/// missing, inaccessible, a directory or another non-regular file.
uint64_t regular_file_size(const std::string& path, const std::string& what);

/// The whole content of a regular, non-empty file; InputError naming `what` and the path otherwise
/// (missing, a directory, a FIFO or device, unreadable, empty).
std::string read_input_file(const std::string& path, const std::string& what);

}  // namespace attrace::ledger
