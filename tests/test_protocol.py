"""Our websocket protocol (app.connection) under a real server (SPEC §4 message paths, RFC 6455): whatever
the client sends, the child gets exactly what websockets' parser would have given it, in order."""

from __future__ import annotations

import os
import struct

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.utils import apply_mask

from app.connection import WebSocketProtocol
from tests.conftest import TIMEOUT, Serve, child_settings, recv, recv_text

pytestmark = pytest.mark.anyio


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame, built by hand."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes([(0x80 if fin else 0) | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([(0x80 if fin else 0) | opcode, 0x80 | 126]) + struct.pack("!H", size)
    else:
        header = bytes([(0x80 if fin else 0) | opcode, 0x80 | 127]) + struct.pack("!Q", size)
    return header + mask + apply_mask(payload, mask)


async def joined(s: object, ws: ClientConnection) -> None:
    assert (await recv_text(ws)).startswith("ready")  # the echo child is attached: messages go direct


async def test_many_frames_in_one_read_arrive_in_order(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        await joined(s, ws)
        ws.transport.write(b"".join(frame(0x1, f"m{i}".encode()) for i in range(100)))
        assert [await recv(ws) for _ in range(100)] == [f"m{i}" for i in range(100)]


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 200_000])
async def test_every_length_encoding(server: Serve, size: int) -> None:
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        await joined(s, ws)
        ws.transport.write(frame(0x1, b"x" * size))
        assert await recv(ws) == "x" * size


async def test_a_frame_split_across_reads_and_fragmented_messages(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        await joined(s, ws)
        whole = frame(0x1, b"split")
        ws.transport.write(whole[:2])  # cut right after the 2-byte header: the parser is mid-frame
        (protocol,) = s.server.server_state.connections
        assert isinstance(protocol, WebSocketProtocol)
        with anyio.fail_after(TIMEOUT):  # until the server has read the first part on its own
            while not protocol.reader.buffered:  # noqa: ASYNC110 - no event for this
                await anyio.sleep(0.01)
        ws.transport.write(whole[2:] + frame(0x1, b"frag", fin=False) + frame(0x0, b"mented"))
        ws.transport.write(frame(0x1, b"after"))
        assert [await recv(ws) for _ in range(3)] == ["split", "fragmented", "after"]


async def test_control_frames_between_data_frames(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        await joined(s, ws)
        ws.transport.write(frame(0x1, b"one") + frame(0x9, b"ping!") + frame(0x1, b"two"))
        assert [await recv(ws) for _ in range(2)] == ["one", "two"]
        latency = await ws.ping()  # the connection is still healthy and answers pings
        await latency


async def test_invalid_utf8_text_closes_1007_and_nothing_reaches_the_child(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        await joined(s, ws)
        ws.transport.write(frame(0x1, b"bad \xff"))
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007


async def test_binary_frames_in_binary_mode(server: Serve) -> None:
    async with server(child_settings("bytes", "", binary=True)) as s, s.connect("/r") as ws:
        ws.transport.write(frame(0x2, b"\x00\x01") + frame(0x2, b"\xff"))
        received = b""  # the child hex-dumps each read of its stdin: raw bytes, no newline added
        while len(received) < 6:
            message = await recv(ws)
            assert isinstance(message, bytes)
            received += message.replace(b"\n", b"")
        assert received == b"0001ff"
