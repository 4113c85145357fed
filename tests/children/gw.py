"""A gwsocket strict-mode test child: frames on stdout (some split, some batched), frames echoed from stdin."""

from __future__ import annotations

import os
import struct
import sys
import time

HEADER = struct.Struct("!III")
out = sys.stdout.buffer


def frame(client: int, kind: int, payload: bytes) -> bytes:
    return HEADER.pack(client, kind, len(payload)) + payload


def write(data: bytes) -> None:
    out.write(data)
    out.flush()


def read_exact(n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main() -> int:
    hello = frame(0, 1, b"hello")
    write(hello[:7])  # a frame split across writes (and so across reads)
    time.sleep(0.05)
    write(hello[7:])
    write(  # many frames in one write, payloads with newlines and every byte value
        frame(0, 2, bytes(range(256))) + frame(0, 1, b"multi\nline") + frame(0, 9, b"skip") + frame(0, 1, b"after")
    )
    while (header := read_exact(HEADER.size)) is not None:
        client, kind, length = HEADER.unpack(header)
        payload = read_exact(length) or b""
        if payload == b"too-big":
            write(HEADER.pack(0, 1, 1 << 30))
            time.sleep(60)
        elif payload == b"truncate":
            write(frame(0, 1, b"whole") + HEADER.pack(0, 1, 10) + b"part")
            return 0
        write(frame(client, kind, b"echo:" + payload) + frame(0, 1, f"from {client} type {kind}".encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
