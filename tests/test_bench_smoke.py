"""`make bench` works: the load harness runs every workload at a tiny size and checks every message.

Timing targets live in the benchmark itself (docs/benchmarks.md), never as assertions here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_runs_complete_at_tiny_scale() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "0.02", "--targets", "scalesocket", "--no-ceiling"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    workloads = {row.split("|")[1].strip() for row in rows[2:]}
    assert {"echo-latency", "stdout-throughput", "connect-rate", "fanout", "idle-memory"} <= workloads
    complete = [row.split("|")[7].strip() for row in rows[2:]]
    assert complete and set(complete) == {"yes"}  # every run complete: all messages, byte-exact, in order
