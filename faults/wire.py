"""Raw websocket and HTTP bytes for the fault scenarios: what a well-behaved client library refuses to send."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

KEY = base64.b64encode(b"0123456789abcdef").decode()
OPEN_TIMEOUT = 10.0


def upgrade(path: str = "/r", *, headers: dict[str, str | None] | None = None, version: str = "HTTP/1.1") -> bytes:
    lines = [
        f"GET {path} {version}",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    fields = {line.split(":", 1)[0].lower(): line for line in lines[1:]}
    for name, value in (headers or {}).items():
        if value is None:
            fields.pop(name.lower(), None)
        else:
            fields[name.lower()] = f"{name}: {value}"
    return ("\r\n".join([lines[0], *fields.values()]) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv1: bool = False) -> bytes:
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if length < 4096 else _mask(payload, key)
    return head + key + masked


def _mask(payload: bytes, key: bytes) -> bytes:
    n = int.from_bytes(payload, "big") if payload else 0
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (n ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 24), OPEN_TIMEOUT)


async def status_of(port: int, request: bytes, *, within: float = OPEN_TIMEOUT) -> str:
    """The status line the server answers `request` with, or what happened instead."""
    reader, writer = await connect(port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), within)
        return line.decode(errors="replace").strip() or "closed without an answer"
    except TimeoutError:
        return f"no answer within {within:.0f} s"
    except ConnectionError as error:
        return f"connection reset ({type(error).__name__})"
    finally:
        writer.close()


async def opened(port: int, path: str = "/r") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket opened by hand: the 101 and its headers read."""
    reader, writer = await connect(port)
    writer.write(upgrade(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), OPEN_TIMEOUT)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:80]!r}")
    return reader, writer


async def close_code(reader: asyncio.StreamReader, *, within: float = OPEN_TIMEOUT) -> str:
    """Read frames until a close frame: its code, or how the connection ended without one."""
    try:
        async with asyncio.timeout(within):
            while True:
                first, second = await reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack("!H", await reader.readexactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", await reader.readexactly(8))[0]
                payload = await reader.readexactly(length)
                if first & 0x0F == 0x8:
                    return str(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else "close without code"
    except asyncio.IncompleteReadError:
        return "closed without a close frame"
    except TimeoutError:
        return f"still open after {within:.0f} s"
    except ConnectionError:
        return "connection reset"
