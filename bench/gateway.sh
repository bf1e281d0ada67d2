#!/usr/bin/env bash
# Gateway benchmark, in one run on loopback: `flint serve` (requests in VMs
# restored from snapshots) against the same CGI function behind a plain
# hyper server calling wasmtime in-process (bench/peer, no VM), with wrk.
# Prints a Markdown report. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/wrk.sh
command -v wrk >/dev/null || { echo "gateway.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release -p flint -p flint-examples >&2
(cd bench/peer && cargo build --release >&2)
flint=target/release/flint
peer=bench/peer/target/release/flint-bench-peer
port=18180; admin=18190; peer_port=18185
state=$(mktemp -d)
work=$(mktemp -d)
cleanup() { kill -TERM $gw $pp 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$state" "$work"; }
svc() { # name image annotations...
    local name=$1 image=$2; shift 2
    { echo "apiVersion: serving.knative.dev/v1"; echo "kind: Service"; echo "metadata:"; echo "  name: $name"
      echo "spec:"; echo "  template:"; echo "    metadata:"; echo "      annotations:"
      for a in "$@"; do echo "        $a"; done
      echo "    spec:"; echo "      containers:"; echo "        - image: $PWD/examples/$image"; } > "$work/$name.yaml"
}
svc hello greet.wasm 'autoscaling.knative.dev/initial-scale: "4"' 'autoscaling.knative.dev/target: "2"'
svc over greet.wasm 'autoscaling.knative.dev/max-scale: "20"'
svc iso greet.wasm 'autoscaling.knative.dev/initial-scale: "4"' 'autoscaling.knative.dev/target: "2"' 'flint.dev/isolation: request'
"$flint" serve --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$admin --state-dir "$state" --image-root "$PWD/examples" "$work/hello.yaml" "$work/iso.yaml" "$work/over.yaml" 2>"$work/gw.log" &
gw=$!
"$peer" examples/greet.wasm 127.0.0.1:$peer_port 2>"$work/peer.log" &
pp=$!
trap cleanup EXIT
wait_port $port $peer_port
sleep 2 # let the pools fill

echo "## Gateway: \`flint serve\` vs. hyper + wasmtime in-process (no VM), wrk on loopback, 10 s each"
echo
echo "| load | Flint p50 | Flint p99 | Flint req/s | peer p50 | peer p99 | peer req/s |"
echo "|---|---|---|---|---|---|---|"
for c in 1 8; do
    read -r fp50 fp99 frps _ < <(run_wrk hello.default.example.com "http://127.0.0.1:$port/greet?name=bench" $c)
    read -r pp50 pp99 prps _ < <(run_wrk x "http://127.0.0.1:$peer_port/greet?name=bench" $c)
    echo "| $c connection(s), warm | $fp50 | $fp99 | $frps | $pp50 | $pp99 | $prps |"
done
read -r ip50 ip99 irps _ < <(run_wrk iso.default.example.com "http://127.0.0.1:$port/greet?name=bench" 8)
echo
echo "Per-request isolation (\`flint.dev/isolation: request\`, 8 connections): $irps requests/s, p50 $ip50, p99 $ip99."

# Overload: one service (containerConcurrency 0, max-scale 20) at 8 and
# at 256 connections; the node's run slots (--max-running) bound the VMs
# that run at once, the rest wait.
echo
echo "Overload, one service (containerConcurrency 0, max-scale 20), $(nproc) cores, run slots: default (two per core):"
echo
echo "| connections | req/s | p50 | p99 | timeouts (wrk's 2 s) | non-2xx | gateway RSS after |"
echo "|---|---|---|---|---|---|---|"
for c in 8 256; do
    read -r op50 op99 orps oto obad < <(run_wrk over.default.example.com "http://127.0.0.1:$port/greet?name=bench" $c)
    rss=$(awk '/VmRSS/{printf "%d MB", $2/1024}' /proc/$gw/status)
    echo "| $c | $orps | $op50 | $op99 | $oto | $obad | $rss |"
done

# Gateway overhead: mean total request latency minus mean function latency
# (restore or warm start + run), from the gateway's own metrics.
m=$(curl -s "http://127.0.0.1:$admin/metrics")
tot=$(echo "$m" | awk -F'[{} ]' '/^revision_request_latencies_sum.*revision_name="hello-00001"/{s+=$NF} /^revision_request_latencies_count.*revision_name="hello-00001"/{c+=$NF} END{if(c) printf "%.3f", s/c}')
app=$(echo "$m" | awk -F'[{} ]' '/^revision_app_request_latencies_sum.*revision_name="hello-00001"/{s+=$NF} /^revision_app_request_latencies_count.*revision_name="hello-00001"/{c+=$NF} END{if(c) printf "%.3f", s/c}')
echo
echo "Mean latency through the gateway $tot ms, of which the function (VM start and run) $app ms: gateway overhead $(echo "$tot $app" | awk '{printf "%.3f", $1-$2}') ms."

# Scale from zero: a new revision at initial-scale 0 each time; time to first byte.
echo
echo "| scale from zero, time to first byte (median of 5) | ms |"
echo "|---|---|"
for fn in greet bigheap; do
    ts=()
    for i in 1 2 3 4 5; do
        svc "z$fn$i" "$fn.wasm" 'autoscaling.knative.dev/initial-scale: "0"'
        "$flint" apply --admin "unix:$state/admin.sock" "$work/z$fn$i.yaml" >/dev/null
        t=$(curl -s -o /dev/null -w '%{time_starttransfer}' -H "Host: z$fn$i.default.example.com" "http://127.0.0.1:$port/")
        ts+=("$t")
    done
    med=$(printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END{printf "%.2f", a[int((NR+1)/2)]*1000}')
    echo "| $fn | $med |"
done

# The run is only valid if serving stayed inside the seccomp filter and
# the VMs were reset in place (not dropped and restored again).
m=$(curl -s "http://127.0.0.1:$admin/metrics")
refused=$(echo "$m" | awk '/^flint_seccomp_refused_calls_total/{print $NF}')
resets=$(echo "$m" | awk -F'[{} ]' '/^flint_reset_latencies_count/{c+=$NF} END{print c+0}')
echo
echo "System calls refused by the gateway's seccomp filter: ${refused:-?}; VMs reset in place: $resets; VMs that could not be reset: $(grep -c 'could not be reset' "$work/gw.log")."
