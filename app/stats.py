"""Stats: `GET /<room>/stats` and `/<room>/stats/<statistic>` (SPEC §8), JSON for lobbies and dashboards.

They describe the room a client joining now would join; a room being stopped is already closed to
them. A room with no child reports 0 connections and nulls — never a 404, so a lobby can poll any
valid name. Reading the stats costs the room nothing: they are plain counters it keeps anyway.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import forward
from app.names import valid_room
from app.rooms import Rooms

_COUNTS = ("messages_in", "messages_out", "bytes_in", "bytes_out")  # plain integers on `Room`


def room_stats(rooms: Rooms, name: str) -> dict[str, Any]:
    """Every statistic of room `name` (the same keys whether or not it runs); `started` is Unix seconds."""
    room = rooms.live.get(name)
    if room is None:
        return {"name": name, "connections": 0, "pid": None, "started": None, **dict.fromkeys(_COUNTS, 0)}
    return {
        "name": name,
        "connections": len(room.clients),
        "pid": room.child.pid if room.child is not None else None,  # None until the child is spawned
        "started": round(room.started, 3),
        **{count: getattr(room, count) for count in _COUNTS},
    }


async def stats(request: Request) -> Response:
    """GET /{room}/stats[/{statistic}]: all statistics, or one value alone; 404 with a JSON reason."""
    name: str = request.path_params["room"]
    if not valid_room(name):
        return JSONResponse({"error": f"not a valid room name: {name!r}"}, status_code=404)
    rooms: Rooms = request.state.rooms
    if name not in rooms.live and (answer := await forward.ask_owner(request, name)) is not None:
        return answer  # SPEC §16: the room as its owner sees it, from any instance
    values = room_stats(rooms, name)
    statistic: str | None = request.path_params.get("statistic")
    if statistic is None:
        return JSONResponse(values)
    if statistic not in values:
        return JSONResponse({"error": f"unknown statistic: {statistic!r}", "statistics": list(values)}, 404)
    return JSONResponse(values[statistic])
