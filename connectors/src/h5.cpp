#include "h5.hpp"

#include <attrace/connectors/fs.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>

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
