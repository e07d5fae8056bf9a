#pragma once
// Imports a CSV file of examples (plus a CSV tranche table) into the HDF5 dataset layout, for
// users without HDF5 tooling. Format: docs/formats.md#csv-import.
#include <attrace/connectors/dataset.hpp>

#include <string>
#include <vector>

namespace attrace::connectors {

/// Settings of `attrace import csv`.
struct CsvImportOptions {
  std::string examples_csv;       ///< header row, then one example per row
  std::string tranches_csv;       ///< header "id,account[,name][,license]"; empty for query sets
  std::string output_h5;          ///< dataset file to write
  std::string target_column = "label";
  std::string tranche_column = "tranche";  ///< holds tranche ids (ignored without tranches_csv)
  std::string id_column = "id";            ///< optional; row numbers are used when absent
  bool regression = false;                 ///< float targets instead of integer class labels
  bool replace = false;                    ///< overwrite an existing output_h5 (--force)
};

/// Reads a CSV tranche table (header: id or tranche, account, optional name, license; ids unique,
/// fields UTF-8); InputError naming the file and line. Accounts are checked when the dataset is.
std::vector<Tranche> read_tranches_csv(const std::string& path);

/// Runs the import; throws InputError naming the file, line and column of bad input.
/// Returns the number of examples written.
long long import_csv(const CsvImportOptions& options);

}  // namespace attrace::connectors
