#include <attrace/connectors/csv_import.hpp>
#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/text_import.hpp>
#include <attrace/error.hpp>

#include <fnmatch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

namespace attrace::connectors {
namespace fs = std::filesystem;

namespace {

std::string read_whole_file(const std::string& path) {
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  ATTRACE_CHECK(in.good(), InputError, path + ": cannot open file (missing or unreadable)");
  std::ostringstream s;
  s << in.rdbuf();
  ATTRACE_CHECK(!in.bad(), RuntimeFailure, path + ": read error");
  return s.str();
}

// Lines of `text` without their "\n" (and a "\r" before it: CRLF files read like LF files); a
// final line without "\n" counts, an empty one after the last "\n" does not.
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    const size_t next = end == std::string_view::npos ? text.size() : end + 1;
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = next;
  }
  return lines;
}

bool blank(std::string_view line) { return line.find_first_not_of(" \t") == std::string_view::npos; }

// An item's text: its lines without leading and trailing blank lines, joined by "\n" (no final
// newline). Empty when every line is blank.
std::string join_item(const std::vector<std::string_view>& lines, size_t begin, size_t end) {
  while (begin < end && blank(lines[begin])) ++begin;
  while (end > begin && blank(lines[end - 1])) --end;
  std::string s;
  for (size_t k = begin; k < end; ++k) {
    if (k > begin) s.push_back('\n');
    s.append(lines[k]);
  }
  return s;
}

// The items of one file, in order; empty items are left out (they are not numbered).
std::vector<std::string> split_items(std::string_view text, const TextImportOptions& o) {
  const auto lines = split_lines(text);
  std::vector<std::string> items;
  auto add = [&](size_t b, size_t e) {
    std::string s = join_item(lines, b, e);
    if (!s.empty()) items.push_back(std::move(s));
  };
  switch (o.split) {
    case TextSplit::file:
      add(0, lines.size());
      break;
    case TextSplit::line:
      for (size_t k = 0; k < lines.size(); ++k) add(k, k + 1);
      break;
    case TextSplit::paragraph:
    case TextSplit::delimiter: {
      size_t b = 0;
      for (size_t k = 0; k <= lines.size(); ++k) {
        const bool sep = k == lines.size() ||
                         (o.split == TextSplit::paragraph ? blank(lines[k]) : lines[k] == o.delimiter);
        if (!sep) continue;
        add(b, k);
        b = k + 1;
      }
      break;
    }
  }
  return items;
}

bool matches_any(const std::vector<std::string>& patterns, const std::string& name) {
  for (const auto& p : patterns)
    if (::fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

// One file to import: its path, its path relative to the folder, and the ids derived from it.
struct SourceFile {
  std::string path;
  std::string rel;      // relative path, '/'-separated
  std::string stem_id;  // relative path without the file name's extension
  std::string tranche;  // tranche id
};

std::vector<SourceFile> list_files(const TextImportOptions& o, const std::vector<std::string>& outputs) {
  std::error_code ec;
  ATTRACE_CHECK(fs::is_directory(o.dir, ec), InputError, o.dir + ": not a directory (give the folder of text files)");
  std::vector<fs::path> skip;  // our own outputs, when they lie inside the folder (a rerun with --force)
  for (const auto& out : outputs)
    if (!out.empty()) skip.push_back(fs::weakly_canonical(out, ec));
  std::vector<SourceFile> files;
  fs::recursive_directory_iterator it(o.dir, ec), end;
  ATTRACE_CHECK(!ec, InputError, o.dir + ": cannot list the folder: " + ec.message());
  for (; it != end; it.increment(ec)) {
    ATTRACE_CHECK(!ec, InputError, o.dir + ": cannot list the folder: " + ec.message());
    const fs::path& p = it->path();
    const std::string name = p.filename().string();
    // Hidden files and folders (.git, editor backups) are never text to train on.
    if (!name.empty() && name[0] == '.') {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_directory(ec)) continue;
    if (!o.globs.empty() && !matches_any(o.globs, name)) continue;
    if (matches_any(o.excludes, name)) continue;
    if (std::find(skip.begin(), skip.end(), fs::weakly_canonical(p, ec)) != skip.end()) continue;
    SourceFile f;
    f.path = p.string();
    f.rel = p.lexically_relative(o.dir).generic_string();
    ATTRACE_CHECK(first_invalid_utf8(f.rel) == std::string::npos, InputError,
                  f.path + ": the file name is not valid UTF-8; it becomes the example (and tranche) id");
    const fs::path rel(f.rel);
    f.stem_id = (rel.parent_path() / rel.stem()).generic_string();
    if (o.tranche_per == TranchePer::file) {
      f.tranche = f.stem_id;
    } else {
      const auto first = rel.begin();
      ATTRACE_CHECK(std::next(first) != rel.end(), InputError,
                    f.path + ": lies directly in " + o.dir +
                        "; with --tranche-per folder every file must be in a subfolder (its tranche)");
      f.tranche = first->string();
    }
    files.push_back(std::move(f));
  }
  std::sort(files.begin(), files.end(), [](const SourceFile& a, const SourceFile& b) { return a.rel < b.rel; });
  std::map<std::string, const SourceFile*> by_stem;
  for (const auto& f : files) {
    auto [at, fresh] = by_stem.emplace(f.stem_id, &f);
    ATTRACE_CHECK(fresh, InputError,
                  at->second->path + " and " + f.path + " both give the id '" + f.stem_id +
                      "' (the relative path without its extension); rename one or narrow --glob");
  }
  std::string what = "every file";
  if (!o.globs.empty()) what = "--glob";
  ATTRACE_CHECK(!files.empty(), InputError, o.dir + ": no files to import (" + what + ", hidden files skipped)");
  return files;
}

void check_options(const TextImportOptions& o) {
  ATTRACE_CHECK(!o.output_h5.empty(), InputError, "import text: no output file (-o)");
  ATTRACE_CHECK(o.max_tokens >= 2, InputError,
                "--max-tokens must be >= 2 (a next-token target needs two tokens), got " + std::to_string(o.max_tokens));
  ATTRACE_CHECK(o.max_tokens <= std::numeric_limits<int32_t>::max(), InputError,
                "--max-tokens must fit 32 bits (lengths are int32), got " + std::to_string(o.max_tokens));
  ATTRACE_CHECK(o.min_tokens >= 2, InputError,
                "--min-tokens must be >= 2 (a one-token item has no next-token target), got " + std::to_string(o.min_tokens));
  ATTRACE_CHECK(o.pad_id >= 0, InputError, "--pad-id must be >= 0, got " + std::to_string(o.pad_id));
  ATTRACE_CHECK(o.queries_h5.empty() == (o.holdout_every == 0), InputError,
                "--queries and --holdout-every go together");
  ATTRACE_CHECK(o.holdout_every == 0 || o.holdout_every >= 2, InputError,
                "--holdout-every must be >= 2 (1 would hold out every item), got " + std::to_string(o.holdout_every));
  ATTRACE_CHECK(o.split != TextSplit::delimiter || !o.delimiter.empty(), InputError,
                "--split delimiter:S needs a non-empty separator S");
  std::error_code ec;
  for (const auto* out : {&o.output_h5, &o.queries_h5}) {
    if (out->empty()) continue;
    ATTRACE_CHECK(o.replace || !fs::exists(fs::symlink_status(*out, ec)), InputError,
                  *out + ": already exists; not replacing it (use --force to replace a dataset)");
    ATTRACE_CHECK(!fs::is_directory(*out, ec), InputError, *out + ": is a directory; give the dataset file to write");
  }
  ATTRACE_CHECK(o.queries_h5.empty() || fs::weakly_canonical(o.queries_h5, ec) != fs::weakly_canonical(o.output_h5, ec),
                InputError, o.queries_h5 + ": --queries names the same file as -o");
}

// One example of a dataset being built.
void append_example(Dataset& ds, const std::string& id, const int32_t* tokens, int64_t len, int64_t t_len,
                    int32_t pad) {
  ds.ids.push_back(id);
  ds.lengths.push_back(static_cast<int32_t>(len));
  ds.int_inputs.insert(ds.int_inputs.end(), tokens, tokens + len);
  ds.int_inputs.insert(ds.int_inputs.end(), static_cast<size_t>(t_len - len), pad);
}

void finish(Dataset& ds, int64_t t_len) {
  ds.input_kind = InputKind::integers;
  ds.input_shape = {static_cast<int64_t>(ds.ids.size()), t_len};
  ds.target_kind = TargetKind::tokens;
  ds.target_shape = ds.input_shape;
  ds.token_targets = next_token_targets(ds);
}

}  // namespace

void parse_text_split(const std::string& text, TextImportOptions& o) {
  static const std::string kDelim = "delimiter:";
  if (text == "file") {
    o.split = TextSplit::file;
  } else if (text == "paragraph") {
    o.split = TextSplit::paragraph;
  } else if (text == "line") {
    o.split = TextSplit::line;
  } else if (text.compare(0, kDelim.size(), kDelim) == 0 && text.size() > kDelim.size()) {
    o.split = TextSplit::delimiter;
    o.delimiter = text.substr(kDelim.size());
  } else {
    throw InputError("--split must be file, paragraph, line or delimiter:S (S a non-empty separator line), got '" +
                     text + "'");
  }
}

TextTokenizer::TextTokenizer() : nodes_(1) {}

TextTokenizer TextTokenizer::from_entries(const std::vector<std::string>& entries, const std::string& what) {
  std::vector<std::string> where;
  for (size_t e = 0; e < entries.size(); ++e) where.push_back(what + " entry " + std::to_string(e));
  return from_labeled(entries, where);
}

TextTokenizer TextTokenizer::from_labeled(const std::vector<std::string>& entries, const std::vector<std::string>& where) {
  TextTokenizer tk;
  std::map<std::string, size_t> seen;
  for (size_t e = 0; e < entries.size(); ++e) {
    const std::string& s = entries[e];
    ATTRACE_CHECK(s.size() >= 2, InputError,
                  where[e] + ": '" + s + "' is a single byte; bytes already have ids 0..255, entries must be 2 bytes or more");
    ATTRACE_CHECK(first_invalid_utf8(s) == std::string::npos, InputError, where[e] + ": not valid UTF-8");
    auto [at, fresh] = seen.emplace(s, e);
    ATTRACE_CHECK(fresh, InputError, where[e] + ": '" + s + "' repeats " + where[at->second]);
    ATTRACE_CHECK(tk.vocab_size() < std::numeric_limits<int32_t>::max(), InputError, where[e] + ": too many entries");
    int32_t node = 0;
    for (const unsigned char c : s) {
      const uint64_t key = static_cast<uint64_t>(node) << 8 | c;
      auto it = tk.children_.find(key);
      if (it == tk.children_.end()) {
        it = tk.children_.emplace(key, static_cast<int32_t>(tk.nodes_.size())).first;
        tk.nodes_.emplace_back();
      }
      node = it->second;
    }
    tk.nodes_[static_cast<size_t>(node)].token = static_cast<int32_t>(256 + tk.entries_.size());
    tk.entries_.push_back(s);
  }
  return tk;
}

TextTokenizer TextTokenizer::from_vocab_file(const std::string& path) {
  const std::string text = read_whole_file(path);
  const size_t bad = first_invalid_utf8(text);
  ATTRACE_CHECK(bad == std::string::npos, InputError,
                path + ": not valid UTF-8 at byte offset " + std::to_string(bad) + " (a vocabulary is UTF-8 text)");
  std::vector<std::string> entries, where;
  const auto lines = split_lines(text);
  for (size_t k = 0; k < lines.size(); ++k) {
    const std::string_view line = lines[k];
    if (line.empty()) continue;
    std::string tok;
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] != '\\') {
        tok.push_back(line[i]);
        continue;
      }
      const char e = i + 1 < line.size() ? line[i + 1] : '\0';
      const char* out = e == 'n' ? "\n" : e == 't' ? "\t" : e == 'r' ? "\r" : e == '\\' ? "\\" : nullptr;
      ATTRACE_CHECK(out != nullptr, InputError,
                    path + ":" + std::to_string(k + 1) + ": unknown escape '\\" + std::string(e ? 1 : 0, e) +
                        "' (known: \\n \\t \\r \\\\)");
      tok += out;
      ++i;
    }
    entries.push_back(std::move(tok));
    where.push_back(path + ":" + std::to_string(k + 1));
  }
  return from_labeled(entries, where);
}

std::vector<int32_t> TextTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size());
  size_t p = 0;
  while (p < text.size()) {
    int32_t best = -1;
    size_t best_len = 0, q = p;
    int32_t node = 0;
    while (q < text.size()) {
      const auto it = children_.find(static_cast<uint64_t>(node) << 8 | static_cast<unsigned char>(text[q]));
      if (it == children_.end()) break;
      node = it->second;
      ++q;
      if (nodes_[static_cast<size_t>(node)].token >= 0) {
        best = nodes_[static_cast<size_t>(node)].token;
        best_len = q - p;
      }
    }
    if (best >= 0) {
      out.push_back(best);
      p += best_len;
    } else {
      out.push_back(static_cast<unsigned char>(text[p]));
      ++p;
    }
  }
  return out;
}

std::string TextTokenizer::decode(int32_t id) const {
  if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
  if (id >= 256 && id - 256 < static_cast<int64_t>(entries_.size())) return entries_[static_cast<size_t>(id - 256)];
  return {};
}

TextImport build_text_datasets(const TextImportOptions& o) {
  check_options(o);
  const TextTokenizer tokenizer = o.vocab_file.empty() ? TextTokenizer() : TextTokenizer::from_vocab_file(o.vocab_file);
  std::vector<Tranche> accounts;
  if (!o.accounts_csv.empty()) accounts = read_tranches_csv(o.accounts_csv);
  const auto files = list_files(o, {o.output_h5, o.queries_h5});

  TextImport r;
  r.vocab_size = tokenizer.vocab_size();
  // Display text per id for reports (docs/formats.md "Token datasets"): printable ASCII bytes as
  // themselves, other bytes as <0xNN>, vocabulary entries as written.
  std::vector<std::string> vocabulary;
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    vocabulary.push_back(b == '\n' ? std::string("\n") : (b >= 0x20 && b < 0x7f) ? std::string(1, static_cast<char>(b)) : hex);
  }
  for (int64_t id = 256; id < tokenizer.vocab_size(); ++id) vocabulary.push_back(tokenizer.decode(static_cast<int32_t>(id)));
  r.train.vocabulary = vocabulary;
  r.queries.vocabulary = vocabulary;
  const int64_t t_len = o.max_tokens;
  std::map<std::string, int64_t> tranche_index;  // tranche id -> index in r.train.tranches
  int64_t kept = 0;                               // items kept so far, for --holdout-every
  for (const auto& f : files) {
    const std::string text = read_whole_file(f.path);
    const size_t bad = first_invalid_utf8(text);
    ATTRACE_CHECK(bad == std::string::npos, InputError,
                  f.path + ": not valid UTF-8 at byte offset " + std::to_string(bad) +
                      " (import text reads UTF-8 text files; leave others out with --glob/--exclude)");
    ++r.files;
    const auto items = split_items(text, o);
    for (size_t k = 0; k < items.size(); ++k) {
      ++r.items;
      const auto tokens = tokenizer.encode(items[k]);
      const int64_t n = static_cast<int64_t>(tokens.size());
      if (n < o.min_tokens) {
        ++r.dropped_short;
        continue;
      }
      r.tokens += n;
      const bool query = o.holdout_every > 0 && (kept + 1) % o.holdout_every == 0;
      ++kept;
      Dataset& ds = query ? r.queries : r.train;
      const std::string id = o.split == TextSplit::file ? f.stem_id : f.stem_id + "/" + std::to_string(k);
      int64_t tranche = -1;
      if (!query) {
        tranche = tranche_index.emplace(f.tranche, static_cast<int64_t>(tranche_index.size())).first->second;
        if (tranche == static_cast<int64_t>(ds.tranches.size())) ds.tranches.push_back({f.tranche, "", "", ""});
      }
      if (n <= t_len) {
        append_example(ds, id, tokens.data(), n, t_len, o.pad_id);
        if (!query) ds.tranche.push_back(tranche);
        continue;
      }
      // Windows overlap by one token, so every next-token pair of the item is a target exactly once.
      ++r.long_items;
      int64_t w = 0;
      for (int64_t start = 0;; start += t_len - 1, ++w) {
        const int64_t stop = std::min(n, start + t_len);
        append_example(ds, id + "#" + std::to_string(w), tokens.data() + start, stop - start, t_len, o.pad_id);
        if (!query) ds.tranche.push_back(tranche);
        if (stop == n) break;
      }
    }
  }
  ATTRACE_CHECK(!r.train.ids.empty(), InputError,
                o.dir + ": no training examples (" + std::to_string(r.files) + " files, " + std::to_string(r.items) +
                    " items, " + std::to_string(r.dropped_short) + " shorter than --min-tokens " +
                    std::to_string(o.min_tokens) + ")");
  ATTRACE_CHECK(o.holdout_every == 0 || !r.queries.ids.empty(), InputError,
                o.dir + ": no item was held out: only " + std::to_string(kept) + " items were kept, fewer than --holdout-every " +
                    std::to_string(o.holdout_every));
  finish(r.train, t_len);
  if (!r.queries.ids.empty()) finish(r.queries, t_len);

  if (!o.accounts_csv.empty()) {
    std::map<std::string, const Tranche*> by_id;
    for (const auto& t : accounts) by_id.emplace(t.id, &t);
    std::string missing;
    int64_t n_missing = 0;
    for (auto& t : r.train.tranches) {
      const auto it = by_id.find(t.id);
      if (it == by_id.end()) {
        if (++n_missing <= 10) missing += (missing.empty() ? "'" : ", '") + t.id + "'";
        continue;
      }
      t = *it->second;
    }
    ATTRACE_CHECK(n_missing == 0, InputError,
                  o.accounts_csv + ": no row for " + std::to_string(n_missing) + " tranche(s) of " + o.dir + ": " + missing +
                      (n_missing > 10 ? ", ..." : "") + " (columns tranche,account[,name][,license])");
    validate_dataset(r.train, true, o.accounts_csv + " and " + o.dir);
  } else {
    // Without accounts the table holds ids only (not yet valid): check the rest without it.
    auto tranche = std::move(r.train.tranche);
    auto tranches = std::move(r.train.tranches);
    r.train.tranche.clear();
    r.train.tranches.clear();
    validate_dataset(r.train, false, o.dir);
    r.train.tranche = std::move(tranche);
    r.train.tranches = std::move(tranches);
  }
  if (!r.queries.ids.empty()) validate_dataset(r.queries, false, o.dir + " (held-out queries)");
  return r;
}

TextImport import_text(const TextImportOptions& o) {
  TextImport r = build_text_datasets(o);
  Dataset train = r.train;
  if (o.accounts_csv.empty()) {
    train.tranche.clear();
    train.tranches.clear();
  }
  std::error_code ec;
  // Queries first: if the training file then fails, the new query file is removed again.
  const bool queries_existed = !o.queries_h5.empty() && fs::exists(fs::symlink_status(o.queries_h5, ec));
  if (!o.queries_h5.empty()) write_dataset(o.queries_h5, r.queries, o.replace);
  try {
    write_dataset(o.output_h5, train, o.replace);
  } catch (...) {
    if (!o.queries_h5.empty() && !queries_existed) fs::remove(o.queries_h5, ec);
    throw;
  }
  return r;
}

}  // namespace attrace::connectors
