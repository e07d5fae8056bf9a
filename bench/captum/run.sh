#!/usr/bin/env bash
# attrace vs Captum TracInCP on the issue-10 workload, side by side in one run (a benchmark, NOT
# part of CI; see bench/captum/README.md). Builds the digits workload (MLP 64-512-512-10 and a small
# CNN, 5 TorchScript checkpoints each), computes float64 reference scores, times `attrace attribute`
# (exact TracIn, default settings, plus the scoring variants in $VARIANTS) and Captum's TracInCP as
# whole processes, and writes the table to $WORK/results.md.
#
#   CAPTUM_SRC=/path/to/captum bench/captum/run.sh          # the full comparison
#   bench/captum/run.sh                                      # attrace alone (Captum skipped)
#   MODELS=mlp VARIANTS="default canonical blas" bench/captum/run.sh
#
# Settings (environment):
#   ATTRACE_BIN   the attrace binary (default: build/cli/attrace of this checkout)
#   CAPTUM_SRC    a Captum source tree (the folder holding captum/__init__.py); unset: Captum skipped
#   WORK          work folder (default /tmp/attrace-captum); data, checkpoints and references are reused
#   MODELS        "mlp cnn" (default)
#   VARIANTS      attrace runs per model: "default" (the config as is) or a scoring kernel name
#                 (fma, canonical, blas: --set attribution.scoring=NAME); default "default blas"
#   CAPTUM_BATCH  Captum's training batch size (default 128)
#   THREADS       threads for both tools (default: every core; ATTRACE_THREADS and torch)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
ATTRACE_BIN="${ATTRACE_BIN:-$repo/build/cli/attrace}"
CAPTUM_SRC="${CAPTUM_SRC:-}"
WORK="${WORK:-/tmp/attrace-captum}"
MODELS="${MODELS:-mlp cnn}"
VARIANTS="${VARIANTS:-default blas}"
CAPTUM_BATCH="${CAPTUM_BATCH:-128}"
THREADS="${THREADS:-$(nproc)}"
export THREADS ATTRACE_THREADS="$THREADS"
PY=/usr/bin/python3   # Debian's python3-torch, python3-sklearn, python3-h5py; never pip

die() { echo "run.sh: $*" >&2; exit 2; }

[[ -x "$ATTRACE_BIN" ]] || die "no attrace binary at $ATTRACE_BIN (build it: cmake --build build --target attrace, or set ATTRACE_BIN)"
[[ "$CAPTUM_BATCH" =~ ^[1-9][0-9]*$ ]] || die "CAPTUM_BATCH must be a positive integer, got '$CAPTUM_BATCH'"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, got '$THREADS'"
for v in $VARIANTS; do
  [[ "$v" =~ ^(default|fma|canonical|blas)$ ]] || die "unknown variant '$v' in VARIANTS (default | fma | canonical | blas)"
done

# Debian packages, installed only when missing (needs root and apt; nothing from PyPI).
need=()
$PY -c "import sklearn" 2>/dev/null || need+=(python3-sklearn)
$PY -c "import h5py" 2>/dev/null || need+=(python3-h5py)
$PY -c "import torch" 2>/dev/null || need+=(python3-torch)
[[ -x /usr/bin/time ]] || need+=(time)
if [[ -n "$CAPTUM_SRC" ]]; then
  [[ -f "$CAPTUM_SRC/captum/__init__.py" ]] || die "CAPTUM_SRC=$CAPTUM_SRC holds no captum/__init__.py (point it at a pytorch/captum checkout)"
  CAPTUM_SRC="$(cd "$CAPTUM_SRC" && pwd)"
  # Captum's package imports these at import time even for TracInCP.
  $PY -c "import matplotlib" 2>/dev/null || need+=(python3-matplotlib)
  $PY -c "import tqdm" 2>/dev/null || need+=(python3-tqdm)
fi
if ((${#need[@]})); then
  echo "run.sh: installing ${need[*]} (apt-get)" >&2
  [[ $EUID -eq 0 ]] || die "missing Debian packages ${need[*]}; install them as root: apt-get install -y ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null || {
    apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null; }
fi

mkdir -p "$WORK/logs"
WORK="$(cd "$WORK" && pwd)"
logs="$WORK/logs"
: >"$WORK/runs.tsv"

echo "== workload (digits, 1497 train / 300 queries, 5 checkpoints per model): $WORK" >&2
# shellcheck disable=SC2086  # MODELS is a word list
(cd "$here" && $PY make_data.py "$WORK" $MODELS)
for m in $MODELS; do
  if [[ ! -f "$WORK/$m/reference.h5" ]]; then
    echo "== float64 reference, $m (one backward pass per example; not timed against anything)" >&2
    (cd "$here" && $PY reference.py "$WORK/$m" "$m")
  fi
done

# One timed process: wall seconds and peak RSS from /usr/bin/time, the 1-minute load average before
# it (other work on the machine slows both tools alike, and the table says how much there was).
measure() {
  local model="$1" tool="$2" label="$3" out="$4" name="$1-$3"
  shift 4
  local load
  load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "== $model / $tool / $label: $*" >&2
  if ! /usr/bin/time -f "%e %M" -o "$logs/$name.time" "$@" >"$logs/$name.out" 2>"$logs/$name.err"; then
    echo "run.sh: $model / $tool / $label failed; last lines of $logs/$name.err:" >&2
    tail -5 "$logs/$name.err" >&2
    exit 1
  fi
  local wall rss
  read -r wall rss < <(tail -1 "$logs/$name.time")
  echo "   wall $wall s, peak RSS $((rss / 1024)) MiB, load before $load" >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$model" "$tool" "$label" "$wall" "$rss" "$out" "$load" >>"$WORK/runs.tsv"
}

for m in $MODELS; do
  if [[ -n "$CAPTUM_SRC" ]]; then
    measure "$m" captum captum "$WORK/$m/captum" \
      env PYTHONPATH="$CAPTUM_SRC:$here" $PY "$here/captum_tracin.py" "$WORK/$m" "$m" "$WORK/$m/captum" "$CAPTUM_BATCH"
  fi
  for v in $VARIANTS; do
    args=()
    [[ "$v" == default ]] || args=(--set "attribution.scoring=$v")
    measure "$m" attrace "$v" "$WORK/$m/attrace-$v" \
      "$ATTRACE_BIN" attribute -c "$WORK/$m/attrace.toml" -o "$WORK/$m/attrace-$v" --force "${args[@]}"
  done
done
[[ -n "$CAPTUM_SRC" ]] || echo "run.sh: CAPTUM_SRC is unset: Captum skipped (set it to a pytorch/captum source tree to compare)" >&2

# Machine facts for the results file.
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 2^20}' /proc/meminfo), $(uname -sr)"
  echo "- threads: $THREADS per tool; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- attrace: $("$ATTRACE_BIN" version 2>&1 | head -1) ($ATTRACE_BIN)"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__)') (Debian python3-torch, $PY)"
  if [[ -n "$CAPTUM_SRC" ]]; then
    desc="$(git -C "$CAPTUM_SRC" describe --tags 2>/dev/null || true)"
    echo "- captum: $(PYTHONPATH="$CAPTUM_SRC" $PY -c 'import captum; print(captum.__version__)' 2>/dev/null) from $CAPTUM_SRC${desc:+ ($desc)}"
  else
    echo "- captum: skipped (CAPTUM_SRC unset)"
  fi
} >"$WORK/machine.txt"

$PY "$here/compare.py" "$WORK"
echo "run.sh: table written to $WORK/results.md" >&2
