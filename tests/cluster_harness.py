"""The real cluster for tests/test_cluster.py: a redis-server, scalesocket instances with --registry,
nginx in front with deploy/'s configuration, and a monitor of every child's life.

Each child (tests/children/cluster_child.py) logs its start, every line it receives and its exit
with `time.monotonic()`, one clock for every process on the machine. A child killed with SIGKILL
cannot log its exit, so the monitor also watches each child with a pidfd from the moment its start
line appears and notes when it ended. `check()` then asserts SPEC §16's promise: the children of a
room never overlap in time, so no room ever has two unpaused children, and an old child never
receives a line after a new one started.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import TIMEOUT, UNIT, alive
from tests.test_nginx import NGINX
from tests.test_process import free_port

ROOT = Path(__file__).parent.parent
CHILD = str(Path(__file__).parent / "children" / "cluster_child.py")
REDIS = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
TTL = 2.0 * UNIT  # SCALESOCKET_LEASE_TTL for every instance, unless a test asks for another
DRAIN = 4.0 * UNIT


class Redis:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: anyio.abc.Process | None = None

    async def start(self) -> None:
        assert REDIS is not None
        argv = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.tmp / "redis.log").open("ab") as log:
            self.process = await anyio.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.tmp, start_new_session=True
            )
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", self.port)
                except OSError:
                    await anyio.sleep(0.02)
                    continue
                async with stream:
                    await stream.send(b"PING\r\n")
                    if (await stream.receive()).startswith(b"+PONG"):
                        return

    async def command(self, *args: str) -> bytes:
        """One command in Redis' protocol; the raw reply."""
        request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)
        async with await anyio.connect_tcp("127.0.0.1", self.port) as stream:
            await stream.send(request)
            return await stream.receive()

    async def stop(self) -> None:
        """Gone at once, as a crash would be (no persistence: it comes back empty)."""
        if self.process is not None:
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
            await self.process.aclose()
            self.process = None


class Instance:
    def __init__(self, tmp: Path, n: int, redis: Redis, children_log: Path, ttl: float) -> None:
        self.tmp = tmp
        self.ttl = ttl
        self.name = f"n{n}"
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{self.name}.log"
        argv = [sys.executable, "-m", "cli", "--addr", f"127.0.0.1:{self.port}", "--registry", redis.url]
        argv += [
            "--instance",
            self.name,
            "--drain-timeout",
            str(DRAIN),
            "--joinmsg=join #REMOTE_ADDR #HTTP_X_DOOR #HTTP_HOST",
            "--stats",
            "--metrics",
            "--api",
        ]
        argv += [sys.executable, "--", "-u", CHILD]
        self.argv = [*argv, str(children_log)]
        self.process: anyio.abc.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ, SCALESOCKET_LEASE_TTL=str(self.ttl), SCALESOCKET_STOP_GRACE=str(1.0 * UNIT))
        with self.log.open("ab") as log:
            self.process = await anyio.open_process(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=ROOT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def status(self, path: str = "/health/ready") -> int | None:
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(self.http + path, timeout=TIMEOUT)).status_code
        except httpx.TransportError:
            return None

    async def wait_status(self, status: int, path: str = "/health/ready", within: float = TIMEOUT) -> None:
        with anyio.fail_after(within):
            while await self.status(path) != status:
                assert self.process is not None and self.process.returncode is None, self.log.read_text()[-3000:]
                await anyio.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, within: float = TIMEOUT) -> int:
        assert self.process is not None
        with anyio.fail_after(within):
            return await self.process.wait()

    async def close(self) -> None:
        if self.process is None:
            return
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()  # the spawner helper sees its socket close and kills the children
            await self.process.wait()
            await self.process.aclose()


@dataclass
class Life:
    room: str
    instance: str
    pid: int
    start: float
    end: float | None = None  # logged, or seen through the pidfd
    lines: list[tuple[float, str]] = field(default_factory=list)


class Children:
    """Follows the children's log and watches every child's pid until it is gone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self.lives: dict[int, Life] = {}
        self._offset = 0
        self._tail = b""

    def _read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *complete, self._tail = (self._tail + data).split(b"\n")
        loop = asyncio.get_running_loop()
        for raw in complete:
            if not raw:
                continue
            what, room, instance, pid_s, at_s, *rest = raw.decode().split(" ", 5)
            pid, at = int(pid_s), float(at_s)
            if what == "start":
                life = self.lives[pid] = Life(room, instance, pid, at)
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue  # gone already: its exit line, if any, or the time it was missed says when

                def ended(fd: int = fd, life: Life = life) -> None:
                    loop.remove_reader(fd)
                    os.close(fd)
                    seen = time.monotonic()
                    life.end = seen if life.end is None else min(life.end, seen)

                loop.add_reader(fd, ended)
            elif what == "line":
                self.lives[pid].lines.append((at, rest[0] if rest else ""))
            elif what == "exit":
                self.lives[pid].end = at

    async def follow(self) -> None:
        while True:
            self._read()
            await anyio.sleep(0.01)

    def check(self) -> dict[str, list[Life]]:
        """SPEC §16: per room, one child at a time; returns the lives by room for further checks."""
        self._read()
        now = time.monotonic()
        by_room: dict[str, list[Life]] = {}
        for life in self.lives.values():
            if life.end is None and not alive(life.pid):
                life.end = now  # gone before its pidfd could be opened, without an exit line
            by_room.setdefault(life.room, []).append(life)
        for room, lives in by_room.items():
            lives.sort(key=lambda life: life.start)
            for old, new in zip(lives, lives[1:], strict=False):
                late = [line for line in old.lines if line[0] >= new.start]
                assert not late, (
                    f"room {room}: {old.instance}/{old.pid} got {late} after {new.instance}/{new.pid} started"
                )
                assert old.end is not None and old.end <= new.start, (
                    f"room {room}: two children at once: {old.instance}/{old.pid} "
                    f"[{old.start:.3f}, {old.end}] and {new.instance}/{new.pid} from {new.start:.3f}"
                )
        return by_room

    def running(self) -> list[Life]:
        self._read()
        return [life for life in self.lives.values() if life.end is None and alive(life.pid)]


def render_nginx(tmp: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with its upstream's servers replaced by `upstreams`, listening on `listen`."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    lines = "".join(f"    server 127.0.0.1:{port};\n" for port in upstreams)
    site, servers = re.subn(r"(?m)(^\s*server 127\.0\.0\.1:\d+;[^\n]*\n)+", lines, site, count=1)
    assert servers == 1, "deploy/nginx.conf: expected the upstream's `server` lines"
    site, listens = re.subn(r"(?m)^(\s*)listen 80;", rf"\1listen 127.0.0.1:{listen};", site)
    assert listens == 1, "deploy/nginx.conf: expected one `listen 80;`"
    (tmp / "nginx.conf").write_text(site)
    main = tmp / "nginx-standalone.conf"
    shutil.copyfile(ROOT / "deploy" / "nginx-standalone.conf", main)
    return main


class Nginx:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp / "nginx"
        self.tmp.mkdir()
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.process: anyio.abc.Process | None = None

    def _argv(self, *extra: str) -> list[str]:
        assert NGINX is not None
        main = self.tmp / "nginx-standalone.conf"
        return [NGINX, "-p", f"{self.tmp}/", "-e", str(self.tmp / "error.log"), "-c", str(main), *extra]

    async def start(self, upstreams: list[int]) -> None:
        render_nginx(self.tmp, self.port, upstreams)
        with (self.tmp / "stderr.log").open("wb") as out:
            self.process = await anyio.open_process(
                self._argv("-g", "daemon off;"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", self.port)
                except OSError:
                    assert self.process.returncode is None, (self.tmp / "error.log").read_text()
                    await anyio.sleep(0.02)
                else:
                    await stream.aclose()
                    return

    async def reload(self, upstreams: list[int]) -> None:
        """New upstreams; nginx's new workers take new connections, old ones keep theirs."""
        render_nginx(self.tmp, self.port, upstreams)
        result = await anyio.run_process(self._argv("-g", "daemon off;", "-s", "reload"), check=False)
        assert result.returncode == 0, result.stderr.decode()

    async def close(self) -> None:
        if self.process is None:
            return
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.terminate()
            with anyio.move_on_after(TIMEOUT):
                await self.process.wait()
            if self.process.returncode is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.aclose()


class Cluster:
    def __init__(self, tmp: Path, redis: Redis, nginx: Nginx, children: Children, ttl: float) -> None:
        self.tmp = tmp
        self.ttl = ttl
        self.redis = redis
        self.nginx = nginx
        self.children = children
        self.instances: list[Instance] = []

    async def add(self) -> Instance:
        instance = Instance(self.tmp, len(self.instances) + 1, self.redis, self.children.path, self.ttl)
        self.instances.append(instance)
        await instance.start()
        return instance

    def live(self) -> list[Instance]:
        return [i for i in self.instances if i.process is not None and i.process.returncode is None]


@asynccontextmanager
async def cluster(tmp: Path, count: int = 3, ttl: float = TTL) -> AsyncIterator[Cluster]:
    redis, nginx, children = Redis(tmp), Nginx(tmp), Children(tmp / "children.log")
    c = Cluster(tmp, redis, nginx, children, ttl)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(children.follow)
            await redis.start()
            for _ in range(count):
                await c.add()
            for instance in c.instances:  # a new Redis: ready once its quiet period (one TTL) is over
                await instance.wait_status(200)
            await nginx.start([i.port for i in c.instances])
            try:
                yield c
            except BaseException:
                for instance in c.instances:
                    sys.stderr.write(f"--- {instance.name} ---\n{instance.log.read_text()[-3000:]}\n")
                raise
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await nginx.close()
            for instance in c.instances:
                await instance.close()
            await redis.stop()


async def open_client(url: str, within: float = TIMEOUT) -> ClientConnection:
    """Connect, retrying while the cluster answers 503 (a room moving, the registry away)."""
    with anyio.fail_after(within):
        while True:
            try:
                return await connect(url, open_timeout=TIMEOUT, max_size=None)
            except InvalidStatus as error:
                assert error.response.status_code == 503, error.response
            except OSError:
                pass
            await anyio.sleep(0.05)
