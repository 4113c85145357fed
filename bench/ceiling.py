"""A stand-in server that costs next to nothing per line, to measure the load generator's ceiling.

`python -m bench.ceiling PORT seq [-f FMT] 1 N` pre-builds the websocket frames of seq's N lines
before it listens, then serves each connection by writing them all with one sendall() and a
CLOSE. Whatever rate a client reaches against it is the client's own limit, so running the
stdout-throughput workloads against it shows how far the load generator is from being the
bottleneck. Blocking, one connection at a time, 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import socket
import struct
import sys
from types import FrameType

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frames(argv: list[str]) -> bytes:
    """The text frames of `seq 1 N` or `seq -f %0W.0f 1 N` (the only children this stands in for)."""
    if argv[:1] != ["seq"] or argv[-2] != "1":
        raise SystemExit(f"ceiling: can only play `seq [-f %0W.0f] 1 N`, not {argv}")
    n = int(argv[-1])
    fmt = argv[2].replace(".0f", "d").encode() if argv[1:2] == ["-f"] else b"%d"
    out = bytearray()
    for i in range(1, n + 1):
        p = fmt % i
        out += struct.pack("!BB", 0x81, len(p)) if len(p) < 126 else struct.pack("!BBH", 0x81, 126, len(p))
        out += p
    return bytes(out + struct.pack("!BBH", 0x88, 2, 1000))  # CLOSE 1000: end of the stream


def serve(conn: socket.socket, data: bytes) -> None:
    conn.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = conn.recv(4096)
        if not chunk:  # the driver's readiness probe: connect, then close
            return
        head += chunk
    keys = [ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n") if ln.lower().startswith(b"sec-websocket-key:")]
    key = keys[0] if keys else b""
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    conn.sendall(data)
    while conn.recv(65536):  # drain until the client closes (its CLOSE reply, then EOF)
        pass


def main(argv: list[str]) -> int:
    port, child = int(argv[0]), argv[1:]
    data = frames(child)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with socket.create_server(("127.0.0.1", port)) as srv:
        for _ in range(10_000):  # bounded: a run makes one probe and one client connection
            conn, _ = srv.accept()
            with conn:
                try:
                    serve(conn, data)
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
