"""The fault report's harness: a real server process per scenario, watched while it is attacked.

`Live` starts `python -m cli` on a free loopback port (stderr to a file, so the server is never held
up by us), waits for /health, and while a scenario runs asks /health every 50 ms (worst latency,
failures) and samples the server's RSS. Afterwards it waits for the rooms to go and counts what
was left behind: processes below the server other than the spawner helper, zombies, and file
descriptors beyond those the server held before the scenario.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHILD = str(ROOT / "tests" / "children" / "child.py")
PROBE_EVERY = 0.05
PROBE_TIMEOUT = 2.0
SETTLE = 15.0  # how long rooms may take to go once a scenario's clients have left


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child(mode: str, *args: str) -> list[str]:
    """CMD and ARGS for the test child in MODE."""
    return [sys.executable, "--", "-u", CHILD, mode, *args]


def sh(script: str) -> list[str]:
    return ["sh", "--", "-c", script]


@dataclass
class Watch:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    peak_rss: int = 0  # bytes


@dataclass
class Census:
    processes: int
    zombies: int
    fds: int
    names: list[str] = field(default_factory=list)  # what the leftover processes are


def name_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _stat(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(") ", 1)[1].split()
    return int(fields[1]), fields[0]


def descendants(root: int) -> dict[int, str]:
    """Every process below `root`: pid -> state (Z for a zombie)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                parents[int(entry)] = found
    ours, result, grew = {root}, {}, True
    while grew:
        grew = False
        for pid, (ppid, state) in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                result[pid] = state
                grew = True
    return result


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# What a connection, a child or its pipes hold; one-off descriptors made lazily (an epoll for a
# worker thread) are not leaks, and do not grow with the attack.
_COUNTED = ("socket:", "pipe:", "anon_inode:[pidfd]")


def fd_count(pid: int) -> int:
    """Descriptors of the kinds a leak would be: sockets, pipes, pidfds."""
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(_COUNTED)
    except OSError:
        pass
    return count


class Live:
    """One server process under attack."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.http = f"http://127.0.0.1:{port}"
        self.log = log
        self.watch = Watch()
        self.baseline_fds = 0
        self.helper = 0
        self.settled = 0.0  # how long the rooms took to go after the scenario

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def others(self) -> dict[int, str]:
        """Processes below the server other than the spawner helper."""
        return {pid: state for pid, state in descendants(self.pid).items() if pid != self.helper}

    async def census(self, settle: float = SETTLE) -> Census:
        """Once every room has gone (or `settle` seconds have passed): what is left."""
        started = time.monotonic()
        while time.monotonic() < started + settle:
            if not self.others():
                # Quiet twice, half a second apart: a room whose client left at once may still be
                # starting its child, which then stops at once; that is no leak.
                await asyncio.sleep(0.5)
                if not self.others():
                    break
            await asyncio.sleep(0.1)
        self.settled = time.monotonic() - started
        left = self.others()
        await asyncio.sleep(0.5)  # descriptors of connections that just closed
        zombies = sum(1 for state in left.values() if state == "Z")
        fds = max(0, fd_count(self.pid) - self.baseline_fds)
        return Census(len(left) - zombies, zombies, fds, sorted({name_of(pid) for pid in left}))

    async def _probe(self) -> None:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            while True:
                started = time.monotonic()
                try:
                    response = await client.get(self.http + "/health")
                    if response.status_code != 200:
                        self.watch.failures += 1
                except httpx.HTTPError:
                    self.watch.failures += 1
                self.watch.latencies.append(time.monotonic() - started)
                self.watch.peak_rss = max(self.watch.peak_rss, rss(self.pid))
                await asyncio.sleep(PROBE_EVERY)

    async def _sample_rss(self) -> None:  # more often than the probe: a peak can be short
        while True:
            self.watch.peak_rss = max(self.watch.peak_rss, rss(self.pid))
            await asyncio.sleep(0.01)

    @asynccontextmanager
    async def watched(self) -> AsyncIterator[Watch]:
        tasks = [asyncio.ensure_future(self._probe()), asyncio.ensure_future(self._sample_rss())]
        try:
            yield self.watch
            deadline = time.monotonic() + PROBE_TIMEOUT
            while not self.watch.latencies and time.monotonic() < deadline:  # at least one answer
                await asyncio.sleep(0.01)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task


@asynccontextmanager
async def serve(options: Sequence[str], cmd: Sequence[str], env: dict[str, str] | None = None) -> AsyncIterator[Live]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="scalesocket-fault-", suffix=".log")[1])
    argv = [sys.executable, "-m", "cli", "--addr", f"127.0.0.1:{port}", *options, *cmd]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    live = Live(process, port, log)
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if (await client.get(live.http + "/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {live.stderr()[-2000:]}")
                await asyncio.sleep(0.05)
        helpers = list(descendants(live.pid))
        live.helper = helpers[0] if helpers else 0
        live.baseline_fds = fd_count(live.pid)
        yield live
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.unlink(missing_ok=True)
