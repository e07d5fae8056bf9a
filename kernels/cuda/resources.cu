// cuda::Resources: the device, stream, cuBLAS handle, workspace and scratch arena of the CUDA
// backend, created once and reused by every call.
#include "resources.cuh"

namespace attrace::kernels::cuda {

Resources::Impl::Impl(int device_id) : device(device_id) {
  ATTRACE_CUDA_TRY(cudaSetDevice(device));
  ATTRACE_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  try {
    ATTRACE_CUBLAS_TRY(cublasCreate(&blas));
    ATTRACE_CUBLAS_TRY(cublasSetStream(blas, stream));
    workspace = DeviceBuffer(kCublasWorkspace);
    ATTRACE_CUBLAS_TRY(cublasSetWorkspace(blas, workspace.get(), kCublasWorkspace));
  } catch (...) {
    if (blas) cublasDestroy(blas);
    ATTRACE_CUDA_TRY_NO_THROW(cudaStreamDestroy(stream));
    throw;
  }
}

Resources::Impl::~Impl() {
  // Queued work may still use the arena or the workspace: let it finish before anything is freed.
  ATTRACE_CUDA_TRY_NO_THROW(cudaStreamSynchronize(stream));
  if (blas) static_cast<void>(cublasDestroy(blas));
  arena.release();
  host_arena.release();
  workspace.release();
  ATTRACE_CUDA_TRY_NO_THROW(cudaStreamDestroy(stream));
}

void Resources::Impl::activate() const {
  int current = -1;
  ATTRACE_CUDA_TRY(cudaGetDevice(&current));
  if (current != device) ATTRACE_CUDA_TRY(cudaSetDevice(device));
}

void* Resources::Impl::scratch(const ScratchPlan& plan) {
  if (plan.bytes() > arena.bytes()) {
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream));
    arena.release();  // before the new allocation: the old block's memory is reused
    arena = DeviceBuffer(plan.bytes());
  }
  return arena.get();
}

void* Resources::Impl::host_scratch(const ScratchPlan& plan) {
  if (plan.bytes() > host_arena.bytes()) {
    ATTRACE_CUDA_TRY(cudaStreamSynchronize(stream));
    host_arena.release();
    host_arena = PinnedBuffer(plan.bytes());
  }
  return host_arena.get();
}

Resources::Resources(int device) : impl_(std::make_unique<Impl>(device)) {}
Resources::~Resources() = default;
Resources::Resources(Resources&&) noexcept = default;
Resources& Resources::operator=(Resources&&) noexcept = default;

int Resources::device() const { return impl_->device; }
void* Resources::stream() const { return impl_->stream; }
void Resources::synchronize() const { ATTRACE_CUDA_TRY(cudaStreamSynchronize(impl_->stream)); }
size_t Resources::scratch_bytes() const { return impl_->arena.bytes(); }
Resources::Impl& Resources::impl() const { return *impl_; }

}  // namespace attrace::kernels::cuda
