#include "h5.hpp"

#include <attrace/connectors/scores_file.hpp>

namespace attrace::connectors {

void write_scores_h5(const std::string& path, const std::vector<double>& scores, const std::vector<double>& self_influence,
                     const std::vector<std::string>& train_ids, const std::vector<std::string>& query_ids) {
  const auto n = static_cast<int64_t>(train_ids.size()), m = static_cast<int64_t>(query_ids.size());
  ATTRACE_CHECK(static_cast<int64_t>(scores.size()) == n * m && static_cast<int64_t>(self_influence.size()) == n,
                RuntimeFailure, path + ": score matrix size does not match the id lists");
  h5::Handle f = h5::create_file(path);
  h5::write_string_attr(f.get(), "format", "attrace.scores/1");
  h5::write_numeric(f.get(), "scores", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {n, m}, scores.data());
  h5::write_numeric(f.get(), "self_influence", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {n}, self_influence.data());
  h5::write_strings(f.get(), "train_ids", train_ids);
  h5::write_strings(f.get(), "query_ids", query_ids);
  ATTRACE_H5_CHECK(H5Fflush(f.get(), H5F_SCOPE_GLOBAL), RuntimeFailure, path + ": flush failed");
}

namespace {
std::vector<double> read_scores_unchecked(const std::string& path, int64_t* n, int64_t* m) {
  h5::Handle f = h5::open_file_ro(path);
  const auto shape = h5::shape_of(f.get(), "scores", path);
  ATTRACE_CHECK(shape.size() == 2, InputError, path + ": /scores must be two-dimensional");
  *n = shape[0];
  *m = shape[1];
  return h5::read_numeric<double>(f.get(), "scores", H5T_NATIVE_DOUBLE, path);
}
}  // namespace

std::vector<double> read_scores_h5(const std::string& path, int64_t* n, int64_t* m) {
  h5::check_in_child(path, "scores file", [&] {
    int64_t rn = 0, rm = 0;
    (void)read_scores_unchecked(path, &rn, &rm);
  });
  return read_scores_unchecked(path, n, m);
}

}  // namespace attrace::connectors
