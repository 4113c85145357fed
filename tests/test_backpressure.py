"""SPEC §11: lossless delivery, a slowed child, and slow clients closed only while others keep up."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import TIMEOUT, UNIT, Running, Serve, alive, child_settings, recv, recv_text, wait_gone

pytestmark = pytest.mark.anyio

LINES = 20_000  # of 1000 bytes: 20 MB, far more than the outbox and the sockets' buffers hold
SEQ = ["-c", "read go; exec seq -f %01000.0f 1 " + str(LINES)]


def seq_settings(**overrides: Any) -> Any:
    values: dict[str, Any] = {"outbox_bytes": 64 * 1024}
    values.update(overrides)
    return child_settings("unused", **values).model_copy(update={"cmd": "/bin/sh", "args": SEQ})


def small_buffers() -> socket.socket:
    """A client socket whose receive buffer is small, so a client that stops reading stalls soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def eventually(condition: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Poll internal state that has no event of its own."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - there is no event for these conditions
            await anyio.sleep(0.02)


async def connect_stalling(s: Running, path: str) -> ClientConnection:
    sock = small_buffers()
    sock.connect(("127.0.0.1", s.port))
    # max_queue=1: the websockets client stops reading its socket as soon as one message waits
    return await s.connect(path, sock=sock, max_queue=1).__aenter__()


async def read_all(ws: ClientConnection, count: int = LINES) -> None:
    for i in range(1, count + 1):
        line = await recv(ws)
        assert line == f"{i:01000d}", (i, str(line)[:20])


def room_of(s: Running, name: str) -> Any:
    return s.rooms.live[name]


async def test_lone_slow_client_slows_the_child_and_loses_nothing(server: Serve) -> None:
    async with server(seq_settings()) as s:
        ws = await connect_stalling(s, "/r")
        await ws.send("go")
        room = room_of(s, "r")
        await eventually(lambda: room._paused)
        # Stalled for twice the slow-client timeout: the child waits on its pipe, memory stays bounded.
        with anyio.move_on_after(2 * UNIT):
            await eventually(lambda: not room._paused, within=2 * UNIT)
            pytest.fail("the room resumed reading while its only client was stalled")
        client = next(iter(room.clients.values()))
        assert client.queued <= s.server.app.state.settings.outbox_bytes + 256 * 1024
        assert room.child.returncode is None  # seq is blocked on its full pipe, not done
        await read_all(ws)  # everything, in order, and the client was never closed
        assert s.rooms.slow_clients == 0
        await ws.close()


async def test_stalled_client_in_busy_room_is_closed_1008(server: Serve) -> None:
    async with server(seq_settings()) as s:
        stalled = await connect_stalling(s, "/busy")
        async with s.connect("/busy") as reader:
            await reader.send("go")
            await read_all(reader)  # the reader keeps up and gets everything in order
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv(stalled)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert s.rooms.slow_clients == 1


async def test_every_client_slow_nobody_closed(server: Serve) -> None:
    async with server(seq_settings()) as s:
        a = await connect_stalling(s, "/all")
        b = await connect_stalling(s, "/all")
        await a.send("go")
        room = room_of(s, "all")
        await eventually(lambda: room._paused)
        with anyio.move_on_after(2 * UNIT):
            await eventually(lambda: len(room.clients) < 2, within=2 * UNIT)
            pytest.fail("a client was closed although no client kept up")
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_all, a)
            tg.start_soon(read_all, b)
        assert s.rooms.slow_clients == 0
        await a.close()
        await b.close()


async def test_flooding_a_child_that_does_not_read_stalls_the_client(server: Serve) -> None:
    # The server stops reading a client it cannot serve, so it learns of a vanished peer from keepalive.
    settings = child_settings("no-read", ping_interval=2 * UNIT, ping_timeout=2 * UNIT)
    async with server(settings) as s:
        ws = await s.connect("/flood", write_limit=4096).__aenter__()
        pid = int((await recv_text(ws)).split()[1])
        room = room_of(s, "flood")
        sent = 0
        with anyio.move_on_after(0.5 * UNIT):
            while True:  # until the server stops reading us: the child's stdin is full
                await ws.send("z" * 1000)
                sent += 1
        channel = room._channel
        assert not channel.writable
        # Bounded: the pipe buffer and one message past the high-water mark, not everything sent.
        assert channel._writer.transport.get_write_buffer_size() < 256 * 1024
        assert sent * 1000 > 1024 * 1024
        # Drop the connection without a close frame: the server must still notice and stop the child.
        ws.transport.abort()
        await wait_gone(pid)
        assert not alive(pid)
