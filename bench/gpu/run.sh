#!/usr/bin/env bash
# One command for a fresh CUDA machine: builds kernels/ with the CUDA backend plus its tests and
# benchmarks (ATTRACE_KERNELS_ONLY: no LibTorch or HDF5 needed), runs every test (the CPU-vs-CUDA
# parity tests included) and the GPU benchmarks, prints a side-by-side table, and when TRAK's
# source is carried (.trak-src) times its fast_jl on the same cells in the same run.
#
#   bench/gpu/pack-deps.sh      # once, on the project machine: .debs for GoogleTest/Benchmark
#   bench/gpu/run.sh [OUTDIR]   # on the GPU machine (device tool: carry .gpu-deps, .trak-src); OUTDIR
#                               # defaults to $OUT, else build-gpu/out
# Logs (configure, build, ctest, cuda_test, bench_gpu JSON, table) are written to OUTDIR.
# Without a GPU it still builds and runs the tests (GPU tests skip) and says so; exit code is
# non-zero if the build or any test fails.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${OUT:-$root/build-gpu/out}}
build=${ATTRACE_GPU_BUILD:-$root/build-gpu}
prefix=/tmp/attrace-gpu-deps
mkdir -p "$out"

# Dependencies the image lacks: unpack the carried .debs into a private prefix (never into /).
if compgen -G "$root/.gpu-deps/*.deb" > /dev/null; then
  mkdir -p "$prefix"
  for f in "$root"/.gpu-deps/*.deb; do dpkg -x "$f" "$prefix"; done
fi
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

gpu=no
arch="80;90"
if command -v nvidia-smi > /dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1; then
  gpu=yes
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
fi
gen=()
command -v ninja > /dev/null && gen=(-G Ninja)
echo "== configure (GPU: $gpu, CUDA architectures: $arch)"
cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DATTRACE_KERNELS_ONLY=ON -DATTRACE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_PREFIX_PATH="$prefix/usr" > "$out/configure.log" 2>&1 ||
  { tail -30 "$out/configure.log"; exit 1; }
grep -E "CUDA backend|kernels BLAS|CPU benchmarks" "$out/configure.log" || true
echo "== build"
cmake --build "$build" -j"$(nproc)" > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }

echo "== tests"
status=0
(cd "$build" && ctest --no-tests=error --output-on-failure -j4) > "$out/ctest.log" 2>&1 || status=1
grep -E "tests passed|tests failed|\(Failed\)|\(Skipped\)" "$out/ctest.log" | sed 's/^/   /' | head -40
# The parity tests again, verbose: they print the measured CPU-vs-CUDA differences.
"$build/tests/cuda_test" > "$out/cuda_test.log" 2>&1 || status=1
grep -E "^\[ (gemm|entries)|PASSED|FAILED|SKIPPED" "$out/cuda_test.log" | sed 's/^/   /' | head -30

# compute-sanitizer over the parity tests (small shapes): out-of-bounds accesses (memcheck) and
# shared-memory races (racecheck) in every kernel. ATTRACE_GPU_SANITIZE=0 skips it.
if [ "$gpu" = yes ] && [ "${ATTRACE_GPU_SANITIZE:-1}" = 1 ] && command -v compute-sanitizer > /dev/null; then
  echo "== compute-sanitizer"
  small='Cuda.SqnormBitIdentical:Cuda.SegmentedRowSumBitIdentical:Cuda.CanonicalScoreBitIdentical:Cuda.FmaScoreBitIdentical:Cuda.KroneckerBitIdentical:Cuda.ChunkedProjectionBitIdentical'
  for tool in memcheck racecheck; do
    timeout "${ATTRACE_GPU_SANITIZE_TIMEOUT:-120}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "$build/tests/cuda_test" --gtest_filter="$small" > "$out/sanitizer-$tool.log" 2>&1
    rc=$?
    echo "   $tool: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer-$tool.log" | tail -1)"
    [ $rc -eq 0 ] || [ $rc -eq 124 ] || status=1
  done
fi

if [ "$gpu" = yes ]; then
  echo "== benchmarks (cells over ATTRACE_GPU_BENCH_MAX_TFLOP=${ATTRACE_GPU_BENCH_MAX_TFLOP:-250} TFLOP skipped; stops after ${ATTRACE_GPU_BENCH_TIMEOUT:-300} s)"
  timeout "${ATTRACE_GPU_BENCH_TIMEOUT:-300}" "$build/bench/bench_gpu" --benchmark_filter="${ATTRACE_GPU_BENCH_FILTER:-.}" --benchmark_out="$out/bench_gpu.json" \
    --benchmark_out_format=json > "$out/bench_gpu.log" 2>&1 || { tail -20 "$out/bench_gpu.log"; status=1; }
  python3 "$root/bench/gpu/table.py" "$out/bench_gpu.json" | tee "$out/table.txt"
  # TRAK's fast_jl on the same cells, same machine, same call (a benchmark peer; its source is
  # carried in .trak-src, bench/gpu/trak/README.md). ATTRACE_GPU_TRAK=0 skips it.
  if [ "${ATTRACE_GPU_TRAK:-1}" = 1 ] && [ -d "$root/.trak-src/fast_jl" ]; then
    echo "== TRAK fast_jl (bench/gpu/trak/run_fast_jl.sh)"
    ATTRACE_JSON="$out/bench_gpu.json" "$root/bench/gpu/trak/run_fast_jl.sh" "$out/trak" || status=1
  fi
else
  echo "== no GPU on this machine: GPU tests skipped, benchmarks not run"
fi
exit $status
