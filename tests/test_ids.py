"""SPEC §3: connection ids are u32, count up from 1 server-wide, wrap after 2^32 - 1 and skip ids in use."""

from __future__ import annotations

from typing import Any, cast

from app.rooms import MAX_ID, Rooms
from tests.conftest import child_settings


def rooms() -> Rooms:
    return Rooms(cast(Any, None), child_settings("echo"), cast(Any, None))  # next_id needs no task group or spawner


def test_ids_count_up_from_one() -> None:
    r = rooms()
    assert [r.next_id() for _ in range(3)] == [1, 2, 3]


def test_released_ids_are_not_reused_before_wrapping() -> None:
    r = rooms()
    first = r.next_id()
    r.release_id(first)
    assert r.next_id() == 2


def test_wraps_after_u32_max_skipping_ids_in_use() -> None:
    r = rooms()
    one, two = r.next_id(), r.next_id()
    r._last_id = MAX_ID - 1
    assert r.next_id() == MAX_ID == 2**32 - 1
    assert r.next_id() == 3  # 1 and 2 are still connected: skipped, never shared
    r.release_id(one)
    r._last_id = MAX_ID
    assert r.next_id() == 1
    assert two in r._ids_in_use
