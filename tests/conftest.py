"""Fixtures: a real uvicorn server on a free loopback port, real children, real websocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app import create_app
from app.server import Server, uvicorn_config
from app.settings import Settings
from cli.__main__ import main

CHILD = str(Path(__file__).parent / "children" / "child.py")
# Every timing of the suite is a multiple of this unit, so a slow machine can stretch them all at once.
UNIT = float(os.environ.get("SCALESOCKET_TEST_UNIT", "1.0"))
TIMEOUT = 10 * UNIT  # for any single wait


def child_settings(mode: str, *args: str, **overrides: Any) -> Settings:
    """Settings that wrap tests/children/child.py in MODE, with test-friendly timings."""
    values: dict[str, Any] = {
        "cmd": sys.executable,
        "args": ["-u", CHILD, mode, *args],
        "addr": "127.0.0.1:0",
        "stop_grace": 1.0 * UNIT,
        "slow_client_timeout": 1.0 * UNIT,
    }
    values.update(overrides)
    return Settings.model_validate(values)


class Running:
    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.http = f"http://127.0.0.1:{port}"

    @property
    def rooms(self) -> Any:
        return self.server.app.state.rooms

    def connect(self, path: str, **kwargs: Any) -> connect:
        kwargs.setdefault("open_timeout", TIMEOUT)
        kwargs.setdefault("max_size", None)
        return connect(self.url + path, **kwargs)


@asynccontextmanager
async def serve(settings: Settings, *, plain_asgi: bool = False) -> AsyncIterator[Running]:
    """A real server on a free port; `plain_asgi`: with uvicorn's own protocols, as `uvicorn app:asgi`."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    config = uvicorn_config(app, settings)
    if plain_asgi:
        config.http, config.ws = "httptools", "websockets-sansio"
    server = Server(config, app)
    tls = tolerating_tls_handshake_failures() if settings.tls else contextlib.nullcontext()
    with sock, tls:  # sock closed however the test ends: a failing test must not leak it into the next one's warnings
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(TIMEOUT):
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
                    await anyio.sleep(0.01)
            try:
                yield Running(server, port)
            finally:
                server.should_exit = True


@contextmanager
def tolerating_tls_handshake_failures() -> Iterator[None]:
    """Let clients fail the TLS handshake (plain HTTP to the TLS port, a browser refusing a self-signed
    certificate) without failing the test: that is the client's error, which asyncio's debug mode
    (`make test` runs with PYTHONASYNCIODEBUG=1) reports to the loop's exception handler, and anyio's
    test runner turns every such report into a failure. Any other report still reaches it."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `scalesocket ARGV` exits 2 with."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Serve = Callable[[Settings], AbstractAsyncContextManager[Running]]


@pytest.fixture
def server() -> Serve:
    return serve


async def recv(ws: ClientConnection, within: float = TIMEOUT) -> str | bytes:
    with anyio.fail_after(within):
        return await ws.recv()


async def recv_text(ws: ClientConnection, within: float = TIMEOUT) -> str:
    message = await recv(ws, within)
    assert isinstance(message, str), message
    return message


async def wait_gone(pid: int, within: float = TIMEOUT) -> None:
    """Wait until process `pid` has exited (and, for our own children, been reaped)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(fd, ready.set)
        try:
            with anyio.fail_after(within):
                await ready.wait()
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):  # reaped between the two looks
        return False


def own_descendants() -> dict[str, str]:
    """Live processes descended from this test process: its children (the spawner helper of an
    in-process server, real servers) and theirs (rooms' children, reaped by the helper)."""
    parents: dict[str, tuple[str, str]] = {}  # pid -> (parent pid, "pid name state")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(") ", 1)[1].split()  # fields: state, ppid, ...
            parents[entry.name] = (fields[1], f"{entry.name} {stat.split(' (', 1)[1].split(')')[0]} {fields[0]}")
    ours = {str(os.getpid())}
    found: dict[str, str] = {}  # pid -> "pid name state"
    grew = True
    while grew:  # a process's parent may come later in /proc's order: repeat until nothing joins
        grew = False
        for pid, (ppid, label) in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                found[pid] = label
                grew = True
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Every test leaves no process behind, however deep: none alive, none a zombie (SPEC §3)."""
    before = set(own_descendants())
    yield
    deadline = time.monotonic() + TIMEOUT
    while (left := own_descendants()).keys() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left.keys() - before, f"processes left behind: {[left[pid] for pid in left.keys() - before]}"
