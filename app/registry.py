"""Registry: who owns which room, shared by the instances of a cluster (SPEC §16).

`Registry` is what `app.cluster` asks; it knows nothing of rooms' children or websockets. Two
implementations: `Embedded`, the default, for a single instance (every room is this instance's,
nothing leaves the process), and `app.registry_redis.RedisRegistry` for `--registry redis://...`,
the only module that imports redis.

An owner is recorded as one string, `"<token> <instance> <address>"`: the fencing token (unique per
claim, from a counter in the registry) makes a release or renewal by a stale holder a no-op, the
instance name says whose it is, and the address is where other instances forward its clients.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol


class Unreachable(Exception):
    """The registry did not answer (in time); nothing was decided."""


@dataclass(frozen=True, slots=True)
class Owner:
    token: int
    instance: str
    address: str

    def encode(self) -> str:
        return f"{self.token} {self.instance} {self.address}"

    @classmethod
    def decode(cls, value: str) -> Owner:
        token, instance, address = value.split(" ", 2)
        return cls(int(token), instance, address)


class Registry(Protocol):
    quiet: bool  # as of the last renewal: the registry's data is new, and claims wait a lease's time
    conflict: bool  # as of the last renewal: another live instance goes by this instance's name

    async def connect(self) -> None:
        """Reach the registry (raises Unreachable); called again until it succeeds."""

    async def claim(self, room: str, instance: str, address: str, ttl: float) -> Owner | None:
        """Make this instance the room's owner for `ttl` seconds unless someone owns it: the owner
        either way, in one atomic step; None while the registry cannot hand out rooms yet."""

    async def renew(
        self, leases: dict[str, str], ttl: float, instance: str, address: str, *, draining: bool = False
    ) -> set[str]:
        """Extend every lease (room -> encoded owner) by `ttl`, in one round trip; the rooms lost.

        Also announces this instance (reachable at `address`) to its peers for `ttl`, or withdraws
        it while `draining` — unless another live instance has its name (`conflict`).
        """

    async def release(self, room: str, owner: str) -> None:
        """Give the room up, only if `owner` still holds it (compare and delete)."""

    async def owner(self, room: str) -> Owner | None:
        """The room's current owner, if any (for answering about a room from any instance)."""

    async def peers(self) -> dict[str, str]:
        """Live instances that take new rooms: name -> address."""

    async def secret(self) -> str:
        """The cluster secret shared through the registry (when none is configured)."""

    async def close(self) -> None: ...


class Embedded:
    """A single instance's registry: it owns every room, and there are no peers."""

    quiet = False
    conflict = False

    def __init__(self) -> None:
        self._tokens = itertools.count(1)

    async def connect(self) -> None:
        pass

    async def claim(self, room: str, instance: str, address: str, ttl: float) -> Owner | None:
        return Owner(next(self._tokens), instance, address)

    async def renew(
        self, leases: dict[str, str], ttl: float, instance: str, address: str, *, draining: bool = False
    ) -> set[str]:
        return set()

    async def release(self, room: str, owner: str) -> None:
        pass

    async def owner(self, room: str) -> Owner | None:
        return None

    async def peers(self) -> dict[str, str]:
        return {}

    async def secret(self) -> str:
        return ""

    async def close(self) -> None:
        pass
