"""/proc readers (Linux only): process trees, CPU seconds of a server and of its descendants,
machine-wide busy time, PSS, and the safe kill of a server's leftover children.

CPU of live processes comes from per-thread schedstat (nanoseconds): /proc/<pid>/stat ticks are
truncated to 10 ms per process, which with dozens of short-lived children would swamp the result.
Children the server already reaped are counted through its cutime + cstime.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from typing import NamedTuple

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Stat(NamedTuple):
    ppid: int
    own_ticks: int  # utime + stime
    reaped_ticks: int  # cutime + cstime: children this process has waited for
    start: int  # start time since boot, in ticks: with the pid, identifies one process


def stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: fields are counted after the last ")"
    v = data[data.rindex(b")") + 2 :].split()
    return Stat(int(v[1]), int(v[11]) + int(v[12]), int(v[13]) + int(v[14]), int(v[19]))


def descendants(root: int) -> list[int]:
    """PIDs of every live descendant of root (children, grandchildren, ...)."""
    kids: defaultdict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := stat(int(name))) is not None:
            kids[s.ppid].append(int(name))
    out: list[int] = []
    todo = [root]
    while todo:
        for pid in kids.get(todo.pop(), ()):
            out.append(pid)
            todo.append(pid)
    return out


# scalesocket's spawner helper (app/spawner.py): it starts and reaps the rooms' children on the
# server's behalf, so it counts as part of the server, and the processes it started as children.
HELPER_SCRIPT = "app/spawner.py"


def is_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(arg.decode(errors="replace").endswith(HELPER_SCRIPT) for arg in argv)


def server_processes(root: int) -> list[int]:
    """The server: its own process and any spawner helper it runs."""
    return [root, *(pid for pid in descendants(root) if (s := stat(pid)) and s.ppid == root and is_helper(pid))]


def children(root: int) -> list[int]:
    """The server's children in the benchmark's sense: every descendant that is not a helper."""
    helpers = set(server_processes(root)[1:])
    return [pid for pid in descendants(root) if pid not in helpers]


def live_cpu_seconds(pid: int, fallback_ticks: int) -> float:
    """Run time of a live process summed over its threads (schedstat, ns)."""
    total, seen = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9 if seen else fallback_ticks / CLK_TCK


def server_cpu(pid: int) -> tuple[float | None, float | None]:
    """(CPU s of the server and its helper, CPU s of all its children: live ones + reaped ones)."""
    if stat(pid) is None:
        return None, None
    server, kids = 0.0, 0.0
    for proc in server_processes(pid):
        if (s := stat(proc)) is not None:
            server += live_cpu_seconds(proc, s.own_ticks)
            kids += s.reaped_ticks / CLK_TCK  # children the server (or its helper) reaped
    for kid in children(pid):
        if (k := stat(kid)) is not None:
            # a grandchild reaped by a child shows up in that child's cutime
            kids += live_cpu_seconds(kid, k.own_ticks) + k.reaped_ticks / CLK_TCK
    return server, kids


def machine_busy() -> float:
    """Non-idle CPU seconds of the whole machine since boot, all cores summed."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK  # minus idle and iowait; guest is inside user already


def wait_quiet(max_s: float, threshold: float, window: float = 0.5) -> float:
    """Wait (at most max_s) until the machine is below `threshold` busy cores; return the last reading."""
    t_end = time.monotonic() + max_s
    while True:
        a = machine_busy()
        time.sleep(window)
        busy = (machine_busy() - a) / window
        if busy < threshold or time.monotonic() >= t_end:
            return round(busy, 3)


def pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def snapshot(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every descendant of root, for `kill_snapshot` after root is gone."""
    return [(pid, s.start) for pid in descendants(root) if (s := stat(pid)) is not None]


def kill_snapshot(procs: list[tuple[int, int]]) -> int:
    """SIGKILL each process of a snapshot that still exists with the same start time, so that a
    reused PID is never hit. Returns how many were killed."""
    killed = 0
    for pid, start in procs:
        s = stat(pid)
        if s is not None and s.start == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed
