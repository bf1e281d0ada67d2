"""The peer for Flint's cold-start benchmark: the same WASI module run by
wasmtime (PyPI's `wasmtime` package) in-process, with no VM.

Usage: python3 bench/wasmtime_peer.py MODULE ITERATIONS [ARGS...]
Prints one JSON object: per-iteration medians in milliseconds of compile
(Module), instantiate (Linker + Store + instantiate) and run (_start).
Each iteration uses a fresh Engine, so compilation is cold, as Flint's is.
"""
import json
import os
import statistics
import sys
import tempfile
import time

import wasmtime


def once(path, args, out_path):
    t0 = time.perf_counter()
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, path)
    t1 = time.perf_counter()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [os.path.basename(path)] + args
    wasi.stdout_file = out_path
    store.set_wasi(wasi)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    t2 = time.perf_counter()
    try:
        start(store)
    except wasmtime.ExitTrap as e:
        if e.code != 0:
            raise
    t3 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3


def main():
    path, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "stdout")
        once(path, args, out)  # warm the Python side, not wasmtime's caches
        runs = [once(path, args, out) for _ in range(n)]
        with open(out) as f:
            output = f.read()
    med = lambda i: statistics.median(r[i] for r in runs)
    print(json.dumps({
        "compile_ms": med(0),
        "instantiate_ms": med(1),
        "run_ms": med(2),
        "total_ms": statistics.median(sum(r) for r in runs),
        "output": output,
    }))


if __name__ == "__main__":
    main()
