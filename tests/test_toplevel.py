"""json framing of big messages (app.toplevel): the same properties as the full parse, without building
the message, and no message, however built, holding the loop for long (issue 10, item 5; SPEC §5, §12)."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from app.framing import FULL_PARSE_MAX, route, stamp_id
from app.toplevel import route_top, stamp_top
from tests.conftest import TIMEOUT, UNIT, recv_text
from tests.test_framing import JSON_OBJECTS, JSON_VALUES, U32
from tests.test_process import run, scalesocket

SETTINGS = settings(max_examples=300, deadline=None, database=None)
PAD = "x" * FULL_PARSE_MAX  # a member that puts any message over the full-parse size
ID_SPELLINGS = ["id", "\\u0069d", "i\\u0064", "\\u0069\\u0064"]


def top_members(text: bytes) -> list[tuple[str, Any]]:
    members: list[list[tuple[str, Any]]] = []

    def hook(items: list[tuple[str, Any]]) -> dict[str, Any]:
        members.append(items)
        return dict(items)

    json.loads(text, object_pairs_hook=hook)
    return members[-1]  # the outermost object is completed last


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, dict[str, Any], int]:
    """A JSON object as a client might write it — any layout, "id" members in any spelling, any number
    of times — and the object the child must see once the server has stamped it (without the id)."""
    obj = draw(JSON_OBJECTS.map(lambda o: {k: v for k, v in o.items() if k != "id"}))
    members = [(json.dumps(k, ensure_ascii=draw(st.booleans())), json.dumps(v)) for k, v in obj.items()]
    for _ in range(draw(st.integers(0, 3))):
        spoof = '"' + draw(st.sampled_from(ID_SPELLINGS)) + '"'
        value = draw(st.sampled_from(["1", "10" + "0" * 1000, '"me"', "null", '[1, {"id": 2}]', "{}", "-1"]))
        members.insert(draw(st.integers(0, len(members))), (spoof, value))
    space = draw(st.sampled_from(["", " ", "\n", "\t", " \r\n  "]))
    text = "{" + space + ("," + space).join(f"{k}{space}:{space}{v}" for k, v in members) + space + "}"
    return text, obj, len(members)


@SETTINGS
@given(messages(), U32)
def test_stamp_top_sets_exactly_one_id_and_keeps_the_rest(
    message: tuple[str, dict[str, Any], int], client_id: int
) -> None:
    text, obj, _ = message
    stamped = stamp_top(text.encode(), client_id)
    assert stamped is not None, text
    assert b"\n" not in stamped
    members = top_members(stamped)
    assert [v for k, v in members if k == "id"] == [client_id], stamped  # one "id", ours: no spoofing
    assert json.loads(stamped) == {**obj, "id": client_id}
    assert route_top(stamped) == route(stamped) == client_id


@SETTINGS
@given(messages(), U32)
def test_a_big_message_is_stamped_like_a_small_one(message: tuple[str, dict[str, Any], int], client_id: int) -> None:
    text, _, members = message
    big = text.rstrip()[:-1] + (', "pad": "' if members else '"pad": "') + PAD + '"}'
    small_result, big_result = stamp_id(text, client_id), stamp_id(big, client_id)
    assert small_result is not None and big_result is not None
    assert json.loads(big_result) == {**json.loads(small_result), "pad": PAD}


@SETTINGS
@given(JSON_VALUES, st.sampled_from(ID_SPELLINGS), st.booleans())
def test_route_top_agrees_with_the_full_parse(value: Any, key: str, pad: bool) -> None:
    line = ('{"' + key + '": ' + json.dumps(value) + (', "pad": "' + PAD + '"' if pad else "") + "}").encode()
    assert route_top(line) == route(line)  # over FULL_PARSE_MAX route() is route_top(); under, the full parse
    expected = value if type(value) is int and value >= 0 else None
    assert route_top(line) == expected


@SETTINGS
@given(st.binary(max_size=200))
def test_route_top_and_stamp_top_never_raise(data: bytes) -> None:
    target = route_top(data)
    assert target is None or target >= 0
    stamped = stamp_top(data, 1)
    assert stamped is None or json.loads(stamped)["id"] == 1


def padded(member: str) -> bytes:
    return ('{"pad": "' + PAD + '", ' + member + "}").encode()


@pytest.mark.parametrize(
    ("line", "target"),
    [
        (padded('"id": 3'), 3),
        (padded('"id": -0'), 0),
        (padded('"id": 1, "id": 2'), 2),  # duplicate keys: the last wins, as in json.loads
        (padded('"\\u0069d": 4'), 4),
        (padded('"i\\u0064": 4'), 4),
        (padded('"id": 4294967296'), 4294967296),
        (padded('"x": "\\ud800", "id": 5'), 5),  # a lone surrogate does not stop routing
        (padded('"id": 1.0'), None),
        (padded('"id": 1e0'), None),
        (padded('"id": true'), None),
        (padded('"id": "7"'), None),
        (padded('"id": -1'), None),
        (padded('"id": null'), None),
        (padded('"a": {"id": 1}'), None),
        (padded('"id": 1, "x": NaN'), None),
        (padded('"id": 1, "x": "BAD"').replace(b"BAD", b"\xff"), None),
        (padded('"id": 1') + b" trailing", None),
        (b'{"id": 1, "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),  # nesting past the limit
        (b'{"id": 1, "x": "' + "é".encode() + b"\xff" * FULL_PARSE_MAX + b'"}', None),  # invalid UTF-8
        (padded('"id": ' + "1" * 5000), None),  # more digits than int() reads: broadcast, as before
    ],
)
def test_route_of_big_lines(line: bytes, target: int | None) -> None:
    assert len(line) > FULL_PARSE_MAX
    assert route(line) == target


@pytest.mark.parametrize(
    "message",
    [
        padded('"id": ' + "1" + "0" * 1000),  # SPEC §12: the client's id is overwritten, however big
        padded('"id": 1, "id": 2'),
        padded('"\\u0069d": 99'),
        padded('"id": {"id": 1}'),
    ],
)
def test_big_client_ids_are_overwritten(message: bytes) -> None:
    stamped = stamp_id(message, 7)
    assert stamped is not None
    assert [v for k, v in top_members(stamped) if k == "id"] == [7]


@pytest.mark.parametrize(
    "message",
    [
        padded('"a": NaN'),
        padded('"a": Infinity'),
        padded('"a": 1') + b" x",
        padded('"a": 1') + b'{"b": 2}',
        b"[" + PAD.encode() + b"]",
        b'"' + PAD.encode() + b'"',
        b'{"a": ' * 100_000,
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        padded('"a": "BAD"').replace(b"BAD", b"\xff"),
        padded('"a": 1').decode().encode("utf-16"),
    ],
)
def test_big_non_objects_are_refused(message: bytes) -> None:
    assert len(message) > FULL_PARSE_MAX
    assert stamp_id(message, 5) is None


HOSTILE = {  # messages of 15-18 MiB that cost a full parse seconds
    "5.5 M empty arrays": b'{"a":[' + b"[]," * 5_500_000 + b"[]]}",
    "5.5 M empty objects": b'{"a":[' + b"{}," * 5_500_000 + b"{}]}",
    "1.5 M top-level keys": b"{" + b",".join(b'"k%d":1' % i for i in range(1_500_000)) + b"}",
    "1.5 M top-level keys and an id": b'{"id":1,' + b",".join(b'"k%d":1' % i for i in range(1_500_000)) + b"}",
    "2.3 M numbers": b'{"id":1,"a":[' + b"123456," * 2_300_000 + b"1]}",
}


def timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


@pytest.mark.parametrize("name", list(HOSTILE))
def test_no_big_message_holds_the_loop_for_long(name: str) -> None:
    message = HOSTILE[name]
    stamp, routing = timed(lambda: stamp_id(message, 3)), timed(lambda: route(message))
    # Unloaded 60-190 ms, against 0.4-1.6 s for json.loads (docs/faults.md); loose for a busy machine.
    figures = f"{name} ({len(message) / 2**20:.1f} MiB): stamp {stamp * 1000:.0f} ms, route {routing * 1000:.0f} ms"
    assert stamp < 2.0 * UNIT and routing < 1.0 * UNIT, figures
    stamped = stamp_id(message, 3)
    assert stamped is not None and stamped.endswith(b',"id":3}')


def test_the_worst_message_for_a_full_parse_is_cheap_here() -> None:
    message = HOSTILE["5.5 M empty arrays"]
    ours, full = timed(lambda: stamp_id(message, 3)), timed(lambda: json.loads(message))
    assert ours * 5 < full, f"stamp_id {ours * 1000:.0f} ms, json.loads {full * 1000:.0f} ms"


@pytest.mark.anyio
async def test_health_keeps_answering_while_clients_send_hostile_json() -> None:
    """Both directions through a real server: the client's message is stamped, the child echoes it,
    and the echo is routed back by its id — while /health is asked every 20 ms."""
    message = HOSTILE["5.5 M empty arrays"].decode()
    async with run(scalesocket("--frame=json", mode="echo")) as proc:
        async with connect(proc.url + "/r", max_size=None, open_timeout=TIMEOUT) as ws:
            assert (await recv_text(ws)).startswith("ready ")
            latencies: list[float] = []
            async with anyio.create_task_group() as tg:

                async def probe() -> None:
                    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                        while True:
                            started = time.monotonic()
                            assert (await http.get(f"http://127.0.0.1:{proc.port}/health")).status_code == 200
                            latencies.append(time.monotonic() - started)
                            await anyio.sleep(0.02)

                tg.start_soon(probe)
                for _ in range(3):
                    await ws.send(message)
                    echoed = await recv_text(ws, within=4 * TIMEOUT)
                    assert echoed.endswith(',"id":1}') and len(echoed) == len(message) + len(',"id":1')
                tg.cancel_scope.cancel()
    worst, median = max(latencies), statistics.median(latencies)
    figures = f"/health worst {worst * 1000:.0f} ms, median {median * 1000:.0f} ms over {len(latencies)} checks"
    # Before: each message held the loop about 2 s (parsed whole twice: stamped, then routed).
    assert worst < 1.0 * UNIT and median < 0.1 * UNIT, figures
