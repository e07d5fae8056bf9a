#include <attrace/connectors/fs.hpp>
#include <attrace/error.hpp>

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

namespace fs = std::filesystem;

namespace attrace::connectors {

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ATTRACE_CHECK(fd >= 0, RuntimeFailure, path + ": cannot open to sync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  ATTRACE_CHECK(rc == 0, RuntimeFailure, path + ": fsync failed: " + std::strerror(errno));
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    ATTRACE_CHECK(out.good(), RuntimeFailure, path + ": cannot write (" + std::strerror(errno) + ")");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out.good()) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw RuntimeFailure(path + ": write failed");
    }
  }
  fsync_path(tmp);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw RuntimeFailure(path + ": cannot move into place: " + ec.message());
  }
}

StagedDir::StagedDir(std::string target, bool replace) : target_(std::move(target)) {
  ATTRACE_CHECK(!target_.empty(), InputError, "output directory: empty path");
  while (target_.size() > 1 && target_.back() == '/') target_.pop_back();
  fs::path t(target_);
  fs::path parent = t.parent_path();
  if (parent.empty()) parent = ".";
  std::error_code ec;
  ATTRACE_CHECK(fs::is_directory(parent, ec), InputError,
                "output directory '" + target_ + "': parent '" + parent.string() + "' does not exist");
  ATTRACE_CHECK(::access(parent.c_str(), W_OK | X_OK) == 0, InputError,
                "output directory '" + target_ + "': parent '" + parent.string() +
                    "' is not writable");
  if (fs::exists(t, ec)) {
    ATTRACE_CHECK(replace, InputError,
                  "output directory '" + target_ + "' already exists (use --force to replace it)");
    ATTRACE_CHECK(fs::is_directory(t, ec), InputError,
                  "output path '" + target_ + "' exists and is not a directory");
  }
  staging_ = (parent / ("." + t.filename().string() + ".partial-" + std::to_string(::getpid()))).string();
  fs::remove_all(staging_, ec);
  fs::create_directory(staging_, ec);
  ATTRACE_CHECK(!ec, InputError,
                "output directory '" + target_ + "': cannot create staging directory '" + staging_ +
                    "': " + ec.message());
}

StagedDir::~StagedDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
}

std::string StagedDir::file(const std::string& name) const { return (fs::path(staging_) / name).string(); }

void StagedDir::commit() {
  ATTRACE_CHECK(!committed_, RuntimeFailure, "StagedDir::commit called twice");
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(staging_)) fsync_path(entry.path().string());
  fsync_path(staging_);
  if (fs::exists(target_, ec)) {
    // Swap old and new in one step: at every instant the target name holds a complete directory.
    ATTRACE_CHECK(::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0,
                  RuntimeFailure, target_ + ": cannot swap in the new output: " + std::strerror(errno));
    committed_ = true;
    fs::remove_all(staging_, ec);  // now holds the previous output
    return;
  }
  fs::rename(staging_, target_, ec);
  ATTRACE_CHECK(!ec, RuntimeFailure, target_ + ": cannot move output into place: " + ec.message());
  committed_ = true;
}

}  // namespace attrace::connectors
