"""Our client-frame parser (app/connection/frames.py) against python-websockets' sans-I/O parser, on random
frame streams cut at random points (RFC 6455 §5: fragments, control frames, masks, the length encodings
0/125/126/65535/65536, reserved bits and opcodes, bad close frames, the size limit)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from app.connection.frames import FrameParser, Reader, Violation, close_frame, parse_close

LIMIT = 70_000

OPCODES = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB])  # the last two are reserved
LENGTHS = st.one_of(st.integers(0, 130), st.sampled_from([125, 126, 127, 65535, 65536, LIMIT, LIMIT + 1]))


@st.composite
def raw_frame(draw: st.DrawFn) -> bytes:
    opcode = draw(OPCODES)
    fin = draw(st.booleans()) if opcode in (0, 1, 2) else draw(st.sampled_from([True, True, True, False]))
    rsv = draw(st.sampled_from([0, 0, 0, 0, 0x40, 0x20, 0x10]))
    masked = draw(st.sampled_from([True, True, True, True, False]))
    if opcode == 0x8:
        payload = draw(
            st.one_of(
                st.just(b""),
                st.binary(min_size=1, max_size=1),
                st.builds(
                    lambda code, reason: struct.pack("!H", code) + reason,
                    st.sampled_from([1000, 1001, 1002, 1005, 1006, 1011, 1015, 999, 2999, 3000, 4999, 5000]),
                    st.sampled_from([b"", b"bye", b"\xff\xfe", "é".encode()]),
                ),
            )
        )
    else:
        size = draw(LENGTHS)
        payload = os.urandom(size) if size > 200 else draw(st.binary(min_size=size, max_size=size))
        if opcode in (0x1, 0x0) and draw(st.booleans()):
            payload = ("ü" * (size // 2)).encode()[:size]
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if masked else 0
    longhand = draw(st.sampled_from([False] * 7 + [True]))  # a non-minimal length: legal to both parsers
    if longhand:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    elif size < 126:
        head += bytes([mask_bit | size])
    elif size < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if masked:
        mask = os.urandom(4)
        return head + mask + apply_mask(payload, mask)
    return head + payload


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    frames = draw(st.lists(raw_frame(), max_size=8))
    # Mostly well-formed sequences of whole messages, so the parsers get far before an error.
    stream = b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, max(len(stream), 1)), max_size=6)))
    return stream, cuts


def chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def theirs(parts: list[bytes]) -> tuple[list[tuple[int, bytes, bool]], int | None]:
    protocol = ServerProtocol(max_size=LIMIT, state=State.OPEN)
    frames: list[tuple[int, bytes, bool]] = []
    for part in parts:
        protocol.receive_data(part)
        for event in protocol.events_received():
            assert isinstance(event, WsFrame)
            frames.append((int(event.opcode), bytes(event.data), event.fin))
        if protocol.parser_exc is not None:
            assert protocol.close_sent is not None
            return frames, protocol.close_sent.code
        if frames and frames[-1][0] == Opcode.CLOSE:
            return frames, None  # it discards whatever follows a close frame
    return frames, None


def ours(parts: list[bytes]) -> tuple[list[tuple[int, bytes, bool]], int | None, int]:
    parser = FrameParser(LIMIT)
    frames: list[tuple[int, bytes, bool]] = []
    for part in parts:
        parser.feed(part)
        try:
            while (frame := parser.next_frame()) is not None:
                frames.append((frame.opcode, frame.data, frame.fin))
                if frame.opcode == 0x8:
                    return frames, None, parser.buffered
        except Violation as violation:
            return frames, violation.code, parser.buffered
    return frames, None, parser.buffered


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams())
def test_same_frames_and_the_same_close_code_as_websockets(stream_cuts: tuple[bytes, list[int]]) -> None:
    stream, cuts = stream_cuts
    parts = chunks(stream, cuts)
    their_frames, their_code = theirs(parts)
    our_frames, our_code, _ = ours(parts)
    if their_code is None and our_code is not None:
        # We refuse a bad header (reserved bits, a long or fragmented control frame) as soon as it is
        # in; websockets waits for the payload first. Same answer, once the payload is all there.
        assert our_code == 1002 and our_frames == their_frames
        return
    assert our_frames == their_frames
    assert our_code == their_code


@given(streams())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_cutting_the_stream_anywhere_changes_nothing(stream_cuts: tuple[bytes, list[int]]) -> None:
    stream, cuts = stream_cuts
    assert ours(chunks(stream, cuts))[:2] == ours([stream] if stream else [])[:2]


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + apply_mask(payload, mask)


def test_reader_assembles_fragments_and_passes_control_frames_between_them() -> None:
    reader = Reader(LIMIT)
    reader.feed(masked(1, b"he", fin=False) + masked(9, b"ping") + masked(0, b"llo", fin=False) + masked(0, b"!"))
    assert reader.next_event() == (9, b"ping")
    assert reader.next_event() == (1, b"hello!")
    assert reader.next_event() is None
    assert reader.buffered == 0


def test_reader_counts_what_it_holds_and_refuses_a_message_over_the_limit_from_its_header() -> None:
    reader = Reader(1000)
    whole = masked(2, b"x" * 900)
    reader.feed(whole[:300])
    assert reader.next_event() is None and reader.buffered == 300
    reader.feed(whole[300:] + masked(2, b"y" * 600, fin=False)[:8])
    assert reader.next_event() == (2, b"x" * 900)
    reader.feed(masked(0, b"z" * 500)[:8])  # 600 + 500 > 1000: refused before the payload arrives
    reader2 = Reader(1000)
    reader2.feed(masked(2, b"y" * 600, fin=False) + masked(0, b"z" * 500)[:8])
    with pytest.raises(Violation) as refused:
        reader2.next_event()
    assert refused.value.code == 1009


def test_invalid_utf8_text_is_1007_even_split_across_fragments() -> None:
    reader = Reader(LIMIT)
    reader.feed(masked(1, b"\xc3", fin=False) + masked(0, b"\xa9"))
    assert reader.next_event() == (1, "é".encode())  # a character cut between fragments is fine
    reader.feed(masked(1, b"ok \xff"))
    with pytest.raises(Violation) as bad:
        reader.next_event()
    assert bad.value.code == 1007


def test_a_large_message_in_small_pieces_is_joined_once() -> None:
    reader = Reader(16 * 1024 * 1024)
    data = masked(2, os.urandom(4 * 1024 * 1024))
    for i in range(0, len(data), 1000):
        reader.feed(data[i : i + 1000])
        event = reader.next_event()
    assert event is not None and len(event[1]) == 4 * 1024 * 1024
    assert reader.buffered == 0


@pytest.mark.parametrize(
    ("code", "reason", "payload"),
    [(1000, "", b"\x03\xe8"), (1001, "bye", b"\x03\xe9bye"), (1005, "", b"")],
)
def test_close_frames(code: int, reason: str, payload: bytes) -> None:
    assert close_frame(code, reason) == bytes([0x88, len(payload)]) + payload
    assert parse_close(payload) == (code, reason)


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = close_frame(1011, "é" * 100)
    assert len(frame) <= 2 + 125
    frame[4:].decode()  # still valid UTF-8
