#pragma once
// Crash-safe file output: files are written under a temporary name and renamed into place, and
// output directories are staged in a hidden sibling directory that is renamed only when complete.
#include <string>
#include <string_view>
#include <vector>

namespace attrace::connectors {

/// Name of the marker file attrace writes into every output directory it creates.
constexpr const char* kOutputMarker = ".attrace-output";

/// Writes `bytes` to `path` via "<path>.tmp-<pid>" + fsync + rename.
void write_file_atomic(const std::string& path, std::string_view bytes);

/// Refuses (InputError naming `path`) anything but an existing regular file (after symlinks):
/// opening a FIFO for reading would block forever, a directory or device is never an input.
void require_regular_file(const std::string& path);

/// Moves `from` to `to` only if `to` does not exist (one atomic step, RENAME_NOREPLACE);
/// InputError naming `to` when it exists, RuntimeFailure on other errors.
void rename_no_replace(const std::string& from, const std::string& to);

/// Flushes a file's data to disk (RuntimeFailure on error).
void fsync_path(const std::string& path);

/// An output directory that appears under its final name only once complete. Files go into a
/// hidden staging directory next to the target; commit() renames it into place; destroying an
/// uncommitted StagedDir removes the staging directory. A crash leaves only the hidden
/// ".NAME.partial-PID" directory, never a directory that looks complete.
class StagedDir {
 public:
  /// Checks that `target` can be created (parent exists and is writable; target absent unless
  /// `replace`) and creates the staging directory. InputError naming the path otherwise.
  /// `replace` only replaces a directory attrace wrote (it carries the marker file
  /// kOutputMarker, or a manifest of an earlier attrace) that holds none of `inputs` (the
  /// run's input files). Staging directories left by dead processes are removed.
  StagedDir(std::string target, bool replace, const std::vector<std::string>& inputs = {});
  /// Refuses (InputError) if any of `inputs` lies inside the target directory while it may be
  /// replaced (for inputs known only after reading others, e.g. a run file's checkpoints).
  void protect(const std::vector<std::string>& inputs) const;
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;
  ~StagedDir();

  /// Path of a file inside the staging directory.
  std::string file(const std::string& name) const;
  /// Moves the staging directory to the target name (replacing an old one if allowed).
  void commit();
  /// The final directory name.
  const std::string& target() const { return target_; }

 private:
  std::string target_;
  std::string staging_;
  bool replacing_ = false;
  bool committed_ = false;
};

}  // namespace attrace::connectors
