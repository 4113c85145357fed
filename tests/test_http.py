"""SPEC §8 through a real server: `--stats`, `--staticdir` (traversal included), and disabled endpoints."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import TIMEOUT, Serve, child_settings, recv, recv_text

pytestmark = pytest.mark.anyio

SECRET = "top secret, outside the static directory"


async def raw_request(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """One HTTP/1.1 request with `target` sent byte for byte: no client normalises `..` or `%2e`."""
    request = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    data = b""
    with anyio.fail_after(TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request.encode())
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return int(data.split(b" ", 2)[1]), data


# --- disabled endpoints ---------------------------------------------------------------------------


async def test_endpoints_not_enabled_answer_404(server: Serve) -> None:
    async with server(child_settings("echo")) as s, httpx.AsyncClient(base_url=s.http) as http, s.connect("/r") as ws:
        await recv(ws)  # room r exists
        for path in ["/metrics", "/r/stats", "/r/stats/connections", "/", "/index.html", "/r"]:
            assert (await http.get(path)).status_code == 404, path
        health = await http.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})


# --- stats ----------------------------------------------------------------------------------------


async def test_stats_of_a_room_in_use(server: Serve) -> None:
    before = time.time()
    async with server(child_settings("echo", stats=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        async with s.connect("/lobby") as a:
            ready = await recv_text(a)
            async with s.connect("/lobby") as b:
                await b.send("hi")
                assert (await recv(a), await recv(b)) == ("hi", "hi")
                response = await http.get("/lobby/stats")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        stats = response.json()
        started = stats.pop("started")
        assert before <= started <= time.time()
        assert stats == {
            "name": "lobby",
            "connections": 2,
            "pid": int(ready.split()[1]),
            "messages_in": 1,
            "messages_out": 3,  # ready to a (b joined after it), then hi to both
            "bytes_in": len("hi\n"),
            "bytes_out": len(ready) + 2 * len("hi"),
        }
        # Every client gone: the room reports none, with the same keys.
        with anyio.fail_after(TIMEOUT):
            while (await http.get("/lobby/stats/connections")).json() != 0:  # noqa: ASYNC110 - polling from outside
                await anyio.sleep(0.02)


async def test_each_statistic_alone_as_bare_json(server: Serve) -> None:
    async with server(child_settings("echo", stats=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        async with s.connect("/lobby") as a, s.connect("/lobby") as b:
            await b.send("hi")
            for _ in range(3):  # ready (to one or both, by timing) and hi to both: wait for hi
                if await recv(a) == "hi":
                    break
            stats = (await http.get("/lobby/stats")).json()
            assert stats["connections"] == 2
            for statistic, value in stats.items():
                one = await http.get(f"/lobby/stats/{statistic}")
                assert (one.status_code, one.headers["content-type"], one.json()) == (200, "application/json", value)
            assert (await http.get("/lobby/stats/connections")).text == "2"


async def test_stats_of_a_room_without_clients(server: Serve) -> None:
    async with server(child_settings("echo", stats=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        response = await http.get("/empty/stats")
        assert (response.status_code, response.json()) == (
            200,
            {
                "name": "empty",
                "connections": 0,
                "pid": None,
                "started": None,
                "messages_in": 0,
                "messages_out": 0,
                "bytes_in": 0,
                "bytes_out": 0,
            },
        )
        assert (await http.get("/empty/stats/connections")).text == "0"
        assert (await http.get("/empty/stats/pid")).text == "null"
        assert not s.rooms.live  # asking never starts a room


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/r/stats/nope", "unknown statistic: 'nope'"),
        ("/health/stats", "not a valid room name: 'health'"),
        ("/stats/stats", "not a valid room name: 'stats'"),
        ("/a%20b/stats", "not a valid room name: 'a b'"),
        ("/" + "x" * 129 + "/stats", "not a valid room name: '" + "x" * 129 + "'"),
        ("/metrics/stats/connections", "not a valid room name: 'metrics'"),
    ],
)
async def test_stats_unknown_statistic_or_invalid_room_is_404_json(server: Serve, path: str, error: str) -> None:
    async with server(child_settings("echo", stats=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        response = await http.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == error


# --- static files ---------------------------------------------------------------------------------


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A static directory, with a secret beside it and symlinks that lead out of it (and one that stays)."""
    (tmp_path / "secret.txt").write_text(SECRET)
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    files = {
        "index.html": "<h1>home</h1>",
        "app.js": "console.log(1)",
        "mod.mjs": "export {}",
        "style.css": "p{}",
        "data.json": "{}",
        "logo.svg": "<svg/>",
        "prog.wasm": "\0asm",
        "notes.txt": "notes",
        "blob.unknownext": "???",
        "health": "not the health endpoint",
        "sub/index.html": "<h1>sub</h1>",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "up").symlink_to(tmp_path, target_is_directory=True)
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (root / "alias.js").symlink_to(root / "app.js")  # stays inside: served
    return root


CONTENT = [
    ("/", "text/html; charset=utf-8", "<h1>home</h1>"),
    ("/index.html", "text/html; charset=utf-8", "<h1>home</h1>"),
    ("/sub/", "text/html; charset=utf-8", "<h1>sub</h1>"),
    ("/app.js", "text/javascript; charset=utf-8", "console.log(1)"),
    ("/alias.js", "text/javascript; charset=utf-8", "console.log(1)"),
    ("/mod.mjs", "text/javascript; charset=utf-8", "export {}"),
    ("/style.css", "text/css; charset=utf-8", "p{}"),
    ("/data.json", "application/json", "{}"),
    ("/logo.svg", "image/svg+xml", "<svg/>"),
    ("/prog.wasm", "application/wasm", "\0asm"),
    ("/notes.txt", "text/plain; charset=utf-8", "notes"),
    ("/blob.unknownext", "application/octet-stream", "???"),
]


async def test_static_files_with_their_content_types_get_and_head(server: Serve, www: Path) -> None:
    async with server(child_settings("echo", staticdir=www)) as s, httpx.AsyncClient(base_url=s.http) as http:
        for path, content_type, body in CONTENT:
            response = await http.get(path)
            assert (response.status_code, response.headers["content-type"], response.text) == (200, content_type, body)
            assert response.headers["x-content-type-options"] == "nosniff"
            head = await http.head(path)
            assert (head.status_code, head.headers["content-type"], head.content) == (200, content_type, b"")
            assert head.headers["content-length"] == str(len(body.encode()))


async def test_static_directory_without_slash_redirects_and_routes_come_first(server: Serve, www: Path) -> None:
    async with server(child_settings("echo", staticdir=www)) as s, httpx.AsyncClient(base_url=s.http) as http:
        response = await http.get("/sub")
        assert (response.status_code, response.headers["location"]) == (307, f"{s.http}/sub/")
        assert (await http.get("/health")).json() == {"status": "ok"}  # not the file called health
        assert (await http.get("/nothing-here")).status_code == 404
        assert (await http.post("/index.html")).status_code == 405


TRAVERSALS = [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/sub/..%2f..%2fsecret.txt",
    "/..%5csecret.txt",
    "/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/../../../../etc/passwd",
    "//etc/passwd",
    "/%2fetc%2fpasswd",
    "/passwd",  # a symlink to /etc/passwd inside DIR
    "/leak.txt",  # a symlink to the secret beside DIR
    "/up/secret.txt",  # through a symlinked directory that leaves DIR
    "/secret.txt%00.html",
]


async def test_static_never_serves_outside_its_directory(server: Serve, www: Path) -> None:
    async with server(child_settings("echo", staticdir=www)) as s:
        answers = {}
        for target in TRAVERSALS:
            for method in ("GET", "HEAD"):
                status, data = await raw_request(s.port, target, method)
                assert SECRET.encode() not in data and b"root:" not in data, (method, target)
                answers[method, target] = status
        assert answers == dict.fromkeys(answers, 404)


async def test_websocket_upgrade_reaches_the_room_even_if_a_file_has_its_name(server: Serve, www: Path) -> None:
    async with server(child_settings("echo", staticdir=www)) as s, httpx.AsyncClient(base_url=s.http) as http:
        assert (await http.get("/index.html")).text == "<h1>home</h1>"
        async with s.connect("/index.html") as ws:
            assert (await recv_text(ws)).startswith("ready")
            await ws.send("still a room")
            assert await recv(ws) == "still a room"
        assert (await http.get("/index.html")).text == "<h1>home</h1>"
