"""Routes: thin endpoints — the room websocket, /health — over the state that `create_app` builds.

A room websocket is one `app.connection.Connection`, joined to its room for as long as
`conn.run` lasts: client messages go to `room.from_client` as they arrive, output comes from the
room through `conn.offer`. When the connection is over, the client leaves its room.
"""

from __future__ import annotations

import functools
import logging
from typing import TypedDict
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import forward
from app.admission import Refused
from app.cluster import Cluster, Forward
from app.connection import open_connection
from app.names import name_problem
from app.rooms import Rooms
from app.templates import ClientInfo

log = logging.getLogger("scalesocket.routes")


class State(TypedDict):
    rooms: Rooms
    cluster: Cluster


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
    rooms: Rooms = websocket.state.rooms
    if name and (problem := name_problem(name)) is not None:
        await rooms.admission.deny(websocket, Refused(400, f"invalid room name: {problem}", kind="name"), room=name)
        return
    # Admission checks that refuse before the upgrade go here, before the room is joined.
    cluster: Cluster = websocket.state.cluster
    query = websocket.scope.get("query_string", b"").decode("utf-8", "surrogateescape")
    try:
        peer_client = forward.forwarded_client(websocket, cluster)
        addr = peer_client if peer_client is not None else remote_addr(websocket)
        # Where the room lives: here (a lease held) or on the instance that owns it (SPEC §16).
        # `/` is a room of its own, always here: nobody else can join it, so it has no owner to find.
        placed = await cluster.place(name, forwarded=peer_client is not None) if name else None
        if isinstance(placed, Forward):
            await forward.relay(websocket, placed, name, query, addr, cluster, websocket.app.state.settings)
            return
        conn = open_connection(websocket, rooms.settings.outbox_bytes)
        try:
            room = rooms.join(name, conn, lambda id_: ClientInfo(id_, query, addr, name, websocket.scope))
            if placed is not None and room in rooms.running and room.lease is not placed:
                placed.attach(room)  # before its run spawns: the child starts with the lease's deadline
        finally:
            if placed is not None:
                placed.unhold()
    except Refused as refusal:
        await rooms.admission.deny(websocket, refusal, room=name, remote=remote_addr(websocket))
        return
    extra = {"room": name, "id": conn.id, "remote": addr}
    try:
        try:
            await websocket.accept()
        except WebSocketDisconnect:
            return
        log.info("client connected", extra=extra)
        room.joined(conn)
        await conn.run(functools.partial(room.from_client, conn))
    finally:
        room.leave(conn)
        rooms.release_id(conn.id)
        log.info("client disconnected", extra=extra)


async def bad_path(websocket: WebSocket) -> None:
    """Any other websocket path (several segments): refused before the upgrade."""
    refusal = Refused(400, "invalid path: a websocket path is /<room>, one segment", kind="path")
    await websocket.state.rooms.admission.deny(websocket, refusal, path=websocket.url.path)


class RoomShortcut:
    """Outermost middleware: a websocket on `/<room>` goes straight to `room_socket`, past the
    router and the exception middleware, which do nothing for it but cost time and memory per
    connection. Anything else takes the ordinary route (to the same endpoint, for a room path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path: str = scope["path"]
            if path.count("/") == 1:  # "/" too: websocketd's room of its own
                scope["path_params"] = {"room": path[1:]}
                await room_socket(WebSocket(scope, receive, send))
                return
        await self.app(scope, receive, send)
