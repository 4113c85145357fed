"""API: `GET /api/rooms`, `/api/<room>` and `/api/<room>/<field>` (`--api`, SPEC §15), for lobby pages.

Each room is `{"name", "connections", "metadata"}`: its clients, and what its child last published
with a `"_meta": true` line (json server framing; `null` until then). Like `/<room>/stats` it
describes the room a client joining now would join: a valid name with no open room answers
`connections: 0, metadata: null`, so a lobby may ask about any name. A trailing `/` is accepted.
In a cluster (`--registry`) `/api/<room>` answers as the room's owner sees it, from any instance;
`/api/rooms` lists this instance's rooms.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app import forward
from app.names import valid_room
from app.rooms import Rooms

__all__ = ["api_routes", "room_info"]


def room_info(rooms: Rooms, name: str) -> dict[str, Any]:
    room = rooms.live.get(name)
    if room is None:
        return {"name": name, "connections": 0, "metadata": None}
    metadata = room.memory.metadata if room.memory is not None else None
    return {"name": name, "connections": len(room.clients), "metadata": metadata}


async def rooms_list(request: Request) -> Response:
    rooms: Rooms = request.state.rooms
    # Only rooms a client may join: not websocketd's `/` rooms, which are nobody else's.
    listed = [room_info(rooms, name) for name in list(rooms.live) if valid_room(name)]
    # In a cluster (SPEC §16), every instance's rooms: each room is live on its owner only.
    for body in await forward.ask_peers(request):
        listed += [info for info in json.loads(body) if isinstance(info, dict)]
    return JSONResponse(listed)


async def room(request: Request) -> Response:
    name: str = request.path_params["room"]
    if not valid_room(name):
        return JSONResponse({"error": f"not a valid room name: {name!r}"}, status_code=404)
    if name not in request.state.rooms.live and (answer := await forward.ask_owner(request, name)) is not None:
        return answer  # SPEC §16: the room as its owner sees it, from any instance
    info = room_info(request.state.rooms, name)
    field: str | None = request.path_params.get("field")
    if field is None:
        return JSONResponse(info)
    if field not in info:
        return JSONResponse({"error": f"unknown field: {field!r}", "fields": list(info)}, status_code=404)
    return JSONResponse(info[field])


def api_routes() -> list[BaseRoute]:
    """The routes, each with and without a trailing `/`; `/api/rooms` is the list, not a room."""
    return [
        Route(path, endpoint, methods=["GET"])
        for path, endpoint in [
            ("/api/rooms", rooms_list),
            ("/api/rooms/", rooms_list),
            ("/api/{room}", room),
            ("/api/{room}/", room),
            ("/api/{room}/{field}", room),
            ("/api/{room}/{field}/", room),
        ]
    ]
