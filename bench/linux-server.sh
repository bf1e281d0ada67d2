#!/usr/bin/env bash
# Linux servers under `flint serve`, in one run on loopback: a Go net/http
# server (gateway/tests/go/server, Knative's helloworld shape) as a
# Knative Service with a port, against the same binary run as a host
# process, with wrk; then scale from zero (a revision at initial-scale 0,
# time to first byte) and the gateway's memory per running instance.
# Prints a Markdown report. Needs wrk and golang-go (scripts/deps).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/wrk.sh
command -v wrk >/dev/null || { echo "linux-server.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
go=$(command -v go || echo /usr/lib/go-1.19/bin/go)
[ -x "$go" ] || { echo "linux-server.sh: needs golang-go" >&2; exit 1; }
cargo build --release -p flint >&2
flint=target/release/flint
port=18280; admin=18290; native_port=18285
state=$(mktemp -d)
work=$(mktemp -d)
chmod 755 "$work" # the gateway reads images as the flint user
cleanup() { kill -TERM ${gw:-} ${native:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$state" "$work"; }
trap cleanup EXIT
(cd gateway/tests/go && CGO_ENABLED=0 GOFLAGS=-mod=mod GOCACHE="$work/gocache" GOPATH="$work/gopath" "$go" build -o "$work/server" ./server) >&2
mkdir -p "$work/root/srv"
cp "$work/server" "$work/root/srv/server"
"$flint" image build --rootfs "$work/root" --entrypoint /srv/server -t docker.io/library/goserver:bench -o "$work/server.tar" >&2
svc() { # name annotations...
    local name=$1; shift
    { echo "apiVersion: serving.knative.dev/v1"; echo "kind: Service"; echo "metadata:"; echo "  name: $name"
      echo "spec:"; echo "  template:"; echo "    metadata:"; echo "      annotations:"
      echo "        autoscaling.knative.dev/window: 6s"
      for a in "$@"; do echo "        $a"; done
      echo "    spec:"; echo "      containers:"; echo "        - image: $work/server.tar"
      echo "          ports:"; echo "            - containerPort: 8080"; } > "$work/$name.yaml"
}
svc hello
"$flint" serve --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$admin --state-dir "$state" --image-root "$work" "$work/hello.yaml" 2>"$work/gw.log" &
gw=$!
PORT=$native_port "$work/server" >/dev/null 2>&1 &
native=$!
wait_port $port $native_port
# The instance the autoscaler starts once serving.
for _ in $(seq 1 100); do curl -sf -o /dev/null -H "Host: hello.default.example.com" "http://127.0.0.1:$port/" && break; sleep 0.1; done

echo "## Linux servers: a Go net/http server under \`flint serve\` vs. the same binary as a host process, wrk on loopback, 10 s each"
echo
echo "| load | Flint p50 | Flint p99 | Flint req/s | host p50 | host p99 | host req/s | non-2xx (Flint) |"
echo "|---|---|---|---|---|---|---|---|"
for c in 1 8; do
    read -r fp50 fp99 frps _ fbad < <(run_wrk hello.default.example.com "http://127.0.0.1:$port/" $c)
    read -r np50 np99 nrps _ < <(run_wrk x "http://127.0.0.1:$native_port/" $c)
    echo "| $c connection(s) | $fp50 | $fp99 | $frps | $np50 | $np99 | $nrps | $fbad |"
done

rss() { awk '/VmRSS/{printf "%.1f", $2/1024}' /proc/$gw/status; }
before=$(rss)

# Scale from zero: a new revision at initial-scale 0 each time (its
# readiness instance stopped); time to first byte of the first request.
# Cold: the program runs from its start; from its template
# (`flint.dev/snapshot: "true"`): the readiness instance was frozen and
# the new one is thawed from it.
echo
echo "| scale from zero, time to first byte (median of 5) | ms |"
echo "|---|---|"
from_zero() { # prefix label annotations...
    local prefix=$1 label=$2; shift 2
    local ts=()
    for i in 1 2 3 4 5; do
        svc "$prefix$i" 'autoscaling.knative.dev/initial-scale: "0"' "$@"
        "$flint" apply --admin "unix:$state/admin.sock" "$work/$prefix$i.yaml" >/dev/null
        ts+=("$(curl -s -o /dev/null -w '%{time_starttransfer}' -H "Host: $prefix$i.default.example.com" "http://127.0.0.1:$port/")")
    done
    echo "| $label | $(printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END{printf "%.2f", a[int((NR+1)/2)]*1000}') |"
}
from_zero z "Go net/http server, cold"
from_zero t "Go net/http server, from its template" 'flint.dev/snapshot: "true"'

# A fresh VM for every request (`flint.dev/isolation: request`), each
# thawed from the template: one connection, 10 s.
svc iso 'flint.dev/isolation: request' 'flint.dev/snapshot: "true"'
"$flint" apply --admin "unix:$state/admin.sock" "$work/iso.yaml" >/dev/null
read -r ip50 ip99 irps _ ibad < <(run_wrk iso.default.example.com "http://127.0.0.1:$port/" 1)
echo
echo "| a VM thawed per request (isolation: request), 1 connection | p50 | p99 | req/s | non-2xx |"
echo "|---|---|---|---|---|"
echo "| Go net/http server | $ip50 | $ip99 | $irps | $ibad |"

# Memory and idle CPU: the gateway's RSS and CPU time with the one
# instance, and with five more (min-scale 5 on a second service), idle.
svc four 'autoscaling.knative.dev/initial-scale: "5"' 'autoscaling.knative.dev/min-scale: "5"'
"$flint" apply --admin "unix:$state/admin.sock" "$work/four.yaml" >/dev/null
for _ in $(seq 1 100); do
    n=$(curl -s "http://127.0.0.1:$admin/metrics" | awk -F'[{} ]' '/^flint_instances\{revision_name="four-00001"/{s+=$NF} END{print s+0}')
    [ "$n" -ge 5 ] && break; sleep 0.2
done
sleep 1
after=$(rss)
cpu() { awk '{print $14+$15}' /proc/$gw/stat; }
c0=$(cpu); sleep 5; c1=$(cpu)
echo
echo "Gateway RSS: $before MB with one instance (after the load above), $after MB with six ($(echo "$before $after" | awk '{printf "%.1f", ($2-$1)/5}') MB per further instance); CPU with six idle instances: $(( (c1-c0) * 100 / (5 * $(getconf CLK_TCK)) ))% of one core."

m=$(curl -s "http://127.0.0.1:$admin/metrics")
refused=$(echo "$m" | awk '/^flint_seccomp_refused_calls_total/{print $NF}')
echo
echo "System calls refused by the gateway's seccomp filter: ${refused:-?}."
