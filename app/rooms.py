"""Rooms: the registry of live rooms, connection ids, and the server-wide session policy.

Joining is synchronous — look up and insert with no `await` in between — so however connections
race, one room name never has two children. A room leaves the registry the moment it starts
dying (last client gone, or child exited), so the next joiner always gets a fresh child. Every
room's `run` lives in the one task group that `Rooms` is given (the app's lifespan owns it).
With --tcp, `Rooms` also owns the server's one port pool: a new room takes its port as it is
created (still with no `await`), and gives it back when its run is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc
from starlette.status import WS_1013_TRY_AGAIN_LATER

from app.admission import Admission, Refused
from app.budget import InboundBudget
from app.cache import Caches
from app.child import shell_status
from app.connection.base import Connection
from app.process import Spawner
from app.room import GOING_AWAY, Room
from app.settings import Settings
from app.tcp import PortPool, PortsExhausted
from app.templates import ClientInfo

__all__ = ["Refused", "Rooms"]  # Refused lives in app.admission; older imports find it here too

log = logging.getLogger("scalesocket.rooms")

MAX_ID = 2**32 - 1  # connection ids are u32, never 0 (0 means "everyone" under binary framing)


class Rooms:
    def __init__(
        self, tg: anyio.abc.TaskGroup, settings: Settings, spawner: Spawner, admission: Admission | None = None
    ) -> None:
        self.settings = settings
        self.admission = admission if admission is not None else Admission(settings)  # limits, refusal counts
        self.spawner = spawner  # every room's child is started (and reaped) through it
        self.live: dict[str, Room] = {}  # rooms a new client may join
        self.running: set[Room] = set()  # every room whose run() has not returned, dying ones too
        self.slow_clients = 0  # clients closed with 1008, server-wide
        self.inbound: InboundBudget | None = None  # the server's inbound budget (create_app sets it)
        self.finished = anyio.Event()  # --oneshot: the one session is over
        self.exit_status = 0
        self.on_room_open: Callable[[Room], None] = lambda room: None
        self.on_room_closed: Callable[[Room], None] = lambda room: None
        self.ports = PortPool(*settings.tcpports)
        self.caches = Caches(settings.cache_ttl, settings.cache_rooms) if settings.cachepersist else None
        self._tg = tg
        self._ids_in_use: set[int] = set()
        self._last_id = 0
        self._sessions = 0
        self._shutting_down = False
        self._no_connections = anyio.Event()
        self._no_connections.set()

    def next_id(self) -> int:
        """The next free connection id, counting up from 1 and wrapping after 2^32 - 1."""
        candidate = self._last_id
        while True:
            candidate = candidate + 1 if candidate < MAX_ID else 1
            if candidate not in self._ids_in_use:
                self._last_id = candidate
                self._ids_in_use.add(candidate)
                return candidate

    def release_id(self, client_id: int) -> None:
        self._ids_in_use.discard(client_id)
        if not self._ids_in_use:
            self._no_connections.set()

    def join(self, name: str, conn: Connection, make_info: Callable[[int], ClientInfo]) -> Room:
        """Put a new client into room `name`, starting the room (and its child) if needed.

        The name "" is websocketd's `/`: every such client gets a room of its own, never registered,
        so no one else can join it (or see it in stats), and it stops when that client leaves.
        """
        if self._shutting_down:
            raise Refused(503, "server shutting down", kind="shutdown")
        room = self.live.get(name) if name else None
        # Checked and inserted below with no await in between: racing joins never overshoot a limit.
        refusal = self.admission.limits.refusal(
            name,
            new_room=room is None,
            connections=len(self._ids_in_use),
            rooms=len(self.running),
            clients=len(room.clients) if room is not None else 0,
        )
        if refusal is not None:
            raise refusal
        if room is None:
            if self.settings.oneshot and self._sessions:
                raise self.admission.limits.busy("--oneshot: this server has served its one session", "oneshot")
            conn.info = info = make_info(self.next_id())
            port = None
            if self.settings.tcp:
                try:
                    port = self.ports.allocate()
                except PortsExhausted as error:
                    return self._refused(name, conn, str(error))
            room = Room(name, self.settings, self, info, port)
            if name:
                self.live[name] = room
            self.running.add(room)
            self._sessions += 1
            self._tg.start_soon(room.run)
        elif self.settings.oneshot:
            raise self.admission.limits.busy("--oneshot: this server serves a single client", "oneshot")
        else:
            conn.info = make_info(self.next_id())
        if self._no_connections.is_set():
            self._no_connections = anyio.Event()
        room.add(conn)
        return room

    def _refused(self, name: str, conn: Connection, why: str) -> Room:
        """No free port: the client is accepted and closed with 1013, so it sees why (SPEC §12).

        The room is never registered or run, so the next client of that name tries again.
        """
        assert conn.info is not None
        log.error("refusing new room: %s", why, extra={"room": name, "id": conn.id})
        room = Room(name, self.settings, self, conn.info)
        if self.caches is not None and room.memory is not None and room.memory.cache:
            self.caches.put(name, room.memory.cache)  # this room never runs: a kept cache waits on
        if self._no_connections.is_set():
            self._no_connections = anyio.Event()
        room.add(conn)
        room.refuse(WS_1013_TRY_AGAIN_LATER, "no free port for a new room, try again later")
        return room

    def forget(self, room: Room) -> None:
        if self.live.get(room.name) is room:
            del self.live[room.name]
            if self.caches is not None and room.memory is not None and room.memory.cache is not None:
                # Kept from the moment the room stops taking joiners, so its next child finds it
                # even while this one is still dying (whose last lines still land in it).
                self.caches.put(room.name, room.memory.cache)

    def child_started(self, room: Room) -> None:
        self.on_room_open(room)

    def room_done(self, room: Room) -> None:
        self.forget(room)
        self.running.discard(room)
        if room.port is not None:
            self.ports.release(room.port)  # its child is reaped: the port is free for the next room
        self.on_room_closed(room)
        if self.settings.oneshot:
            self.exit_status = shell_status(room.exit_code) if room.exit_code is not None else 0
            self.finished.set()

    def begin_shutdown(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        """Close every client and start stopping every child, all at once."""
        self._shutting_down = True
        for room in list(self.running):
            for conn in list(room.clients.values()):
                conn.close(code, reason, drain=False)
            room.request_stop()

    async def wait_clients_closed(self) -> None:
        """Until every websocket has left (its closing handshake done, or its socket gone)."""
        await self._no_connections.wait()
