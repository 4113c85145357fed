"""Senders: how batches reach one websocket.

`FastSender` writes each batch's shared, pre-encoded frames straight to the connection's
transport — one write per batch instead of one ASGI `send` per message — when the app runs under
uvicorn's websockets-sansio protocol, which `capture_protocol` finds. Everything else (other ASGI
servers, `-vv` message tracing, closes) goes through `AsgiSender`, the plain ASGI path. Both wait
while the socket's write buffer is full, so a slow client's data stays in its bounded outbox.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import anyio
from starlette.types import Scope, Send
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.batch import TEXT, Batch
from app.protocol import OnMessage, RoomProtocol

_PROTOCOL_KEY = "scalesocket.ws_protocol"
CLOSE_TIMEOUT = 1.0  # an ASGI close to a client that does not read can wait forever: give up
CLOSE_DRAIN = 10.0  # as uvicorn's close timeout: time for the peer to read up to our close frame


class Disconnected(Exception):
    """The peer is gone; nothing more can be sent."""


class Sender(Protocol):
    def receive_directly(self, on_message: OnMessage) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def try_write(self, batch: Batch) -> bool: ...

    def socket_full(self) -> bool: ...

    async def send(self, batches: list[Batch]) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    @property
    def disconnected(self) -> bool: ...


class AsgiSender:
    """One ASGI `websocket.send` per message: works under any ASGI server."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    def receive_directly(self, on_message: OnMessage) -> bool:
        return False  # ASGI messages come through receive()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def try_write(self, batch: Batch) -> bool:
        return False  # ASGI sends are awaited: always through the writer task

    def socket_full(self) -> bool:
        return False  # ASGI does not tell

    async def send(self, batches: list[Batch]) -> None:
        send = self._websocket.send
        for batch in batches:
            if batch.opcode == TEXT:
                for payload in batch.payloads:
                    await send({"type": "websocket.send", "text": payload.decode()})
            else:
                for payload in batch.payloads:
                    await send({"type": "websocket.send", "bytes": payload})

    async def close(self, code: int, reason: str) -> None:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self._websocket.close(code, reason)

    @property
    def disconnected(self) -> bool:
        return False  # ASGI only tells through receive(), which the reader owns


class FastSender(AsgiSender):
    """Writes encoded frames to uvicorn's transport; closes still go through ASGI."""

    def __init__(self, websocket: WebSocket, protocol: Any) -> None:
        super().__init__(websocket)
        self._protocol = protocol
        # Made after the handshake: uvicorn no longer needs the parsed request and response, whose
        # headers would otherwise stay in memory for the connection's whole life (idle clients).
        if protocol.handshake_complete:
            protocol.request = protocol.response = None

    def socket_full(self) -> bool:
        return not self._protocol.writable.is_set()

    def receive_directly(self, on_message: OnMessage) -> bool:
        """Have messages handed to `on_message` as they are parsed, once nothing waits in ASGI's queue."""
        protocol = self._protocol
        if not isinstance(protocol, RoomProtocol) or not protocol.queue.empty() or protocol.close_sent:
            return False
        protocol.on_message = on_message
        return True

    def pause_reading(self) -> None:
        if isinstance(self._protocol, RoomProtocol):
            self._protocol.pause()

    def resume_reading(self) -> None:
        if isinstance(self._protocol, RoomProtocol):
            self._protocol.resume()

    def try_write(self, batch: Batch) -> bool:
        """Write now if the socket's buffer has room; False leaves the batch to the outbox and writer."""
        protocol = self._protocol
        if protocol.close_sent or protocol.disconnected or not protocol.writable.is_set():
            return False
        protocol.transport.write(batch.wire())
        return True

    async def send(self, batches: list[Batch]) -> None:
        protocol = self._protocol
        if protocol.close_sent or protocol.disconnected:
            raise Disconnected
        protocol.transport.writelines([batch.wire() for batch in batches])
        if not protocol.writable.is_set():
            await protocol.writable.wait()

    async def close(self, code: int, reason: str) -> None:
        """Queue the close frame behind what is buffered, without waiting for room in the buffer.

        A client closed for being slow has a full buffer: ASGI's close would wait for it to drain.
        Queued this way the client still sees the code once it reads on; if it has not completed
        the closing handshake after CLOSE_DRAIN seconds the connection is aborted.
        """
        protocol = self._protocol
        if protocol.close_sent or protocol.disconnected or protocol.transport.is_closing():
            return
        protocol.conn.send_close(code, reason)
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if protocol.read_paused:  # read on, so the peer's closing frame is seen
            protocol.read_paused = False
            protocol.transport.resume_reading()
        # uvicorn's own close timer, with abort: a peer that never reads cannot hold the buffer forever.
        protocol.close_timer = asyncio.get_running_loop().call_later(CLOSE_DRAIN, protocol.transport.abort)

    @property
    def disconnected(self) -> bool:
        return bool(self._protocol.disconnected or self._protocol.transport.is_closing())


def sender_for(websocket: WebSocket) -> Sender:
    protocol = websocket.scope.get(_PROTOCOL_KEY)
    return FastSender(websocket, protocol) if protocol is not None else AsgiSender(websocket)


def capture_protocol(scope: Scope, send: Send) -> bool:
    """Remember uvicorn's websockets-sansio protocol behind `send` for `FastSender`; True if found."""
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, WebSocketsSansIOProtocol):
        scope[_PROTOCOL_KEY] = protocol
        return True
    return False
