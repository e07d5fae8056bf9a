#include "h5.hpp"

#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/feature_store.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/float_formats.hpp>
#include <attrace/kernels/rounding.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

namespace attrace::connectors {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "attrace.features/1";

uint32_t bits_of(float x) { return kernels::float_bits(x); }

// bfloat16 and half widening, and bfloat16 rounding, are the kernels' own (one definition,
// shared by CPU and CUDA code): features read from a store equal those the kernels would decode.
uint16_t to_bf16(float x) { return kernels::bf16_bits_rne(x); }
float from_bf16(uint16_t b) { return kernels::to_float(kernels::BFloat16{b}); }

// IEEE binary16, round to nearest even, overflow to infinity, subnormals kept.
uint16_t to_f16(float x) {
  const uint32_t u = bits_of(x);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7FFFFFFFu;
  if (au > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);   // NaN
  if (au >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 (and inf): infinity
  if (au < 0x38800000u) {                                               // below 2^-14: subnormal or zero
    // |x| * 2^24 is exact (a power-of-two scaling of a normal float) and < 1024; nearbyint rounds
    // half to even in the default rounding mode.
    const float scaled = std::fabs(x) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  const uint32_t mant = au & 0x7FFFFFu, exp = (au >> 23) - 127 + 15;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
  return static_cast<uint16_t>(sign | h);
}
float from_f16(uint16_t v) { return kernels::to_float(kernels::Half{v}); }

hid_t file_type_of(FeatureDtype d) {
  switch (d) {
    case FeatureDtype::f64:
      return H5T_IEEE_F64LE;
    case FeatureDtype::bf16:
    case FeatureDtype::f16:
      return H5T_STD_U16LE;
    default:
      return H5T_IEEE_F32LE;
  }
}

// A file access list without HDF5's own file locking: attrace takes its own lock (".NAME.lock"),
// and HDF5's flock on a second descriptor of the same file would conflict with readers.
h5::Handle fapl_unlocked() {
  h5::Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_file_locking(fapl.get(), 0, 1);
  return fapl;
}

std::string ckpt_group(size_t c) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "checkpoint_%06zu", c);
  return buf;
}

void write_double_attr(hid_t loc, const std::string& name, double v) {
  h5::Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  h5::Handle a(H5Acreate2(loc, name.c_str(), H5T_IEEE_F64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  ATTRACE_CHECK(a.valid(), RuntimeFailure, "cannot create HDF5 attribute '" + name + "'");
  ATTRACE_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_DOUBLE, &v), RuntimeFailure, "cannot write HDF5 attribute '" + name + "'");
}

bool read_double_attr(hid_t loc, const std::string& name, double* v) {
  if (H5Aexists(loc, name.c_str()) <= 0) return false;
  h5::Handle a(H5Aopen(loc, name.c_str(), H5P_DEFAULT), H5Aclose);
  return a.valid() && H5Aread(a.get(), H5T_NATIVE_DOUBLE, v) >= 0;
}

bool read_string_attr(hid_t loc, const std::string& name, std::string* out) {
  if (H5Aexists(loc, name.c_str()) <= 0) return false;
  h5::Handle a(H5Aopen(loc, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!a.valid()) return false;
  h5::Handle t(H5Aget_type(a.get()), H5Tclose);
  if (H5Tget_class(t.get()) != H5T_STRING || H5Tis_variable_str(t.get()) > 0) return false;
  std::vector<char> buf(H5Tget_size(t.get()) + 1, '\0');
  if (H5Aread(a.get(), t.get(), buf.data()) < 0) return false;
  *out = buf.data();
  return true;
}

// A dataset that is allocated when created and never written by HDF5 itself (no fill), so the
// file's metadata is final as soon as it exists.
h5::Handle create_allocated(hid_t loc, const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
                            const std::vector<hsize_t>& chunk) {
  h5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl.get(), 0);
  H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY);
  H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
  if (!chunk.empty()) H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
  h5::Handle d(H5Dcreate2(loc, name.c_str(), type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
  ATTRACE_CHECK(d.valid(), RuntimeFailure, "cannot create HDF5 dataset '" + name + "'");
  return d;
}

void flush_and_sync(hid_t file, const std::string& path) {
  ATTRACE_H5_CHECK(H5Fflush(file, H5F_SCOPE_GLOBAL), RuntimeFailure, path + ": HDF5 flush failed");
  int* fd = nullptr;
  ATTRACE_H5_CHECK(H5Fget_vfd_handle(file, H5P_DEFAULT, reinterpret_cast<void**>(&fd)), RuntimeFailure,
                   path + ": no file descriptor for fsync");
  ATTRACE_CHECK(fd && ::fsync(*fd) == 0, RuntimeFailure, path + ": fsync failed: " + std::strerror(errno));
}

// Reads everything but the features; InputError naming `path` if it is not a (valid) store.
StoreLayout read_layout(hid_t f, const std::string& path, std::vector<int64_t>* progress) {
  std::string format;
  ATTRACE_CHECK(read_string_attr(f, "format", &format), InputError,
                path + ": not an attrace feature store (no 'format' attribute; expected " + kFormat + ")");
  ATTRACE_CHECK(format == kFormat, InputError,
                path + ": not an attrace feature store (format '" + format + "', expected " + kFormat + ")");
  StoreLayout l;
  const auto spec = h5::read_strings(f, "spec", path);
  ATTRACE_CHECK(spec.size() == 1, InputError, path + ": /spec must hold one string");
  l.spec = spec[0];
  std::string dtype;
  ATTRACE_CHECK(read_string_attr(f, "dtype", &dtype), InputError, path + ": missing 'dtype' attribute");
  l.dtype = parse_feature_dtype(dtype, path + ": attribute 'dtype'");
  double chunk = 0;
  ATTRACE_CHECK(read_double_attr(f, "chunk_rows", &chunk) && chunk >= 1, InputError, path + ": missing 'chunk_rows'");
  l.chunk_rows = static_cast<int64_t>(chunk);
  l.ids = h5::read_strings(f, "ids", path);
  l.rows = static_cast<int64_t>(l.ids.size());
  if (h5::exists(f, "tranche")) l.tranche = h5::read_numeric<int64_t>(f, "tranche", H5T_NATIVE_INT64, path);
  if (h5::exists(f, "digest")) {
    const auto shape = h5::shape_of(f, "digest", path);
    ATTRACE_CHECK(shape.size() == 2 && shape[0] == l.rows && shape[1] == 32, InputError, path + ": /digest must be [rows, 32]");
    const auto v = h5::read_numeric<int64_t>(f, "digest", H5T_NATIVE_INT64, path);
    l.digests.assign(v.begin(), v.end());
  }
  *progress = h5::read_numeric<int64_t>(f, "progress", H5T_NATIVE_INT64, path);
  for (size_t c = 0; c < progress->size(); ++c) {
    const std::string g = ckpt_group(c);
    ATTRACE_CHECK(h5::exists(f, g), InputError, path + ": missing group /" + g);
    h5::Handle grp(H5Gopen2(f, g.c_str(), H5P_DEFAULT), H5Gclose);
    StoreCheckpoint sc;
    ATTRACE_CHECK(read_double_attr(grp.get(), "weight", &sc.weight), InputError, path + ": /" + g + " has no 'weight'");
    const auto meta = h5::read_strings(f, g + "/meta", path);
    ATTRACE_CHECK(meta.size() == 1, InputError, path + ": /" + g + "/meta must hold one string");
    sc.meta = meta[0];
    const auto shape = h5::shape_of(f, g + "/features", path);
    ATTRACE_CHECK(shape.size() == 2 && shape[0] == l.rows, InputError,
                  path + ": /" + g + "/features must be [" + std::to_string(l.rows) + ", width]");
    sc.width = shape[1];
    l.checkpoints.push_back(sc);
  }
  return l;
}

// What reading a store does to libhdf5, rehearsed in h5::check_in_child: the layout and every
// string in it, each checkpoint's features dataset and its chunk index (walked whole without
// reading a chunk; the chunks themselves are unfiltered bytes).
void rehearse_store_read(const std::string& path) {
  h5::Handle fapl = fapl_unlocked();
  h5::Handle f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  if (!f.valid()) return;
  std::vector<int64_t> progress;
  const StoreLayout layout = read_layout(f.get(), path, &progress);
  for (size_t c = 0; c < layout.checkpoints.size(); ++c) {
    h5::Handle d(H5Dopen2(f.get(), (ckpt_group(c) + "/features").c_str(), H5P_DEFAULT), H5Dclose);
    if (!d.valid()) continue;
    hsize_t chunks = 0;
    H5Dget_num_chunks(d.get(), H5S_ALL, &chunks);
  }
}

// Converts float rows to the stored element type in `buf`.
const void* encode(const float* rows, int64_t count, FeatureDtype d, std::vector<uint16_t>& buf) {
  if (d == FeatureDtype::f32) return rows;
  buf.resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) buf[static_cast<size_t>(i)] = d == FeatureDtype::bf16 ? to_bf16(rows[i]) : to_f16(rows[i]);
  return buf.data();
}

std::string lock_path_of(const std::string& path) {
  const fs::path p(path);
  return (p.parent_path() / ("." + p.filename().string() + ".lock")).string();
}

}  // namespace

std::string to_string(FeatureDtype d) {
  switch (d) {
    case FeatureDtype::f64:
      return "f64";
    case FeatureDtype::bf16:
      return "bf16";
    case FeatureDtype::f16:
      return "f16";
    default:
      return "f32";
  }
}

FeatureDtype parse_feature_dtype(const std::string& name, const std::string& where) {
  if (name == "f32") return FeatureDtype::f32;
  if (name == "f64") return FeatureDtype::f64;
  if (name == "bf16") return FeatureDtype::bf16;
  if (name == "f16") return FeatureDtype::f16;
  throw InputError(where + ": '" + name + "' is not one of f32, f64, bf16, f16");
}

int64_t dtype_bytes(FeatureDtype d) { return d == FeatureDtype::f64 ? 8 : d == FeatureDtype::f32 ? 4 : 2; }

float round_to_dtype(float x, FeatureDtype d) {
  if (d == FeatureDtype::bf16) return from_bf16(to_bf16(x));
  if (d == FeatureDtype::f16) return from_f16(to_f16(x));
  return x;
}

std::string layout_difference(const StoreLayout& s, const StoreLayout& w) {
  if (s.spec != w.spec) {
    // Name the first differing top-level key of the two canonical JSON specs when possible.
    return "featurization settings or inputs differ (stored spec " + s.spec.substr(0, 400) + (s.spec.size() > 400 ? "…" : "") +
           "; wanted " + w.spec.substr(0, 400) + (w.spec.size() > 400 ? "…" : "") + ")";
  }
  if (s.dtype != w.dtype) return "dtype: stored " + to_string(s.dtype) + ", wanted " + to_string(w.dtype);
  if (s.rows != w.rows) return "rows: stored " + std::to_string(s.rows) + ", wanted " + std::to_string(w.rows);
  if (s.chunk_rows != w.chunk_rows)
    return "chunk_rows: stored " + std::to_string(s.chunk_rows) + ", wanted " + std::to_string(w.chunk_rows);
  if (s.checkpoints.size() != w.checkpoints.size())
    return "checkpoints: stored " + std::to_string(s.checkpoints.size()) + ", wanted " + std::to_string(w.checkpoints.size());
  for (size_t c = 0; c < s.checkpoints.size(); ++c) {
    const auto &a = s.checkpoints[c], &b = w.checkpoints[c];
    if (a.width != b.width || a.weight != b.weight || a.meta != b.meta)
      return "checkpoint " + std::to_string(c) + ": stored width " + std::to_string(a.width) + ", meta " + a.meta +
             "; wanted width " + std::to_string(b.width) + ", meta " + b.meta;
  }
  if (s.ids != w.ids) return "example ids differ";
  if (s.tranche != w.tranche) return "tranche indices differ";
  if (s.digests != w.digests) return "example digests differ";
  return "";
}

// ---------------------------------------------------------------------------------------------

struct FeatureStoreWriter::Impl {
  std::string path;
  StoreLayout layout;
  int lock_fd = -1;
  h5::Handle file;
  std::vector<h5::Handle> features;
  h5::Handle progress_ds;
  std::vector<int64_t> progress;
  std::vector<uint16_t> buf16;

  ~Impl() {
    features.clear();
    progress_ds.reset();
    file.reset();
    if (lock_fd >= 0) ::close(lock_fd);  // releases the flock
  }

  void lock() {
    const std::string lp = lock_path_of(path);
    lock_fd = ::open(lp.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ATTRACE_CHECK(lock_fd >= 0, InputError, path + ": cannot create the lock file " + lp + ": " + std::strerror(errno));
    if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      ::close(lock_fd);
      lock_fd = -1;
      ATTRACE_CHECK(e != EWOULDBLOCK, InputError,
                    path + ": another attrace process is writing this feature store (lock held on " + lp + ")");
      throw RuntimeFailure(path + ": cannot lock " + lp + ": " + std::strerror(e));
    }
  }

  // Lays out a complete store under a temporary name, then renames it into place.
  void create() {
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    try {
      h5::Handle fapl = fapl_unlocked();
      h5::Handle f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
      ATTRACE_CHECK(f.valid(), InputError, path + ": cannot create the feature store (" + tmp + ")");
      h5::write_string_attr(f.get(), "format", kFormat);
      h5::write_string_attr(f.get(), "dtype", to_string(layout.dtype));
      write_double_attr(f.get(), "chunk_rows", static_cast<double>(layout.chunk_rows));
      h5::write_strings(f.get(), "spec", {layout.spec});
      h5::write_strings(f.get(), "ids", layout.ids);
      if (!layout.digests.empty())
        h5::write_numeric(f.get(), "digest", H5T_STD_U8LE, H5T_NATIVE_UINT8, {layout.rows, 32}, layout.digests.data());
      if (!layout.tranche.empty())
        h5::write_numeric(f.get(), "tranche", H5T_STD_I64LE, H5T_NATIVE_INT64, {layout.rows}, layout.tranche.data());
      const std::vector<int64_t> zeros(layout.checkpoints.size(), 0);
      {
        h5::Handle p = create_allocated(f.get(), "progress", H5T_STD_I64LE, {static_cast<hsize_t>(zeros.size())}, {});
        if (!zeros.empty())
          ATTRACE_H5_CHECK(H5Dwrite(p.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()), RuntimeFailure,
                           tmp + ": cannot write /progress");
      }
      for (size_t c = 0; c < layout.checkpoints.size(); ++c) {
        const auto& sc = layout.checkpoints[c];
        h5::Handle g = h5::create_group(f.get(), ckpt_group(c));
        write_double_attr(g.get(), "weight", sc.weight);
        h5::write_strings(g.get(), "meta", {sc.meta});
        const auto rows = static_cast<hsize_t>(layout.rows), width = static_cast<hsize_t>(sc.width);
        const hsize_t chunk_rows = std::max<hsize_t>(1, std::min<hsize_t>(rows, static_cast<hsize_t>(layout.chunk_rows)));
        create_allocated(g.get(), "features", file_type_of(layout.dtype), {rows, width},
                         rows > 0 && width > 0 ? std::vector<hsize_t>{chunk_rows, width} : std::vector<hsize_t>{});
      }
      flush_and_sync(f.get(), tmp);
    } catch (...) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw;
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    ATTRACE_CHECK(!ec, RuntimeFailure, path + ": cannot rename " + tmp + " into place: " + ec.message());
    fsync_path(fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().string());
  }

  void open_rw() {
    h5::Handle fapl = fapl_unlocked();
    file = h5::Handle(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()), H5Fclose);
    ATTRACE_CHECK(file.valid(), InputError, path + ": not a readable HDF5 file (truncated or foreign?); not overwriting it");
    progress_ds = h5::Handle(H5Dopen2(file.get(), "progress", H5P_DEFAULT), H5Dclose);
    for (size_t c = 0; c < layout.checkpoints.size(); ++c) {
      features.emplace_back(H5Dopen2(file.get(), (ckpt_group(c) + "/features").c_str(), H5P_DEFAULT), H5Dclose);
      ATTRACE_CHECK(features.back().valid(), InputError, path + ": cannot open /" + ckpt_group(c) + "/features");
    }
  }

  void write_rows(size_t c, int64_t b0, int64_t b1, const void* data, hid_t mem_type) {
    ATTRACE_CHECK(c < layout.checkpoints.size() && b0 == progress[c] && b1 > b0 && b1 <= layout.rows &&
                      ((b1 - b0) % layout.chunk_rows == 0 || b1 == layout.rows),
                  RuntimeFailure, path + ": out-of-order feature write");
    const auto width = static_cast<hsize_t>(layout.checkpoints[c].width);
    if (width > 0) {
      const hsize_t start[2] = {static_cast<hsize_t>(b0), 0}, count[2] = {static_cast<hsize_t>(b1 - b0), width};
      h5::Handle fspace(H5Dget_space(features[c].get()), H5Sclose);
      H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
      h5::Handle mspace(H5Screate_simple(2, count, nullptr), H5Sclose);
      ATTRACE_H5_CHECK(H5Dwrite(features[c].get(), mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, data), RuntimeFailure,
                       path + ": cannot write features of " + ckpt_group(c));
      flush_and_sync(file.get(), path);  // the rows are on disk before the counter says so
    }
    progress[c] = b1;
    const hsize_t one = 1, at = c;
    h5::Handle fspace(H5Dget_space(progress_ds.get()), H5Sclose);
    H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &at, nullptr, &one, nullptr);
    h5::Handle mspace(H5Screate_simple(1, &one, nullptr), H5Sclose);
    ATTRACE_H5_CHECK(H5Dwrite(progress_ds.get(), H5T_NATIVE_INT64, mspace.get(), fspace.get(), H5P_DEFAULT, &progress[c]),
                     RuntimeFailure, path + ": cannot write /progress");
    flush_and_sync(file.get(), path);
  }
};

FeatureStoreWriter::FeatureStoreWriter(const std::string& path, const StoreLayout& layout, bool replace) {
  h5::quiet_errors();
  ATTRACE_CHECK(layout.chunk_rows >= 1, RuntimeFailure, path + ": chunk_rows must be >= 1");
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->layout = layout;
  impl->lock();
  // Leftovers of a creation killed before its rename: only a lock holder may remove them.
  {
    const fs::path p(path);
    const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().filename().string().rfind(p.filename().string() + ".tmp-", 0) == 0) fs::remove(e.path(), ec);
  }
  std::error_code ec;
  const bool present = fs::exists(path, ec);
  if (present) {
    ATTRACE_CHECK(fs::is_regular_file(path, ec), InputError, path + ": exists and is not a regular file; not overwriting it");
    std::string difference;
    // A damaged existing store must end as a refusal (or, with --force, be replaced), never as a
    // fault inside libhdf5 while its layout is compared.
    bool damaged = false;
    try {
      h5::check_in_child(path, "feature store", [&] { rehearse_store_read(path); });
    } catch (const InputError& e) {
      ATTRACE_CHECK(replace, InputError, std::string(e.what()) + " (--force replaces it)");
      damaged = true;
      difference = "damaged";
    }
    if (!damaged) {
      h5::Handle fapl = fapl_unlocked();
      h5::Handle f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
      if (!f.valid()) {
        ATTRACE_CHECK(replace, InputError,
                      path + ": exists but is not a readable HDF5 file (truncated or foreign?); not overwriting it "
                             "(--force replaces it)");
        difference = "unreadable";
      } else {
        std::vector<int64_t> progress;
        try {
          const StoreLayout stored = read_layout(f.get(), path, &progress);
          difference = layout_difference(stored, layout);
          if (difference.empty()) impl->progress = progress;
        } catch (const InputError& e) {
          ATTRACE_CHECK(replace, InputError, std::string(e.what()) + "; not overwriting it (--force replaces it)");
          difference = "foreign";
        }
      }
    }
    if (!difference.empty()) {
      ATTRACE_CHECK(replace, InputError,
                    path + ": the existing store was written with other settings or inputs; refusing to mix them (" +
                        difference + "). Use another path, or --force to replace it");
      impl->create();
      impl->progress.assign(layout.checkpoints.size(), 0);
    } else {
      resumed_ = true;
    }
  } else {
    impl->create();
    impl->progress.assign(layout.checkpoints.size(), 0);
  }
  impl->open_rw();
  impl_ = std::move(impl);
}

FeatureStoreWriter::~FeatureStoreWriter() = default;

int64_t FeatureStoreWriter::rows_done(size_t c) const { return impl_->progress.at(c); }

bool FeatureStoreWriter::complete() const {
  for (const int64_t p : impl_->progress)
    if (p != impl_->layout.rows) return false;
  return true;
}

void FeatureStoreWriter::write(size_t c, int64_t b0, int64_t b1, const float* rows) {
  ATTRACE_CHECK(impl_->layout.dtype != FeatureDtype::f64, RuntimeFailure, impl_->path + ": float32 rows for an f64 store");
  const int64_t count = (b1 - b0) * impl_->layout.checkpoints.at(c).width;
  const void* data = encode(rows, count, impl_->layout.dtype, impl_->buf16);
  impl_->write_rows(c, b0, b1, data, impl_->layout.dtype == FeatureDtype::f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT16);
}

void FeatureStoreWriter::write(size_t c, int64_t b0, int64_t b1, const double* rows) {
  ATTRACE_CHECK(impl_->layout.dtype == FeatureDtype::f64, RuntimeFailure, impl_->path + ": float64 rows for a non-f64 store");
  impl_->write_rows(c, b0, b1, rows, H5T_NATIVE_DOUBLE);
}

// ---------------------------------------------------------------------------------------------

struct FeatureStoreReader::Impl {
  std::string path;
  StoreLayout layout;
  h5::Handle file;
  std::vector<h5::Handle> features;
  mutable std::vector<uint16_t> buf16;

  void read_rows(size_t c, int64_t b0, int64_t b1, void* out, hid_t mem_type) const {
    ATTRACE_CHECK(c < features.size() && b0 >= 0 && b0 <= b1 && b1 <= layout.rows, RuntimeFailure,
                  path + ": feature read out of range");
    const auto width = static_cast<hsize_t>(layout.checkpoints[c].width);
    if (b1 == b0 || width == 0) return;
    const hsize_t start[2] = {static_cast<hsize_t>(b0), 0}, count[2] = {static_cast<hsize_t>(b1 - b0), width};
    h5::Handle fspace(H5Dget_space(features[c].get()), H5Sclose);
    H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
    h5::Handle mspace(H5Screate_simple(2, count, nullptr), H5Sclose);
    ATTRACE_H5_CHECK(H5Dread(features[c].get(), mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, out), InputError,
                     path + ": cannot read features of " + ckpt_group(c) + " rows " + std::to_string(b0) + ".." +
                         std::to_string(b1));
  }
};

FeatureStoreReader::FeatureStoreReader(const std::string& path) {
  h5::quiet_errors();
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  std::error_code ec;
  ATTRACE_CHECK(fs::is_regular_file(path, ec), InputError, path + ": no such feature store");
  h5::check_in_child(path, "feature store", [&] { rehearse_store_read(path); });
  h5::Handle fapl = fapl_unlocked();
  impl->file = h5::Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  ATTRACE_CHECK(impl->file.valid(), InputError, path + ": not a readable HDF5 file (truncated or foreign?)");
  std::vector<int64_t> progress;
  impl->layout = read_layout(impl->file.get(), path, &progress);
  for (size_t c = 0; c < progress.size(); ++c)
    ATTRACE_CHECK(progress[c] == impl->layout.rows, InputError,
                  path + ": incomplete feature store (checkpoint " + std::to_string(c) + " has " +
                      std::to_string(progress[c]) + " of " + std::to_string(impl->layout.rows) +
                      " rows; a featurize run was interrupted: re-run it to finish)");
  for (size_t c = 0; c < progress.size(); ++c) {
    impl->features.emplace_back(H5Dopen2(impl->file.get(), (ckpt_group(c) + "/features").c_str(), H5P_DEFAULT), H5Dclose);
    ATTRACE_CHECK(impl->features.back().valid(), InputError, path + ": cannot open /" + ckpt_group(c) + "/features");
  }
  impl_ = std::move(impl);
}

FeatureStoreReader::~FeatureStoreReader() = default;

const std::string& FeatureStoreReader::path() const { return impl_->path; }
const StoreLayout& FeatureStoreReader::layout() const { return impl_->layout; }

void FeatureStoreReader::read(size_t c, int64_t b0, int64_t b1, float* out) const {
  const auto d = impl_->layout.dtype;
  ATTRACE_CHECK(d != FeatureDtype::f64, RuntimeFailure, impl_->path + ": float32 read of an f64 store");
  if (d == FeatureDtype::f32) return impl_->read_rows(c, b0, b1, out, H5T_NATIVE_FLOAT);
  const int64_t count = (b1 - b0) * impl_->layout.checkpoints.at(c).width;
  impl_->buf16.resize(static_cast<size_t>(count));
  impl_->read_rows(c, b0, b1, impl_->buf16.data(), H5T_NATIVE_UINT16);
  for (int64_t i = 0; i < count; ++i) {
    const uint16_t v = impl_->buf16[static_cast<size_t>(i)];
    out[i] = d == FeatureDtype::bf16 ? from_bf16(v) : from_f16(v);
  }
}

void FeatureStoreReader::read(size_t c, int64_t b0, int64_t b1, double* out) const {
  ATTRACE_CHECK(impl_->layout.dtype == FeatureDtype::f64, RuntimeFailure, impl_->path + ": float64 read of a non-f64 store");
  impl_->read_rows(c, b0, b1, out, H5T_NATIVE_DOUBLE);
}

}  // namespace attrace::connectors
