#!/usr/bin/env bash
# Run on the project machine (Debian bookworm, after scripts/setup.sh): downloads the .deb files of
# the build dependencies that the GPU machine's image lacks (GoogleTest, Google Benchmark) into
# .gpu-deps/ (git-ignored). The device tool carries that folder; bench/gpu/run.sh unpacks it into
# a private prefix there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$root/.gpu-deps"
cd "$root/.gpu-deps"
rm -f ./*.deb
apt-get download libgtest-dev libbenchmark-dev libbenchmark1debian
ls -l
