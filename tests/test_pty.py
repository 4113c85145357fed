"""SPEC §14 `--pty`: the child's stdout is a raw pseudo-terminal, so unflushed output arrives line by line."""

from __future__ import annotations

import sys

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import CHILD, UNIT, Serve, child_settings, error_of, recv, recv_text
from tests.test_process import run

pytestmark = pytest.mark.anyio


def unflushed(**overrides: object) -> dict[str, object]:
    # No -u: the child's print() buffers as Python does by default.
    return {"args": [CHILD, "unflushed"], **overrides}


async def test_without_pty_unflushed_output_waits(server: Serve) -> None:
    """The problem --pty solves: a piped Python child's print() sits in its buffer."""
    async with server(child_settings("unflushed", **unflushed())) as s, s.connect("/r") as ws:
        with anyio.move_on_after(0.5 * UNIT) as waited:
            await ws.recv()
        assert waited.cancelled_caught  # nothing, though the child printed two lines long ago


async def test_pty_unflushed_output_arrives_line_by_line(server: Serve) -> None:
    async with server(child_settings("unflushed", **unflushed(pty=True))) as s, s.connect("/r") as ws:
        assert await recv(ws) == "hello"  # no "\r": raw mode
        assert await recv(ws) == "tty 010"  # only stdout is the terminal
        await ws.send("one")
        assert await recv(ws) == "got one"  # nothing echoed before it
        await ws.send("two")
        assert await recv(ws) == "got two"


async def test_pty_binary_mode_passes_bytes_untranslated(server: Serve) -> None:
    raw = bytes([0x0A, 0x0D, 0x00, 0xFF, 0x03, 0x04, 0x1A, 0x0A])  # \n \r NUL, ^C ^D ^Z: none is special
    settings = child_settings("bytes", raw.hex(), binary=True, pty=True)
    async with server(settings) as s, s.connect("/r") as ws:
        got = b""
        while len(got) < len(raw):
            message = await recv(ws)
            assert isinstance(message, bytes)
            got += message
        assert got == raw


async def test_pty_json_framing_routes_as_with_a_pipe(server: Serve) -> None:
    async with server(child_settings("json-say", frame="json", pty=True)) as s:
        async with s.connect("/r") as a, s.connect("/r") as b:
            await a.send('{"say": "{\\"id\\": 2, \\"m\\": \\"to b\\"}"}')
            assert await recv(b) == '{"id": 2, "m": "to b"}'
            await b.send('{"x": 1}')
            assert await recv(b) == '{"x":1,"id":2}'  # stamped with b's id, so routed back to b


async def test_pty_child_exit_delivers_everything_then_closes(server: Serve) -> None:
    settings = child_settings("exit", "3", "a", "b", "c", pty=True)
    async with server(settings) as s, s.connect("/r") as ws:
        assert [await recv_text(ws) for _ in range(3)] == ["a", "b", "c"]
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "process exited with code 3")


async def test_pty_under_the_cli_server() -> None:
    """The real process, under uvloop: reads the master, and notices the end of the child."""
    argv = [sys.executable, "-m", "cli", "--addr", "127.0.0.1:{port}", "--pty", sys.executable, "--", CHILD]
    async with run([*argv, "unflushed"]) as proc, connect(proc.url + "/r") as ws:
        assert await recv(ws) == "hello"
        assert await recv(ws) == "tty 010"
        await ws.send("x")
        assert await recv(ws) == "got x"
    async with run([*argv, "exit", "0", "last"]) as proc, connect(proc.url + "/r") as ws:
        assert await recv(ws) == "last"
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_pty_with_tcp_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(["--pty", "--tcp", "cat"], capsys)
    assert "--pty" in err and "--tcp" in err, err
