#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS (default 600), one
# after another at the lowest CPU priority. Corpora grow in BUILD/corpus/<target>; a finding is
# written as BUILD/crash-<target>-* and the script exits non-zero. docs/fuzzing.md has the details.
#   fuzz/run.sh [SECONDS] [TARGET...]      (targets: config run_file csv_import dataset feature_store
#                                          manifest rpc_reply)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${ATTRACE_FUZZ_BUILD:-$root/build-fuzz}"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(config run_file csv_import dataset feature_store manifest rpc_reply)
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTRACE_FUZZ=ON \
  -DATTRACE_BUILD_TESTS=OFF -DATTRACE_BUILD_BENCH=OFF -DATTRACE_CUDA=OFF >/dev/null
status=0
for t in "${targets[@]}"; do
  nice -n 19 cmake --build "$build" -j2 --target "fuzz_$t" >/dev/null
  mkdir -p "$build/corpus/$t"
  seeds=()
  [ -d "$root/fuzz/seeds/$t" ] && seeds=("$root/fuzz/seeds/$t")
  echo "== fuzz_$t for ${seconds}s"
  # Leaks inside libhdf5 itself are suppressed (fuzz/lsan.supp); a damaged store that makes libhdf5
  # loop is refused after ATTRACE_HDF5_CHECK_TIMEOUT seconds, well inside -timeout.
  if ! LSAN_OPTIONS="suppressions=$root/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
      ATTRACE_HDF5_CHECK_TIMEOUT="${ATTRACE_HDF5_CHECK_TIMEOUT:-5}" nice -n 19 "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$build/crash-$t-" "$build/corpus/$t" "${seeds[@]}" 2>"$build/fuzz_$t.log"; then
    echo "fuzz_$t: FINDING (see $build/fuzz_$t.log and $build/crash-$t-*)"
    status=1
  fi
  grep -E "^Done|stat::number_of_executed_units|stat::new_units_added" "$build/fuzz_$t.log" || true
  echo "corpus: $(ls "$build/corpus/$t" | wc -l) files"
done
exit $status
