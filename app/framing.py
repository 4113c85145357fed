"""Framing: turning the child's byte stream into messages, and client messages into the child's input.

Pure and sans-I/O (bytes in, messages out; no awaits, no logging), so it runs unchanged on the hot path and
under hypothesis. It owns three codecs from SPEC §4–§5:

- ``LineSplitter``: text mode, the child's stdout split on ``\\n`` with lines over the size limit cut into pieces.
- gwsocket strict mode (``--frame=binary``): ``encode_frame`` and ``decode_frames`` / ``FrameDecoder``.
- json mode (``--frame=json``): ``stamp_id`` for client→child messages, ``route`` for child→client lines;
  messages over ``FULL_PARSE_MAX`` are handed to app.toplevel, which reads only their top level.

What to do with the results — logging oversized lines, skipping unknown frame types, closing clients with 1011
on ``FrameTooLarge`` or on a truncated frame at EOF, dropping unroutable lines — is the caller's business.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple, NoReturn

from app.toplevel import route_top, stamp_top

__all__ = [
    "BINARY",
    "FULL_PARSE_MAX",
    "HEADER",
    "TEXT",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "LineSplitter",
    "decode_frames",
    "encode_frame",
    "route",
    "stamp_id",
]


class LineSplitter:
    """Split a byte stream on ``\\n`` into lines (newline removed, ``\\r`` kept), cutting lines over ``max_size``."""

    __slots__ = ("_max", "_parts", "_pending", "_cut", "_sep", "oversized")

    def __init__(self, max_size: int, sep: bytes = b"\n") -> None:
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self._max = max_size
        self._sep = sep  # one byte: --delimiters (app/delimiters.py) maps all of its bytes onto one
        # The unterminated line so far, as the chunks it arrived in: joined only once a newline (or more than
        # max_size bytes) arrives, so a 16 MiB line costs linear time however it is chunked.
        self._parts: list[bytes] = []
        self._pending = 0
        self._cut = False  # the pending line has already been emitted in part (and counted in oversized)
        self.oversized = 0  # lines longer than max_size so far, each counted once (for the caller's warning)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the lines completed by ``chunk``, and any max_size pieces of a line that is too long."""
        lines = chunk.split(self._sep)
        tail = lines.pop()
        if not lines:  # no newline in this chunk
            if tail:
                self._parts.append(tail)
                self._pending += len(tail)
                if self._pending > self._max:
                    return self._cut_pending()
            return []
        if self._pending + len(chunk) <= self._max:
            # Fast path (the usual case): no line here can be over the limit, so no per-line length checks.
            if self._parts:
                self._parts.append(lines[0])
                lines[0] = b"".join(self._parts)
                self._parts = []
            self._cut = False
        else:
            lines = self._split_long(lines)
        if tail:
            self._parts.append(tail)
            self._pending = len(tail)
            if self._pending > self._max:
                lines += self._cut_pending()
        else:
            self._pending = 0
        return lines

    def close(self) -> list[bytes]:
        """Return the final unterminated line (empty list if none) and reset for a new stream."""
        tail = b"".join(self._parts)
        self._parts = []
        self._pending = 0
        self._cut = False
        return [tail] if tail else []

    def _split_long(self, lines: list[bytes]) -> list[bytes]:
        """Slow path for complete ``lines`` (the first continuing the pending data) when some may be too long."""
        out: list[bytes] = []
        size = self._max
        first = True
        for line in lines:
            if first:
                first = False
                if self._parts:
                    self._parts.append(line)
                    line = b"".join(self._parts)
                    self._parts = []
                if self._cut:  # already counted, and earlier pieces already emitted
                    self._cut = False
                    out += _pieces(line, size)
                    continue
            if len(line) > size:
                self.oversized += 1
                out += _pieces(line, size)
            else:
                out.append(line)
        return out

    def _cut_pending(self) -> list[bytes]:
        """Emit max_size pieces of the pending (unterminated) line while more than max_size bytes are pending.

        Strictly more: a line of exactly max_size bytes may still end here, and must then be sent whole.
        """
        size = self._max
        data = b"".join(self._parts)
        count = (len(data) - 1) // size  # leaves 1..size bytes pending
        out = [data[i : i + size] for i in range(0, count * size, size)]
        rest = data[count * size :]
        self._parts = [rest]
        self._pending = len(rest)
        if not self._cut:
            self._cut = True
            self.oversized += 1
        return out


def _pieces(line: bytes, size: int) -> list[bytes]:
    return [line[i : i + size] for i in range(0, len(line), size)]


# --- gwsocket strict mode (SPEC §5 "binary") ---------------------------------------------------------------

HEADER = struct.Struct("!III")  # client id, type, payload length; network byte order
TEXT = 1
BINARY = 2

_HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from


class Frame(NamedTuple):
    """One gwsocket frame: client id (0 = every client of the room), type (TEXT, BINARY, or unknown), payload.

    A NamedTuple rather than a frozen dataclass: built once per frame on the hot path, it is 2-3x cheaper.
    """

    client_id: int
    type: int
    payload: bytes


class FrameTooLarge(ValueError):
    """A frame header announced a payload longer than the limit: the stream cannot be trusted any further."""

    def __init__(self, length: int, max_size: int, frames: list[Frame] | None = None) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {max_size} bytes")
        self.length = length
        self.max_size = max_size
        # Complete frames that preceded the bad header in the same call: deliver them before giving up.
        self.frames: list[Frame] = frames if frames is not None else []


def encode_frame(client_id: int, type: int, payload: bytes) -> bytes:
    """Return the header for ``payload`` followed by the payload."""
    return HEADER.pack(client_id, type, len(payload)) + payload


def _scan(buf: bytes, max_size: int) -> tuple[list[Frame], int, int]:
    """Decode complete frames from ``buf``: (frames, offset where decoding stopped, announced length if too large)."""
    frames: list[Frame] = []
    append = frames.append
    offset = 0
    end = len(buf)
    while end - offset >= _HEADER_SIZE:
        client_id, type_, length = _unpack_header(buf, offset)
        if length > max_size:
            return frames, offset, length
        start = offset + _HEADER_SIZE
        stop = start + length
        if stop > end:
            break
        append(Frame(client_id, type_, buf[start:stop]))
        offset = stop
    return frames, offset, -1


def decode_frames(buf: bytes, max_size: int) -> tuple[list[Frame], bytes]:
    """Return every complete frame in ``buf`` and the unconsumed rest; raise FrameTooLarge past ``max_size``."""
    frames, offset, too_large = _scan(buf, max_size)
    if too_large >= 0:
        raise FrameTooLarge(too_large, max_size, frames)
    return frames, buf[offset:]


class FrameDecoder:
    """Incremental gwsocket decoder: frames may span feeds, and one feed may hold many.

    After FrameTooLarge the offending header stays buffered, so every later feed raises again.
    """

    __slots__ = ("_max", "_parts", "_pending", "_need")

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._parts: list[bytes] = []  # chunks of the incomplete frame, joined once it can be complete
        self._pending = 0
        self._need = _HEADER_SIZE  # bytes needed before decoding can make progress

    @property
    def pending(self) -> int:
        """Bytes buffered of an incomplete frame (non-zero at EOF means the stream was truncated)."""
        return self._pending

    def feed(self, chunk: bytes) -> list[Frame]:
        """Return the frames completed by ``chunk``; raise FrameTooLarge on a header announcing too much."""
        total = self._pending + len(chunk)
        if total < self._need:
            if chunk:
                self._parts.append(chunk)
                self._pending = total
            return []
        if self._parts:
            self._parts.append(chunk)
            buf = b"".join(self._parts)
        else:
            buf = chunk
        frames, offset, too_large = _scan(buf, self._max)
        rest = buf[offset:] if offset else buf
        self._parts = [rest] if rest else []
        self._pending = len(rest)
        if too_large >= 0:
            self._need = 0  # re-scan (and raise again) on any later feed
            raise FrameTooLarge(too_large, self._max, frames)
        if len(rest) >= _HEADER_SIZE:
            self._need = _HEADER_SIZE + _unpack_header(rest)[2]
        else:
            self._need = _HEADER_SIZE
        return frames


# --- json mode (SPEC §5 "json") -------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads/dumps with keyword arguments would build a new decoder/encoder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _parse(text: str | bytes) -> Any:
    """Parse strict JSON (UTF-8 only, no NaN/Infinity); raise ValueError or RecursionError if it is not."""
    if not isinstance(text, str):
        text = text.decode()  # UnicodeDecodeError is a ValueError
    return _DECODER.decode(text)


# Up to this size a message is parsed whole and written back (at worst about a millisecond, for 16 KiB
# of empty arrays); past it only its top level is read (app.toplevel), so that no message, however
# built, holds the loop for long: 15.7 MiB of empty arrays took 1.6 s whole, 25 ms top-level only.
FULL_PARSE_MAX = 16 * 1024


def stamp_id(message: str | bytes, client_id: int) -> bytes | None:
    """Return the JSON object ``message`` with ``"id"`` set to ``client_id``, as compact UTF-8; None if not one."""
    if len(message) > FULL_PARSE_MAX:
        if not isinstance(message, str):
            return stamp_top(message, client_id)
        try:
            return stamp_top(message.encode(), client_id, utf8=True)
        except UnicodeEncodeError:  # a lone surrogate in the str: no UTF-8 form
            return None
    try:
        obj = _parse(message)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    obj["id"] = client_id
    try:
        text = _ENCODER.encode(obj)
    except (ValueError, RecursionError):  # e.g. 1e400 parsed as inf, which JSON cannot write
        return None
    try:
        return text.encode()
    except UnicodeEncodeError:
        # An escaped lone surrogate ("\ud800") has no UTF-8 form: keep it escaped, as the client wrote it.
        return _ASCII_ENCODER.encode(obj).encode()


def route(line: bytes) -> int | None:
    """Return the client id a child line is addressed to, or None to broadcast it to the room."""
    # Most lines carry no "id" key: skip parsing them. The key may also be spelled with \\u escapes. find()
    # rather than `in`: bytes.__contains__ first tries the needle as an int, and that failure costs more.
    if line.find(b'"id"') < 0 and line.find(b"\\u") < 0:
        return None
    if len(line) > FULL_PARSE_MAX:
        return route_top(line)
    try:
        obj = _parse(line)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    target: object = obj.get("id")
    # type() rather than isinstance: true/false are bools, and 1.0 / 1e0 parse as floats.
    if type(target) is int and target >= 0:
        return target
    return None
