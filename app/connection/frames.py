"""Frames: a client's websocket byte stream parsed into messages and control frames (RFC 6455 §5).

Pure and sans-I/O: bytes in (`feed`), events out (`next_event`), so it is tested on its own, with
hypothesis, and against python-websockets' parser (tests/test_frames.py). No extension is ever
negotiated, so any reserved bit is a protocol error. A violation raises `Violation` with the close
code to send (1002 protocol, 1007 invalid UTF-8, 1009 too big) — websockets' codes, in its order
of checks, so that both parsers fail the same streams the same way.

Memory: a frame is kept as the chunks it arrived in until it is whole, then joined once, so a
16 MiB message costs linear time however it is cut; `buffered` says how many bytes are held (the
server-wide inbound budget counts it), and a frame announcing more than the message limit is
refused from its header, before its payload arrives.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = frozenset((CONT, TEXT, BINARY))
CONTROL_OPCODES = frozenset((CLOSE, PING, PONG))
PROTOCOL_ERROR, INVALID_DATA, MESSAGE_TOO_BIG = 1002, 1007, 1009

# Close codes a peer may send (RFC 6455 §7.4, as websockets accepts them), besides 3000-4999.
EXTERNAL_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

_H = struct.Struct("!H")
_Q = struct.Struct("!Q")


class Violation(Exception):
    """The peer broke the protocol: close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Frame(NamedTuple):
    opcode: int
    data: bytes
    fin: bool


def parse_close(data: bytes) -> tuple[int, str]:
    """A close frame's (code, reason); 1005 for an empty one. Raises `Violation` if ill-formed."""
    if not data:
        return 1005, ""
    if len(data) == 1:
        raise Violation(PROTOCOL_ERROR, "close frame too short")
    (code,) = _H.unpack_from(data)
    try:
        reason = data[2:].decode()
    except UnicodeDecodeError as error:
        raise Violation(INVALID_DATA, f"{error.reason} at position {error.start}") from None
    if not (code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000):
        raise Violation(PROTOCOL_ERROR, "invalid status code")
    return code, reason


class FrameParser:
    """Client frames, one at a time, with the message size limit applied across fragments."""

    __slots__ = ("_buf", "_chunks", "_fragmented", "_max", "_pending", "_pos")

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._buf = b""  # the bytes being parsed, from _pos on
        self._pos = 0
        self._chunks: list[bytes] = []  # arrived after _buf, not joined yet
        self._pending = 0  # bytes in _chunks
        self._fragmented: int | None = None  # bytes so far of a fragmented message in progress

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos + self._pending

    def feed(self, data: bytes) -> None:
        if self._pos == len(self._buf):
            self._buf, self._pos = data, 0
        else:
            self._chunks.append(data)
            self._pending += len(data)

    def _contiguous(self, size: int) -> bool:
        """Make at least `size` unparsed bytes contiguous in _buf, if that many have arrived."""
        have = len(self._buf) - self._pos
        if have >= size:
            return True
        if have + self._pending < size:
            return False
        self._buf = self._buf[self._pos :] + b"".join(self._chunks)
        self._pos = 0
        self._chunks.clear()
        self._pending = 0
        return True

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more data arrives."""
        if not self._contiguous(2):
            return None
        buf, pos = self._buf, self._pos
        first, second = buf[pos], buf[pos + 1]
        opcode = first & 0x0F
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise Violation(PROTOCOL_ERROR, "invalid opcode")
        if not second & 0x80:
            raise Violation(PROTOCOL_ERROR, "incorrect masking")
        length = second & 0x7F
        header = 6
        if length == 126:
            if not self._contiguous(4):
                return None
            buf, pos = self._buf, self._pos
            (length,) = _H.unpack_from(buf, pos + 2)
            header = 8
        elif length == 127:
            if not self._contiguous(10):
                return None
            buf, pos = self._buf, self._pos
            (length,) = _Q.unpack_from(buf, pos + 2)
            header = 14
        fin = bool(first & 0x80)
        limit = self._max - (self._fragmented or 0)
        if length > limit:
            raise Violation(MESSAGE_TOO_BIG, f"frame with {length} bytes exceeds limit of {limit} bytes")
        # websockets checks these once the payload is in; before it, they are the same answer sooner.
        if first & 0x70:
            raise Violation(PROTOCOL_ERROR, "reserved bits must be 0")
        if opcode in CONTROL_OPCODES:
            if length > 125:
                raise Violation(PROTOCOL_ERROR, "control frame too long")
            if not fin:
                raise Violation(PROTOCOL_ERROR, "fragmented control frame")
        if not self._contiguous(header + length):
            return None
        buf, pos = self._buf, self._pos
        start = pos + header
        stop = start + length
        data = apply_mask(buf[start:stop], buf[start - 4 : start]) if length else b""
        self._pos = stop
        if opcode == TEXT or opcode == BINARY:
            if self._fragmented is not None:
                raise Violation(PROTOCOL_ERROR, "expected a continuation frame")
            if not fin:
                self._fragmented = length
        elif opcode == CONT:
            if self._fragmented is None:
                raise Violation(PROTOCOL_ERROR, "unexpected continuation frame")
            self._fragmented = None if fin else self._fragmented + length
        elif opcode == CLOSE:
            parse_close(data)
            if self._fragmented is not None:
                raise Violation(PROTOCOL_ERROR, "incomplete fragmented message")
        if self._pos == len(self._buf) and not self._chunks:
            self._buf, self._pos = b"", 0  # let go of a large read at once
        return Frame(opcode, data, fin)


class Reader(FrameParser):
    """Whole messages: `next_event` gives (opcode, payload) for TEXT (valid UTF-8, as bytes),
    BINARY, PING, PONG and CLOSE, assembling fragments."""

    __slots__ = ("_parts", "_parts_size", "_text")

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._text = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned: unparsed, and fragments of an unfinished message."""
        return len(self._buf) - self._pos + self._pending + self._parts_size

    def next_event(self) -> tuple[int, bytes] | None:
        while (frame := self.next_frame()) is not None:
            opcode, data, fin = frame
            if opcode == CONT:
                self._parts.append(data)
                self._parts_size += len(data)
                if not fin:
                    continue
                data, self._parts, self._parts_size = b"".join(self._parts), [], 0
                opcode = TEXT if self._text else BINARY
            elif not fin:  # the first fragment of a message
                self._parts, self._parts_size = [data], len(data)
                self._text = opcode == TEXT
                continue
            if opcode == TEXT and not data.isascii():
                try:
                    data.decode()
                except UnicodeDecodeError as error:
                    raise Violation(INVALID_DATA, f"{error.reason} at position {error.start}") from None
            return opcode, data
        return None


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked server control frame (payload at most 125 bytes)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with `code` and `reason` (cut to fit the 125-byte payload, on a character boundary)."""
    if code == 1005:
        return control_frame(CLOSE)
    encoded = reason.encode()[:123]
    encoded = encoded.decode(errors="ignore").encode()
    return control_frame(CLOSE, _H.pack(code) + encoded)
