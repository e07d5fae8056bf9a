// Epilogues on the GPU: per-tranche row sums and per-column top-k lists, each giving the CPU
// backend's exact answer (kernels/src/cpu_epilogues.cpp): sums in ascending row order per output,
// and top-k lists that are unique under the shared order of topk_order.hpp, however searched.
#include "host_ops.cuh"

#include <attrace/kernels/topk_order.hpp>

#include <cmath>
#include <string>

namespace attrace::kernels::cuda {
namespace {

// out[s][j] += x[r][j] for the rows r of segment s (rows[start[s] .. start[s+1]) ascending), one
// thread per (segment, column): the CPU twin's order for every output.
__global__ void segsum_kernel(const double* __restrict__ x, int64_t m, const int64_t* __restrict__ start,
                              const int64_t* __restrict__ rows, int64_t segments, double* __restrict__ out) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < segments * m;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = t / m, j = t % m;
    double acc = out[t];
    for (int64_t r = start[s]; r < start[s + 1]; ++r) acc = __dadd_rn(acc, x[rows[r] * m + j]);
    out[t] = acc;
  }
}

// Inserts (row, v) into a list kept best-first, holding at most kk entries.
__device__ void insert_ranked(TopEntry* list, int64_t& count, int64_t kk, int64_t row, double v, bool high) {
  if (count == kk && !ranks_before(v, row, list[kk - 1].score, list[kk - 1].row, high)) return;
  int64_t pos = count < kk ? count : kk - 1;
  while (pos > 0 && ranks_before(v, row, list[pos - 1].score, list[pos - 1].row, high)) {
    list[pos] = list[pos - 1];
    --pos;
  }
  list[pos].row = row;
  list[pos].score = v;
  if (count < kk) ++count;
}

constexpr int kTopCols = 32;     // columns per block (a warp reads 32 neighbouring scores)
constexpr int kTopSlices = 8;    // row slices per block
constexpr int kMaxSlices = 64;   // lists one merge thread reads (its head array)

// Phase 1: thread (column j, slice s) keeps the best kk entries of rows [s*chunk, (s+1)*chunk)
// of column j, scanning rows in ascending order; the first NaN row it meets is recorded.
__global__ void topk_partial_kernel(const double* __restrict__ x, int64_t n, int64_t m, int64_t slices, int64_t chunk,
                                    int64_t kk, TopEntry* __restrict__ prop, TopEntry* __restrict__ opp,
                                    int64_t* __restrict__ count, int64_t* __restrict__ nan_row) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTopCols + threadIdx.x;
  const int64_t s = static_cast<int64_t>(blockIdx.y) * kTopSlices + threadIdx.y;
  if (j >= m || s >= slices) return;
  const int64_t slot = j * slices + s;
  TopEntry* hp = prop + slot * kk;
  TopEntry* lo = opp + slot * kk;
  int64_t ch = 0, cl = 0, first_nan = -1;
  const int64_t r1 = min(n, (s + 1) * chunk);
  for (int64_t r = s * chunk; r < r1; ++r) {
    const double v = x[r * m + j];
    if (isnan(v)) {
      if (first_nan < 0) first_nan = r;
      continue;
    }
    insert_ranked(hp, ch, kk, r, v, true);
    insert_ranked(lo, cl, kk, r, v, false);
  }
  count[slot] = ch;  // ch == cl: both lists see every non-NaN row
  nan_row[slot] = first_nan;
}

// Phase 2: one thread per column merges its slices' lists (each best-first) into the best kk.
__global__ void topk_merge_kernel(const TopEntry* __restrict__ prop, const TopEntry* __restrict__ opp,
                                  const int64_t* __restrict__ count, int64_t m, int64_t slices, int64_t kk,
                                  TopEntry* __restrict__ best_high, TopEntry* __restrict__ best_low,
                                  int64_t* __restrict__ found) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  for (int side = 0; side < 2; ++side) {
    const bool high = side == 0;
    const TopEntry* lists = (high ? prop : opp) + j * slices * kk;
    TopEntry* dst = (high ? best_high : best_low) + j * kk;
    int64_t got = 0;
    int64_t head[kMaxSlices];  // slices <= kMaxSlices (the host caps it)
    for (int64_t s = 0; s < slices; ++s) head[s] = 0;
    while (got < kk) {
      int64_t pick = -1;
      for (int64_t s = 0; s < slices; ++s) {
        if (head[s] >= count[j * slices + s]) continue;
        const TopEntry& c = lists[s * kk + head[s]];
        if (pick < 0) {
          pick = s;
          continue;
        }
        const TopEntry& b = lists[pick * kk + head[pick]];
        if (ranks_before(c.score, c.row, b.score, b.row, high)) pick = s;
      }
      if (pick < 0) break;
      dst[got++] = lists[pick * kk + head[pick]];
      ++head[pick];
    }
    found[j] = got;  // the same for both sides: each list of a slice holds the same count
  }
}

template <class T>
void download(std::vector<T>& dst, const T* src, cudaStream_t s) {
  if (!dst.empty())
    ATTRACE_CUDA_TRY(cudaMemcpyAsync(dst.data(), src, dst.size() * sizeof(T), cudaMemcpyDeviceToHost, s));
}
template <class T>
void upload(T* dst, const std::vector<T>& src, cudaStream_t s) {
  if (!src.empty())
    ATTRACE_CUDA_TRY(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice, s));
}

}  // namespace

void segmented_row_sum_host(const Resources& res, HostMatrix<double> x, const int64_t* segment, HostMatrixMut<double> out) {
  ATTRACE_CHECK(out.cols == x.cols, InputError, "segmented_row_sum: column counts differ");
  // Rows of each segment in ascending order (a stable counting sort), validated like the CPU twin.
  std::vector<int64_t> start(static_cast<size_t>(out.rows) + 1, 0), rows(static_cast<size_t>(x.rows));
  for (int64_t i = 0; i < x.rows; ++i) {
    const int64_t s = segment[i];
    ATTRACE_CHECK(s >= 0 && s < out.rows, InputError,
                  "segmented_row_sum: row " + std::to_string(i) + " has segment " + std::to_string(s) + " outside [0, " +
                      std::to_string(out.rows) + ")");
    ++start[static_cast<size_t>(s) + 1];
  }
  for (size_t s = 0; s < static_cast<size_t>(out.rows); ++s) start[s + 1] += start[s];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < x.rows; ++i) rows[static_cast<size_t>(fill[static_cast<size_t>(segment[i])]++)] = i;
  if (x.rows == 0 || x.cols == 0 || out.rows == 0) return;
  Resources::Impl& r = res.impl();
  r.activate();
  ScratchPlan plan;
  const auto sx = plan.add<double>(x.rows * x.cols), so = plan.add<double>(out.rows * out.cols);
  const auto ss = plan.add<int64_t>(static_cast<int64_t>(start.size())), sr = plan.add<int64_t>(x.rows);
  void* base = r.scratch(plan);
  const auto dx = slot_matrix(base, sx, x.rows, x.cols);
  const auto dout = slot_matrix(base, so, out.rows, out.cols);
  copy_in(dx, x, r.stream);
  copy_in(dout, HostMatrix<double>(out), r.stream);
  upload(at(base, ss), start, r.stream);
  upload(at(base, sr), rows, r.stream);
  segsum_kernel<<<grid_for(out.rows * x.cols, 256), 256, 0, r.stream>>>(dx.data, x.cols, at(base, ss), at(base, sr),
                                                                         out.rows, dout.data);
  ATTRACE_CUDA_LAUNCH_CHECK(r.stream);
  copy_out(out, DeviceMatrix<double>(dout), r.stream);
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
}

std::vector<TopK> column_topk_host(const Resources& res, HostMatrix<double> x, int64_t k) {
  ATTRACE_CHECK(k >= 0, InputError, "column_topk: k must be >= 0, got " + std::to_string(k));
  const int64_t kk = std::min(k, x.rows), n = x.rows, m = x.cols;
  std::vector<TopK> result(static_cast<size_t>(m));
  if (kk == 0 || m == 0) return result;
  // Row slices per column: enough to keep the GPU busy, few enough that the per-slice lists
  // (2 x m x slices x kk entries) stay within 256 MiB and the merge reads at most 64 lists.
  const int64_t budget = (int64_t{256} << 20) / static_cast<int64_t>(2 * sizeof(TopEntry));
  int64_t slices = std::min<int64_t>({kMaxSlices, std::max<int64_t>(1, n / std::max<int64_t>(64, 4 * kk)),
                                      std::max<int64_t>(1, budget / (m * kk))});
  const int64_t chunk = (n + slices - 1) / slices;
  slices = (n + chunk - 1) / chunk;
  Resources::Impl& r = res.impl();
  r.activate();
  ScratchPlan plan;
  const auto sx = plan.add<double>(n * m);
  const auto sprop = plan.add<TopEntry>(m * slices * kk), sopp = plan.add<TopEntry>(m * slices * kk);
  const auto shigh = plan.add<TopEntry>(m * kk), slow = plan.add<TopEntry>(m * kk);
  const auto scount = plan.add<int64_t>(m * slices), snan = plan.add<int64_t>(m * slices), sfound = plan.add<int64_t>(m);
  void* base = r.scratch(plan);
  const auto dx = slot_matrix(base, sx, n, m);
  copy_in(dx, x, r.stream);
  const dim3 block(kTopCols, kTopSlices);
  const dim3 grid(static_cast<unsigned>((m + kTopCols - 1) / kTopCols),
                  static_cast<unsigned>((slices + kTopSlices - 1) / kTopSlices));
  topk_partial_kernel<<<grid, block, 0, r.stream>>>(dx.data, n, m, slices, chunk, kk, at(base, sprop), at(base, sopp),
                                                    at(base, scount), at(base, snan));
  ATTRACE_CUDA_LAUNCH_CHECK(r.stream);
  // The lowest NaN row, and in it the lowest column, as the CPU twin reports it.
  std::vector<int64_t> nans(static_cast<size_t>(m * slices));
  download(nans, at(base, snan), r.stream);
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
  int64_t nan_i = -1;
  for (const int64_t row : nans)
    if (row >= 0 && (nan_i < 0 || row < nan_i)) nan_i = row;
  if (nan_i >= 0) {
    int64_t nan_j = 0;
    while (!std::isnan(x.row(nan_i)[nan_j])) ++nan_j;
    throw NumericError("column_topk: NaN score at row " + std::to_string(nan_i) + ", column " + std::to_string(nan_j));
  }
  topk_merge_kernel<<<grid_for(m, 128), 128, 0, r.stream>>>(at(base, sprop), at(base, sopp), at(base, scount), m, slices,
                                                            kk, at(base, shigh), at(base, slow), at(base, sfound));
  ATTRACE_CUDA_LAUNCH_CHECK(r.stream);
  std::vector<TopEntry> high(static_cast<size_t>(m * kk)), low(static_cast<size_t>(m * kk));
  std::vector<int64_t> got(static_cast<size_t>(m));
  download(high, at(base, shigh), r.stream);
  download(low, at(base, slow), r.stream);
  download(got, at(base, sfound), r.stream);
  ATTRACE_CUDA_TRY(cudaStreamSynchronize(r.stream));
  for (int64_t j = 0; j < m; ++j) {
    ATTRACE_CHECK(got[static_cast<size_t>(j)] == kk, RuntimeFailure,
                  "column_topk: the GPU kept " + std::to_string(got[static_cast<size_t>(j)]) + " entries for column " +
                      std::to_string(j) + ", expected " + std::to_string(kk));
    auto& t = result[static_cast<size_t>(j)];
    t.proponents.assign(high.begin() + j * kk, high.begin() + (j + 1) * kk);
    t.opponents.assign(low.begin() + j * kk, low.begin() + (j + 1) * kk);
  }
  return result;
}

}  // namespace attrace::kernels::cuda
