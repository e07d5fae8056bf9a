#!/usr/bin/env bash
# Scale benchmark (issue 8): featurize + score at n_train in $SIZES, n_query = $N_QUERY, dense
# projection to k = $K, BLAS scoring, under a memory limit; records wall time, user+sys, peak RSS
# (/usr/bin/time -v), the scorer's FLOP rate and the load average, and fits the exponent of
# scoring time against n_train (least squares on log-log). A separate command, NOT part of CI:
# the default sizes take about an hour of both cores and ~10 GB of disk under $WORK.
#
#   bench/scale/run.sh                                   # the issue-8 run (sizes 250k, 500k, 1M)
#   SIZES="20000" N_QUERY=2000 bench/scale/run.sh        # a smoke run (~1 min)
#
# Settings (environment): SIZES, N_QUERY (100000), K (1024), CHECKPOINTS (1: how many of the
# demo's three checkpoints the run file lists), MEMORY_LIMIT (6GiB), WORK (/tmp/attrace-scale),
# ATTRACE (build/cli/attrace), NICE (5: other work on the machine still progresses), TRANCHES (100),
# STEPS ("featurize score"; "score" alone re-scores the training stores kept from an earlier run).
# Scenario: `attrace demo --dir $WORK/demo` trains the 64-32-10 MLP; make_data.py resamples its
# digits with small noise into large train/query sets (fixed seed). Datasets, the query store and
# the demo are reused when present. Training stores are kept (4 GB per million rows and
# checkpoint at k = 1024) so that scoring can be re-measured alone; outputs are rebuilt.
# Results: $WORK/results.md (the table) and $WORK/logs/ (every command's stderr and time -v).
#
# Scoring is attribution.scoring = "blas" (OpenBLAS sgemm, float32 products added into float64):
# the canonical kernel (fixed-order float64 sums, ~30 GFLOP/s on this machine's 2 cores) would take
# about two hours per 1M x 100K x 1024 checkpoint. output.scores = "never": the full matrix of
# 1M x 100K float64 would be 800 GB.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
SIZES="${SIZES:-250000 500000 1000000}"
N_QUERY="${N_QUERY:-100000}"
K="${K:-1024}"
CHECKPOINTS="${CHECKPOINTS:-1}"
MEMORY_LIMIT="${MEMORY_LIMIT:-6GiB}"
WORK="${WORK:-/tmp/attrace-scale}"
ATTRACE="${ATTRACE:-$repo/build/cli/attrace}"
NICE="${NICE:-5}"
TRANCHES="${TRANCHES:-100}"
STEPS="${STEPS:-featurize score}"
PY=/usr/bin/python3

[[ -x "$ATTRACE" ]] || { echo "run.sh: no attrace binary at $ATTRACE (build it, or set ATTRACE)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "run.sh: /usr/bin/time missing (apt-get install time, or scripts/setup.sh)" >&2; exit 2; }
[[ "$CHECKPOINTS" =~ ^[1-3]$ ]] || { echo "run.sh: CHECKPOINTS must be 1, 2 or 3 (the demo saves three)" >&2; exit 2; }
mkdir -p "$WORK/logs"
WORK="$(cd "$WORK" && pwd)"
logs="$WORK/logs"

# One measured command: stderr to logs/NAME.err, time -v to logs/NAME.time, load average around it.
measure() {
  local name="$1"
  shift
  cat /proc/loadavg >"$logs/$name.load"
  "$ATTRACE" version >"$logs/$name.version"
  # Load average every 15 s while it runs: other work shares the cores, and the table says how much.
  (while sleep 15; do cat /proc/loadavg; done) >"$logs/$name.loadtrace" &
  local sampler=$!
  echo "== $name: $*" >&2
  local rc=0
  /usr/bin/time -v -o "$logs/$name.time" nice -n "$NICE" "$@" >"$logs/$name.out" 2>"$logs/$name.err" || rc=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  cat /proc/loadavg >>"$logs/$name.load"
  if ((rc != 0)); then
    echo "run.sh: $name failed (exit $rc); see $logs/$name.err:" >&2
    tail -5 "$logs/$name.err" >&2
    exit 1
  fi
  grep -E "Elapsed|Maximum resident" "$logs/$name.time" | sed 's/^\s*/   /' >&2
}

# The scenario: the demo's model, checkpoints and digits.
if [[ ! -f "$WORK/demo/run.toml" ]]; then
  "$ATTRACE" demo --dir "$WORK/demo" -q >"$logs/demo.out" 2>&1 || true  # exit 1 only judges the demo's vector
  [[ -f "$WORK/demo/run.toml" && -f "$WORK/demo/train.h5" ]] || { echo "run.sh: attrace demo failed: $logs/demo.out" >&2; exit 1; }
fi
# The run file: the first $CHECKPOINTS of the demo's checkpoints.
awk -v keep="$CHECKPOINTS" '/^\[\[checkpoint\]\]/ { n++ } n <= keep { print }' "$WORK/demo/run.toml" >"$WORK/demo/run_scale.toml"

# Datasets (deterministic, reused when present).
query="$WORK/query_$N_QUERY.h5"
[[ -f "$query" ]] || "$PY" "$here/make_data.py" --demo "$WORK/demo" --n "$N_QUERY" --query --out "$query"
for n in $SIZES; do
  [[ -f "$WORK/train_$n.h5" ]] ||
    "$PY" "$here/make_data.py" --demo "$WORK/demo" --n "$n" --tranches "$TRANCHES" --out "$WORK/train_$n.h5"
done

# One config per size, absolute paths (the query store records the query file's path, and every
# size's config must name the same one).
config_for() {
  local n="$1" cfg="$WORK/attrace_$1.toml"
  cat >"$cfg" <<EOF
# attrace scale benchmark (bench/scale/run.sh): n_train = $n, n_query = $N_QUERY
[run]
checkpoints = "$WORK/demo/run_scale.toml"

[data]
train = "$WORK/train_$n.h5"
query = "$query"

[gradients]
loss = "cross_entropy"
parameters = ["*"]
batch_size = 256
precision = "fp32"

[projection]
kind = "dense"
k = $K
seed = 0

[attribution]
top_k = 10
scoring = "blas"
gemm_math = "ieee"
memory_limit = "$MEMORY_LIMIT"

[output]
scores = "never"
EOF
  echo "$cfg"
}

sizes=($SIZES)
first_cfg="$(config_for "${sizes[0]}")"
qstore="$WORK/query_${N_QUERY}_k${K}_c${CHECKPOINTS}.store.h5"
# The query store is shared by every size; made once (a finished one keeps its first measurement).
if [[ -f "$qstore" ]] && grep -q "Exit status: 0" "$logs/featurize_query_$N_QUERY.time" 2>/dev/null; then
  echo "== reusing $qstore (measured in $logs/featurize_query_$N_QUERY.time)" >&2
else
  measure "featurize_query_$N_QUERY" "$ATTRACE" featurize -c "$first_cfg" --query -o "$qstore"
fi
for n in "${sizes[@]}"; do
  cfg="$(config_for "$n")"
  store="$WORK/train_${n}_k${K}_c${CHECKPOINTS}.store.h5"
  if [[ " $STEPS " == *" featurize "* ]]; then
    rm -f "$store"
    measure "featurize_train_$n" "$ATTRACE" featurize -c "$cfg" -o "$store"
  fi
  if [[ " $STEPS " == *" score "* ]]; then
    [[ -f "$store" ]] || { echo "run.sh: no training store $store (run with STEPS containing featurize)" >&2; exit 1; }
    measure "score_$n" "$ATTRACE" score -c "$cfg" --store "$store" --query-store "$qstore" -o "$WORK/out_$n" --force \
      --memory-limit "$MEMORY_LIMIT"
  fi
done
[[ " $STEPS " == *" score "* ]] || exit 0

"$PY" "$here/summarize.py" --work "$WORK" --sizes "$SIZES" --n-query "$N_QUERY" --k "$K" --checkpoints "$CHECKPOINTS" \
  --memory-limit "$MEMORY_LIMIT" --tranches "$TRANCHES" | tee "$WORK/results.md"
