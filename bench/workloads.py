"""The workload catalogue: default sizes, scaling, the child command each server runs, and the
metrics each workload reports (with which direction is better).

The `Spec` is what the driver hands the load generator (as JSON), so both sides agree on sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMES = (
    "echo-latency",
    "echo-forwarded",
    "stdout-throughput",
    "stdout-throughput-1k",
    "connect-rate",
    "fanout",
    "idle-memory",
)
# Workloads only scalesocket can run: echo-forwarded needs a cluster (--registry) to forward within.
SCALESOCKET_ONLY = frozenset({"echo-forwarded"})

# Sizes at --scale 1. Every one of them is multiplied by --scale (at least 1 remains).
BASE_SIZES: dict[str, dict[str, int]] = {
    "echo-latency": {"clients": 50, "messages": 200},
    "echo-forwarded": {"clients": 50, "messages": 200},
    "stdout-throughput": {"lines": 200_000},
    "stdout-throughput-1k": {"lines": 100_000},
    "connect-rate": {"sessions": 500},
    "fanout": {"clients": 100, "lines": 20_000},
    "idle-memory": {"clients": 1000},
}
# Seconds to wait after connecting before measuring: lets the server finish attaching clients to
# rooms (fanout) and lets memory settle (idle-memory). Shrunk with small scales so smoke runs are fast.
BASE_SETTLE = {"echo-latency": 0.2, "echo-forwarded": 0.2, "fanout": 0.5, "idle-memory": 2.0}


@dataclass
class Spec:
    """One workload run, as the load generator needs it. JSON-serialisable (driver -> load)."""

    workload: str
    url: str = ""  # ws://127.0.0.1:PORT; rooms are appended as /r<N>
    server_pid: int = 0
    deadline_s: float = 50.0
    clients: int = 1
    messages: int = 0
    lines: int = 0
    sessions: int = 0
    line_bytes: int = 0  # 0: seq's plain "%d" lines; else zero-padded fixed-width lines
    msg_bytes: int = 16
    per_room: int = 10  # idle-memory: clients per room
    concurrency: int = 10  # handshakes (connect-rate: sessions) in flight at once
    shared_room: bool = True  # fanout: all clients in one room; False = websocketd's nearest equivalent
    settle_s: float = 0.0
    room_prefix: str = "r"
    direct_url: str = ""  # echo-forwarded: the rooms' owner, measured directly for comparison
    direct_pid: int = 0


def make_spec(name: str, scale: float) -> Spec:
    if name not in BASE_SIZES:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(NAMES)}")
    spec = Spec(workload=name, line_bytes=1000 if name.endswith("-1k") else 0)
    for key, base in BASE_SIZES[name].items():
        setattr(spec, key, max(1, round(base * scale)))
    spec.settle_s = BASE_SETTLE.get(name, 0.0) * min(1.0, max(scale, 0.1))
    return spec


def child_argv(spec: Spec) -> list[str]:
    """The command (CMD ARGS...) both servers run for this workload."""
    if spec.workload in ("echo-latency", "echo-forwarded", "idle-memory"):
        return ["cat"]
    if spec.workload.startswith("stdout-throughput"):
        fmt = ["-f", f"%0{spec.line_bytes}.0f"] if spec.line_bytes else []
        return ["seq", *fmt, "1", str(spec.lines)]
    if spec.workload == "connect-rate":
        return ["echo", "hi"]
    if spec.workload == "fanout":
        return ["sh", "-c", f"read x; exec seq 1 {spec.lines}"]
    raise ValueError(spec.workload)


def line_format(line_bytes: int) -> bytes:
    """printf format of seq's i-th line: `%01000.0f` of an integer is the integer zero-padded."""
    return b"%0" + str(line_bytes).encode() + b"d" if line_bytes else b"%d"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool | None  # None: informational, no ratio


_RATE_LAT = ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")
METRICS: dict[str, list[Metric]] = {
    "echo-latency": [Metric("msgs_per_s", "msgs/s", True), *(Metric(k, lbl, False) for k, lbl in _RATE_LAT)],
    # Through an instance that forwards every client to the room's owner, against the owner directly.
    "echo-forwarded": [
        Metric("msgs_per_s", "msgs/s forwarded", True),
        *(Metric(k, lbl + " forwarded", False) for k, lbl in _RATE_LAT),
        Metric("direct_msgs_per_s", "msgs/s direct", None),
        Metric("direct_p50_ms", "p50 ms direct", None),
        Metric("direct_p99_ms", "p99 ms direct", None),
        Metric("added_p50_ms", "p50 ms added by forwarding", None),
        Metric("added_p99_ms", "p99 ms added by forwarding", None),
        Metric("forwarded_ratio", "msgs/s forwarded / direct", None),
    ],
    "stdout-throughput": [Metric("lines_per_s", "lines/s", True)],
    "stdout-throughput-1k": [Metric("lines_per_s", "lines/s", True)],
    "connect-rate": [Metric("sessions_per_s", "sessions/s", True), *(Metric(k, lbl, False) for k, lbl in _RATE_LAT)],
    "fanout": [Metric("deliveries_per_s", "deliveries/s", True)],
    "idle-memory": [
        Metric("pss_per_client_kb", "PSS KB/client (server+children)", False),
        Metric("children", "children (processes)", None),
    ],
}
