"""SPEC §14 for websocketd users: `/` as a room of its own, websocketd's spellings, keepalive flags."""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from app.server import uvicorn_config
from app.settings import Settings
from cli.__main__ import to_settings
from tests.conftest import TIMEOUT, UNIT, Serve, alive, child_settings, error_of, recv, recv_text, wait_gone
from tests.test_browser import CHROMIUM, chromium
from tests.test_process import run, scalesocket

pytestmark = pytest.mark.anyio


# --- `/`: a room of its own per connection ----------------------------------------------------


async def test_slash_gives_each_connection_a_child_of_its_own(server: Serve) -> None:
    async with server(child_settings("echo", stats=True)) as s, s.connect("/") as a, s.connect("/") as b:
        pid_a, pid_b = [int((await recv_text(ws)).split()[1]) for ws in (a, b)]
        assert pid_a != pid_b
        assert len(s.rooms.running) == 2 and s.rooms.live == {}  # never joinable, never listed
        await a.send("only a")
        assert await recv(a) == "only a"
        await b.send("only b")
        assert await recv(b) == "only b"  # a's line never reached b: separate children
        async with httpx.AsyncClient(base_url=s.http) as http:
            assert (await http.get("/stats")).status_code == 404  # `/` has no stats of its own
        await a.close()
        await wait_gone(pid_a)  # a's child stops with a; b's goes on
        assert alive(pid_b)
        await b.send("still here")
        assert await recv(b) == "still here"


async def test_slash_room_is_empty_in_the_environment(server: Serve) -> None:
    async with server(child_settings("env", joinmsg="#ROOM|#ID")) as s, s.connect("/?x=1") as ws:
        env = json.loads(await recv_text(ws))
        assert (env["ROOM"], env["QUERY_STRING"]) == ("", "x=1")
        assert await recv_text(ws) == "|1"


async def test_slash_and_a_named_room_are_apart(server: Serve) -> None:
    async with server(child_settings("pid")) as s, s.connect("/") as own, s.connect("/lobby") as lobby:
        await own.send("x")
        await lobby.send("y")
        own_pid, lobby_pid = [(await recv_text(ws)).split()[0] for ws in (own, lobby)]
        assert own_pid != lobby_pid
        async with s.connect("/lobby") as again:
            await again.send("z")
            assert (await recv_text(again)).split()[0] == lobby_pid


# --- keepalive --------------------------------------------------------------------------------


async def raw_client(port: int, path: str) -> anyio.abc.SocketStream:
    """A websocket client that never answers pings: the handshake by hand, then whatever we send."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += await stream.receive()
    assert response.startswith(b"HTTP/1.1 101"), response
    head, rest = response.split(b"\r\n\r\n", 1)
    assert not rest  # nothing before our first message: the child's output comes later
    return stream


async def frames(stream: anyio.abc.SocketStream) -> list[tuple[int, bytes]]:
    """Read until at least one whole frame has arrived; (opcode, payload) of each whole frame."""
    data = b""
    while True:
        data += await stream.receive()
        out, pos = [], 0
        while len(data) - pos >= 2:
            length = data[pos + 1] & 0x7F
            start = pos + 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(data[pos + 2 : start])
            if len(data) < start + length:
                break
            out.append((data[pos] & 0x0F, data[start : start + length]))
            pos = start + length
        if out and pos == len(data):
            return out


async def test_unanswered_pings_close_the_client_and_it_leaves(server: Serve) -> None:
    settings = child_settings("echo", ping_interval=0.2 * UNIT, ping_timeout=0.2 * UNIT, leavemsg="left #ID")
    async with server(settings) as s, s.connect("/r") as answering:
        await recv(answering)  # ready
        silent = await raw_client(s.port, "/r")
        async with silent:
            seen: list[tuple[int, bytes]] = []
            with anyio.fail_after(TIMEOUT):
                while not any(op == 0x8 for op, _ in seen):
                    seen += await frames(silent)
            opcodes = [op for op, _ in seen]
            assert 0x9 in opcodes  # pinged first
            close = next(payload for op, payload in seen if op == 0x8)
            assert struct.unpack("!H", close[:2])[0] == 1011
        # The silent client counts as gone: the child hears it leave. The other one, which answers
        # every ping (websockets does), stays; and no ping or pong ever reached the child.
        assert await recv_text(answering) == "left 2"
        await answering.send("hi")
        assert await recv_text(answering) == "hi"


async def test_ping_interval_0_sends_no_pings(server: Serve) -> None:
    async with server(child_settings("echo", ping_interval=0, ping_timeout=0.1 * UNIT)) as s:
        silent = await raw_client(s.port, "/r")
        async with silent:
            seen = await frames(silent)
            assert [op for op, _ in seen] == [0x1]  # "ready": text, no ping
            # Far longer than a ping timeout: still open, nothing else arrived.
            with anyio.move_on_after(1.0 * UNIT) as waited:
                seen = await frames(silent)
            assert waited.cancelled_caught, seen
        assert len(s.rooms.running) <= 1


def test_ping_flags_and_zero() -> None:
    s = to_settings(["--ping-interval", "0", "--ping-timeout=2.5", "cat"])
    assert (s.ping_interval, s.ping_timeout) == (0, 2.5)
    config = uvicorn_config(None, s)  # type: ignore[arg-type]
    assert (config.ws_ping_interval, config.ws_ping_timeout) == (None, 2.5)
    config = uvicorn_config(None, to_settings(["--ping-timeout=0", "cat"]))  # type: ignore[arg-type]
    assert (config.ws_ping_interval, config.ws_ping_timeout) == (20, None)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--ping-interval", "-1", "cat"], "--ping-interval"),
        (["--ping-timeout", "soon", "cat"], "--ping-timeout"),
        (["--port", "70000", "cat"], "--port"),
        (["--port", "x", "cat"], "--port"),
        (["--address", "nowhere", "cat"], "--address"),
        (["--addr", "127.0.0.1:1", "--port", "2", "cat"], "--port"),
        (["--loglevel", "loud", "cat"], "--loglevel"),
        (["--loglevel", "debug", "-v", "cat"], "--loglevel"),
        (["--closems", "-5", "cat"], "--closems"),
        (["--closems", "1.5", "cat"], "--closems"),
    ],
)
def test_bad_values_exit_2_naming_the_option(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(argv, capsys)
    assert needle in err, err


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_PING_INTERVAL", "0")
    monkeypatch.setenv("SCALESOCKET_PING_TIMEOUT", "3")
    monkeypatch.setenv("SCALESOCKET_LOGLEVEL", "error")
    s = Settings(cmd="cat")
    assert (s.ping_interval, s.ping_timeout, s.verbosity, s.quiet_below) == (0, 3, 0, logging.ERROR)


# --- websocketd's spellings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "addr"),
    [
        (["--port", "8080"], "0.0.0.0:8080"),
        (["--address", "127.0.0.1"], "127.0.0.1:9000"),
        (["--address", "127.0.0.1", "--port", "8080"], "127.0.0.1:8080"),
        (["--address", "::1", "--port", "8080"], "[::1]:8080"),
    ],
)
def test_port_and_address_set_addr(argv: list[str], addr: str) -> None:
    assert to_settings([*argv, "cat"]).addr == addr


@pytest.mark.parametrize(
    ("level", "verbosity", "quiet"),
    [
        ("debug", 1, None),
        ("trace", 2, None),
        ("access", 0, None),
        ("info", 0, None),
        ("error", 0, logging.ERROR),
        ("fatal", 0, logging.CRITICAL),
    ],
)
def test_loglevel_maps_to_verbosity(level: str, verbosity: int, quiet: int | None) -> None:
    s = to_settings(["--loglevel", level, "cat"])
    assert (s.verbosity, s.quiet_below) == (verbosity, quiet)


def test_closems_sets_the_stop_grace() -> None:
    assert to_settings(["--closems", "250", "cat"]).stop_grace == 0.25


async def test_websocketd_command_line_runs() -> None:
    argv = [sys.executable, "-m", "cli", "--port", "{port}", "--address", "127.0.0.1", "--loglevel", "debug"]
    argv += ["--frame=json", sys.executable, "--", "-u", scalesocket()[-2], "echo"]
    async with run(argv) as proc:
        async with connect(proc.url + "/") as ws:
            assert (await recv_text(ws)).startswith("ready ")
            await ws.send("not json")
            await proc.wait_stderr(b"not a JSON object")  # logged at debug: --loglevel debug is -v


async def test_loglevel_error_logs_no_info() -> None:
    async with run(scalesocket("--loglevel", "error", mode="stderr", args=("oops",))) as proc:
        async with connect(proc.url + "/r") as ws:
            assert await recv_text(ws) == "ready"  # after it wrote "oops" to stderr, logged at info
            await ws.send("x")
            assert await recv_text(ws) == "x"
        proc.process.terminate()
        await proc.wait_exit()
        await proc.stderr_closed.wait()
        assert b"INFO" not in proc.stderr and b"listening" not in proc.stderr, proc.stderr


async def test_loglevel_error_under_uvicorn_app_asgi() -> None:
    env = dict(os.environ, SCALESOCKET_CMD="cat", SCALESOCKET_LOGLEVEL="error")
    argv = [sys.executable, "-m", "uvicorn", "app:asgi", "--host", "127.0.0.1", "--port", "{port}"]
    async with run(argv, env=env) as proc:
        async with connect(proc.url + "/r") as ws:
            await ws.send("x")
            assert await recv_text(ws) == "x"
        proc.process.terminate()
        await proc.wait_exit()
        await proc.stderr_closed.wait()
    assert b"child started" not in proc.stderr, proc.stderr  # scalesocket's info lines are off
    assert b"Uvicorn running" in proc.stderr  # uvicorn's own lines follow its own --log-level


async def test_closems_bounds_the_stop_of_a_child_ignoring_sigterm() -> None:
    async with run(scalesocket("--closems", "200", mode="ignore-term")) as proc:
        async with connect(proc.url + "/r") as ws:
            pid = int((await recv_text(ws)).split()[1])
        started = anyio.current_time()
        await wait_gone(pid, within=2.0 * UNIT)  # the default grace (5 s) would fail this
        assert anyio.current_time() - started < 2.0 * UNIT


async def test_ping_over_slash_never_reaches_the_child(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/") as ws:
        await recv(ws)
        pong = await ws.ping(b"are you there")
        with anyio.fail_after(TIMEOUT):
            await pong
        await ws.send("after")
        assert await recv_text(ws) == "after"  # the echo's first line since "ready": the ping was not a line


# --- a page written for websocketd, in a real browser -------------------------------------------

WEBSOCKETD_PAGE = """<!doctype html>
<pre id="log"></pre>
<script>
  // websocketd's count example, unchanged: it connects to / on the page's own host.
  var ws = new WebSocket('ws://' + location.host + '/');
  ws.onmessage = function (event) { document.getElementById('log').textContent += event.data + '\\n'; };
  ws.onclose = function (event) { document.getElementById('log').textContent += 'DISCONNECT ' + event.code; };
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_a_page_written_for_websocketd_counts(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(WEBSOCKETD_PAGE)
    argv = scalesocket("--staticdir", str(site), mode="exit", args=("0", "1", "2", "3\n"))
    async with run(argv) as proc, chromium(tmp_path) as browser:
        page = await browser.open(f"http://127.0.0.1:{proc.port}/")
        await page.wait_for("document.getElementById('log').textContent.includes('DISCONNECT')")
        assert await page.evaluate("document.getElementById('log').textContent") == "1\n2\n3\nDISCONNECT 1000"
