"""Runs a WASI preview 1 command module under wasmtime (its Python
package), as `flint run` runs one: argv[0] is the module's path as given, the
environment only what is given, stdin, stdout and stderr inherited, no
preopened directories. Exits with the module's exit status.

Usage: wasi_reference.py MODULE [--env K=V]... [-- ARGS...]
"""
import os
import sys

import wasmtime


def main():
    argv = sys.argv[1:]
    module_path = argv.pop(0)
    env = []
    while argv and argv[0] == "--env":
        k, _, v = argv[1].partition("=")
        env.append([k, v])
        argv = argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    wasi = wasmtime.WasiConfig()
    wasi.argv = [module_path] + argv
    wasi.env = env
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    store.set_wasi(wasi)
    module = wasmtime.Module.from_file(engine, module_path)
    instance = linker.instantiate(store, module)
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        sys.stdout.flush()
        os._exit(e.code)
    sys.stdout.flush()
    os._exit(0)


main()
