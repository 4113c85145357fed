"""One child per room across a cluster (SPEC §16): a real redis-server, three scalesocket instances
with --registry, and nginx in front running deploy/nginx.conf. Every room's clients enter through
different doors — nginx and two instances directly — and after every fault each test checks, from
the children's own timestamped logs, that no room ever had two children at once, that every client
of a room talked to one child, and that every child was reaped."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from tests.cluster_harness import REDIS, TTL, Cluster, Instance, cluster, open_client
from tests.conftest import TIMEOUT, recv_text
from tests.test_nginx import NGINX

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS is None or NGINX is None, reason="needs redis-server and nginx (see .ci/run)"),
    pytest.mark.timeout(120),
]
ROOMS = 40


def doors(c: Cluster, i: int) -> list[str]:
    """Where room i's three clients come in: through nginx and directly at two instances."""
    live = c.live()
    return [c.nginx.url, live[(i + 1) % len(live)].url, live[(i + 2) % len(live)].url]


async def open_room(name: str, urls: list[str], within: float = TIMEOUT) -> list[ClientConnection]:
    clients: list[ClientConnection] = []
    for url in urls:
        clients.append(await open_client(f"{url}/{name}?door={len(clients)}", within))
    return clients


async def exchange(clients: list[ClientConnection], tag: str) -> tuple[str, int]:
    """Every client says one line; every client hears all of them from the same child: (instance, pid)."""
    for k, ws in enumerate(clients):
        await ws.send(f"{tag}-{k}")
    heard: set[tuple[str, str]] = set()
    for ws in clients:
        lines = set()
        for _ in clients:
            instance, pid, text = (await recv_text(ws)).split(" ", 2)
            heard.add((instance, pid))
            lines.add(text)
        assert lines == {f"{tag}-{k}" for k in range(len(clients))}
    assert len(heard) == 1, f"clients of one room talked to several children: {heard}"
    ((instance, pid),) = heard
    return instance, int(pid)


async def open_rooms(c: Cluster, names: list[str], within: float = TIMEOUT) -> dict[str, list[ClientConnection]]:
    """All rooms at once (their clients race to create them), each client through its own door."""
    rooms: dict[str, list[ClientConnection]] = {}

    async def one(i: int, name: str) -> None:
        rooms[name] = await open_room(name, doors(c, i), within)

    async with anyio.create_task_group() as tg:
        for i, name in enumerate(names):
            tg.start_soon(one, i, name)
    return rooms


async def close_all(rooms: dict[str, list[ClientConnection]]) -> None:
    for clients in rooms.values():
        for ws in clients:
            await ws.close()


async def all_reaped(c: Cluster) -> None:
    with anyio.fail_after(TIMEOUT):
        while c.children.running():  # noqa: ASYNC110 - polls other processes' state
            await anyio.sleep(0.05)
    c.children.check()


async def owners(rooms: dict[str, list[ClientConnection]], tag: str) -> dict[str, tuple[str, int]]:
    return {name: await exchange(clients, tag) for name, clients in rooms.items()}


async def closed_with(ws: ClientConnection) -> int | None:
    with anyio.fail_after(TIMEOUT):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


async def test_rooms_entered_through_every_door_have_one_child(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        names = [f"room{i}" for i in range(ROOMS)]
        rooms = await open_rooms(c, names)
        placed = await owners(rooms, "hello")
        assert len({instance for instance, _ in placed.values()}) >= 2, placed  # the rooms are spread out
        c.children.check()
        assert {life.room for life in c.children.lives.values()} == set(names)
        assert len(c.children.lives) == ROOMS  # however the clients raced, one child each
        # The child sees the real client's address, not the forwarding instance's.
        for life in c.children.lives.values():
            assert life.instance == placed[life.room][0]
        await close_all(rooms)
        await all_reaped(c)


async def test_forwarded_client_is_seen_by_the_owner_with_its_real_address(tmp_path: Path) -> None:
    async with cluster(tmp_path, count=2) as c:
        n1, n2 = c.instances
        async with connect(n1.url + "/where") as a:
            await a.send("a")
            assert (await recv_text(a)).split()[0] == "n1"
            # Its request headers reach the owner as it sent them (#HTTP_*), Host included.
            door = {"X-Door": "b-door"}
            async with connect(n2.url + "/where?who=b", local_addr=("127.0.0.2", 0), additional_headers=door) as b:
                await b.send("b")
                answer = await recv_text(b)
                assert answer.split()[0] == "n1"  # carried to the owner
                assert await recv_text(a) == answer  # one child for both
                port = b.local_address[1]
                big = "x" * 300_000  # one message, larger than any read: fragments and backpressure on the hop
                await b.send(big)
                assert await recv_text(b) == f"{answer.rsplit(' ', 1)[0]} {big}"
                assert await recv_text(a) == f"{answer.rsplit(' ', 1)[0]} {big}"
                # --stats describes the room as its owner sees it, asked at any instance.
                async with httpx.AsyncClient() as http:
                    seen = [(await http.get(f"{n.http}/where/stats")).json() for n in (n1, n2)]
                    pid = (await http.get(f"{n2.http}/where/stats/pid")).json()
                    nobody = (await http.get(f"{n2.http}/nobody/stats")).json()
                    api = [(await http.get(f"{n.http}/api/where")).json() for n in (n1, n2)]
                    listed = [(await http.get(f"{n.http}/api/rooms")).json() for n in (n1, n2)]
                    metrics = [
                        (await http.get(f"{n.http}/metrics", headers={"Accept": "text/plain"})).text for n in (n1, n2)
                    ]
                # --api too: the room and the list of rooms, cluster-wide, from any instance.
                assert api[0] == api[1] == {"name": "where", "connections": 2, "metadata": None}
                assert listed[0] == listed[1] == [api[0]]
                assert 'scalesocket_instance{instance="n1"} 1.0' in metrics[0]
                assert "scalesocket_rooms_owned 1.0" in metrics[0] and "scalesocket_rooms_owned 0.0" in metrics[1]
                assert "scalesocket_forwarded_connections_open 1.0" in metrics[1]
                assert "scalesocket_forwarded_connections_total 1.0" in metrics[1]
                assert seen[0] == seen[1] and seen[0]["connections"] == 2 and pid == int(answer.split()[1])
                assert nobody["connections"] == 0 and nobody["pid"] is None
        (life,) = c.children.check()["where"]
        assert (life.instance, [text for _, text in life.lines if text.startswith("join 127.0.0.2")]) == (
            "n1",
            [f"join 127.0.0.2:{port} b-door 127.0.0.1%3A{n2.port}"],  # as #HTTP_* encodes it
        )
        await all_reaped(c)


async def test_a_room_reopened_while_its_old_child_stops_waits_for_it(tmp_path: Path) -> None:
    """The last client leaves and a new one comes at once: the new child starts only after the old
    one (slow to exit) has been reaped, also on the same instance."""
    async with cluster(tmp_path, count=2) as c:
        n1, n2 = c.instances
        async with connect(n1.url + "/again?linger") as ws:
            await ws.send("first")
            first = await recv_text(ws)
        for entry in (n1, n2):  # at the instance that had it, then at the other one
            async with connect(entry.url + "/again") as ws:
                await ws.send("second")
                assert (await recv_text(ws)).split()[1] != first.split()[1]  # a new child
        lives = c.children.check()["again"]  # no overlap, however slow the old child was to exit
        assert len(lives) == 3
        await all_reaped(c)


async def test_a_second_live_instance_of_the_same_name_takes_no_rooms(tmp_path: Path) -> None:
    async with cluster(tmp_path, count=1) as c:
        (n1,) = c.instances
        twin = Instance(tmp_path / "twin", 1, c.redis, c.children.path, c.ttl)  # also named "n1"
        (tmp_path / "twin").mkdir()
        await twin.start()
        try:
            await twin.wait_status(200, path="/health")
            await twin.wait_status(503)  # not ready: taking rooms would adopt the live n1's as its own
            async with httpx.AsyncClient() as http:
                assert (await http.get(twin.http + "/health/ready")).json() == {"status": "instance name in use"}
            with pytest.raises(InvalidStatus) as refused:
                await connect(twin.url + "/twin-room")
            assert refused.value.response.status_code == 503
            assert b"another live instance is named n1" in twin.log.read_bytes()
            assert await n1.status() == 200
        finally:
            await twin.close()
        await all_reaped(c)


async def test_forwarded_connection_needs_the_cluster_secret(tmp_path: Path) -> None:
    async with cluster(tmp_path, count=1) as c:
        (n1,) = c.instances
        with pytest.raises(InvalidStatus) as refused:
            await connect(n1.url + "/r", additional_headers={"X-Scalesocket-Forward": "guess"})
        assert refused.value.response.status_code == 403
        # The address header alone is a client's own: ignored, the child sees the real peer.
        async with connect(n1.url + "/r", additional_headers={"X-Scalesocket-Client": "203.0.113.9:1"}) as ws:
            await ws.send("x")
            await recv_text(ws)
        (life,) = c.children.check()["r"]
        assert "203.0.113.9" not in (tmp_path / "children.log").read_text()
        assert life.instance == "n1"
        await all_reaped(c)


async def test_scale_up_takes_only_new_rooms(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        names = [f"live{i}" for i in range(ROOMS // 2)]
        rooms = await open_rooms(c, names)
        before = await owners(rooms, "before")
        n4 = await c.add()
        await n4.wait_status(200)
        await c.nginx.reload([i.port for i in c.instances])
        # Newcomers to live rooms, through nginx (which now hashes some rooms to n4) and n4 itself.
        for name in names:
            rooms[name] += [await open_client(f"{c.nginx.url}/{name}"), await open_client(f"{n4.url}/{name}")]
        after = await owners(rooms, "after")
        assert after == before  # live rooms never moved, never split
        new = await open_rooms(c, [f"new{i}" for i in range(ROOMS // 2)])
        assert "n4" in {instance for instance, _ in (await owners(new, "new")).values()}
        c.children.check()
        await close_all(rooms)
        await close_all(new)
        await all_reaped(c)


async def test_drain_keeps_live_rooms_forwards_new_ones_then_exits_0(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1 = c.instances[0]
        rooms = await open_rooms(c, [f"d{i}" for i in range(12)])
        placed = await owners(rooms, "before")
        mine = [name for name, (instance, _) in placed.items() if instance == "n1"]
        assert mine, placed
        n1.signal(signal.SIGTERM)
        await n1.wait_status(503)
        assert await n1.status("/health") == 200
        # A new room entering at the draining instance is carried to another one.
        async with connect(f"{n1.url}/fresh") as ws:
            await ws.send("x")
            assert (await recv_text(ws)).split()[0] != "n1"
        # Its live rooms go on, newcomers included (entering anywhere).
        for name in mine:
            rooms[name].append(await open_client(f"{n1.url}/{name}"))
            rooms[name].append(await open_client(f"{c.instances[1].url}/{name}"))
            assert await exchange(rooms[name], "during") == placed[name]
        # One room stays to the end: closed with 1001 at the drain timeout; the others end first.
        last, *ended = mine
        for name in ended:
            for ws in rooms.pop(name):
                await ws.close()
        for ws in rooms[last]:  # through nginx, directly, and forwarded by another instance alike
            assert await closed_with(ws) == 1001
        assert await n1.wait_exit() == 0
        for ws in rooms.pop(last):
            await ws.close()
        # The room can open again elsewhere at once: its lease was given back.
        with anyio.fail_after(1.0):
            moved = await open_room(last, [c.nginx.url, c.instances[1].url])
        assert (await exchange(moved, "moved"))[0] != "n1"
        rooms[last] = moved
        c.children.check()
        await close_all(rooms)
        await all_reaped(c)


async def test_kill_9_owner_rooms_reopen_within_lease_plus_a_second(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1 = c.instances[0]
        rooms = await open_rooms(c, [f"k{i}" for i in range(ROOMS // 2)])
        placed = await owners(rooms, "before")
        mine = [name for name, (instance, _) in placed.items() if instance == "n1"]
        assert mine, placed
        n1.signal(signal.SIGKILL)
        killed = anyio.current_time()
        await n1.wait_exit()
        for name in mine:
            for ws in rooms.pop(name):
                assert await closed_with(ws) in (None, 1012)  # cut (direct) or "owner lost" (forwarded)
        survivors = [i for i in c.instances if i is not n1]
        for name in mine:
            rooms[name] = await open_room(name, [c.nginx.url, survivors[0].url, survivors[1].url], TTL + 1 + TIMEOUT)
            instance, _ = await exchange(rooms[name], "after")
            assert instance != "n1"
        assert anyio.current_time() - killed < TTL + 1 + 1  # the last of them (plus this test's own latency)
        # Rooms of the live instances went on; their clients that came in through n1 lost their door
        # and come back through another, to the same child.
        others = {name: rooms[name] for name in placed if name not in mine}
        for name, clients in others.items():
            lost = [ws for ws in clients if ws.state is not State.OPEN]
            clients[:] = [ws for ws in clients if ws.state is State.OPEN]
            clients += [await open_client(f"{survivors[0].url}/{name}") for _ in lost]
        assert await owners(others, "still") == {name: placed[name] for name in others}
        c.children.check()
        await close_all(rooms)
        await all_reaped(c)


async def test_paused_owner_is_fenced_before_its_lease_ends(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1 = c.instances[0]
        rooms = await open_rooms(c, [f"p{i}" for i in range(ROOMS // 2)])
        placed = await owners(rooms, "before")
        mine = [name for name, (instance, _) in placed.items() if instance == "n1"]
        assert mine, placed
        n1.signal(signal.SIGSTOP)
        # Its spawner helper, a process of its own, kills the children before the lease can end.
        with anyio.fail_after(TTL + 1):  # at 0.8 TTL after the last renewal; check() proves "before"
            while any(life.instance == "n1" for life in c.children.running()):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        # The rooms come back on other instances for clients entering elsewhere.
        others = [i for i in c.instances if i is not n1]
        moved = {name: await open_room(name, [o.url for o in others], TTL + TIMEOUT) for name in mine}
        for clients in moved.values():
            assert (await exchange(clients, "moved"))[0] != "n1"
        n1.signal(signal.SIGCONT)
        # On resuming, n1 passes nothing on: its clients are closed with 1012 (or 1011/the owner lost).
        for name in mine:
            for ws in rooms.pop(name):
                try:
                    await ws.send("after-resume")
                except ConnectionClosed:
                    pass
                assert await closed_with(ws) in (1012, None)
        await n1.wait_status(200, within=TTL + TIMEOUT)  # and it takes rooms again
        rooms.update(moved)
        c.children.check()
        await close_all(rooms)
        await all_reaped(c)


async def test_redis_loss_short_and_long(tmp_path: Path) -> None:
    ttl = 2 * TTL  # room for the checks while Redis is away, under the lease
    async with cluster(tmp_path, ttl=ttl) as c:
        rooms = await open_rooms(c, [f"r{i}" for i in range(ROOMS // 4)])
        placed = await owners(rooms, "before")
        # Short: well under a lease (an owner renews every TTL/3 and its rooms end 0.8 TTL after the
        # last renewal that worked, so Redis comes back within two renewals here). Live rooms go on,
        # no new room opens: every instance's claim fails (the flag behind /health/ready may lag a tick).
        await c.redis.stop()
        for instance in c.instances:
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"{instance.url}/newroom")
            assert refused.value.response.status_code == 503
        assert await owners(rooms, "during") == placed
        await c.redis.start()  # empty: it lost everything; the owners put their rooms back
        for instance in c.instances:
            await instance.wait_status(200, within=2 * ttl + TIMEOUT)
        assert await owners(rooms, "after") == placed
        more = await open_room("newroom", doors(c, 0))
        await exchange(more, "new")
        rooms["newroom"] = more
        # Long: past the lease. /health/ready 503 everywhere; every room is fenced with 1012, every
        # child killed.
        await c.redis.stop()
        for instance in c.instances:
            await instance.wait_status(503, within=ttl / 2)
        for clients in rooms.values():
            for ws in clients:
                assert await closed_with(ws) == 1012
        with anyio.fail_after(ttl):
            while c.children.running():  # noqa: ASYNC110 - polls other processes' state
                await anyio.sleep(0.05)
        await c.redis.start()
        for instance in c.instances:
            await instance.wait_status(200, within=2 * ttl + TIMEOUT)
        again = await open_rooms(c, list(placed))
        await owners(again, "again")
        c.children.check()
        await close_all(again)
        await all_reaped(c)
