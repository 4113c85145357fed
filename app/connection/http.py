"""HttpProtocol: uvicorn's httptools protocol, with the request bounded before anything parses it.

uvicorn buffers request headers without limit (httptools grows a header value by concatenation, so
a huge one also costs quadratic time) and waits for a request as long as the client keeps
trickling bytes. Here (SPEC §13):
- request headers over `MAX_HEADER_BYTES` are refused with 431 and the connection closed; the
  parser never sees more than that many bytes of one request's head;
- a request whose head is not complete `handshake_timeout` seconds after the connection opened
  (or after the previous request on it ended) is closed (slowloris);
- an HTTP/1.0 upgrade is refused with 400 (uvicorn would hand it on as HTTP/1.1).
Everything else is uvicorn's own protocol, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("scalesocket.connection")

MAX_HEADER_BYTES = 64 * 1024

_BODY = b"request headers over 64 KiB\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


_HTTP10_BODY = b"a websocket handshake needs HTTP/1.1\n"
_HTTP10 = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_HTTP10_BODY), _HTTP10_BODY)
)


class HttpProtocol(HttpToolsProtocol):
    handshake_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or inside one's head: bytes count against the limit
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = MAX_HEADER_BYTES - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        self._head_bytes = MAX_HEADER_BYTES
        super().data_received(data[:room])
        if self._in_head and not self.transport.is_closing():
            log.info("request refused: headers over 64 KiB", extra={"status": 431})
            self._disarm()
            self.transport.write(_TOO_LARGE)
            self.transport.close()
            return
        rest = data[room:]
        protocol = self.transport.get_protocol()
        if protocol is not self:  # upgraded to a websocket within the limit: the rest is its
            protocol.data_received(rest)  # type: ignore[attr-defined]
        elif not self.transport.is_closing():
            self.data_received(rest)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next is the next request's head
        self._head_bytes = 0
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self.transport.get_protocol() is not self:
            return  # upgraded: the websocket has the socket now
        self._head_timer = self.loop.call_later(self.handshake_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_websocket_upgrade(self) -> None:
        # uvicorn re-serializes the request as HTTP/1.1 for the websocket protocol, so the version
        # the client sent is only known here: RFC 6455 §4.1 asks for HTTP/1.1 or later.
        if self.scope.get("http_version") == "1.0":
            log.info("websocket refused: an HTTP/1.0 request", extra={"status": 400})
            self._disarm()
            self.transport.write(_HTTP10)
            self.transport.close()
            return
        super().handle_websocket_upgrade()

    def _head_overdue(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._in_head and transport.get_protocol() is self and not transport.is_closing():
            if self._head_bytes:  # a request begun and not finished; an idle keep-alive just goes
                log.info("request refused: not complete within the handshake timeout", extra={"status": 408})
            transport.close()


def http_problem() -> str | None:
    """Why HttpProtocol cannot run under the installed uvicorn (the hooks it extends), or None."""
    hooks = ("data_received", "connection_made", "connection_lost", "on_headers_complete", "on_message_complete")
    for name in (*hooks, "handle_websocket_upgrade"):
        if not callable(getattr(HttpToolsProtocol, name, None)):
            return f"uvicorn's HttpToolsProtocol has no {name}()"
    return None


def http_class(handshake_timeout: float) -> type[HttpProtocol]:
    return type("ScalesocketHttp", (HttpProtocol,), {"handshake_timeout": handshake_timeout})
