"""The room-facing half of a connection: its bounded outbox and its close request.

See the package docstring (app/connection/__init__.py) for the interface; the two ways a socket is
driven (`FastConnection`, `AsgiConnection`) subclass `Connection` and fill in the four `_socket_*`
hooks. Everything here is shared, so both paths keep one set of outbox rules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.batch import Batch
from app.templates import ClientInfo

OnMessage = Callable[[bool, bytes], None]  # (is_text, payload); text payloads are valid UTF-8


class Disconnected(OSError):
    """The peer is gone (an OSError, as uvicorn's own: Starlette turns it into WebSocketDisconnect)."""


@dataclass(frozen=True, slots=True)
class CloseRequest:
    code: int
    reason: str
    drain: bool  # deliver what is queued first (child exit), or drop it (kick, shutdown)


def _nothing() -> None:
    pass


class Connection:
    """One websocket, as its room sees it: `offer`, `pause_reading`, `resume_reading`, `close`."""

    __slots__ = ("close_request", "full", "info", "limit", "on_unblocked", "outbox", "queued")

    def __init__(self, limit: int) -> None:
        self.info: ClientInfo | None = None  # set when it joins a room (its id comes from the room registry)
        self.limit = limit
        self.outbox: deque[Batch] = deque()
        self.queued = 0  # bytes in the outbox
        self.full = False
        self.close_request: CloseRequest | None = None
        self.on_unblocked: Callable[[], None] = _nothing  # the room's: a full outbox has drained

    @property
    def id(self) -> int:
        assert self.info is not None
        return self.info.id

    # --- what the room calls ----------------------------------------------------------------------

    def offer(self, batch: Batch) -> bool:
        """Queue `batch` (it is never dropped while the connection lives); False while the outbox is
        full: the room pauses its child until `on_unblocked`."""
        request = self.close_request
        if request is not None and not request.drain:
            return True  # closing: what comes now would never be sent
        # Nothing queued and the socket has room: write now, with no task switch (the common case).
        if not self.outbox and self._socket_write(batch):
            return True
        self.outbox.append(batch)
        self.queued += batch.nbytes
        self._socket_wake()
        if self.queued >= self.limit:
            self.full = True
        return not self.full

    def close(self, code: int, reason: str, *, drain: bool = True) -> None:
        """Close with `code`: behind what is queued (`drain`), or dropping it. Never waits; a peer
        that does not read up to the close frame is cut off after a drain deadline."""
        if self.close_request is not None:
            return
        self.close_request = CloseRequest(code, reason, drain)
        if not drain:
            self._drop_outbox()
        self._socket_wake()

    def pause_reading(self) -> None:
        """Stop taking messages from the client (its child's input is full)."""
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    @property
    def socket_full(self) -> bool:
        """The socket takes no data right now (for the room's slow-client clock)."""
        raise NotImplementedError

    # --- for subclasses ---------------------------------------------------------------------------

    def _socket_write(self, batch: Batch) -> bool:
        """Write `batch` now if the socket has room; False leaves it to the outbox."""
        return False

    def _socket_wake(self) -> None:
        """Something was queued, or a close requested: get it going."""

    def _take(self) -> list[Batch]:
        """Everything queued, in order; tells the room when the outbox stops being full."""
        batches = list(self.outbox)
        self.outbox.clear()
        self.queued = 0
        self._unblock()
        return batches

    def _drop_outbox(self) -> None:
        self.outbox.clear()
        self.queued = 0
        self._unblock()

    def _unblock(self) -> None:
        if self.full:
            self.full = False
            self.on_unblocked()
