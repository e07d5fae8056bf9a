#include "h5.hpp"

#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <unordered_map>

namespace attrace::connectors {

int64_t Dataset::example_width() const {
  int64_t w = 1;
  for (size_t i = 1; i < input_shape.size(); ++i) w *= input_shape[i];
  return w;
}

int64_t Dataset::target_width() const {
  int64_t w = 1;
  for (size_t i = 1; i < target_shape.size(); ++i) w *= target_shape[i];
  return w;
}

std::vector<int64_t> Dataset::tranche_counts() const {
  std::vector<int64_t> counts(tranches.size(), 0);
  for (int64_t t : tranche)
    if (t >= 0 && t < static_cast<int64_t>(counts.size())) ++counts[static_cast<size_t>(t)];
  return counts;
}

bool is_evm_address(const std::string& s) {
  if (s.size() != 42 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) return false;
  for (size_t i = 2; i < s.size(); ++i)
    if (!std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

size_t first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;       // overlong
      if (c == 0xED) hi = 0x9F;       // UTF-16 surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;       // overlong
      if (c == 0xF4) hi = 0x8F;       // above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string_view::npos;
}

namespace {
// The text of a string field for a message: printable ASCII as is, every other byte as \xHH (the
// string may be the invalid UTF-8 being reported).
std::string escaped(std::string_view s) {
  std::string r;
  for (const unsigned char c : s.substr(0, 80)) {
    if (c >= 0x20 && c < 0x7F) {
      r.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      r += buf;
    }
  }
  return s.size() > 80 ? r + "..." : r;
}

// InputError unless `s` is valid UTF-8 without NUL bytes (HDF5 stores C strings: "a\0b" would
// come back as "a", found by fuzz_dataset); `field` names where it was read.
void check_utf8(std::string_view s, const std::string& field) {
  ATTRACE_CHECK(s.find('\0') == std::string_view::npos, InputError,
                field + " contains a NUL byte at " + std::to_string(s.find('\0')) + " ('" + escaped(s) + "')");
  const size_t bad = first_invalid_utf8(s);
  ATTRACE_CHECK(bad == std::string_view::npos, InputError,
                field + " is not valid UTF-8 (byte " + std::to_string(bad) + " of '" + escaped(s) +
                    "'); ids and tranche fields must be UTF-8 text");
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

// "example 'id' (row i)" for messages; the row alone while the ids are not yet known to match.
std::string example_at(const Dataset& ds, int64_t i) {
  const std::string row = "(row " + std::to_string(i) + ")";
  return i < static_cast<int64_t>(ds.ids.size()) ? "example '" + ds.ids[static_cast<size_t>(i)] + "' " + row
                                                 : "example " + row;
}

// Token ids and lengths of a token dataset (shape, ids and element counts already checked).
void validate_tokens(const Dataset& ds, const std::string& what) {
  const int64_t n = ds.size(), t_len = ds.input_shape[1];
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < t_len; ++t) {
      const int32_t v = ds.int_inputs[static_cast<size_t>(i * t_len + t)];
      ATTRACE_CHECK(v >= 0, InputError,
                    what + ": /inputs of " + example_at(ds, i) + " at position " + std::to_string(t) + " is " +
                        std::to_string(v) + "; token ids must be >= 0");
    }
  if (ds.lengths.empty()) return;
  ATTRACE_CHECK(static_cast<int64_t>(ds.lengths.size()) == n, InputError,
                what + ": /lengths has " + std::to_string(ds.lengths.size()) + " entries, expected " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t len = ds.lengths[static_cast<size_t>(i)];
    ATTRACE_CHECK(len >= 1 && len <= t_len, InputError,
                  what + ": /lengths of " + example_at(ds, i) + " is " + std::to_string(len) + ", outside 1.." +
                      std::to_string(t_len) + " (T = " + std::to_string(t_len) + ")");
  }
}

// Per-position targets: ids >= 0 or kIgnoreTarget, none past an example's length, and at least
// one per example (an example without any would add nothing to the loss yet be paid for).
void validate_token_targets(const Dataset& ds, const std::string& what) {
  ATTRACE_CHECK(ds.target_shape == ds.input_shape, InputError,
                what + ": per-position /targets must have the shape of /inputs " + shape_str(ds.input_shape) + ", got " +
                    shape_str(ds.target_shape));
  const int64_t n = ds.size(), t_len = ds.input_shape[1];
  ATTRACE_CHECK(static_cast<int64_t>(ds.token_targets.size()) == n * t_len, InputError,
                what + ": /targets size mismatch");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = ds.lengths.empty() ? t_len : ds.lengths[static_cast<size_t>(i)];
    int64_t with_target = 0;
    for (int64_t t = 0; t < t_len; ++t) {
      const int32_t y = ds.token_targets[static_cast<size_t>(i * t_len + t)];
      if (y == kIgnoreTarget) continue;
      ATTRACE_CHECK(y >= 0, InputError,
                    what + ": /targets of " + example_at(ds, i) + " at position " + std::to_string(t) + " is " +
                        std::to_string(y) + "; token targets are ids >= 0 or -100 (no loss term)");
      ATTRACE_CHECK(t < len, InputError,
                    what + ": /targets of " + example_at(ds, i) + " at position " + std::to_string(t) + " is " +
                        std::to_string(y) + ", past the example's length " + std::to_string(len) +
                        "; positions past the length take -100");
      ++with_target;
    }
    ATTRACE_CHECK(with_target > 0, InputError,
                  what + ": " + example_at(ds, i) + " has no target at any position (all -100; length " +
                      std::to_string(len) + "), so it would have no loss term");
  }
}

// Reads an integer dataset and narrows it to int32; a value outside int32 is reported with the
// example and position (`describe` says what the values must be).
std::vector<int32_t> read_int32(hid_t file, const std::string& name, const Dataset& ds, int64_t width,
                                const std::string& path, const std::string& describe) {
  ATTRACE_CHECK(h5::type_class_of(file, name, path) == H5T_INTEGER, InputError,
                path + ": /" + name + " must hold integers");
  const auto wide = h5::read_numeric<int64_t>(file, name, H5T_NATIVE_INT64, path);
  std::vector<int32_t> out(wide.size());
  for (size_t k = 0; k < wide.size(); ++k) {
    const int64_t v = wide[k];
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
      const int64_t i = static_cast<int64_t>(k) / width, t = static_cast<int64_t>(k) % width;
      throw InputError(path + ": /" + name + " of " + example_at(ds, i) +
                       (width > 1 ? " at position " + std::to_string(t) : std::string()) + " is " + std::to_string(v) +
                       ", outside 32-bit integers; " + describe);
    }
    out[k] = static_cast<int32_t>(v);
  }
  return out;
}
}  // namespace

std::vector<int32_t> next_token_targets(const Dataset& ds) {
  const int64_t n = ds.size(), t_len = ds.input_shape.size() == 2 ? ds.input_shape[1] : 0;
  std::vector<int32_t> y(static_cast<size_t>(n * t_len), kIgnoreTarget);
  if (static_cast<int64_t>(ds.int_inputs.size()) != n * t_len) return y;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = ds.lengths.empty() ? t_len : std::clamp<int64_t>(ds.lengths[static_cast<size_t>(i)], 0, t_len);
    for (int64_t t = 0; t + 1 < len; ++t)
      y[static_cast<size_t>(i * t_len + t)] = ds.int_inputs[static_cast<size_t>(i * t_len + t + 1)];
  }
  return y;
}

void validate_dataset(const Dataset& ds, bool require_tranches, const std::string& what) {
  ATTRACE_CHECK(ds.input_shape.size() >= 2, InputError,
                what + ": /inputs must have shape [N, ...] with at least 2 dimensions, got " +
                    shape_str(ds.input_shape));
  const int64_t n = ds.size();
  ATTRACE_CHECK(n > 0, InputError, what + ": /inputs holds no examples");
  // Element counts in checked 64-bit arithmetic (found by fuzz_dataset: a product of declared
  // dimensions overflowed int64); only then may example_width() and target_width() be used.
  auto elements = [&](const std::vector<int64_t>& shape, const char* name) {
    int64_t total = 1;
    for (int64_t d : shape) {
      ATTRACE_CHECK(d > 0, InputError, what + ": " + name + " has an empty dimension " + shape_str(shape));
      ATTRACE_CHECK(!__builtin_mul_overflow(total, d, &total), InputError,
                    what + ": " + name + " shape " + shape_str(shape) + " has more elements than fit in 64 bits");
    }
    return total;
  };
  const bool tokens_in = ds.input_kind == InputKind::integers;
  if (tokens_in)
    ATTRACE_CHECK(ds.input_shape.size() == 2, InputError,
                  what + ": integer /inputs are token ids and must have shape [N, T], got " + shape_str(ds.input_shape) +
                      "; store other inputs as floats");
  const int64_t input_elements = elements(ds.input_shape, "/inputs");
  ATTRACE_CHECK(static_cast<int64_t>(tokens_in ? ds.int_inputs.size() : ds.inputs.size()) == input_elements, InputError,
                what + ": /inputs data size does not match its shape");
  // One representation at a time: digests and duplicate checks read the one input_kind names.
  ATTRACE_CHECK((tokens_in ? ds.inputs.empty() : ds.int_inputs.empty()), InputError,
                what + ": holds both float and integer inputs");
  ATTRACE_CHECK(static_cast<int64_t>(ds.ids.size()) == n, InputError,
                what + ": /ids has " + std::to_string(ds.ids.size()) + " entries, expected " +
                    std::to_string(n));
  std::unordered_map<std::string, int64_t> seen;
  for (int64_t i = 0; i < n; ++i) {
    const auto& id = ds.ids[static_cast<size_t>(i)];
    ATTRACE_CHECK(!id.empty(), InputError, what + ": /ids row " + std::to_string(i) + " is empty");
    check_utf8(id, what + ": /ids row " + std::to_string(i));
    auto [it, fresh] = seen.emplace(id, i);
    ATTRACE_CHECK(fresh, InputError,
                  what + ": /ids: example id '" + id + "' appears twice (rows " +
                      std::to_string(it->second) + " and " + std::to_string(i) + ")");
  }
  if (!tokens_in) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t q = 0; q < ds.example_width(); ++q)
        ATTRACE_CHECK(std::isfinite(ds.inputs[static_cast<size_t>(i * ds.example_width() + q)]),
                      InputError,
                      what + ": /inputs of example '" + ds.ids[static_cast<size_t>(i)] +
                          "' (row " + std::to_string(i) + ") contains NaN or Inf");
    ATTRACE_CHECK(ds.lengths.empty(), InputError,
                  what + ": /lengths is only for token datasets (integer /inputs), but /inputs holds floats");
    ATTRACE_CHECK(ds.target_kind != TargetKind::tokens, InputError,
                  what + ": per-position token /targets need integer /inputs (token ids), but /inputs holds floats");
  } else {
    validate_tokens(ds, what);
    if (!ds.vocabulary.empty())
      for (int64_t i = 0; i < n; ++i)
        for (int64_t t = 0; t < ds.example_width(); ++t) {
          const int32_t id = ds.int_inputs[static_cast<size_t>(i * ds.example_width() + t)];
          ATTRACE_CHECK(id < static_cast<int64_t>(ds.vocabulary.size()), InputError,
                        what + ": token id " + std::to_string(id) + " of example '" + ds.ids[static_cast<size_t>(i)] +
                            "' at position " + std::to_string(t) + " has no entry in /vocabulary (" +
                            std::to_string(ds.vocabulary.size()) + " entries)");
        }
  }
  ATTRACE_CHECK(tokens_in || ds.vocabulary.empty(), InputError,
                what + ": /vocabulary is only for token datasets (integer /inputs)");
  for (size_t v = 0; v < ds.vocabulary.size(); ++v)
    ATTRACE_CHECK(first_invalid_utf8(ds.vocabulary[v]) == std::string::npos, InputError,
                  what + ": /vocabulary entry " + std::to_string(v) + " is not valid UTF-8 (it is shown in reports)");
  ATTRACE_CHECK(!ds.target_shape.empty() && ds.target_shape[0] == n, InputError,
                what + ": /targets has shape " + shape_str(ds.target_shape) + " but /inputs has " +
                    std::to_string(n) + " examples");
  const int64_t target_elements = elements(ds.target_shape, "/targets");
  if (ds.target_kind == TargetKind::class_index) {
    ATTRACE_CHECK(ds.target_shape.size() == 1, InputError,
                  what + ": integer /targets (class labels) must be one-dimensional, got " +
                      shape_str(ds.target_shape));
    ATTRACE_CHECK(static_cast<int64_t>(ds.class_targets.size()) == n, InputError,
                  what + ": /targets size mismatch");
    for (int64_t i = 0; i < n; ++i)
      ATTRACE_CHECK(ds.class_targets[static_cast<size_t>(i)] >= 0, InputError,
                    what + ": /targets of example '" + ds.ids[static_cast<size_t>(i)] +
                        "' is a negative class label (" +
                        std::to_string(ds.class_targets[static_cast<size_t>(i)]) + ")");
  } else if (ds.target_kind == TargetKind::tokens) {
    validate_token_targets(ds, what);
  } else {
    ATTRACE_CHECK(static_cast<int64_t>(ds.regression_targets.size()) == target_elements,
                  InputError, what + ": /targets size mismatch");
    for (size_t i = 0; i < ds.regression_targets.size(); ++i)
      ATTRACE_CHECK(std::isfinite(ds.regression_targets[i]), InputError,
                    what + ": /targets of example '" +
                        ds.ids[i / static_cast<size_t>(ds.target_width())] + "' is NaN or Inf");
  }
  // Without tranches a dataset has neither an index nor a table; one without the other is refused
  // (a table alone would be written and then not read back: found by fuzz_dataset).
  if (!require_tranches && ds.tranche.empty() && ds.tranches.empty()) return;
  ATTRACE_CHECK(!ds.tranches.empty(), InputError, what + ": missing tranche table /tranches/id");
  ATTRACE_CHECK(static_cast<int64_t>(ds.tranche.size()) == n, InputError,
                what + ": /tranche has " + std::to_string(ds.tranche.size()) + " entries, expected " +
                    std::to_string(n));
  const int64_t t = static_cast<int64_t>(ds.tranches.size());
  std::unordered_map<std::string, size_t> tranche_ids;
  for (size_t k = 0; k < ds.tranches.size(); ++k) {
    const Tranche& tr = ds.tranches[k];
    check_utf8(tr.id, what + ": /tranches/id row " + std::to_string(k));
    check_utf8(tr.account, what + ": /tranches/account row " + std::to_string(k));
    check_utf8(tr.name, what + ": /tranches/name row " + std::to_string(k));
    check_utf8(tr.license, what + ": /tranches/license row " + std::to_string(k));
    ATTRACE_CHECK(!tr.id.empty(), InputError, what + ": /tranches/id row " + std::to_string(k) + " is empty");
    ATTRACE_CHECK(tranche_ids.emplace(tr.id, k).second, InputError,
                  what + ": /tranches/id: tranche id '" + tr.id + "' appears twice");
    ATTRACE_CHECK(is_evm_address(tr.account), InputError,
                  what + ": /tranches/account of tranche '" + tr.id + "' is '" + tr.account +
                      "', not an EVM address (0x + 40 hex digits)");
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = ds.tranche[static_cast<size_t>(i)];
    ATTRACE_CHECK(v >= 0 && v < t, InputError,
                  what + ": /tranche of example '" + ds.ids[static_cast<size_t>(i)] + "' (row " +
                      std::to_string(i) + ") is " + std::to_string(v) + ", outside the tranche table [0, " +
                      std::to_string(t) + ")");
  }
  const auto counts = ds.tranche_counts();
  for (size_t k = 0; k < counts.size(); ++k)
    ATTRACE_CHECK(counts[k] > 0, InputError,
                  what + ": tranche '" + ds.tranches[k].id + "' (index " + std::to_string(k) +
                      ") has no examples");
}

namespace {
Dataset read_dataset_unchecked(const std::string& path, bool require_tranches) {
  h5::Handle f = h5::open_file_ro(path);
  const hid_t file = f.get();
  Dataset ds;
  ds.path = path;
  ds.input_shape = h5::shape_of(file, "inputs", path);
  const int64_t n = ds.input_shape.empty() ? 0 : ds.input_shape[0];
  // Ids first: messages about token ids name the example.
  if (h5::exists(file, "ids")) {
    ds.ids = h5::read_strings(file, "ids", path);
  } else {
    for (int64_t i = 0; i < n; ++i) ds.ids.push_back(std::to_string(i));
  }
  // Integer /inputs are token ids (docs/formats.md#token-datasets); anything else is float values.
  if (h5::type_class_of(file, "inputs", path) == H5T_INTEGER) {
    ds.input_kind = InputKind::integers;
    ATTRACE_CHECK(ds.input_shape.size() == 2, InputError,
                  path + ": integer /inputs are token ids and must have shape [N, T], got " + shape_str(ds.input_shape) +
                      "; store other inputs as floats");
    ds.int_inputs = read_int32(file, "inputs", ds, ds.input_shape[1], path, "token ids must be >= 0");
    if (h5::exists(file, "lengths")) {
      const auto ls = h5::shape_of(file, "lengths", path);
      ATTRACE_CHECK(ls.size() == 1 && ls[0] == n, InputError,
                    path + ": /lengths must have shape [N] = [" + std::to_string(n) + "], got " + shape_str(ls));
      ds.lengths = read_int32(file, "lengths", ds, 1, path, "lengths are 1..T");
    }
    if (h5::exists(file, "vocabulary")) ds.vocabulary = h5::read_strings(file, "vocabulary", path);
  } else {
    ds.inputs = h5::read_numeric<float>(file, "inputs", H5T_NATIVE_FLOAT, path);
    ATTRACE_CHECK(!h5::exists(file, "lengths"), InputError,
                  path + ": /lengths is only for token datasets (integer /inputs), but /inputs holds floats");
  }
  if (ds.input_kind == InputKind::integers && !h5::exists(file, "targets")) {
    // Next-token targets, derived (docs/formats.md#token-datasets).
    ds.target_kind = TargetKind::tokens;
    ds.target_shape = ds.input_shape;
    ds.token_targets = next_token_targets(ds);
  } else {
    ds.target_shape = h5::shape_of(file, "targets", path);
    const H5T_class_t tcls = h5::type_class_of(file, "targets", path);
    if (tcls == H5T_INTEGER && ds.input_kind == InputKind::integers && ds.target_shape.size() == 2) {
      ds.target_kind = TargetKind::tokens;
      ds.token_targets = read_int32(file, "targets", ds, ds.target_shape[1], path,
                                    "token targets are ids >= 0 or -100 (no loss term)");
    } else if (tcls == H5T_INTEGER) {
      ds.target_kind = TargetKind::class_index;
      ds.class_targets = h5::read_numeric<int64_t>(file, "targets", H5T_NATIVE_INT64, path);
    } else if (tcls == H5T_FLOAT) {
      ds.target_kind = TargetKind::regression;
      ds.regression_targets = h5::read_numeric<float>(file, "targets", H5T_NATIVE_FLOAT, path);
    } else {
      throw InputError(path + ": /targets must be integer class labels or float regression targets");
    }
  }
  const bool has_tranche_index = h5::exists(file, "tranche");
  const bool has_table = h5::exists(file, "tranches/id");
  if (require_tranches) {
    ATTRACE_CHECK(has_tranche_index, InputError, path + ": missing dataset '/tranche' (tranche index per example)");
    ATTRACE_CHECK(has_table, InputError, path + ": missing dataset '/tranches/id' (tranche table)");
  }
  if (has_tranche_index && has_table) {
    ATTRACE_CHECK(h5::type_class_of(file, "tranche", path) == H5T_INTEGER, InputError,
                  path + ": /tranche must hold integers");
    ds.tranche = h5::read_numeric<int64_t>(file, "tranche", H5T_NATIVE_INT64, path);
    const auto ids = h5::read_strings(file, "tranches/id", path);
    const auto accounts = h5::read_strings(file, "tranches/account", path);
    ATTRACE_CHECK(accounts.size() == ids.size(), InputError,
                  path + ": /tranches/account has " + std::to_string(accounts.size()) +
                      " rows but /tranches/id has " + std::to_string(ids.size()));
    auto optional = [&](const char* name) {
      std::vector<std::string> v;
      if (h5::exists(file, std::string("tranches/") + name)) {
        v = h5::read_strings(file, std::string("tranches/") + name, path);
        ATTRACE_CHECK(v.size() == ids.size(), InputError,
                      path + ": /tranches/" + name + " has " + std::to_string(v.size()) +
                          " rows but /tranches/id has " + std::to_string(ids.size()));
      } else {
        v.assign(ids.size(), "");
      }
      return v;
    };
    const auto names = optional("name");
    const auto licenses = optional("license");
    for (size_t k = 0; k < ids.size(); ++k) ds.tranches.push_back({ids[k], accounts[k], names[k], licenses[k]});
  }
  return ds;
}
}  // namespace

Dataset read_dataset(const std::string& path, bool require_tranches) {
  // The HDF5 reads once in a child first: a damaged file faults there, not here.
  h5::check_in_child(path, "dataset", [&] { (void)read_dataset_unchecked(path, require_tranches); });
  Dataset ds = read_dataset_unchecked(path, require_tranches);
  validate_dataset(ds, require_tranches, path);
  ds.sha256 = sha256_file(path);
  return ds;
}

void write_dataset(const std::string& path, const Dataset& ds, bool replace) {
  std::error_code exists_ec;
  ATTRACE_CHECK(replace || !std::filesystem::exists(std::filesystem::symlink_status(path, exists_ec)), InputError,
                path + ": already exists; not replacing it (use --force to replace a dataset)");
  validate_dataset(ds, !ds.tranches.empty(), path);
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  try {
    h5::Handle f = h5::create_file(tmp);
    const hid_t file = f.get();
    h5::write_string_attr(file, "format", "attrace.dataset/1");
    if (ds.input_kind == InputKind::integers)
      h5::write_numeric(file, "inputs", H5T_STD_I32LE, H5T_NATIVE_INT32, ds.input_shape, ds.int_inputs.data());
    else
      h5::write_numeric(file, "inputs", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, ds.input_shape, ds.inputs.data());
    if (!ds.lengths.empty())
      h5::write_numeric(file, "lengths", H5T_STD_I32LE, H5T_NATIVE_INT32, {ds.size()}, ds.lengths.data());
    if (!ds.vocabulary.empty()) h5::write_strings(file, "vocabulary", ds.vocabulary);
    if (ds.target_kind == TargetKind::tokens) {
      // Derived next-token targets are left out: the reader derives the same ones.
      if (ds.token_targets != next_token_targets(ds))
        h5::write_numeric(file, "targets", H5T_STD_I32LE, H5T_NATIVE_INT32, ds.target_shape, ds.token_targets.data());
    } else if (ds.target_kind == TargetKind::class_index)
      h5::write_numeric(file, "targets", H5T_STD_I64LE, H5T_NATIVE_INT64, ds.target_shape,
                        ds.class_targets.data());
    else
      h5::write_numeric(file, "targets", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, ds.target_shape,
                        ds.regression_targets.data());
    h5::write_strings(file, "ids", ds.ids);
    if (!ds.tranches.empty()) {
      h5::write_numeric(file, "tranche", H5T_STD_I64LE, H5T_NATIVE_INT64, {ds.size()}, ds.tranche.data());
      h5::Handle g = h5::create_group(file, "tranches");
      std::vector<std::string> ids, accounts, names, licenses;
      for (const auto& t : ds.tranches) {
        ids.push_back(t.id);
        accounts.push_back(t.account);
        names.push_back(t.name);
        licenses.push_back(t.license);
      }
      h5::write_strings(g.get(), "id", ids);
      h5::write_strings(g.get(), "account", accounts);
      h5::write_strings(g.get(), "name", names);
      h5::write_strings(g.get(), "license", licenses);
    }
    ATTRACE_H5_CHECK(H5Fflush(file, H5F_SCOPE_GLOBAL), RuntimeFailure, tmp + ": flush failed");
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  std::error_code ec;
  try {
    fsync_path(tmp);
    if (!replace) {
      rename_no_replace(tmp, path);
      return;
    }
  } catch (...) {
    std::filesystem::remove(tmp, ec);
    throw;
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    throw RuntimeFailure(path + ": cannot move into place: " + why);
  }
}

}  // namespace attrace::connectors
