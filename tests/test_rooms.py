"""SPEC §3-§4, §6-§7 through a real server: rooms, the child's life, message paths, templates, environment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Serve, alive, child_settings, recv, recv_text, wait_gone

pytestmark = pytest.mark.anyio


async def ready_pid(ws: object) -> int:
    line = await recv_text(ws)  # type: ignore[arg-type]
    assert line.startswith("ready "), line
    return int(line.split()[1])


async def test_echo_round_trip(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/lobby") as ws:
        await ready_pid(ws)
        await ws.send("hello")
        assert await recv(ws) == "hello"


async def test_clients_of_a_room_share_one_child(server: Serve) -> None:
    async with server(child_settings("pid")) as s, s.connect("/shared") as a, s.connect("/shared") as b:
        await a.send("from-a")
        pid_a, text = (await recv_text(a)).split()
        assert text == "from-a"
        pid_b, text = (await recv_text(b)).split()
        assert (pid_b, text) == (pid_a, "from-a")  # b got the broadcast of a's message, from the same child


async def test_rooms_have_separate_children(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/one") as a, s.connect("/two") as b:
        assert await ready_pid(a) != await ready_pid(b)


async def test_racing_clients_never_start_two_children(server: Serve, tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with server(child_settings("record", str(record))) as s:
        async with anyio.create_task_group() as tg:
            clients = []

            async def join() -> None:
                ws = await s.connect("/race").__aenter__()
                clients.append(ws)

            for _ in range(20):
                tg.start_soon(join)
        await clients[0].send("done")
        for ws in clients:
            assert await recv(ws) == "done"  # every client is in the one room
        starts = [line for line in record.read_text().splitlines() if line.startswith("start")]
        assert len(starts) == 1
        for ws in clients:
            await ws.close()


async def test_first_client_gets_output_from_child_start(server: Serve) -> None:
    async with server(child_settings("exit", "0", "first", "second")) as s, s.connect("/r") as ws:
        assert await recv(ws) == "first"
        assert await recv(ws) == "second"  # the final line without a newline, sent at exit


async def test_messages_before_attach_are_queued_in_order(server: Serve) -> None:
    settings = child_settings("echo", cmd_attach_delay=0.3)
    async with server(settings) as s, s.connect("/late") as ws:
        for i in range(50):
            await ws.send(f"m{i}")
        assert (await recv_text(ws)).startswith("ready")
        assert [await recv(ws) for _ in range(50)] == [f"m{i}" for i in range(50)]


async def test_last_leave_stops_the_child(server: Serve) -> None:
    async with server(child_settings("echo")) as s:
        async with s.connect("/r") as ws:
            pid = await ready_pid(ws)
        await wait_gone(pid)
        assert not s.rooms.live


async def test_child_ignoring_sigterm_is_killed_after_grace(server: Serve) -> None:
    async with server(child_settings("ignore-term", stop_grace=0.3)) as s:
        async with s.connect("/r") as ws:
            pid = await ready_pid(ws)
        await wait_gone(pid)
        assert not alive(pid)


async def test_grandchildren_die_with_the_child(server: Serve) -> None:
    async with server(child_settings("grandchild", stop_grace=0.3)) as s:
        async with s.connect("/r") as ws:
            line = await recv_text(ws)
        _, pid, grandchild = line.split()
        await wait_gone(int(pid))
        await wait_gone(int(grandchild))


async def test_joining_a_stopping_room_gets_a_new_child(server: Serve) -> None:
    async with server(child_settings("ignore-term", stop_grace=2.0)) as s:
        async with s.connect("/r") as ws:
            first = await ready_pid(ws)
        async with s.connect("/r") as ws:
            second = await ready_pid(ws)
        assert second != first
        assert alive(first)  # still in its grace period: the new client did not land on it
        await wait_gone(first)


@pytest.mark.parametrize(("status", "code"), [(0, 1000), (3, 1011)])
async def test_child_exit_delivers_output_then_closes(server: Serve, status: int, code: int) -> None:
    async with server(child_settings("exit", str(status), "a", "b", "tail")) as s, s.connect("/r") as ws:
        assert [await recv(ws) for _ in range(3)] == ["a", "b", "tail"]
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == code
        assert closed.value.rcvd.reason == f"process exited with code {status}"
        assert not s.rooms.live


async def test_child_crash_on_start_then_next_client_retries(server: Serve, tmp_path: Path) -> None:
    async with server(child_settings("exit", "7")) as s:
        for _ in range(2):  # the room is gone after the crash: the next client starts a fresh child
            async with s.connect("/r") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
                assert "code 7" in closed.value.rcvd.reason


async def test_connection_ids_count_up_and_are_unique(server: Serve) -> None:
    async with server(child_settings("echo", joinmsg="joined #ID")) as s:
        async with s.connect("/r") as a:
            await ready_pid(a)
            assert await recv(a) == "joined 1"
            async with s.connect("/r") as b:
                assert await recv(b) == "joined 2"
            async with s.connect("/other") as c:
                await ready_pid(c)
                assert await recv(c) == "joined 3"


async def test_join_and_leave_messages(server: Serve, tmp_path: Path) -> None:
    record = tmp_path / "record"
    settings = child_settings(
        "record",
        str(record),
        joinmsg='{"join":#ID,"room":"#ROOM","name":"#QUERY_NAME","missing":"#QUERY_NOPE"}',
        leavemsg="leave #ID",
    )
    async with server(settings) as s:
        async with s.connect("/hall?name=a%20b%22c&x=1") as a:
            joined = json.loads(await recv_text(a))
            assert joined == {"join": 1, "room": "hall", "name": "a%20b%22c", "missing": "#QUERY_NOPE"}
            async with s.connect("/hall") as b:
                assert (await recv_text(b)).startswith('{"join":2')
                assert (await recv_text(a)).startswith('{"join":2')
            assert await recv(a) == "leave 2"  # the child's echo of b's leave message
    lines = record.read_text().splitlines()
    # The last client's leave message reached the child before it was stopped.
    assert lines[-2:] == ["leave 1", "eof"]


async def test_child_environment_is_exactly_passenv_and_cgi(server: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("KEEP_ME", "yes")
    settings = child_settings("env", passenv=["KEEP_ME", "NOT_SET_ANYWHERE"])
    async with server(settings) as s, s.connect("/envroom?a=1&b=2") as ws:
        env = json.loads(await recv_text(ws))
    # python itself may add LC_CTYPE when started without a locale
    env.pop("LC_CTYPE", None)
    assert env.keys() == {"KEEP_ME", "QUERY_STRING", "REMOTE_ADDR", "ROOM", "INSTANCE"}  # INSTANCE: SPEC §16
    assert env["KEEP_ME"] == "yes"
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["ROOM"] == "envroom"
    host, port = env["REMOTE_ADDR"].rsplit(":", 1)
    assert host == "127.0.0.1" and port.isdigit()


async def test_empty_passenv_still_runs_cmd(server: Serve) -> None:
    settings = child_settings("env", passenv=[])
    async with server(settings) as s, s.connect("/r") as ws:
        env = json.loads(await recv_text(ws))
    assert "PATH" not in env


async def test_long_and_invalid_utf8_lines(server: Serve) -> None:
    async with server(child_settings("big", str(3 * 1024 * 1024))) as s, s.connect("/r") as ws:
        assert await recv(ws) == "x" * (3 * 1024 * 1024)  # far beyond asyncio's 64 KiB readline limit


async def test_line_over_limit_is_split_not_lost(server: Serve) -> None:
    settings = child_settings("big", "5000", max_message_size=2048)
    async with server(settings) as s, s.connect("/r", max_size=None) as ws:
        assert [await recv(ws) for _ in range(3)] == ["x" * 2048, "x" * 2048, "x" * 904]


async def test_invalid_utf8_is_replaced(server: Serve) -> None:
    async with server(child_settings("bytes", b"ok \xff\xfe end\n".hex())) as s, s.connect("/r") as ws:
        assert await recv(ws) == "ok \ufffd\ufffd end"


async def test_binary_mode(server: Serve) -> None:
    payload = bytes(range(256))
    async with server(child_settings("bytes", payload.hex(), binary=True)) as s, s.connect("/r") as ws:
        received = b""
        while len(received) < len(payload):
            message = await recv(ws)
            assert isinstance(message, bytes)
            received += message
        assert received == payload
        await ws.send(b"\x00raw\n\xff")
        # the child hex-dumps exactly what reached its stdin: no newline was added
        assert await recv(ws) == (b"\x00raw\n\xff".hex() + "\n").encode()


async def test_client_message_over_limit_closes_1009(server: Serve) -> None:
    async with server(child_settings("echo", max_message_size=4096)) as s, s.connect("/r") as ws:
        await ready_pid(ws)
        await ws.send("y" * 5000)
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


@pytest.mark.skipif(sys.platform != "linux", reason="pidfd")
async def test_no_zombies_left(server: Serve) -> None:
    async with server(child_settings("echo")) as s:
        pids = []
        for room in ("a", "b", "c"):
            async with s.connect(f"/{room}") as ws:
                pids.append(await ready_pid(ws))
        for pid in pids:
            await wait_gone(pid)
    for pid in pids:
        assert not alive(pid)  # reaped, not a zombie


async def test_invalid_utf8_split_across_reads_is_still_replaced(server: Serve) -> None:
    # The first write ends inside a line holding an invalid byte; the second write is pure ASCII.
    script = (
        "import sys,time; o=sys.stdout.buffer; o.write(b'bad \\xff'); o.flush(); time.sleep(0.2); o.write(b' end\\n')"
    )
    settings = child_settings("unused").model_copy(update={"args": ["-c", script]})
    async with server(settings) as s, s.connect("/r") as ws:
        assert await recv(ws) == "bad \ufffd end"


async def test_child_closing_stdout_before_exiting_is_still_seen_to_exit(server: Serve) -> None:
    # The end of output arrives before the exit: the room must still notice the exit that follows.
    settings = child_settings("unused").model_copy(
        update={"cmd": "/bin/sh", "args": ["-c", "echo bye; exec >&-; sleep 0.3; exit 3"]}
    )
    async with server(settings) as s, s.connect("/r") as ws:
        assert await recv(ws) == "bye"
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.reason == "process exited with code 3"
