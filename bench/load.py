"""Load generator: the client side of every workload, in one asyncio process (uvloop if available).

Run by the driver as `python -m bench.load SPEC_JSON` and prints one JSON result on stdout. It owns
the per-message correctness checks and the CPU accounting of the timed phase: its own CPU
(getrusage, so it is measured apart from the driver) and the server's and its children's (/proc).

picows is used because it spends well under a microsecond per received frame; the `websockets`
client needs several, which on a shared 2-core box would be taken from the server under test.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import math
import os
import resource
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

import picows
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from bench import procs
from bench.workloads import Spec, line_format

perf = time.perf_counter
TEXT, BINARY, CONT, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.CLOSE
Result = dict[str, Any]
C = TypeVar("C", bound="Conn")


class Conn(WSListener):
    """One client connection: reassembles fragmented messages, answers the server's CLOSE and keeps
    its code, and hands every complete message to `on_message`."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None  # None: no CLOSE frame from the server (yet)
        self._frags: list[bytes] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        if t is TEXT or t is BINARY:
            if frame.fin:
                self.on_message(frame.get_payload_as_bytes())
            else:
                self._frags = [frame.get_payload_as_bytes()]
        elif t is CONT:
            self._frags.append(frame.get_payload_as_bytes())
            if frame.fin:
                msg, self._frags = b"".join(self._frags), []
                self.on_message(msg)
        elif t is CLOSE:
            payload = frame.get_payload_as_bytes()
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_closed()

    def on_message(self, msg: bytes) -> None:
        pass

    def on_closed(self) -> None:
        pass

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send(TEXT, data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            if not self.transport.is_close_frame_sent:
                self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


def expected_lines(lines: int, line_bytes: int) -> list[bytes]:
    """seq's output, one entry per line, index i = line i (index 0 unused). Built before the timed
    phase and shared by all clients: comparing with a ready-made bytes object costs the client
    about half of formatting the line for every message (at 1000-byte lines this holds ~100 MB)."""
    fmt = line_format(line_bytes)
    return [b"", *(fmt % i for i in range(1, lines + 1))]


class Lines(Conn):
    """Expects expected[1], expected[2], ... in order: seq's output, byte for byte. `t_last` is when
    the last expected line arrived (0.0 until then)."""

    def __init__(self, expected: list[bytes]) -> None:
        super().__init__()
        self.exp, self.expect = expected, len(expected) - 1
        self.n = self.bad = 0
        self.first_bad: tuple[int, str] | None = None
        self.t_last = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # Fast path for the common whole text frame, inlined: this callback runs once per message
        # and its cost decides how far the client is from being the bottleneck.
        if frame.msg_type is not TEXT or not frame.fin:
            return super().on_ws_frame(transport, frame)  # fragments and CLOSE: the general path
        n = self.n = self.n + 1
        try:
            ok = frame.get_payload_as_bytes() == self.exp[n]
        except IndexError:  # more lines than seq prints
            ok = False
        if not ok:
            self.mismatch(n, frame.get_payload_as_bytes())
        if n == self.expect:
            self.t_last = perf()
            self.done.set_result(None)

    def on_message(self, msg: bytes) -> None:  # reassembled fragmented messages only
        n = self.n = self.n + 1
        if n >= len(self.exp) or msg != self.exp[n]:
            self.mismatch(n, msg)
        if n == self.expect:
            self.t_last = perf()
            self.done.set_result(None)

    def mismatch(self, n: int, msg: bytes) -> None:
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = (n, msg[:40].decode("utf-8", "replace"))

    def on_closed(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    @property
    def complete(self) -> bool:
        return self.n == self.expect and self.bad == 0


class Ctx:
    """Deadline and error tally shared by one workload run."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.deadline = perf() + spec.deadline_s
        self.errors: Counter[str] = Counter()

    def left(self, cap: float = math.inf) -> float:
        return max(0.05, min(cap, self.deadline - perf()))

    def error(self, e: BaseException) -> None:
        self.errors[f"{type(e).__name__}: {e}"[:120]] += 1

    def url(self, room: int) -> str:
        return f"{self.spec.url}/{self.spec.room_prefix}{room}"

    async def connect(self, room: int, factory: Callable[[], C]) -> C:
        t = self.left(10.0)
        _, listener = await asyncio.wait_for(
            picows.ws_connect(factory, self.url(room), websocket_handshake_timeout=t), t + 1
        )
        return cast(C, listener)

    async def connect_many(self, rooms: list[int], factory: Callable[[], C]) -> list[C | None]:
        """Connect one client per entry of `rooms`, `concurrency` handshakes at a time; None = failed."""
        out: list[C | None] = [None] * len(rooms)
        sem = asyncio.Semaphore(self.spec.concurrency)

        async def one(i: int) -> None:
            async with sem:
                if perf() >= self.deadline:
                    self.errors["deadline before connect"] += 1
                    return
                try:
                    out[i] = await self.connect(rooms[i], factory)
                except Exception as e:  # every failure is counted and reported, never raised
                    self.error(e)

        await asyncio.gather(*(one(i) for i in range(len(rooms))))
        return out

    async def wait_all(self, futs: Sequence[asyncio.Future[Any]], what: str) -> None:
        if futs:
            done, _ = await asyncio.wait(futs, timeout=self.left())
            if len(done) < len(futs):
                self.errors[f"deadline: {len(futs) - len(done)} {what}"] += 1


class Cpu:
    """CPU used between construction and `stop()`, in cores (CPU seconds per wall second)."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        # /proc is read before our own rusage and clock, so walking it is not charged to the client
        self.server, self.children = procs.server_cpu(server_pid)
        self.machine = procs.machine_busy()
        self.client = self._own()
        self.t0 = perf()

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def stop(self) -> dict[str, float | None]:
        wall, client = perf() - self.t0, self._own()
        server, children = procs.server_cpu(self.pid)
        machine = procs.machine_busy()

        def cores(a: float | None, b: float | None) -> float | None:
            # max(0): a child reaped mid-run moves from schedstat to the server's cutime, which is
            # rounded to whole ticks, so a tiny children figure can dip just below zero
            return None if a is None or b is None else round(max(0.0, (b - a) / wall), 3)

        out = {
            "wall_s": round(wall, 3),
            "ncpu": len(os.sched_getaffinity(0)),
            "client": cores(self.client, client),
            "server": cores(self.server, server),
            "children": cores(self.children, children),
            "machine": cores(self.machine, machine),
        }
        mine = [out["client"], out["server"], out["children"], out["machine"]]
        if all(v is not None for v in mine):
            c, s, k, m = cast(list[float], mine)
            # CPU of processes outside the benchmark; well above ~0.1 means the run was disturbed
            out["other"] = round(max(0.0, m - c - s - k), 3)
        return out


def early_closes(conns: list[C | None], complete: Callable[[C], bool]) -> dict[str, int]:
    """How the connections that did not get everything ended: the server's close code, "none"
    (TCP dropped without a CLOSE frame), "open" (still waiting at the deadline), "never" (no connection)."""
    out: Counter[str] = Counter()
    for c in conns:
        if c is None:
            out["never"] += 1
        elif not complete(c):
            out[str(c.close_code) if c.close_code is not None else "none" if c.closed.done() else "open"] += 1
    return dict(out)


async def close_all(conns: list[C | None]) -> None:
    live = [c for c in conns if c is not None]
    for c in live:
        c.close()
    if live:
        await asyncio.wait([c.closed for c in live], timeout=5.0)


def payload_bytes(n: int, line_bytes: int) -> int:
    """Bytes in seq's first n lines (without newlines); computed, so the receive path stays lean."""
    return n * line_bytes if line_bytes else sum(len(str(i)) for i in range(1, n + 1))


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    s = sorted(values)
    return round(s[max(0, math.ceil(p / 100 * len(s)) - 1)] * 1000, 3) if s else None


# ---------------------------------------------------------------- workloads


async def echo_latency(ctx: Ctx) -> Result:
    s = ctx.spec
    rtts: list[float] = []

    class Echo(Conn):
        """Closed loop driven from the frame callback: no task or future per message, so the
        client's cost per round trip stays small."""

        def __init__(self) -> None:
            super().__init__()
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.tag = self.sent = self.got = self.bad = 0
            self.payload, self.t = b"", 0.0

        def send_next(self) -> None:
            head = b"%d:%d:" % (self.tag, self.sent)
            self.payload = head + b"x" * (s.msg_bytes - len(head))
            self.sent += 1
            self.t = perf()
            self.send(self.payload)

        def on_message(self, msg: bytes) -> None:
            now = perf()
            if self.got >= self.sent:  # nothing outstanding: a stray or duplicated message
                self.bad += 1
                return
            rtts.append(now - self.t)
            self.got += 1
            self.bad += msg != self.payload
            if self.got < s.messages:
                self.send_next()
            elif not self.done.done():
                self.done.set_result(None)

        def on_closed(self) -> None:
            if not self.done.done():
                self.done.set_result(None)

    conns = await ctx.connect_many(list(range(s.clients)), Echo)
    live = [c for c in conns if c is not None]
    await asyncio.sleep(s.settle_s)
    cpu = Cpu(s.server_pid)
    t0 = perf()
    for i, c in enumerate(live):
        c.tag = i
        c.send_next()
    await ctx.wait_all([c.done for c in live], "clients unfinished")
    wall = perf() - t0
    cores = cpu.stop()

    def ok(c: Echo) -> bool:
        return c.got == s.messages and c.bad == 0

    early = early_closes(conns, ok)
    await close_all(conns)
    return {
        "complete": len(live) == s.clients and all(ok(c) for c in live),
        "metrics": {"msgs_per_s": round(len(rtts) / wall, 1), "p50_ms": pct(rtts, 50), "p99_ms": pct(rtts, 99)},
        "detail": {
            "echoes": len(rtts),
            "expected": s.clients * s.messages,
            "bad": sum(c.bad for c in live),
            "max_ms": pct(rtts, 100),
            "wall_s": round(wall, 3),
        },
        "early_close": early,
        "cpu": cores,
    }


async def stdout_throughput(ctx: Ctx) -> Result:
    s = ctx.spec
    expected = expected_lines(s.lines, s.line_bytes)
    cpu = Cpu(s.server_pid)
    t0 = perf()  # from connect: the child's start-up is part of what a client waits for
    conns: list[Lines | None] = [None]
    try:
        conns[0] = c = await ctx.connect(0, lambda: Lines(expected))
        await ctx.wait_all([c.done], "lines missing")
        wall = (c.t_last or perf()) - t0
    except Exception as e:
        ctx.error(e)
        wall = perf() - t0
    cores = cpu.stop()
    early = early_closes(conns, lambda c: c.complete)
    await close_all(conns)
    c0 = conns[0]
    n = c0.n if c0 else 0
    return {
        "complete": c0 is not None and c0.complete,
        "metrics": {
            "lines_per_s": round(n / wall, 1),
            "mb_per_s": round(payload_bytes(n, s.line_bytes) / wall / 1e6, 2),
        },
        "detail": {
            "received": n,
            "expected": s.lines,
            "out_of_order": c0.bad if c0 else 0,
            "first_bad": c0.first_bad if c0 else None,
            "wall_s": round(wall, 3),
        },
        "early_close": early,
        "cpu": cores,
    }


async def fanout(ctx: Ctx) -> Result:
    s = ctx.spec
    rooms = [0 if s.shared_room else i for i in range(s.clients)]
    expected = expected_lines(s.lines, 0)
    conns = await ctx.connect_many(rooms, lambda: Lines(expected))
    live = [c for c in conns if c is not None]
    await asyncio.sleep(s.settle_s)  # let the server finish attaching the last clients to the room
    cpu = Cpu(s.server_pid)
    t_go = perf()
    for c in live[:1] if s.shared_room else live:
        c.send(b"go")
    await ctx.wait_all([c.done for c in live], "clients still receiving")
    cores = cpu.stop()
    early = early_closes(conns, lambda c: c.complete)
    await close_all(conns)
    delivered = sum(c.n for c in live)
    wall = max((c.t_last for c in live if c.t_last), default=perf()) - t_go
    counts = [c.n if c else 0 for c in conns]
    return {
        "complete": len(live) == s.clients and all(c.complete for c in live),
        "metrics": {"deliveries_per_s": round(delivered / wall, 1)},
        "detail": {
            "delivered": delivered,
            "expected": s.clients * s.lines,
            "min_received": min(counts),
            "out_of_order_clients": sum(c.bad > 0 for c in live),
            "wall_s": round(wall, 3),
            "rooms": "shared" if s.shared_room else "one per client",
        },
        "early_close": early,
        "cpu": cores,
    }


async def connect_rate(ctx: Ctx) -> Result:
    s = ctx.spec

    class First(Conn):
        def __init__(self) -> None:
            super().__init__()
            self.first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def on_message(self, msg: bytes) -> None:
            if not self.first.done():
                self.first.set_result(msg)

        def on_closed(self) -> None:
            if not self.first.done():
                self.first.set_exception(ConnectionError(f"closed before first message ({self.close_code})"))

    times: list[float] = []
    wrong = 0
    todo = iter(range(s.sessions))

    async def worker() -> None:
        nonlocal wrong
        for i in todo:  # shared iterator: each session is taken by exactly one worker
            if perf() >= ctx.deadline:
                return
            t0, c = perf(), None
            try:
                c = await ctx.connect(i, First)
                msg = await asyncio.wait_for(asyncio.shield(c.first), ctx.left(10.0))
                times.append(perf() - t0)
                wrong += msg != b"hi"
            except Exception as e:
                ctx.error(e)
            finally:
                if c is not None:
                    c.close()
                    await asyncio.wait([c.closed], timeout=2.0)

    cpu = Cpu(s.server_pid)
    t0 = perf()
    await asyncio.gather(*(worker() for _ in range(min(s.concurrency, s.sessions))))
    wall = perf() - t0
    cores = cpu.stop()
    return {
        "complete": len(times) == s.sessions and wrong == 0,
        "metrics": {"sessions_per_s": round(len(times) / wall, 1), "p50_ms": pct(times, 50), "p99_ms": pct(times, 99)},
        "detail": {"completed": len(times), "expected": s.sessions, "wrong_message": wrong, "wall_s": round(wall, 3)},
        "early_close": {},
        "cpu": cores,
    }


async def idle_memory(ctx: Ctx) -> Result:
    s = ctx.spec
    rooms = [i // s.per_room for i in range(s.clients)]
    n_rooms = rooms[-1] + 1
    idle_server = server_pss(s.server_pid)

    class Idle(Conn):
        def __init__(self) -> None:
            super().__init__()
            self.inbox: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def on_message(self, msg: bytes) -> None:
            if not self.inbox.done():
                self.inbox.set_result(msg)

    conns = await ctx.connect_many(rooms, Idle)
    # Liveness: the first client of every room sends a line and must get cat's echo back.
    senders: dict[int, Idle] = {}
    for c, r in zip(conns, rooms, strict=True):
        if c is not None and r not in senders:
            senders[r] = c
            c.send(b"ping-%d" % r)
    await ctx.wait_all([c.inbox for c in senders.values()], "rooms without echo")
    echoed = sum(
        c.inbox.done() and not c.inbox.cancelled() and c.inbox.result() == b"ping-%d" % r for r, c in senders.items()
    )
    await asyncio.sleep(s.settle_s)
    kids = procs.children(s.server_pid)
    server = server_pss(s.server_pid)
    children = sum(procs.pss_kb(k) or 0 for k in kids)
    still_open = sum(c is not None and not c.closed.done() for c in conns)
    early = early_closes(conns, lambda c: not c.closed.done())
    await close_all(conns)
    return {
        "complete": still_open == s.clients and echoed == n_rooms,
        # marginal cost: what the loaded server and its children hold beyond the idle server
        "metrics": {
            "pss_per_client_kb": round((server + children - idle_server) / s.clients, 1),
            "children": len(kids),
        },
        "detail": {
            "rooms": n_rooms,
            "rooms_echoed": echoed,
            "open_at_measurement": still_open,
            "server_pss_idle_kb": idle_server,
            "server_pss_kb": server,
            "children_pss_kb": children,
        },
        "early_close": early,
        "cpu": {},
    }


async def echo_forwarded(ctx: Ctx) -> Result:
    """echo-latency against the rooms' owner directly (rooms d<N>), then through another instance
    of the cluster that forwards every client to that owner (rooms f<N>, owned by it beforehand)."""
    s = ctx.spec
    half = replace(s, deadline_s=s.deadline_s / 2)
    direct_ctx = Ctx(replace(half, url=s.direct_url, server_pid=s.direct_pid, room_prefix="d"))
    direct = await echo_latency(direct_ctx)
    ctx.errors.update(direct_ctx.errors)
    ctx.deadline = perf() + half.deadline_s
    ctx.spec = replace(half, room_prefix="f")
    forwarded = await echo_latency(ctx)
    d, f = direct.get("metrics") or {}, forwarded.get("metrics") or {}

    def added(key: str) -> float | None:
        return round(f[key] - d[key], 3) if f.get(key) is not None and d.get(key) is not None else None

    ratio = round(f["msgs_per_s"] / d["msgs_per_s"], 3) if f.get("msgs_per_s") and d.get("msgs_per_s") else None
    return {
        **forwarded,
        "complete": direct["complete"] and forwarded["complete"],
        "metrics": {
            **f,
            "direct_msgs_per_s": d.get("msgs_per_s"),
            "direct_p50_ms": d.get("p50_ms"),
            "direct_p99_ms": d.get("p99_ms"),
            "added_p50_ms": added("p50_ms"),
            "added_p99_ms": added("p99_ms"),
            "forwarded_ratio": ratio,
        },
        "direct": {k: direct.get(k) for k in ("detail", "early_close", "cpu")},
        "early_close": {**(direct.get("early_close") or {}), **(forwarded.get("early_close") or {})},
    }


WORKLOADS: dict[str, Callable[[Ctx], Coroutine[Any, Any, Result]]] = {
    "echo-latency": echo_latency,
    "echo-forwarded": echo_forwarded,
    "stdout-throughput": stdout_throughput,
    "stdout-throughput-1k": stdout_throughput,
    "connect-rate": connect_rate,
    "fanout": fanout,
    "idle-memory": idle_memory,
}


def server_pss(server_pid: int) -> int:
    return sum(procs.pss_kb(pid) or 0 for pid in procs.server_processes(server_pid))


async def children_gone(server_pid: int) -> dict[str, float]:
    """After every client left, a server must end its children: poll /proc (there is no event to
    wait for) for at most 5 s and report how many are left."""
    t0 = perf()
    for _ in range(100):
        if not procs.children(server_pid):
            break
        await asyncio.sleep(0.05)
    return {"children_left": len(procs.children(server_pid)), "children_gone_s": round(perf() - t0, 3)}


async def run(spec: Spec) -> Result:
    ctx = Ctx(spec)
    try:
        res = await asyncio.wait_for(WORKLOADS[spec.workload](ctx), spec.deadline_s + 3)  # hard bound
    except TimeoutError as e:
        ctx.error(e)
        res = {"complete": False, "metrics": {}, "early_close": {}, "cpu": {}}
    res.update(await children_gone(spec.server_pid))
    res["errors"] = dict(ctx.errors.most_common(5))
    res["complete"] = res["complete"] and not ctx.errors
    return res


def event_loop_runner() -> Callable[[Coroutine[Any, Any, Result]], Result]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: list[str]) -> int:
    spec = Spec(**json.loads(argv[0]))
    host = urllib.parse.urlsplit(spec.url).hostname or ""
    if not ipaddress.ip_address(host).is_loopback:  # this harness only ever loads 127.0.0.0/8
        print(f"refusing non-loopback target {host!r}", file=sys.stderr)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1000 idle clients need the fds
    gc.freeze()  # keep the collector from walking start-up objects during the measurement
    print(json.dumps(event_loop_runner()(run(spec))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
