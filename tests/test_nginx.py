"""scalesocket behind a real nginx running the shipped deploy/nginx.conf, in front of two real instances.

Only the upstream's `server` lines and the `listen` line of the shipped file are rewritten (to this
test's ports); everything else — websocket headers, X-Forwarded-For, `hash $uri consistent` — runs
as shipped, inside the shipped deploy/nginx-standalone.conf.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import TIMEOUT, recv, recv_text
from tests.test_process import Proc, free_port, scalesocket

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
# Debian installs it in /usr/sbin, which is not on a non-root user's PATH.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
CLIENT_HOST = "127.0.0.2"  # the test's clients connect from here; nginx reaches the instances from 127.0.0.1

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
]


def render(tmp: Path, listen: int, upstreams: list[int]) -> Path:
    """The shipped configuration in `tmp`, listening on `listen` and proxying to `upstreams`; the main file."""
    site = (DEPLOY / "nginx.conf").read_text()
    ports = iter(upstreams)
    site, servers = re.subn(
        r"(?m)^(\s*)server 127\.0\.0\.1:\d+;", lambda m: f"{m[1]}server 127.0.0.1:{next(ports)};", site
    )
    assert servers == len(upstreams), "deploy/nginx.conf: expected one upstream `server` line per instance"
    site, listens = re.subn(r"(?m)^(\s*)listen 80;", rf"\1listen 127.0.0.1:{listen};", site)
    assert listens == 1, "deploy/nginx.conf: expected one `listen 80;`"
    (tmp / "nginx.conf").write_text(site)  # the name nginx-standalone.conf includes
    main = tmp / "nginx-standalone.conf"
    shutil.copyfile(DEPLOY / "nginx-standalone.conf", main)
    return main


@asynccontextmanager
async def nginx(tmp: Path, upstreams: list[int]) -> AsyncIterator[int]:
    """Run nginx from `tmp` (pid, logs and temp files inside it) until it accepts; yield its port."""
    assert NGINX is not None
    port = free_port()
    main = render(tmp, port, upstreams)
    error_log = tmp / "error.log"
    argv = [NGINX, "-p", f"{tmp}/", "-e", str(error_log), "-c", str(main), "-g", "daemon off;"]
    with (tmp / "stderr.log").open("wb") as stderr:
        process = await anyio.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True
        )
    try:
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    if process.returncode is not None:
                        raise AssertionError(f"nginx exited: {error_log.read_text()}") from None
                    await anyio.sleep(0.02)
                else:
                    await stream.aclose()
                    break
        yield port
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            with anyio.move_on_after(TIMEOUT):
                await process.wait()
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)  # master and workers: the group this test started
            await process.aclose()


class Cluster:
    def __init__(self, port: int, instances: list[Proc]) -> None:
        self.port = port
        self.instances = instances
        self.url = f"ws://127.0.0.1:{port}"

    def connect(self, path: str, headers: dict[str, str] | None = None) -> connect:
        """A websocket client of nginx, connecting from CLIENT_HOST."""
        return connect(self.url + path, additional_headers=headers, open_timeout=TIMEOUT, local_addr=(CLIENT_HOST, 0))

    def instance_of(self, pid: int) -> Proc:
        """The instance that started `pid` (through its spawner helper: the child's grandparent)."""
        by_pid = {proc.process.pid: proc for proc in self.instances}
        while pid > 1 and pid not in by_pid:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        return by_pid[pid]


@asynccontextmanager
async def instances(tmp: Path, mode: str, env: dict[str, str], count: int = 2) -> AsyncIterator[list[Proc]]:
    """`count` scalesocket processes wrapping child.py MODE, started at once (as tests/test_process.py starts one)."""
    procs: list[Proc] = []
    try:
        for n in range(count):
            port = free_port()
            argv = [arg.replace("{port}", str(port)) for arg in scalesocket(mode=mode)]
            with (tmp / f"scalesocket{n}.log").open("wb") as log:
                process = await anyio.open_process(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=ROOT, start_new_session=True
                )
            procs.append(Proc(process, port))
        with anyio.fail_after(TIMEOUT):
            async with httpx.AsyncClient() as http:
                for n, proc in enumerate(procs):
                    while True:
                        try:
                            if (await http.get(f"http://127.0.0.1:{proc.port}/health")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        if proc.process.returncode is not None:
                            raise AssertionError(f"scalesocket exited: {(tmp / f'scalesocket{n}.log').read_text()}")
                        await anyio.sleep(0.02)
        yield procs
    finally:
        with anyio.CancelScope(shield=True):
            for proc in procs:
                if proc.process.returncode is None:
                    proc.process.terminate()  # a clean shutdown: clients 1001, children stopped
            for proc in procs:
                with anyio.move_on_after(TIMEOUT):
                    await proc.process.wait()
                if proc.process.returncode is None:
                    proc.process.kill()
                await proc.process.aclose()


@asynccontextmanager
async def cluster(tmp: Path, mode: str, env: dict[str, str] | None = None) -> AsyncIterator[Cluster]:
    """Two scalesocket instances wrapping child.py MODE (with `env` added to theirs), and nginx in front."""
    environ = {name: value for name, value in os.environ.items() if name != "SCALESOCKET_FORWARDED_ALLOW_IPS"} | (
        env or {}
    )
    async with instances(tmp, mode, environ) as procs, nginx(tmp, [proc.port for proc in procs]) as port:
        yield Cluster(port, procs)


async def test_health_and_websocket_echo_through_nginx(tmp_path: Path) -> None:
    async with cluster(tmp_path, "echo") as c:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{c.port}/health", timeout=TIMEOUT)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        async with c.connect("/lobby") as ws:
            assert (await recv_text(ws)).startswith("ready ")
            await ws.send("hello through nginx")
            assert await recv(ws) == "hello through nginx"
            big = "x" * 200_000  # one message, not cut by any proxy buffer
            await ws.send(big)
            assert await recv(ws) == big


@pytest.mark.parametrize(
    "trust",
    [
        pytest.param({}, id="default-trust"),  # uvicorn trusts X-Forwarded-For from 127.0.0.1: nginx on the same host
        pytest.param(
            {"SCALESOCKET_FORWARDED_ALLOW_IPS": "*"}, id="trust-all"
        ),  # as deploy/kubernetes does for the ingress
    ],
)
async def test_child_sees_the_real_client_address_not_nginx(tmp_path: Path, trust: dict[str, str]) -> None:
    async with cluster(tmp_path, "env", trust) as c:
        # The client also claims another address: nginx replaces the header, so the claim is lost.
        spoof = {"X-Forwarded-For": "203.0.113.66", "X-Real-IP": "203.0.113.66"}
        async with c.connect("/whoami?name=ann", headers=spoof) as ws:
            env = json.loads(await recv_text(ws))
        host, _, port = env["REMOTE_ADDR"].rpartition(":")
        assert host == CLIENT_HOST, env["REMOTE_ADDR"]  # not nginx's 127.0.0.1, not the claim
        assert port.isdigit()  # "0": X-Forwarded-For carries no port (see deploy/README.md)
        assert env["ROOM"] == "whoami" and env["QUERY_STRING"] == "name=ann"


async def test_clients_of_a_room_share_one_child_across_two_instances(tmp_path: Path) -> None:
    """`hash $uri consistent`: both clients of a room reach one instance, even with different query strings."""
    async with cluster(tmp_path, "pid") as c:
        owners: dict[str, Proc] = {}
        for i in range(64):  # enough rooms that both instances get some (the hash depends on the ports)
            room = f"room{i}"
            async with c.connect(f"/{room}?name=a") as a, c.connect(f"/{room}?name=b&x={i}") as b:
                await b.send("from-b")
                pid, text = (await recv_text(b)).split()
                assert text == "from-b"
                assert await recv_text(a) == f"{pid} from-b"  # the same child answered both clients
                await a.send("from-a")
                for ws in (a, b):
                    assert await recv_text(ws) == f"{pid} from-a"
                owners[room] = c.instance_of(int(pid))
            if i >= 7 and len(set(owners.values())) == 2:
                break
        assert set(owners.values()) == set(c.instances), (
            "every room went to one instance: is nginx balancing over both?"
        )


async def test_shutdown_reaches_clients_through_nginx_and_the_room_moves_on(tmp_path: Path) -> None:
    async with cluster(tmp_path, "pid") as c:
        async with c.connect("/moving") as ws:
            await ws.send("where")
            pid, _ = (await recv_text(ws)).split()
            owner = c.instance_of(int(pid))
            owner.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001  # nginx passes it on
            assert await owner.wait_exit() == 0
        # nginx finds the instance gone and sends the room's next client to the other one.
        (survivor,) = [proc for proc in c.instances if proc is not owner]
        async with c.connect("/moving") as ws:
            await ws.send("again")
            pid, _ = (await recv_text(ws)).split()
            assert c.instance_of(int(pid)) is survivor


async def test_a_page_of_the_site_passes_the_origin_check_through_nginx_and_another_site_does_not(
    tmp_path: Path,
) -> None:
    """nginx passes the browser's Host with its port, so same origin holds behind it (SPEC §13)."""
    async with cluster(tmp_path, "echo") as c:
        own = f"http://127.0.0.1:{c.port}"  # the page the browser loaded through nginx
        async with c.connect("/lobby", headers={"Origin": own}) as ws:
            assert (await recv_text(ws)).startswith("ready ")
        for other in ("http://evil.example", "http://127.0.0.1", "null"):
            with pytest.raises(InvalidStatus) as refused:
                async with c.connect("/lobby", headers={"Origin": other}):
                    pass
            assert refused.value.response.status_code == 403, other


async def test_metrics_are_not_served_through_nginx(tmp_path: Path) -> None:
    async with cluster(tmp_path, "echo", {"SCALESOCKET_METRICS": "true"}) as c, httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{c.port}/metrics", timeout=TIMEOUT)).status_code == 403
        direct = await http.get(f"http://127.0.0.1:{c.instances[0].port}/metrics", timeout=TIMEOUT)
        assert direct.status_code == 200 and "scalesocket_websocket_refused" in direct.text
