"""The spawner helper (app/spawner.py): children start, exit, and are stopped through it, and
nothing outlives it — whether the server closes it, the helper dies, or the server is killed."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app import spawner
from tests.conftest import TIMEOUT, Serve, alive, child_settings, recv, recv_text, wait_gone
from tests.test_process import run, scalesocket

pytestmark = pytest.mark.anyio


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def ready_pid(ws: object) -> int:
    line = await recv_text(ws)  # type: ignore[arg-type]
    assert line.startswith("ready "), line
    return int(line.split()[1])


def test_messages_round_trip() -> None:
    message = {"op": "spawn", "path": "/bin/cat", "args": ["-u"], "env": {"A": "é", "B": "\udcff"}}
    assert spawner.decode(spawner.encode(message)) == message  # undecodable env bytes survive too
    with pytest.raises(ValueError):
        spawner.decode(b"[1]")


async def test_children_are_started_by_the_helper(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        pid = await ready_pid(ws)
        helper = parent_of(pid)
        assert cmdline(helper)[-2].endswith("app/spawner.py")
        await ws.send("hi")
        assert await recv(ws) == "hi"


async def test_more_rooms_at_once_than_the_helper_queue_holds(server: Serve) -> None:
    # The socket to the helper is shrunk to its minimum send buffer (a few requests), and the
    # helper is stopped: of 30 rooms starting at once, most must wait for room in the queue, all
    # on one writability callback. Once the helper runs again, every room must get its child.
    async with server(child_settings("echo")) as s:
        spawner_side = s.rooms.spawner
        helper = spawner_side._helper_pid
        spawner_side._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel rounds up
        pids: dict[int, int] = {}

        async def join(i: int) -> None:
            async with s.connect(f"/r{i}") as ws:
                pids[i] = await ready_pid(ws)
                await ws.send(f"m{i}")
                assert await recv(ws) == f"m{i}"

        os.kill(helper, signal.SIGSTOP)
        try:
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(join, i)
                with anyio.fail_after(TIMEOUT):
                    while len(spawner_side._waiting_to_send) < 10:  # noqa: ASYNC110 - no event to wait on
                        await anyio.sleep(0.01)
                os.kill(helper, signal.SIGCONT)
        finally:
            os.kill(helper, signal.SIGCONT)
        assert len(set(pids.values())) == 30


async def test_a_dead_helper_ends_its_rooms_and_the_next_room_gets_a_new_one(server: Serve) -> None:
    # The child ignores SIGTERM and stdin's end: only the server's last-resort SIGKILL ends it.
    async with server(child_settings("ignore-term")) as s:
        async with s.connect("/a") as ws:
            pid = await ready_pid(ws)
            helper = parent_of(pid)
            os.kill(helper, signal.SIGKILL)
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "process killed by signal SIGKILL")
            await wait_gone(pid)
        async with s.connect("/b") as ws:
            pid = await ready_pid(ws)
            assert parent_of(pid) != helper
            assert cmdline(parent_of(pid))[-2].endswith("app/spawner.py")


async def test_killed_server_takes_its_children_and_theirs_with_it() -> None:
    # The child exits at stdin's end, but its grandchild ignores that and SIGTERM: only the
    # helper's group kill, when the server's socket closes, ends it.
    async with run(scalesocket("--passenv=PATH", mode="grandchild")) as proc:
        async with connect(proc.url + "/a") as ws:
            line = await recv_text(ws)
            pids = [int(pid) for pid in line.split()[1:]]
            proc.process.kill()
            await proc.wait_exit()
            for pid in pids:
                await wait_gone(pid)
    assert not any(alive(pid) for pid in pids)


async def test_a_command_removed_after_start_up_fails_its_room_with_the_reason(server: Serve, tmp_path: Path) -> None:
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\nexec cat\n")
    script.chmod(0o755)
    settings = child_settings("unused").model_copy(update={"cmd": str(script), "args": []})
    async with server(settings) as s:
        script.unlink()
        for room in ("/a", "/b"):  # the helper lives on: each new room tries again, and says why
            async with s.connect(room) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
                assert closed.value.rcvd.reason == f"cannot start {script}: No such file or directory"


async def test_an_environment_too_big_to_send_fails_the_room_not_the_server(
    server: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(child_settings("echo", passenv=["BIG"])) as s, s.connect("/z") as z:
        helper = parent_of(await ready_pid(z))
        monkeypatch.setenv("BIG", "x" * (spawner.MAX_MESSAGE + 1))  # read as each room starts
        async with s.connect("/a") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            assert closed.value.rcvd.reason.endswith(": Argument list too long")
        monkeypatch.delenv("BIG")
        async with s.connect("/b") as ws:
            assert parent_of(await ready_pid(ws)) == helper  # the same helper, untroubled
        await z.send("still")
        assert await recv(z) == "still"
