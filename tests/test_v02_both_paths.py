"""SPEC §15's replay and metadata on the other data path: plain ASGI through uvicorn's own protocols
(`uvicorn app:asgi`), as on our own websocket protocol (the CLI's, where the tests first run)."""

from __future__ import annotations

import functools

import pytest

from tests.conftest import Serve, serve
from tests.test_api import test_meta_lines_become_the_rooms_metadata  # noqa: F401 - collected here again
from tests.test_cache import (  # noqa: F401
    test_joiner_gets_the_last_size_messages_then_live,
    test_private_messages_are_never_replayed,
    test_replay_under_concurrent_joins_and_continuous_output,
)
from tests.test_delimiters import test_items_through_a_server  # noqa: F401

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Serve:
    return functools.partial(serve, plain_asgi=True)
