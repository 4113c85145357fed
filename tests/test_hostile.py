"""Hostile clients against the connection layer (SPEC §13 handshake limits, §17, issue 10 items 1-4, 6):
each pushed well past its limit, each ending with an answered, bounded outcome while /health answers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from pathlib import Path

import anyio
import httpx
import pytest

from app.connection.protocol import BY_OUTPUT, WebSocketProtocol
from tests.conftest import TIMEOUT, UNIT, Running, Serve, child_settings, recv_text

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def rss() -> int:
    """This process's resident memory (the server runs in it), bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def upgrade_request(path: str = "/r", extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if size < 4096 else _mask(payload, mask)
    return head + mask + masked


def _mask(payload: bytes, mask: bytes) -> bytes:
    from websockets.utils import apply_mask

    return apply_mask(payload, mask)


async def open_raw(s: Running, request: bytes | None = None, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", s.port))
    if request is not None:
        await loop.sock_sendall(sock, request)
    return sock


async def read_response(sock: socket.socket, within: float = TIMEOUT) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (or `within` passes): (bytes, closed)."""
    loop = asyncio.get_running_loop()
    data = b""
    with anyio.move_on_after(within):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
    return data, False


async def upgraded(sock: socket.socket) -> bytes:
    """Read up to the end of the 101; returns what came after it."""
    loop = asyncio.get_running_loop()
    data = b""
    with anyio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in data:
            data += await loop.sock_recv(sock, 65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return rest


async def send_for(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Send as much of `data` as the server takes within `seconds`; the bytes sent."""
    loop = asyncio.get_running_loop()
    sent = 0
    view = memoryview(data)
    with anyio.move_on_after(seconds):
        while sent < len(data):
            try:
                sent += sock.send(view[sent : sent + 65536])
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(sock, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(sock)
            except (BrokenPipeError, ConnectionResetError):
                break
    return sent


async def health_ms(s: Running) -> float:
    async with httpx.AsyncClient() as client:
        start = time.perf_counter()
        response = await client.get(s.http + "/health", timeout=TIMEOUT)
        assert response.status_code == 200
        return (time.perf_counter() - start) * 1000


def protocols(s: Running) -> list[WebSocketProtocol]:
    connections: set[object] = set(s.server.server_state.connections)
    return [c for c in connections if isinstance(c, WebSocketProtocol)]


async def test_ping_flood_is_bounded_and_never_reaches_the_child(server: Serve) -> None:
    async with server(child_settings("echo")) as s:
        sock = await open_raw(s, upgrade_request(), rcvbuf=4096)
        await upgraded(sock)
        pings = frame(0x9, b"p" * 125) * 100_000  # 13 MB of pings, and the client never reads a pong
        before = rss()
        sent = await send_for(sock, pings, 3 * UNIT)
        (protocol,) = protocols(s)
        buffered = protocol.transport.get_write_buffer_size()
        grown = rss() - before
        assert protocol.paused & BY_OUTPUT, "the server kept reading pings it could not answer"
        assert buffered < 256 * 1024, f"{buffered} bytes of pongs buffered"
        assert grown < 40 * MiB, f"RSS grew {grown / MiB:.1f} MiB after {sent / MiB:.1f} MiB of pings"
        assert sent < len(pings), "the server read every ping though no pong was read"
        assert await health_ms(s) < 1000 * UNIT
        room = s.rooms.live["r"]
        assert room.messages_in == 0  # no ping reached the child
        sock.close()


async def test_ping_flood_answered_when_the_client_reads(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        assert (await recv_text(ws)).startswith("ready")
        for _ in range(1000):
            ws.transport.write(frame(0x9, b"x"))
        await (await ws.ping())  # answered in order after the thousand others
        await ws.send("still here")
        assert await recv_text(ws) == "still here"


async def test_inbound_budget_bounds_what_unread_children_hold(server: Serve) -> None:
    limit, size = 4 * MiB, 2 * MiB
    settings = child_settings("no-read", inbound_bytes=limit, max_message_size=size)
    async with server(settings) as s:
        inbound = s.server.app.state.inbound
        socks = [await open_raw(s, upgrade_request(f"/r{i}")) for i in range(12)]
        for sock in socks:
            await upgraded(sock)
        message = frame(0x2, b"m" * (size - 16))
        before = rss()
        async with anyio.create_task_group() as tg:
            for sock in socks:
                tg.start_soon(send_for, sock, message, 3 * UNIT)
        # 12 x 2 MiB sent at a child that never reads: the budget (4 MiB) holds, plus at most one
        # message past it and a read's worth per connection.
        assert inbound.peak <= limit + size + 12 * 256 * 1024, f"peak {inbound.peak / MiB:.1f} MiB"
        assert rss() - before < 40 * MiB, f"RSS grew {(rss() - before) / MiB:.1f} MiB"
        assert await health_ms(s) < 1000 * UNIT
        for sock in socks:
            sock.close()
        with anyio.fail_after(TIMEOUT, reason=f"{inbound.__dict__}"):  # a leaving client's buffers go at once
            while inbound.total:  # noqa: ASYNC110 - the budget has no event
                await anyio.sleep(0.02)


async def test_inbound_budget_lets_messages_through_to_children_that_read(server: Serve) -> None:
    limit, size = 2 * MiB, 1 * MiB
    async with server(child_settings("echo", inbound_bytes=limit, max_message_size=size)) as s:
        clients = [await s.connect(f"/e{i}").__aenter__() for i in range(6)]
        for ws in clients:
            assert (await recv_text(ws)).startswith("ready")
        text = "z" * (size - 100)
        for ws in clients:
            await ws.send(text)  # 6 MiB in flight against a 2 MiB budget: slowed, never stuck
        for ws in clients:
            assert await recv_text(ws) == text
            await ws.close()


@pytest.mark.parametrize("size", [100 * 1024, 8 * MiB])
async def test_headers_over_64k_get_431_at_once(server: Serve, size: int) -> None:
    async with server(child_settings("echo")) as s:
        before = rss()
        sock = await open_raw(s)
        start = time.perf_counter()
        head = b"GET /r HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size
        await send_for(sock, head, 2 * UNIT)
        response, closed = await read_response(sock)
        elapsed = time.perf_counter() - start
        assert response.startswith(b"HTTP/1.1 431"), response[:100]
        assert closed
        assert rss() - before < 20 * MiB
        assert elapsed < 3 * UNIT, f"{elapsed:.2f} s to refuse"
        assert await health_ms(s) < 1000 * UNIT
        sock.close()


async def test_headers_just_under_64k_are_served(server: Serve) -> None:
    async with server(child_settings("echo")) as s:
        sock = await open_raw(s, upgrade_request(extra=b"X-Pad: " + b"p" * 8000 + b"\r\n") * 1)
        await upgraded(sock)
        sock.close()
        async with httpx.AsyncClient() as client:
            pad = {f"x-pad-{i}": "p" * 4000 for i in range(14)}  # 56 KiB in all
            assert (await client.get(s.http + "/health", headers=pad)).status_code == 200


@pytest.mark.parametrize(
    ("why", "request_"),
    [
        ("over 128 headers", upgrade_request(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(200)))),
        ("a header line over 8 KiB", upgrade_request(extra=b"X-Long: " + b"l" * 9000 + b"\r\n")),
        ("a path over 8 KiB", upgrade_request("/r?" + "q" * 9000)),
        ("a Content-Length body", upgrade_request(extra=b"Content-Length: 5\r\n") + b"hello"),
        ("a chunked body", upgrade_request(extra=b"Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n"),
        ("no key", upgrade_request().replace(b"Sec-WebSocket-Key", b"X-Not-Key")),
        ("a short key", upgrade_request().split(b"Sec-WebSocket-Key")[0] + b"Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n"),
        ("version 8", upgrade_request().replace(b"Version: 13", b"Version: 8")),
    ],
)
async def test_refused_upgrades_are_answered_and_closed(server: Serve, why: str, request_: bytes) -> None:
    async with server(child_settings("echo")) as s:
        socks = [await open_raw(s, request_) for _ in range(20)]
        for sock in socks:
            response, closed = await read_response(sock)
            status = response.split(b"\r\n", 1)[0]
            assert status[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 426"), (why, status)
            assert closed, why
            sock.close()
        assert not s.rooms.live  # no child was started for any of them
        assert not protocols(s)  # no descriptor held


async def test_slowloris_connections_are_closed_after_the_handshake_timeout(server: Serve) -> None:
    timeout = 1.0 * UNIT
    async with server(child_settings("echo", handshake_timeout=timeout)) as s:
        request = upgrade_request()
        socks = [await open_raw(s, request[:10]) for _ in range(100)]
        start = time.perf_counter()
        loop = asyncio.get_running_loop()

        async def trickle(sock: socket.socket) -> float:
            for byte in request[10:]:
                try:
                    await loop.sock_sendall(sock, bytes([byte]))
                    with anyio.move_on_after(0.1 * UNIT):
                        if not await loop.sock_recv(sock, 1):
                            break
                except ConnectionError:
                    break
            return time.perf_counter() - start

        closed_after: list[float] = []

        async def one(sock: socket.socket) -> None:
            closed_after.append(await trickle(sock))

        worst = 0.0
        async with anyio.create_task_group() as tg:
            for sock in socks:
                tg.start_soon(one, sock)
            worst = max(worst, await health_ms(s))
        assert len(closed_after) == 100
        assert max(closed_after) < timeout + 2 * UNIT, f"last closed after {max(closed_after):.2f} s"
        assert worst < 1000 * UNIT, f"/health took {worst:.0f} ms"
        for sock in socks:
            sock.close()


async def test_compression_is_not_negotiated_and_compressed_frames_are_refused(server: Serve) -> None:
    async with server(child_settings("echo")) as s:
        sock = await open_raw(s, upgrade_request(extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        loop = asyncio.get_running_loop()
        data = b""
        with anyio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in data:
                data += await loop.sock_recv(sock, 65536)
        head = data.split(b"\r\n\r\n")[0].lower()
        assert b"sec-websocket-extensions" not in head  # no compression: nothing can inflate
        await loop.sock_sendall(sock, frame(0x1, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv=0x40))
        rest, closed = await read_response(sock)
        close = rest[rest.index(b"\x88") :]
        assert struct.unpack("!H", close[2:4])[0] == 1002
        assert closed
        sock.close()


async def test_a_kicked_client_that_never_reads_is_cut_off_after_the_drain_deadline(
    server: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.connection import protocol as protocol_module
    from tests.test_backpressure import read_all, seq_settings

    monkeypatch.setattr(protocol_module, "CLOSE_DRAIN", 1.0 * UNIT)
    async with server(seq_settings()) as s:
        stalled = await open_raw(s, upgrade_request("/busy"), rcvbuf=4096)  # never reads a byte after this
        await upgraded(stalled)
        async with s.connect("/busy") as reader:
            await reader.send("go")
            await read_all(reader)  # the stalled one is kicked (1008) so this one gets everything
            assert s.rooms.slow_clients == 1
            with anyio.fail_after(TIMEOUT):  # its close frame cannot reach it: aborted at the deadline
                while len(protocols(s)) > 1:  # noqa: ASYNC110 - no event for a peer's socket going
                    await anyio.sleep(0.05)
        stalled.close()
