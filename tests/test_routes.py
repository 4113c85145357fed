"""SPEC §3 and §8 `/health`: room names, refusals before the upgrade, and plain GETs on room paths."""

from __future__ import annotations

import httpx
import pytest
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus

from app.names import valid_room
from app.routes import remote_addr
from tests.conftest import Serve, child_settings, recv

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", ["a", "Lobby-1", "x.y_z~w", "A" * 128, "...", ".a", "0"])
def test_valid_room_names(name: str) -> None:
    assert valid_room(name)


@pytest.mark.parametrize(
    "name", ["", "A" * 129, "a b", "caf\u00e9", "a/b", "x%41", "health", "metrics", "api", "stats", ".", ".."]
)
def test_invalid_room_names(name: str) -> None:
    assert not valid_room(name)


async def test_health(server: Serve) -> None:
    async with server(child_settings("echo")) as s, httpx.AsyncClient() as http:
        response = await http.get(s.http + "/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "path", ["/a/b", "/health", "/metrics", "/stats", "/api", "/static", "/" + "r" * 129, "/bad%20name"]
)
async def test_bad_room_path_refused_400_before_upgrade_no_child(server: Serve, path: str) -> None:
    async with server(child_settings("echo")) as s:
        with pytest.raises(InvalidStatus) as refused:
            async with s.connect(path):
                pass
        assert refused.value.response.status_code == 400
        assert not s.rooms.running  # no child was started


async def test_plain_get_on_room_path_is_404(server: Serve) -> None:
    async with server(child_settings("echo")) as s, httpx.AsyncClient() as http:
        assert (await http.get(s.http + "/lobby")).status_code == 404
        assert not s.rooms.running


async def test_room_names_are_case_sensitive_and_dots_allowed(server: Serve) -> None:
    async with server(child_settings("echo")) as s, s.connect("/Room.1") as a, s.connect("/room.1") as b:
        pid_a = (await recv(a)).split()[1]
        pid_b = (await recv(b)).split()[1]
        assert pid_a != pid_b


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 5000, "127.0.0.1:5000"),
        ("::1", 5000, "[::1]:5000"),
        ("203.0.113.7", 0, "203.0.113.7:0"),  # behind a proxy: X-Forwarded-For has no port
        ('x"} #ID {"evil":"1', 0, "[x%22%7D%20%23ID%20%7B%22evil%22:%221]:0"),  # from a trusting proxy
    ],
)
def test_remote_addr_is_safe_by_construction(host: str, port: int, expected: str) -> None:
    scope = {"type": "websocket", "client": (host, port), "path": "/r", "headers": [], "query_string": b""}
    websocket = WebSocket(scope, receive=None, send=None)  # type: ignore[arg-type]
    assert remote_addr(websocket) == expected
