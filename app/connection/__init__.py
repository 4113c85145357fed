"""The connection layer: one `Connection` per websocket, owning its socket in both directions.

The only part of the app that knows websockets or uvicorn internals. A room sees this, and
nothing else of a socket:

    conn.offer(batch) -> bool    queue output (never dropped while the connection lives); False
                                 while the bounded outbox is full: the room pauses its child until
                                 the connection calls `conn.on_unblocked()`
    conn.pause_reading()         stop handing client messages over (the child's input is full)
    conn.resume_reading()
    conn.close(code, reason, drain=True)
                                 close behind what is queued (drain) or dropping it; never waits,
                                 and a peer that does not read up to the close frame is cut off
                                 after a deadline
    conn.queued, conn.socket_full, conn.full
                                 what the room's slow-client clock looks at
    conn.info / conn.id          who it is (app.templates.ClientInfo, set when it joins)

The session that owns it (app.routes.room_socket) makes it with `open_connection(websocket)`,
accepts the websocket, then awaits `conn.run(on_message)`, which hands each client message over as
`on_message(is_text, payload)` and returns when the connection is over.

Two ways to drive the socket, one set of rules (app.connection.base holds the outbox for both):
- `FastConnection` over `WebSocketProtocol`, our own websocket protocol under uvicorn
  (`uvicorn.Config(ws=protocol_class(...))`, as app.server does): no task per connection, frames
  written straight to the transport, reads paused at the transport;
- `AsgiConnection` through plain ASGI under any other server (`uvicorn app:asgi`, TestClient): a
  reader and a writer task in the connection's own task group.
"""

from __future__ import annotations

from starlette.websockets import WebSocket

from app.budget import InboundBudget
from app.connection.asgi import AsgiConnection
from app.connection.base import Connection, Disconnected, OnMessage
from app.connection.protocol import SCOPE_KEY, FastConnection, WebSocketProtocol, fast_path_problem

__all__ = [
    "AsgiConnection",
    "Connection",
    "Disconnected",
    "FastConnection",
    "OnMessage",
    "WebSocketProtocol",
    "fast_path_problem",
    "open_connection",
    "protocol_class",
]


def open_connection(websocket: WebSocket, limit: int) -> FastConnection | AsgiConnection:
    """The connection for `websocket`, with an outbox of `limit` bytes."""
    protocol = websocket.scope.get(SCOPE_KEY)
    if isinstance(protocol, WebSocketProtocol):
        return FastConnection(protocol, limit)
    return AsgiConnection(websocket, limit)


def protocol_class(budget: InboundBudget | None) -> type[WebSocketProtocol]:
    """Our protocol class for one server (uvicorn makes one per connection), charging `budget`."""
    return type("ScalesocketProtocol", (WebSocketProtocol,), {"budget": budget})
