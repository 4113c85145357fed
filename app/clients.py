"""Clients: one connected websocket's identity and its bounded outbox.

The room pushes `Batch`es (app.batch) into each client's outbox without ever awaiting a socket;
the connection's writer task takes them out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from app.batch import Batch
from app.templates import ClientInfo


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
