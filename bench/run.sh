#!/usr/bin/env bash
# Benchmarks: builds release binaries, installs the wasmtime peer from PyPI,
# runs `flint-bench WHAT ITERATIONS` (WHAT: cold, snapshot or all; default
# all and 50).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import wasmtime' 2>/dev/null || python3 -m pip install --quiet wasmtime
cargo build --release -p flint -p flint-bench
exec target/release/flint-bench "${1:-all}" "${2:-50}"
