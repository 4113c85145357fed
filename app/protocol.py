"""RoomProtocol: uvicorn's websockets-sansio protocol with a direct path for client messages.

Through ASGI every client message is queued by the protocol, which then stops reading the socket
until the app's `receive()` task wakes up and takes it: a task switch per message. Once a client
is attached to its room, `on_message` lets the protocol hand each message to the room at once,
in the same callback that parsed it; the room writes it to the child and, while the child's input
is full, pauses reading this socket (`pause`/`resume`), as the ASGI path would. Disconnects and
everything else still arrive through ASGI. The CLI's server uses this class; under any other
server the app simply keeps the ASGI path.
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

OnMessage = Callable[[str | None, bytes | None], None]


class RoomProtocol(WebSocketsSansIOProtocol):
    on_message: OnMessage | None = None
    paused_by_room = False

    # Whether websockets' parser stands at a frame boundary, waiting for a new frame. It does after
    # the handshake and as long as every read it got held whole frames; after a read that ends
    # inside a frame (rare: a message larger than a read), we can no longer tell, and this
    # connection keeps to the parser for good.
    at_boundary = True

    def data_received(self, data: bytes) -> None:
        # The common case — whole, final, masked text or binary frames and nothing else — is handed
        # to the room here; anything else (control frames, fragments, partial frames, oversized or
        # invalid messages) goes to websockets' parser, which then sees exactly the bytes it would
        # have seen.
        if self.conn.state is not State.OPEN or not self.at_boundary:
            if self.conn.state is State.CONNECTING:
                # Only a handshake read that ends with the request leaves the parser between frames;
                # a client that sends frames before the 101 keeps to the parser.
                self.at_boundary = not self.handshake_initiated and data.endswith(b"\r\n\r\n")
            super().data_received(data)
            return
        messages, whole = self._scan(data)
        if messages is not None and self.on_message is not None and not self.close_sent:
            for is_text, payload in messages:
                if is_text:
                    self.on_message(payload.decode(), None)
                else:
                    self.on_message(None, payload)
            return
        self.at_boundary = whole
        super().data_received(data)

    def _scan(self, data: bytes) -> tuple[list[tuple[bool, bytes]] | None, bool]:
        """(the messages if `data` is only whole plain data frames, else None; whether it ends on a
        frame boundary)."""
        limit = self.conn.max_message_size
        messages: list[tuple[bool, bytes]] | None = []
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < 2:
                return None, False
            first, second = data[pos], data[pos + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    return None, False
                length, header = int.from_bytes(data[pos + 2 : pos + 4]), 4
            elif length == 127:
                if end - pos < 10:
                    return None, False
                length, header = int.from_bytes(data[pos + 2 : pos + 10]), 10
            masked = second & 0x80
            start = pos + header + (4 if masked else 0)
            stop = start + length
            if stop > end:
                return None, False
            if messages is not None:
                if first not in (0x81, 0x82) or not masked or (limit is not None and length > limit):
                    messages = None  # a control frame, a fragment, a protocol error: the parser's
                else:
                    payload = apply_mask(data[start:stop], data[pos + header : start])
                    if first == 0x81 and not payload.isascii():
                        try:
                            payload.decode()
                        except UnicodeDecodeError:
                            messages = None  # the parser closes with 1007
                    if messages is not None:
                        messages.append((first == 0x81, payload))
            pos = stop
        return messages, True

    def send_receive_event_to_app(self) -> None:
        if self.on_message is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:  # as uvicorn does: close with 1007 through its own path
                self.frames = [data]
                super().send_receive_event_to_app()
                return
            self.on_message(text, None)
        else:
            self.on_message(None, data)

    def pause(self) -> None:
        """Stop reading the client (the child's input is full)."""
        if not self.paused_by_room and not self.transport.is_closing():
            self.paused_by_room = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused_by_room:
            self.paused_by_room = False
            if not self.transport.is_closing() and not self.read_paused:
                self.transport.resume_reading()
