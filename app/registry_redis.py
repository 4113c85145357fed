"""RedisRegistry: room ownership in one Redis primary (`--registry redis://HOST:PORT[/DB]`).

Every decision is one Lua script, so Redis runs it atomically: a claim is "the current owner, or
me from now on with a new fencing token", a renewal extends all of an instance's rooms at once
(and says which it lost), a release deletes only a key that still names the releasing owner.

A Redis that comes back empty (restarted without persistence) would let a second instance claim a
room whose owner is still running it. So the first script to find the `epoch` key missing marks
the data as new and opens a quiet period of one lease: claims wait (the caller answers 503) while
live owners' renewals put their rooms back. A Redis restarted from its AOF still has the epoch and
goes on as before. What this cannot cover — a replica promoted without the latest writes while
the old owner keeps renewing elsewhere — is why docs/cluster.md asks for a single primary.
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.registry import Owner, Unreachable
from app.settings import RegistryURL

PREFIX = "scalesocket:"
EPOCH, QUIET, FENCE, SECRET, INSTANCES = (PREFIX + name for name in ("epoch", "quiet", "fence", "secret", "instances"))

# Shared head of the scripts: a Redis without our epoch key is new (or lost its data).
_EPOCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], '1')
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
end
"""

# KEYS: epoch, quiet, fence counter, room.  ARGV: ttl ms, instance, address.
CLAIM = (
    _EPOCH
    + """
local current = redis.call('GET', KEYS[4])
if current then
  -- Our own key (a lease kept over a restart, or one whose release failed): adopting it must
  -- also extend it, or the lease's new deadline would outlive the key.
  if string.match(current, '^%d+ (%S+) ') == ARGV[2] then redis.call('PEXPIRE', KEYS[4], ARGV[1]) end
  return current
end
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local owner = redis.call('INCR', KEYS[3]) .. ' ' .. ARGV[2] .. ' ' .. ARGV[3]
redis.call('SET', KEYS[4], owner, 'PX', ARGV[1])
return owner
"""
)

# KEYS: epoch, quiet, instances set, instance key, rooms...
# ARGV: ttl ms, instance, address, draining ('1' or '0'), owners (ARGV[i] for KEYS[i], from 5 on).
RENEW = (
    _EPOCH
    + """
local quiet = redis.call('EXISTS', KEYS[2]) == 1
local announced = redis.call('GET', KEYS[4])
local conflict = announced and announced ~= ARGV[3]
if conflict then
  -- another live instance goes by this name: leave its entry alone (the caller takes no rooms)
elseif ARGV[4] == '1' then
  redis.call('SREM', KEYS[3], ARGV[2])
  redis.call('DEL', KEYS[4])
else
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[1])
end
local lost = {quiet and 1 or 0, conflict and 1 or 0}
for i = 5, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current == ARGV[i] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  elseif (not current) and quiet then
    redis.call('SET', KEYS[i], ARGV[i], 'PX', ARGV[1])
  else
    table.insert(lost, i - 4)
  end
end
return lost
"""
)

# KEYS: room.  ARGV: owner.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def room_key(room: str) -> str:
    return PREFIX + "room:" + room


def instance_key(instance: str) -> str:
    return PREFIX + "instance:" + instance


class RedisRegistry:
    def __init__(self, url: RegistryURL, timeout: float) -> None:
        self._timeout = timeout  # per operation: a Redis that hangs is an unreachable one
        self.quiet = False  # the registry's data is new: no claims for one TTL
        self.conflict = False  # another live instance has our --instance name
        self._redis = aioredis.Redis(
            host=url.host,
            port=url.port,
            db=url.db,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # the caller retries on its own clock; never stall a tick
            decode_responses=True,
        )
        self._claim = self._redis.register_script(CLAIM)
        self._renew = self._redis.register_script(RENEW)
        self._release = self._redis.register_script(RELEASE)

    async def _call(self, what: Any) -> Any:
        try:
            with anyio.fail_after(self._timeout):
                return await what
        except (RedisError, OSError, TimeoutError) as error:
            raise Unreachable(str(error) or type(error).__name__) from error

    async def connect(self) -> None:
        await self._call(self._redis.ping())

    async def claim(self, room: str, instance: str, address: str, ttl: float) -> Owner | None:
        value = await self._call(
            self._claim(keys=[EPOCH, QUIET, FENCE, room_key(room)], args=[_ms(ttl), instance, address])
        )
        return Owner.decode(value) if value else None

    async def renew(
        self, leases: dict[str, str], ttl: float, instance: str, address: str, *, draining: bool = False
    ) -> set[str]:
        rooms = list(leases)
        keys = [EPOCH, QUIET, INSTANCES, instance_key(instance), *map(room_key, rooms)]
        args: list[str | int] = [
            _ms(ttl),
            instance,
            address,
            "1" if draining else "0",
            *(leases[room] for room in rooms),
        ]
        quiet, conflict, *lost = await self._call(self._renew(keys=keys, args=args))
        self.quiet = bool(quiet)
        self.conflict = bool(conflict)
        return {rooms[int(index) - 1] for index in lost}

    async def release(self, room: str, owner: str) -> None:
        await self._call(self._release(keys=[room_key(room)], args=[owner]))

    async def owner(self, room: str) -> Owner | None:
        value = await self._call(self._redis.get(room_key(room)))
        return Owner.decode(value) if value else None

    async def peers(self) -> dict[str, str]:
        names = sorted(await self._call(self._redis.smembers(INSTANCES)))
        if not names:
            return {}
        addresses = await self._call(self._redis.mget([instance_key(name) for name in names]))
        gone = [name for name, address in zip(names, addresses, strict=True) if address is None]
        if gone:
            await self._call(self._redis.srem(INSTANCES, *gone))
        return {name: address for name, address in zip(names, addresses, strict=True) if address is not None}

    async def secret(self) -> str:
        await self._call(self._redis.set(SECRET, secrets.token_urlsafe(32), nx=True))
        value = await self._call(self._redis.get(SECRET))
        if not value:
            raise Unreachable("no cluster secret in the registry")
        return str(value)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
            await self._redis.aclose()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
