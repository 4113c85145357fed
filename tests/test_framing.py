"""Pure tests of app.framing: line splitting, the gwsocket codec and json stamp/route (SPEC §4, §5, §12)."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import framing
from app.framing import (
    BINARY,
    HEADER,
    TEXT,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    LineSplitter,
    decode_frames,
    encode_frame,
    route,
    stamp_id,
)

SETTINGS = settings(max_examples=200, deadline=None, database=None)
KiB = 1024
MiB = 1024 * KiB
U32 = st.integers(0, 2**32 - 1)


@st.composite
def chunked(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    """A byte stream and an arbitrary cut of it into reads (empty reads included)."""
    stream = draw(streams)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    return stream, [stream[a:b] for a, b in pairwise(bounds)]


# Streams rich in newlines, carriage returns and long runs, plus plain random bytes.
STREAMS = st.one_of(
    st.lists(st.sampled_from([b"\n", b"\r", b"a", b"bc", b"\xff", b"defghijklmnop"]), max_size=60).map(b"".join),
    st.binary(max_size=200),
)


def split_all(stream: bytes, max_size: int) -> list[bytes]:
    """Reference: split the whole stream at once, cutting long lines (and the tail) into max_size pieces."""
    *lines, tail = stream.split(b"\n")
    out: list[bytes] = []
    for line in [*lines, tail] if tail else lines:
        if len(line) <= max_size:
            out.append(line)
        else:
            out += [line[i : i + max_size] for i in range(0, len(line), max_size)]
    return out


def run_splitter(splitter: LineSplitter, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.close()


# --- LineSplitter ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([], []),
        ([b""], []),
        ([b"a\n"], [b"a"]),
        ([b"a\nb\n"], [b"a", b"b"]),
        ([b"a", b"b", b"c\n"], [b"abc"]),
        ([b"a\nb", b"c\nd"], [b"a", b"bc", b"d"]),  # final line without newline: sent at close
        ([b"a\r\n"], [b"a\r"]),  # \r is kept
        ([b"\n\n"], [b"", b""]),  # empty lines are lines
        ([b"a", b"\n"], [b"a"]),
        ([b"a", b"", b"\n"], [b"a"]),
        ([b"\xff\xfe\n"], [b"\xff\xfe"]),  # bytes, not text: invalid UTF-8 is the caller's concern
    ],
)
def test_line_splitter(chunks: list[bytes], lines: list[bytes]) -> None:
    assert run_splitter(LineSplitter(100), chunks) == lines


def test_line_splitter_feed_and_close() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"one\ntw") == [b"one"]
    assert splitter.feed(b"o") == []
    assert splitter.close() == [b"two"]
    assert splitter.close() == []  # reset: nothing left
    assert splitter.feed(b"three\n") == [b"three"]
    assert splitter.close() == []


@pytest.mark.parametrize(
    ("chunks", "lines", "oversized"),
    [
        ([b"abcd\n"], [b"abcd"], 0),  # exactly the limit: whole
        ([b"abcde\n"], [b"abcd", b"e"], 1),
        ([b"abcdefgh\n"], [b"abcd", b"efgh"], 1),  # no empty last piece
        ([b"abcdefghij\n"], [b"abcd", b"efgh", b"ij"], 1),
        ([b"ab", b"cd", b"ef", b"\n"], [b"abcd", b"ef"], 1),
        ([b"abcdefghij"], [b"abcd", b"efgh", b"ij"], 1),  # oversized tail at close
        ([b"abcdefgh"], [b"abcd", b"efgh"], 1),
        ([b"abcdefghij\nxy\nabcdef\n"], [b"abcd", b"efgh", b"ij", b"xy", b"abcd", b"ef"], 2),
        ([b"x\nabcdefghij\n"], [b"x", b"abcd", b"efgh", b"ij"], 1),
        ([b"abc", b"defghij\nxy\n"], [b"abcd", b"efgh", b"ij", b"xy"], 1),
    ],
)
def test_line_splitter_cuts_long_lines(chunks: list[bytes], lines: list[bytes], oversized: int) -> None:
    """SPEC §12: a line over the limit is sent in pieces of the limit's size, nothing lost, counted for a warning."""
    splitter = LineSplitter(4)
    assert run_splitter(splitter, chunks) == lines
    assert splitter.oversized == oversized


def test_line_splitter_emits_pieces_before_the_newline() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcd") == []  # may still end here: held whole
    assert splitter.oversized == 0
    assert splitter.feed(b"e") == [b"abcd"]
    assert splitter.oversized == 1
    assert splitter.feed(b"fghijkl") == [b"efgh"]
    assert splitter.oversized == 1  # counted once per line
    assert splitter.feed(b"m\nn\n") == [b"ijkl", b"m", b"n"]
    assert splitter.oversized == 1


@pytest.mark.parametrize("chunk_size", [4 * KiB, 64 * KiB, 1 * MiB])
@pytest.mark.parametrize("length", [64 * KiB + 1, 3 * MiB])
def test_line_splitter_long_line_whole(chunk_size: int, length: int) -> None:
    """SPEC §12: a child line longer than 64 KiB is delivered whole (up to the limit)."""
    line = bytes(range(256)).replace(b"\n", b"") * (length // 255) + b"x" * (length % 255)
    stream = b"before\n" + line + b"\nafter\n"
    splitter = LineSplitter(16 * MiB)
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    assert run_splitter(splitter, chunks) == [b"before", line, b"after"]
    assert splitter.oversized == 0


def test_line_splitter_16_mib_limit() -> None:
    """At the default limit: a 16 MiB line is whole; one byte more and it is cut, pieces sent before the newline."""
    limit = 16 * MiB
    splitter = LineSplitter(limit)
    block = b"y" * (64 * KiB)
    out: list[bytes] = []
    for _ in range(limit // len(block)):
        out += splitter.feed(block)
    assert out == []
    assert splitter.feed(b"\n") == [b"y" * limit]
    out = []
    for _ in range(limit // len(block)):
        out += splitter.feed(block)
    assert splitter.feed(b"z") == [b"y" * limit]
    assert splitter.feed(b"\n") == [b"z"]
    assert splitter.oversized == 1


def test_line_splitter_rejects_bad_limit() -> None:
    with pytest.raises(ValueError, match="max_size"):
        LineSplitter(0)


@SETTINGS
@given(chunked(STREAMS), st.integers(1, 20))
def test_line_splitter_cut_anywhere(stream_chunks: tuple[bytes, list[bytes]], max_size: int) -> None:
    """Where the stream is cut into reads never changes the lines, nor the oversized count."""
    stream, chunks = stream_chunks
    splitter = LineSplitter(max_size)
    out = run_splitter(splitter, chunks)
    assert out == split_all(stream, max_size)
    assert b"".join(out) == stream.replace(b"\n", b"")  # nothing lost
    assert all(len(piece) <= max_size for piece in out)
    *lines, tail = stream.split(b"\n")
    assert splitter.oversized == sum(len(line) > max_size for line in [*lines, tail])


@SETTINGS
@given(chunked(STREAMS))
def test_line_splitter_round_trip(stream_chunks: tuple[bytes, list[bytes]]) -> None:
    """With no line over the limit, the lines joined with their newlines give the input back."""
    stream, chunks = stream_chunks
    out = run_splitter(LineSplitter(max(len(stream), 1)), chunks)
    if stream.endswith(b"\n"):
        assert b"".join(line + b"\n" for line in out) == stream
    else:
        assert b"\n".join(out) == stream


# --- gwsocket strict mode -----------------------------------------------------------------------------------


def test_encode_frame_layout() -> None:
    assert HEADER.size == 12
    assert encode_frame(1, TEXT, b"hi") == b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x02hi"
    assert encode_frame(2**32 - 1, BINARY, b"") == b"\xff\xff\xff\xff\x00\x00\x00\x02\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("buf", "frames", "rest"),
    [
        (b"", [], b""),
        (b"\x00\x00\x00", [], b"\x00\x00\x00"),  # partial header
        (encode_frame(0, TEXT, b"hello")[:-1], [], encode_frame(0, TEXT, b"hello")[:-1]),  # partial payload
        (encode_frame(0, TEXT, b"hello"), [Frame(0, TEXT, b"hello")], b""),
        (encode_frame(3, BINARY, b""), [Frame(3, BINARY, b"")], b""),
        (
            encode_frame(0, TEXT, b"a") + encode_frame(5, BINARY, b"\x00\n") + b"\x00",
            [Frame(0, TEXT, b"a"), Frame(5, BINARY, b"\x00\n")],
            b"\x00",
        ),
        # SPEC §12: an unknown frame type is returned as it is, for the caller to skip with a warning.
        (encode_frame(1, 7, b"?") + encode_frame(1, TEXT, b"ok"), [Frame(1, 7, b"?"), Frame(1, TEXT, b"ok")], b""),
        (encode_frame(1, 0, b""), [Frame(1, 0, b"")], b""),
    ],
)
def test_decode_frames(buf: bytes, frames: list[Frame], rest: bytes) -> None:
    assert decode_frames(buf, 100) == (frames, rest)


def test_decode_frames_at_the_limit() -> None:
    assert decode_frames(encode_frame(0, TEXT, b"x" * 8), 8) == ([Frame(0, TEXT, b"x" * 8)], b"")


@pytest.mark.parametrize("with_payload", [True, False])
def test_decode_frames_too_large(with_payload: bool) -> None:
    """SPEC §12: a frame longer than the limit is an error as soon as its header is seen, payload or not."""
    first = encode_frame(0, TEXT, b"first")
    big = encode_frame(1, BINARY, b"x" * 9)
    buf = first + (big if with_payload else big[:12])
    with pytest.raises(FrameTooLarge) as caught:
        decode_frames(buf, 8)
    assert isinstance(caught.value, ValueError)
    assert caught.value.length == 9
    assert caught.value.max_size == 8
    assert caught.value.frames == [Frame(0, TEXT, b"first")]  # frames before it can still be delivered


def test_frame_decoder_spanning_feeds() -> None:
    stream = encode_frame(0, TEXT, b"hello") + encode_frame(2, BINARY, b"\x01\x02")
    decoder = FrameDecoder(100)
    out: list[Frame] = []
    pendings: list[int] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
        pendings.append(decoder.pending)
    assert out == [Frame(0, TEXT, b"hello"), Frame(2, BINARY, b"\x01\x02")]
    assert decoder.pending == 0
    assert pendings[:3] == [1, 2, 3]
    assert pendings[16] == 0  # the first frame (12 + 5 bytes) completed


def test_frame_decoder_many_frames_in_one_feed() -> None:
    frames = [Frame(i % 3, TEXT, str(i).encode()) for i in range(1000)]
    decoder = FrameDecoder(100)
    assert decoder.feed(b"".join(encode_frame(f.client_id, f.type, f.payload) for f in frames)) == frames
    assert decoder.pending == 0


@pytest.mark.parametrize("cut", [1, 11, 12, 13, 20])
def test_frame_decoder_truncated(cut: int) -> None:
    """SPEC §12: a frame truncated at the child's exit shows as pending bytes at EOF."""
    decoder = FrameDecoder(100)
    assert decoder.feed(encode_frame(0, TEXT, b"whole") + encode_frame(0, TEXT, b"x" * 10)[:cut]) == [
        Frame(0, TEXT, b"whole")
    ]
    assert decoder.pending == cut


def test_frame_decoder_large_frame_in_small_chunks() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_frame(9, BINARY, payload)
    decoder = FrameDecoder(16 * MiB)
    out: list[Frame] = []
    for i in range(0, len(stream), 1000):
        out += decoder.feed(stream[i : i + 1000])
    assert out == [Frame(9, BINARY, payload)]
    assert decoder.pending == 0


def test_frame_decoder_too_large_is_sticky() -> None:
    decoder = FrameDecoder(8)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(encode_frame(0, TEXT, b"ok") + encode_frame(0, TEXT, b"x" * 9)[:14])
    assert caught.value.frames == [Frame(0, TEXT, b"ok")]
    assert decoder.pending == 14
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"")


FRAMES = st.lists(st.builds(Frame, U32, st.sampled_from([TEXT, BINARY, 0, 3, 2**32 - 1]), st.binary(max_size=40)))


@st.composite
def framed_streams(draw: st.DrawFn) -> tuple[list[Frame], list[bytes]]:
    frames = draw(FRAMES)
    _, chunks = draw(chunked(st.just(b"".join(encode_frame(f.client_id, f.type, f.payload) for f in frames))))
    return frames, chunks


@SETTINGS
@given(framed_streams())
def test_gwsocket_round_trip(frames_chunks: tuple[list[Frame], list[bytes]]) -> None:
    """encode → decode gives the frames back, however the stream is cut into reads."""
    frames, chunks = frames_chunks
    decoder = FrameDecoder(40)
    out: list[Frame] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert out == frames
    assert decoder.pending == 0
    assert decode_frames(b"".join(chunks), 40) == (frames, b"")


@SETTINGS
@given(chunked(st.binary(max_size=300)), st.integers(0, 64))
def test_frame_decoder_garbage(stream_chunks: tuple[bytes, list[bytes]], max_size: int) -> None:
    """Garbage never raises anything but FrameTooLarge, and decodes as decode_frames does on the whole."""
    stream, chunks = stream_chunks
    decoder = FrameDecoder(max_size)
    out: list[Frame] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
    except FrameTooLarge as error:
        out += error.frames
        with pytest.raises(FrameTooLarge) as whole:
            decode_frames(stream, max_size)
        assert whole.value.frames == out
        assert whole.value.length == error.length > max_size
        return
    frames, rest = decode_frames(stream, max_size)
    assert out == frames
    assert decoder.pending == len(rest)
    assert all(len(frame.payload) <= max_size for frame in out)


# --- json ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "stamped"),
    [
        ('{"a":1}', b'{"a":1,"id":5}'),
        (' { "a" : [1, 2] }\n', b'{"a":[1,2],"id":5}'),  # compact, no trailing newline
        ('{"id":99,"a":1}', b'{"id":5,"a":1}'),  # SPEC §12: a client-supplied "id" is overwritten
        ('{"id":"me","a":1}', b'{"id":5,"a":1}'),
        ('{"id":null}', b'{"id":5}'),
        ("{}", b'{"id":5}'),
        ('{"m":"é ☃ \\u00e9"}', '{"m":"é ☃ é","id":5}'.encode()),  # UTF-8, not \\u escapes
        (b'{"m":"\xc3\xa9"}', '{"m":"é","id":5}'.encode()),  # bytes in
        ('{"s":"\\ud800"}', b'{"s":"\\ud800","id":5}'),  # a lone surrogate stays escaped
        ('{"f":1.5,"e":1e3,"t":true,"n":null}', b'{"f":1.5,"e":1000.0,"t":true,"n":null,"id":5}'),
    ],
)
def test_stamp_id(message: str | bytes, stamped: bytes) -> None:
    assert stamp_id(message, 5) == stamped


@pytest.mark.parametrize(
    "message",
    [
        # SPEC §12: not JSON, or not an object: dropped by the caller.
        "[1]",
        '"s"',
        "1",
        "null",
        "true",
        "",
        " ",
        "not json",
        "{",
        '{"a":1} x',
        '{"a":1}{"b":2}',
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":-Infinity}',
        '{"a":1e400}',  # out of range for a float: no JSON to write it back
        "{'a':1}",
        "\ufeff{}",
        "[" * 100_000,
        '{"a":' * 100_000,
        b"\xff",
        b'{"a":"\xff"}',  # invalid UTF-8
        '{"a":1}'.encode("utf-16"),  # json.loads would guess UTF-16; the wire says UTF-8
        '{"a":1}'.encode("utf-32-be"),
    ],
)
def test_stamp_id_rejects(message: str | bytes) -> None:
    assert stamp_id(message, 5) is None


@pytest.mark.parametrize(
    ("line", "target"),
    [
        (b'{"id":3}', 3),
        (b'{"id":0}', 0),
        (b'{"id":-0}', 0),
        (b' {"x":[1,{"id":9}], "id": 12}\r', 12),  # JSON whitespace includes \r
        (b'{"id":1,"id":2}', 2),  # duplicate keys: the last wins, as in json.loads
        (b'{"\\u0069d":4}', 4),  # "id" spelled with an escape still routes
        (b'{"id":4294967296}', 4294967296),  # no such client: the caller drops it
        (b'{"id":1,"m":"\xc3\xa9"}', 1),
    ],
)
def test_route_to_client(line: bytes, target: int) -> None:
    assert route(line) == target


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"hello",
        b"{}",
        b'{"x":1}',
        b'{"id":null}',
        b'{"id":-1}',
        b'{"id":1.0}',
        b'{"id":1e0}',
        b'{"id":1E2}',
        b'{"id":true}',
        b'{"id":false}',
        b'{"id":"7"}',
        b'{"id":[1]}',
        b'{"id":{"id":1}}',
        b'{"a":{"id":1}}',  # only a top-level "id" routes
        b'[{"id":1}]',
        b'"id"',
        b'{"id":1',
        b'{"id":1} trailing',
        b'{"id":NaN}',
        b'{"id":Infinity}',
        b'{"id":1,"x":NaN}',
        b'{"ID":1}',
        b'{"id" :1, "x": "\xff"}',  # SPEC §12: invalid UTF-8 is broadcast (with replacement characters)
        b'\xff{"id":1}',
        b"\\u0000",
        b'{"id":' * 100_000,
    ],
)
def test_route_broadcast(line: bytes) -> None:
    assert route(line) is None


def test_route_skips_parsing_lines_without_id(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(text: str | bytes) -> Any:
        raise AssertionError("parsed")

    monkeypatch.setattr(framing, "_parse", fail)
    assert route(b'{"x":1,"idx":2,"i":"d"}') is None
    with pytest.raises(AssertionError):
        route(b'{"id":1}')


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(st.text(), JSON_VALUES, max_size=6)


@SETTINGS
@given(JSON_OBJECTS, U32, st.booleans(), st.booleans())
def test_stamp_then_route(obj: dict[str, Any], client_id: int, as_bytes: bool, ascii_only: bool) -> None:
    """A stamped object routes back to the stamped id, and holds the client's object with that id."""
    text = json.dumps(obj, ensure_ascii=ascii_only)
    stamped = stamp_id(text.encode() if as_bytes else text, client_id)
    assert stamped is not None
    assert not stamped.endswith(b"\n")
    assert route(stamped) == client_id
    assert json.loads(stamped) == {**obj, "id": client_id}


@SETTINGS
@given(JSON_VALUES.filter(lambda value: not isinstance(value, dict)), U32)
def test_stamp_rejects_non_objects(value: Any, client_id: int) -> None:
    assert stamp_id(json.dumps(value), client_id) is None


@SETTINGS
@given(st.binary(max_size=100))
def test_route_never_raises(line: bytes) -> None:
    target = route(line)
    assert target is None or target >= 0


def test_json_routing_sees_an_id_split_across_reads() -> None:
    from app.translate import OutputDecoder
    from tests.conftest import child_settings

    decoder = OutputDecoder(child_settings("echo", frame="json"))
    first = decoder.feed(b'{"m": 1}\n{"i')  # the key "id" is cut in two by the pipe
    assert [(target, batch.payloads) for target, batch in first] == [(None, [b'{"m": 1}'])]
    deliveries = decoder.feed(b'd": 3}\n{"x": 2}\n')
    assert [(target, batch.payloads) for target, batch in deliveries] == [(3, [b'{"id": 3}']), (None, [b'{"x": 2}'])]


def test_json_routing_of_a_line_begun_in_an_earlier_read() -> None:
    from app.translate import OutputDecoder
    from tests.conftest import child_settings

    decoder = OutputDecoder(child_settings("echo", frame="json"))
    assert decoder.feed(b'{"id": 2, "a') == []
    deliveries = decoder.feed(b'": 1}\n1\n2\n')  # the rest of the read is plain: one broadcast batch
    assert [(target, batch.payloads) for target, batch in deliveries] == [
        (2, [b'{"id": 2, "a": 1}']),
        (None, [b"1", b"2"]),
    ]
