#include <attrace/connectors/csv_import.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/error.hpp>

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

namespace attrace::connectors {
namespace {

// Splits one CSV record (RFC 4180 quoting; no newlines inside fields).
std::vector<std::string> split_csv(const std::string& line, const std::string& where) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        cur.push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cur.push_back(c);
      }
    } else if (c == '"' && cur.empty()) {
      quoted = true;
    } else if (c == ',') {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  ATTRACE_CHECK(!quoted, InputError, where + ": unterminated quoted field");
  out.push_back(std::move(cur));
  return out;
}

struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<size_t> line_no;
};

CsvTable read_csv(const std::string& path) {
  require_regular_file(path);
  std::ifstream in(path);
  ATTRACE_CHECK(in.good(), InputError, path + ": cannot open file (missing or unreadable)");
  CsvTable t;
  std::string line;
  size_t no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    auto fields = split_csv(line, path + ":" + std::to_string(no));
    if (t.header.empty()) {
      t.header = std::move(fields);
      continue;
    }
    ATTRACE_CHECK(fields.size() == t.header.size(), InputError,
                  path + ":" + std::to_string(no) + ": " + std::to_string(fields.size()) +
                      " fields, header has " + std::to_string(t.header.size()));
    t.rows.push_back(std::move(fields));
    t.line_no.push_back(no);
  }
  ATTRACE_CHECK(!t.header.empty(), InputError, path + ": empty file (a header row is required)");
  return t;
}

int find_column(const CsvTable& t, const std::string& name) {
  for (size_t i = 0; i < t.header.size(); ++i)
    if (t.header[i] == name) return static_cast<int>(i);
  return -1;
}

template <class T>
T parse_number(const std::string& s, const std::string& where) {
  T v{};
  const char* b = s.data();
  const char* e = s.data() + s.size();
  while (b < e && *b == ' ') ++b;
  while (e > b && e[-1] == ' ') --e;
  auto [p, ec] = std::from_chars(b, e, v);
  ATTRACE_CHECK(ec == std::errc() && p == e && b != e, InputError, where + ": '" + s + "' is not a number");
  if constexpr (std::is_floating_point_v<T>)
    ATTRACE_CHECK(std::isfinite(v), InputError, where + ": '" + s + "' is not finite");
  return v;
}

}  // namespace

std::vector<Tranche> read_tranches_csv(const std::string& path) {
  const CsvTable tt = read_csv(path);
  // `tranche` names the id column as well: the text importer's tables say "tranche,account,...".
  const int c_id = find_column(tt, "id") >= 0 ? find_column(tt, "id") : find_column(tt, "tranche");
  const int c_acc = find_column(tt, "account");
  const int c_name = find_column(tt, "name"), c_lic = find_column(tt, "license");
  ATTRACE_CHECK(c_id >= 0 && c_acc >= 0, InputError,
                path + ": header must name columns 'id' and 'account' (optional: name, license; 'tranche' may name the id column)");
  std::vector<Tranche> out;
  std::map<std::string, size_t> seen;
  for (size_t r = 0; r < tt.rows.size(); ++r) {
    const auto& row = tt.rows[r];
    Tranche t{row[static_cast<size_t>(c_id)], row[static_cast<size_t>(c_acc)],
              c_name >= 0 ? row[static_cast<size_t>(c_name)] : "",
              c_lic >= 0 ? row[static_cast<size_t>(c_lic)] : ""};
    for (const std::string* field : {&t.id, &t.account, &t.name, &t.license})
      ATTRACE_CHECK(first_invalid_utf8(*field) == std::string::npos, InputError,
                    path + ":" + std::to_string(tt.line_no[r]) + ": a field is not valid UTF-8");
    ATTRACE_CHECK(seen.emplace(t.id, r).second, InputError,
                  path + ":" + std::to_string(tt.line_no[r]) + ": tranche id '" + t.id + "' appears twice");
    out.push_back(std::move(t));
  }
  return out;
}

long long import_csv(const CsvImportOptions& o) {
  std::error_code ec;
  // Refused before reading anything; write_dataset checks again when it moves the file in place.
  ATTRACE_CHECK(o.replace || !std::filesystem::exists(std::filesystem::symlink_status(o.output_h5, ec)), InputError,
                o.output_h5 + ": already exists; not replacing it (use --force to replace a dataset)");
  ATTRACE_CHECK(!std::filesystem::is_directory(o.output_h5, ec), InputError,
                o.output_h5 + ": is a directory; give the dataset file to write");
  const CsvTable ex = read_csv(o.examples_csv);
  Dataset ds;
  const int target_col = find_column(ex, o.target_column);
  ATTRACE_CHECK(target_col >= 0, InputError,
                o.examples_csv + ": no column '" + o.target_column + "' (the target column)");
  const int id_col = find_column(ex, o.id_column);
  const bool with_tranches = !o.tranches_csv.empty();
  const int tranche_col = with_tranches ? find_column(ex, o.tranche_column) : -1;
  if (with_tranches)
    ATTRACE_CHECK(tranche_col >= 0, InputError,
                  o.examples_csv + ": no column '" + o.tranche_column + "' (the tranche column)");
  // Without a tranche table a tranche column would silently become an input feature.
  ATTRACE_CHECK(with_tranches || find_column(ex, o.tranche_column) < 0, InputError,
                o.examples_csv + ": has a '" + o.tranche_column +
                    "' column but no --tranches table was given; pass --tranches TR.csv for a training set, or drop "
                    "the column for a query set (it would otherwise be read as an input feature)");
  std::vector<int> feature_cols;
  for (int c = 0; c < static_cast<int>(ex.header.size()); ++c)
    if (c != target_col && c != id_col && c != tranche_col) feature_cols.push_back(c);
  ATTRACE_CHECK(!feature_cols.empty(), InputError, o.examples_csv + ": no feature columns");

  std::map<std::string, int64_t> tranche_index;
  if (with_tranches) {
    ds.tranches = read_tranches_csv(o.tranches_csv);
    for (const auto& t : ds.tranches) tranche_index.emplace(t.id, static_cast<int64_t>(tranche_index.size()));
  }

  const int64_t n = static_cast<int64_t>(ex.rows.size());
  ATTRACE_CHECK(n > 0, InputError, o.examples_csv + ": no example rows");
  ds.input_shape = {n, static_cast<int64_t>(feature_cols.size())};
  ds.target_shape = {n};
  ds.target_kind = o.regression ? TargetKind::regression : TargetKind::class_index;
  for (int64_t r = 0; r < n; ++r) {
    const auto& row = ex.rows[static_cast<size_t>(r)];
    const std::string at = o.examples_csv + ":" + std::to_string(ex.line_no[static_cast<size_t>(r)]);
    for (int c : feature_cols)
      ds.inputs.push_back(parse_number<float>(row[static_cast<size_t>(c)], at + " column '" + ex.header[static_cast<size_t>(c)] + "'"));
    const std::string& tv = row[static_cast<size_t>(target_col)];
    if (o.regression)
      ds.regression_targets.push_back(parse_number<float>(tv, at + " column '" + o.target_column + "'"));
    else
      ds.class_targets.push_back(parse_number<int64_t>(tv, at + " column '" + o.target_column + "'"));
    ds.ids.push_back(id_col >= 0 ? row[static_cast<size_t>(id_col)] : std::to_string(r));
    ATTRACE_CHECK(first_invalid_utf8(ds.ids.back()) == std::string::npos, InputError,
                  at + " column '" + o.id_column + "': the example id is not valid UTF-8");
    ATTRACE_CHECK(ds.ids.back().find('\0') == std::string::npos, InputError,
                  at + " column '" + o.id_column + "': the example id contains a NUL byte");
    if (with_tranches) {
      const std::string& tid = row[static_cast<size_t>(tranche_col)];
      auto it = tranche_index.find(tid);
      ATTRACE_CHECK(it != tranche_index.end(), InputError,
                    at + ": tranche '" + tid + "' is not in " + o.tranches_csv);
      ds.tranche.push_back(it->second);
    }
  }
  write_dataset(o.output_h5, ds, o.replace);
  return n;
}

}  // namespace attrace::connectors
