"""SPEC §16-§17, piece by piece: the cluster options, /health/ready, the spawner helper's deadline,
the registry's scripts against a real redis-server, and an instance started while Redis is away."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app import create_app
from app.cluster import Lease
from app.registry import Owner
from app.server import Server, uvicorn_config
from app.settings import Settings, parse_registry_url
from cli.__main__ import to_settings
from tests.cluster_harness import REDIS, Instance, Redis, open_client
from tests.conftest import TIMEOUT, Running, Serve, alive, child_settings, recv_text, wait_gone
from tests.test_backpressure import connect_stalling, eventually, read_all, seq_settings
from tests.test_process import ROOT
from tests.test_tls import make_pair

pytestmark = pytest.mark.anyio
needs_redis = pytest.mark.skipif(REDIS is None, reason="needs redis-server (see .ci/run)")


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("redis://127.0.0.1:6379", ("127.0.0.1", 6379, 0)),
        ("redis://redis.default.svc:6380/2", ("redis.default.svc", 6380, 2)),
        ("redis://[::1]:7000/", ("::1", 7000, 0)),
        ("redis://redis", ("redis", 6379, 0)),
    ],
)
def test_registry_urls_that_parse(url: str, parts: tuple[str, int, int]) -> None:
    parsed = parse_registry_url(url)
    assert (parsed.host, parsed.port, parsed.db) == parts


@pytest.mark.parametrize(
    "url", ["", "redis", "http://x:1", "redis://", "redis://x:0", "redis://x:99999", "redis://x:1/db", "redis://a@b:1"]
)
def test_registry_url_that_does_not_parse_exits_2_naming_the_option(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        to_settings(["--registry", url, "cat"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--registry" in err


def test_cluster_options_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_LEASE_TTL", "3.5")
    monkeypatch.setenv("SCALESOCKET_CLUSTER_SECRET", "s3")
    s = to_settings(["--registry", "redis://r:1", "--advertise", "10.0.0.7:9000", "--instance", "a-1", "cat"])
    assert (s.registry, s.advertised, s.instance, s.lease_ttl, s.cluster_secret) == (
        "redis://r:1",
        "10.0.0.7:9000",
        "a-1",
        3.5,
        "s3",
    )
    assert to_settings(["--drain-timeout", "30", "--addr", "10.1.2.3:9001", "cat"]).advertised == "10.1.2.3:9001"


@pytest.mark.parametrize("argv", [["--advertise", "nohostport"], ["--instance", "a b"], ["--drain-timeout", "-1"]])
def test_bad_cluster_option_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        to_settings([*argv, "cat"])
    assert exited.value.code == 2


@given(st.integers(min_value=0, max_value=2**62), st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True))
def test_owner_round_trip(token: int, instance: str) -> None:
    owner = Owner(token, instance, "10.0.0.1:9000")
    assert Owner.decode(owner.encode()) == owner


async def test_single_instance_is_ready_and_not_while_draining(server: Serve) -> None:
    async with server(child_settings("echo")) as s, httpx.AsyncClient() as http:
        response = await http.get(s.http + "/health/ready")
        assert (response.status_code, response.json()) == (200, {"status": "ready"})
        s.server.app.state.cluster.begin_drain()
        response = await http.get(s.http + "/health/ready")
        assert (response.status_code, response.json()) == (503, {"status": "draining"})
        assert (await http.get(s.http + "/health")).status_code == 200


async def test_child_gets_instance_in_its_environment(server: Serve) -> None:
    async with server(child_settings("env", instance="box-7")) as s, s.connect("/r") as ws:
        assert '"INSTANCE": "box-7"' in await recv_text(ws)


async def test_helper_kills_a_child_at_its_deadline_even_while_the_server_is_paused(server: Serve) -> None:
    """The deadline lives in the spawner helper: nothing of the server needs to run for it."""
    async with server(child_settings("echo")) as s, s.connect("/r") as ws:
        pid = int((await recv_text(ws)).split()[1])
        room = s.rooms.live["r"]
        spawner = s.rooms.spawner
        spawner.set_deadline([pid], time.monotonic() + 0.3)
        time.sleep(0.6)  # the server's loop is held (as if paused); the helper is not  # noqa: ASYNC251
        assert not alive(pid)
        await wait_gone(pid)
        assert room.child is not None
        with anyio.fail_after(TIMEOUT):
            await room.child.exited.wait()


def test_a_lease_past_its_deadline_fences_at_the_first_check() -> None:
    fenced: list[str] = []

    class FakeCluster:  # only what Lease calls
        def fence(self, lease: Lease, reason: str) -> None:
            fenced.append(reason)

    lease = Lease(FakeCluster(), "r", "1 a b:1", time.monotonic() + 60)  # type: ignore[arg-type]
    assert not lease.expired() and not fenced
    lease.deadline = time.monotonic() - 0.001
    assert lease.expired() and fenced == ["room lease expired"]


@needs_redis
async def test_registry_scripts(tmp_path: Path) -> None:
    from app.registry_redis import RedisRegistry

    redis = Redis(tmp_path)
    await redis.start()
    registry = RedisRegistry(parse_registry_url(redis.url), timeout=1.0)
    try:
        await registry.connect()
        assert await registry.claim("r", "a", "a:1", 0.2) is None  # a new Redis: one quiet lease first
        with anyio.fail_after(TIMEOUT):
            while (mine := await registry.claim("r", "a", "a:1", 5)) is None:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        assert (mine.instance, mine.address) == ("a", "a:1")
        theirs = await registry.claim("r", "b", "b:1", 5)
        assert theirs == mine  # the current owner, atomically
        await redis.command("PEXPIRE", "scalesocket:room:r", "100")
        assert await registry.claim("r", "a", "a:1", 5) == mine  # its own key, adopted again...
        assert int((await redis.command("PTTL", "scalesocket:room:r"))[1:]) > 4000  # ...and extended
        assert await registry.renew({"r": mine.encode()}, 5, "a", "a:1") == set()
        assert await registry.renew({"r": "9 b b:1"}, 5, "b", "b:1") == {"r"}  # not b's to renew
        await registry.release("r", "9 b b:1")  # compare and delete: not b's to release either
        assert await registry.claim("r", "b", "b:1", 5) == mine
        assert await registry.peers() == {"a": "a:1", "b": "b:1"}
        await registry.renew({}, 5, "b", "b:1", draining=True)  # b drains: it takes no new rooms
        assert await registry.peers() == {"a": "a:1"}
        assert not registry.conflict
        await registry.renew({}, 5, "a", "elsewhere:1")  # a second live "a": its entry is left alone
        assert registry.conflict and await registry.peers() == {"a": "a:1"}
        await registry.renew({}, 5, "a", "a:1")
        assert not registry.conflict
        await registry.release("r", mine.encode())
        second = await registry.claim("r", "b", "b:1", 5)
        assert second is not None and second.instance == "b" and second.token > mine.token
        assert await registry.secret() == await registry.secret()
    finally:
        await registry.close()
        await redis.stop()


@needs_redis
async def test_redis_unreachable_at_start_up_then_answering(tmp_path: Path) -> None:
    redis = Redis(tmp_path)  # its port is free: nothing answers there yet
    children_log = tmp_path / "children.log"
    children_log.touch()
    instance = Instance(tmp_path, 1, redis, children_log, ttl=1.0)
    await instance.start()
    try:
        await instance.wait_status(200, path="/health")
        assert await instance.status() == 503
        with pytest.raises(InvalidStatus) as refused:
            await connect(instance.url + "/r", open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 503
        assert b"room registry unreachable" in instance.log.read_bytes()
        assert b"ERROR" in instance.log.read_bytes()
        await redis.start()
        await instance.wait_status(200, within=3 + TIMEOUT)
        ws = await open_client(instance.url + "/r")
        await ws.send("hi")
        assert (await recv_text(ws)).endswith(" hi")
        await ws.close()
    finally:
        instance.signal(signal.SIGTERM)
        await instance.wait_exit()
        await instance.close()
        await redis.stop()


@asynccontextmanager
async def clustered(redis: Redis, name: str, settings: Settings) -> AsyncIterator[Running]:
    """An in-process instance of a cluster: its own listening socket, advertised to the others."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    extra = {"registry": redis.url, "instance": name, "advertise": f"127.0.0.1:{port}", "lease_ttl": 2.0}
    settings = settings.model_copy(update=extra)
    app = create_app(settings)
    server = Server(uvicorn_config(app, settings), app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(TIMEOUT):
            while not server.started or not app.state.cluster.ready:  # noqa: ASYNC110 - no event for these
                await anyio.sleep(0.02)
        try:
            yield Running(server, port)
        finally:
            server.should_exit = True
    sock.close()


@needs_redis
async def test_a_stalled_forwarded_client_neither_holds_the_room_back_nor_grows_the_entry(tmp_path: Path) -> None:
    """The hop is a client of the owner like any other: when the real client stops reading, the entry
    stops reading the owner (its outbox is bounded), and the owner's slow-client rule closes the hop
    with 1008 while the room's other client gets everything, in order."""
    redis = Redis(tmp_path)
    await redis.start()
    await redis.command("SET", "scalesocket:epoch", "1")  # not a new registry: no quiet period
    try:
        async with clustered(redis, "a", seq_settings()) as owner, clustered(redis, "b", seq_settings()) as entry:
            async with owner.connect("/busy") as reader:
                stalled = await connect_stalling(entry, "/busy")  # forwarded to the owner
                await eventually(lambda: entry.server.app.state.cluster.forwarded_open == 1)
                await reader.send("go")
                await read_all(reader)  # not held back
                assert owner.rooms.slow_clients == 1  # the hop, kicked
                (relay,) = entry.server.app.state.cluster.relays  # still there: its client reads nothing
                assert relay.queued <= entry.server.app.state.settings.outbox_bytes + 256 * 1024, relay.queued
                stalled.transport.abort()
    finally:
        await redis.stop()


@needs_redis
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_instances_with_tls_forward_over_tls_trusting_their_shared_certificate(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, "cluster")
    redis = Redis(tmp_path)
    await redis.start()
    await redis.command("SET", "scalesocket:epoch", "1")
    tls = child_settings("pid", ssl=True, sslcert=cert, sslkey=key, stats=True)
    client_tls = ssl.create_default_context(cafile=str(cert))
    try:
        async with clustered(redis, "a", tls) as owner, clustered(redis, "b", tls) as entry:
            async with connect(f"wss://127.0.0.1:{owner.port}/t", ssl=client_tls) as a:
                await a.send("a")
                pid = (await recv_text(a)).split()[0]
                async with connect(f"wss://127.0.0.1:{entry.port}/t", ssl=client_tls) as b:
                    await b.send("b")
                    assert await recv_text(b) == f"{pid} b"  # carried to the owner, over TLS
                    assert await recv_text(a) == f"{pid} b"
                    async with httpx.AsyncClient(verify=client_tls) as http:
                        stats = (await http.get(f"https://127.0.0.1:{entry.port}/t/stats")).json()
                    assert (stats["pid"], stats["connections"]) == (int(pid), 2)
    finally:
        await redis.stop()


def test_kubernetes_pods_form_a_cluster_and_drain_within_their_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/kubernetes/deployment.yaml's arguments are valid options (pod IP and name filled in as
    Kubernetes would), and the pod is given time to drain: preStop + drain + stop grace + 1 s."""
    text = (ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()
    block = text.split("args:", 1)[1].split("env:", 1)[0]
    args = []
    for line in block.splitlines():
        item = line.strip().removeprefix("- ")
        if not item:
            continue
        item = item.split("  #", 1)[0].strip()  # a comment after the value
        args.append(item[1:-1] if item[:1] == "'" else item)
    args = [arg.replace("$(POD_IP)", "10.0.0.7").replace("$(POD_NAME)", "scalesocket-abc12") for arg in args]
    monkeypatch.chdir(ROOT)  # the image's working directory holds examples/
    monkeypatch.delenv("SCALESOCKET_CLUSTER_SECRET", raising=False)
    settings = to_settings(args)
    assert settings.registry is not None and settings.advertised == "10.0.0.7:9000"
    assert settings.instance == "scalesocket-abc12"
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", text)[1])  # type: ignore[index]
    pre_stop = int(re.search(r'command: \["sleep", "(\d+)"\]', text)[1])  # type: ignore[index]
    assert grace > pre_stop + settings.drain_timeout + settings.stop_grace + 1
    assert settings.drain_timeout > 0
    assert re.search(r"readinessProbe:\s+(#[^\n]*\s+)?httpGet:\s+path: /health/ready", text)
