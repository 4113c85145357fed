"""TCP mode (SPEC §7): the port pool, and connecting to a child that listens on its `PORT`.

`PortPool` lends each room one port of `--tcpports` for as long as its child lives; `Rooms` owns
the one pool of the server. `connect_channel` turns the child's listening port into the same
`Channel` the room gets from stdio pipes, so lines, `-b` and framing need nothing TCP-specific.
Spawning the child and deciding what a failed connect means stay with the room.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable

import anyio

from app.channel import Channel, SocketProtocol

log = logging.getLogger("scalesocket.tcp")

HOST = "127.0.0.1"
# Retry backoff: the first retries come quickly (a child that binds at once is reached within a few
# ms), later ones every 50 ms, so a child that binds late costs at most that much extra latency.
FIRST_RETRY = 0.005
MAX_RETRY = 0.05


class PortsExhausted(Exception):
    """Every port of the pool is lent out (or held by another program)."""


def port_is_free(port: int) -> bool:
    """Whether a child could bind HOST:port now: no other program listens on it or holds it.

    SO_REUSEADDR, as nearly every server sets it, so a port whose last connection is in TIME_WAIT
    still counts as free. Without this check a room could land on a port some other program
    listens on, and the server would talk to that program instead of its child.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


class PortPool:
    """Ports START..END-1, each lent to one room at a time.

    Never-used ports go first, then released ones in the order they came back, so a port rests as
    long as possible before its next child binds it. A port some other program holds is passed
    over and tried again later. `allocate` and `release` are O(1) but for ports found busy.
    """

    def __init__(self, start: int, end: int, is_free: Callable[[int], bool] = port_is_free) -> None:
        self.start, self.end = start, end
        self._fresh = start  # ports from here to END have never been lent
        self._returned: deque[int] = deque()  # oldest first
        self._lent: set[int] = set()
        self._is_free = is_free

    @property
    def lent(self) -> frozenset[int]:
        return frozenset(self._lent)

    def allocate(self) -> int:
        """A port no room holds and no other program uses; `PortsExhausted` if there is none."""
        for _ in range(self.end - self._fresh + len(self._returned)):  # each candidate at most once
            if self._fresh < self.end:
                port, self._fresh = self._fresh, self._fresh + 1
            else:
                port = self._returned.popleft()
            if self._is_free(port):
                self._lent.add(port)
                return port
            log.debug("port in use by another program, passing over it", extra={"port": port})
            self._returned.append(port)
        raise PortsExhausted(f"no free port in --tcpports {self.start}:{self.end}")

    def release(self, port: int) -> None:
        """Give a lent port back (its child is gone)."""
        if port not in self._lent:
            raise ValueError(f"port {port} is not lent")
        self._lent.remove(port)
        self._returned.append(port)


async def connect_channel(port: int, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> Channel:
    """Connect to the child on HOST:port, retrying until it accepts.

    Retries for as long as it is let: the caller bounds it (the connect timeout) and cancels it when
    the child exits or the room stops, since nobody will accept then.
    """
    backoff = FIRST_RETRY
    while True:
        protocol = SocketProtocol(on_data, on_eof)
        if await _connect_once(protocol, port):
            return protocol.channel()
        await anyio.sleep(backoff)
        backoff = min(backoff * 2, MAX_RETRY)


async def _connect_once(protocol: SocketProtocol, port: int) -> bool:
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_connection(lambda: protocol, HOST, port)
    except OSError:  # refused: the child is not listening yet
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.getsockname() == sock.getpeername():
        # TCP simultaneous open: with nobody listening, a connect to a port in the ephemeral range
        # may pick that very port as its own and so connect to itself. That is not the child.
        protocol.discard()
        return False
    return True
