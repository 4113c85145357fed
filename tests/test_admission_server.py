"""SPEC §3 and §13 through a real server: origins, --rooms, racing joins at the limits, refusals and their logs."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import TIMEOUT, Running, Serve, alive, child_settings, recv_text

pytestmark = pytest.mark.anyio

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def handshake(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[Answer, anyio.abc.ByteStream]:
    """A websocket handshake exactly as written (path, Host, Origin); the answer and the open stream."""
    headers = {"Host": f"127.0.0.1:{port}"} | (headers or {})
    lines = [f"GET {path} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}"]
    lines += ["Sec-WebSocket-Version: 13", *(f"{name}: {value}" for name, value in headers.items())]
    stream = await anyio.connect_tcp("127.0.0.1", port)
    with anyio.fail_after(TIMEOUT):
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer = Answer(int(status_line.split()[1]), {}, body)
        for line in header_lines:
            name, _, value = line.partition(":")
            answer.headers[name.strip().lower()] = value.strip()
        if answer.status != 101:
            while len(answer.body) < int(answer.headers.get("content-length", "0")):
                answer.body += await stream.receive()
    return answer, stream


async def answer(port: int, path: str, headers: dict[str, str] | None = None) -> Answer:
    result, stream = await handshake(port, path, headers)
    await stream.aclose()
    return result


async def until(condition: object, what: str) -> None:
    with anyio.fail_after(TIMEOUT):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110 - the rooms offer no event for this
            await anyio.sleep(0.01)


def refused(caplog: pytest.LogCaptureFixture, level: int, *needles: str) -> bool:
    return any(
        r.name == "scalesocket.admission" and r.levelno == level and all(n in r.getMessage() for n in needles)
        for r in caplog.records
    )


# --- origin ----------------------------------------------------------------------------------------


async def test_same_origin_by_default(server: Serve, caplog: pytest.LogCaptureFixture) -> None:
    async with server(child_settings("echo")) as s:
        own = f"http://127.0.0.1:{s.port}"
        async with s.connect("/lobby", origin=own) as ws:  # a page of this server (the chat example)
            assert (await recv_text(ws)).startswith("ready ")
        async with s.connect("/nobrowser") as ws:  # no Origin: not a page
            assert (await recv_text(ws)).startswith("ready ")
        running = len(s.rooms.running)
        for origin in ("http://evil.example", f"http://localhost:{s.port}", f"http://127.0.0.1:{s.port + 1}", "null"):
            with pytest.raises(InvalidStatus) as denied:
                async with s.connect("/other", origin=origin):
                    pass
            assert denied.value.response.status_code == 403
            assert origin.encode() in denied.value.response.body
            hint = "--origin null" if origin == "null" else f"--origin {origin}"
            assert refused(caplog, logging.WARNING, origin, hint), caplog.text
        assert "other" not in s.rooms.live and len(s.rooms.running) <= running  # no child started for them


async def test_same_origin_behind_a_tls_proxy(server: Serve) -> None:
    async with server(child_settings("echo")) as s:
        ok = await answer(s.port, "/r", {"Host": "chat.example.com", "Origin": "https://chat.example.com"})
        assert ok.status == 101
        assert (await answer(s.port, "/r", {"Host": "chat.example.com", "Origin": "https://evil.com"})).status == 403
        assert (
            await answer(s.port, "/r", {"Host": "chat.example.com:80", "Origin": "https://chat.example.com"})
        ).status == 403


async def test_origin_list_star_and_null(server: Serve) -> None:
    async with server(child_settings("echo", origin="https://app.example,null")) as s:
        for origin, status in [
            ("https://app.example", 101),
            ("https://APP.example:8443", 101),  # no port listed: any port
            ("http://app.example", 403),  # the scheme is listed: it must match
            ("null", 101),
            (f"http://127.0.0.1:{s.port}", 403),  # --origin replaces same origin
        ]:
            assert (await answer(s.port, "/r", {"Origin": origin})).status == status, origin
    async with server(child_settings("echo", origin="*")) as s:
        for origin in ("https://evil.example", "null", "garbage"):
            assert (await answer(s.port, "/r", {"Origin": origin})).status == 101


async def test_origin_is_checked_on_every_websocket_path(server: Serve) -> None:
    async with server(child_settings("echo")) as s:
        for path in ("/a/b", "/health", "/..", "/"):
            assert (await answer(s.port, path, {"Origin": "https://evil.example"})).status == 403, path


# --- room names and --rooms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/.", "directory"),
        ("/..", "directory"),
        ("/%2e%2E", "directory"),
        ("/health", "reserved"),
        ("/stats", "reserved"),
        ("/a%20b", "characters"),
        ("/caf%C3%A9", "characters"),
        ("/" + "r" * 129, "length"),
        ("/a/b", "one segment"),
        ("/a%2Fb", "one segment"),
    ],
)
async def test_bad_names_get_400_saying_which_rule(
    server: Serve, caplog: pytest.LogCaptureFixture, path: str, rule: str
) -> None:
    caplog.set_level(logging.INFO, logger="scalesocket.admission")
    async with server(child_settings("echo")) as s:
        result = await answer(s.port, path)
        assert result.status == 400
        assert rule in result.body.decode(), result.body
        assert refused(caplog, logging.INFO, rule), caplog.text
        assert not s.rooms.running


async def test_rooms_list(server: Serve) -> None:
    async with server(child_settings("echo", rooms="lobby,game-1")) as s:
        async with s.connect("/lobby") as ws:
            assert (await recv_text(ws)).startswith("ready ")
        other = await answer(s.port, "/other")
        assert other.status == 403 and b"--rooms" in other.body
        assert (await answer(s.port, "/..")).status == 400  # invalid names still get 400
        assert "other" not in s.rooms.live


# --- limits ----------------------------------------------------------------------------------------


async def refused_503(s: Running, path: str) -> Answer:
    result = await answer(s.port, path)
    assert result.status == 503, result
    assert result.headers.get("retry-after", "").isdigit(), result.headers
    return result


async def test_maxrooms_and_the_room_counts_until_its_child_is_reaped(
    server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    # A child that ignores SIGTERM keeps its room counted through the whole stop grace.
    async with server(child_settings("ignore-term", maxrooms=2)) as s:
        async with s.connect("/a") as a, s.connect("/b"):
            pid = int((await recv_text(a)).split()[1])
            async with s.connect("/b"):  # joining a live room opens no new room: accepted
                assert len(s.rooms.running) == 2
            result = await refused_503(s, "/c")
            assert b"--maxrooms" in result.body
            assert refused(caplog, logging.WARNING, "--maxrooms"), caplog.text
            await a.close()
            await until(lambda: "a" not in s.rooms.live, "room a left")
            assert alive(pid)  # still being stopped ...
            await refused_503(s, "/c")  # ... so it still counts
            await until(lambda: len(s.rooms.running) == 1, "room a reaped")
            async with s.connect("/c") as c:
                assert (await recv_text(c)).startswith("ready ")


async def test_maxclients(server: Serve) -> None:
    async with server(child_settings("echo", maxclients=2)) as s:
        async with s.connect("/lobby") as a, s.connect("/lobby"):
            await recv_text(a)
            assert b"--maxclients" in (await refused_503(s, "/lobby")).body
            async with s.connect("/other") as other:  # another room is not full
                assert (await recv_text(other)).startswith("ready ")
            await a.send("still here")
            assert await recv_text(a) == "still here"


async def test_maxconnections(server: Serve) -> None:
    async with server(child_settings("echo", maxconnections=3)) as s:
        async with s.connect("/a") as a, s.connect("/a"), s.connect("/b"):
            await recv_text(a)
            for path in ("/a", "/c"):
                assert b"--maxconnections" in (await refused_503(s, path)).body
        async with s.connect("/c") as c:  # they left: room again
            assert (await recv_text(c)).startswith("ready ")


async def test_oneshot_means_one_room(server: Serve) -> None:
    async with server(child_settings("echo", oneshot=True)) as s, s.connect("/only") as ws:
        await recv_text(ws)
        await refused_503(s, "/another")


async def race(s: Running, paths: list[str]) -> tuple[list[anyio.abc.ByteStream], list[Answer]]:
    """All handshakes at once; the upgraded ones are kept open until every one is answered."""
    upgraded: list[anyio.abc.ByteStream] = []
    answers: list[Answer] = []

    async def one(path: str) -> None:
        result, stream = await handshake(s.port, path)
        answers.append(result)
        if result.status == 101:
            upgraded.append(stream)
        else:
            await stream.aclose()

    try:
        async with anyio.create_task_group() as tg:
            for path in paths:
                tg.start_soon(one, path)
    except BaseException:
        for stream in upgraded:
            await stream.aclose()
        raise
    return upgraded, answers


@pytest.mark.parametrize(
    ("limit", "paths", "admitted"),
    [
        ({"maxrooms": 4}, [f"/room{i}" for i in range(40)], 4),
        ({"maxclients": 3}, ["/lobby"] * 40, 3),
        ({"maxconnections": 5}, [f"/room{i % 3}" for i in range(40)], 5),
    ],
    ids=["maxrooms", "maxclients", "maxconnections"],
)
async def test_racing_joins_never_overshoot(
    server: Serve, limit: dict[str, int], paths: list[str], admitted: int
) -> None:
    async with server(child_settings("echo", **limit)) as s:
        upgraded, answers = await race(s, paths)
        try:
            statuses = sorted(a.status for a in answers)
            assert statuses == [101] * admitted + [503] * (len(paths) - admitted), statuses
            assert len(s.rooms.running) <= limit.get("maxrooms", 3)
        finally:
            for stream in upgraded:
                await stream.aclose()


async def test_refusals_are_counted_in_metrics(server: Serve) -> None:
    async with server(child_settings("echo", maxrooms=1, metrics=True)) as s, s.connect("/a") as a:
        await recv_text(a)
        await refused_503(s, "/b")
        await refused_503(s, "/c")
        assert (await answer(s.port, "/a", {"Origin": "https://evil.example"})).status == 403
        assert (await answer(s.port, "/..")).status == 400
        async with httpx.AsyncClient() as http:
            text = (await http.get(s.http + "/metrics")).text
        counts = dict(re.findall(r'scalesocket_websocket_refused_total\{reason="(\w+)"\} (\S+)', text))
        assert counts["maxrooms"] == "2.0" and counts["origin"] == "1.0" and counts["name"] == "1.0", text
        assert counts["maxclients"] == "0.0"


async def test_websocketds_own_room_counts_toward_maxrooms_and_is_not_in_rooms(server: Serve) -> None:
    async with server(child_settings("echo", maxrooms=1)) as s, s.connect("/") as ws:
        assert (await recv_text(ws)).startswith("ready ")
        await refused_503(s, "/")
        await refused_503(s, "/named")
    async with server(child_settings("echo", rooms="lobby")) as s:
        refused = await answer(s.port, "/")
        assert refused.status == 403
        assert b"/ (websocketd's room of its own) is not open here (--rooms)" in refused.body
