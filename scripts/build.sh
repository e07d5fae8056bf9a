#!/usr/bin/env bash
# Configures and builds attrace into build/ (Release, -j2). Extra arguments go to CMake's
# configure step, e.g. -DATTRACE_CUDA=OFF. TARGETS (env) limits what is built.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "${JOBS:-2}" ${TARGETS:+--target ${TARGETS}}
