#include "h5.hpp"

#include <attrace/connectors/fs.hpp>

#include <attrace/interrupt.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

// Present only in sanitizer builds (fuzz/): the hook a fuzzer uses to save a crashing input.
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace attrace::h5 {

void quiet_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

Handle open_file_ro(const std::string& path) {
  quiet_errors();
  connectors::require_regular_file(path);  // H5Fis_hdf5 on a FIFO would block
  {
    std::ifstream probe(path, std::ios::binary);
    ATTRACE_CHECK(probe.good(), InputError, path + ": cannot open file (missing or unreadable)");
  }
  ATTRACE_CHECK(H5Fis_hdf5(path.c_str()) > 0, InputError, path + ": not an HDF5 file");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ATTRACE_CHECK(f >= 0, InputError, path + ": HDF5 file cannot be opened");
  return Handle(f, H5Fclose);
}

namespace {

// Exit codes of the structure-check child: anything else (or a signal) is a fault.
constexpr int kWalkClean = 0;
constexpr int kWalkErrors = 20;  // libhdf5 returned errors but did not fault: the reader names them

struct WalkState {
  bool errors = false;
};

// Reads `size` bytes of a fixed-size type, or the variable-length data of one, and frees what
// libhdf5 allocated for it. Errors are recorded, not thrown: the walk is to fault or finish.
herr_t walk_attribute(hid_t loc, const char* name, const H5A_info_t*, void* op) {
  auto& st = *static_cast<WalkState*>(op);
  Handle a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  if (!a.valid()) return st.errors = true, 0;
  Handle t(H5Aget_type(a.get()), H5Tclose);
  Handle s(H5Aget_space(a.get()), H5Sclose);
  if (!t.valid() || !s.valid()) return st.errors = true, 0;
  const hssize_t n = H5Sget_simple_extent_npoints(s.get());
  const size_t width = H5Tget_size(t.get());
  if (n < 0 || width == 0) return st.errors = true, 0;
  if (static_cast<double>(n) * static_cast<double>(width) > (1 << 30)) return st.errors = true, 0;
  Handle mt(H5Tget_native_type(t.get(), H5T_DIR_DEFAULT), H5Tclose);
  if (!mt.valid()) return st.errors = true, 0;
  std::vector<unsigned char> mbuf(static_cast<size_t>(n) * std::max<size_t>(H5Tget_size(mt.get()), 1) + 1);
  if (H5Aread(a.get(), mt.get(), mbuf.data()) < 0) st.errors = true;
  else if (H5Tdetect_class(mt.get(), H5T_VLEN) > 0 || H5Tis_variable_str(mt.get()) > 0)
    H5Dvlen_reclaim(mt.get(), s.get(), H5P_DEFAULT, mbuf.data());
  return 0;
}

void walk_dataset(hid_t d, WalkState& st) {
  Handle t(H5Dget_type(d), H5Tclose);
  Handle s(H5Dget_space(d), H5Sclose);
  Handle dcpl(H5Dget_create_plist(d), H5Pclose);
  if (!t.valid() || !s.valid() || !dcpl.valid()) return void(st.errors = true);
  const hssize_t n = H5Sget_simple_extent_npoints(s.get());
  if (n < 0) return void(st.errors = true);
  if (H5Pget_layout(dcpl.get()) == H5D_CHUNKED) {
    hsize_t chunks = 0;  // walks the whole chunk index (B-tree) without reading any chunk
    if (H5Dget_num_chunks(d, H5S_ALL, &chunks) < 0) st.errors = true;
  }
  const bool variable = H5Tdetect_class(t.get(), H5T_VLEN) > 0 || H5Tis_variable_str(t.get()) > 0;
  if (!variable || n == 0) return;  // fixed-size values are plain bytes to libhdf5
  // Variable-length values live in the global heap, where libhdf5 1.10 faults on damage: read
  // them all, a block of rows at a time (bounded memory), the way the readers do.
  Handle mt(H5Tget_native_type(t.get(), H5T_DIR_DEFAULT), H5Tclose);
  const int rank = H5Sget_simple_extent_ndims(s.get());
  if (!mt.valid() || rank < 0) return void(st.errors = true);
  const size_t mwidth = std::max<size_t>(H5Tget_size(mt.get()), 1);
  if (rank == 0) {  // one scalar value
    std::vector<unsigned char> buf(mwidth, 0);
    const herr_t read = H5Dread(d, mt.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
    H5Dvlen_reclaim(mt.get(), s.get(), H5P_DEFAULT, buf.data());
    if (read < 0) st.errors = true;
    return;
  }
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(s.get(), dims.data(), nullptr);
  hsize_t row_elems = 1;
  for (int i = 1; i < rank; ++i) row_elems *= dims[static_cast<size_t>(i)];
  const hsize_t block = std::max<hsize_t>(1, (hsize_t{1} << 24) / std::max<hsize_t>(row_elems * mwidth, 1));
  for (hsize_t r0 = 0; r0 < dims[0]; r0 += block) {
    std::vector<hsize_t> start(static_cast<size_t>(rank), 0), count = dims;
    start[0] = r0;
    count[0] = std::min(block, dims[0] - r0);
    Handle fs(H5Scopy(s.get()), H5Sclose);
    H5Sselect_hyperslab(fs.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    Handle ms(H5Screate_simple(rank, count.data(), nullptr), H5Sclose);
    hsize_t elems = 1;
    for (hsize_t c : count) elems *= c;
    std::vector<unsigned char> buf(static_cast<size_t>(elems) * mwidth, 0);
    const herr_t read = H5Dread(d, mt.get(), ms.get(), fs.get(), H5P_DEFAULT, buf.data());
    H5Dvlen_reclaim(mt.get(), ms.get(), H5P_DEFAULT, buf.data());
    if (read < 0) return void(st.errors = true);
  }
}

herr_t walk_object(hid_t root, const char* name, const H5O_info_t* info, void* op) {
  auto& st = *static_cast<WalkState*>(op);
  Handle o(H5Oopen(root, name, H5P_DEFAULT), H5Oclose);
  if (!o.valid()) return st.errors = true, 0;
  hsize_t at = 0;
  if (H5Aiterate2(o.get(), H5_INDEX_NAME, H5_ITER_NATIVE, &at, walk_attribute, &st) < 0) st.errors = true;
  if (info->type == H5O_TYPE_DATASET) walk_dataset(o.get(), st);
  return 0;
}

// Runs in the child: never returns. Faults end it by a signal; everything else is an exit code.
[[noreturn]] void rehearse_and_exit(const std::string& path, const std::function<void()>& rehearse) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  WalkState st;
  // The rehearsal first, on a fresh open as in the parent: what libhdf5 has cached from earlier
  // reads of the file changes whether a damaged structure faults.
  if (rehearse) {
    try {
      rehearse();
    } catch (...) {
      st.errors = true;
    }
  }
  {
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_file_locking(fapl.get(), 0, 1);  // the parent may hold the store's lock
    Handle f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
    if (!f.valid()) st.errors = true;
    else if (H5Ovisit2(f.get(), H5_INDEX_NAME, H5_ITER_NATIVE, walk_object, &st, H5O_INFO_BASIC) < 0) st.errors = true;
  }
  ::_exit(st.errors ? kWalkErrors : kWalkClean);
}

// A child must not take the machine down if damage makes libhdf5 allocate wildly: its address
// space may grow by at most half the physical memory (8 GiB at most) beyond the parent's.
void limit_child_memory() {
  long pages = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  const double phys = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * page;
  const double extra = std::min(phys / 2, 8.0 * 1073741824.0);
  rlimit lim{};
  lim.rlim_cur = lim.rlim_max = static_cast<rlim_t>(static_cast<double>(pages) * page + extra);
  ::setrlimit(RLIMIT_AS, &lim);
}

// The rehearsal reads what the reader reads (a dataset whole), so an intact large file on a slow
// disk needs time in proportion: 120 s plus one second per 50 MiB of file by default.
double check_timeout_s(const std::string& path) {
  const char* v = std::getenv("ATTRACE_HDF5_CHECK_TIMEOUT");
  if (v == nullptr || *v == '\0') {
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(path, ec);
    return 120.0 + (ec ? 0.0 : static_cast<double>(bytes) / (50.0 * 1048576.0));
  }
  char* end = nullptr;
  const double t = std::strtod(v, &end);
  ATTRACE_CHECK(end != v && *end == '\0' && t > 0 && t <= 1e6, InputError,
                std::string("ATTRACE_HDF5_CHECK_TIMEOUT must be a number of seconds in (0, 1e6], got '") + v + "'");
  return t;
}

}  // namespace

void check_in_child(const std::string& path, const std::string& what, const std::function<void()>& rehearse) {
  quiet_errors();
  connectors::require_regular_file(path);  // opening a FIFO would block the child
  const double timeout = check_timeout_s(path);
  std::fflush(nullptr);  // nothing buffered is written twice
  const pid_t pid = ::fork();
  ATTRACE_CHECK(pid >= 0, RuntimeFailure, path + ": cannot fork to check the file (" + std::strerror(errno) + ")");
  if (pid == 0) {
    // The child reads and exits; stop signals end it at once, and it writes nothing anywhere. A
    // fault must end it by its signal (no inherited handler may catch it, report or write files:
    // sanitizer and fuzzer builds install both), which is what the parent reads.
    for (const int sig : {SIGINT, SIGTERM, SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL}) ::signal(sig, SIG_DFL);
    if (__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(nullptr);
    limit_child_memory();
    rehearse_and_exit(path, rehearse);
  }
  const auto start = std::chrono::steady_clock::now();
  int status = 0;
  // A pidfd wakes the wait the moment the child exits (Linux >= 5.3); polling with a growing
  // sleep is the fallback. Either way a stop signal or the time limit is seen within 0.1 s.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  struct CloseFd {
    int fd;
    ~CloseFd() {
      if (fd >= 0) ::close(fd);
    }
  } close_pidfd{pidfd};
  auto sleep_for = std::chrono::microseconds(200);
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) throw RuntimeFailure(path + ": lost the file-check process (" + std::strerror(errno) + ")");
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const bool stop = detail::pending_signal() != 0;
    if (stop || waited > timeout) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      throw_if_interrupted();
      char buf[64];
      std::snprintf(buf, sizeof buf, "%g", timeout);
      throw InputError(path + ": damaged " + what + ": libhdf5 did not finish reading its structure within " + buf +
                       " s (it loops on some damaged files); not reading it. If the file is intact but very large, "
                       "raise ATTRACE_HDF5_CHECK_TIMEOUT");
    }
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      ::poll(&p, 1, 100);
    } else {
      std::this_thread::sleep_for(sleep_for);
      sleep_for = std::min(sleep_for * 2, std::chrono::microseconds(20000));
    }
  }
  if (WIFEXITED(status) && (WEXITSTATUS(status) == kWalkClean || WEXITSTATUS(status) == kWalkErrors)) return;
  std::string how;
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    how = std::string("crashed (signal ") + std::to_string(sig) + ", " + (sigabbrev_np(sig) ? "SIG" + std::string(sigabbrev_np(sig)) : "?") + ")";
  } else {
    how = "failed (exit code " + std::to_string(WEXITSTATUS(status)) + ")";
  }
  throw InputError(path + ": damaged " + what + ": libhdf5 " + how +
                   " while reading its structure in a separate check process; not reading it");
}

Handle create_file(const std::string& path) {
  quiet_errors();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ATTRACE_CHECK(f >= 0, RuntimeFailure, path + ": cannot create HDF5 file");
  return Handle(f, H5Fclose);
}

bool exists(hid_t loc, const std::string& name) {
  // Walk each path component: H5Lexists fails on a missing intermediate group.
  std::string prefix;
  size_t start = 0;
  while (start <= name.size()) {
    const size_t slash = name.find('/', start);
    prefix = name.substr(0, slash);
    if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

namespace {
// Refuses to allocate `count` elements of `bytes` each when that exceeds physical memory: a file
// may declare any shape (its chunks need not exist), and std::bad_alloc names nothing.
void check_allocation(hssize_t count, size_t bytes, const std::string& what, const std::string& name) {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  const double memory = pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0;
  const double need = static_cast<double>(count) * static_cast<double>(bytes);
  if (memory <= 0 || need <= memory) return;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lld elements (%.3g GiB), more than this machine's memory (%.3g GiB)",
                static_cast<long long>(count), need / 1073741824.0, memory / 1073741824.0);
  throw InputError(what + ": '/" + name + "' declares " + buf);
}

Handle open_dataset(hid_t file, const std::string& name, const std::string& what) {
  ATTRACE_CHECK(exists(file, name), InputError, what + ": missing dataset '/" + name + "'");
  hid_t d = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  ATTRACE_CHECK(d >= 0, InputError, what + ": '/" + name + "' is not a dataset");
  return Handle(d, H5Dclose);
}
}  // namespace

std::vector<int64_t> shape_of(hid_t file, const std::string& name, const std::string& what) {
  Handle d = open_dataset(file, name, what);
  Handle s(H5Dget_space(d.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(s.get());
  ATTRACE_CHECK(rank >= 0, InputError, what + ": cannot read the shape of '/" + name + "'");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(s.get(), dims.data(), nullptr);
  return {dims.begin(), dims.end()};
}

H5T_class_t type_class_of(hid_t file, const std::string& name, const std::string& what) {
  Handle d = open_dataset(file, name, what);
  Handle t(H5Dget_type(d.get()), H5Tclose);
  return H5Tget_class(t.get());
}

template <class T>
std::vector<T> read_numeric(hid_t file, const std::string& name, hid_t mem_type,
                            const std::string& what) {
  Handle d = open_dataset(file, name, what);
  Handle s(H5Dget_space(d.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(s.get());
  ATTRACE_CHECK(n >= 0, InputError, what + ": cannot size '/" + name + "'");
  Handle t(H5Dget_type(d.get()), H5Tclose);
  const H5T_class_t cls = H5Tget_class(t.get());
  ATTRACE_CHECK(cls == H5T_INTEGER || cls == H5T_FLOAT, InputError,
                what + ": '/" + name + "' must hold numbers");
  check_allocation(n, sizeof(T), what, name);
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0)
    ATTRACE_H5_CHECK(H5Dread(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
                     InputError, what + ": cannot read '/" + name + "' as numbers");
  return out;
}
template std::vector<float> read_numeric<float>(hid_t, const std::string&, hid_t, const std::string&);
template std::vector<double> read_numeric<double>(hid_t, const std::string&, hid_t, const std::string&);
template std::vector<int64_t> read_numeric<int64_t>(hid_t, const std::string&, hid_t, const std::string&);

std::vector<std::string> read_strings(hid_t file, const std::string& name, const std::string& what) {
  Handle d = open_dataset(file, name, what);
  Handle ft(H5Dget_type(d.get()), H5Tclose);
  ATTRACE_CHECK(H5Tget_class(ft.get()) == H5T_STRING, InputError,
                what + ": '/" + name + "' must hold strings");
  Handle s(H5Dget_space(d.get()), H5Sclose);
  ATTRACE_CHECK(H5Sget_simple_extent_ndims(s.get()) == 1, InputError,
                what + ": '/" + name + "' must be one-dimensional");
  const hssize_t n = H5Sget_simple_extent_npoints(s.get());
  ATTRACE_CHECK(n >= 0, InputError, what + ": cannot size '/" + name + "'");
  check_allocation(n, sizeof(std::string) + H5Tget_size(ft.get()), what, name);
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(n));
  Handle mt(H5Tcopy(ft.get()), H5Tclose);  // same cset and padding as stored: no conversion
  if (H5Tis_variable_str(ft.get()) > 0) {
    std::vector<char*> buf(static_cast<size_t>(n), nullptr);
    if (n > 0) {
      const herr_t read = H5Dread(d.get(), mt.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
      if (read >= 0)
        for (char* c : buf) out.emplace_back(c ? c : "");
      // Also after a failed read: any string already converted into `buf` was allocated.
      H5Dvlen_reclaim(mt.get(), s.get(), H5P_DEFAULT, buf.data());
      ATTRACE_H5_CHECK(read, InputError, what + ": cannot read strings of '/" + name + "'");
    }
  } else {
    const size_t width = H5Tget_size(ft.get());
    std::vector<char> buf(static_cast<size_t>(n) * width + 1, '\0');
    if (n > 0)
      ATTRACE_H5_CHECK(H5Dread(d.get(), mt.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()),
                       InputError, what + ": cannot read strings of '/" + name + "'");
    for (hssize_t i = 0; i < n; ++i) {
      const char* p = buf.data() + static_cast<size_t>(i) * width;
      size_t len = 0;
      while (len < width && p[len] != '\0') ++len;
      while (len > 0 && p[len - 1] == ' ') --len;  // space-padded strings
      out.emplace_back(p, len);
    }
  }
  return out;
}

namespace {
Handle plist_no_times() {
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl.get(), 0);  // no timestamps: same content -> same bytes
  return dcpl;
}
}  // namespace

void write_numeric(hid_t loc, const std::string& name, hid_t file_type, hid_t mem_type,
                   const std::vector<int64_t>& dims, const void* data) {
  std::vector<hsize_t> hd(dims.begin(), dims.end());
  Handle space(H5Screate_simple(static_cast<int>(hd.size()), hd.data(), nullptr), H5Sclose);
  Handle dcpl = plist_no_times();
  Handle d(H5Dcreate2(loc, name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(),
                      H5P_DEFAULT),
           H5Dclose);
  ATTRACE_CHECK(d.valid(), RuntimeFailure, "cannot create HDF5 dataset '" + name + "'");
  hsize_t total = 1;
  for (hsize_t v : hd) total *= v;
  if (total > 0)
    ATTRACE_H5_CHECK(H5Dwrite(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
                     RuntimeFailure, "cannot write HDF5 dataset '" + name + "'");
}

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values) {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.get(), H5T_VARIABLE);
  H5Tset_cset(t.get(), H5T_CSET_UTF8);
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const auto& v : values) ptrs.push_back(v.c_str());
  hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle dcpl = plist_no_times();
  Handle d(H5Dcreate2(loc, name.c_str(), t.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
           H5Dclose);
  ATTRACE_CHECK(d.valid(), RuntimeFailure, "cannot create HDF5 dataset '" + name + "'");
  if (n > 0)
    ATTRACE_H5_CHECK(H5Dwrite(d.get(), t.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()),
                     RuntimeFailure, "cannot write HDF5 dataset '" + name + "'");
}

Handle create_group(hid_t loc, const std::string& name) {
  Handle gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
  H5Pset_obj_track_times(gcpl.get(), 0);
  Handle g(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), H5Gclose);
  ATTRACE_CHECK(g.valid(), RuntimeFailure, "cannot create HDF5 group '" + name + "'");
  return g;
}

void write_string_attr(hid_t loc, const std::string& name, const std::string& value) {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.get(), value.size() + 1);
  H5Tset_cset(t.get(), H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(loc, name.c_str(), t.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  ATTRACE_CHECK(a.valid(), RuntimeFailure, "cannot create HDF5 attribute '" + name + "'");
  ATTRACE_H5_CHECK(H5Awrite(a.get(), t.get(), value.c_str()), RuntimeFailure,
                   "cannot write HDF5 attribute '" + name + "'");
}

}  // namespace attrace::h5
