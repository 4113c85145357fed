"""The middle layer on its own: a Room with a real child and connections whose socket is a list, and the
Connection's outbox rules (app/connection/base.py) without any socket (SPEC §11 backpressure, in order)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from app.batch import TEXT, Batch
from app.connection.base import Connection
from app.process import Spawner
from app.room import Room
from app.rooms import Rooms
from app.templates import ClientInfo
from tests.conftest import TIMEOUT, child_settings

pytestmark = pytest.mark.anyio


class ListSocket(Connection):
    """A real Connection whose socket is a list: it takes data while `takes` is true."""

    def __init__(self, limit: int = 64 * 1024, takes: bool = True) -> None:
        super().__init__(limit)
        self.takes = takes
        self.sent: list[bytes] = []
        self.reading = True
        self.arrived = anyio.Event()

    def _socket_write(self, batch: Batch) -> bool:
        if not self.takes:
            return False
        self.sent.extend(batch.payloads)
        self.arrived.set()
        return True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    @property
    def socket_full(self) -> bool:
        return not self.takes

    def catch_up(self) -> None:
        """The client reads again: everything queued goes out, in order."""
        self.takes = True
        for batch in self._take():
            self.sent.extend(batch.payloads)
        self.arrived.set()

    async def wait_for(self, count: int) -> list[bytes]:
        with anyio.fail_after(TIMEOUT):
            while len(self.sent) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.sent


@asynccontextmanager
async def rooms_for(mode: str, *args: str, **overrides: Any) -> AsyncIterator[Rooms]:
    settings = child_settings(mode, *args, **overrides)
    async with Spawner.running() as spawner, anyio.create_task_group() as tg:
        rooms = Rooms(tg, settings, spawner)
        try:
            yield rooms
        finally:
            rooms.begin_shutdown()


def join(rooms: Rooms, conn: Connection, name: str = "r") -> Room:
    return rooms.join(name, conn, lambda id_: ClientInfo(id_, "", "127.0.0.1:1", name))


async def test_a_message_reaches_the_child_and_its_answer_every_connection() -> None:
    async with rooms_for("pid") as rooms:
        a, b = ListSocket(), ListSocket()
        room = join(rooms, a)
        assert join(rooms, b) is room
        room.joined(a)
        room.joined(b)
        room.from_client(a, True, b"hello")
        (line,) = await a.wait_for(1)
        assert line.endswith(b" hello")
        assert await b.wait_for(1) == [line]
        room.leave(a)
        room.leave(b)


async def test_input_before_the_child_is_attached_waits_in_order_with_its_client_paused() -> None:
    async with rooms_for("echo", cmd_attach_delay=0.3) as rooms:
        a = ListSocket()
        room = join(rooms, a)
        room.from_client(a, True, b"first")
        assert not a.reading  # the connection stops handing messages over until the child is there
        room.from_client(a, True, b"second")  # what a connection had already parsed still goes, in order
        sent = await a.wait_for(3)
        assert sent[1:] == [b"first", b"second"] and sent[0].startswith(b"ready")
        assert a.reading
        room.leave(a)


async def test_a_full_outbox_pauses_the_child_and_catching_up_resumes_it_losing_nothing() -> None:
    async with rooms_for("go-seq", "20000") as rooms:
        slow = ListSocket(limit=4096, takes=False)
        room = join(rooms, slow)
        room.from_client(slow, True, b"go")
        with anyio.fail_after(TIMEOUT):
            while not room._paused:  # noqa: ASYNC110 - the room has no event for this
                await anyio.sleep(0.01)
        assert slow.full and slow.queued < 4096 + 65536  # one pipe read past the limit at most
        slow.catch_up()
        assert not room._paused
        sent = await slow.wait_for(20000)
        assert sent == [str(i).encode() for i in range(1, 20001)]
        room.leave(slow)


def test_outbox_rules_without_a_socket() -> None:
    unblocked: list[int] = []
    conn = ListSocket(limit=10, takes=False)
    conn.on_unblocked = lambda: unblocked.append(1)
    one = Batch(TEXT, [b"abc"])  # 5 bytes counted (payload + 2 per message)
    assert conn.offer(one) is True and conn.queued == 5 and not conn.full
    assert conn.offer(one) is False and conn.full  # 10: full, still kept
    assert conn.offer(one) is False and conn.queued == 15  # nothing is ever dropped while it lives
    conn.catch_up()
    assert conn.sent == [b"abc"] * 3 and conn.queued == 0 and unblocked == [1]
    assert conn.offer(one) is True and conn.sent == [b"abc"] * 4  # straight to the socket again


def test_close_without_drain_drops_the_outbox_and_unblocks_the_room() -> None:
    unblocked: list[int] = []
    conn = ListSocket(limit=4, takes=False)
    conn.on_unblocked = lambda: unblocked.append(1)
    conn.offer(Batch(TEXT, [b"abcdef"]))
    assert conn.full
    conn.close(1008, "too slow", drain=False)
    assert conn.queued == 0 and not conn.outbox and unblocked == [1]
    assert conn.offer(Batch(TEXT, [b"more"])) is True and not conn.outbox  # closing: nothing more queues
    assert conn.close_request is not None and conn.close_request.code == 1008


def test_close_with_drain_keeps_what_is_queued() -> None:
    conn = ListSocket(limit=100, takes=False)
    conn.offer(Batch(TEXT, [b"last words"]))
    conn.close(1000, "process exited with code 0")
    assert list(conn.outbox) and conn.close_request is not None and conn.close_request.drain
