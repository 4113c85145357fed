#!/bin/sh
# BENCH_SCALESOCKET=bench/floor.sh python -m bench ...: the floor server (bench/floor.py) in place of scalesocket
exec "$(dirname "$0")/../.venv/bin/python" -m bench.floor "$@"
