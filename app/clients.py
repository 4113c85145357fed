"""Clients: one connected websocket's identity and its bounded outbox.

The room pushes `Batch`es into each client's outbox without ever awaiting a socket; the
connection's writer task takes them out. A broadcast batch is one object shared by every client
of the room, so its websocket encoding is computed once however many clients receive it.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from app.templates import ClientInfo

TEXT = 0x1  # websocket opcodes
BINARY = 0x2

# Server-to-client frames are never masked, so one encoding serves every client.
_SHORT_HEADERS = {op: [bytes((0x80 | op, n)) for n in range(126)] for op in (TEXT, BINARY)}
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def encode_frames(opcode: int, payloads: list[bytes]) -> bytes:
    """Complete, final, unmasked websocket frames for `payloads` (RFC 6455 §5.2)."""
    short = _SHORT_HEADERS[opcode]
    parts: list[bytes] = []
    append = parts.append
    for payload in payloads:
        size = len(payload)
        if size < 126:
            append(short[size])
        elif size < 65536:
            append(_MEDIUM.pack(0x80 | opcode, 126, size))
        else:
            append(_LONG.pack(0x80 | opcode, 127, size))
        append(payload)
    return b"".join(parts)


class Batch:
    """Messages of one kind, in order; text payloads are valid UTF-8."""

    __slots__ = ("_wire", "nbytes", "opcode", "payloads")

    def __init__(self, opcode: int, payloads: list[bytes]) -> None:
        self.opcode = opcode
        self.payloads = payloads
        self.nbytes = sum(map(len, payloads)) + 2 * len(payloads)
        self._wire: bytes | None = None

    @property
    def payload_bytes(self) -> int:
        """The messages' own bytes, without the two per message `nbytes` adds for framing."""
        return self.nbytes - 2 * len(self.payloads)

    def wire(self) -> bytes:
        """The websocket frames, encoded on first use and shared by every recipient."""
        if self._wire is None:
            self._wire = encode_frames(self.opcode, self.payloads)
        return self._wire


@dataclass(frozen=True, slots=True)
class CloseRequest:
    code: int
    reason: str
    drain: bool  # deliver what is queued first (child exit), or drop it (kick, shutdown)


class Client:
    """A connected websocket as its room sees it.

    Batches go straight to the socket while nothing is queued and the socket takes data (`direct`);
    otherwise they wait in the outbox, and a writer task — started only then, ended once the outbox
    is empty again — drains it. An idle client costs no task of its own.
    """

    __slots__ = (
        "_direct",
        "_on_unblocked",
        "_start_writer",
        "blame",
        "close_request",
        "closed",
        "full",
        "info",
        "limit",
        "outbox",
        "queued",
        "send_scope",
        "socket_full",
        "writer_scope",
        "writing",
    )

    def __init__(self, info: ClientInfo, limit: int, on_unblocked: Callable[[Client], None]) -> None:
        self.info = info
        self.limit = limit
        self.outbox: deque[Batch] = deque()
        self.queued = 0  # bytes in the outbox
        self.full = False
        self.blame = 0.0  # seconds this client's full outbox held its room back while others kept up
        self.close_request: CloseRequest | None = None
        self.closed = anyio.Event()  # close sent, or the connection gone
        self.send_scope: anyio.CancelScope | None = None  # the writer's send in progress
        self.writing = False  # a writer task is draining the outbox
        self.writer_scope: anyio.CancelScope | None = None
        self._on_unblocked = on_unblocked
        # Set by `attach` once the handshake is done; until then everything waits in the outbox.
        self._direct: Callable[[Batch], bool] | None = None
        self._start_writer: Callable[[], object] | None = None
        self.socket_full: Callable[[], bool] = lambda: False  # unknown under plain ASGI

    @property
    def id(self) -> int:
        return self.info.id

    def attach(
        self, direct: Callable[[Batch], bool], socket_full: Callable[[], bool], start_writer: Callable[[], object]
    ) -> None:
        """The socket is open: write directly from now on, and drain what came before the handshake."""
        self._direct, self.socket_full, self._start_writer = direct, socket_full, start_writer
        if self.outbox or self.close_request is not None:
            self._ensure_writer()

    def detach(self) -> None:
        """The connection is over: stop the writer, and nothing may start one any more."""
        self._direct = self._start_writer = None
        if self.writer_scope is not None:
            self.writer_scope.cancel()
        if self.close_request is None:
            self.close_request = CloseRequest(1006, "connection gone", drain=False)
        self.outbox.clear()
        self.queued = 0
        self.closed.set()

    def push(self, batch: Batch) -> bool:
        """Queue a batch; True when this push made the outbox full."""
        if self.close_request is not None and not self.close_request.drain:
            return False
        # Nothing queued and the socket has room: write now, with no task switch (the common case).
        if not self.outbox and self._direct is not None and self._direct(batch):
            return False
        self.outbox.append(batch)
        self.queued += batch.nbytes
        self._ensure_writer()
        if not self.full and self.queued >= self.limit:
            self.full = True
            return True
        return False

    def take(self) -> list[Batch]:
        """Everything queued, in order; tells the room when the outbox stops being full."""
        batches = list(self.outbox)
        self.outbox.clear()
        self.queued = 0
        if self.full:
            self.full = False
            self.blame = 0.0
            self._on_unblocked(self)
        return batches

    def request_close(self, code: int, reason: str, *, drain: bool) -> None:
        if self.close_request is None:
            self.close_request = CloseRequest(code, reason, drain)
            if not drain:
                self.outbox.clear()
                self.queued = 0
                if self.send_scope is not None:
                    self.send_scope.cancel()
            self._ensure_writer()

    def _ensure_writer(self) -> None:
        if not self.writing and self._start_writer is not None:
            self.writing = True
            self._start_writer()
