#!/usr/bin/env bash
# Runs both evaluations of issue 12 on the digits task with the defaults (docs/eval.md) and keeps
# eval.json and eval.html under bench/eval/results/. Usage: bench/eval/run.sh [BUILD_DIR] [OUT_DIR]
# The subset records under OUT_DIR/work/lds make a killed run resumable: run it again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/../../build}"
out="${2:-/tmp/attrace-eval}"
bin="$build/cli/attrace"
/usr/bin/time -f "lds: %e s wall, %U s user, %M KB peak" "$bin" eval lds --out "$out"
/usr/bin/time -f "noisy: %e s wall, %U s user, %M KB peak" "$bin" eval noisy --out "$out"
cp "$out/eval.json" "$out/eval.html" "$here/results/"
echo "copied eval.json and eval.html to $here/results/"
