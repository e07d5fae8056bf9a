#pragma once
// Per-example gradient checks shared by gradients_test and lm_test.
#include <attrace/connectors/dataset.hpp>
#include <attrace/engine/gradients.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace attrace::test {

// All per-example gradients of `ds` in batches of `batch` rows, float32 or float64.
template <class T>
std::vector<T> all_gradients(attrace::engine::CheckpointModel& model, const attrace::connectors::Dataset& ds, int64_t batch) {
  const int64_t n = ds.size(), p = model.dim();
  std::vector<T> g(static_cast<size_t>(n * p), std::numeric_limits<T>::quiet_NaN());  // poisoned
  for (int64_t b0 = 0; b0 < n; b0 += batch) model.gradients(ds, b0, std::min(n, b0 + batch), g.data() + b0 * p);
  return g;
}

// Row by row: max |got - want| <= rtol * max |want| over that row (normwise; entries that cancel
// to near zero are judged against the row's scale). Every row must have a non-zero reference.
template <class T>
void expect_rows_close(const std::vector<T>& got, const std::vector<T>& want, int64_t p, double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t r = 0; r * static_cast<size_t>(p) < got.size(); ++r) {
    double scale = 0, err = 0;
    for (int64_t q = 0; q < p; ++q) {
      const size_t k = r * static_cast<size_t>(p) + static_cast<size_t>(q);
      ASSERT_TRUE(std::isfinite(static_cast<double>(got[k]))) << what << " row " << r << " entry " << q;
      scale = std::max(scale, std::abs(static_cast<double>(want[k])));
      err = std::max(err, std::abs(static_cast<double>(got[k]) - static_cast<double>(want[k])));
    }
    ASSERT_GT(scale, 0) << what << " row " << r << ": zero reference gradient proves nothing";
    if (err > rtol * scale && reported++ < 5)
      ADD_FAILURE() << what << " row " << r << ": max error " << err << " against scale " << scale << " (rtol " << rtol << ")";
  }
}

}  // namespace attrace::test
