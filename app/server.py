"""Server: run the app under uvicorn with the settings' address, limits and shutdown order.

uvicorn's own shutdown closes websockets with 1012 and only then runs the lifespan shutdown; here
clients get 1001 and every child starts stopping the moment the signal arrives, so the server is
gone within the stop grace period plus a second (SPEC §3).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Generator
from types import FrameType

import anyio
import uvicorn
from starlette.applications import Starlette

from app import create_app
from app.admission import event_loop
from app.cluster import Cluster
from app.connection import fast_path_problem, protocol_class
from app.connection.http import http_class, http_problem
from app.rooms import Rooms
from app.settings import Settings

log = logging.getLogger("scalesocket")

CLOSE_WAIT = 0.5  # how long shutdown waits for close frames to go out before uvicorn takes over


def ws_protocol(app: Starlette) -> type[asyncio.Protocol] | str:
    """Our own websocket protocol if this uvicorn has what it needs; else uvicorn's, with a warning
    (the app then serves websockets through plain ASGI: slower, still bounded)."""
    problem = fast_path_problem()
    if problem is not None:
        log.warning("serving websockets through plain ASGI: %s", problem)
        return "websockets-sansio"
    return protocol_class(getattr(getattr(app, "state", None), "inbound", None))


def http_protocol(settings: Settings) -> type[asyncio.Protocol] | str:
    """httptools with the request's head bounded (431, handshake timeout); uvicorn's own, with a
    warning, if this uvicorn lacks what that needs."""
    problem = http_problem()
    if problem is not None:
        log.warning("request head limits (431, handshake timeout) are off: %s", problem)
        return "httptools"
    return http_class(settings.handshake_timeout)


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings),
        ws=ws_protocol(app),
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ping_interval or None,  # 0: no pings
        ws_ping_timeout=settings.ping_timeout or None,  # 0: no deadline for the pong
        ws_per_message_deflate=False,  # most lines are short; compression costs more CPU than it saves
        log_config=None,  # logging is ours (app.logs), uvicorn's lines included
        loop=event_loop(),  # under a small descriptor limit, one that never drops a connection unanswered
        lifespan="on",
        timeout_graceful_shutdown=1,
        proxy_headers=True,  # REMOTE_ADDR is the real client behind nginx or an ingress
        forwarded_allow_ips=settings.forwarded_allow_ips,
        ssl_certfile=str(settings.sslcert) if settings.sslcert is not None else None,  # --sslcert/--sslkey
        ssl_keyfile=str(settings.sslkey) if settings.sslkey is not None else None,
    )


def listening_fields(host: str, port: int, tls: bool = False) -> dict[str, str]:
    """The `listening` line's fields: the address as bound (IPv6 in brackets) and a URL to open."""
    bracketed = f"[{host}]" if ":" in host else host
    # A wildcard address is not one a browser can open; this machine's name for itself is.
    shown = "localhost" if host in ("0.0.0.0", "::", "") else bracketed
    return {"addr": f"{bracketed}:{port}", "url": f"{'https' if tls else 'http'}://{shown}:{port}/"}


class Server(uvicorn.Server):
    """uvicorn's Server, closing clients with 1001 and stopping children first, and exiting 0 on a signal."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app
        app.state.request_exit = self.request_exit
        self.drain_until: float | None = None  # while draining (SPEC §16): when to stop waiting

    def request_exit(self) -> None:
        self.should_exit = True

    @property
    def rooms(self) -> Rooms | None:
        return getattr(self.app.state, "rooms", None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first SIGTERM with --drain-timeout drains: no new rooms, live rooms go on (SPEC §16)."""
        settings: Settings = self.app.state.settings
        cluster: Cluster | None = getattr(self.app.state, "cluster", None)
        if sig == signal.SIGTERM and settings.drain_timeout > 0 and self.drain_until is None and cluster is not None:
            self.drain_until = time.monotonic() + settings.drain_timeout
            cluster.begin_drain()  # flags only: this runs in a signal handler
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and not self.should_exit:
            if counter % 10 == 0:
                log.info("draining", extra={"rooms": len(self.rooms.running) if self.rooms else 0})
            if not (self.rooms and self.rooms.running) or time.monotonic() >= self.drain_until:
                self.should_exit = True  # what is left is closed with 1001 by shutdown()
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.config.port
            for server in self.servers:  # the port really bound (0 asks for any)
                for sock in server.sockets:
                    port = sock.getsockname()[1]
            tls = bool(self.app.state.settings.tls)
            extra = listening_fields(self.config.host, port, tls)
            settings: Settings = self.app.state.settings
            if settings.registry is not None:  # which instance of the cluster this is (SPEC §16)
                extra.update(instance=settings.instance, advertise=settings.advertised)
            log.info("listening", extra=extra)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        rooms = self.rooms
        if rooms is not None:
            rooms.begin_shutdown()
            cluster: Cluster | None = getattr(self.app.state, "cluster", None)
            if cluster is not None:
                cluster.close_relays(1001, "server shutting down")  # forwarded clients too (SPEC §3)
            with anyio.move_on_after(CLOSE_WAIT):
                await rooms.wait_clients_closed()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal it caught once serving is over; a clean shutdown exits 0.
            self._captured_signals.clear()


def ensure_std_fds() -> None:
    """Make sure fds 0-2 are open, so a pipe never lands on them (CI runs us with stdin closed)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)


class BindError(Exception):
    """The listening address cannot be had (in use, not this host's, privileged): a start-up error."""


def bind(settings: Settings) -> socket.socket:
    """The listening socket for `--addr`, bound as uvicorn would bind it; BindError saying why not."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise BindError(f"{settings.addr} is already in use (another server listens there)") from None
        raise BindError(f"cannot listen on {settings.addr}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


def run(settings: Settings) -> int:
    """Serve until a signal (or the end of the --oneshot session); the process exit status."""
    ensure_std_fds()
    # Bound before anything else: a taken port is a one-line start-up error, not uvicorn's raw Errno and exit 3.
    with bind(settings) as sock:
        app = create_app(settings)
        server = Server(uvicorn_config(app, settings), app)
        server.run(sockets=[sock])
    if not server.started:
        return 1
    rooms = server.rooms
    return rooms.exit_status if rooms is not None else 0
