"""Admission: whether a websocket may come in (SPEC §13) — its origin, its room, and the limits.

The decisions are pure (`Limits.refusal`, app.origin); this module also answers and records them.
`Rooms.join` asks `Limits.refusal` with its counts and inserts the client with no `await` in
between, so however joins race no limit is ever overshot. A room counts from its first join until
its child has been reaped (`Rooms.running`), so a dying room still holds its slot and its pipes.
`OriginGuard` checks `Origin` in front of every websocket route. Every refusal is answered before
the upgrade (400, 403, or 503 with `Retry-After`), logged with its reason, and counted for /metrics.

File descriptors: each joined connection holds one (its socket) and each room three (the parent's
ends of the child's stdin, stdout and stderr, or its socket with --tcp). `descriptor_budget` is
what RLIMIT_NOFILE leaves after what the process held at start and a reserve (for handshakes
still in progress, plain HTTP, a room's pipes while its child starts); a join that would take the
server past it is refused with 503 rather than left to fail an `accept` or a `pipe()`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from app.origin import Allowed, allow_hint, origin_allowed, parse_allowed
from app.settings import Settings

log = logging.getLogger("scalesocket.admission")

FDS_PER_ROOM = 3
FDS_PER_CONNECTION = 1
# Every `Refused.kind`, so /metrics shows each at 0 before the first refusal.
REFUSALS = (
    "origin",
    "name",
    "path",
    "rooms",
    "maxconnections",
    "maxrooms",
    "maxclients",
    "descriptors",
    "processes",
    "oneshot",
)
MAX_LOGGED = 256  # characters of a client-chosen value (path, origin) in a log line


class Refused(Exception):
    """A websocket that may not come in: HTTP status for the denial response, and why.

    `kind` labels it in /metrics (`origin`, `rooms`, `maxrooms`, ...); `level` is its log level.
    """

    def __init__(
        self, status: int, reason: str, *, kind: str = "other", level: int = logging.INFO, retry_after: int = 0
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind
        self.level = level
        if status == 503 and not retry_after:
            retry_after = 1  # every 503 says when to come back
        self.headers = {"Retry-After": str(retry_after)} if retry_after else None


def out_of_resources(error: OSError) -> str | None:
    """`descriptors` or `processes` if a child could not start for lack of them (a client may retry), else None."""
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return "descriptors"
    if error.errno in (errno.EAGAIN, errno.ENOMEM):
        return "processes"
    return None


def descriptor_reserve(soft_limit: int) -> int:
    """Descriptors kept back from the budget: a sixteenth of the limit, at least 32."""
    return max(32, soft_limit // 16)


def descriptor_budget() -> int | None:
    """Descriptors that connections and rooms may take (see the module's docstring); None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    except OSError:
        in_use = 64  # no /proc: a guess at what the process holds at start
    return max(0, soft - in_use - descriptor_reserve(soft))


SMALL_DESCRIPTOR_LIMIT = 4096


def event_loop() -> str:
    """uvicorn's `loop`: the stock asyncio loop under a small RLIMIT_NOFILE, else its default.

    Out of descriptors, libuv (uvloop) accepts every waiting connection and closes it at once,
    without a word; asyncio stops accepting for a second and leaves them queued in the kernel, so
    each is answered once descriptors are free (measured: 300 handshakes at once under a limit of
    128 got 190 silent closes on uvloop, none on asyncio). A server that small is where that
    happens; a large one keeps uvloop's speed.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "asyncio" if soft != resource.RLIM_INFINITY and soft < SMALL_DESCRIPTOR_LIMIT else "auto"


@dataclass(frozen=True)
class Limits:
    """The joins the server takes: `None` means no limit."""

    rooms: frozenset[str] | None = None  # --rooms
    maxrooms: int | None = None
    maxclients: int | None = None
    maxconnections: int | None = None
    descriptors: int | None = None  # the descriptor budget
    retry_after: int = 5  # seconds, for 503s: a dying room holds its slot until its child is reaped

    @classmethod
    def from_settings(cls, settings: Settings, descriptors: int | None) -> Limits:
        return cls(
            rooms=frozenset(settings.rooms) if settings.rooms is not None else None,
            maxrooms=1 if settings.oneshot else settings.maxrooms,
            maxclients=settings.maxclients,
            maxconnections=settings.maxconnections,
            descriptors=descriptors,
            retry_after=max(1, math.ceil(settings.stop_grace)),
        )

    def refusal(self, name: str, *, new_room: bool, connections: int, rooms: int, clients: int) -> Refused | None:
        """Why a client may not join room `name` (valid), given the server's joined `connections`,
        its `rooms` (until reaped) and the `clients` of the live room of that name; None: it may."""
        if self.rooms is not None and name not in self.rooms:
            what = f"room {name!r}" if name else "/ (websocketd's room of its own)"
            return Refused(403, f"{what} is not open here (--rooms)", kind="rooms")
        if self.maxconnections is not None and connections >= self.maxconnections:
            return self.busy(f"server full: {self.maxconnections} connections (--maxconnections)", "maxconnections")
        if new_room and self.maxrooms is not None and rooms >= self.maxrooms:
            return self.busy(f"server full: {self.maxrooms} rooms (--maxrooms)", "maxrooms")
        if not new_room and self.maxclients is not None and clients >= self.maxclients:
            return self.busy(f"room full: {self.maxclients} clients (--maxclients)", "maxclients")
        if self.descriptors is not None:
            needed = (connections + 1) * FDS_PER_CONNECTION + (rooms + new_room) * FDS_PER_ROOM
            if needed > self.descriptors:
                return self.busy("server out of file descriptors", "descriptors")
        return None

    def busy(self, reason: str, kind: str) -> Refused:
        """503 with `Retry-After`, logged as a warning: the server is at a limit, not the client wrong."""
        later = self.retry_after
        return Refused(503, f"{reason}, try again later", kind=kind, level=logging.WARNING, retry_after=later)


class Admission:
    """The server's admission policy (from `Settings`) and the count of what it refused, by kind."""

    def __init__(self, settings: Settings, descriptors: int | None = None) -> None:
        self.origins: Allowed | None = parse_allowed(settings.origin) if settings.origin is not None else None
        self.limits = Limits.from_settings(settings, descriptors if descriptors is not None else descriptor_budget())
        self.refused: Counter[str] = Counter()

    def record(self, refusal: Refused, **extra: Any) -> None:
        """Log and count a refusal."""
        self.refused[refusal.kind] += 1
        # A client chooses the path and the headers: a few hundred characters of them are enough to log.
        extra = {key: value[:MAX_LOGGED] if isinstance(value, str) else value for key, value in extra.items()}
        log.log(
            refusal.level,
            "websocket refused: %s",
            refusal.reason,
            extra={"status": refusal.status, "refusal": refusal.kind, **extra},
        )

    async def deny(self, websocket: WebSocket, refusal: Refused, **extra: Any) -> None:
        """Log, count and answer a refusal before the upgrade."""
        self.record(refusal, **extra)
        await deny(websocket, refusal)


async def deny(websocket: WebSocket, refusal: Refused) -> None:
    """Answer a handshake with the refusal's HTTP status, `Retry-After` and reason."""
    response = PlainTextResponse(refusal.reason + "\n", refusal.status, headers=refusal.headers)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # a server without the denial extension answers a close before accept with 403
        await websocket.close(1008 if refusal.status < 500 else 1013)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class OriginGuard:
    """Middleware: a websocket handshake whose `Origin` is not allowed gets 403, whatever its path.

    It passes `send` on untouched (app.routes' FastPath, inside it, needs uvicorn's own).
    """

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            host = _header(scope, b"host")
            allowed = self.admission.origins
            if not origin_allowed(origin, host, allowed):
                assert origin is not None
                if allowed is not None:
                    rule = "not in --origin"
                else:
                    rule = f"same origin as Host {host!r} only" if host is not None else "no Host to compare it with"
                refusal = Refused(
                    403,
                    f"origin {origin!r} not allowed ({rule}); allow it with {allow_hint(origin)}",
                    kind="origin",
                    level=logging.WARNING,
                )
                await self.admission.deny(WebSocket(scope, receive, send), refusal, origin=origin, path=scope["path"])
                return
        await self.app(scope, receive, send)
