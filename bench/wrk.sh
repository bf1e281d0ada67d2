# Shared by the HTTP benchmarks (sourced): wrk runs and their figures.

# wrk's output -> p50 p99 requests/s timeouts non-2xx
lat() {
    awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /Requests\/sec/{rps=$2} /Socket errors/{gsub(",","");to=$NF} /Non-2xx/{bad=$NF} END{print p50, p99, rps, to+0, bad+0}'
}

# run_wrk HOST URL CONNECTIONS: 10 s of wrk, its figures as `lat` prints them.
run_wrk() {
    local threads=2
    [ "$3" -lt 2 ] && threads=1
    wrk -t$threads -c"$3" -d10s --latency -H "Host: $1" "$2" 2>/dev/null | lat
}

# wait_port PORT...: until something listens on each.
wait_port() {
    for p in "$@"; do
        for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
    done
}
