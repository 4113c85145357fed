"""The plain ASGI path (any ASGI server, here Starlette's TestClient): no uvicorn fast path, same behaviour."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from app import create_app
from tests.conftest import child_settings


def test_echo_and_shared_room_over_plain_asgi() -> None:
    with TestClient(create_app(child_settings("pid"))) as client:
        with client.websocket_connect("/room") as a, client.websocket_connect("/room") as b:
            a.send_text("hello")
            pid, text = a.receive_text().split()
            assert text == "hello"
            assert b.receive_text() == f"{pid} hello"  # one child, shared


def test_json_framing_over_plain_asgi() -> None:
    with TestClient(create_app(child_settings("json-say", frame="json"))) as client:
        with client.websocket_connect("/r") as a:
            a.send_text('{"x": 1, "id": 5}')
            assert json.loads(a.receive_text()) == {"x": 1, "id": 1}


def test_health_and_bad_room_over_plain_asgi() -> None:
    with TestClient(create_app(child_settings("echo"))) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/lobby").status_code == 404
