"""Room: one child shared by the clients of one `/<room>` path.

The data path reads top to bottom: the child's output arrives in `_on_output`, is decoded into
deliveries (app.translate) and offered to each client's connection (`_deliver`; app.connection:
straight to its socket when it takes data, else into its bounded outbox); while any outbox is full
the child's output is paused, so the child is slowed through its pipe and nothing is dropped.
Client messages go the other way through `from_client`, handed over as they are parsed, and stop
reading that client while the child's input is full. `run` owns the child's whole life: spawn,
attach, wait for exit or stop, always reap. The room keeps its membership and the slow-client
clock; sockets are the connections' business.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from app.admission import Admission, out_of_resources
from app.budget import InboundBudget
from app.cache import Caches
from app.cgi import cgi_environment
from app.channel import Channel
from app.child import describe_exit, start_child
from app.connection.base import Connection
from app.memory import Memory, new_cache
from app.process import Process, Spawner
from app.settings import Settings
from app.tcp import connect_channel
from app.templates import ClientInfo, Template
from app.translate import Delivery, InputEncoder, OutputDecoder, ProtocolError

log = logging.getLogger("scalesocket.room")

NORMAL, GOING_AWAY, POLICY, INTERNAL_ERROR, TRY_AGAIN_LATER = 1000, 1001, 1008, 1011, 1013


class RoomLease(Protocol):
    """What a room knows of its ownership (app.cluster.Lease): past `deadline` it may not run."""

    deadline: float

    def expired(self) -> bool: ...

    def room_done(self, room: Room) -> None: ...


class Forever:
    """The lease of a room that is not the cluster's (never attached): it never ends."""

    deadline = math.inf

    def expired(self) -> bool:
        return False

    def room_done(self, room: Room) -> None:
        pass


FOREVER = Forever()


async def first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of `waits` returns; the others are cancelled."""
    async with anyio.create_task_group() as tg:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(one, wait)


class Host(Protocol):
    """What a room needs of the server around it (app.rooms.Rooms): no import of it, no circle."""

    spawner: Spawner
    slow_clients: int  # clients closed with 1008, server-wide
    inbound: InboundBudget | None  # children's unread input counts in it
    admission: Admission  # counts the rooms that could not start for lack of descriptors or processes
    caches: Caches | None  # --cachepersist: closed rooms' caches, for their next child

    def forget(self, room: Room) -> None:
        """The room is dying: the next joiner of its name gets a fresh one."""

    def child_started(self, room: Room) -> None: ...

    def room_done(self, room: Room) -> None:
        """The room's run is over and its child reaped."""


class Room:
    def __init__(
        self, name: str, settings: Settings, rooms: Host, starter: ClientInfo, port: int | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.port = port  # --tcp: lent by Rooms, returned when run() is done
        self.clients: dict[int, Connection] = {}
        self.child: Process | None = None
        self.started = time.time()  # wall clock, for /<room>/stats and the metrics' `_created`
        self.joins = 0  # clients that ever joined (the connections_total metric)
        self.messages_in = 0  # client messages written to the child
        self.messages_out = 0  # messages delivered to clients (counted once per client)
        self.bytes_in = 0  # bytes written to the child's input, framing and newlines included
        self.bytes_out = 0  # message payload bytes delivered to clients (counted once per client)
        self.exit_code: int | None = None  # set when the child exited by itself
        self.lease: RoomLease = FOREVER  # the cluster's, attached before run() spawns
        self.fenced = False
        self.dying = False  # no longer live: stopping, or its child exited by itself
        self._rooms = rooms
        self._starter = starter  # its CGI values make the child's environment
        self._channel: Channel | None = None
        self._decoder = OutputDecoder(settings)
        self.encoder = InputEncoder(settings)
        self._joinmsg = _template(settings.joinmsg) if settings.joinmsg is not None else None
        self._leavemsg = _template(settings.leavemsg) if settings.leavemsg is not None else None
        self._attached = anyio.Event()
        self._stop = anyio.Event()
        self._output_done = anyio.Event()
        self._changed = anyio.Event()  # set on a stop request, the child's exit, or the end of its output
        self._full: set[int] = set()  # clients whose outbox is full: the child's output is paused
        self._blame: dict[int, float] = {}  # seconds a full client held the room back while others kept up
        self._paused = False
        self._stalled_readers: dict[int, Connection] = {}  # clients paused on a full (or not yet open) input
        self._early: list[bytes] = []  # input that came before the child was attached, in order
        self._tg: anyio.abc.TaskGroup | None = None  # the room's own: the slow-client watcher runs in it
        self._watching = False
        # --api metadata and --cache (app/memory.py): None, and no cost, without those options.
        self.memory: Memory | None = None
        if Memory.wanted(settings):
            kept = rooms.caches.take(name) if rooms.caches is not None and name else None
            self.memory = Memory(settings, kept if kept is not None else new_cache(settings))

    # --- clients --------------------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        self.clients[conn.id] = conn
        conn.on_unblocked = functools.partial(self._on_unblocked, conn)
        self.joins += 1
        if self.memory is not None and (replay := self.memory.replay()):
            # In the same step as joining: every broadcast before this is in the cache, every later
            # one reaches the client live, so it sees each message once, in order.
            self._deliver([(conn.id, batch) for batch in replay])

    def leave(self, conn: Connection) -> None:
        """The client is gone: tell the child, and stop it after the last one."""
        if self.clients.pop(conn.id, None) is None:
            return
        self._stalled_readers.pop(conn.id, None)
        self._on_unblocked(conn)
        if self._leavemsg is not None and self._channel is not None:
            # Queued even past the pipe's high-water mark: one message per leaving client stays bounded.
            assert conn.info is not None
            self._channel.write(self.encoder.notice(conn.id, self._leavemsg.expand(conn.info)))
        if not self.clients:
            self.request_stop()

    def joined(self, conn: Connection) -> None:
        """The client's websocket is open: its join message goes to the child first."""
        if self._joinmsg is not None:
            assert conn.info is not None
            self._to_child(conn, self.encoder.notice(conn.id, self._joinmsg.expand(conn.info)))

    def refuse(self, code: int, reason: str) -> None:
        """Close the clients of a room that will never run (no free --tcp port): `run` is not called."""
        self._set_attached()  # there is no child: early input is dropped, and nothing waits for one
        for conn in self.clients.values():
            conn.close(code, reason, drain=False)

    def fence(self, code: int, reason: str) -> None:
        """The room's lease is over (SPEC §16): clients closed, the child killed now, not stopped."""
        if self.fenced:
            return
        self.fenced = True
        for conn in list(self.clients.values()):
            conn.close(code, reason, drain=False)
        if self._channel is not None:
            self._channel.close_input()
        if self.child is not None:
            self.child.kill_group()
        self.request_stop()

    def request_stop(self) -> None:
        self.dying = True
        self._rooms.forget(self)  # the next joiner gets a fresh child, never this dying one
        self._stop.set()
        self._notify()

    def _on_output_end(self) -> None:
        self._output_done.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds; it is re-checked whenever the room's state changes."""
        while not condition():
            await self._changed.wait()
            self._changed = anyio.Event()

    # --- client -> child ------------------------------------------------------------------------

    def from_client(self, conn: Connection, is_text: bool, payload: bytes) -> None:
        """A client message, handed over as it was parsed."""
        encoded = self.encoder.message(conn.id, is_text, payload)
        if encoded is not None:
            self._to_child(conn, encoded)

    def _to_child(self, conn: Connection, data: bytes) -> None:
        """Write to the child, in order; stop reading that client while the child's input is full
        (or not attached yet: what came meanwhile waits, one message per client at most)."""
        if not self._attached.is_set():
            self._early.append(data)
            conn.pause_reading()
            self._stalled_readers[conn.id] = conn
            return
        channel = self._channel
        if channel is None or channel.closed or self.lease.deadline <= time.monotonic() and self.lease.expired():
            return  # the child is gone (or its lease is); its clients are being closed
        channel.write(data)
        self.messages_in += 1
        self.bytes_in += len(data)
        if not channel.writable:
            conn.pause_reading()
            self._stalled_readers[conn.id] = conn
            if (inbound := self._rooms.inbound) is not None:
                inbound.charge(self, channel.buffered)

    @property
    def attached(self) -> bool:
        return self._attached.is_set()

    def _set_attached(self) -> None:
        """The child takes input now: what came before goes first, then its clients read on."""
        if self._attached.is_set():
            return
        self._attached.set()
        early, self._early = self._early, []
        channel = self._channel
        if channel is not None and not channel.closed and not self.lease.expired():
            for data in early:
                channel.write(data)
                self.messages_in += 1
                self.bytes_in += len(data)
        if channel is None or channel.writable or channel.closed:
            self._resume_readers()

    def _resume_readers(self) -> None:
        if (inbound := self._rooms.inbound) is not None:
            inbound.charge(self, 0)  # the child has read down to its pipe's low-water mark
        readers, self._stalled_readers = self._stalled_readers, {}
        for conn in readers.values():
            conn.resume_reading()

    # --- child -> clients -----------------------------------------------------------------------

    def _on_output(self, data: bytes) -> None:
        if self.fenced or self.lease.deadline <= time.monotonic() and self.lease.expired():
            return  # a fenced room passes nothing on
        try:
            deliveries = self._decoder.feed(data)
        except ProtocolError as error:
            self._deliver(self._remember(error.deliveries))
            self._fail(f"child broke gwsocket framing: {error}")
            return
        self._deliver(self._remember(deliveries))

    def _remember(self, deliveries: list[Delivery]) -> list[Delivery]:
        return deliveries if self.memory is None else self.memory.filter(deliveries)

    def _deliver(self, deliveries: list[Delivery]) -> None:
        clients = self.clients
        full = self._full
        for target, batch in deliveries:
            if target is None:
                for conn in clients.values():
                    if not conn.offer(batch):
                        full.add(conn.id)
                self.messages_out += len(batch.payloads) * len(clients)
                self.bytes_out += batch.payload_bytes * len(clients)
            elif (recipient := clients.get(target)) is not None:
                if not recipient.offer(batch):
                    full.add(target)
                self.messages_out += len(batch.payloads)
                self.bytes_out += batch.payload_bytes
            else:
                log.debug("dropping message for a client not in this room", extra={"room": self.name, "id": target})
        if full and not self._paused:
            self._pause()

    def _pause(self) -> None:
        self._paused = True
        if self._channel is not None:
            self._channel.pause_output()
        if not self._watching and self._tg is not None and len(self.clients) > 1:
            self._watching = True  # only a room held back with others in it can have a client to close
            self._tg.start_soon(self._watch_slow_clients)

    def _on_unblocked(self, conn: Connection) -> None:
        """`conn`'s outbox is no longer full (or it left)."""
        if conn.info is None:
            return
        self._full.discard(conn.id)
        self._blame.pop(conn.id, None)
        if not self._full and self._paused:
            self._paused = False
            if self._channel is not None:
                self._channel.resume_output()

    async def _watch_slow_clients(self) -> None:
        """Close a client whose full outbox holds the room back while another keeps up (SPEC §11)."""
        timeout = self.settings.slow_client_timeout
        half = self.settings.outbox_bytes / 2
        tick = min(0.25, timeout / 10)
        last = anyio.current_time()
        try:
            while self._paused:
                await anyio.sleep(tick)
                now = anyio.current_time()
                elapsed, last = now - last, now
                # Keeping up: room in its outbox and a socket that takes data. An empty outbox alone is
                # not enough: while the room is paused a stalled client's outbox stops filling.
                keeping_up = [c for c in self.clients.values() if c.queued <= half and not c.socket_full]
                for client_id in list(self._full):
                    conn = self.clients.get(client_id)
                    if conn is not None and any(other is not conn for other in keeping_up):
                        blame = self._blame[client_id] = self._blame.get(client_id, 0.0) + elapsed
                        if blame >= timeout:
                            self._kick(conn, blame)
        finally:
            self._watching = False

    def _kick(self, conn: Connection, blame: float) -> None:
        log.warning(
            "closing slow client: its full queue held the room back",
            extra={"room": self.name, "id": conn.id, "seconds": round(blame, 2)},
        )
        self._rooms.slow_clients += 1
        self.leave(conn)
        conn.close(POLICY, "client too slow", drain=False)

    def _fail(self, reason: str, code: int = INTERNAL_ERROR, close_reason: str | None = None) -> None:
        log.error(reason, extra={"room": self.name})
        for conn in list(self.clients.values()):
            conn.close(code, (close_reason or reason)[:123], drain=True)
        self.request_stop()

    # --- the child's life -----------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in self.settings.passenv if name in os.environ}
        env.update(QUERY_STRING=self._starter.query_string, REMOTE_ADDR=self._starter.remote_addr, ROOM=self.name)
        env["INSTANCE"] = self.settings.instance  # the owner's name (SPEC §16)
        if self.settings.cgi:
            env.update(cgi_environment(self._starter.request, self.name))
        if self.port is not None:
            env["PORT"] = str(self.port)
        return env

    async def _spawn(self) -> Process:
        child, self._channel = await start_child(
            self._rooms.spawner,
            self.settings.cmd,
            self.settings.args,
            self._environment(),
            label=self.name,
            stdio=not self.settings.tcp,  # with --tcp the socket is the message path
            pty=self.settings.pty,
            on_data=self._on_output,
            on_eof=self._on_output_end,
            deadline=self.lease.deadline if self.lease.deadline < math.inf else None,
        )
        if self._channel is not None:
            self._channel.on_resume(self._resume_readers)
        return child

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Spawn the child, serve the room until the child exits or the room stops, then reap."""
        try:
            async with anyio.create_task_group() as self._tg:
                try:
                    self.child = child = await self._spawn()
                except OSError as error:
                    task_status.started()
                    why = f"cannot start {self.settings.cmd}: {error.strerror}"
                    if (kind := out_of_resources(error)) is not None:  # no descriptor or process left: 1013
                        self._rooms.admission.refused[kind] += 1
                        self._fail(why, TRY_AGAIN_LATER, f"server out of {kind}, try again later")
                    else:
                        self._fail(why)
                    return
                child.on_exit = self._notify  # not `self._changed.set`: _until replaces the event
                log.info("child started", extra={"room": self.name, "pid": child.pid})
                self._rooms.child_started(self)
                task_status.started()
                if self._paused and not self._watching and len(self.clients) > 1:
                    self._pause()  # output filled an outbox while the pipes were being set up
                await self._attach()
                tcp = self.settings.tcp
                # A --tcp child that closes its socket has ended its session, like one that exits.
                await self._until(
                    lambda: child.returncode is not None or self._stop.is_set() or (tcp and self._output_done.is_set())
                )
                if tcp and child.returncode is None and not self._stop.is_set():
                    await child.stop(self.settings.stop_grace)
                self.lease.expired()  # a child killed at its lease's deadline did not exit by itself
                if child.returncode is not None and not self._stop.is_set():
                    await self._exited_by_itself(child)
                self._tg.cancel_scope.cancel()
        except Exception:
            log.exception("room failed", extra={"room": self.name})
            self._fail("internal error")
        finally:
            self._set_attached()  # nobody may wait to write to a child that is gone
            with anyio.CancelScope(shield=True):
                if self._channel is not None:
                    self._channel.close_input()
                if self.child is not None:
                    await self.child.stop(self.settings.stop_grace)
                    code = self.child.returncode
                    log.info("child exited", extra={"room": self.name, "pid": self.child.pid, "code": code})
                if self._channel is not None:
                    self._channel.close()
                self.lease.room_done(self)  # its child is reaped: the room's lease may be given back
                if (inbound := self._rooms.inbound) is not None:
                    inbound.charge(self, 0)
                self._rooms.room_done(self)

    async def _attach(self) -> None:
        delay = self.settings.attach_delay
        if self.settings.tcp:
            await self._connect()
        elif delay > 0:
            if self._channel is not None:
                self._channel.pause_output()
            assert self.child is not None
            await first(functools.partial(anyio.sleep, delay), self._stop.wait, self.child.exited.wait)
            if self._channel is not None and not self._paused:
                self._channel.resume_output()
        self._set_attached()

    async def _connect(self) -> None:
        """--tcp: after the attach delay, connect to the child's port; give up if it exits or the room stops."""
        assert self.child is not None and self.port is not None
        port = self.port

        async def connect() -> None:
            await anyio.sleep(self.settings.attach_delay)
            timeout = self.settings.tcp_connect_timeout
            with anyio.move_on_after(timeout):
                self._channel = await connect_channel(port, self._on_output, self._on_output_end)
            if self._channel is not None:
                self._channel.on_resume(self._resume_readers)
            if self._channel is None:  # clients get 1011; the port returns once the child is reaped
                self._fail(f"child did not accept a connection on port {port} within {timeout:g} s")
                return
            if self._paused:  # the first chunk may have filled an outbox before the room held the channel
                self._channel.pause_output()
            log.debug("connected to child", extra={"room": self.name, "port": port})

        await first(connect, self.child.exited.wait, self._stop.wait)
        if self._channel is None:
            self._on_output_end()  # never connected: no output to wait for at exit

    async def _exited_by_itself(self, child: Process) -> None:
        """Deliver everything the child printed, then close its clients with its exit status."""
        self.dying = True
        self._rooms.forget(self)
        assert child.returncode is not None
        self.exit_code = child.returncode
        await self._until(lambda: self._output_done.is_set() or self._stop.is_set())
        self._deliver(self._remember(self._decoder.close()))
        if self._decoder.truncated:
            self._fail(f"child output ended inside a gwsocket frame ({self._decoder.truncated} bytes)")
            return
        code = NORMAL if child.returncode == 0 else INTERNAL_ERROR
        for conn in list(self.clients.values()):
            conn.close(code, describe_exit(child.returncode), drain=True)


_template = functools.lru_cache(maxsize=8)(Template)  # compiled once per server, not per room
