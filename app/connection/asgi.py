"""AsgiConnection: a `Connection` through plain ASGI `receive`/`send`, under any ASGI server.

Used when the websocket is not carried by our own protocol (`uvicorn app:asgi` with uvicorn's
protocols, Starlette's TestClient, another server). Its reader and its writer are two tasks in the
connection's own task group (`run`): whichever ends first cancels the other, so nothing of a
connection outlives it or runs in the app's task group. The server's own flow control bounds what
it buffers; the outbox bounds the rest, as on the fast path.
"""

from __future__ import annotations

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.batch import TEXT
from app.connection.base import Connection, OnMessage

CLOSE_TIMEOUT = 10.0  # an ASGI close waits for room in the socket (a slow client reads on, or not): not forever


class AsgiConnection(Connection):
    __slots__ = ("_paused", "_resumed", "_send_scope", "_sending", "_wake", "_websocket")

    def __init__(self, websocket: WebSocket, limit: int) -> None:
        super().__init__(limit)
        self._websocket = websocket
        self._wake = anyio.Event()  # set when there is something for the writer
        self._paused = False
        self._resumed = anyio.Event()
        self._sending = False  # the writer is inside an ASGI send: the socket may be full
        self._send_scope: anyio.CancelScope | None = None  # around those sends: a close that drops the outbox ends them

    def close(self, code: int, reason: str, *, drain: bool = True) -> None:
        super().close(code, reason, drain=drain)
        if not drain and self._send_scope is not None:
            self._send_scope.cancel()  # a send waiting on a client that does not read would wait forever

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            self._resumed = anyio.Event()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._resumed.set()

    @property
    def socket_full(self) -> bool:
        return self._sending  # ASGI does not tell; a send that has not returned is the nearest sign

    async def run(self, on_message: OnMessage) -> None:
        """Read and write until the client leaves, or the close requested has been sent."""
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                await self._read(on_message)
                tg.cancel_scope.cancel()

            async def writer() -> None:
                await self._write()
                tg.cancel_scope.cancel()

            tg.start_soon(reader)
            tg.start_soon(writer)
        self._drop_outbox()

    async def _read(self, on_message: OnMessage) -> None:
        receive = self._websocket.receive
        while True:
            if self._paused:
                await self._resumed.wait()
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            text = message.get("text")
            if text is not None:
                on_message(True, text.encode())
            else:
                on_message(False, message.get("bytes") or b"")

    async def _write(self) -> None:
        send = self._websocket.send
        try:
            while True:
                if not self.outbox and self.close_request is None:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                self._sending = True
                with anyio.CancelScope() as self._send_scope:
                    for batch in self._take():
                        key = "text" if batch.opcode == TEXT else "bytes"
                        for payload in batch.payloads:
                            value: str | bytes = payload.decode() if key == "text" else payload
                            await send({"type": "websocket.send", key: value})
                self._send_scope = None
                self._sending = False
                request = self.close_request
                if request is not None and not self.outbox:
                    with anyio.move_on_after(CLOSE_TIMEOUT):
                        await self._websocket.close(request.code, request.reason)
                    return
        except WebSocketDisconnect:
            return  # the client is gone: the reader sees it too

    def _socket_wake(self) -> None:
        self._wake.set()
