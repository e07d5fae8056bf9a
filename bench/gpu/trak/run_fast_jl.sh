#!/usr/bin/env bash
# TRAK's fast_jl (MadryLab/trak, a benchmark peer, never an attrace dependency) on bench_gpu's
# dense-projection cells, on the GPU machine, in one command of under ~3.5 minutes (issue 10):
# builds the extension from .trak-src/fast_jl (exported by hand from the TRAK repository, git-ignored),
# times it and prints a table; results go to OUTDIR (fast_jl.json, build.log, bench.log).
#
#   bench/gpu/trak/run_fast_jl.sh [OUTDIR]       # device tool: carry [".trak-src"]; OUTDIR defaults to $OUT
#
# Settings (environment):
#   FAST_JL_SRC       the fast_jl source folder (default .trak-src/fast_jl of this checkout)
#   FAST_JL_BUILD     build folder (default /tmp/attrace-fast-jl)
#   FAST_JL_BUDGET_S  seconds from start after which no new cell starts (default 200)
#   FAST_JL_ARGS      extra arguments for `time_fast_jl.py bench` (e.g. "--dtypes f32 --tiles 264")
#   ATTRACE_JSON      bench_gpu JSON (or table.py text) with attrace's project/ cells, for a
#                     side-by-side column; default: bench/gpu/results/*/proj-table.txt, newest
set -uo pipefail
t0=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
src="${FAST_JL_SRC:-$root/.trak-src/fast_jl}"
build="${FAST_JL_BUILD:-/tmp/attrace-fast-jl}"
budget="${FAST_JL_BUDGET_S:-200}"
out="${1:-${OUT:-$root/build-trak/out}}"
py=python3
mkdir -p "$out" "$build"

die() { echo "run_fast_jl.sh: $*" >&2; exit 2; }
[[ "$budget" =~ ^[1-9][0-9]*$ ]] || die "FAST_JL_BUDGET_S must be a positive integer, got '$budget'"
"$py" "$here/time_fast_jl.py" check --src "$src" || die "no usable fast_jl source (carry .trak-src?)"
commit=""
[[ -f "$src/../COMMIT" ]] && commit="$(cat "$src/../COMMIT")"
echo "TRAK commit: ${commit:-unknown}"

# What the build will use; a missing piece is named here rather than deep in the build log.
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
command -v nvcc > /dev/null && nvcc --version | tail -2 | head -1 | sed 's/^/nvcc: /' || echo "nvcc: not on PATH (cpp_extension looks in CUDA_HOME, /usr/local/cuda)"
command -v ninja > /dev/null && echo "ninja: $(ninja --version)" || echo "ninja: not on PATH (falls back to setuptools build_ext)"
"$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" ||
  die "python3 cannot import torch with CUDA"
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')"
  export TORCH_CUDA_ARCH_LIST="${cap:-9.0}"
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST; log: $out/build.log)"
timeout 170 "$py" "$here/time_fast_jl.py" build --src "$src" --build-dir "$build" > "$out/build.log" 2>&1
rc=$?
if [[ $rc -ne 0 ]] && grep -qE '"AT_ASSERTM" is undefined|.AT_ASSERTM. was not declared' "$out/build.log"; then
  # Only for a torch without the deprecated AT_ASSERTM macro: same source through a wrapper.
  echo "   build failed on AT_ASSERTM; retrying through the compatibility wrapper"
  mv "$out/build.log" "$out/build-first.log"
  timeout 150 "$py" "$here/time_fast_jl.py" build --compat --src "$src" --build-dir "$build" > "$out/build.log" 2>&1
  rc=$?
fi
if [[ $rc -ne 0 ]]; then
  echo "fast_jl BUILD FAILED (exit $rc$([[ $rc -eq 124 ]] && echo ', timed out')); last 40 lines of $out/build.log:"
  [[ -f "$out/build-first.log" ]] && echo "(the first attempt, without the wrapper, is in $out/build-first.log)"
  tail -40 "$out/build.log"
  exit 1
fi
grep -E "^fast_jl built|^torch " "$out/build.log" | sed 's/^/   /'
echo "   build + checks: $(( $(date +%s) - t0 )) s"

attrace="${ATTRACE_JSON:-}"
if [[ -z "$attrace" ]]; then
  attrace="$(find "$root/bench/gpu/results" -name proj-table.txt 2>/dev/null | sort | tail -1)"
fi
extra=()
[[ -n "$attrace" && -f "$attrace" ]] && extra+=(--attrace "$attrace")
echo "== bench (cells stop starting at $budget s from the start)"
# shellcheck disable=SC2086
"$py" "$here/time_fast_jl.py" bench --build-dir "$build" --json "$out/fast_jl.json" \
  --deadline $(( t0 + budget )) --trak-commit "$commit" "${extra[@]}" ${FAST_JL_ARGS:-} 2>&1 | tee "$out/bench.log"
status=${PIPESTATUS[0]}
echo "total: $(( $(date +%s) - t0 )) s; exit $status"
exit "$status"
