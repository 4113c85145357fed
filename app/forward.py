"""Forward: carry a client's websocket to the instance that owns its room (SPEC §16).

The entry instance opens a websocket of its own to the owner *before* it accepts the client, so
anything the owner refuses reaches the client as the same HTTP status. Then frames go both ways
unchanged, and whichever side closes, the other sees the same close code and reason. The owner
believes the client address the entry passes along only under the cluster secret; a connection
that says it is forwarded without the secret is refused with 403, and the address header alone
(a client's own) is ignored.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from urllib.parse import quote

import anyio
from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from app.cluster import Cluster, Forward
from app.rooms import Refused
from app.settings import Settings, split_host_port

log = logging.getLogger("scalesocket.forward")

SECRET_HEADER = "x-scalesocket-forward"  # the cluster secret: this connection comes from a peer
CLIENT_HEADER = "x-scalesocket-client"  # the client's address as the entry instance saw it
VIA_HEADER = "x-scalesocket-via"  # the entry instance's name, for the owner's logs
OWNER_LOST = 1012  # the owner went away without a close frame: the client should reconnect
OPEN_TIMEOUT = 2.0  # to a healthy owner this takes milliseconds; a paused one must not hold the client long
FETCH_LIMIT = 64 * 1024  # a peer's stats answer is a few hundred bytes
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


def _holds_secret(claimed: str | None, cluster: Cluster) -> bool:
    secret = cluster.secret
    if claimed is None or not cluster.clustered or not secret:
        return False
    return hmac.compare_digest(claimed.encode(), secret.encode())


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
    with anyio.fail_after(OPEN_TIMEOUT):
        async with await anyio.connect_tcp(host, port) as stream:
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


def _url(target: Forward, name: str, query: str) -> str:
    return f"ws://{target.address}/{name}" + (f"?{query}" if query else "")


async def relay(
    websocket: WebSocket, target: Forward, name: str, query: str, client: str, cluster: Cluster, settings: Settings
) -> None:
    """Serve `websocket` through the room's owner at `target`, until either side closes."""
    headers = {SECRET_HEADER: cluster.secret, CLIENT_HEADER: client, VIA_HEADER: cluster.instance}
    extra = {"room": name, "owner": target.instance, "remote": client}
    try:
        upstream = await connect(
            _url(target, name, query),
            additional_headers=headers,
            open_timeout=OPEN_TIMEOUT,
            max_size=settings.max_message_size,
            max_queue=16,  # frames read ahead of the client: bounded, and the owner's socket pauses past it
            compression=None,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            user_agent_header=None,
        )
    except InvalidStatus as error:
        response = error.response
        kept = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "content-type")}
        log.info("forwarded connection refused by the owner", extra={**extra, "status": response.status_code})
        await websocket.send_denial_response(Response(response.body, response.status_code, headers=kept))
        return
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as error:
        log.warning("room owner unreachable: %s", error or type(error).__name__, extra=extra)
        denial = PlainTextResponse("room owner unreachable, try again\n", 503, headers={"Retry-After": "1"})
        await websocket.send_denial_response(denial)
        return
    cluster.forwarded_total += 1
    cluster.forwarded_open += 1
    try:
        await websocket.accept()
        log.info("client forwarded", extra=extra)
        await _pump(websocket, upstream)
    finally:
        cluster.forwarded_open -= 1
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await upstream.close()


async def _pump(websocket: WebSocket, upstream: ClientConnection) -> None:
    client_gone = False

    async def down() -> None:  # owner -> client
        try:
            async for message in upstream:
                if isinstance(message, str):
                    await websocket.send_text(message)
                else:
                    await websocket.send_bytes(message)
        except ConnectionClosed:
            pass
        except (OSError, RuntimeError):
            return  # the client is gone
        finally:
            tg.cancel_scope.cancel()
        rcvd = upstream.protocol.close_rcvd
        code, reason = (rcvd.code, rcvd.reason) if rcvd is not None else (OWNER_LOST, "room owner lost")
        if not client_gone:
            if code in UNSENDABLE:
                code, reason = OWNER_LOST, "room owner lost"
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    await websocket.close(code, reason)
                except (OSError, RuntimeError):
                    pass

    async def up() -> None:  # client -> owner
        nonlocal client_gone
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    client_gone = True
                    code = int(message.get("code") or 1000)
                    code = 1000 if code in UNSENDABLE else code
                    await upstream.close(code, message.get("reason") or "")
                    return
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
        except ConnectionClosed:
            return  # the owner closed: `down` relays its close

    async with anyio.create_task_group() as tg:
        tg.start_soon(up)
        await down()
