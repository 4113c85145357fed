"""Batch: messages of one kind on their way to clients, and their websocket encoding.

Pure (no I/O). A broadcast batch is one object shared by every client of the room, so its
websocket encoding is computed once however many clients receive it.
"""

from __future__ import annotations

import struct

TEXT = 0x1  # websocket opcodes
BINARY = 0x2

# Server-to-client frames are never masked, so one encoding serves every client.
_SHORT_HEADERS = {op: [bytes((0x80 | op, n)) for n in range(126)] for op in (TEXT, BINARY)}
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def encode_frames(opcode: int, payloads: list[bytes]) -> bytes:
    """Complete, final, unmasked websocket frames for `payloads` (RFC 6455 §5.2)."""
    short = _SHORT_HEADERS[opcode]
    parts: list[bytes] = []
    append = parts.append
    for payload in payloads:
        size = len(payload)
        if size < 126:
            append(short[size])
        elif size < 65536:
            append(_MEDIUM.pack(0x80 | opcode, 126, size))
        else:
            append(_LONG.pack(0x80 | opcode, 127, size))
        append(payload)
    return b"".join(parts)


class Batch:
    """Messages of one kind, in order; text payloads are valid UTF-8."""

    __slots__ = ("_wire", "nbytes", "opcode", "payloads")

    def __init__(self, opcode: int, payloads: list[bytes]) -> None:
        self.opcode = opcode
        self.payloads = payloads
        self.nbytes = sum(map(len, payloads)) + 2 * len(payloads)
        self._wire: bytes | None = None

    @property
    def payload_bytes(self) -> int:
        """The messages' own bytes, without the two per message `nbytes` adds for framing."""
        return self.nbytes - 2 * len(self.payloads)

    def wire(self) -> bytes:
        """The websocket frames, encoded on first use and shared by every recipient."""
        if self._wire is None:
            self._wire = encode_frames(self.opcode, self.payloads)
        return self._wire
