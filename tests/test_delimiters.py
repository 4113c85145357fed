"""SPEC §15 delimiters: the pure splitter (hypothesis: cut points never change the items), the
option's escapes, and items through a real server in text mode and under json server framing."""

from __future__ import annotations

import json
import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.delimiters import DelimiterSplitter
from app.settings import Settings, unescape_delimiters
from cli.__main__ import to_settings
from tests.conftest import Serve, child_settings, error_of, recv

SETTINGS = settings(max_examples=200, deadline=None, database=None)
DELIMS = st.lists(st.sampled_from(b";|\n\0\t,"), min_size=1, max_size=4, unique=True).map(bytes)
STREAMS = st.lists(st.sampled_from([b";", b"|", b"\n", b"\0", b"a", b"bc", b"\xff", b"xyzxyzxyz"]), max_size=60).map(
    b"".join
)


def reference(stream: bytes, delimiters: bytes, max_size: int) -> list[bytes]:
    """The whole stream split at once on a regex of the delimiters, long items cut into max_size pieces."""
    *items, tail = re.split(b"[" + re.escape(delimiters) + b"]", stream)
    out: list[bytes] = []
    for item in [*items, tail] if tail else items:
        out += [item[i : i + max_size] for i in range(0, len(item), max_size)] if item else [item]
    return out


@SETTINGS
@given(DELIMS, STREAMS, st.lists(st.integers(0, 600), max_size=20), st.integers(1, 12))
def test_cut_points_never_change_the_items(delimiters: bytes, stream: bytes, cuts: list[int], max_size: int) -> None:
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    splitter = DelimiterSplitter(max_size, delimiters)
    out: list[bytes] = []
    for a, b in pairwise(bounds):
        out += splitter.feed(stream[a:b])
    out += splitter.close()
    assert out == reference(stream, delimiters, max_size)
    assert not any(byte in delimiters for item in out for byte in item)  # the delimiter is never sent


@pytest.mark.parametrize(
    ("delimiters", "chunks", "items"),
    [
        (b";", [b"a;b;c"], [b"a", b"b", b"c"]),  # final item without a delimiter: sent at close
        (b";", [b"<p>\nhi\n</p>;<b>", b"x</b>;"], [b"<p>\nhi\n</p>", b"<b>x</b>"]),  # items span lines
        (b";|", [b"a|b;", b"|"], [b"a", b"b", b""]),  # any of them; two in a row make an empty item
        (b"\0", [b"a\0b\0"], [b"a", b"b"]),
        (b";", [b";;"], [b"", b""]),
    ],
)
def test_splitter_examples(delimiters: bytes, chunks: list[bytes], items: list[bytes]) -> None:
    splitter = DelimiterSplitter(100, delimiters)
    out = [item for chunk in chunks for item in splitter.feed(chunk)]
    assert out + splitter.close() == items


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (";", b";"),
        ("\\n", b"\n"),
        ("\\t\\r", b"\t\r"),
        ("\\0", b"\0"),
        ("\\\\", b"\\"),
        (";;|", b";|"),
        ("a\\nb", b"a\nb"),
    ],
)
def test_escapes(option: str, expected: bytes) -> None:
    assert unescape_delimiters(option) == expected


def test_null_adds_nul() -> None:
    assert to_settings(["--null", "cat"]).item_delimiters == b"\0"
    assert to_settings(["--delimiters=;", "--null", "cat"]).item_delimiters == b";\0"
    assert to_settings(["--delimiters=\\0", "--null", "cat"]).item_delimiters == b"\0"
    assert to_settings(["cat"]).item_delimiters is None


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_CMD", "cat")
    monkeypatch.setenv("SCALESOCKET_DELIMITERS", ";\\t")
    monkeypatch.setenv("SCALESOCKET_NULL", "true")
    assert Settings().item_delimiters == b";\t\0"


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--delimiters=", "cat"], "--delimiters"),
        (["--delimiters=\\x", "cat"], "--delimiters"),
        (["--delimiters=a\\", "cat"], "--delimiters"),
        (["--delimiters=é", "cat"], "--delimiters"),
        (["-b", "--delimiters=;", "cat"], "--delimiters"),
        (["-b", "--null", "cat"], "--null"),
        (["--frame", "--null", "cat"], "--null"),
        (["--server-frame=binary", "--delimiters=;", "cat"], "--delimiters"),
    ],
)
def test_bad_values_exit_2(argv: list[str], names: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(argv, capsys)
    assert names in err, err


def test_json_client_framing_with_delimiters_is_fine() -> None:
    s = to_settings(["--client-frame=binary", "--server-frame=json", "--delimiters=;", "cat"])
    assert s.item_delimiters == b";"


# --- through a real server --------------------------------------------------------------------------------

PRINTF = (
    "import sys; sys.stdout.write(sys.argv[1].encode().decode('unicode_escape')); sys.stdout.flush(); sys.stdin.read()"
)


def printing(text: str, **overrides: object) -> Settings:
    """A child that prints `text` (Python escapes), then waits for stdin to close."""
    return child_settings("unused", **overrides).model_copy(update={"args": ["-c", PRINTF, text]})


@pytest.mark.anyio
async def test_items_through_a_server(server: Serve) -> None:
    settings = printing("<div>\\n one\\n</div>;<p>two</p>\\x00three;", delimiters=";", null=True)
    async with server(settings) as s, s.connect("/r") as ws:
        assert [await recv(ws) for _ in range(3)] == ["<div>\n one\n</div>", "<p>two</p>", "three"]


@pytest.mark.anyio
async def test_final_item_without_delimiter_is_sent_at_exit(server: Serve) -> None:
    settings = child_settings("exit", "0", "a;b;c", delimiters=";")
    async with server(settings) as s, s.connect("/r") as ws:
        assert [await recv(ws) for _ in range(3)] == ["a", "b", "c"]


@pytest.mark.anyio
async def test_json_server_framing_routes_multiline_items(server: Serve) -> None:
    # A pretty-printed object spans lines: with --null it is one item, and its "id" routes it.
    private = json.dumps({"id": 2, "m": "for two"}, indent=1).replace("\n", "\\n")
    settings = printing(f'{{"m": "all"}}\\x00{private}\\x00{{"m": "end"}}\\x00', frame="json", null=True)
    async with server(settings) as s, s.connect("/r") as a:
        assert json.loads(await recv(a)) == {"m": "all"}
        assert json.loads(await recv(a)) == {"m": "end"}  # the item for client 2 went nowhere else
