#pragma once
// Datasets of examples (training set and query set) and their tranche table, read from and
// written to HDF5. Layout: docs/formats.md#dataset.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace attrace::connectors {

/// One contributor's batch of examples: who is paid for it and under which license.
struct Tranche {
  std::string id;       ///< stable id string (hashed into the ledger's trancheId)
  std::string account;  ///< contributor's EVM address, 0x + 40 hex digits
  std::string name;     ///< human-readable name (may be empty)
  std::string license;  ///< license tag, e.g. "CC-BY-4.0" (may be empty)
};

/// What the targets are: integer class labels, float regression targets, or per-position token
/// targets of a token dataset ([N, T] ids; kIgnoreTarget marks positions without a target).
enum class TargetKind { class_index, regression, tokens };

/// What the inputs are: float values, or integer ids (token ids) passed to the model as int64.
enum class InputKind { values, integers };

/// Token target that no loss term is computed for (PyTorch's default ignore_index).
inline constexpr int32_t kIgnoreTarget = -100;

/// An in-memory dataset: inputs, targets, example ids and (for training sets) tranches.
struct Dataset {
  std::string path;                  ///< file it was read from (empty if built in memory)
  std::string sha256;                ///< SHA-256 of that file (hex)
  std::vector<int64_t> input_shape;  ///< [N, ...]
  InputKind input_kind = InputKind::values;
  std::vector<float> inputs;         ///< N * example_width() values, row-major (input_kind == values)
  std::vector<int32_t> int_inputs;   ///< N * example_width() ids, row-major (input_kind == integers)
  std::vector<int32_t> lengths;      ///< token datasets: N valid lengths (1..T); empty: every position valid
  TargetKind target_kind = TargetKind::class_index;
  std::vector<int64_t> target_shape;  ///< [N] for class labels, [N] or [N, D] for regression
  std::vector<int64_t> class_targets;       ///< N labels when target_kind == class_index
  std::vector<float> regression_targets;    ///< N * target_width() values when regression
  std::vector<int32_t> token_targets;       ///< N * T ids (or kIgnoreTarget) when target_kind == tokens
  std::vector<std::string> vocabulary;      ///< token datasets: display text per token id (optional; for reports only)
  std::vector<std::string> ids;       ///< N unique example ids
  std::vector<int64_t> tranche;       ///< N tranche indices into `tranches` (empty: none)
  std::vector<Tranche> tranches;      ///< tranche table (empty for query sets without one)
  std::vector<uint8_t> digests;       ///< 32-byte content digest per example when the inputs are
                                      ///< not at hand (a dataset rebuilt from a feature store)

  /// Number of examples N.
  int64_t size() const { return input_shape.empty() ? 0 : input_shape[0]; }
  /// Number of input values per example.
  int64_t example_width() const;
  /// Number of target values per example (1 for class labels).
  int64_t target_width() const;
  /// Number of examples in each tranche.
  std::vector<int64_t> tranche_counts() const;
};

/// Reads and validates a dataset file. With `require_tranches` the tranche index and table must
/// be present, every index in range and every tranche non-empty. Throws InputError naming the
/// file, the field and the example or tranche at fault.
Dataset read_dataset(const std::string& path, bool require_tranches);

/// Checks a dataset's internal consistency (shapes, unique ids, tranche indices and table,
/// account format). `what` names it in messages (usually its path).
void validate_dataset(const Dataset& ds, bool require_tranches, const std::string& what);

/// Next-token targets of a token dataset, as the reader derives them when /targets is absent:
/// target[i][t] = inputs[i][t + 1] for t + 1 < length_i, else kIgnoreTarget (N * T values).
std::vector<int32_t> next_token_targets(const Dataset& ds);

/// Writes a dataset atomically (temporary file + rename) in the documented layout (token
/// datasets: int32 /inputs, /lengths when present, /targets only when they are not the derived
/// next-token ones). Without
/// `replace` an existing `path` is refused (InputError) and never touched, also when it appears
/// while the file is written.
void write_dataset(const std::string& path, const Dataset& ds, bool replace = true);

/// True when `s` is 0x followed by 40 hexadecimal digits.
bool is_evm_address(const std::string& s);

/// Byte offset of the first byte that is not valid UTF-8 in `s` (overlong forms, surrogates and
/// code points above U+10FFFF are invalid), or npos when all of `s` is valid. Ids and tranche
/// fields end up in JSON reports, so they are checked when read.
size_t first_invalid_utf8(std::string_view s);

}  // namespace attrace::connectors
