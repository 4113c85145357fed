"""Memory: what a room keeps of its child's output besides delivering it (SPEC §15).

- `--api` under json server framing: a `"_meta": true` line is taken out of the output and becomes
  the room's `metadata`, replacing the previous one; it goes with the room.
- `--cache`: broadcast messages are recorded in the room's `Cache`, which `replay` gives a joiner.

`filter` runs on every delivery the decoder produces, before the room delivers it; a room with
neither option has no `Memory` at all, so its output path is unchanged.
"""

from __future__ import annotations

from typing import Any

from app.batch import Batch
from app.cache import Cache
from app.meta import metadata_of
from app.settings import FrameMode, Settings
from app.translate import Delivery

__all__ = ["Memory", "new_cache"]


def new_cache(settings: Settings) -> Cache | None:
    if not settings.cache_size:
        return None
    return Cache(settings.cache_size, tagged_only=settings.cache_tagged, max_bytes=settings.cache_bytes)


class Memory:
    def __init__(self, settings: Settings, cache: Cache | None) -> None:
        self._meta = settings.api and settings.server_framing is FrameMode.json
        self.cache = cache
        self.metadata: dict[str, Any] | None = None

    @staticmethod
    def wanted(settings: Settings) -> bool:
        return bool(settings.cache_size) or (settings.api and settings.server_framing is FrameMode.json)

    def filter(self, deliveries: list[Delivery]) -> list[Delivery]:
        """`deliveries` without `_meta` lines (they update `metadata`); broadcasts recorded in the cache."""
        if self._meta:
            deliveries = [(target, batch) for target, batch in map(self._take_meta, deliveries) if batch.payloads]
        if self.cache is not None:
            for target, batch in deliveries:
                if target is None:
                    self.cache.record(batch)
        return deliveries

    def _take_meta(self, delivery: Delivery) -> Delivery:
        target, batch = delivery
        # One search over the batch's websocket encoding, which is built once for sending anyway, rather
        # than two per line: most batches hold no _meta line (nor a \u escape that could spell one).
        wire = batch.wire()
        if wire.find(b'"_meta"') < 0 and wire.find(b"\\u") < 0:
            return delivery
        kept: list[bytes] | None = None  # built only once a _meta line turns up
        for index, payload in enumerate(batch.payloads):
            metadata = metadata_of(payload)
            if metadata is None:
                if kept is not None:
                    kept.append(payload)
                continue
            self.metadata = metadata
            if kept is None:
                kept = batch.payloads[:index]
        return delivery if kept is None else (target, Batch(batch.opcode, kept))

    def replay(self) -> list[Batch]:
        return self.cache.replay() if self.cache is not None else []
