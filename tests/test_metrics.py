"""SPEC §8 `--metrics` through a real server: every value while clients come and go, and a valid exposition."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import TIMEOUT, UNIT, Serve, alive, child_settings, recv, recv_text, wait_gone
from tests.test_backpressure import connect_stalling, read_all, seq_settings

pytestmark = pytest.mark.anyio

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPEN = "scalesocket_websocket_connections_open"
TOTAL = "scalesocket_websocket_connections_total"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    """GET /metrics, parsed by the reference OpenMetrics parser; every series appears once."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == OPENMETRICS
    assert response.text.endswith("# EOF\n")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def labels_of(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (sample, labels) in samples if sample == name}


async def scrape_until(http: httpx.AsyncClient, condition: Callable[[Samples], bool]) -> Samples:
    """Scrape until `condition` holds: a leave or an exit reaches the server after the client's close."""
    with anyio.fail_after(TIMEOUT):
        while not condition(samples := await scrape(http)):  # noqa: ASYNC110 - a scrape is all we can see
            await anyio.sleep(0.02)
    return samples


async def ready_pid(ws: ClientConnection) -> int:
    line = await recv_text(ws)
    assert line.startswith("ready"), line
    return int(line.split()[1])


async def test_connection_series_follow_clients_and_vanish_with_the_room(server: Serve) -> None:
    async with server(child_settings("echo", metrics=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        m = await scrape(http)
        assert labels_of(m, OPEN, "room") == set() and labels_of(m, TOTAL, "room") == set()
        assert get(m, "scalesocket_rooms_open") == 0
        assert get(m, "scalesocket_children_spawned_total") == 0
        async with s.connect("/r") as a:
            pid = await ready_pid(a)
            m = await scrape(http)
            assert (get(m, OPEN, room="r"), get(m, TOTAL, room="r")) == (1, 1)
            created = get(m, "scalesocket_websocket_connections_created", room="r")
            assert created is not None and abs(created - time.time()) < TIMEOUT
            assert get(m, "scalesocket_rooms_open") == 1
            assert get(m, "scalesocket_children_running") == 1
            assert get(m, "scalesocket_children_spawned_total") == 1
            async with s.connect("/r") as b:  # in the room once its handshake is done
                m = await scrape(http)
                assert (get(m, OPEN, room="r"), get(m, TOTAL, room="r")) == (2, 2)
                await b.send("hi")
                assert await recv(a) == "hi"
                assert await recv(b) == "hi"
            m = await scrape_until(http, lambda m: get(m, OPEN, room="r") == 1)
            assert get(m, TOTAL, room="r") == 2  # a counter: leaving does not take a connection back
            assert get(m, "scalesocket_children_spawned_total") == 1  # b shared the child
        await wait_gone(pid)
        m = await scrape_until(http, lambda m: get(m, "scalesocket_children_exited_total", exit="0") == 1)
        # The closed room's series are removed, not left at zero.
        assert labels_of(m, OPEN, "room") == set() and labels_of(m, TOTAL, "room") == set()
        assert get(m, "scalesocket_rooms_open") == 0
        assert get(m, "scalesocket_children_running") == 0


async def test_a_room_name_keeps_one_counting_series_while_a_dying_room_overlaps(server: Serve) -> None:
    async with server(child_settings("ignore-term", metrics=True, stop_grace=UNIT)) as s:
        async with httpx.AsyncClient(base_url=s.http) as http:
            async with s.connect("/r") as ws:
                first = await ready_pid(ws)
                assert get(await scrape(http), TOTAL, room="r") == 1
            async with s.connect("/r") as ws:  # the first child is still in its grace period
                second = await ready_pid(ws)
                m = await scrape(http)  # one series per room name, summed over both children
                assert alive(first) and second != first
                assert (get(m, OPEN, room="r"), get(m, TOTAL, room="r")) == (1, 2)
                assert get(m, "scalesocket_rooms_open") == 1
                assert get(m, "scalesocket_children_running") == 2
                await wait_gone(first)
                m = await scrape_until(http, lambda m: get(m, "scalesocket_children_exited_total", exit="signal") == 1)
                assert (get(m, OPEN, room="r"), get(m, TOTAL, room="r")) == (1, 2)  # never goes backwards
            await wait_gone(second)
            m = await scrape_until(http, lambda m: get(m, "scalesocket_children_exited_total", exit="signal") == 2)
            assert labels_of(m, TOTAL, "room") == set()


async def test_children_exits_are_counted_by_class(server: Serve) -> None:
    async with server(child_settings("wait-exit", metrics=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        async with s.connect("/crash") as ws:
            assert await recv(ws) == "ready"
            await ws.send("exit 3")
            with pytest.raises(ConnectionClosed):
                await recv(ws)
        async with s.connect("/quits") as ws:
            assert await recv(ws) == "ready"
        exited = "scalesocket_children_exited_total"
        m = await scrape_until(http, lambda m: get(m, exited, exit="0") == 1)  # EOF on stdin: exits 0
        assert get(m, exited, exit="nonzero") == 1
        assert get(m, exited, exit="signal") == 0
        assert get(m, "scalesocket_children_spawned_total") == 2


async def test_messages_and_bytes_each_way_outlive_their_room(server: Serve) -> None:
    async with server(child_settings("echo", metrics=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        async with s.connect("/r") as a:
            ready = await recv_text(a)
            async with s.connect("/r") as b:
                await a.send("hello")
                assert (await recv(a), await recv(b)) == ("hello", "hello")
                m = await scrape(http)
        expected = {
            ("scalesocket_messages_total", "in"): 1,
            ("scalesocket_messages_total", "out"): 3,  # the ready line to a, then hello to both
            ("scalesocket_message_bytes_total", "in"): len("hello\n"),  # as written to the child
            ("scalesocket_message_bytes_total", "out"): len(ready) + 2 * len("hello"),
        }
        assert {key: get(m, key[0], direction=key[1]) for key in expected} == expected
        m = await scrape_until(http, lambda m: get(m, "scalesocket_rooms_open") == 0 and not labels_of(m, OPEN, "room"))
        assert {key: get(m, key[0], direction=key[1]) for key in expected} == expected


async def test_slow_client_closed_is_counted(server: Serve) -> None:
    async with server(seq_settings(metrics=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        assert get(await scrape(http), "scalesocket_slow_clients_closed_total") == 0
        stalled = await connect_stalling(s, "/busy")
        async with s.connect("/busy") as reader:
            await reader.send("go")
            await read_all(reader)
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(stalled)
            assert get(await scrape(http), "scalesocket_slow_clients_closed_total") == 1


async def test_http_metrics_label_route_templates_never_raw_paths(server: Serve, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    settings = child_settings("echo", metrics=True, stats=True, staticdir=tmp_path)
    async with server(settings) as s, httpx.AsyncClient(base_url=s.http) as http:
        for path in ["/alpha/stats", "/beta/stats", "/alpha/stats/connections", "/", "/gamma", "/health"]:
            await http.get(path)
        m = await scrape(http)
        requests = "starlette_requests_total"
        paths = labels_of(m, requests, "path")
        assert paths == {"/{room}/stats", "/{room}/stats/{statistic}", "/{path:path}", "/health"}
        assert get(m, requests, method="GET", path="/{room}/stats", status_code="200", app_name="scalesocket") == 2
        assert get(m, requests, method="GET", path="/{path:path}", status_code="404", app_name="scalesocket") == 1
        assert get(m, "starlette_request_duration_seconds_count", method="GET", path="/health", status_code="200",
                   app_name="scalesocket") == 1  # fmt: skip
    async with server(child_settings("echo", metrics=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        await http.get("/delta")  # no route takes it: a 404 that is not recorded at all
        assert labels_of(await scrape(http), "starlette_requests_total", "path") == set()


async def test_each_app_has_a_registry_of_its_own(server: Serve) -> None:
    async with server(child_settings("echo", metrics=True)) as one, server(child_settings("echo", metrics=True)) as two:
        async with httpx.AsyncClient(base_url=one.http) as h1, httpx.AsyncClient(base_url=two.http) as h2:
            async with one.connect("/only-on-one") as ws:
                await recv(ws)
                for _ in range(3):
                    await h1.get("/health")
                m1, m2 = await scrape(h1), await scrape(h2)
            health = {"method": "GET", "path": "/health", "status_code": "200", "app_name": "scalesocket"}
            assert get(m1, "starlette_requests_total", **health) == 3
            assert get(m2, "starlette_requests_total", **health) is None
            assert labels_of(m1, OPEN, "room") == {"only-on-one"} and labels_of(m2, OPEN, "room") == set()
    # Nothing went to prometheus_client's process-global registry.
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith(("starlette_", "scalesocket_"))]


async def test_metrics_pass_promtool_check(server: Serve) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    settings = child_settings("echo", metrics=True, stats=True)
    async with server(settings) as s, httpx.AsyncClient(base_url=s.http) as http, s.connect("/r") as ws:
        await recv(ws)
        await http.get("/r/stats")
        await http.get("/r/stats/nope")
        # promtool lints the classic text format only (it misreads OpenMetrics counters): ask for it.
        response = await http.get("/metrics", headers={"Accept": "text/plain; version=0.0.4"})
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert 'scalesocket_websocket_connections_open{room="r"} 1.0' in response.text
        result = await anyio.run_process([promtool, "check", "metrics"], input=response.content, check=False)
        assert (result.returncode, result.stdout + result.stderr) == (0, b"")


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # what Prometheus sends
    ],
)
async def test_openmetrics_is_the_default(server: Serve, accept: str | None) -> None:
    async with server(child_settings("echo", metrics=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        headers = {"Accept": accept} if accept is not None else {}
        response = await http.get("/metrics", headers=headers)
        assert response.headers["content-type"] == OPENMETRICS
        assert response.text.endswith("# EOF\n")
