"""The floor: the least any Python server of scalesocket's kind can do per session.

`python -m bench.floor --addr 127.0.0.1:PORT CMD [-- ARGS...]` (the CLI's own form, so the
driver can run it as BENCH_SCALESOCKET=bench/floor.sh) serves each websocket with a child of its
own, the way connect-rate needs it: a hand-written upgrade, `posix_spawn`, the child's stdout
lines as text frames, a CLOSE 1000 at its end, the client's CLOSE reply, and a pidfd to reap the
child. No framework, no rooms, no backpressure, no logging, no checks — not a server to use, only
a measure: whatever rate it reaches against websocketd on a machine is as far as a Python server
on uvloop can go there, and the gap between it and scalesocket is what the framework costs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import sys

import uvloop

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_1000 = b"\x88\x02\x03\xe8"


def frame(line: bytes) -> bytes:
    n = len(line)
    if n < 126:
        return bytes([0x81, n]) + line
    if n < 65536:
        return bytes([0x81, 126]) + n.to_bytes(2) + line
    return bytes([0x81, 127]) + n.to_bytes(8) + line


class Session(asyncio.Protocol):
    argv: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.head = b""
        self.upgraded = False

    def data_received(self, data: bytes) -> None:
        if self.upgraded:  # the client's CLOSE reply (this server expects nothing else)
            self.transport.close()
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        key = b""
        for line in self.head.split(b"\r\n"):
            if line[:18].lower() == b"sec-websocket-key:":
                key = line[18:].strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.upgraded = True
        self.spawn()

    def spawn(self) -> None:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        pid = os.posix_spawn(
            self.argv[0],
            self.argv,
            {},
            file_actions=[(os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, stdout_w, 1)],
            setsid=True,
        )
        os.close(stdin_r)
        os.close(stdout_w)
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.waitpid(pid, 0)
            os.close(pidfd)

        loop.add_reader(pidfd, reap)
        self.pumping = loop.create_task(self.pump(stdout_r, stdin_w))

    async def pump(self, stdout_r: int, stdin_w: int) -> None:
        loop = asyncio.get_running_loop()
        session = self
        pending = b""

        class Output(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                nonlocal pending
                *lines, pending = (pending + data).split(b"\n")
                session.transport.write(b"".join(frame(line) for line in lines))

            def connection_lost(self, exc: Exception | None) -> None:
                session.transport.write(CLOSE_1000)
                os.close(stdin_w)

        await loop.connect_read_pipe(Output, os.fdopen(stdout_r, "rb", buffering=0))


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Session, host, port, backlog=1024)
    await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--addr":
        print("usage: python -m bench.floor --addr HOST:PORT CMD [-- ARGS...]", file=sys.stderr)
        return 2
    host, port = argv[1].rsplit(":", 1)
    path = shutil.which(argv[2])
    if path is None:
        print(f"floor: {argv[2]}: not found", file=sys.stderr)
        return 2
    Session.argv = [path, *(arg for arg in argv[3:] if arg != "--")]
    uvloop.run(serve(host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
