#include <attrace/kernels/reference.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace attrace::kernels::reference {

template <class T>
void score_accumulate(HostMatrix<T> a, HostMatrix<T> b, double alpha, HostMatrixMut<double> out) {
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < b.rows; ++j) {
      long double s = 0;
      for (int64_t q = 0; q < a.cols; ++q)
        s += static_cast<long double>(a.row(i)[q]) * static_cast<long double>(b.row(j)[q]);
      out.row(i)[j] += alpha * static_cast<double>(s);
    }
}
template void score_accumulate<float>(HostMatrix<float>, HostMatrix<float>, double,
                                      HostMatrixMut<double>);
template void score_accumulate<double>(HostMatrix<double>, HostMatrix<double>, double,
                                       HostMatrixMut<double>);

void linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out) {
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < bt.cols; ++j) {
      float c = bias != nullptr ? bias[j] : 0.0f;
      for (int64_t q = 0; q < a.cols; ++q) c = std::fma(a.row(i)[q], bt.row(q)[j], c);
      out.row(i)[j] = c;
    }
}

std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k) {
  std::vector<TopK> result(static_cast<size_t>(x.cols));
  const int64_t kk = std::min(k, x.rows);
  for (int64_t j = 0; j < x.cols; ++j) {
    std::vector<TopEntry> all;
    for (int64_t i = 0; i < x.rows; ++i) all.push_back({i, x.row(i)[j]});
    auto hi = all;
    std::stable_sort(hi.begin(), hi.end(),
                     [](const TopEntry& a, const TopEntry& b) { return a.score > b.score; });
    auto lo = all;
    std::stable_sort(lo.begin(), lo.end(),
                     [](const TopEntry& a, const TopEntry& b) { return a.score < b.score; });
    result[static_cast<size_t>(j)].proponents.assign(hi.begin(), hi.begin() + kk);
    result[static_cast<size_t>(j)].opponents.assign(lo.begin(), lo.begin() + kk);
  }
  return result;
}

}  // namespace attrace::kernels::reference
