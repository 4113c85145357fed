"""Metrics: what `/metrics` reports, in a `CollectorRegistry` of the app's own.

Nothing here runs per message. Rooms already keep plain integer counts (joins, messages and bytes
each way); `Metrics` reads them from the live rooms when Prometheus scrapes, adds what rooms that
have closed left behind, and counts the rare events (child spawned, child exited) in the room
hooks. Room-labelled series are derived from the rooms running at scrape time, so a closed room's
series disappear by themselves and label cardinality follows the rooms that exist.

starlette-exporter's `PrometheusMiddleware` measures HTTP requests (never websockets), labelled by
route template; `HttpMetrics` keeps its families in our registry too, where upstream would put them
in prometheus_client's process-global one (two apps in one process would then share them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as text_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp
from starlette_exporter import PrometheusMiddleware

from app import logs
from app.admission import REFUSALS

if TYPE_CHECKING:
    from app.room import Room
    from app.rooms import Rooms

APP_NAME = "scalesocket"  # the `app_name` label of starlette-exporter's families
EXIT_CLASSES = ("0", "nonzero", "signal")
# The classic text format that Prometheus 2 and promtool read (prometheus_client's own "latest" moved on).
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# starlette-exporter's label names, in the order its middleware passes values to `.labels()`.
_HTTP_LABELS = ("method", "path", "status_code", "app_name")


def exit_class(returncode: int) -> str:
    """The `exit` label of a child's exit status: `0`, `nonzero`, or `signal` (killed by one)."""
    if returncode < 0:
        return "signal"
    return "0" if returncode == 0 else "nonzero"


@dataclass
class _RoomSeries:
    """A room name's counter series, as the last scrape saw it."""

    created: float
    retired_joins: int = 0  # joins of rooms of this name that closed since the series was first scraped


class Metrics:
    """The app's registry: HTTP request families, and a collector over the rooms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.created = time.time()
        self.rooms: Rooms | None = None
        self.children_spawned = 0
        self.children_exited = dict.fromkeys(EXIT_CLASSES, 0)
        # What rooms that have closed counted; running rooms' own counts are added at scrape time.
        self.closed = {"messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0}
        self._series: dict[str, _RoomSeries] = {}
        # starlette-exporter's three default families, with its names, help texts and labels.
        self.http_requests = Counter(
            "starlette_requests_total", "Total HTTP requests", _HTTP_LABELS, registry=self.registry
        )
        self.http_duration = Histogram(
            "starlette_request_duration_seconds",
            "HTTP request duration, in seconds",
            _HTTP_LABELS,
            registry=self.registry,
        )
        self.http_in_progress = Gauge(
            "starlette_requests_in_progress",
            "Total HTTP requests currently in progress",
            ("method", "app_name"),
            registry=self.registry,
        )
        self.registry.register(self)

    def attach(self, rooms: Rooms) -> None:
        """Start observing `rooms` (the lifespan creates them after the app)."""
        self.rooms = rooms
        rooms.on_room_open = self.room_opened
        rooms.on_room_closed = self.room_closed

    def room_opened(self, room: Room) -> None:
        self.children_spawned += 1

    def room_closed(self, room: Room) -> None:
        """Fold a finished room's counts into the server-wide totals."""
        closed = self.closed
        closed["messages_in"] += room.messages_in
        closed["messages_out"] += room.messages_out
        closed["bytes_in"] += room.bytes_in
        closed["bytes_out"] += room.bytes_out
        if room.child is not None and room.child.returncode is not None:
            self.children_exited[exit_class(room.child.returncode)] += 1
        series = self._series.get(room.name)
        if series is not None:
            # Another room of this name may still run (or start before the next scrape): the series
            # lives on, so its counter keeps this room's joins instead of going backwards.
            series.retired_joins += room.joins

    # --- the collector ----------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        # Lets the registry refuse a family name that collides with another, without a collect().
        return self._families([], [])

    def collect(self) -> Iterable[Metric]:
        running = list(self.rooms.running) if self.rooms is not None else []
        by_name: dict[str, list[Room]] = {}
        for room in running:
            by_name.setdefault(room.name, []).append(room)
        series = self._series
        for gone in [name for name in series if name not in by_name]:
            del series[gone]  # no room of that name left: its series ends here
        per_room: list[tuple[str, _RoomSeries, int, int]] = []
        for name in sorted(by_name):
            rooms = by_name[name]
            seen = series.get(name)
            if seen is None:
                seen = series[name] = _RoomSeries(created=min(room.started for room in rooms))
            joins = seen.retired_joins + sum(room.joins for room in rooms)
            per_room.append((name, seen, joins, sum(len(room.clients) for room in rooms)))
        return self._families(per_room, running)

    def _families(self, per_room: list[tuple[str, _RoomSeries, int, int]], running: list[Room]) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "scalesocket_websocket_connections", "Websocket connections accepted into the room", labels=["room"]
        )
        open_ = GaugeMetricFamily(
            "scalesocket_websocket_connections_open", "Websocket connections now open in the room", labels=["room"]
        )
        for name, seen, joins, clients in per_room:
            total.add_metric([name], joins, created=seen.created)
            open_.add_metric([name], clients)
        yield total
        yield open_

        live = len(self.rooms.live) if self.rooms is not None else 0
        yield GaugeMetricFamily("scalesocket_rooms_open", "Rooms a new client can join", value=live)
        children = sum(1 for room in running if room.child is not None and room.child.returncode is None)
        yield GaugeMetricFamily("scalesocket_children_running", "Child processes not yet reaped", value=children)
        yield self._counter("scalesocket_children_spawned", "Child processes started", self.children_spawned)
        exited = CounterMetricFamily(
            "scalesocket_children_exited",
            "Child processes reaped, by exit status: 0, nonzero, or killed by a signal",
            labels=["exit"],
        )
        for cls, count in self.children_exited.items():
            exited.add_metric([cls], count, created=self.created)
        yield exited

        closed, created = self.closed, self.created
        messages = CounterMetricFamily(
            "scalesocket_messages",
            "Messages: in = client messages written to children, out = messages delivered to clients (per client)",
            labels=["direction"],
        )
        messages.add_metric(["in"], closed["messages_in"] + sum(r.messages_in for r in running), created=created)
        messages.add_metric(["out"], closed["messages_out"] + sum(r.messages_out for r in running), created=created)
        yield messages
        size = CounterMetricFamily(
            "scalesocket_message_bytes",
            "Bytes: in = written to children's input, out = message payloads delivered to clients (per client)",
            labels=["direction"],
            unit="bytes",
        )
        size.add_metric(["in"], closed["bytes_in"] + sum(r.bytes_in for r in running), created=created)
        size.add_metric(["out"], closed["bytes_out"] + sum(r.bytes_out for r in running), created=created)
        yield size
        slow = self.rooms.slow_clients if self.rooms is not None else 0
        yield self._counter("scalesocket_slow_clients_closed", "Clients closed with 1008 for being too slow", slow)
        yield self._counter(
            "scalesocket_log_records_dropped", "Log lines dropped because stderr was not keeping up", logs.dropped()
        )
        lines, dropped_bytes = logs.stderr_dropped()
        yield self._counter("scalesocket_child_stderr_lines_dropped", "Child stderr lines over the rate limit", lines)
        yield self._counter(
            "scalesocket_child_stderr_bytes_dropped", "Child stderr bytes over the rate limit", dropped_bytes
        )
        refused = CounterMetricFamily(
            "scalesocket_websocket_refused",
            "Websocket connections refused, by reason (before the upgrade; descriptors: also 1013 after it)",
            labels=["reason"],
        )
        counts = self.rooms.admission.refused if self.rooms is not None else {}
        for reason in sorted(set(REFUSALS) | counts.keys()):
            refused.add_metric([reason], counts.get(reason, 0), created=created)
        yield refused

    def _counter(self, name: str, documentation: str, value: int) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation)
        family.add_metric([], value, created=self.created)
        return family

    # --- exposition -------------------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics: OpenMetrics; the classic text format only for a client that asks for it alone.

        starlette-exporter's `handle_openmetrics`, over our registry. The rooms are read here, on the
        event loop (they change under it); formatting, which prometheus_client does at some 10 µs a
        sample, happens in a worker thread so a scrape of many rooms never stalls the websockets.
        """
        snapshot = _Snapshot(list(self.registry.collect()))
        accept = request.headers.get("accept", "")
        if "text/plain" in accept and "application/openmetrics-text" not in accept:
            # `promtool check metrics` lints only this format (it misreads OpenMetrics counters).
            body = await anyio.to_thread.run_sync(text_latest, snapshot)
            return Response(body, headers={"Content-Type": TEXT_CONTENT_TYPE})
        body = await anyio.to_thread.run_sync(openmetrics_latest, snapshot)
        return Response(body, headers={"Content-Type": OPENMETRICS_CONTENT_TYPE})


class _Snapshot:
    """Families already collected, for formatting away from the event loop."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class HttpMetrics(PrometheusMiddleware):
    """starlette-exporter's middleware, recording into `Metrics` instead of the global registry.

    Upstream creates its families lazily, on the class, in the default registry; these properties
    hand it ours. Paths are route templates (`group_paths`), and requests no route handles are not
    recorded (`filter_unhandled_paths`), so a raw room name never becomes a label value.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app, app_name=APP_NAME, group_paths=True, filter_unhandled_paths=True)
        self._ours = metrics

    @property
    def request_count(self) -> Any:
        return self._ours.http_requests

    @property
    def request_time(self) -> Any:
        return self._ours.http_duration

    @property
    def requests_in_progress(self) -> Any:
        return self._ours.http_in_progress
