// GPU benchmarks for the projection kernels, every comparison measured in the same run:
//   project/<in>/B/p/k  attrace's on-the-fly dense projection (P never stored), float32 or
//                       bfloat16 input, float32 sums in the canonical order (CUDA cores);
//   gemm/<in>/B/p/k     a cuBLAS GEMM of the same shape with P stored (float32: CUBLAS_COMPUTE_32F;
//                       bf16: tensor cores, float32 sums). Where P does not fit on the GPU the GEMM
//                       runs over the first p_chunk rows of P and the rate of that chunk is reported
//                       (the label says so);
//   copy/<in>/B/p       a device-to-device copy of the projection's input (GB/s counts the bytes
//                       read and written);
//   kron/...            Kronecker projection of one linear layer (B examples x T positions)
//   backward/...        that layer's own backward pass: dX = dY W and dW = dY^T X, two float32
//                       cuBLAS GEMMs.
// Everything runs on one cuda::Resources stream (the one the backend uses); times come from CUDA
// events recorded on that stream around each launch (manual time). Cells whose work exceeds
// ATTRACE_GPU_BENCH_MAX_TFLOP (default 250 TFLOP per iteration) or whose buffers exceed 70% of
// free GPU memory are skipped with a message, never silently. bench/gpu/run.sh builds and runs
// this binary and prints the side-by-side table; results: bench/RESULTS.md.
#include <attrace/kernels/cuda_device.hpp>

#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace ak = attrace::kernels;
namespace kc = attrace::kernels::cuda;

namespace {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Failure(std::string(what) + ": " + cudaGetErrorString(e));
}
void blas_ok(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Failure(std::string(what) + ": " + cublasGetStatusString(s));
}

// The resources every benchmark runs on (created in main once a device is known to exist).
kc::Resources* g_res = nullptr;
cudaStream_t stream() { return static_cast<cudaStream_t>(g_res->stream()); }

template <class T>
struct Device {
  T* p = nullptr;
  explicit Device(size_t n) { cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() { cudaFree(p); }
};

// Pseudo-random values in [-1, 1) from the element index (no host transfer of large inputs).
__device__ __forceinline__ float hashed(int64_t i) {
  uint64_t z = static_cast<uint64_t>(i) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<float>((z ^ (z >> 31)) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}
__global__ void fill_kernel(float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = hashed(i);
}
__global__ void fill_kernel(ak::BFloat16* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i].bits = static_cast<uint16_t>(__float_as_uint(hashed(i)) >> 16);
}
template <class T>
void fill(T* x, int64_t n) {
  fill_kernel<<<4096, 256, 0, stream()>>>(x, n);
  cuda_ok(cudaGetLastError(), "fill");
}

// Times `launch` with CUDA events, after one warm-up unless a launch is long anyway.
template <class F>
void timed(benchmark::State& state, F&& launch, bool warm_up = true) {
  cudaEvent_t a, b;
  cuda_ok(cudaEventCreate(&a), "event");
  cuda_ok(cudaEventCreate(&b), "event");
  if (warm_up) launch();
  cuda_ok(cudaStreamSynchronize(stream()), "warm-up");
  for (auto _ : state) {
    cuda_ok(cudaEventRecord(a, stream()), "record");
    launch();
    cuda_ok(cudaEventRecord(b, stream()), "record");
    cuda_ok(cudaEventSynchronize(b), "sync");
    float ms = 0;
    cuda_ok(cudaEventElapsedTime(&ms, a, b), "elapsed");
    state.SetIterationTime(static_cast<double>(ms) / 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

double max_flop() {
  const char* v = std::getenv("ATTRACE_GPU_BENCH_MAX_TFLOP");
  return (v ? std::atof(v) : 250.0) * 1e12;
}

// Work above which a cell is timed once, without a warm-up (seconds per launch).
constexpr double kLong = 50e12;

int64_t iterations(int64_t batch, int64_t p, int64_t k) { return 2.0 * batch * p * k > kLong ? 1 : 3; }

bool fits(benchmark::State& state, double bytes, double flop) {
  size_t free_b = 0, total = 0;
  cuda_ok(cudaMemGetInfo(&free_b, &total), "cudaMemGetInfo");
  if (bytes > 0.7 * static_cast<double>(free_b)) {
    state.SkipWithError(("skipped: needs " + std::to_string(bytes / 1e9) + " GB of GPU memory").c_str());
    return false;
  }
  if (flop > max_flop()) {
    state.SkipWithError(("skipped: " + std::to_string(flop / 1e12) + " TFLOP per iteration > ATTRACE_GPU_BENCH_MAX_TFLOP").c_str());
    return false;
  }
  return true;
}

void rates(benchmark::State& state, double flop, double bytes, double examples) {
  using C = benchmark::Counter;
  state.counters["TFLOP/s"] = C(flop / 1e12, C::kIsIterationInvariantRate);
  state.counters["GB/s"] = C(bytes / 1e9, C::kIsIterationInvariantRate);
  state.counters["ex/s"] = C(examples, C::kIsIterationInvariantRate);
}

// The baseline GEMMs' handle: on the resources' stream, plain float32 arithmetic (no TF32) set
// explicitly, as the backend does.
cublasHandle_t blas() {
  static cublasHandle_t h = [] {
    cublasHandle_t x = nullptr;
    blas_ok(cublasCreate(&x), "cublasCreate");
    blas_ok(cublasSetStream(x, stream()), "cublasSetStream");
    blas_ok(cublasSetMathMode(x, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    return x;
  }();
  return h;
}

template <class T>
void BM_Project(benchmark::State& state, int64_t batch, int64_t p, int64_t k) try {
  const double flop = 2.0 * batch * p * k, in_bytes = static_cast<double>(batch) * p * sizeof(T);
  if (!fits(state, in_bytes + 4.0 * batch * k, flop)) return;
  Device<T> g(static_cast<size_t>(batch * p));
  Device<float> out(static_cast<size_t>(batch * k));
  fill(g.p, batch * p);
  const ak::ProjectionSpec spec{7, 0, k, ak::ProjectionKind::rademacher};
  timed(state, [&] { kc::project_dense_device(*g_res, kc::device_view(g.p, batch, p), spec, kc::device_view_mut(out.p, batch, k)); },
        flop < kLong);
  rates(state, flop, in_bytes, static_cast<double>(batch));
} catch (const std::exception& e) {
  state.SkipWithError(e.what());
}

template <class T>
void BM_GemmStored(benchmark::State& state, int64_t batch, int64_t p, int64_t k) try {
  // P (p x k) stored; over the first `rows` rows of P when the whole does not fit (16 GiB cap).
  const double cap = 16.0 * (1u << 30);
  const int64_t rows = std::min<int64_t>(p, static_cast<int64_t>(cap / (static_cast<double>(k) * sizeof(T))));
  const double flop = 2.0 * batch * rows * k;
  if (!fits(state, static_cast<double>(sizeof(T)) * (batch * rows + rows * k) + 4.0 * batch * k, flop)) return;
  if (rows < p) state.SetLabel("P in chunks of " + std::to_string(rows) + " rows: rate of one chunk");
  Device<T> a(static_cast<size_t>(batch * rows)), pm(static_cast<size_t>(rows * k));
  Device<float> c(static_cast<size_t>(batch * k));
  fill(a.p, batch * rows);
  fill(pm.p, rows * k);
  const cudaDataType_t type = sizeof(T) == 4 ? CUDA_R_32F : CUDA_R_16BF;
  const float one = 1.0f, zero = 0.0f;
  // Row-major C (B x k) = A (B x rows) P (rows x k), as column-major C^T = P^T A^T.
  timed(state, [&] {
    blas_ok(cublasGemmEx_64(blas(), CUBLAS_OP_N, CUBLAS_OP_N, k, batch, rows, &one, pm.p, type, k, a.p, type, rows, &zero, c.p,
                            CUDA_R_32F, k, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
  }, flop < kLong);
  rates(state, flop, static_cast<double>(batch) * rows * sizeof(T), static_cast<double>(batch) * rows / p);
} catch (const std::exception& e) {
  state.SkipWithError(e.what());
}

template <class T>
void BM_Copy(benchmark::State& state, int64_t batch, int64_t p) try {
  const double bytes = static_cast<double>(batch) * p * sizeof(T);
  if (!fits(state, 2 * bytes, 0)) return;
  Device<T> src(static_cast<size_t>(batch * p)), dst(static_cast<size_t>(batch * p));
  timed(state, [&] { cuda_ok(cudaMemcpyAsync(dst.p, src.p, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream()), "copy"); });
  rates(state, 0, 2 * bytes, static_cast<double>(batch));
} catch (const std::exception& e) {
  state.SkipWithError(e.what());
}

// Scoring n train x m query rows of width p: attrace's FMA-order kernel (the default, bit-identical
// to the CPU), its canonical float64 kernel, and a cuBLAS float32 GEMM of the same shape
// (CUBLAS_COMPUTE_32F, no TF32) writing a float32 matrix.
enum class Scorer { fma, canonical, sgemm };
void BM_Score(benchmark::State& state, Scorer which, int64_t n, int64_t m, int64_t p) try {
  const double flop = 2.0 * n * m * p;
  if (!fits(state, 4.0 * (n + m) * p + 8.0 * n * m, flop)) return;
  Device<float> a(static_cast<size_t>(n * p)), b(static_cast<size_t>(m * p));
  Device<double> out(static_cast<size_t>(n * m));
  Device<float> out32(which == Scorer::sgemm ? static_cast<size_t>(n * m) : 1);
  fill(a.p, n * p);
  fill(b.p, m * p);
  cuda_ok(cudaMemsetAsync(out.p, 0, static_cast<size_t>(n * m) * sizeof(double), stream()), "memset");
  const float one = 1.0f, zero = 0.0f;
  timed(state, [&] {
    if (which == Scorer::fma)
      kc::score_accumulate_fma_device(*g_res, kc::device_view(a.p, n, p), kc::device_view(b.p, m, p), 1.0,
                                      kc::device_view_mut(out.p, n, m));
    else if (which == Scorer::canonical)
      kc::score_accumulate_device(*g_res, kc::device_view(a.p, n, p), kc::device_view(b.p, m, p), 1.0,
                                  kc::device_view_mut(out.p, n, m));
    else  // row-major out (n x m) = A B^T, as column-major out^T = B A^T
      blas_ok(cublasSgemm_64(blas(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, p, &one, b.p, p, a.p, p, &zero, out32.p, m), "sgemm");
  }, flop < kLong);
  rates(state, flop, 4.0 * (n + m) * p, static_cast<double>(n));
} catch (const std::exception& e) {
  state.SkipWithError(e.what());
}

struct Layer {
  int64_t batch, positions, d_in, d_out, k;
};

void BM_Kronecker(benchmark::State& state, Layer l) try {
  const int64_t rows = l.batch * l.positions;
  const auto side = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(l.k))));
  const int64_t k_out = std::min(l.d_out, side), k_in = std::min(l.d_in, std::max<int64_t>(1, l.k / k_out));
  const double flop = 2.0 * rows * (static_cast<double>(l.d_in) * k_in + static_cast<double>(l.d_out) * k_out + static_cast<double>(k_in) * k_out);
  if (!fits(state, 4.0 * rows * (l.d_in + l.d_out + k_in + k_out) + 4.0 * l.batch * k_in * k_out, flop)) return;
  Device<float> x(static_cast<size_t>(rows * l.d_in)), d(static_cast<size_t>(rows * l.d_out));
  Device<float> xp(static_cast<size_t>(rows * k_in)), dp(static_cast<size_t>(rows * k_out)), out(static_cast<size_t>(l.batch * k_in * k_out));
  fill(x.p, rows * l.d_in);
  fill(d.p, rows * l.d_out);
  const ak::ProjectionSpec in{7, 0, k_in, k_in == l.d_in ? ak::ProjectionKind::identity : ak::ProjectionKind::rademacher};
  const ak::ProjectionSpec ou{7, 1, k_out, k_out == l.d_out ? ak::ProjectionKind::identity : ak::ProjectionKind::rademacher};
  state.SetLabel("k_in " + std::to_string(k_in) + ", k_out " + std::to_string(k_out));
  timed(state, [&] {
    kc::project_kronecker_device(*g_res, kc::device_view(x.p, rows, l.d_in), kc::device_view(d.p, rows, l.d_out), l.positions, in, ou,
                                 kc::device_view_mut(xp.p, rows, k_in), kc::device_view_mut(dp.p, rows, k_out),
                                 kc::device_view_mut(out.p, l.batch, k_in * k_out));
  });
  rates(state, flop, 4.0 * rows * (l.d_in + l.d_out), static_cast<double>(l.batch));
} catch (const std::exception& e) {
  state.SkipWithError(e.what());
}

void BM_Backward(benchmark::State& state, Layer l) try {
  const int64_t rows = l.batch * l.positions;
  const double flop = 4.0 * rows * l.d_in * l.d_out;
  if (!fits(state, 4.0 * (2.0 * rows * (l.d_in + l.d_out) + 2.0 * l.d_in * l.d_out), flop)) return;
  Device<float> x(static_cast<size_t>(rows * l.d_in)), dy(static_cast<size_t>(rows * l.d_out)), w(static_cast<size_t>(l.d_out * l.d_in));
  Device<float> dx(static_cast<size_t>(rows * l.d_in)), dw(static_cast<size_t>(l.d_out * l.d_in));
  fill(x.p, rows * l.d_in);
  fill(dy.p, rows * l.d_out);
  fill(w.p, l.d_out * l.d_in);
  const float one = 1.0f, zero = 0.0f;
  timed(state, [&] {
    // dX (rows x d_in) = dY (rows x d_out) W (d_out x d_in): column-major dX^T = W^T dY^T.
    blas_ok(cublasSgemm_64(blas(), CUBLAS_OP_N, CUBLAS_OP_N, l.d_in, rows, l.d_out, &one, w.p, l.d_in, dy.p, l.d_out, &zero, dx.p, l.d_in),
            "dX");
    // dW (d_out x d_in) = dY^T X: column-major dW^T = X^T dY.
    blas_ok(cublasSgemm_64(blas(), CUBLAS_OP_N, CUBLAS_OP_T, l.d_in, l.d_out, rows, &one, x.p, l.d_in, dy.p, l.d_out, &zero, dw.p, l.d_in),
            "dW");
  });
  rates(state, flop, 4.0 * rows * (l.d_in + l.d_out), static_cast<double>(l.batch));
} catch (const std::exception& e) {
  state.SkipWithError(e.what());
}

std::string pretty(int64_t v) {
  if (v >= 1000 && v % 1000 == 0) {
    int e = 0;
    while (v % 10 == 0) v /= 10, ++e;
    return std::to_string(v) + "e" + std::to_string(e);
  }
  return std::to_string(v);
}

void register_all() {
  for (const int64_t batch : {8, 256})
    for (const int64_t p : {100000, 1000000, 10000000, 100000000}) {
      for (const char* in : {"f32", "bf16"}) {
        const bool bf = std::string(in) == "bf16";
        const std::string shape = "/B:" + pretty(batch) + "/p:" + pretty(p);
        for (const int64_t k : {512, 4096, 16384}) {
          const std::string cell = std::string(in) + shape + "/k:" + pretty(k);
          if (bf) {
            benchmark::RegisterBenchmark(("project/" + cell).c_str(), BM_Project<ak::BFloat16>, batch, p, k)->UseManualTime()->Iterations(iterations(batch, p, k));
            benchmark::RegisterBenchmark(("gemm/" + cell).c_str(), BM_GemmStored<ak::BFloat16>, batch, p, k)->UseManualTime()->Iterations(iterations(batch, p, k));
          } else {
            benchmark::RegisterBenchmark(("project/" + cell).c_str(), BM_Project<float>, batch, p, k)->UseManualTime()->Iterations(iterations(batch, p, k));
            benchmark::RegisterBenchmark(("gemm/" + cell).c_str(), BM_GemmStored<float>, batch, p, k)->UseManualTime()->Iterations(iterations(batch, p, k));
          }
        }
        if (bf)
          benchmark::RegisterBenchmark(("copy/" + std::string(in) + shape).c_str(), BM_Copy<ak::BFloat16>, batch, p)->UseManualTime()->Iterations(10);
        else
          benchmark::RegisterBenchmark(("copy/" + std::string(in) + shape).c_str(), BM_Copy<float>, batch, p)->UseManualTime()->Iterations(10);
      }
    }
  // Scoring: a projected tile (k = 1024 and 4096) and exact gradients of the digits MLP (p = 301,066).
  for (const auto& [n, m, p] : {std::tuple<int64_t, int64_t, int64_t>{16384, 4096, 1024}, {16384, 4096, 4096},
                                {1497, 300, 301066}}) {
    const std::string cell = "/n:" + pretty(n) + "/m:" + pretty(m) + "/p:" + pretty(p);
    benchmark::RegisterBenchmark(("score_fma" + cell).c_str(), BM_Score, Scorer::fma, n, m, p)->UseManualTime()->Iterations(5);
    benchmark::RegisterBenchmark(("score_canonical" + cell).c_str(), BM_Score, Scorer::canonical, n, m, p)->UseManualTime()->Iterations(3);
    benchmark::RegisterBenchmark(("score_sgemm" + cell).c_str(), BM_Score, Scorer::sgemm, n, m, p)->UseManualTime()->Iterations(5);
  }
  // Linear layers: an MLP layer (T = 1) and transformer-sized layers over sequences.
  for (const Layer l : {Layer{256, 1, 784, 256, 4096}, Layer{32, 128, 1024, 1024, 1024}, Layer{8, 512, 1024, 4096, 4096},
                        Layer{8, 512, 4096, 1024, 16384}}) {
    const std::string name = "/B:" + pretty(l.batch) + "/T:" + pretty(l.positions) + "/in:" + pretty(l.d_in) + "/out:" +
                             pretty(l.d_out) + "/k:" + pretty(l.k);
    benchmark::RegisterBenchmark(("kron" + name).c_str(), BM_Kronecker, l)->UseManualTime()->Iterations(10);
    benchmark::RegisterBenchmark(("backward" + name).c_str(), BM_Backward, l)->UseManualTime()->Iterations(10);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "bench_gpu: no CUDA device\n");
    return 3;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::AddCustomContext("gpu_sms", std::to_string(prop.multiProcessorCount));
  benchmark::AddCustomContext("gpu_memory_GiB", std::to_string(static_cast<double>(prop.totalGlobalMem) / (1u << 30)));
  kc::Resources res(0);
  g_res = &res;
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
