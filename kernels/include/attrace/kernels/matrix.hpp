#pragma once
// Host matrix views passed to kernels. Row-major, 64-bit sizes, a leading dimension in elements.
#include <cstdint>

namespace attrace::kernels {

/// Read-only view of a row-major host matrix (rows x cols, row stride `ld` elements).
template <class T>
struct HostMatrix {
  const T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  const T* row(int64_t i) const { return data + i * ld; }
};

/// Writable view of a row-major host matrix.
template <class T>
struct HostMatrixMut {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  T* row(int64_t i) const { return data + i * ld; }
  operator HostMatrix<T>() const { return {data, rows, cols, ld}; }  // NOLINT: views convert freely
};

/// Makes a dense (ld == cols) read-only view.
template <class T>
HostMatrix<T> view(const T* data, int64_t rows, int64_t cols) {
  return {data, rows, cols, cols};
}
/// Makes a dense (ld == cols) writable view.
template <class T>
HostMatrixMut<T> view_mut(T* data, int64_t rows, int64_t cols) {
  return {data, rows, cols, cols};
}

}  // namespace attrace::kernels
