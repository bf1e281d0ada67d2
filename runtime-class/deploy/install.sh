#!/usr/bin/env bash
# Installs containerd-shim-flint-v2 on a node: builds it (or, without cargo,
# takes a built one from target/release), copies it to /usr/local/bin, and prints the
# containerd configuration to add. Run as root on the node.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/containerd-shim-flint-v2
if command -v cargo >/dev/null 2>&1; then
    cargo build --release -p flint-runtime-class
fi
[ -x "$bin" ] || { echo "install: no $bin, and no cargo to build it" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/containerd-shim-flint-v2
[ -w /dev/kvm ] || echo "install: warning: /dev/kvm is not usable here; Flint VMs need KVM" >&2
version=$(containerd --version 2>/dev/null | awk '{print $3}')
case "$version" in
    v2.*|2.*) snippet=runtime-class/deploy/containerd-2.x.toml ;;
    *) snippet=runtime-class/deploy/containerd-1.6-1.7.toml ;;
esac
echo "Installed /usr/local/bin/containerd-shim-flint-v2."
echo "Add this to /etc/containerd/config.toml (containerd ${version:-unknown}) and restart containerd:"
echo
cat "$snippet"
echo
echo "Then: kubectl apply -f runtime-class/deploy/runtimeclass.yaml, and label Flint nodes flint.dev/runtime=true."
