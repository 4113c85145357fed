"""WebSocketProtocol: our websocket protocol under uvicorn (`uvicorn.Config(ws=...)`), and
`FastConnection`, the room-facing connection it carries.

uvicorn's HTTP protocol parses the request and, for an upgrade, hands the socket to this class
with the request re-serialized (app.connection.handshake parses it). From there everything is
ours: the 101 or the refusal, the frames (app.connection.frames), keepalive pings, the closing
handshake, and the ASGI interface the app's websocket endpoints see. A websocket served by
`app.routes.room_socket` then switches to direct mode (`FastConnection.run`): client messages are
handed to the room in the read callback that parsed them, and output is written to the transport
from the room's own callback — no task per message, no task at all while a client is idle.

Every byte is bounded, in and out:
- out: the outbox (`Connection.offer`), then the transport up to its high-water mark;
- pongs: a ping read while our output is backed up stops reading that client until the output
  drains, so a ping flood costs at most one pong past the high-water mark;
- in: each connection reads until a message is whole; what all connections hold between them
  (partial frames and fragments) is charged to the server-wide inbound budget (app.budget), which
  pauses reading (BY_BUDGET) past its limit. A leaving client's buffers go at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import unquote

from app.batch import Batch
from app.budget import InboundBudget
from app.connection.base import CloseRequest, Connection, Disconnected, OnMessage
from app.connection.frames import BINARY, CLOSE, PING, PONG, TEXT, Reader, Violation, close_frame, control_frame
from app.connection.handshake import Refusal, Upgrade, http_response, parse_upgrade, switching_protocols
from app.connection.hangup import HangupWatch

log = logging.getLogger("scalesocket.connection")
hangups = HangupWatch()  # one epoll set for every paused connection

CLOSE_DRAIN = 10.0  # for a peer to read up to our close frame and answer it, as uvicorn allows

CONNECTING, OPEN, CLOSING, CLOSED = range(4)
# Why reading is paused (a bit each): any one set keeps the transport paused.
BY_ROOM, BY_OUTPUT, BY_QUEUE, BY_BUDGET = 1, 2, 4, 8

_PHRASES = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 426: "Upgrade Required"}


class WebSocketProtocol(asyncio.Protocol):
    """One websocket connection under uvicorn (made by uvicorn: `ws=` takes the class)."""

    budget: ClassVar[InboundBudget | None] = None  # set per server (app.connection.protocol_class)

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover - uvicorn loads it before serving
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.state = CONNECTING
        self.reader = Reader(config.ws_max_size)
        self.held = 0  # bytes counted against the inbound budget (the budget keeps it)
        self.paused = 0  # BY_* bits
        self.writable = True
        self.close_sent = False
        self.close_code = 1006  # for the ASGI disconnect event: the peer's close code once received
        self.on_message: OnMessage | None = None  # direct mode (FastConnection)
        self.connection: FastConnection | None = None
        self.gone = asyncio.Event()  # the TCP connection is closed
        self._queue: deque[dict[str, Any]] = deque()  # ASGI events not yet received
        self._queue_waiter: asyncio.Future[None] | None = None
        self._write_waiters: list[asyncio.Future[None]] = []
        self._processing = False
        self._upgrade: Upgrade | None = None
        self._denial: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._ping_sent: bytes | None = None
        self._fd = -1

    # --- transport callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.state is CONNECTING and self._upgrade is None:
            self._handshake(data)
            return
        if self.state is CLOSED:
            return
        self.reader.feed(data)
        if self.state is not CONNECTING:
            self._process()
        self._account()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        hangups.unwatch(self._fd)
        self.server_state.connections.discard(self)
        for timer in (self._close_timer, self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._ping_timer = self._pong_timer = None
        self.reader = Reader(1)  # a leaving client's buffers go now, not when its task ends
        self._account()
        self.writable = True
        self._wake_writers()
        self._put({"type": "websocket.disconnect", "code": self.close_code})
        connection = self.connection
        if connection is not None:
            connection._gone()
        self.gone.set()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._wake_writers()
        if self.connection is not None:
            self.connection._drain()
        self._resume(BY_OUTPUT)

    def shutdown(self) -> None:
        """uvicorn is stopping: close what is still open (our own shutdown closed rooms' clients first)."""
        if self.state is CONNECTING:
            self._respond(500, "Internal Server Error", [], b"server shutting down")
        elif self.state is OPEN and not self.close_sent:
            self.send_close(1012, "server restarting")
        self._close_transport()

    # --- reading -----------------------------------------------------------------------------------

    def _pause(self, why: int) -> None:
        if not self.paused and self.state is not CLOSED:
            self.transport.pause_reading()
            hangups.watch(self._fd, self._hung_up)  # paused, it would not see the client leave
        self.paused |= why

    def _resume(self, why: int) -> None:
        if not self.paused & why:
            return
        self.paused &= ~why
        if not self.paused and self.state is not CLOSED:
            hangups.unwatch(self._fd)
            self.transport.resume_reading()
            self._process()
            self._account()

    def _hung_up(self) -> None:
        """The client left while we were not reading it: let go of it (and its buffers) now."""
        if self.state is not CLOSED:
            self.transport.abort()

    def pause_for_budget(self) -> None:
        self._pause(BY_BUDGET)

    def resume_for_budget(self) -> None:
        self._resume(BY_BUDGET)

    def _account(self) -> None:
        budget = self.budget
        if budget is not None:
            held = self.reader.buffered
            if held != self.held:
                self.held = held
                budget.hold(self, held)

    def _process(self) -> None:
        """Handle every event the reader has, until paused (what is left waits in the reader)."""
        if self._processing:
            return
        self._processing = True
        try:
            reader = self.reader
            while not self.paused or self.close_sent:
                try:
                    event = reader.next_event()
                except Violation as violation:
                    self._fail(violation.code, violation.reason)
                    return
                if event is None:
                    return
                opcode, data = event
                if opcode == TEXT or opcode == BINARY:
                    if self.close_sent:
                        continue  # closing: nothing more goes to the app
                    on_message = self.on_message
                    if on_message is not None:
                        on_message(opcode == TEXT, data)
                    elif opcode == TEXT:
                        self._put({"type": "websocket.receive", "text": data.decode()})
                        self._pause(BY_QUEUE)
                    else:
                        self._put({"type": "websocket.receive", "bytes": data})
                        self._pause(BY_QUEUE)
                elif opcode == PING:
                    if not self.close_sent:
                        self.transport.write(control_frame(PONG, data))
                        if not self.writable:
                            self._pause(BY_OUTPUT)  # no more pongs until the client reads
                elif opcode == PONG:
                    if data == self._ping_sent:
                        self._pong_received()
                elif opcode == CLOSE:
                    self._close_received(data)
                    return
        finally:
            self._processing = False

    def _close_received(self, data: bytes) -> None:
        self.close_code = int.from_bytes(data[:2]) if len(data) >= 2 else 1005
        if not self.close_sent:
            self.close_sent = True
            self.transport.write(control_frame(CLOSE, data))  # echo it, as websockets does
        self.state = CLOSING
        self._close_transport()  # the server closes TCP first (RFC 6455 §7.1.1)

    def _fail(self, code: int, reason: str) -> None:
        if not self.close_sent:
            self.close_sent = True
            self.transport.write(close_frame(code, reason))
        self.close_code = code
        self.state = CLOSING
        self._close_transport()

    # --- writing -----------------------------------------------------------------------------------

    def send_close(self, code: int, reason: str) -> None:
        """Queue a close frame behind what is buffered; abort if the peer has not answered in time."""
        if self.close_sent or self.state is not OPEN:
            return
        self.close_sent = True
        self.state = CLOSING
        self.close_code = code
        self.transport.write(close_frame(code, reason))
        self._stop_keepalive()
        self._resume(BY_OUTPUT | BY_ROOM | BY_QUEUE)  # read on, so the peer's closing frame is seen
        self.arm_drain_deadline()

    def arm_drain_deadline(self) -> None:
        """From now on the connection has CLOSE_DRAIN seconds to be over, or it is aborted."""
        if self._close_timer is None and self.state is not CLOSED:
            self._close_timer = self.loop.call_later(CLOSE_DRAIN, self.transport.abort)

    def _close_transport(self) -> None:
        """Close once what is buffered is written; a peer that never reads it is cut off after CLOSE_DRAIN."""
        if self.state is CLOSED:
            return
        self.transport.close()
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(CLOSE_DRAIN, self.transport.abort)

    def _wake_writers(self) -> None:
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_writable(self) -> None:
        while not self.writable:
            waiter = self.loop.create_future()
            self._write_waiters.append(waiter)
            await waiter

    # --- keepalive ---------------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        interval = self.config.ws_ping_interval
        if interval:
            self._ping_timer = self.loop.call_later(interval, self._ping)

    def _stop_keepalive(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    def _ping(self) -> None:
        self._ping_timer = None
        if self.close_sent or self.state is not OPEN:
            return
        self._ping_sent = os.urandom(4)
        self.transport.write(control_frame(PING, self._ping_sent))
        timeout = self.config.ws_ping_timeout
        if timeout:
            self._pong_timer = self.loop.call_later(timeout, self._pong_overdue)
        else:
            self._start_keepalive()

    def _pong_received(self) -> None:
        self._ping_sent = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self._start_keepalive()

    def _pong_overdue(self) -> None:
        self._pong_timer = None
        if not self.writable:
            # The ping is stuck behind output the client has not read: that client is slow, not gone
            # (the room's slow-client rule decides about it). Wait on.
            self._pong_timer = self.loop.call_later(self.config.ws_ping_timeout, self._pong_overdue)
            return
        self._fail(1011, "keepalive ping timeout")

    # --- the handshake -----------------------------------------------------------------------------

    def _handshake(self, request: bytes) -> None:
        try:
            self._upgrade = upgrade = parse_upgrade(request)
        except Refusal as refusal:
            log.info("websocket handshake refused", extra={"status": refusal.status, "reason": refusal.text})
            phrase = _PHRASES.get(refusal.status, "Bad Request")
            headers = [(b"sec-websocket-version", b"13")] if refusal.status == 426 else []
            self._respond(refusal.status, phrase, headers, refusal.text.encode() + b"\n")
            self._close_transport()
            return
        raw_path, _, query = upgrade.target.partition(b"?")
        root = self.config.root_path
        server = self.transport.get_extra_info("sockname")
        client = self.transport.get_extra_info("peername")
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if self.transport.get_extra_info("sslcontext") is not None else "ws",
            "server": (server[0], server[1]) if isinstance(server, tuple) else None,
            "client": (client[0], client[1]) if isinstance(client, tuple) else None,
            "root_path": root,
            "path": root + unquote(raw_path.decode("latin-1")),
            "raw_path": root.encode("ascii") + raw_path,
            "query_string": query,
            "headers": upgrade.headers,
            "subprotocols": upgrade.subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
            SCOPE_KEY: self,
        }
        self._put({"type": "websocket.connect"})
        task = self.loop.create_task(self._run_asgi(scope))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _respond(self, status: int, phrase: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.state = CLOSING
        self.close_sent = True
        self.transport.write(http_response(status, phrase, self.server_state.default_headers + headers, body))

    async def _run_asgi(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self.receive, self.send)
        except Exception:
            log.exception("exception in websocket endpoint")
            if self.state is CONNECTING:
                self._respond(500, "Internal Server Error", [], b"internal error\n")
            elif self.state is OPEN:
                self._fail(1011, "internal error")
        else:
            if self.state is CONNECTING and self._denial is None:
                log.error("websocket endpoint returned without accepting or refusing")
                self._respond(500, "Internal Server Error", [], b"internal error\n")
        if self._close_timer is None:
            self._close_transport()

    # --- ASGI ----------------------------------------------------------------------------------------

    def _put(self, event: dict[str, Any]) -> None:
        self._queue.append(event)
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        if not self._queue and self.state is OPEN:
            self._process()
            self._account()
        while not self._queue:
            self._queue_waiter = self.loop.create_future()
            await self._queue_waiter
        event = self._queue.popleft()
        if not self._queue:
            self._resume(BY_QUEUE)
        return event

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.state is CLOSED:
            raise Disconnected
        if self.state is CONNECTING and self._denial is None:
            if kind == "websocket.accept":
                extra = list(self.server_state.default_headers) + list(message.get("headers", []))
                if message.get("subprotocol"):
                    extra.append((b"sec-websocket-protocol", message["subprotocol"].encode()))
                assert self._upgrade is not None
                self.transport.write(switching_protocols(self._upgrade, extra))
                self.state = OPEN
                self._upgrade = None  # its headers are the scope's now; nothing else needs them
                self._start_keepalive()  # frames sent right behind the request wait for receive() or run()
            elif kind == "websocket.close":
                self._respond(403, "Forbidden", [], b"")
                self._close_transport()
            elif kind == "websocket.http.response.start":
                headers = list(message.get("headers", []))
                self._denial = (message["status"], headers, [])
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r} before the handshake")
        elif self._denial is not None:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"unexpected ASGI message {kind!r} in a denial response")
            status, headers, body = self._denial
            body.append(message.get("body", b""))
            if not message.get("more_body", False) and self.state is CONNECTING:
                try:
                    phrase = HTTPStatus(status).phrase
                except ValueError:
                    phrase = ""
                self._respond(status, phrase, headers, b"".join(body))
                self._put({"type": "websocket.disconnect", "code": 1006})
                self._close_transport()
        elif self.state is OPEN and not self.close_sent:
            if kind == "websocket.send":
                await self._wait_writable()
                if self.close_sent or self.state is not OPEN:
                    raise Disconnected
                text = message.get("text")
                if text is not None:
                    self.transport.write(Batch(TEXT, [text.encode()]).wire())
                else:
                    self.transport.write(Batch(BINARY, [message.get("bytes") or b""]).wire())
            elif kind == "websocket.close":
                self.send_close(message.get("code") or 1000, message.get("reason") or "")
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r}")
        elif kind in ("websocket.send", "websocket.close"):
            if self.state is CLOSED or self.close_sent:
                raise Disconnected
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")


SCOPE_KEY = "scalesocket.protocol"  # where the scope carries its WebSocketProtocol


class FastConnection(Connection):
    """A `Connection` over our own `WebSocketProtocol`: writes go straight to the transport; the
    outbox is drained from the transport's `resume_writing`; a close waits only for the outbox."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketProtocol, limit: int) -> None:
        super().__init__(limit)
        self._protocol = protocol
        protocol.connection = self

    def pause_reading(self) -> None:
        self._protocol._pause(BY_ROOM)

    def resume_reading(self) -> None:
        self._protocol._resume(BY_ROOM)

    @property
    def socket_full(self) -> bool:
        return not self._protocol.writable

    async def run(self, on_message: OnMessage) -> None:
        """Hand client messages to `on_message` as they are parsed, until the connection is gone."""
        protocol = self._protocol
        protocol.on_message = on_message
        self._socket_wake()  # what was queued before the handshake, or a close requested meanwhile
        if protocol.state is not CLOSED:
            protocol._process()  # frames the client sent right behind its request
            protocol._account()
            await protocol.gone.wait()

    def _socket_write(self, batch: Batch) -> bool:
        protocol = self._protocol
        if not protocol.writable or protocol.close_sent or protocol.state is not OPEN:
            return False
        protocol.transport.write(batch.wire())
        return True

    def _socket_wake(self) -> None:
        protocol = self._protocol
        request = self.close_request
        if request is not None and protocol.state is not CONNECTING:
            # A close waits for the outbox at most CLOSE_DRAIN, and one that drops it goes out now,
            # behind what the transport holds: a client that never reads cannot keep it open.
            protocol.arm_drain_deadline()
            if not request.drain:
                self._drain()
                return
        if protocol.writable:
            self._drain()

    def _drain(self) -> None:
        """The transport takes data again: hand it the outbox, then a requested close."""
        protocol = self._protocol
        if protocol.state is CLOSED:
            self._drop_outbox()
            return
        if protocol.state is CONNECTING:
            return  # run() drains once the handshake is done
        if self.outbox and not protocol.close_sent and protocol.writable:
            protocol.transport.writelines([batch.wire() for batch in self._take()])
        request = self.close_request
        if request is not None and not self.outbox:
            protocol.send_close(request.code, request.reason)

    def _gone(self) -> None:
        self._drop_outbox()
        if self.close_request is None:
            self.close_request = _GONE


_GONE = CloseRequest(1006, "connection gone", drain=False)


def fast_path_problem() -> str | None:
    """Why our protocol cannot run under the installed uvicorn, or None if it can.

    It relies on what `uvicorn.Config(ws=<class>)` promises (the class is built with config,
    server_state and app_state, given the transport and the re-serialized request) and on the
    attributes it reads of those objects, which uvicorn does not document: checked once, at start-up.
    """
    try:
        import uvicorn
        from uvicorn.server import ServerState
    except ImportError as error:  # pragma: no cover
        return f"uvicorn not importable: {error}"
    config = uvicorn.Config(lambda scope, receive, send: None, ws=WebSocketProtocol, interface="asgi3", log_config=None)
    state = ServerState()
    for name in ("connections", "tasks", "default_headers"):
        if not hasattr(state, name):
            return f"uvicorn's ServerState has no {name!r}"
    for name in ("ws_max_size", "ws_ping_interval", "ws_ping_timeout", "root_path", "asgi_version", "loaded"):
        if not hasattr(config, name):
            return f"uvicorn's Config has no {name!r}"
    if getattr(config, "ws", None) is not WebSocketProtocol:
        return "uvicorn's Config does not keep a ws protocol class"
    return None
