"""A room's descendants die with it however they detach: `setsid`, a double fork (issue 10, item 9).

The spawner helper is a child subreaper, so what a room orphans becomes the helper's child, and the
helper knows which room it came from. Each test checks the processes themselves (an orphan that
escaped to init would not show up in conftest's leak check, which follows parent links).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from tests.conftest import TIMEOUT, Serve, child_settings, recv_text, wait_gone
from tests.test_process import run, scalesocket

pytestmark = pytest.mark.anyio


def exists(pid: int) -> bool:
    """Alive or a zombie: anything but reaped."""
    return Path(f"/proc/{pid}").exists()


async def all_reaped(pids: list[int]) -> None:
    for pid in pids:
        await wait_gone(pid)
    with anyio.fail_after(TIMEOUT):  # exited is not enough: a zombie nobody reaps is a leak too
        while left := [pid for pid in pids if exists(pid)]:  # noqa: ASYNC110 (reaping sends no event to await)
            await anyio.sleep(0.02)
    assert not left


async def ready_pids(ws: object) -> list[int]:
    line = await recv_text(ws)  # type: ignore[arg-type]
    assert line.startswith("ready "), line
    return [int(pid) for pid in line.split()[1:]]


async def test_fifty_setsid_grandchildren_die_when_their_room_stops(server: Serve) -> None:
    async with server(child_settings("setsid", "50", "stay")) as s:
        async with s.connect("/r") as ws:
            pids = await ready_pids(ws)
            assert len(pids) == 50
            with anyio.fail_after(TIMEOUT):  # each in a session of its own, once `setsid` has run
                while not all(os.getsid(pid) == pid for pid in pids):  # noqa: ASYNC110 (no event for this)
                    await anyio.sleep(0.01)
        await all_reaped(pids)


async def test_orphans_of_a_child_that_exits_die_and_other_rooms_keep_theirs(server: Serve) -> None:
    async with server(child_settings("setsid", "50", "exit")) as s, s.connect("/stays") as other:
        # A room whose child stays, so that "no room left" is not what kills the orphans.
        kept = await ready_pids(other)
        async with s.connect("/r") as ws:
            orphans = await ready_pids(ws)
            await all_reaped(orphans)
        assert all(exists(pid) for pid in kept), "another room's processes were killed"
    await all_reaped(kept)


async def test_a_double_forked_daemon_dies_with_its_room(server: Serve) -> None:
    settings = child_settings("daemon")
    async with server(settings) as s, s.connect("/stays") as other:
        other_daemon = (await ready_pids(other))[0]
        async with s.connect("/r") as ws:
            daemon = (await ready_pids(ws))[0]
            assert os.getsid(daemon) != os.getsid(other_daemon)
            await anyio.sleep(1.5)  # the helper's periodic walk has seen it, parentless
        await all_reaped([daemon])
        assert exists(other_daemon)
    await all_reaped([other_daemon])


async def test_a_killed_server_takes_setsid_grandchildren_with_it() -> None:
    async with run(scalesocket(mode="setsid", args=("50", "stay"))) as proc:
        from websockets.asyncio.client import connect

        async with connect(proc.url + "/r") as ws:
            pids = await ready_pids(ws)
            proc.process.send_signal(signal.SIGKILL)
            await proc.wait_exit()
    await all_reaped(pids)
