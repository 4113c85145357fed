"""Handshake: the opening handshake of RFC 6455 §4.2, from the request uvicorn hands the protocol.

Pure. uvicorn's HTTP protocol has already parsed the request (httptools or h11) and passes it on
re-serialized as `METHOD target HTTP/1.1`, one `name: value` line per header, and an empty line,
so splitting on CRLF is a complete parse here; python-websockets' general parser would parse the
same bytes a second time, at several times the cost. Every request that cannot be upgraded is
answered (`Refusal`: status and text) — never left without a response.

Limits are websockets' (at most 128 headers, lines of at most 8 KiB) plus the rule that an upgrade
carries no body; the whole request is bounded to 64 KiB before it gets here (app.connection.http).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADERS = 128
MAX_LINE = 8192


class Refusal(Exception):
    """The request cannot be upgraded: answer `status` with `text`, and close."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(slots=True)
class Upgrade:
    target: bytes  # path and query, as sent
    headers: list[tuple[bytes, bytes]]  # names lowercased, as in an ASGI scope
    accept: bytes  # the Sec-WebSocket-Accept value
    subprotocols: list[str]


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def parse_upgrade(request: bytes) -> Upgrade:
    """The upgrade request's parts; raises `Refusal` if it is not a websocket handshake we accept."""
    lines = request.split(b"\r\n")
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise Refusal(400, "malformed request")
    request_line = lines[0]
    if len(request_line) > MAX_LINE:
        raise Refusal(400, "request line too long")
    method, _, rest = request_line.partition(b" ")
    target, _, version = rest.rpartition(b" ")
    if method != b"GET":
        raise Refusal(405, "a websocket handshake is a GET")
    if version != b"HTTP/1.1":
        raise Refusal(400, "a websocket handshake needs HTTP/1.1")
    header_lines = lines[1:-2]
    if len(header_lines) > MAX_HEADERS:
        raise Refusal(400, "too many headers")
    headers: list[tuple[bytes, bytes]] = []
    key = version_ = upgrade = None
    connection: list[bytes] = []
    subprotocols: list[str] = []
    for line in header_lines:
        if len(line) > MAX_LINE:
            raise Refusal(400, "header line too long")
        name, sep, value = line.partition(b":")
        if not sep:
            raise Refusal(400, "malformed header")
        name, value = name.strip().lower(), value.strip()
        headers.append((name, value))
        if name == b"sec-websocket-key":
            if key is not None:
                raise Refusal(400, "more than one Sec-WebSocket-Key header")
            key = value
        elif name == b"sec-websocket-version":
            version_ = value
        elif name == b"upgrade":
            upgrade = value
        elif name == b"connection":
            connection.extend(token.strip().lower() for token in value.split(b","))
        elif name == b"sec-websocket-protocol":
            subprotocols.extend(token.strip() for token in value.decode("latin-1").split(","))
        elif name == b"content-length":
            if value.strip(b"0") or not value:
                raise Refusal(400, "a websocket handshake has no body")
        elif name == b"transfer-encoding":
            raise Refusal(400, "a websocket handshake has no body")
    if b"upgrade" not in connection:
        raise Refusal(426, "missing Connection: Upgrade")
    if upgrade is None or upgrade.lower() != b"websocket":
        raise Refusal(426, "missing Upgrade: websocket")
    if key is None:
        raise Refusal(400, "missing Sec-WebSocket-Key header")
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 16:
        raise Refusal(400, "invalid Sec-WebSocket-Key header")
    if version_ != b"13":
        raise Refusal(426, "unsupported Sec-WebSocket-Version (13 is)")
    return Upgrade(target, headers, accept_key(key), [p for p in subprotocols if p])


def switching_protocols(upgrade: Upgrade, extra: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 response, with `extra` headers (the app's, and the server's default ones)."""
    parts = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        upgrade.accept,
        b"\r\n",
    ]
    for name, value in extra:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def http_response(status: int, reason: str, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A complete HTTP/1.1 response that ends the connection (a refused handshake)."""
    names = {name.lower() for name, _ in headers}
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1"))]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    if b"content-length" not in names:
        parts.append(b"content-length: %d\r\n" % len(body))
    if b"content-type" not in names:
        parts.append(b"content-type: text/plain; charset=utf-8\r\n")
    if b"connection" not in names:
        parts.append(b"connection: close\r\n")
    parts += [b"\r\n", body]
    return b"".join(parts)
