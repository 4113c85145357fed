"""Cluster: this instance's leases on rooms, kept in a `Registry`, and what follows from them (SPEC §16).

Before a connection joins a room, `place` decides where it goes: into a room this instance owns
(holding, or newly claiming, the room's lease) or, if another instance owns the room, to that
owner (`Forward`, carried by app.forward). Each lease has a deadline on the monotonic clock: the
last successful renewal's send time + LEASE_TTL − a margin, so it passes before the registry's key
can expire. Once it passes — renewals failing, or this process paused — the lease is fenced: its
rooms' clients are closed with 1012 and their children killed. Rooms check the deadline before
passing on any message (`Room` calls `expired`), and the spawner helper, a process of its own,
kills the children at the same deadline even while this process cannot run.

A lease is given back (compare and delete) only after every child of its rooms has been reaped,
so a room's next child, wherever it starts, never overlaps this one.

Without --registry the registry is `Embedded`: every room is ours, leases never expire, nothing
else changes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from app.process import Spawner
from app.registry import Embedded, Owner, Registry, Unreachable
from app.rooms import Refused
from app.settings import Settings, parse_registry_url

if TYPE_CHECKING:
    from app.connection import Connection
    from app.room import Room

log = logging.getLogger("scalesocket.cluster")

MARGIN = 0.2  # of the TTL: how long before the registry's key expires the owner's lease ends
RENEWALS = 3  # renewals per TTL: one or two may fail and the lease still holds
FENCED = 1012  # close code for a room whose lease ended (SPEC §16)
REAP_WAIT = 2.0  # past the stop grace: SIGKILL and the reap


@dataclass(frozen=True, slots=True)
class Forward:
    """Carry the connection to the instance at `address` (`owner` true: it owns the room)."""

    address: str
    instance: str


class Lease:
    """This instance's ownership of one room, shared by the local rooms of that name."""

    __slots__ = (
        "_cluster",
        "deadline",
        "fenced",
        "holds",
        "name",
        "owner",
        "reaped",
        "released",
        "releasing",
        "rooms",
    )

    def __init__(self, cluster: Cluster, name: str, owner: str, deadline: float) -> None:
        self._cluster = cluster
        self.name = name
        self.owner = owner  # as the registry stores it: "<token> <instance> <address>"
        self.deadline = deadline  # monotonic; past it nothing of the room may run
        self.rooms: set[Room] = set()  # local rooms of this name whose run has not ended
        self.holds = 0  # connections between `place` and joining their room
        self.fenced = False
        self.releasing = False
        self.released = anyio.Event()
        self.reaped = anyio.Event()  # set (and replaced) each time one of its rooms is done

    def only_dying(self) -> bool:
        """Its rooms are all stopping: a new child of the name must wait until they are reaped."""
        return bool(self.rooms) and all(room.dying for room in self.rooms)

    def expired(self) -> bool:
        """Whether the deadline has passed; if so, every room of the lease is fenced now."""
        if self.deadline > time.monotonic():
            return False
        self._cluster.fence(self, "room lease expired")
        return True

    def attach(self, room: Room) -> None:
        self.rooms.add(room)
        room.lease = self

    def unhold(self) -> None:
        self.holds -= 1
        self._cluster.check_idle(self)

    def room_done(self, room: Room) -> None:
        """The room's run is over and its child reaped."""
        self.rooms.discard(room)
        self.reaped.set()
        self.reaped = anyio.Event()
        self._cluster.check_idle(self)


class Cluster:
    def __init__(self, settings: Settings, registry: Registry, spawner: Spawner) -> None:
        self.settings = settings
        self.registry = registry
        self.spawner = spawner
        self.clustered = not isinstance(registry, Embedded)
        self.instance = settings.instance
        self.address = settings.advertised if self.clustered else ""
        self.ttl = settings.lease_ttl if self.clustered else math.inf
        self.leases: dict[str, Lease] = {}
        self.reachable = not self.clustered  # until the registry first answers
        self.draining = False
        self.secret = settings.cluster_secret or ""
        self.fenced_total = 0  # for the metrics
        self.forwarded_open = 0
        self.forwarded_total = 0
        self.relays: set[Connection] = set()  # clients this instance carries to an owner (app.forward)
        self._claims: dict[str, anyio.Event] = {}  # rooms with a claim in flight
        self._idle = anyio.Event()  # a lease has no rooms left: release it
        self._down_since: float | None = None
        self._conflict_logged = False

    @classmethod
    @asynccontextmanager
    async def running(cls, settings: Settings, spawner: Spawner) -> AsyncIterator[Cluster]:
        """The app's cluster membership: renewals and releases run until the app ends; on the
        way out every lease left is released."""
        registry: Registry = Embedded()
        if settings.registry is not None:
            from app.registry_redis import RedisRegistry  # only a clustered instance needs redis

            registry = RedisRegistry(parse_registry_url(settings.registry), timeout=settings.lease_ttl / 5)
        self = cls(settings, registry, spawner)
        try:
            async with anyio.create_task_group() as tg:
                if self.clustered:
                    if await self._reach():
                        await self._renew()  # announces this instance, and learns whether claims wait
                    tg.start_soon(self._renew_loop)
                    tg.start_soon(self._fence_loop)
                    tg.start_soon(self._release_loop)
                yield self
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_all()
                await registry.close()

    @property
    def ready(self) -> bool:
        return self.reachable and not self.draining and not self.registry.quiet and not self.registry.conflict

    def status(self) -> str:
        if self.draining:
            return "draining"
        if not self.reachable:
            return "registry unreachable"
        if self.registry.conflict:
            return "instance name in use"
        return "registry starting up" if self.registry.quiet else "ready"

    def close_relays(self, code: int, reason: str) -> None:
        """Shutting down: the clients this instance forwards are closed like its own (1001)."""
        for conn in list(self.relays):
            conn.close(code, reason, drain=False)

    def begin_drain(self) -> None:
        """Take no new rooms from now on (safe to call from a signal handler: only flags)."""
        self.draining = True

    # --- placing a connection ---------------------------------------------------------------

    async def place(self, name: str, *, forwarded: bool) -> Lease | Forward:
        """Where a connection to room `name` goes: a held lease (join locally; call `unhold`
        once joined) or the instance to forward it to. A live local room costs no await."""
        while True:
            lease = self.leases.get(name)
            if lease is not None and self.clustered and not lease.fenced and lease.only_dying():
                # One child per room, cluster-wide, at every moment: this instance's own previous
                # child of the room is still stopping; the new one starts once it is reaped.
                with anyio.move_on_after(self.settings.stop_grace + REAP_WAIT) as waited:
                    await lease.reaped.wait()
                if waited.cancelled_caught:
                    raise Refused(503, "the room's previous child is still stopping, try again")
                continue
            if lease is not None and not lease.fenced and not lease.releasing and not lease.expired():
                lease.holds += 1
                return lease
            if lease is not None and lease.fenced:
                raise Refused(503, "room is moving to another instance, try again")
            if lease is not None and lease.releasing:
                await lease.released.wait()
                continue
            if (claiming := self._claims.get(name)) is not None:
                await claiming.wait()
                continue
            if not self.reachable:
                raise Refused(503, "room registry unreachable, try again")
            if self.registry.conflict:  # claiming would adopt the other instance's rooms as ours
                raise Refused(503, "instance name in use by another live instance")
            if self.draining:
                if forwarded:
                    raise Refused(503, "instance draining, try again")
                return await self._peer(name)
            self._claims[name] = claiming = anyio.Event()
            try:
                sent = time.monotonic()
                owner = await self.registry.claim(name, self.instance, self.address, self.ttl)
            except Unreachable as error:
                self._unreachable(error)
                raise Refused(503, "room registry unreachable, try again") from None
            finally:
                del self._claims[name]
                claiming.set()
            if owner is None:
                self.registry.quiet = True  # until the next renewal says otherwise
                raise Refused(503, "room registry starting up, try again")
            if owner.instance == self.instance:
                lease = self.leases[name] = Lease(self, name, owner.encode(), self._deadline(sent))
                lease.holds += 1
                log.debug("room claimed", extra={"room": name, "token": owner.token})
                return lease
            if forwarded:  # never forward twice: the peer's view was stale
                raise Refused(503, "room owned by another instance, try again")
            return Forward(owner.address, owner.instance)

    async def _peer(self, name: str) -> Forward:
        """Where a new room goes while this instance drains: its owner if it has one by now, else
        the live instance that rendezvous hashing picks, so every client of the room picks the same."""
        try:
            owner = await self.registry.owner(name)
            peers = await self.registry.peers()
        except Unreachable as error:
            self._unreachable(error)
            raise Refused(503, "room registry unreachable, try again") from None
        if owner is not None and owner.instance != self.instance:
            return Forward(owner.address, owner.instance)
        peers.pop(self.instance, None)
        if not peers:
            raise Refused(503, "instance draining and no other instance to take the room")
        instance = max(peers, key=lambda peer: hashlib.blake2b(f"{peer} {name}".encode(), digest_size=8).digest())
        return Forward(peers[instance], instance)

    async def owner_elsewhere(self, name: str) -> Owner | None:
        """The room's owner if it is another instance (None: ours, or nobody's); Unreachable passes."""
        if not self.clustered:
            return None
        owner = await self.registry.owner(name)
        return owner if owner is not None and owner.instance != self.instance else None

    def _deadline(self, sent: float) -> float:
        return sent + self.ttl * (1 - MARGIN)

    # --- fencing ------------------------------------------------------------------------------

    def fence(self, lease: Lease, reason: str) -> None:
        """The lease is over: close its rooms' clients with 1012, kill their children at once."""
        if lease.fenced:
            return
        lease.fenced = True
        self.fenced_total += 1
        lease.deadline = min(lease.deadline, time.monotonic())  # every room's check now fails at once
        log.warning("room fenced: %s", reason, extra={"room": lease.name, "rooms": len(lease.rooms)})
        for room in list(lease.rooms):
            room.fence(FENCED, reason)
        self.check_idle(lease)

    def check_idle(self, lease: Lease) -> None:
        if not lease.rooms and lease.holds == 0:
            if not self.clustered:  # nothing to give back
                if self.leases.get(lease.name) is lease:
                    del self.leases[lease.name]
                return
            self._idle.set()

    async def _fence_loop(self) -> None:
        """Fence every lease whose deadline passes (a renewal that came too late, or none)."""
        while True:
            now = time.monotonic()
            upcoming = math.inf
            for lease in list(self.leases.values()):
                if not lease.fenced and not lease.expired():
                    upcoming = min(upcoming, lease.deadline)
            await anyio.sleep(min(upcoming - now, self.ttl / RENEWALS) if upcoming < math.inf else self.ttl / RENEWALS)

    # --- the registry ---------------------------------------------------------------------------

    async def _reach(self) -> bool:
        try:
            await self.registry.connect()
            if not self.settings.cluster_secret:
                self.secret = await self.registry.secret()
        except Unreachable as error:
            self._unreachable(error)
            return False
        if not self.reachable:
            log.info("room registry reachable", extra={"instance": self.instance})
        self.reachable = True
        self._down_since = None
        return True

    def _unreachable(self, error: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            level = logging.ERROR if not self.reachable else logging.WARNING
            log.log(level, "room registry unreachable: %s", error, extra={"instance": self.instance})
        self.reachable = False

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(self.ttl / RENEWALS)
            if not self.reachable and not await self._reach():
                continue
            await self._renew()

    async def _renew(self) -> None:
        now = time.monotonic()
        live = {
            name: lease
            for name, lease in self.leases.items()
            if not lease.fenced and not lease.releasing and lease.deadline > now
        }
        sent = time.monotonic()
        try:
            lost = await self.registry.renew(
                {name: lease.owner for name, lease in live.items()},
                self.ttl,
                self.instance,
                self.address,
                draining=self.draining,
            )
            if self.registry.conflict and not self._conflict_logged:
                log.error(
                    "another live instance is named %s: this one takes no rooms until it is gone (--instance)",
                    self.instance,
                )
            self._conflict_logged = self.registry.conflict
            if not self.settings.cluster_secret:
                self.secret = await self.registry.secret()  # a Redis that lost its data has a new one
        except Unreachable as error:
            self._unreachable(error)
            return
        self.reachable = True
        self._down_since = None
        deadline = self._deadline(sent)
        pids: list[int] = []
        for name, lease in live.items():
            if lease.fenced or lease.releasing:
                continue
            if name in lost:
                self.fence(lease, "room lease lost to another instance")
                continue
            lease.deadline = deadline
            pids.extend(room.child.pid for room in lease.rooms if room.child is not None)
        self.spawner.set_deadline(pids, deadline)  # the helper kills them at the same moment

    async def _release_loop(self) -> None:
        while True:
            await self._idle.wait()
            self._idle = anyio.Event()
            for lease in [lease for lease in self.leases.values() if not lease.rooms and not lease.holds]:
                if not lease.releasing:
                    await self._release(lease)

    async def _release(self, lease: Lease) -> None:
        lease.releasing = True
        try:
            await self.registry.release(lease.name, lease.owner)
        except Unreachable as error:
            self._unreachable(error)  # the key expires by itself within the TTL
        finally:
            if self.leases.get(lease.name) is lease:
                del self.leases[lease.name]
            lease.released.set()

    async def _release_all(self) -> None:
        if not self.clustered:
            self.leases.clear()
            return
        with anyio.move_on_after(self.ttl / RENEWALS):
            for lease in list(self.leases.values()):
                if not lease.releasing:
                    await self._release(lease)


__all__ = ["FENCED", "Cluster", "Forward", "Lease", "Owner", "Refused"]
