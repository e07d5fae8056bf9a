#pragma once
// CUDA-side state of cuda::Resources and the helpers every kernels/cuda file shares: the device
// buffer owner, the grow-only scratch arena with its typed layout, host<->device copies of matrix
// views, and launch-size arithmetic. nvcc only.
#include "cuda_check.cuh"

#include <attrace/kernels/cuda_device.hpp>
#include <attrace/kernels/matrix.hpp>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

namespace attrace::kernels::cuda {

/// Move-only owner of memory from a CUDA allocator pair (device or page-locked host memory).
template <cudaError_t (*Allocate)(void**, size_t), cudaError_t (*Free)(void*)>
class CudaMemory {
 public:
  CudaMemory() = default;
  explicit CudaMemory(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) ATTRACE_CUDA_TRY(Allocate(&ptr_, bytes_));
  }
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;
  CudaMemory(CudaMemory&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  CudaMemory& operator=(CudaMemory&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  ~CudaMemory() { release(); }
  /// Frees the allocation now.
  void release() noexcept {
    if (ptr_) ATTRACE_CUDA_TRY_NO_THROW(Free(ptr_));
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

/// Device memory.
using DeviceBuffer = CudaMemory<cudaMalloc, cudaFree>;
/// Page-locked host memory: host <-> device copies from it run asynchronously and at full bus speed.
using PinnedBuffer = CudaMemory<cudaMallocHost, cudaFreeHost>;

/// Where one typed slice of a scratch block starts (bytes from the block's base).
template <class T>
struct ScratchSlot {
  size_t offset = 0;
  int64_t count = 0;
};

/// Lays out the typed slices one call needs in a single scratch block (each 256-byte aligned),
/// with 64-bit, overflow-checked sizes. All slices of a call come from one block, taken once, so
/// a growth of the arena can never move a slice that is still in use.
class ScratchPlan {
 public:
  /// Adds `count` elements of T; InputError if the size overflows.
  template <class T>
  ScratchSlot<T> add(int64_t count) {
    ATTRACE_CHECK(count >= 0 && static_cast<uint64_t>(count) <= (kMax - bytes_) / sizeof(T), InputError,
                  "device scratch: " + std::to_string(count) + " elements of " + std::to_string(sizeof(T)) +
                      " bytes overflow the addressable size");
    const ScratchSlot<T> slot{bytes_, count};
    bytes_ += static_cast<size_t>(count) * sizeof(T);
    bytes_ = (bytes_ + kAlign - 1) / kAlign * kAlign;
    return slot;
  }
  /// Total bytes of the block.
  size_t bytes() const { return bytes_; }

 private:
  static constexpr size_t kAlign = 256;
  static constexpr uint64_t kMax = uint64_t{1} << 62;
  size_t bytes_ = 0;
};

/// Device pointer of a slot inside a block taken for its plan.
template <class T>
T* at(void* base, ScratchSlot<T> slot) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + slot.offset);
}

/// cuBLAS workspace, set explicitly so that its size (which can change the algorithm cuBLAS picks,
/// hence the bits of a GEMM) is fixed.
constexpr size_t kCublasWorkspace = size_t{32} << 20;

struct Resources::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DeviceBuffer workspace;
  DeviceBuffer arena;
  PinnedBuffer host_arena;

  explicit Impl(int device_id);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  /// Makes this device current on the calling thread when it is not (host threads keep their own
  /// current device; a cudaGetDevice is cheap, a cudaSetDevice per call is not needed).
  void activate() const;
  /// A device block of at least plan.bytes(), valid until the next scratch() call. The arena
  /// grows (after waiting for the stream, whose queued work may still read the old block) and
  /// never shrinks.
  void* scratch(const ScratchPlan& plan);
  /// The same for page-locked host staging memory (grow-only, valid until the next call).
  void* host_scratch(const ScratchPlan& plan);
};

/// Device view of a scratch slot as a dense rows x cols matrix.
template <class T>
DeviceMatrixMut<T> slot_matrix(void* base, ScratchSlot<T> slot, int64_t rows, int64_t cols) {
  return {at(base, slot), rows, cols, cols};
}

/// Enqueues a copy between two matrix views of the same shape (one contiguous copy when both are
/// dense, else a strided 2D copy).
template <class T>
void copy_matrix(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t rows, int64_t cols, cudaMemcpyKind kind,
                 cudaStream_t s) {
  if (rows == 0 || cols == 0) return;
  if (ld_dst == cols && ld_src == cols) {
    ATTRACE_CUDA_TRY(cudaMemcpyAsync(dst, src, static_cast<size_t>(rows * cols) * sizeof(T), kind, s));
    return;
  }
  ATTRACE_CUDA_TRY(cudaMemcpy2DAsync(dst, static_cast<size_t>(ld_dst) * sizeof(T), src, static_cast<size_t>(ld_src) * sizeof(T),
                                     static_cast<size_t>(cols) * sizeof(T), static_cast<size_t>(rows), kind, s));
}
/// Enqueues a host -> device copy of `src` into `dst` (same shape).
template <class T>
void copy_in(DeviceMatrixMut<T> dst, HostMatrix<T> src, cudaStream_t s) {
  copy_matrix(dst.data, dst.ld, src.data, src.ld, src.rows, src.cols, cudaMemcpyHostToDevice, s);
}
/// Enqueues a device -> host copy of `src` into `dst` (same shape).
template <class T>
void copy_out(HostMatrixMut<T> dst, DeviceMatrix<T> src, cudaStream_t s) {
  copy_matrix(dst.data, dst.ld, src.data, src.ld, dst.rows, dst.cols, cudaMemcpyDeviceToHost, s);
}

/// Blocks for a grid-stride loop over `work` items with `threads` per block (at least one, at most
/// 2^20: the loop covers the rest).
inline unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t{1} << 20));
}

/// Most blocks one launch may have along grid.y (and grid.z).
constexpr int64_t kMaxGridY = 65535;

/// InputError unless the view's shape and stride are usable (ld >= cols, sizes >= 0).
template <class View>
void check_view(const View& v, const char* what) {
  ATTRACE_CHECK(v.rows >= 0 && v.cols >= 0 && v.ld >= v.cols && (v.rows == 0 || v.cols == 0 || v.data != nullptr),
                InputError,
                std::string(what) + ": bad matrix view (" + std::to_string(v.rows) + "x" + std::to_string(v.cols) +
                    ", ld " + std::to_string(v.ld) + ")");
}

}  // namespace attrace::kernels::cuda
