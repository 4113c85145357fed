"""SPEC §7 `--tcp` through a real server: the port pool, connecting, message paths over TCP, faults."""

from __future__ import annotations

import json
import logging
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app import logs
from app.settings import Settings
from app.tcp import PortPool, PortsExhausted, port_is_free
from tests.conftest import TIMEOUT, UNIT, Serve, child_settings, recv, recv_text, wait_gone

pytestmark = pytest.mark.anyio

TCP_CHILD = str(Path(__file__).parent / "children" / "tcp_child.py")


def free_ports(count: int) -> tuple[int, int]:
    """START:END of `count` free ports, below the kernel's ephemeral range (whose ports come and go)."""
    for _ in range(100):
        start = random.randrange(20000, 32000 - count)
        if all(port_is_free(port) for port in range(start, start + count)):
            return start, start + count
    raise RuntimeError("no free port range")


def tcp_settings(mode: str, *args: str, ports: tuple[int, int], **overrides: Any) -> Settings:
    """tests/children/tcp_child.py in MODE under --tcp; no attach delay unless asked (the child is fast)."""
    values: dict[str, Any] = {"args": ["-u", TCP_CHILD, mode, *args], "cmd_attach_delay": 0.0}
    values.update(overrides)
    return child_settings(mode, tcp=True, tcpports=ports, **values)


async def ready(ws: ClientConnection) -> tuple[int, int]:
    """The child's greeting: (pid, port)."""
    line = await recv_text(ws)
    word, pid, port = line.split()
    assert word == "ready", line
    return int(pid), int(port)


async def closed_with(ws: ClientConnection, within: float = TIMEOUT) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws, within)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def until(condition: Callable[[], object], within: float = TIMEOUT) -> None:
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - server internals (a room's end) have no event to await
            await anyio.sleep(0.01)


# --- the pool on its own ----------------------------------------------------------------------------


def test_pool_lends_fresh_ports_first_then_the_longest_returned() -> None:
    pool = PortPool(10, 13, is_free=lambda port: True)
    assert [pool.allocate() for _ in range(3)] == [10, 11, 12]
    with pytest.raises(PortsExhausted):
        pool.allocate()
    pool.release(11)
    pool.release(10)
    assert [pool.allocate(), pool.allocate()] == [11, 10]
    assert pool.lent == {10, 11, 12}


def test_pool_passes_over_ports_other_programs_hold() -> None:
    busy = {11}
    pool = PortPool(10, 13, is_free=lambda port: port not in busy)
    assert [pool.allocate(), pool.allocate()] == [10, 12]
    with pytest.raises(PortsExhausted):
        pool.allocate()
    busy.clear()
    assert pool.allocate() == 11


def test_pool_refuses_to_take_back_a_port_it_did_not_lend() -> None:
    pool = PortPool(10, 11, is_free=lambda port: True)
    with pytest.raises(ValueError):
        pool.release(10)
    pool.release(pool.allocate())
    with pytest.raises(ValueError):
        pool.release(10)


def test_port_held_by_a_listener_is_not_free() -> None:
    start, _ = free_ports(1)
    with socket.create_server(("127.0.0.1", start)):
        assert not port_is_free(start)
    assert port_is_free(start)


# --- through a server -------------------------------------------------------------------------------


async def test_child_gets_port_and_exactly_its_environment(server: Serve) -> None:
    ports = free_ports(3)
    async with server(tcp_settings("env", ports=ports, passenv=[])) as s, s.connect("/envroom?x=1") as ws:
        env = json.loads(await recv_text(ws))
    env.pop("LC_CTYPE", None)  # python itself may add it when started without a locale
    assert env.keys() == {"QUERY_STRING", "REMOTE_ADDR", "ROOM", "PORT", "INSTANCE"}  # INSTANCE: SPEC §16
    assert (env["QUERY_STRING"], env["ROOM"]) == ("x=1", "envroom")
    assert int(env["PORT"]) in range(*ports)


async def test_echo_lines_over_tcp(server: Serve) -> None:
    async with server(tcp_settings("echo", ports=free_ports(2))) as s, s.connect("/r") as ws:
        await ready(ws)
        await ws.send("hello")
        assert await recv(ws) == "hello"
        await ws.send("two\nlines")
        assert [await recv(ws), await recv(ws)] == ["two", "lines"]


async def test_binary_mode_over_tcp(server: Serve) -> None:
    async with server(tcp_settings("echo", ports=free_ports(2), binary=True)) as s, s.connect("/r") as ws:
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = await recv(ws)
            assert isinstance(chunk, bytes)
            greeting += chunk
        assert greeting.startswith(b"ready ")
        payload = b"\x00raw\n\xff"
        await ws.send(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = await recv(ws)
            assert isinstance(chunk, bytes)
            echoed += chunk
        assert echoed == payload  # written raw, no newline added


async def test_gwsocket_frames_split_across_tcp_segments(server: Serve) -> None:
    settings = tcp_settings("split-frames", ports=free_ports(2), frame="binary")
    async with server(settings) as s, s.connect("/r") as ws:
        assert await recv(ws) == "hello everyone"
        assert await recv(ws) == bytes(range(10))
        await ws.send("hi")  # framed with our id; the child echoes the frame, so it is routed back to us
        await ws.send(b"\x01\x02")
        assert [await recv(ws), await recv(ws)] == ["hi", b"\x01\x02"]


async def test_json_routing_over_tcp(server: Serve) -> None:
    settings = tcp_settings("echo", ports=free_ports(2), frame="json")
    async with server(settings) as s, s.connect("/r") as a:
        await ready(a)  # not JSON: to the whole room (a alone, so far)
        b = await s.connect("/r")
        await b.send('{"to":"b"}')
        assert json.loads(await recv_text(b)) == {"to": "b", "id": 2}  # only the sender gets its echo
        await a.send('{"to":"a"}')
        assert json.loads(await recv_text(a)) == {"to": "a", "id": 1}
        await b.close()


async def test_two_rooms_never_share_a_port(server: Serve) -> None:
    ports = free_ports(2)
    async with server(tcp_settings("echo", ports=ports)) as s, s.connect("/a") as a, s.connect("/b") as b:
        (_, port_a), (_, port_b) = await ready(a), await ready(b)
        assert {port_a, port_b} == set(range(*ports))
        assert s.rooms.ports.lent == {port_a, port_b}


async def test_port_is_reused_after_release(server: Serve) -> None:
    ports = free_ports(1)
    async with server(tcp_settings("echo", ports=ports)) as s:
        async with s.connect("/a") as ws:
            pid_a, port_a = await ready(ws)
        await until(lambda: not s.rooms.running)  # child reaped, port back in the pool
        assert not s.rooms.ports.lent
        async with s.connect("/b") as ws:
            pid_b, port_b = await ready(ws)
        assert port_a == port_b == ports[0]
        assert pid_a != pid_b


async def test_exhausted_pool_refuses_new_room_with_1013(server: Serve, caplog: pytest.LogCaptureFixture) -> None:
    async with server(tcp_settings("echo", ports=free_ports(1))) as s:
        async with s.connect("/a") as a:
            await ready(a)
            async with s.connect("/b") as b:
                code, reason = await closed_with(b)
            assert code == 1013 and "try again later" in reason
            assert any(r.levelno == logging.ERROR and "no free port" in r.getMessage() for r in caplog.records)
            await a.send("still here")
            assert await recv(a) == "still here"  # the existing room carries on
        await until(lambda: not s.rooms.running)
        async with s.connect("/b") as b:  # the refused room name was not kept: a later client gets a child
            await ready(b)


async def test_child_that_never_listens_closes_1011_and_releases_port(
    server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    timeout = 0.5 * UNIT
    async with server(tcp_settings("never", ports=free_ports(1), tcp_connect_timeout=timeout)) as s:
        async with s.connect("/r") as ws:
            started = anyio.current_time()
            code, reason = await closed_with(ws)
            assert anyio.current_time() - started >= timeout * 0.9
        assert code == 1011 and "did not accept a connection" in reason
        assert any(r.levelno == logging.ERROR and "did not accept" in r.getMessage() for r in caplog.records)
        await until(lambda: not s.rooms.running)
        assert not s.rooms.ports.lent


async def test_child_exiting_before_it_listens_ends_the_room_at_once(server: Serve) -> None:
    async with server(tcp_settings("exit-early", "5", ports=free_ports(1), tcp_connect_timeout=TIMEOUT)) as s:
        async with s.connect("/r") as ws:
            code, reason = await closed_with(ws, within=TIMEOUT / 2)  # long before the connect timeout
        assert (code, reason) == (1011, "process exited with code 5")
        await until(lambda: not s.rooms.running)
        assert not s.rooms.ports.lent


async def test_leaving_while_connecting_stops_the_child(server: Serve) -> None:
    async with server(tcp_settings("never", ports=free_ports(1), tcp_connect_timeout=TIMEOUT)) as s:
        async with s.connect("/r"):
            room = s.rooms.live["r"]
            await until(lambda: room.child is not None)
            pid = room.child.pid
        await wait_gone(pid, within=TIMEOUT / 2)  # no waiting out the connect timeout
        await until(lambda: not s.rooms.running)


async def test_late_binder_gets_messages_sent_meanwhile_in_order(server: Serve) -> None:
    async with server(tcp_settings("late", str(0.5 * UNIT), ports=free_ports(1))) as s, s.connect("/r") as ws:
        for i in range(50):
            await ws.send(f"m{i}")
        await ready(ws)
        assert [await recv(ws) for _ in range(50)] == [f"m{i}" for i in range(50)]


async def test_default_attach_delay_still_queues_messages(server: Serve) -> None:
    settings = tcp_settings("echo", ports=free_ports(1), cmd_attach_delay=None)  # 1 s with --tcp
    assert settings.attach_delay == 1.0
    async with server(settings) as s, s.connect("/r") as ws:
        await ws.send("early")
        await ready(ws)
        assert await recv(ws) == "early"


async def test_child_closing_its_socket_then_exiting(server: Serve) -> None:
    async with server(tcp_settings("hang-up", "0", ports=free_ports(1))) as s, s.connect("/r") as ws:
        await ready(ws)
        assert await recv(ws) == "bye"  # everything sent before the close is delivered
        assert await closed_with(ws) == (1000, "process exited with code 0")


async def test_child_closing_its_socket_but_staying_is_stopped(server: Serve) -> None:
    async with server(tcp_settings("hang-up", "linger", ports=free_ports(1))) as s:
        async with s.connect("/r") as ws:
            pid, _ = await ready(ws)
            assert await recv(ws) == "bye"
            assert await closed_with(ws) == (1011, "process killed by signal SIGTERM")
        await wait_gone(pid)
        await until(lambda: not s.rooms.running)
        assert not s.rooms.ports.lent


async def test_child_exiting_while_connected_closes_with_its_code(server: Serve) -> None:
    async with server(tcp_settings("echo", ports=free_ports(1))) as s, s.connect("/r") as ws:
        await ready(ws)
        await ws.send("before")
        assert await recv(ws) == "before"
        await ws.send("exit 3")
        assert await closed_with(ws) == (1011, "process exited with code 3")
        await until(lambda: not s.rooms.running)
        assert not s.rooms.ports.lent


async def test_leave_message_reaches_child_then_it_sees_eof(server: Serve, tmp_path: Path) -> None:
    record = tmp_path / "record"
    settings = tcp_settings("record", str(record), ports=free_ports(1), leavemsg="leave #ID")
    async with server(settings) as s:
        async with s.connect("/r") as ws:
            pid, _ = await ready(ws)
            await ws.send("hi")
            assert await recv(ws) == "hi"
        await wait_gone(pid)
    # Stopping half-closes the socket: the child read the leave message, then EOF, and exited by itself.
    assert record.read_text() == "hi\nleave 1\neof\n"


async def test_full_outbox_pauses_the_socket_and_loses_nothing(server: Serve) -> None:
    count = 20_000  # 20 MB: far more than the outbox and the sockets' buffers hold
    settings = tcp_settings("count", str(count), ports=free_ports(1), outbox_bytes=64 * 1024)
    async with server(settings) as s:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that stops reading stalls soon
        sock.connect(("127.0.0.1", s.port))
        async with s.connect("/r", sock=sock, max_queue=1) as ws:
            await ready(ws)
            room = s.rooms.live["r"]
            await until(lambda: room._paused)  # the room stopped reading the child's socket
            for i in range(1, count + 1):  # then everything, in order
                assert await recv(ws) == f"{i:01000d}"
            await ws.send("still echoing")
            assert await recv(ws) == "still echoing"


async def test_stdout_flood_goes_to_the_log_and_never_blocks_the_child(
    server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scalesocket.child")
    dropped_before = logs.stderr_dropped()[0]
    flood = 512 * 1024  # 8 pipe buffers of stdout and of stderr, written before the child listens
    lines = flood // 100
    async with server(tcp_settings("flood", str(flood), ports=free_ports(1))) as s, s.connect("/r") as ws:
        await ready(ws)
        await ws.send("after the flood")
        assert await recv(ws) == "after the flood"

        def logged(stream: str) -> int:
            prefix = f"child {stream}: zzz"
            return sum(1 for r in caplog.records if r.getMessage().startswith(prefix))

        # Both streams are logged up to their rate limit; every other line is counted as dropped.
        await until(
            lambda: logged("stdout") + logged("stderr") + logs.stderr_dropped()[0] - dropped_before >= 2 * lines
        )
        assert logged("stdout") >= 1 and logged("stderr") >= 1
