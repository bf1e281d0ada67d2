#!/usr/bin/env bash
# containerd benchmark: Flint's shim vs runc (static busybox) on one
# containerd with its CRI plugin: `ctr run` to exit, CRI pod start to
# container output, memory per pod. Root only. Usage: bench/containerd.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps
missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
cargo build --release -p flint-bench -p flint-runtime-class
exec target/release/flint-bench containerd "${1:-20}"
