// LDS ground truth brought from elsewhere (docs/eval.md, "Ground truth in HDF5"): /masks
// (M x n_train integers, 1 = trained on) and /outputs (M x n_query floats), optionally
// /train_ids and /query_ids to check the order. Read through connectors' HDF5 layer, rehearsed
// in a child process first like every HDF5 input (damaged files end as an InputError).
#include "../../connectors/src/h5.hpp"

#include <attrace/engine/eval.hpp>
#include <attrace/error.hpp>

#include <cmath>

namespace attrace::engine::eval {

void read_ground_truth(const std::string& path, const Task& task, std::vector<uint8_t>& masks, std::vector<double>& outputs,
                       int64_t& m) {
  const int64_t n = task.train.size(), nq = task.query.size();
  std::vector<int64_t> raw_masks;
  std::vector<std::string> train_ids, query_ids;
  auto read = [&] {
    h5::quiet_errors();
    const h5::Handle f = h5::open_file_ro(path);
    for (const char* name : {"masks", "outputs"})
      ATTRACE_CHECK(h5::exists(f.get(), name), InputError, path + ": no /" + std::string(name) + " dataset (docs/eval.md)");
    const auto ms = h5::shape_of(f.get(), "masks", path), os = h5::shape_of(f.get(), "outputs", path);
    ATTRACE_CHECK(ms.size() == 2 && ms[1] == n, InputError,
                  path + ": /masks must be M x " + std::to_string(n) + " (subsets x training examples)");
    ATTRACE_CHECK(os.size() == 2 && os[0] == ms[0] && os[1] == nq, InputError,
                  path + ": /outputs must be " + std::to_string(ms[0]) + " x " + std::to_string(nq) + " (subsets x queries)");
    m = ms[0];
    raw_masks = h5::read_numeric<int64_t>(f.get(), "masks", H5T_NATIVE_INT64, path);
    outputs = h5::read_numeric<double>(f.get(), "outputs", H5T_NATIVE_DOUBLE, path);
    if (h5::exists(f.get(), "train_ids")) train_ids = h5::read_strings(f.get(), "train_ids", path);
    if (h5::exists(f.get(), "query_ids")) query_ids = h5::read_strings(f.get(), "query_ids", path);
  };
  h5::check_in_child(path, "LDS ground truth", read);
  read();
  ATTRACE_CHECK(m >= 2, InputError, path + ": /masks needs at least 2 subsets");
  masks.assign(raw_masks.size(), 0);
  for (size_t k = 0; k < raw_masks.size(); ++k) {
    ATTRACE_CHECK(raw_masks[k] == 0 || raw_masks[k] == 1, InputError,
                  path + ": /masks holds " + std::to_string(raw_masks[k]) + " at subset " + std::to_string(k / n) +
                      ", training example " + std::to_string(k % n) + "; only 0 and 1 are allowed");
    masks[k] = static_cast<uint8_t>(raw_masks[k]);
  }
  for (size_t k = 0; k < outputs.size(); ++k)
    ATTRACE_CHECK(std::isfinite(outputs[k]), NumericError,
                  path + ": /outputs is not finite at subset " + std::to_string(k / nq) + ", query " + std::to_string(k % nq));
  if (!train_ids.empty())
    ATTRACE_CHECK(train_ids == task.train.ids, InputError, path + ": /train_ids differ from the training set's ids (order included)");
  if (!query_ids.empty())
    ATTRACE_CHECK(query_ids == task.query.ids, InputError, path + ": /query_ids differ from the query set's ids (order included)");
}

}  // namespace attrace::engine::eval
