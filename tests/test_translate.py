"""The output decoder on its own (app/translate.py): a child's byte stream cut at arbitrary points gives the
same messages, to the same targets, in the same order, as the stream read whole — in every mode."""

from __future__ import annotations

import json
import sys
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.batch import TEXT
from app.framing import BINARY as GW_BINARY
from app.framing import TEXT as GW_TEXT
from app.framing import encode_frame
from app.settings import Settings
from app.translate import OutputDecoder

LIMIT = 1024


def decoder(**values: object) -> OutputDecoder:
    return OutputDecoder(Settings.model_validate({"cmd": sys.executable, "max_message_size": LIMIT, **values}))


def flatten(decoder: OutputDecoder, reads: list[bytes]) -> list[tuple[int | None, int, bytes]]:
    out: list[tuple[int | None, int, bytes]] = []
    for read in reads:
        for target, batch in decoder.feed(read):
            out.extend((target, batch.opcode, payload) for payload in batch.payloads)
    for target, batch in decoder.close():
        out.extend((target, batch.opcode, payload) for payload in batch.payloads)
    return out


@st.composite
def cut(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in pairwise([0, *points, len(stream)])]


LINES = st.lists(
    st.one_of(
        st.text(max_size=40).map(str.encode),
        st.binary(max_size=40),  # not UTF-8: replaced, wherever the cut falls
        st.just(b"x" * (LIMIT + 10)),  # over the limit: cut in pieces
    ),
    max_size=12,
).map(lambda lines: b"\n".join(line.replace(b"\n", b" ") for line in lines))

JSON_LINES = st.lists(
    st.one_of(
        st.builds(lambda i, s: json.dumps({"id": i, "say": s}).encode(), st.integers(0, 5), st.text(max_size=10)),
        st.builds(lambda s: json.dumps({"say": s}).encode(), st.text(max_size=10)),
        st.just(b'{"\\u0069d": 3}'),  # an id spelled with an escape
        st.just(b"not json"),
    ),
    max_size=10,
).map(lambda lines: b"\n".join(lines) + b"\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), LINES, st.sampled_from([{}, {"binary": True}]))
def test_text_and_binary_output_cut_anywhere(data: st.DataObject, stream: bytes, mode: dict[str, object]) -> None:
    whole = flatten(decoder(**mode), [stream])
    reads = data.draw(cut(stream))
    if mode.get("binary"):
        # Binary mode forwards reads as they come: the bytes are the same, the message bounds follow the reads.
        assert b"".join(p for _, _, p in flatten(decoder(**mode), reads)) == b"".join(p for _, _, p in whole)
    else:
        assert flatten(decoder(**mode), reads) == whole
        assert all(opcode == TEXT for _, opcode, _ in whole)
        assert all(payload.decode() is not None for _, _, payload in whole)  # valid UTF-8, always


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), JSON_LINES)
def test_json_routing_cut_anywhere(data: st.DataObject, stream: bytes) -> None:
    whole = flatten(decoder(frame="json"), [stream])
    assert flatten(decoder(frame="json"), data.draw(cut(stream))) == whole


FRAMES = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from([GW_TEXT, GW_BINARY, 7]), st.binary(max_size=50)), max_size=10
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), FRAMES)
def test_gwsocket_frames_cut_anywhere(data: st.DataObject, frames: list[tuple[int, int, bytes]]) -> None:
    stream = b"".join(encode_frame(client, kind, payload) for client, kind, payload in frames)
    whole = flatten(decoder(frame="binary"), [stream])
    assert flatten(decoder(frame="binary"), data.draw(cut(stream))) == whole
    assert len(whole) == sum(1 for _, kind, _ in frames if kind != 7)  # unknown types skipped, nothing else
