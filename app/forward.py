"""Forward: carry a client's websocket to the instance that owns its room (SPEC §16).

The entry instance opens a websocket of its own to the owner *before* it accepts the client, so
anything the owner refuses reaches the client as the same HTTP status. Then frames go both ways
unchanged, and whichever side closes, the other sees the same close code and reason. The owner
believes the client address the entry passes along only under the cluster secret; a connection
that says it is forwarded without the secret is refused with 403, and the address header alone
(a client's own) is ignored.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from collections.abc import Mapping
from urllib.parse import quote

import anyio
import anyio.abc
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as HandshakeResponse
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from app.batch import BINARY, TEXT, Batch
from app.cluster import Cluster, Forward
from app.connection import Connection, open_connection
from app.registry import Unreachable
from app.rooms import Refused
from app.settings import Settings, split_host_port

log = logging.getLogger("scalesocket.forward")

SECRET_HEADER = "x-scalesocket-forward"  # the cluster secret: this connection comes from a peer
CLIENT_HEADER = "x-scalesocket-client"  # the client's address as the entry instance saw it
VIA_HEADER = "x-scalesocket-via"  # the entry instance's name, for the owner's logs
OWNER_LOST = 1012  # the owner went away without a close frame: the client should reconnect
CLOSE_TIMEOUT = 10.0  # for the owner to answer our close frame
OPEN_TIMEOUT = 2.0  # to a healthy owner this takes milliseconds; a paused one must not hold the client long
# The handshake's own headers: the hop to the owner has its own (and its own framing).
HOP_HEADERS = frozenset(
    {
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
        b"transfer-encoding",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-connection",
    }
)
FETCH_LIMIT = 64 * 1024  # a peer's stats answer is a few hundred bytes
DROPPING = frozenset({1001, 1008, 1012})  # closes that drop what is queued (see app.room, app.cluster)
UNSENDABLE = frozenset({1005, 1006, 1015})  # codes that never appear in a close frame


def forwarded_client(websocket: WebSocket, cluster: Cluster) -> str | None:
    """The client address a peer passed along, or None for a direct client; Refused(403) when a
    connection claims to be forwarded without the cluster secret."""
    claimed = websocket.headers.get(SECRET_HEADER)
    if claimed is None:
        return None
    if not _holds_secret(claimed, cluster):
        raise Refused(403, "forwarded connection without the cluster secret")
    # Percent-encoded like any address (app.routes.remote_addr): it reaches join messages.
    return quote(websocket.headers.get(CLIENT_HEADER, ""), safe=":.[]")


def from_peer(headers: Mapping[str, str], cluster: Cluster) -> bool:
    """An HTTP request another instance made on a client's behalf (under the secret)."""
    return _holds_secret(headers.get(SECRET_HEADER), cluster)


async def ask_owner(request: Request, name: str) -> Response | None:
    """The owner's answer to this GET about room `name` (`/<room>/stats`, `/api/<room>`) when
    another instance owns it; None when it is ours or nobody's (answer locally)."""
    cluster: Cluster = request.state.cluster
    if not cluster.clustered or from_peer(request.headers, cluster):
        return None  # a peer asking on a client's behalf gets our own view: never asked around again
    try:
        owner = await cluster.owner_elsewhere(name)
        if owner is None:
            return None
        status, content_type, body = await fetch(owner.address, request.url.path, cluster)
    except (Unreachable, OSError, TimeoutError, ValueError, IndexError) as error:
        return JSONResponse({"error": f"cannot ask the room's owner: {error or type(error).__name__}"}, 503)
    return Response(body, status, media_type=content_type)


async def ask_peers(request: Request) -> list[bytes]:
    """Every other live instance's answer to this GET (`/api/rooms`), as bodies; those that do not
    answer in time are left out."""
    cluster: Cluster = request.state.cluster
    if not cluster.clustered or from_peer(request.headers, cluster):
        return []
    try:
        peers = await cluster.registry.peers()
    except Unreachable:
        return []
    peers.pop(cluster.instance, None)
    bodies: list[bytes] = []

    async def one(address: str) -> None:
        try:
            status, _, body = await fetch(address, request.url.path, cluster)
        except (OSError, TimeoutError, ValueError, IndexError):
            return
        if status == 200:
            bodies.append(body)

    async with anyio.create_task_group() as tg:
        for address in peers.values():
            tg.start_soon(one, address)
    return bodies


def _holds_secret(claimed: str | None, cluster: Cluster) -> bool:
    secret = cluster.secret
    if claimed is None or not cluster.clustered or not secret:
        return False
    return hmac.compare_digest(claimed.encode(), secret.encode())


def peer_tls(settings: Settings) -> ssl.SSLContext | None:
    """With --ssl the instances speak TLS to each other too, trusting exactly --sslcert (the one
    certificate a cluster's instances share) and not the host name: they dial addresses, not names."""
    if settings.sslcert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(settings.sslcert))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself may be the anchor
    return context


async def fetch(address: str, path: str, cluster: Cluster) -> tuple[int, str, bytes]:
    """GET `path` from the instance at `address` (a small JSON answer): (status, content type, body).

    Plain HTTP/1.1 with `Connection: close`, read up to FETCH_LIMIT; OSError or TimeoutError when
    the instance does not answer in time.
    """
    host, port = split_host_port(address)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n"
        f"{SECRET_HEADER}: {cluster.secret}\r\n{VIA_HEADER}: {cluster.instance}\r\n\r\n"
    ).encode()
    data = b""
    context = peer_tls(cluster.settings)
    with anyio.fail_after(OPEN_TIMEOUT):
        stream: anyio.abc.ByteStream
        if context is not None:
            stream = await anyio.connect_tcp(host, port, ssl_context=context, tls_standard_compatible=False)
        else:
            stream = await anyio.connect_tcp(host, port)
        async with stream:
            await stream.send(request)
            try:
                while len(data) < FETCH_LIMIT:
                    data += await stream.receive()
            except anyio.EndOfStream:
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    fields = {name.strip().lower(): value.strip() for name, value in fields.items()}
    if "content-length" in fields:
        body = body[: int(fields["content-length"])]
    return status, fields.get("content-type", "application/json"), body


class Upstream(asyncio.Protocol):
    """The owner side of a forwarded connection: websockets' sans-I/O client over a transport.

    Frames from the owner go to the client's `Connection` as they are parsed (no task per
    message); the client's messages are written to the owner from the connection's own callback.
    Backpressure both ways: a full client outbox pauses reading the owner, a full write buffer to
    the owner pauses reading the client.
    """

    def __init__(self, protocol: ClientProtocol) -> None:
        self.ws = protocol
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[HandshakeResponse] = asyncio.get_running_loop().create_future()
        self.conn: Connection | None = None
        self.closed = asyncio.Event()  # the transport to the owner is gone
        self._fragments: list[bytes] = []
        self._opcode = 0
        self._writing_paused = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._events()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._events()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("the owner closed the connection"))
        self.closed.set()
        self.close_client()

    def close_client(self) -> None:
        """The owner closed (or is gone): the client sees its code and reason, as it would there."""
        conn = self.conn
        if conn is None:
            return
        rcvd = self.ws.close_rcvd
        if rcvd is not None and rcvd.code not in UNSENDABLE:
            # As the owner did: a child's exit is delivered behind its output; a kick, a shutdown or
            # a fence drops what is queued.
            conn.close(rcvd.code, rcvd.reason, drain=rcvd.code not in DROPPING)
        else:
            conn.close(OWNER_LOST, "room owner lost", drain=False)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.conn is not None:
            self.conn.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.conn is not None:
            self.conn.resume_reading()

    # --- both ways ----------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self.ws.data_to_send()
        if data:
            transport.write(b"".join(data))
        if self.ws.close_expected() and self.ws.state is State.CLOSED:
            transport.close()

    def _events(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, HandshakeResponse):
                if not self.handshake.done():
                    if self.ws.handshake_exc is not None:
                        self.handshake.set_exception(self.ws.handshake_exc)
                    else:
                        self.handshake.set_result(event)
            elif isinstance(event, Frame):
                self._frame(event)
        if self.ws.close_rcvd is not None:
            self.close_client()  # at the close frame, not when the owner's socket is finally gone
        self._flush()  # pongs, and our half of a closing handshake
        if self.ws.state is State.CLOSED and self.transport is not None:
            self.transport.close()

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._opcode = TEXT if frame.opcode is Opcode.TEXT else BINARY
            self._fragments = []
        elif frame.opcode is not Opcode.CONT:
            return  # control frames: the sans-I/O protocol answers pings and closes itself
        self._fragments.append(bytes(frame.data))
        if not frame.fin:
            return
        payload = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
        self._fragments = []
        conn = self.conn
        if conn is not None and not conn.offer(Batch(self._opcode, [payload])) and self.transport is not None:
            self.transport.pause_reading()  # the client's outbox is full: stop reading the owner

    def to_owner(self, is_text: bool, payload: bytes) -> None:
        """A client message, as the client's connection parsed it."""
        if self.ws.state is not State.OPEN:
            return
        if is_text:
            self.ws.send_text(payload)
        else:
            self.ws.send_binary(payload)
        self._flush()

    def resume_owner(self) -> None:
        """The client's outbox drained: read the owner again."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake with the owner; the transport goes when it answers, or after
        CLOSE_TIMEOUT whatever happens."""
        transport = self.transport
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
        if transport is None:
            return
        if self.ws.state is not State.CLOSING:
            transport.close()
        elif not transport.is_closing():
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)


def passed_headers(websocket: WebSocket) -> list[tuple[str, str]]:
    """The client's request headers the owner should see as if the client had come to it (its
    Host, Origin, cookies, user agent: `#HTTP_*`, --cgi, origin checks), without the handshake's
    own and without any cluster header a client may have sent."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in websocket.scope.get("headers", [])
        if name.lower() not in HOP_HEADERS and not name.lower().startswith(b"x-scalesocket-")
    ]


async def _open(
    target: Forward, name: str, query: str, headers: list[tuple[str, str]], subprotocols: list[str], settings: Settings
) -> Upstream:
    """Connect to the owner and complete the handshake; InvalidStatus when it refuses."""
    host, port = split_host_port(target.address)
    path = f"/{name}" + (f"?{query}" if query else "")
    context = peer_tls(settings)
    ws = ClientProtocol(
        parse_uri(f"{'wss' if context is not None else 'ws'}://{target.address}{path}"),
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        max_size=settings.max_message_size,
    )
    loop = asyncio.get_running_loop()
    with anyio.fail_after(OPEN_TIMEOUT):
        _, upstream = await loop.create_connection(lambda: Upstream(ws), host, port, ssl=context)
        try:
            request = ws.connect()
            for key, value in headers:
                if key.lower() == "host":
                    del request.headers["Host"]  # the client's, as the owner's templates would see it
                request.headers[key] = value
            ws.send_request(request)
            upstream._flush()
            await upstream.handshake
        except BaseException:
            if upstream.transport is not None:
                upstream.transport.abort()
            raise
    return upstream


async def relay(
    websocket: WebSocket, target: Forward, name: str, query: str, client: str, cluster: Cluster, settings: Settings
) -> None:
    """Serve `websocket` through the room's owner at `target`, until either side closes."""
    headers = passed_headers(websocket)
    headers += [(SECRET_HEADER, cluster.secret), (CLIENT_HEADER, client), (VIA_HEADER, cluster.instance)]
    subprotocols = list(websocket.scope.get("subprotocols") or [])
    extra = {"room": name, "owner": target.instance, "remote": client}
    try:
        upstream = await _open(target, name, query, headers, subprotocols, settings)
    except InvalidStatus as error:
        response = error.response
        kept = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "content-type")}
        log.info("forwarded connection refused by the owner", extra={**extra, "status": response.status_code})
        await websocket.send_denial_response(Response(response.body, response.status_code, headers=kept))
        return
    except (OSError, TimeoutError, InvalidHandshake) as error:
        log.warning("room owner unreachable: %s", error or type(error).__name__, extra=extra)
        denial = PlainTextResponse("room owner unreachable, try again\n", 503, headers={"Retry-After": "1"})
        await websocket.send_denial_response(denial)
        return
    conn = open_connection(websocket, settings.outbox_bytes)
    upstream.conn = conn
    conn.on_unblocked = upstream.resume_owner
    cluster.forwarded_total += 1
    cluster.forwarded_open += 1
    cluster.relays.add(conn)
    try:
        try:
            await websocket.accept(subprotocol=upstream.ws.subprotocol)  # the owner's choice, if any
        except WebSocketDisconnect:
            return
        log.info("client forwarded", extra=extra)
        if upstream.closed.is_set():
            upstream.connection_lost(None)  # the owner went before the client was accepted: tell it why
        await conn.run(upstream.to_owner)
    finally:
        cluster.forwarded_open -= 1
        cluster.relays.discard(conn)
        upstream.close()
