#pragma once
// Imports a folder of UTF-8 text files into a token dataset (one tranche per file or per
// subfolder), with a byte-level tokenizer and an optional vocabulary. Format and rules:
// docs/formats.md#text-import, docs/cli.md#attrace-import-text.
#include <attrace/connectors/dataset.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace attrace::connectors {

/// How a file's text is cut into items (an item becomes one example, or several windows).
enum class TextSplit { file, paragraph, line, delimiter };

/// What one tranche covers: one file, or one first-level subfolder of the imported folder.
enum class TranchePer { file, folder };

/// Settings of `attrace import text`.
struct TextImportOptions {
  std::string dir;                    ///< folder of text files, read recursively in sorted order
  std::string output_h5;              ///< training dataset to write
  std::string queries_h5;             ///< held-out query dataset to write (empty: none)
  int64_t holdout_every = 0;          ///< with queries_h5: every K-th item (K >= 2) goes to the queries
  TranchePer tranche_per = TranchePer::file;
  TextSplit split = TextSplit::file;
  std::string delimiter;              ///< the separator line of TextSplit::delimiter (e.g. "%")
  int64_t max_tokens = 128;           ///< T: longer items are cut into windows of T tokens
  int64_t min_tokens = 2;             ///< items with fewer tokens are dropped
  std::vector<std::string> globs;     ///< file-name patterns to take (fnmatch; empty: every file)
  std::vector<std::string> excludes;  ///< file-name patterns to leave out
  std::string vocab_file;             ///< vocabulary (docs/formats.md#vocabulary-file); empty: bytes only
  std::string accounts_csv;           ///< tranche,account[,name][,license]; empty: no tranche table
  int32_t pad_id = 0;                 ///< id written past an example's length
  bool replace = false;               ///< overwrite existing output files (--force)
};

/// Sets `options.split` (and `delimiter`) from "file", "paragraph", "line" or "delimiter:S";
/// InputError otherwise.
void parse_text_split(const std::string& text, TextImportOptions& options);

/// Byte-level tokenizer: ids 0..255 are UTF-8 bytes; vocabulary entries (2 bytes or more) get
/// ids 256, 257, ... in file order and are matched greedily, longest first.
class TextTokenizer {
 public:
  /// Bytes only (vocabulary size 256).
  TextTokenizer();
  /// Bytes plus the entries of a vocabulary file; InputError naming the file and line.
  static TextTokenizer from_vocab_file(const std::string& path);
  /// Bytes plus `entries` (each 2 bytes or more, unique); InputError naming `what`.
  static TextTokenizer from_entries(const std::vector<std::string>& entries, const std::string& what);
  /// Token ids of `text`: at each position the longest vocabulary entry that matches, else the byte.
  std::vector<int32_t> encode(std::string_view text) const;
  /// The bytes a token id stands for (empty for an id outside the vocabulary).
  std::string decode(int32_t id) const;
  /// Number of ids: 256 plus the vocabulary entries.
  int64_t vocab_size() const { return 256 + static_cast<int64_t>(entries_.size()); }

 private:
  static TextTokenizer from_labeled(const std::vector<std::string>& entries, const std::vector<std::string>& where);
  struct Node {
    int32_t token = -1;  // id of the entry ending here, or -1
  };
  std::vector<std::string> entries_;
  std::vector<Node> nodes_;                         // trie over bytes; node 0 is the root
  std::unordered_map<uint64_t, int32_t> children_;  // (node << 8 | byte) -> child node
};

/// What an import made, in memory, and how.
struct TextImport {
  Dataset train;             ///< training examples with tranche index and table (accounts empty without accounts_csv)
  Dataset queries;           ///< held-out examples (ids only, no tranches); empty without holdout
  int64_t files = 0;         ///< files read
  int64_t items = 0;         ///< items found (before --min-tokens)
  int64_t dropped_short = 0; ///< items with fewer than min_tokens tokens
  int64_t long_items = 0;    ///< items longer than max_tokens, cut into several windows
  int64_t tokens = 0;        ///< tokens of the kept items
  int64_t vocab_size = 256;  ///< ids the tokenizer can produce (a model's vocabulary must cover them)
};

/// Reads, splits and tokenizes the folder into datasets without writing anything; InputError
/// naming the file (and byte offset or line) of bad input.
TextImport build_text_datasets(const TextImportOptions& options);

/// Runs the import and writes output_h5 (and queries_h5) atomically; nothing is written when
/// any input is refused. Without accounts_csv the training file carries no tranche table.
TextImport import_text(const TextImportOptions& options);

}  // namespace attrace::connectors
