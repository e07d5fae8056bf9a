#pragma once
// Helpers shared by the kernels/ tests (kernels_test, cuda_test): random matrices, bit equality,
// top-k list comparison. Needs only kernels/ and GoogleTest.
#include <attrace/kernels/backend.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace attrace::test {

/// rows x cols values uniform in [-1, 1), from a seeded generator.
template <class T>
std::vector<T> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<T> v(static_cast<size_t>(rows * cols));
  for (auto& x : v) x = static_cast<T>(static_cast<double>(rng() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  return v;
}

/// rows x cols values over many binades (uniform mantissa in [-1, 1), exponent in [-12, 12]), so
/// that a different order of operations shows up in the last bits.
inline std::vector<float> wide_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-12, 12);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (auto& x : v) x = std::ldexp(mant(rng), ex(rng));
  return v;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// Same lists, entry by entry (rows and scores), for every column.
inline void expect_same_topk(const std::vector<kernels::TopK>& got, const std::vector<kernels::TopK>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t j = 0; j < got.size(); ++j) {
    ASSERT_EQ(got[j].proponents.size(), want[j].proponents.size()) << "column " << j;
    ASSERT_EQ(got[j].opponents.size(), want[j].opponents.size()) << "column " << j;
    for (size_t r = 0; r < got[j].proponents.size(); ++r) {
      EXPECT_EQ(got[j].proponents[r].row, want[j].proponents[r].row) << "column " << j << " rank " << r;
      EXPECT_EQ(got[j].proponents[r].score, want[j].proponents[r].score);
    }
    for (size_t r = 0; r < got[j].opponents.size(); ++r) {
      EXPECT_EQ(got[j].opponents[r].row, want[j].opponents[r].row) << "column " << j << " rank " << r;
      EXPECT_EQ(got[j].opponents[r].score, want[j].opponents[r].score);
    }
  }
}

}  // namespace attrace::test
