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

OnMessage = Callable[[str | None, bytes | None], None]


class RoomProtocol(WebSocketsSansIOProtocol):
    on_message: OnMessage | None = None
    paused_by_room = False

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
