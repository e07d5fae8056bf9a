#pragma once
// scores.h5: the full train x query score matrix with example ids. Layout: docs/formats.md#scores.
#include <cstdint>
#include <string>
#include <vector>

namespace attrace::connectors {

/// Writes scores.h5 (float64 /scores n x m, /self_influence n, /train_ids, /query_ids), with no
/// timestamps so that equal content gives equal bytes.
void write_scores_h5(const std::string& path, const std::vector<double>& scores, const std::vector<double>& self_influence,
                     const std::vector<std::string>& train_ids, const std::vector<std::string>& query_ids);

/// Reads /scores back (n x m, row-major) — for tests and auditors.
std::vector<double> read_scores_h5(const std::string& path, int64_t* n, int64_t* m);

}  // namespace attrace::connectors
