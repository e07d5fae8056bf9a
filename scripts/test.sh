#!/usr/bin/env bash
# One command from a fresh Debian bookworm machine (as root) to the whole test suite:
# installs the packages, builds everything (tests, benchmarks and the Python module included),
# runs ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh -DATTRACE_BUILD_TESTS=ON -DATTRACE_BUILD_BENCH=ON -DATTRACE_PYTHON=ON
cd build
ctest --no-tests=error --output-on-failure -j "${JOBS:-2}"
