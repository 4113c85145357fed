"""The same behaviour checks on both data paths (issue 12): our own websocket protocol (the CLI's), and
plain ASGI through uvicorn's own protocols (`uvicorn app:asgi`). Backpressure, 1008 for a stalled client,
1009, close codes and ordering must not depend on which one carries the socket."""

from __future__ import annotations

import functools
import gc
import logging

import pytest

from app import server as server_module
from app.connection import AsgiConnection, FastConnection, fast_path_problem
from app.connection.http import http_problem
from tests import test_backpressure
from tests.conftest import Serve, child_settings, recv_text, serve
from tests.test_backpressure import (  # noqa: F401 - collected here again, with this module's `server`
    test_every_client_slow_nobody_closed,
    test_lone_slow_client_slows_the_child_and_loses_nothing,
    test_stalled_client_in_busy_room_is_closed_1008,
)
from tests.test_protocol import (  # noqa: F401
    test_control_frames_between_data_frames,
    test_every_length_encoding,
    test_invalid_utf8_text_closes_1007_and_nothing_reaches_the_child,
    test_many_frames_in_one_read_arrive_in_order,
)
from tests.test_rooms import (  # noqa: F401
    test_child_exit_delivers_output_then_closes,
    test_client_message_over_limit_closes_1009,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["ours", "plain-asgi"])
def server(request: pytest.FixtureRequest) -> Serve:
    return functools.partial(serve, plain_asgi=request.param == "plain-asgi")


@pytest.mark.parametrize(
    "plain_asgi",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.xfail(
                strict=True,
                reason="plain ASGI cannot see a disconnect queued behind a message it must not read yet: "
                "a client that vanishes while its child's input is full is noticed once the child reads",
            ),
        ),
    ],
)
async def test_a_client_stalled_on_a_full_child_that_vanishes_is_noticed(plain_asgi: bool) -> None:
    server = functools.partial(serve, plain_asgi=plain_asgi)
    try:
        await test_backpressure.test_flooding_a_child_that_does_not_read_stalls_the_client(server)
    finally:
        gc.collect()  # the client it leaves open when it fails is reported here, not in the next test


@pytest.fixture(params=["ours", "plain-asgi"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_each_path_uses_the_connection_it_says(path: str) -> None:
    async with serve(child_settings("echo"), plain_asgi=path == "plain-asgi") as s, s.connect("/r") as ws:
        assert (await recv_text(ws)).startswith("ready")
        (conn,) = s.rooms.live["r"].clients.values()
        assert isinstance(conn, AsgiConnection if path == "plain-asgi" else FastConnection)


def test_the_installed_uvicorn_has_what_our_protocols_need() -> None:
    assert fast_path_problem() is None
    assert http_problem() is None


def test_a_uvicorn_without_it_falls_back_to_plain_asgi_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server_module, "fast_path_problem", lambda: "uvicorn's Config has no 'ws_max_size'")
    monkeypatch.setattr(server_module, "http_problem", lambda: "uvicorn's HttpToolsProtocol has no on_url()")
    with caplog.at_level(logging.WARNING, logger="scalesocket"):
        config = server_module.uvicorn_config(None, child_settings("echo"))  # type: ignore[arg-type]
    assert config.ws == "websockets-sansio" and config.http == "httptools"  # never silently unbounded:
    assert "plain ASGI" in caplog.text and "limits" in caplog.text  # both said out loud
