#pragma once
// Crash-safe file output: files are written under a temporary name and renamed into place, and
// output directories are staged in a hidden sibling directory that is renamed only when complete.
#include <string>
#include <string_view>

namespace attrace::connectors {

/// Writes `bytes` to `path` via "<path>.tmp-<pid>" + fsync + rename.
void write_file_atomic(const std::string& path, std::string_view bytes);

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
  StagedDir(std::string target, bool replace);
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
  bool committed_ = false;
};

}  // namespace attrace::connectors
