#pragma once
// Thin RAII layer over the HDF5 C API, shared by every HDF5 reader/writer of attrace.
#include <attrace/error.hpp>

#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace attrace::h5 {

/// Throws RuntimeFailure/InputError when an HDF5 call returns a negative status.
#define ATTRACE_H5_CHECK(expr, type, msg)                \
  do {                                                   \
    if ((expr) < 0) throw type(std::string(msg));        \
  } while (0)

/// Move-only owner of an HDF5 identifier, closed with the matching H5?close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  ~Handle() { reset(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

/// Silences HDF5's own error printing; attrace reports errors itself.
void quiet_errors();

/// Opens `path` read-only; InputError naming the file if it is missing or not HDF5. Readers of
/// files from outside call check_in_child first.
Handle open_file_ro(const std::string& path);

/// libhdf5 1.10 crashes (SIGSEGV, heap overflows) or loops forever on some damaged files — in its
/// global heap of variable-length strings and its metadata cache — before attrace's own checks see
/// anything. So a reader of an HDF5 file first rehearses its read in a forked child process: the
/// child walks every object header, attribute, variable-length value and chunk index it can reach
/// (best effort: damage may cut the walk short), then runs `rehearse` — the reader's own reads,
/// which open objects by name and so reach what a cut-short walk missed. A child that dies by a
/// signal or does not finish within ATTRACE_HDF5_CHECK_TIMEOUT seconds (default 120 plus one per
/// 50 MiB of file) makes this an
/// InputError naming `path`, its role `what` ("dataset", "feature store", ...) and what happened.
/// Errors that are not faults (exceptions in the rehearsal, HDF5 error returns) are left to the
/// caller, whose own read then names them precisely. libhdf5 is deterministic for the same bytes,
/// so a read rehearsed without a fault runs without one.
void check_in_child(const std::string& path, const std::string& what, const std::function<void()>& rehearse);
/// Creates (truncates) `path`; RuntimeFailure naming it on failure.
Handle create_file(const std::string& path);

/// True when `name` (a path such as "tranches/id") exists in `loc`.
bool exists(hid_t loc, const std::string& name);

/// Shape of dataset `name` in `file`.
std::vector<int64_t> shape_of(hid_t file, const std::string& name, const std::string& what);

/// Reads a whole numeric dataset converted to `mem_type` (e.g. H5T_NATIVE_FLOAT).
template <class T>
std::vector<T> read_numeric(hid_t file, const std::string& name, hid_t mem_type,
                            const std::string& what);

/// Class of the stored element type (H5T_INTEGER, H5T_FLOAT, H5T_STRING, ...).
H5T_class_t type_class_of(hid_t file, const std::string& name, const std::string& what);

/// Reads a 1-D string dataset (variable- or fixed-length).
std::vector<std::string> read_strings(hid_t file, const std::string& name, const std::string& what);

/// Writes a numeric dataset of shape `dims` without modification times (byte-stable files).
void write_numeric(hid_t loc, const std::string& name, hid_t file_type, hid_t mem_type,
                   const std::vector<int64_t>& dims, const void* data);
/// Writes a 1-D variable-length UTF-8 string dataset.
void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values);
/// Creates a group.
Handle create_group(hid_t loc, const std::string& name);
/// Writes a string attribute on `loc`.
void write_string_attr(hid_t loc, const std::string& name, const std::string& value);

}  // namespace attrace::h5
