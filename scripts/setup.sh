#!/usr/bin/env bash
# Installs everything attrace needs on Debian bookworm (run as root). Idempotent.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config
  patchelf                              # lean LibTorch copies for attrace-core (cmake/lean-torch.sh)
  libtorch-dev python3-torch            # LibTorch 1.13 (CPU); python3-torch only makes test fixtures
  libopenblas-dev                       # switches libblas.so.3 to OpenBLAS (100x the netlib default)
  libhdf5-dev
  libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libssl-dev zlib1g-dev                 # SHA-256 of inputs; gzip reader for the demo data
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-h5py git                      # h5py writes the test datasets (the documented layout)
  python3-sklearn                       # ships the handwritten-digits data used by `attrace demo`
  pybind11-dev python3-dev              # the Python module `attrace` (-DATTRACE_PYTHON=ON, docs/recorder.md)
  python3-scipy                         # tests/eval_lds_check.py: an independent LDS (Spearman) check
  time                                  # /usr/bin/time -v: wall time and peak RSS in bench/scale/run.sh
  libsqlite3-dev libcurl4-openssl-dev   # embedded ledger; JSON-RPC to EVM nodes
  libcrypto++-dev libsecp256k1-dev libboost-dev   # keccak-256, secp256k1 signing, 256/512-bit integers
  chromium                              # headless browser: tests load report.html and screenshot it
  fortunes                              # real English text in category files: attrace import text, the LM demo
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js/npm (for Foundry, solc-js, OpenZeppelin): preinstalled here; Debian's packages otherwise.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages pinned by ledger-client/contracts/package-lock.json (anvil, forge, solc-js,
# OpenZeppelin contracts and merkle-tree): installed when missing or when the lock file changed.
here="$(cd "$(dirname "$0")/.." && pwd)"
contracts="$here/ledger-client/contracts"
if [ ! -f "$contracts/node_modules/.package-lock.json" ] || [ "$contracts/package-lock.json" -nt "$contracts/node_modules/.package-lock.json" ]; then
  (cd "$contracts" && npm ci --no-audit --no-fund --loglevel=error)
fi
