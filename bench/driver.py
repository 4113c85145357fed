"""Driver: one workload on one target. Starts the server on a free 127.0.0.1 port (the process
itself, never via a shell, so its CPU and memory are its own), waits until it accepts TCP, runs
the load generator as a separate process, then stops the server (SIGTERM, SIGKILL after 5 s)
and kills any children it left behind (by PID and start time, so a reused PID is never hit).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO, Any

from bench import procs
from bench.workloads import Spec, child_argv

REPO = Path(__file__).resolve().parent.parent
# BENCH_SCALESOCKET: another build of the server (e.g. an installed one) in place of the repo's venv
SCALESOCKET = Path(os.environ.get("BENCH_SCALESOCKET", REPO / ".venv" / "bin" / "scalesocket"))
TARGETS = ("websocketd", "scalesocket")
CEILING = "client-ceiling"  # pseudo-target: bench.ceiling, a server that does ~nothing per line
Result = dict[str, Any]


def server_argv(target: str, port: int, child: list[str]) -> list[str]:
    if target == "scalesocket":
        # the CLI takes `CMD -- ARGS` so that ARGS may start with "-"
        return [str(SCALESOCKET), "--addr", f"127.0.0.1:{port}", child[0], *(["--", *child[1:]] if child[1:] else [])]
    if target == "websocketd":
        return ["websocketd", f"--port={port}", "--address=127.0.0.1", *child]
    if target == CEILING:
        return [sys.executable, "-m", "bench.ceiling", str(port), *child]
    raise ValueError(target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(Exception):
    pass


class Server:
    """One server process; its output goes to a log file whose tail is kept for failure reports."""

    def __init__(self, argv: list[str], port: int, log: IO[bytes]) -> None:
        self.argv, self.port, self.log = argv, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_info: dict[str, Any] = {}

    def start(self, timeout: float = 15.0) -> int:
        # own session: a Ctrl-C in the terminal reaches the driver only, which then stops us cleanly
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode} before accepting connections")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self.proc.pid
            except OSError:
                time.sleep(0.05)
        raise ServerError(f"server did not accept TCP connections within {timeout:.0f} s")

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None:
            return
        left = procs.snapshot(self.proc.pid)  # before TERM: once it dies its orphans are reparented
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
            killed = False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            killed = True
        self.stop_info = {
            "stop_s": round(time.monotonic() - t0, 3),
            "sigkill": killed,
            "exit_code": self.proc.returncode,
            "leftovers_killed": procs.kill_snapshot(left),
        }
        self.proc = None


def log_tail(log: IO[bytes], size: int = 1500) -> str:
    log.flush()
    log.seek(max(0, os.fstat(log.fileno()).st_size - size))
    return log.read().decode("utf-8", "replace")


def run_load(spec: Spec, timeout: float) -> Result:
    """Run the load generator in its own process, so its CPU is its own; bounded by `timeout`."""
    argv = [sys.executable, "-m", "bench.load", json.dumps(asdict(spec))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"complete": False, "errors": {f"load generator killed after {timeout:.0f} s": 1}}
    try:
        res: Result = json.loads(p.stdout.strip().splitlines()[-1])
        return res
    except (IndexError, ValueError):
        return {"complete": False, "errors": {f"load generator failed ({p.returncode}): {p.stderr[-800:]}": 1}}


def disturbance(r: Result) -> float:
    """Cores used by processes outside the benchmark during a run's timed phase. /proc/stat counts
    whole 10 ms ticks, so runs shorter than 0.5 s are never called disturbed."""
    cpu = r.get("cpu") or {}
    return float(cpu.get("other") or 0.0) if cpu.get("wall_s", 0) >= 0.5 else 0.0


REDIS_SERVER = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
OWNER = "bench-owner"  # echo-forwarded: the instance that owns every room


def redis_command(port: int, *args: str) -> bytes:
    """One command in Redis' protocol; the raw reply (enough for SET and PING)."""
    request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(1024)


def run_forwarded(spec: Spec, timeout: float, quiet_wait: float) -> Result:
    """echo-forwarded: redis-server and two instances sharing it; the owner holds every room (its
    `f<N>` rooms are claimed for it in Redis before the run), the load enters at the other."""
    background = procs.wait_quiet(quiet_wait, 0.25) if quiet_wait > 0 else None
    spec = replace(spec, deadline_s=max(5.0, timeout - 8))
    redis_port, owner_port, entry_port = free_port(), free_port(), free_port()
    res: Result = {"complete": False}
    t0 = time.monotonic()
    argvs: list[list[str]] = []
    with tempfile.TemporaryFile(prefix="bench-server-") as log:
        servers: list[Server] = []
        try:
            if REDIS_SERVER is None:
                raise ServerError("redis-server is not installed (apt-get install redis-server)")
            redis = Server(
                [REDIS_SERVER, "--port", str(redis_port), "--save", "", "--appendonly", "no"], redis_port, log
            )
            servers.append(redis)
            redis.start()
            # A registry that is not new (no quiet period), and every forwarded room already the owner's.
            redis_command(redis_port, "SET", "scalesocket:epoch", "1")
            for room in range(spec.clients):
                owner = f"1 {OWNER} 127.0.0.1:{owner_port}"
                redis_command(redis_port, "SET", f"scalesocket:room:f{room}", owner, "PX", "600000")
            pids = []
            for name, port in ((OWNER, owner_port), ("bench-entry", entry_port)):
                argv = server_argv("scalesocket", port, child_argv(spec))
                argv[1:1] = ["--registry", f"redis://127.0.0.1:{redis_port}", "--instance", name]
                argvs.append(argv)
                servers.append(Server(argv, port, log))
                pids.append(servers[-1].start())
            res = run_load(
                replace(
                    spec,
                    url=f"ws://127.0.0.1:{entry_port}",
                    server_pid=pids[1],
                    direct_url=f"ws://127.0.0.1:{owner_port}",
                    direct_pid=pids[0],
                ),
                timeout,
            )
        except ServerError as e:
            res["errors"] = {str(e): 1}
        finally:
            for server in reversed(servers):
                server.stop()
        if not res.get("complete"):
            res["server_log_tail"] = log_tail(log)
    return {
        "target": "scalesocket",
        "workload": spec.workload,
        "argv": argvs,
        "background_cores": background,
        "elapsed_s": round(time.monotonic() - t0, 2),
        **res,
        "server_stop": servers[1].stop_info if len(servers) > 1 else {},
    }


def run_one(target: str, spec: Spec, timeout: float, quiet_wait: float) -> Result:
    """Fresh server, one workload, server stopped: no state carries over between runs."""
    if spec.workload == "echo-forwarded":
        return run_forwarded(spec, timeout, quiet_wait)
    child = child_argv(spec)
    # websocketd has no rooms: its nearest equivalent of a shared-room fanout is a child per client
    spec = replace(spec, shared_room=target != "websocketd", deadline_s=max(5.0, timeout - 8))
    background = procs.wait_quiet(quiet_wait, 0.25) if quiet_wait > 0 else None
    port = free_port()
    argv = server_argv(target, port, child)
    res: Result = {"complete": False}
    with tempfile.TemporaryFile(prefix="bench-server-") as log:
        server = Server(argv, port, log)
        t0 = time.monotonic()
        try:
            pid = server.start()
            res = run_load(replace(spec, url=f"ws://127.0.0.1:{port}", server_pid=pid), timeout)
        except ServerError as e:
            res["errors"] = {str(e): 1}
        finally:
            server.stop()
        if not res.get("complete"):
            res["server_log_tail"] = log_tail(log)
    return {
        "target": target,
        "workload": spec.workload,
        "argv": argv,
        "background_cores": background,
        "elapsed_s": round(time.monotonic() - t0, 2),
        **res,
        "server_stop": server.stop_info,
    }
