"""The real `scalesocket` process and `uvicorn app:asgi`: shutdown, oneshot, logging, stderr (SPEC §1, §3, §9, §10)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import CHILD, TIMEOUT, alive, recv, recv_text, wait_gone

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    def __init__(self, process: anyio.abc.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.stderr = b""
        self.stderr_closed = anyio.Event()
        self._grew = anyio.Event()

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk
            self._grew.set()
            self._grew = anyio.Event()
        self.stderr_closed.set()
        self._grew.set()

    async def wait_stderr(self, needle: bytes) -> None:
        with anyio.fail_after(TIMEOUT):
            while needle not in self.stderr and not self.stderr_closed.is_set():
                await self._grew.wait()
        assert needle in self.stderr, self.stderr.decode()

    async def wait_exit(self, within: float = TIMEOUT) -> int:
        with anyio.fail_after(within):
            return await self.process.wait()


@asynccontextmanager
async def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> AsyncIterator[Proc]:
    """Start a server process and wait until /health answers; kill it at the end whatever happened."""
    port = free_port()
    argv = [arg.replace("{port}", str(port)) for arg in argv]
    process = await anyio.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
    )
    proc = Proc(process, port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(proc.read_stderr)
        try:
            with anyio.fail_after(TIMEOUT):
                async with httpx.AsyncClient() as http:
                    while True:
                        try:
                            if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        if process.returncode is not None:
                            raise AssertionError(f"server exited: {proc.stderr.decode()}")
                        await anyio.sleep(0.05)
            yield proc
        except BaseException:
            sys.stderr.write(f"--- server stderr ---\n{proc.stderr.decode(errors='replace')[-4000:]}\n")
            raise
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.move_on_after(TIMEOUT):
                await process.wait()
            tg.cancel_scope.cancel()
    with anyio.CancelScope(shield=True):
        await process.aclose()  # its stderr pipe too, not left to the garbage collector


def scalesocket(*options: str, mode: str = "echo", args: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli",
        "--addr",
        "127.0.0.1:{port}",
        *options,
        sys.executable,
        "--",
        "-u",
        CHILD,
        mode,
        *args,
    ]


async def test_sigterm_closes_clients_1001_stops_children_exits_0() -> None:
    async with run(scalesocket("--passenv=PATH")) as proc:
        async with connect(proc.url + "/a") as a, connect(proc.url + "/b") as b:
            pids = [int((await recv_text(ws)).split()[1]) for ws in (a, b)]
            started = anyio.current_time()
            proc.process.send_signal(signal.SIGTERM)
            for ws in (a, b):
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert await proc.wait_exit() == 0
            assert anyio.current_time() - started < 5 + 1  # the grace period plus one second
        for pid in pids:
            await wait_gone(pid)
            assert not alive(pid)


async def test_sigint_shuts_down_too() -> None:
    async with run(scalesocket()) as proc, connect(proc.url + "/a") as ws:
        pid = int((await recv_text(ws)).split()[1])
        proc.process.send_signal(signal.SIGINT)
        assert await proc.wait_exit() == 0
        await wait_gone(pid)


async def test_oneshot_serves_one_client_and_exits_with_child_status() -> None:
    async with run(scalesocket("--oneshot", mode="wait-exit")) as proc:
        async with connect(proc.url + "/game") as ws:
            assert await recv(ws) == "ready"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(proc.url + "/other"):
                    pass
            assert refused.value.response.status_code == 503
            with pytest.raises(InvalidStatus):
                async with connect(proc.url + "/game"):
                    pass
            async with httpx.AsyncClient() as http:  # plain HTTP keeps answering
                assert (await http.get(f"http://127.0.0.1:{proc.port}/health")).status_code == 200
            await ws.send("exit 5")
            with pytest.raises(ConnectionClosed):
                await recv(ws)
        assert await proc.wait_exit() == 5


async def test_oneshot_exits_0_when_the_client_leaves() -> None:
    async with run(scalesocket("--oneshot")) as proc:
        async with connect(proc.url + "/game") as ws:
            pid = int((await recv_text(ws)).split()[1])
        assert await proc.wait_exit() == 0
        await wait_gone(pid)


async def test_json_logs_carry_the_events() -> None:
    async with run(scalesocket("--json")) as proc:
        async with connect(proc.url + "/logged") as ws:
            pid = int((await recv_text(ws)).split()[1])
        await wait_gone(pid)
        proc.process.send_signal(signal.SIGTERM)
        await proc.wait_exit()
        with anyio.fail_after(TIMEOUT):
            await proc.stderr_closed.wait()
    entries = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    assert all({"level", "message"} <= entry.keys() for entry in entries)
    by_message = {entry["message"]: entry for entry in entries}
    assert by_message["listening"]["addr"] == f"127.0.0.1:{proc.port}"
    assert by_message["client connected"]["room"] == "logged" and by_message["client connected"]["id"] == 1
    assert by_message["child started"]["pid"] == pid
    assert by_message["child exited"]["pid"] == pid and "code" in by_message["child exited"]
    assert by_message["client disconnected"]["room"] == "logged"


async def test_child_stderr_reaches_server_stderr() -> None:
    async with run(scalesocket(mode="stderr", args=("oops from the child",))) as proc:
        async with connect(proc.url + "/r") as ws:
            assert await recv(ws) == "ready"
            await proc.wait_stderr(b"oops from the child")


async def test_verbose_logs_debug() -> None:
    async with run(scalesocket("-v", "--frame=json")) as proc, connect(proc.url + "/r") as ws:
        await recv(ws)
        await ws.send("not json")
        await proc.wait_stderr(b"not a JSON object")


async def test_uvicorn_app_asgi_reads_environment() -> None:
    env = dict(os.environ, SCALESOCKET_CMD="cat", SCALESOCKET_JOINMSG="hi #ID")
    argv = [sys.executable, "-m", "uvicorn", "app:asgi", "--host", "127.0.0.1", "--port", "{port}"]
    async with run(argv, env=env) as proc, connect(proc.url + "/r") as ws:
        assert await recv(ws) == "hi 1"
        await ws.send("echo")
        assert await recv(ws) == "echo"


def test_asgi_without_cmd_fails_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALESOCKET_")}
    result = subprocess.run(
        [sys.executable, "-c", "import app; app.asgi"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["scalesocket: SCALESOCKET_CMD is not set (the command to wrap)"]
    plain = subprocess.run([sys.executable, "-c", "import app"], env=env, cwd=ROOT, timeout=30)
    assert plain.returncode == 0  # importing needs no variable


def test_bad_cli_value_exits_2_before_binding() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "cli", "--addr", f"127.0.0.1:{port}", "--tcpports", "5", "cat"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--tcpports" in result.stderr


async def test_shutdown_kills_a_child_that_ignores_sigterm_within_grace_plus_one() -> None:
    env = dict(os.environ, SCALESOCKET_STOP_GRACE="1")
    async with run(scalesocket(mode="ignore-term"), env=env) as proc, connect(proc.url + "/r") as ws:
        pid = int((await recv_text(ws)).split()[1])
        started = anyio.current_time()
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.wait_exit() == 0
        assert anyio.current_time() - started < 1 + 1
        await wait_gone(pid)
