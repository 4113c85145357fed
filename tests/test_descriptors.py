"""SPEC §13 file descriptors, issue 10 item 7: a real server under a low RLIMIT_NOFILE refuses what it
cannot open (503 before the upgrade, 1013 after it), leaks no descriptor, and recovers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import TIMEOUT, recv
from tests.test_process import Proc, run

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
CAT = "/bin/cat"  # a child that costs almost nothing to start


def limited(nofile: int, *options: str) -> list[str]:
    """`scalesocket ... cat` with RLIMIT_NOFILE set to `nofile` (soft and hard) before it starts."""
    setlimit = (
        "import os, resource, sys; n = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
    )
    cli = [sys.executable, "-m", "cli", "--addr", "127.0.0.1:{port}", *options, CAT]
    return [sys.executable, "-c", setlimit, str(nofile), *cli]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settled_fds(pid: int) -> int:
    """The server's descriptor count once it has stopped changing (the start-up health checks'
    connections close on their own time): the same for 0.2 s."""
    with anyio.fail_after(TIMEOUT):
        count, same = open_fds(pid), 0
        while same < 10:
            await anyio.sleep(0.02)
            now = open_fds(pid)
            count, same = now, same + 1 if now == count else 0
    return count


async def fds_settle_at(proc: Proc, expected: int) -> None:
    """Wait until the server holds exactly `expected` descriptors (closes are noticed asynchronously)."""
    try:
        with anyio.fail_after(TIMEOUT):
            while open_fds(proc.process.pid) != expected:  # noqa: ASYNC110 - /proc offers no event
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"the server holds {open_fds(proc.process.pid)} descriptors, not {expected}") from None


async def echoes(ws: ClientConnection, text: str = "x") -> None:
    await ws.send(text)
    assert await recv(ws) == text


async def healthy(proc: Proc) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{proc.port}/health", timeout=TIMEOUT)
    assert response.status_code == 200


@asynccontextmanager
async def server(nofile: int, *options: str) -> AsyncIterator[Proc]:
    env = os.environ | {"SCALESOCKET_HANDSHAKE_TIMEOUT": "60"}  # idle sockets of the tests stay open
    async with run(limited(nofile, *options), env=env) as proc:
        # One room first: what the server allocates once, on first use (an epoll instance), is not
        # a leak of the rooms the test then counts.
        async with connect(f"{proc.url}/warm-up", open_timeout=TIMEOUT) as ws:
            await echoes(ws)
        yield proc


async def test_joins_past_the_descriptor_budget_get_503_and_the_server_recovers() -> None:
    async with server(128) as proc, contextlib.AsyncExitStack() as stack:
        baseline = await settled_fds(proc.process.pid)
        clients: list[ClientConnection] = []
        refusal = None
        for i in range(64):  # 128 descriptors cannot hold 64 rooms (a socket and three pipes each)
            try:
                ws = await stack.enter_async_context(connect(f"{proc.url}/room{i}", open_timeout=TIMEOUT))
            except InvalidStatus as error:
                refusal = error.response
                break
            await echoes(ws)
            clients.append(ws)
        assert refusal is not None, "128 descriptors held 64 rooms?"
        assert refusal.status_code == 503 and refusal.headers["Retry-After"].isdigit()
        assert b"file descriptors" in refusal.body
        assert len(clients) >= 10, f"only {len(clients)} rooms before the budget ran out"
        assert open_fds(proc.process.pid) < 128
        await healthy(proc)
        for ws in clients:  # everyone admitted still works
            await echoes(ws, "still")
        await stack.aclose()
        await fds_settle_at(proc, baseline)  # every socket and pipe given back
        async with connect(f"{proc.url}/again", open_timeout=TIMEOUT) as ws:
            await echoes(ws)
        await proc.wait_stderr(b"server out of file descriptors")


@pytest.mark.parametrize("spare", [0, 2, 4], ids=["no-pipe", "stdin-only", "stdin-and-stdout"])
async def test_a_room_that_cannot_get_its_pipes_closes_1013_and_leaks_none(spare: int) -> None:
    """Descriptors the budget does not know about (idle HTTP connections here) use up the reserve:
    the room's pipes cannot be made, after the upgrade; pipes already made are closed again."""
    async with server(128) as proc:
        pid = proc.process.pid
        baseline = await settled_fds(pid)
        idle: list[socket.socket] = []
        try:
            # Leave exactly `spare` descriptors once the websocket itself is accepted.
            while baseline + len(idle) < 128 - 1 - spare:
                idle.append(socket.create_connection(("127.0.0.1", proc.port)))
                await fds_settle_at(proc, baseline + len(idle))  # the server has accepted it
            async with connect(f"{proc.url}/starved", open_timeout=TIMEOUT) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013, closed.value
            assert "try again later" in closed.value.rcvd.reason
            await fds_settle_at(proc, baseline + len(idle))  # nothing leaked: no pipe, no socket
        finally:
            for sock in idle:
                sock.close()
        await fds_settle_at(proc, baseline)
        await healthy(proc)
        async with connect(f"{proc.url}/starved", open_timeout=TIMEOUT) as ws:  # recovered
            await echoes(ws)


async def test_many_joins_at_once_at_a_low_limit_are_all_answered() -> None:
    async with server(96) as proc:
        baseline = await settled_fds(proc.process.pid)
        outcomes: list[str] = []

        async def join(i: int) -> None:
            try:
                with anyio.fail_after(TIMEOUT):
                    async with connect(f"{proc.url}/crowd{i}", open_timeout=TIMEOUT) as ws:
                        try:
                            await echoes(ws)
                            outcomes.append("open")
                        except ConnectionClosed as closed:
                            outcomes.append(str(closed.rcvd.code if closed.rcvd else None))
                        if len(outcomes) == 60:
                            all_tried.set()
                        await all_tried.wait()  # hold the room until every join has had its answer
            except InvalidStatus as error:
                outcomes.append(str(error.response.status_code))
            except Exception as error:  # reported by the assertion below
                outcomes.append(repr(error))
            if len(outcomes) == 60:
                all_tried.set()

        all_tried = anyio.Event()
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(join, i)
        assert set(outcomes) <= {"open", "503", "1013"}, outcomes
        assert "open" in outcomes and "503" in outcomes, outcomes
        await healthy(proc)
        await fds_settle_at(proc, baseline)


def test_pipes_already_made_are_closed_when_a_later_one_fails() -> None:
    """app.child's pipes for a new child, at each point where the descriptors can run out."""
    script = """
import errno, os, resource
from app.child import _stdio_pipes

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

def fill():
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return held

for spare in range(7):
    held = fill()
    for fd in held[:spare]:
        os.close(fd)
    try:
        fds = _stdio_pipes(True, False)
    except OSError as error:
        assert error.errno == errno.EMFILE, error
        outcome = "EMFILE"
    else:
        outcome = "ok"
        for fd in fds:
            os.close(fd)
    free = fill()
    print(spare, outcome, len(free))
    for fd in held[spare:] + free:
        os.close(fd)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    for spare, outcome, free in lines:
        assert outcome == ("ok" if int(spare) >= 6 else "EMFILE")
        assert int(free) == int(spare), f"{spare} spare descriptors, {free} free after the pipes: a leak"
    assert len(lines) == 7


async def test_a_burst_of_handshakes_past_the_limit_is_answered_every_one() -> None:
    """300 handshakes at once at 128 descriptors: each gets 101 or 503, none is closed unanswered."""
    async with server(128) as proc:
        baseline = await settled_fds(proc.process.pid)
        request = (
            "GET /burst{} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answers: list[str] = []

        async def one(i: int) -> None:
            async with await anyio.connect_tcp("127.0.0.1", proc.port) as stream:
                data = b""
                try:
                    await stream.send(request.format(i % 100).encode())
                    while b"\r\n" not in data:
                        data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    pass
                answers.append(data.split(b"\r\n")[0].decode() or "closed without an answer")

        with anyio.fail_after(3 * TIMEOUT):
            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(one, i)
        statuses = {answer: answers.count(answer) for answer in set(answers)}
        assert set(statuses) <= {"HTTP/1.1 101 Switching Protocols", "HTTP/1.1 503 Service Unavailable"}, statuses
        await healthy(proc)
        await fds_settle_at(proc, baseline)
