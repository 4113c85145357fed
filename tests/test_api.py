"""SPEC §15 `--api` through a real server: the room list, one room, one field, `_meta` lines
(replaced, taken out of the output, ordinary when not `_meta: true`), and metadata going with the room."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import Running, Serve, child_settings, recv, wait_gone

pytestmark = pytest.mark.anyio


async def say(ws: ClientConnection, line: str) -> None:
    """The json-say child prints `line` verbatim."""
    await ws.send(json.dumps({"say": line}))


async def synced(ws: ClientConnection) -> None:
    """Every line said before this one has been handled by the server (the child prints in order)."""
    await say(ws, '{"sync": true}')
    assert json.loads(await recv(ws)) == {"sync": True}


def child_pid(s: Running, room: str) -> int:
    """The pid of `room`'s child: once it is gone, so is the room (it leaves the registry before the stop)."""
    child = s.rooms.live[room].child
    assert child is not None
    return int(child.pid)


async def test_meta_lines_become_the_rooms_metadata(server: Serve) -> None:
    async with (
        server(child_settings("json-say", frame="json", api=True)) as s,
        httpx.AsyncClient(base_url=s.http) as http,
        s.connect("/lobby") as a,
        s.connect("/lobby") as b,
    ):
        assert (await http.get("/api/lobby")).json() == {"name": "lobby", "connections": 2, "metadata": None}
        await say(a, '{"_meta": true, "players": 2, "state": "waiting"}')
        await synced(a)
        meta = {"players": 2, "state": "waiting"}
        assert (await http.get("/api/lobby")).json() == {"name": "lobby", "connections": 2, "metadata": meta}
        await say(a, '{"_meta": true, "state": "playing"}')  # replaces, does not merge
        await say(a, '{"_meta": true, "id": 2, "private": "not for b either"}')  # routed or not: never sent
        await synced(a)
        assert (await http.get("/api/lobby/metadata")).json() == {"id": 2, "private": "not for b either"}
        # b saw none of the _meta lines: its first message is a's sync line.
        assert json.loads(await recv(b)) == {"sync": True}


@pytest.mark.parametrize(
    "line",
    [
        '{"_meta": false, "x": 1}',
        '{"_meta": "true"}',
        '{"_meta": 1}',
        '{"_meta": null}',
        '[{"_meta": true}]',
        '"_meta"',
        '{"_meta": true',  # not JSON
        '{"no_meta": true}',
    ],
)
async def test_other_lines_are_ordinary(server: Serve, line: str) -> None:
    async with (
        server(child_settings("json-say", frame="json", api=True)) as s,
        httpx.AsyncClient(base_url=s.http) as http,
        s.connect("/r") as ws,
    ):
        await say(ws, line)
        assert await recv(ws) == line
        assert (await http.get("/api/r/metadata")).json() is None


async def test_metadata_goes_with_the_room(server: Serve) -> None:
    settings = child_settings("json-say", frame="json", api=True)
    async with server(settings) as s, httpx.AsyncClient(base_url=s.http) as http:
        async with s.connect("/r") as ws:
            await say(ws, '{"_meta": true, "round": 7}')
            await synced(ws)
            assert (await http.get("/api/r/metadata")).json() == {"round": 7}
            assert [room["name"] for room in (await http.get("/api/rooms")).json()] == ["r"]
            pid = child_pid(s, "r")
        await wait_gone(pid)
        assert (await http.get("/api/rooms")).json() == []
        assert (await http.get("/api/r")).json() == {"name": "r", "connections": 0, "metadata": None}
        async with s.connect("/r") as ws:  # a new child: no metadata until it publishes some
            await synced(ws)
            assert (await http.get("/api/r")).json() == {"name": "r", "connections": 1, "metadata": None}


async def test_room_list_and_fields(server: Serve) -> None:
    async with (
        server(child_settings("json-say", frame="json", api=True)) as s,
        httpx.AsyncClient(base_url=s.http) as http,
        s.connect("/a") as a,
        s.connect("/b") as b,
        s.connect("/b") as b2,
        s.connect("/") as own,  # websocketd's room of its own: never listed
    ):
        await say(a, '{"_meta": true, "title": "A"}')
        await synced(a)
        for ws in (b, b2, own):
            await synced(ws)
        expected = [
            {"name": "a", "connections": 1, "metadata": {"title": "A"}},
            {"name": "b", "connections": 2, "metadata": None},
        ]
        for path in ["/api/rooms", "/api/rooms/"]:
            assert sorted((await http.get(path)).json(), key=lambda room: room["name"]) == expected
        for path, value in [
            ("/api/b/connections", 2),
            ("/api/b/connections/", 2),
            ("/api/a/name", "a"),
            ("/api/a/metadata/", {"title": "A"}),
            ("/api/a/", expected[0]),
            ("/api/nobody", {"name": "nobody", "connections": 0, "metadata": None}),
        ]:
            response = await http.get(path)
            assert (response.status_code, response.json()) == (200, value), path
        for path in ["/api/a/bogus", "/api/a/pid", "/api/bad%20name", "/api/api", "/api/stats", "/api/" + "x" * 129]:
            response = await http.get(path)
            assert response.status_code == 404, path
            assert "error" in response.json()


async def test_without_api_everything_is_404_and_meta_lines_ordinary(server: Serve) -> None:
    async with (
        server(child_settings("json-say", frame="json")) as s,
        httpx.AsyncClient(base_url=s.http) as http,
        s.connect("/r") as ws,
    ):
        await say(ws, '{"_meta": true, "x": 1}')
        assert await recv(ws) == '{"_meta": true, "x": 1}'
        for path in ["/api/rooms", "/api/r", "/api/r/connections"]:
            assert (await http.get(path)).status_code == 404


async def test_api_without_json_framing_lists_rooms_and_sends_every_line(server: Serve) -> None:
    async with (
        server(child_settings("echo", api=True)) as s,
        httpx.AsyncClient(base_url=s.http) as http,
        s.connect("/r") as ws,
    ):
        await recv(ws)  # ready
        await ws.send('{"_meta": true}')
        assert await recv(ws) == '{"_meta": true}'
        assert (await http.get("/api/rooms")).json() == [{"name": "r", "connections": 1, "metadata": None}]
