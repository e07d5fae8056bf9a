#include <attrace/error.hpp>
#include <attrace/ledger/files.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace attrace::ledger {
namespace {

std::string kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
  return "not a regular file";
}

void require_regular(const struct stat& st, const std::string& path, const std::string& what) {
  ATTRACE_CHECK(S_ISREG(st.st_mode), InputError, what + " '" + path + "' is " + kind_of(st.st_mode) + ", not a regular file");
}

/// Closes a descriptor on every path out of read_input_file.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

uint64_t regular_file_size(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw InputError(what + " '" + path + (errno == ENOENT ? std::string("' does not exist") : "': " + std::string(std::strerror(errno))));
  require_regular(st, path, what);
  return static_cast<uint64_t>(st.st_size);
}

std::string read_input_file(const std::string& path, const std::string& what) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the open descriptor then
  // decides, so the file cannot be swapped between the check and the read.
  Fd f{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  if (f.fd < 0)
    throw InputError(what + " '" + path + (errno == ENOENT ? std::string("' does not exist") : "': " + std::string(std::strerror(errno))));
  struct stat st {};
  ATTRACE_CHECK(::fstat(f.fd, &st) == 0, InputError, what + " '" + path + "': " + std::strerror(errno));
  require_regular(st, path, what);
  std::string bytes;
  bytes.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    ATTRACE_CHECK(n >= 0, InputError, what + " '" + path + "': read failed (" + std::strerror(errno) + ")");
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  ATTRACE_CHECK(!bytes.empty(), InputError, what + " '" + path + "' is empty");
  return bytes;
}

}  // namespace attrace::ledger
