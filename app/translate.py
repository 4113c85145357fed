"""Message paths: what child output becomes for clients, and client messages for the child.

One `OutputDecoder` per room turns chunks of the child's output into `(target, Batch)` deliveries
(target None = the whole room) for the mode in force — text lines, binary chunks, json routing, or
gwsocket frames — and `InputEncoder` turns a client's message (or join/leave text) into the bytes
written to the child. Both only translate: the room delivers, logs and enforces limits.
"""

from __future__ import annotations

import logging

from app import framing
from app.batch import BINARY, TEXT, Batch
from app.delimiters import DelimiterSplitter
from app.settings import FrameMode, Settings

log = logging.getLogger("scalesocket.messages")

Delivery = tuple[int | None, Batch]


def valid_text(lines: list[bytes]) -> list[bytes]:
    """Lines as valid UTF-8: invalid bytes become U+FFFD, with a warning (never dropped)."""
    for index, line in enumerate(lines):
        if not line.isascii():
            try:
                line.decode()
            except UnicodeDecodeError:
                lines[index] = line.decode(errors="replace").encode()
                log.warning("child output is not valid UTF-8: invalid bytes replaced")
    return lines


def _plain(data: bytes) -> bool:
    """ASCII, with no "id" key and no \\u escape that could spell one: json routing can skip it."""
    return data.isascii() and data.find(b'"id"') < 0 and data.find(b"\\u") < 0


def group(deliveries: list[tuple[int | None, int, bytes]]) -> list[Delivery]:
    """Merge runs of messages with the same target and kind into one batch each, keeping order."""
    out: list[Delivery] = []
    run: list[bytes] = []
    key: tuple[int | None, int] | None = None
    for target, opcode, payload in deliveries:
        if (target, opcode) != key:
            if run and key is not None:
                out.append((key[0], Batch(key[1], run)))
            key, run = (target, opcode), []
        run.append(payload)
    if run and key is not None:
        out.append((key[0], Batch(key[1], run)))
    return out


class ProtocolError(Exception):
    """The child broke gwsocket framing; `deliveries` are the good frames that came before."""

    def __init__(self, message: str, deliveries: list[Delivery]) -> None:
        super().__init__(message)
        self.deliveries = deliveries


class OutputDecoder:
    """Child output → deliveries. Raises `ProtocolError` when the child breaks gwsocket framing."""

    def __init__(self, settings: Settings) -> None:
        self._mode = settings.server_framing
        self._opcode = BINARY if settings.binary else TEXT
        self._limit = settings.max_message_size
        self._lines = framing.LineSplitter(settings.max_message_size)
        self._frames = framing.FrameDecoder(settings.max_message_size)
        self._tail_ascii = True  # the unterminated line so far is ASCII
        self._at_line_start = True  # the last read ended with a newline (json framing)
        if (delimiters := settings.item_delimiters) is not None:
            # --delimiters / --null (text mode or json server framing): items, without the newline
            # fast paths, which look for b"\n".
            self._lines = DelimiterSplitter(settings.max_message_size, delimiters)
            self.feed = self._feed_items  # type: ignore[method-assign]
        elif self._mode is FrameMode.binary:
            self.feed = self._feed_frames  # type: ignore[method-assign]
        elif self._mode is FrameMode.json:
            self.feed = self._feed_json  # type: ignore[method-assign]
        elif settings.binary:
            self.feed = self._feed_chunks  # type: ignore[method-assign]

    def feed(self, data: bytes) -> list[Delivery]:
        """Text mode: every complete line, broadcast."""
        lines = self._lines.feed(data)
        ascii_chunk = data.isascii()
        # The lines are all ASCII only if this chunk is and the line it finished began in ASCII too.
        clean = ascii_chunk and self._tail_ascii
        self._tail_ascii = ascii_chunk if b"\n" in data else clean
        if not lines:
            return []
        if clean and not self._lines.oversized:
            return [(None, Batch(TEXT, lines))]  # the common case: no line needs a UTF-8 check
        return self._broadcast_lines(lines)

    def close(self) -> list[Delivery]:
        """Whatever the end of output completes: a final line without newline."""
        if self._mode is FrameMode.binary or (self._mode is None and self._opcode == BINARY):
            return []
        tail = self._lines.close()
        return self._route_json(tail) if self._mode is FrameMode.json else self._broadcast_lines(tail)

    @property
    def truncated(self) -> int:
        """Bytes of an incomplete gwsocket frame left at the end of output."""
        return self._frames.pending if self._mode is FrameMode.binary else 0

    def _broadcast_lines(self, lines: list[bytes]) -> list[Delivery]:
        if not lines:
            return []
        self._warn_oversized()
        if self._opcode == TEXT:
            lines = valid_text(lines)
        return [(None, Batch(self._opcode, lines))]

    def _feed_items(self, data: bytes) -> list[Delivery]:
        items = self._lines.feed(data)
        return self._route_json(items) if self._mode is FrameMode.json else self._broadcast_lines(items)

    def _feed_chunks(self, data: bytes) -> list[Delivery]:
        # A pipe read never exceeds a few hundred KiB, far below the message limit.
        return [(None, Batch(BINARY, [data[i : i + self._limit] for i in range(0, len(data), self._limit)]))]

    def _feed_json(self, data: bytes) -> list[Delivery]:
        lines = self._lines.feed(data)
        # Every completed line lies wholly inside this read only if the previous read ended a line.
        whole = self._at_line_start
        self._at_line_start = data.endswith(b"\n")
        if lines and not self._lines.oversized and _plain(data):
            # No line of this read can carry an "id" (and all are ASCII): one broadcast batch. Only a
            # line begun in an earlier read needs routing on its own.
            if whole:
                return [(None, Batch(self._opcode, lines))]
            out = self._route_json(lines[:1])
            if len(lines) > 1:
                out.append((None, Batch(self._opcode, lines[1:])))
            return out
        return self._route_json(lines)

    def _route_json(self, lines: list[bytes]) -> list[Delivery]:
        if not lines:
            return []
        self._warn_oversized()
        if self._opcode == TEXT:
            lines = valid_text(lines)
        route = framing.route
        return group([(route(line), self._opcode, line) for line in lines])

    def _feed_frames(self, data: bytes) -> list[Delivery]:
        try:
            frames = self._frames.feed(data)
        except framing.FrameTooLarge as error:
            raise ProtocolError(str(error), self.frames_to_deliveries(error.frames)) from None
        return self.frames_to_deliveries(frames)

    @staticmethod
    def frames_to_deliveries(frames: list[framing.Frame]) -> list[Delivery]:
        out: list[tuple[int | None, int, bytes]] = []
        append = out.append
        for client_id, kind, payload in frames:
            if kind == framing.TEXT:
                append((client_id or None, TEXT, payload if payload.isascii() else valid_text([payload])[0]))
            elif kind == framing.BINARY:
                append((client_id or None, BINARY, payload))
            else:
                log.warning("skipping gwsocket frame of unknown type", extra={"type": kind})
        return group(out)

    def _warn_oversized(self) -> None:
        if self._lines.oversized:
            log.warning(
                "child line longer than the message size limit: sent in pieces",
                extra={"lines": self._lines.oversized, "limit": self._limit},
            )
            self._lines.oversized = 0


class InputEncoder:
    """Client message → bytes for the child's input (None: drop it)."""

    def __init__(self, settings: Settings) -> None:
        self._mode = settings.client_framing
        self._newline = b"" if settings.binary else b"\n"

    def message(self, client_id: int, is_text: bool, payload: bytes) -> bytes | None:
        """A client message (text payloads are valid UTF-8) as the child's input; None: drop it."""
        if self._mode is FrameMode.json:
            stamped = framing.stamp_id(payload.decode() if is_text else payload, client_id)
            if stamped is None:
                log.debug("dropping client message that is not a JSON object", extra={"id": client_id})
                return None
            return stamped + b"\n"
        if self._mode is FrameMode.binary:
            return framing.encode_frame(client_id, framing.TEXT if is_text else framing.BINARY, payload)
        return payload + self._newline if self._newline else payload

    def notice(self, client_id: int, text: str) -> bytes:
        """A join or leave message: under gwsocket framing a text frame from that client."""
        if self._mode is FrameMode.binary:
            return framing.encode_frame(client_id, framing.TEXT, text.encode())
        if self._mode is FrameMode.json:
            # A JSON object is stamped like the client's own messages; anything else goes as written.
            return (framing.stamp_id(text, client_id) or text.encode()) + b"\n"
        return text.encode() + self._newline
