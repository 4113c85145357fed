"""SPEC §5 through a real server: json stamping and routing, gwsocket strict mode both ways."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import Serve, child_settings, recv

pytestmark = pytest.mark.anyio
GW = str(Path(__file__).parent / "children" / "gw.py")


def gw_settings(**overrides: Any) -> Any:
    return child_settings("unused", **overrides).model_copy(update={"args": ["-u", GW]})


async def say(ws: ClientConnection, line: str) -> None:
    await ws.send(json.dumps({"say": line}))


async def test_json_client_id_is_stamped_and_overwritten(server: Serve) -> None:
    async with server(child_settings("json-say", frame="json")) as s, s.connect("/r") as a:
        await a.send('{"x": 1, "id": 999}')
        assert json.loads(await recv(a)) == {"x": 1, "id": 1}


async def test_json_routing(server: Serve) -> None:
    async with server(child_settings("json-say", frame="json")) as s:
        async with s.connect("/r") as a, s.connect("/r") as b, s.connect("/elsewhere") as c:
            await say(a, '{"id": 2, "m": "private"}')
            await say(a, '{"id": 99, "m": "nobody"}')
            await say(a, '{"id": 3, "m": "client of another room"}')
            broadcast = [
                '{"m": "all"}',
                '{"id": null}',
                '{"id": true}',
                '{"id": 1.0}',
                '{"id": 1e0}',
                '{"id": "1"}',
                '{"id": -1}',
                "[1, 2]",
                "not json",
            ]
            for line in broadcast:
                await say(a, line)
            assert await recv(b) == '{"id": 2, "m": "private"}'  # unchanged, only to client 2
            assert [await recv(b) for _ in broadcast] == broadcast
            assert [await recv(a) for _ in broadcast] == broadcast  # a got neither the private nor the unknown
            await say(c, "marker")
            assert await recv(c) == "marker"  # room /r's line for id 3 never reached /elsewhere


async def test_json_bad_client_message_dropped_client_stays(server: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="scalesocket.messages")
    async with server(child_settings("json-say", frame="json")) as s, s.connect("/r") as a:
        for bad in ("not json", "[1]", '"text"', "3", b"\xff\xfe"):
            await a.send(bad)
        await a.send('{"ok": true}')
        assert json.loads(await recv(a)) == {"ok": True, "id": 1}
    assert "not a JSON object" in caplog.text


async def test_client_frame_only_stamps_server_frame_only_routes(server: Serve) -> None:
    async with server(child_settings("json-say", client_frame="json")) as s, s.connect("/r") as a:
        await a.send('{"v": 1}')
        assert json.loads(await recv(a)) == {"v": 1, "id": 1}
        await say(a, '{"id": 42}')  # no server framing: broadcast even with an unknown id
        assert await recv(a) == '{"id": 42}'


async def test_json_join_message_is_stamped(server: Serve) -> None:
    settings = child_settings("json-say", frame="json", joinmsg='{"type": "join", "room": "#ROOM"}')
    async with server(settings) as s, s.connect("/hall") as a:
        assert json.loads(await recv(a)) == {"type": "join", "room": "hall", "id": 1}


async def test_gwsocket_frames_from_child(server: Serve, caplog: pytest.LogCaptureFixture) -> None:
    async with server(gw_settings(frame="binary")) as s, s.connect("/r") as ws:
        assert await recv(ws) == "hello"  # split across two writes
        assert await recv(ws) == bytes(range(256))  # binary, every byte value
        assert await recv(ws) == "multi\nline"  # a newline inside a payload
        assert await recv(ws) == "after"  # the unknown type 9 frame was skipped
    assert "unknown type" in caplog.text


async def test_gwsocket_frames_from_clients_and_private_replies(server: Serve) -> None:
    async with server(gw_settings(frame="binary")) as s, s.connect("/r") as a:
        for _ in range(4):
            await recv(a)
        async with s.connect("/r") as b:
            await a.send("ping")
            assert await recv(a) == "echo:ping"  # the child answered client 1 privately
            assert await recv(a) == "from 1 type 1"
            assert await recv(b) == "from 1 type 1"  # b got only the broadcast
            await b.send(b"\x00\n\xff")
            assert await recv(b) == b"echo:\x00\n\xff"
            assert await recv(b) == "from 2 type 2"


async def test_gwsocket_join_message_is_a_frame_from_the_client(server: Serve) -> None:
    async with server(gw_settings(client_frame="binary", server_frame="binary", joinmsg="hi #ID")) as s:
        async with s.connect("/r") as a:
            received = [await recv(a) for _ in range(6)]
            assert "echo:hi 1" in received and "from 1 type 1" in received


async def test_gwsocket_oversized_frame_closes_1011(server: Serve) -> None:
    async with server(gw_settings(frame="binary", max_message_size=4096)) as s, s.connect("/r") as ws:
        for _ in range(4):
            await recv(ws)
        await ws.send("too-big")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_gwsocket_truncated_frame_at_exit_closes_1011(server: Serve) -> None:
    async with server(gw_settings(frame="binary")) as s, s.connect("/r") as ws:
        for _ in range(4):
            await recv(ws)
        await ws.send("truncate")
        assert await recv(ws) == "whole"
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_binary_mode_with_json_framing(server: Serve) -> None:
    async with server(child_settings("json-say", frame="json", binary=True)) as s, s.connect("/r") as a:
        await a.send(b'{"b": 1}')
        assert json.loads(await recv(a)) == {"b": 1, "id": 1}
