"""The fault scenarios of issue 10: what a hostile client or child does, and what SPEC says must follow.

Each scenario gets a fresh server (`Live`) and a size (`big`: the counts of `make faults`; otherwise
the smaller ones `make test` runs), and returns what it observed and whether that is the outcome
the spec names. Leaks, RSS and /health are measured around it by the runner.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from faults import wire
from faults.harness import Live, child, sh

MiB = 1 << 20
Outcome = tuple[str, bool]


@dataclass
class Scenario:
    name: str
    expected: str
    run: Callable[[Live, bool], Awaitable[Outcome]]
    cmd: list[str] = field(default_factory=lambda: ["cat"])
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    settle: float = 15.0  # how long its rooms may take to go once its clients have left


SCENARIOS: list[Scenario] = []


def scenario(
    name: str,
    expected: str,
    cmd: list[str] | None = None,
    options: list[str] | None = None,
    env: dict[str, str] | None = None,
    settle: float = 15.0,
) -> Callable[[Callable[[Live, bool], Awaitable[Outcome]]], Callable[[Live, bool], Awaitable[Outcome]]]:
    def register(run: Callable[[Live, bool], Awaitable[Outcome]]) -> Callable[[Live, bool], Awaitable[Outcome]]:
        SCENARIOS.append(Scenario(name, expected, run, cmd or ["cat"], options or [], env or {}, settle))
        return run

    return register


def ws(live: Live, path: str, **kwargs: object) -> ws_connect:
    return ws_connect(live.url + path, open_timeout=10, max_size=None, **kwargs)  # type: ignore[arg-type]


async def closed_with(conn: ClientConnection, within: float = 10.0) -> str:
    try:
        async with asyncio.timeout(within):
            while True:
                await conn.recv()
    except ConnectionClosed as closed:
        return str(closed.rcvd.code) if closed.rcvd is not None else "closed without a close frame"
    except TimeoutError:
        return f"still open after {within:.0f} s"


# --- rooms and clients ---------------------------------------------------------------------------------------


@scenario("rooms opened and closed in sequence", "each room gets its child, reaped when its client leaves")
async def rooms_in_sequence(live: Live, big: bool) -> Outcome:
    n, echoed = (1000 if big else 50), 0
    for i in range(n):
        async with ws(live, f"/seq{i}") as conn:
            await conn.send("x")
            echoed += await asyncio.wait_for(conn.recv(), 10) == "x"
    return f"{n} rooms: {echoed} echoed", echoed == n


@scenario("rooms opened at once", "every room gets its child; all reaped when the clients leave")
async def rooms_at_once(live: Live, big: bool) -> Outcome:
    n = 200 if big else 20

    async def one(i: int) -> bool:
        async with ws(live, f"/many{i}") as conn:
            await conn.send("x")
            return await asyncio.wait_for(conn.recv(), 30) == "x"

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    return f"{n} at once: {ok} echoed", ok == n


@scenario("idle clients", "all stay connected, each answered", cmd=child("echo"))
async def idle_clients(live: Live, big: bool) -> Outcome:
    n, rooms = (3000 if big else 100), 30
    conns = []
    try:
        for i in range(n):
            conns.append(await ws(live, f"/idle{i % rooms}"))
        await asyncio.sleep(3)
        await conns[-1].send("still here")
        answered = 0
        while answered < 1:
            message = await asyncio.wait_for(conns[-1].recv(), 10)
            answered += message == "still here"
        open_ = sum(1 for c in conns if c.close_code is None)
        return f"{open_}/{n} open after 3 s; last one answered", open_ == n
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


@scenario(
    "slowloris (a header byte at a time)",
    "closed after the handshake timeout; others unaffected",
    env={"SCALESOCKET_HANDSHAKE_TIMEOUT": "2"},
)
async def slowloris(live: Live, big: bool) -> Outcome:
    n = 500 if big else 50
    pairs = [await wire.connect(live.port) for _ in range(n)]
    start = asyncio.get_running_loop().time()
    request = wire.upgrade("/slow")
    closed = 0

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            for byte in request[:-2]:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 0.5) == b"":
                        return True
                except TimeoutError:
                    continue
                return True  # any answer before the request is whole: a refusal
        except ConnectionError:
            return True
        finally:
            writer.close()
        return False

    results = await asyncio.wait_for(asyncio.gather(*(dribble(r, w) for r, w in pairs)), 60)
    closed = sum(results)
    took = asyncio.get_running_loop().time() - start
    return f"{closed}/{n} closed by the server within {took:.1f} s (timeout 2 s)", closed == n


@scenario("origin from another site", "403 before the upgrade; no child")
async def cross_origin(live: Live, big: bool) -> Outcome:
    try:
        async with ws(live, "/o", origin="https://evil.example"):
            return "accepted", False
    except InvalidStatus as refused:
        return f"HTTP {refused.response.status_code}", refused.response.status_code == 403


@scenario(
    "room limit (--maxrooms 5)", "room 6 gets 503 with Retry-After; the others carry on", options=["--maxrooms", "5"]
)
async def max_rooms(live: Live, big: bool) -> Outcome:
    conns = [await ws(live, f"/lim{i}") for i in range(5)]
    try:
        try:
            async with ws(live, "/lim5"):
                return "room 6 accepted", False
        except InvalidStatus as refused:
            status, retry = refused.response.status_code, refused.response.headers.get("Retry-After")
        await conns[0].send("x")
        answered = await asyncio.wait_for(conns[0].recv(), 10) == "x"
        return f"HTTP {status}, Retry-After {retry}; room 1 answered: {answered}", status == 503 and bool(
            retry
        ) and answered
    finally:
        await asyncio.gather(*(c.close() for c in conns))


# --- handshakes ----------------------------------------------------------------------------------------------

MALFORMED: dict[str, Callable[[], bytes]] = {
    "no Sec-WebSocket-Key": lambda: wire.upgrade(headers={"Sec-WebSocket-Key": None}),
    "short key": lambda: wire.upgrade(headers={"Sec-WebSocket-Key": "c2hvcnQ="}),
    "version 8": lambda: wire.upgrade(headers={"Sec-WebSocket-Version": "8"}),
    "1 MiB header": lambda: wire.upgrade(headers={"X-Big": "x" * MiB}),
    "100 KB path": lambda: wire.upgrade("/" + "a" * 100_000),
    "HTTP/1.0 upgrade": lambda: wire.upgrade(version="HTTP/1.0"),
    "body on an upgrade": lambda: wire.upgrade(headers={"Content-Length": "5"}) + b"hello",
    "129 headers": lambda: wire.upgrade(headers={f"X-{i}": "1" for i in range(129)}),
    "pipelined requests": lambda: b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + wire.upgrade(),
}


def _malformed(kind: str) -> Callable[[Live, bool], Awaitable[Outcome]]:
    async def run(live: Live, big: bool) -> Outcome:
        status = await wire.status_of(live.port, MALFORMED[kind]())
        if kind == "pipelined requests":
            return status, status.startswith("HTTP/1.1 200")
        code = status.split()[1] if status.startswith("HTTP/") else ""
        return status, code.startswith("4")

    return run


for _kind in MALFORMED:
    SCENARIOS.append(
        Scenario(
            f"handshake: {_kind}",
            "answered (pipelined: each in turn)" if _kind == "pipelined requests" else "4xx before the upgrade",
            _malformed(_kind),
        )
    )


# --- frames --------------------------------------------------------------------------------------------------


@scenario("20 MiB message", "that client closed with 1009")
async def huge_message(live: Live, big: bool) -> Outcome:
    async with ws(live, "/big") as conn:
        try:
            await conn.send("x" * (20 * MiB))
        except ConnectionClosed:
            pass  # closed while we were still sending: the code is what counts
        code = await closed_with(conn)
    return code, code == "1009"


@scenario("fragmented message over the limit", "that client closed with 1009")
async def fragmented(live: Live, big: bool) -> Outcome:
    async with ws(live, "/frag") as conn:
        try:
            await conn.send(iter(["x" * MiB for _ in range(17)]))
        except ConnectionClosed:
            pass
        code = await closed_with(conn)
    return code, code == "1009"


@scenario("compressed frame (RSV1) without permessage-deflate", "1002: the server does not negotiate compression")
async def deflate(live: Live, big: bool) -> Outcome:
    reader, writer = await wire.opened(live.port, "/deflate")
    writer.write(wire.frame(0x1, b"\x00" * 100, rsv1=True))
    code = await wire.close_code(reader)
    writer.close()
    return code, code == "1002"


FRAME_VIOLATIONS: dict[str, tuple[bytes, str]] = {
    "reserved opcode 3": (wire.frame(0x3, b"x"), "1002"),
    "unmasked frame": (wire.frame(0x1, b"x", mask=False), "1002"),
    "ping of 126 bytes": (wire.frame(0x9, b"x" * 126), "1002"),
    "invalid UTF-8 text": (wire.frame(0x1, b"\xff\xfe"), "1007"),
    "close code 999": (wire.frame(0x8, (999).to_bytes(2, "big")), "1002"),
    "close code 1005": (wire.frame(0x8, (1005).to_bytes(2, "big")), "1002"),
}


def _violation(kind: str) -> Callable[[Live, bool], Awaitable[Outcome]]:
    async def run(live: Live, big: bool) -> Outcome:
        reader, writer = await wire.opened(live.port, "/frames")
        data, _ = FRAME_VIOLATIONS[kind]
        writer.write(data)
        code = await wire.close_code(reader)
        writer.close()
        return code, code == FRAME_VIOLATIONS[kind][1]

    return run


for _kind, (_, _code) in FRAME_VIOLATIONS.items():
    SCENARIOS.append(Scenario(f"frame: {_kind}", f"closed with {_code}", _violation(_kind)))


@scenario("ping flood, pongs never read", "answered or ignored; never reaches the child; memory bounded")
async def ping_flood(live: Live, big: bool) -> Outcome:
    n = 10_000 if big else 2_000
    reader, writer = await wire.opened(live.port, "/pings")
    before = live.watch.peak_rss
    ping = wire.frame(0x9, b"p" * 125)
    try:
        for i in range(n):
            writer.write(ping)
            if i % 500 == 0:
                await asyncio.wait_for(writer.drain(), 10)
        await asyncio.wait_for(writer.drain(), 10)
        await asyncio.sleep(1)
        grew = max(0, live.watch.peak_rss - before) / MiB
        writer.write(wire.frame(0x1, b"after"))
        await writer.drain()
        return f"{n} pings sent; RSS grew {grew:.0f} MiB", grew < 64
    except (ConnectionError, TimeoutError) as error:
        return f"connection ended: {type(error).__name__}", True
    finally:
        writer.close()


@scenario(
    "clients flooding a child that never reads",
    "reads pause at the inbound budget; memory bounded; a client that left is noticed by the keepalive timeout",
    cmd=child("no-read"),
    settle=45.0,  # SPEC §11: "at the latest by the keepalive timeout" (ping interval + ping timeout, 40 s)
)
async def inbound(live: Live, big: bool) -> Outcome:
    n, size = (40, 16 * MiB) if big else (8, 4 * MiB)
    conns = [await ws(live, f"/sink{i % 4}") for i in range(n)]
    message = "x" * (size - 1024)
    sends = [asyncio.ensure_future(c.send(message)) for c in conns]
    await asyncio.sleep(5)
    peak = live.watch.peak_rss / MiB
    for s in sends:
        s.cancel()
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    await asyncio.gather(*sends, return_exceptions=True)
    return f"{n} x {size // MiB} MiB sent: server peak {peak:.0f} MiB", peak < 600


# --- json framing --------------------------------------------------------------------------------------------

JSON = ["--frame=json"]


def _json(message: str | bytes, check: Callable[[list[str]], Outcome]) -> Callable[[Live, bool], Awaitable[Outcome]]:
    async def run(live: Live, big: bool) -> Outcome:
        async with ws(live, "/j") as conn:
            await asyncio.wait_for(conn.recv(), 10)  # the child's "ready <pid>", broadcast (not JSON)
            await conn.send(message)
            await conn.send('{"after": true}')
            got: list[str] = []
            while not got or '"after"' not in got[-1]:
                got.append(str(await asyncio.wait_for(conn.recv(), 30)))
        return check(got)

    return run


def _one_id(got: list[str]) -> Outcome:
    first = json.loads(got[0])
    ids = [v for k, v in json.loads(got[0], object_pairs_hook=lambda p: p) if k == "id"]
    return f"echoed with id {ids}", ids == [1] and first["id"] == 1


def _dropped(got: list[str]) -> Outcome:
    return ("dropped; client stays" if len(got) == 1 else f"delivered: {got[0][:60]}"), len(got) == 1


for _name, _message, _check, _expected in [
    ("100k-deep nesting", '{"a":' * 100_000 + "1" + "}" * 100_000, _dropped, "dropped, debug log, client stays"),
    ('"id": 10**1000', '{"id": 1' + "0" * 1000 + "}", _one_id, "overwritten with the real id"),
    ("duplicate id keys", '{"id": 5, "id": 6, "\\u0069d": 7}', _one_id, "overwritten with the real id"),
    ("NaN", '{"a": NaN}', _dropped, "dropped, debug log, client stays"),
    ("15 MiB object", '{"a": [' + "[]," * 5_000_000 + "[]]}", _one_id, "stamped; /health keeps answering"),
]:
    SCENARIOS.append(Scenario(f"json: {_name}", _expected, _json(_message, _check), child("echo"), JSON))


# --- hostile children ----------------------------------------------------------------------------------------


@scenario(
    "child writes 1 GiB without a newline",
    "delivered in pieces of the size limit; memory bounded",
    cmd=sh("head -c 1073741824 /dev/zero | tr '\\0' x; sleep 1"),
)
async def gigabyte(live: Live, big: bool) -> Outcome:
    received = 0
    async with ws(live, "/gib") as conn:
        try:
            while True:
                received += len(await asyncio.wait_for(conn.recv(), 60))
        except ConnectionClosed:
            pass
    peak = live.watch.peak_rss / MiB
    return f"{received / MiB:.0f} MiB received; server peak {peak:.0f} MiB", received == 1024 * MiB and peak < 400


@scenario("child floods stderr (yes >&2)", "rate-bounded in the log; /health unaffected", cmd=sh("yes >&2"))
async def stderr_flood(live: Live, big: bool) -> Outcome:
    async with ws(live, "/a"), ws(live, "/b"):
        await asyncio.sleep(10 if big else 3)
    said = "over the rate limit" in live.stderr()
    return ("drops reported in the log" if said else "no drop reported"), said


@scenario(
    "child forks 50 setsid grandchildren and exits",
    "every descendant killed and reaped with its room",
    cmd=child("setsid", "50", "exit"),
)
async def grandchildren(live: Live, big: bool) -> Outcome:
    async with ws(live, "/g") as conn:
        line = str(await asyncio.wait_for(conn.recv(), 10))
        await closed_with(conn)
    pids = [int(p) for p in line.split()[1:]]
    await asyncio.sleep(1)
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    return f"{len(pids) - len(alive)}/{len(pids)} gone", not alive and len(pids) == 50


@scenario(
    "child closes stdout and keeps running",
    "stopped and reaped when its last client leaves",
    cmd=sh("exec 1>&-; sleep 1000"),
)
async def closes_stdout(live: Live, big: bool) -> Outcome:
    async with ws(live, "/c") as conn:
        await conn.send("x")
        await asyncio.sleep(1)
    return "client left", True  # the census after it tells whether the child went


@scenario(
    "static-file traversal variants",
    "404; nothing outside the directory read",
    options=["--staticdir", "examples/chat"],
)
async def traversal(live: Live, big: bool) -> Outcome:
    paths = [
        "/../pyproject.toml",
        "/..%2fpyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/%2e%2e%2fpyproject.toml",
        "/....//pyproject.toml",
        "/..%5cpyproject.toml",
        "/%252e%252e/pyproject.toml",
        "/.%2e/.%2e/etc/passwd",
        "//etc/passwd",
        "/%c0%ae%c0%ae/pyproject.toml",
    ]
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient() as client:
        for path in paths:
            response = await client.get(live.http + path)
            leaked = b"[project]" in response.content or b"root:" in response.content
            statuses[-1 if leaked else response.status_code] = statuses.get(response.status_code, 0) + 1
    return f"statuses {statuses}", -1 not in statuses and set(statuses) <= {404, 400}


@scenario(
    "environment secrets",
    "never visible to the child",
    cmd=child("env"),
    env={"SCALESOCKET_FAULT_SECRET": "s3cret", "AWS_SECRET_ACCESS_KEY": "s3cret"},
)
async def secrets(live: Live, big: bool) -> Outcome:
    async with ws(live, "/env") as conn:
        env = json.loads(str(await asyncio.wait_for(conn.recv(), 10)))
    seen = "s3cret" in json.dumps(env)
    return f"child sees {sorted(env)}", not seen
