"""scalesocket: turn any stdin/stdout program into a multiplayer websocket server.

`create_app(settings)` builds the Starlette application; `app.asgi` (for `uvicorn app:asgi`) builds
it from `SCALESOCKET_*` environment variables on first access — the only place that reads them, so
a plain `import app` needs none.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from pydantic import ValidationError
from pydantic_settings import SettingsError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute

from app.admission import Admission, OriginGuard
from app.api import api_routes
from app.budget import InboundBudget
from app.cluster import Cluster
from app.cluster_metrics import ClusterCollector
from app.devconsole import devconsole
from app.metrics import HttpMetrics, Metrics
from app.process import Spawner
from app.rooms import Rooms
from app.routes import RoomShortcut, State, bad_path, health, ready, room_socket
from app.settings import Settings
from app.static import StaticDir
from app.stats import stats
from app.version import __version__

__all__ = ["Settings", "__version__", "create_app"]

log = logging.getLogger("scalesocket")


def _raise_sigterm() -> None:
    # Under a plain `uvicorn app:asgi` the app cannot reach the server: ask it to stop as a user would.
    signal.raise_signal(signal.SIGTERM)


def create_app(settings: Settings) -> Starlette:
    """The scalesocket ASGI application for `settings`."""
    # A registry per app, never prometheus_client's global one: two apps in one process stay apart.
    metrics = Metrics() if settings.metrics else None
    # What all clients may have on its way in, server-wide; our websocket protocol charges it too.
    inbound = InboundBudget(settings.inbound_bytes)
    admission = Admission(settings)  # the origin check, --rooms and the limits, and what they refused

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        # The spawner outlives the task group: every room's run reaps its child through it.
        # The cluster outlives the rooms too: a lease is given back only once its children are reaped.
        async with (
            Spawner.running() as spawner,
            Cluster.running(settings, spawner) as cluster,
            anyio.create_task_group() as tg,
        ):
            rooms = Rooms(tg, settings, spawner, admission)
            rooms.inbound = inbound
            app.state.rooms = rooms
            app.state.cluster = cluster
            collector = ClusterCollector(cluster) if metrics is not None else None
            if metrics is not None and collector is not None:
                metrics.attach(rooms)
                metrics.registry.register(collector)
            if settings.oneshot:
                tg.start_soon(_exit_after_session, rooms, lambda: app.state.request_exit)
            yield {"rooms": rooms, "cluster": cluster}
            # Last resort (the server normally began this on the signal): close every client, and
            # cancel every room; each room's run stops and reaps its child, shielded, as it unwinds.
            rooms.begin_shutdown()
            tg.cancel_scope.cancel()
            if metrics is not None and collector is not None:
                metrics.registry.unregister(collector)

    # Endpoints not enabled are simply absent, so they answer 404 (or a static file of that name).
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET", "HEAD"]),
        Route("/health/ready", ready, methods=["GET", "HEAD"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", metrics.endpoint, methods=["GET"]))  # GET brings HEAD
    if settings.api:
        routes += api_routes()  # before the stats routes: /api/<room> is never room "api"'s stats
    if settings.stats:
        routes.append(Route("/{room}/stats", stats, methods=["GET"]))
        routes.append(Route("/{room}/stats/{statistic}", stats, methods=["GET"]))
    # Websocket routes match websocket scopes only: an upgrade on /<room> reaches the room even when
    # a file of that name exists, and plain GETs fall through to the files.
    routes.append(WebSocketRoute("/", room_socket))  # websocketd's: each connection a room of its own
    routes.append(WebSocketRoute("/{room}", room_socket))
    routes.append(WebSocketRoute("/{path:path}", bad_path))
    if settings.devconsole:
        routes.append(Route("/", devconsole, methods=["GET"]))  # GET brings HEAD; `ws /` stays a room
    if settings.staticdir is not None:
        # A Route rather than Mount("/"): its template labels the HTTP metrics ("/{path:path}", not "").
        routes.append(Route("/{path:path}", StaticDir(settings.staticdir), name="static"))
    middleware = [Middleware(OriginGuard, admission=admission), Middleware(RoomShortcut)]
    if metrics is not None:
        middleware.append(Middleware(HttpMetrics, metrics=metrics))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.inbound = inbound
    app.state.request_exit = _raise_sigterm
    return app


async def _exit_after_session(rooms: Rooms, request_exit: Callable[[], Callable[[], None]]) -> None:
    await rooms.finished.wait()
    log.info("oneshot session over: exiting", extra={"status": rooms.exit_status})
    request_exit()()


def settings_from_env() -> Settings:
    """Settings from `SCALESOCKET_*`; exits with a one-line message naming a missing or bad variable."""
    try:
        return Settings()
    except SettingsError as error:  # a value pydantic could not decode, e.g. SCALESOCKET_ARGS that is not JSON
        sys.exit(f"scalesocket: {error}")
    except ValidationError as error:
        problem = error.errors()[0]
        loc = str(problem["loc"][0]).upper() if problem["loc"] else "*"
        name = loc if loc.startswith("SCALESOCKET_") else "SCALESOCKET_" + loc  # an alias is the variable already
        if problem["type"] == "missing":
            sys.exit(f"scalesocket: {name} is not set (the command to wrap)")
        sys.exit(f"scalesocket: {name}: {problem['msg']}")


def __getattr__(name: str) -> Starlette:
    # PEP 562: `import app` stays free of environment; `app.asgi` builds the app on first access.
    if name != "asgi":
        raise AttributeError(name)
    settings = settings_from_env()
    # Under `uvicorn app:asgi` nobody else gives our loggers a handler (uvicorn configures only its own).
    from app import logs

    logs.configure_library(settings.verbosity, settings.json_logs)
    if settings.quiet_below is not None:  # SCALESOCKET_LOGLEVEL=error or fatal
        logs.quiet_below(settings.quiet_below)
    asgi = create_app(settings)
    globals()["asgi"] = asgi
    return asgi
