#include <attrace/connectors/fs.hpp>
#include <attrace/error.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
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

void require_regular_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw InputError(path + ": cannot open file (missing or unreadable)");
  if (S_ISREG(st.st_mode)) return;
  const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                     : S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                     : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                                                                   : "a special file";
  throw InputError(path + ": is " + std::string(kind) + ", not a regular file");
}

void rename_no_replace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
  const int err = errno;
  ATTRACE_CHECK(err != EEXIST, InputError, to + ": already exists; not replacing it");
  throw RuntimeFailure(to + ": cannot move into place: " + std::strerror(err));
}

namespace {

// True when `inner` is `dir` itself or lies below it (paths resolved through symlinks).
bool inside(const fs::path& inner, const fs::path& dir) {
  std::error_code ec;
  const fs::path a = fs::weakly_canonical(inner, ec);
  if (ec) return false;
  const fs::path b = fs::weakly_canonical(dir, ec);
  if (ec) return false;
  auto ai = a.begin();
  for (auto bi = b.begin(); bi != b.end(); ++bi, ++ai)
    if (ai == a.end() || *ai != *bi) return false;
  return true;
}

// An output directory of attrace: the marker, or the manifest of a version that wrote none.
bool written_by_attrace(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir / kOutputMarker, ec)) return true;
  std::ifstream in(dir / "manifest.json", std::ios::binary);
  std::string head(4096, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  return head.find("\"format\":\"attrace.manifest/1\"") != std::string::npos;
}

// Removes ".NAME.partial-PID" directories next to `t` whose process no longer exists.
void remove_stale_staging(const fs::path& parent, const fs::path& t) {
  const std::string prefix = "." + t.filename().string() + ".partial-";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    char* end = nullptr;
    const long pid = std::strtol(pid_text.c_str(), &end, 10);
    if (pid_text.empty() || *end != '\0' || pid <= 0 || pid == ::getpid()) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
    std::error_code rm;
    fs::remove_all(e.path(), rm);
  }
}

}  // namespace

void StagedDir::protect(const std::vector<std::string>& inputs) const {
  if (!replacing_) return;
  for (const auto& in : inputs)
    ATTRACE_CHECK(in.empty() || !inside(in, target_), InputError,
                  "output directory '" + target_ + "' holds an input of this run ('" + in +
                      "'); refusing to replace it (choose another output directory)");
}

StagedDir::StagedDir(std::string target, bool replace, const std::vector<std::string>& inputs)
    : target_(std::move(target)) {
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
    ATTRACE_CHECK(written_by_attrace(t), InputError,
                  "output directory '" + target_ + "' was not written by attrace (no " + kOutputMarker +
                      " marker, no attrace manifest); --force replaces only attrace's own output directories");
    replacing_ = true;
    protect(inputs);
  }
  remove_stale_staging(parent, t);
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
  write_file_atomic((fs::path(staging_) / kOutputMarker).string(), "an output directory written by attrace\n");
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
