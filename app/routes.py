"""Routes: thin endpoints — the room websocket, /health — over the state that `create_app` builds.

A websocket connection is its handler task, the reader (the only caller of `receive`), which carries
client messages to the room (under the CLI's RoomProtocol they go straight from the read callback
once the client is attached, and `receive` only sees the disconnect). Output reaches the socket
directly from the room, or, while the socket is backed up, through a writer task in the server's
task group. When the reader ends, the writer is cancelled and the client leaves its room.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import TypedDict
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import forward
from app.clients import Client
from app.cluster import Cluster, Forward
from app.room import Room
from app.rooms import Refused, Rooms
from app.senders import Disconnected, Sender, capture_protocol, sender_for
from app.templates import ClientInfo

log = logging.getLogger("scalesocket.routes")

ROOM_NAME = re.compile(r"[A-Za-z0-9._~-]{1,128}")
RESERVED = frozenset({"health", "metrics", "api", "static", "stats"})


class State(TypedDict):
    rooms: Rooms
    cluster: Cluster


def valid_room(name: str) -> bool:
    return ROOM_NAME.fullmatch(name) is not None and name not in RESERVED


def remote_addr(websocket: WebSocket) -> str:
    """`ip:port` (`[ip]:port` for IPv6) of the client, safe to splice into a join message."""
    if websocket.client is None:
        return ""
    host, port = websocket.client.host, websocket.client.port
    # A trusted proxy's X-Forwarded-For may carry anything: never let it inject text (SPEC §6). IP
    # addresses pass unchanged; anything else is percent-encoded.
    host = quote(host, safe=":.")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """/health/ready: 200 while this instance takes new rooms; 503 draining or cut off from the registry."""
    cluster: Cluster = request.state.cluster
    return JSONResponse({"status": cluster.status()}, 200 if cluster.ready else 503)


async def room_socket(websocket: WebSocket) -> None:
    """ws /{room}: join the room (starting its child if first), then relay both ways."""
    name = websocket.path_params.get("room", "")  # "" on `/`: a room of its own (Rooms.join)
    if name and not valid_room(name):
        await websocket.send_denial_response(PlainTextResponse(f"invalid room name: {name!r}\n", 400))
        return
    rooms: Rooms = websocket.state.rooms
    cluster: Cluster = websocket.state.cluster
    query = websocket.scope.get("query_string", b"").decode("utf-8", "surrogateescape")
    try:
        peer_client = forward.forwarded_client(websocket, cluster)
        addr = peer_client if peer_client is not None else remote_addr(websocket)
        # Where the room lives: here (a lease held) or on the instance that owns it (SPEC §16).
        placed = await cluster.place(name, forwarded=peer_client is not None)
        if isinstance(placed, Forward):
            await forward.relay(websocket, placed, name, query, addr, cluster, websocket.app.state.settings)
            return
        try:
            room, client = rooms.join(name, lambda id_: ClientInfo(id_, query, addr, name))
            if room in rooms.running and room.lease is not placed:
                placed.attach(room)  # before its run spawns: the child starts with the lease's deadline
        finally:
            placed.unhold()
    except Refused as refusal:
        log.debug("websocket refused", extra={"room": name, "status": refusal.status, "reason": refusal.reason})
        headers = {"Retry-After": "1"} if refusal.status == 503 else None
        await websocket.send_denial_response(PlainTextResponse(refusal.reason + "\n", refusal.status, headers=headers))
        return
    extra = {"room": name, "id": client.id, "remote": addr}
    try:
        await websocket.accept()
        log.info("client connected", extra=extra)
        sender = sender_for(websocket)
        # A writer, when the client needs one, runs in the server's task group; detach() cancels it.
        client.attach(sender.try_write, sender.socket_full, lambda: rooms.start_soon(_write, client, sender))
        await _read(websocket, room, client, sender)
    finally:
        client.detach()
        room.leave(client)
        rooms.release_id(client.id)
        log.info("client disconnected", extra=extra)


async def bad_path(websocket: WebSocket) -> None:
    """Any other websocket path (several segments, reserved names): refused before the upgrade."""
    await websocket.send_denial_response(PlainTextResponse("websocket path must be /<room>\n", 400))


async def _read(websocket: WebSocket, room: Room, client: Client, sender: Sender) -> None:
    encode = room.encoder.message
    direct = False
    try:
        await room.joined(client, sender)
        while True:
            if not direct and room.attached:
                # From here on messages reach the room as they are parsed; receive() sees the disconnect.
                direct = sender.receive_directly(functools.partial(room.from_client, client, sender))
            message = await websocket.receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            data = encode(client.id, message.get("text"), message.get("bytes"))
            if data is not None:
                await room.send_to_child(data, sender)
    except (Disconnected, WebSocketDisconnect, OSError):
        return


async def _write(client: Client, sender: Sender) -> None:
    """Drain the outbox (waiting while the socket is full), send a requested close, then end."""
    try:
        with anyio.CancelScope() as client.writer_scope:  # detach() cancels it: the connection is over
            while batches := client.take():
                with anyio.CancelScope() as client.send_scope:  # a close that drops the outbox cancels it
                    await sender.send(batches)
            if (request := client.close_request) is not None:
                await sender.close(request.code, request.reason)
                client.closed.set()
    except (Disconnected, WebSocketDisconnect, OSError, RuntimeError):
        client.detach()  # the connection is gone: drop what is queued, and queue nothing more
    finally:
        client.writing = False


class FastPath:
    """Outermost middleware: under uvicorn's websockets-sansio protocol, room websockets take a
    short cut.

    It hands `FastSender` the protocol (Starlette's own middleware wraps `send`, so only the
    outermost layer still sees uvicorn's bound method), and sends `/<room>` straight to
    `room_socket`, past the router and the exception middleware, which do nothing for a websocket
    but cost time and memory per connection. Anything else, or any other server, takes the
    ordinary Starlette route to the same endpoint.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and capture_protocol(scope, send):
            path: str = scope["path"]
            if path.count("/") == 1:
                scope["path_params"] = {"room": path[1:]}
                await room_socket(WebSocket(scope, receive, send))
                return
        await self.app(scope, receive, send)
