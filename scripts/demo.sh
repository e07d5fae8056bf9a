#!/usr/bin/env bash
# One command from a fresh Debian bookworm machine (as root) to `attrace demo`:
# installs the packages, builds the CLI, runs the demo in ./attrace-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
TARGETS=attrace ./scripts/build.sh -DATTRACE_BUILD_TESTS=OFF -DATTRACE_BUILD_BENCH=OFF
exec ./build/cli/attrace demo --dir attrace-demo "$@"
