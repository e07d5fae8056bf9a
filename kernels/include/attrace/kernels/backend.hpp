#pragma once
// The compute backend interface the engine calls. The CPU backend is always built; the CUDA
// backend is registered when the build found nvcc and is chosen at run time when a GPU exists.
// Every operation here is deterministic: results do not depend on threads, blocks or batch
// composition, and the CPU and CUDA versions of each scoring dot product (the FMA order, the
// canonical order) use the same order of operations (docs/architecture.md, "Fixed-order dot
// products and determinism"), so they agree bit for bit.
#include <attrace/kernels/matrix.hpp>
#include <attrace/kernels/philox.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace attrace::kernels {

/// Number of partial sums in the canonical dot product: element p goes to lane p % kDotLanes,
/// lanes are combined pairwise ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
inline constexpr int kDotLanes = 8;

/// The FMA dot product (the default scoring order, docs/architecture.md "FMA dot product"): the
/// feature axis is cut into chunks of kFmaChunk elements; within a chunk, element q is added to
/// float32 lane q % 8 with one fused multiply-add (fmaf, ascending q); each chunk's eight lanes
/// are widened to float64 and combined as ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)); chunk values
/// are added in ascending order to a float64 total that starts at 0.
inline constexpr int64_t kFmaChunk = 512;

/// bfloat16 storage (the upper half of an IEEE float32).
struct BFloat16 {
  uint16_t bits = 0;
};
/// IEEE half-precision storage.
struct Half {
  uint16_t bits = 0;
};

/// Arithmetic of the GEMM scoring path (attribution.gemm_math).
enum class GemmMath : int { ieee = 0, tf32 = 1, bf16 = 2 };

/// "ieee", "tf32", "bf16".
const char* to_string(GemmMath m);
/// Parses a GemmMath name; InputError naming the value otherwise.
GemmMath parse_gemm_math(const std::string& name);

/// One proponent/opponent entry of a top-k list.
struct TopEntry {
  int64_t row = -1;  ///< training example index
  double score = 0;  ///< its score for this query
};

/// Top-k lists of one query: proponents (largest scores first) and opponents (smallest first).
/// Ties are broken by row index ascending, so the lists are a pure function of the scores.
struct TopK {
  std::vector<TopEntry> proponents;
  std::vector<TopEntry> opponents;
};

/// The operations attrace needs from a compute device.
class Backend {
 public:
  virtual ~Backend() = default;
  /// Short name recorded in manifests ("cpu", "cuda").
  virtual std::string name() const = 0;

  /// out[i][j] += alpha * dot(a[i], b[j]), with products and sums in float64 in the canonical
  /// order. a: n x p, b: m x p, out: n x m.
  virtual void score_accumulate(HostMatrix<float> a, HostMatrix<float> b, double alpha,
                                HostMatrixMut<double> out) = 0;
  /// Same, for float64 features.
  virtual void score_accumulate(HostMatrix<double> a, HostMatrix<double> b, double alpha,
                                HostMatrixMut<double> out) = 0;

  /// out[i][j] += alpha * fma_dot(a[i], b[j]) (the FMA order above). A pure function of the two
  /// rows: the same bits for any tile, batch, thread count and backend (CPU and CUDA).
  virtual void score_accumulate_fma(HostMatrix<float> a, HostMatrix<float> b, double alpha,
                                    HostMatrixMut<double> out) = 0;
  /// out[i] += alpha * fma_dot(a[i], a[i]) (self-influence in the FMA order).
  virtual void sqnorm_accumulate_fma(HostMatrix<float> a, double alpha, double* out) = 0;

  /// Linear-layer product out = a bt + bias in the Linear FMA order (docs/architecture.md "Linear
  /// FMA order"): a is rows x k, bt is k x m (the weight transposed), bias has m entries or is
  /// null, out is rows x m and is overwritten (it must not overlap the inputs). Each output is one
  /// float32 chain: c = bias[j] (+0 without bias), then c = fmaf(a[i][q], bt[q][j], c) for
  /// q = 0..k-1 ascending, and out[i][j] = c. No split accumulators and no reassociation, so a
  /// row's result depends only on that row, and every backend, instruction set, blocking and
  /// thread count gives the same bits. InputError when the shapes do not match.
  virtual void linear_fma(HostMatrix<float> a, HostMatrix<float> bt, const float* bias, HostMatrixMut<float> out) = 0;

  /// Fast scoring through a GEMM library (OpenBLAS on CPU, cuBLAS on CUDA), one call per tile:
  /// out[i][j] += alpha * (a b^T)[i][j] with float32 sums in the library's order, added to out in
  /// float64. `math` picks the arithmetic: ieee (float32 products and sums), tf32 or bf16 (each
  /// input first rounded with rounding.hpp, products exact, float32 sums; on CUDA the tensor
  /// cores). Repeatable for the same shapes on the same backend, but a row's result may change in
  /// the last bits with the number of rows in the call and differs slightly across backends, so
  /// the canonical kernel stays the default for reports. InputError when this build has no BLAS.
  virtual void score_accumulate_blas(HostMatrix<float> a, HostMatrix<float> b, double alpha, GemmMath math,
                                     HostMatrixMut<double> out) = 0;
  /// Same for float64 features (dgemm; math must be ieee).
  virtual void score_accumulate_blas(HostMatrix<double> a, HostMatrix<double> b, double alpha, HostMatrixMut<double> out) = 0;

  /// out[i] += alpha * dot(a[i], a[i]) in the canonical order (self-influence).
  virtual void sqnorm_accumulate(HostMatrix<float> a, double alpha, double* out) = 0;
  /// Same, for float64 features.
  virtual void sqnorm_accumulate(HostMatrix<double> a, double alpha, double* out) = 0;

  /// out[segment[i]][j] += x[i][j], rows visited in ascending i (segment-wise sums in a fixed
  /// order). segment values must lie in [0, out.rows).
  virtual void segmented_row_sum(HostMatrix<double> x, const int64_t* segment,
                                 HostMatrixMut<double> out) = 0;

  /// For each column j of x (n x m): the k largest and k smallest entries with their rows.
  virtual std::vector<TopK> column_topk(HostMatrix<double> x, int64_t k) = 0;

  /// Dense random projection out (B x k) = g (B x p) P, with P (p x k) generated on the fly from
  /// `spec` (never stored). Per output: float32 sum over rows q of P in ascending order of
  /// g[b][q] * e[q][j] (e = +-1, or the unscaled Gaussian rounded to float32), then times the
  /// 1/sqrt(k) scale. A row's output depends only on that row. out.cols must equal spec.k.
  virtual void project_dense(HostMatrix<float> g, const ProjectionSpec& spec, HostMatrixMut<float> out) = 0;
  /// Same for bfloat16 inputs (converted exactly to float32 on load).
  virtual void project_dense(HostMatrix<BFloat16> g, const ProjectionSpec& spec, HostMatrixMut<float> out) = 0;
  /// Same for float16 inputs (converted exactly to float32 on load).
  virtual void project_dense(HostMatrix<Half> g, const ProjectionSpec& spec, HostMatrixMut<float> out) = 0;

  /// Kronecker projection of a linear layer's per-example gradients without forming them:
  /// x: (B*T) x d_in layer inputs, delta: (B*T) x d_out output gradients (T positions per
  /// example), out: B x (k_out*k_in) with out[b][a*k_in + c] = sum_t (P_out^T delta_bt)[a] *
  /// (P_in^T x_bt)[c], t ascending. Equals the dense projection of the flattened d_out x d_in
  /// gradient with P = P_out (x) P_in.
  virtual void project_kronecker(HostMatrix<float> x, HostMatrix<float> delta, int64_t positions, const ProjectionSpec& in,
                                 const ProjectionSpec& out_spec, HostMatrixMut<float> out) = 0;
};

/// The CPU backend (always available), running its loops on `threads` OpenMP threads (0: one
/// per hardware thread). The thread count changes speed only, never a result. It is explicit
/// because LibTorch lowers the process-wide OpenMP default to its own intra-op setting.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

/// True when this build has a BLAS for score_accumulate_blas.
bool blas_compiled();

/// True when this build includes the CUDA backend.
bool cuda_compiled();
/// Number of usable CUDA devices (0 when the build has no CUDA or the machine has no GPU).
int cuda_device_count();

/// Backend by name: "cpu", "cuda" (throws InputError if unavailable) or "auto" (cuda if a GPU
/// is present, else cpu).
std::unique_ptr<Backend> make_backend(const std::string& kind);

}  // namespace attrace::kernels
