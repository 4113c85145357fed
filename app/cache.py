"""Cache: the last broadcast messages of a room, replayed to each client that joins (`--cache`, SPEC §15).

A `Cache` is bounded twice: at most SIZE messages (the option) and at most `cache_bytes` bytes, oldest
dropped first. It only ever sees messages that went to every client: the room records a broadcast as it
delivers it, and replays to a joiner as it adds it, both with no `await`, so a joiner gets each message
exactly once — from the cache if it came before the join, live if after.

`Caches` (`--cachepersist`) keeps closed rooms' caches for their next child: each for at most `ttl`
seconds, and at most `max_rooms` of them, the oldest dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from app.batch import Batch
from app.meta import tagged

__all__ = ["Cache", "Caches"]


class Cache:
    """A room's replay buffer of (opcode, payload) messages."""

    __slots__ = ("_items", "_max_bytes", "_size", "_tagged", "nbytes")

    def __init__(self, size: int, *, tagged_only: bool, max_bytes: int) -> None:
        self._size = size
        self._tagged = tagged_only
        self._max_bytes = max_bytes
        self._items: deque[tuple[int, bytes]] = deque()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def record(self, batch: Batch) -> None:
        """Keep the messages of a broadcast `batch` (under tagged: only those marked `"_cache": true`)."""
        items = self._items
        opcode = batch.opcode
        if self._tagged:
            wire = batch.wire()  # one search for the whole batch (its encoding is built for sending anyway)
            if wire.find(b'"_cache"') < 0 and wire.find(b"\\u") < 0:
                return
            for payload in batch.payloads:
                if tagged(payload):
                    items.append((opcode, payload))
                    self.nbytes += len(payload)
        else:
            items.extend([(opcode, payload) for payload in batch.payloads[-self._size :]])
            self.nbytes += sum(map(len, batch.payloads[-self._size :]))
        while items and (len(items) > self._size or self.nbytes > self._max_bytes):
            self.nbytes -= len(items.popleft()[1])

    def replay(self) -> list[Batch]:
        """Everything kept, in order, as batches of one opcode each."""
        out: list[Batch] = []
        run: list[bytes] = []
        opcode = 0
        for kind, payload in self._items:
            if kind != opcode and run:
                out.append(Batch(opcode, run))
                run = []
            opcode = kind
            run.append(payload)
        if run:
            out.append(Batch(opcode, run))
        return out


class Caches:
    """Closed rooms' caches waiting for the room's next child (`--cachepersist`)."""

    def __init__(self, ttl: float, max_rooms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_rooms
        self._clock = clock
        self._kept: OrderedDict[str, tuple[float, Cache]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, name: str, cache: Cache) -> None:
        """Room `name` closed: keep its cache for its next child."""
        self._kept.pop(name, None)
        self._kept[name] = (self._clock(), cache)
        self._prune()

    def take(self, name: str) -> Cache | None:
        """The cache room `name` left within the TTL, handed over (and no longer kept here)."""
        self._prune()
        kept = self._kept.pop(name, None)
        return kept[1] if kept is not None else None

    def _prune(self) -> None:
        deadline = self._clock() - self._ttl
        kept = self._kept
        while kept and (len(kept) > self._max or next(iter(kept.values()))[0] < deadline):
            kept.popitem(last=False)
