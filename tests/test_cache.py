"""SPEC §15 `--cache` / `--cachepersist`: the pure buffers, then replay through a real server — order,
the private-message rule, tagged lines, persistence with its TTL and room cap, and joins racing output."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from app.batch import BINARY, TEXT, Batch
from app.cache import Cache, Caches
from app.settings import Settings
from cli.__main__ import to_settings
from tests.conftest import TIMEOUT, UNIT, Running, Serve, child_settings, error_of, recv, recv_text, wait_gone
from tests.test_tcp import closed_with, free_ports, ready, tcp_settings, until

# --- pure -------------------------------------------------------------------------------------------------


def payloads(cache: Cache) -> list[tuple[int, list[bytes]]]:
    return [(batch.opcode, batch.payloads) for batch in cache.replay()]


def test_cache_keeps_the_last_size_messages_in_order() -> None:
    cache = Cache(3, tagged_only=False, max_bytes=1000)
    assert payloads(cache) == []
    cache.record(Batch(TEXT, [b"1", b"2"]))
    cache.record(Batch(TEXT, [b"3", b"4"]))
    assert payloads(cache) == [(TEXT, [b"2", b"3", b"4"])]
    cache.record(Batch(BINARY, [b"\x00"]))
    cache.record(Batch(TEXT, [b"5"]))
    assert payloads(cache) == [(TEXT, [b"4"]), (BINARY, [b"\x00"]), (TEXT, [b"5"])]  # kinds kept apart, in order


def test_cache_is_bounded_in_bytes_too() -> None:
    cache = Cache(100, tagged_only=False, max_bytes=10)
    cache.record(Batch(TEXT, [b"aaaa", b"bbbb", b"cccc"]))
    assert payloads(cache) == [(TEXT, [b"bbbb", b"cccc"])]
    assert cache.nbytes == 8
    cache.record(Batch(TEXT, [b"x" * 11]))  # alone over the bound: not kept, and the rest made way for it
    assert (len(cache), cache.nbytes) == (0, 0)


def test_tagged_keeps_only_cache_true() -> None:
    cache = Cache(10, tagged_only=True, max_bytes=1000)
    lines = [b'{"_cache": true, "m": 1}', b'{"_cache": false}', b'{"_cache": "true"}', b"_cache", b'{"m": 2}']
    cache.record(Batch(TEXT, [*lines, b'{"\\u005fcache": true}']))
    assert payloads(cache) == [(TEXT, [lines[0], b'{"\\u005fcache": true}'])]


def test_caches_ttl_and_room_cap() -> None:
    now = [0.0]
    caches = Caches(ttl=10, max_rooms=2, clock=lambda: now[0])
    a, b, c = (Cache(1, tagged_only=False, max_bytes=10) for _ in range(3))
    caches.put("a", a)
    now[0] = 1
    caches.put("b", b)
    caches.put("c", c)  # over the cap: the oldest ("a") goes
    assert len(caches) == 2
    assert caches.take("a") is None
    assert caches.take("b") is b
    assert caches.take("b") is None  # handed over once
    now[0] = 11.5
    assert caches.take("c") is None  # older than the TTL
    assert len(caches) == 0


# --- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size", "tagged"),
    [("64", 64, False), ("all:1", 1, False), ("tagged:1024", 1024, True), ("8", 8, False)],
)
def test_cache_option(value: str, size: int, tagged: bool) -> None:
    s = to_settings([f"--cache={value}", "--frame=json", "cat"])
    assert (s.cache_size, s.cache_tagged) == (size, tagged)


def test_cache_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_CMD", "cat")
    monkeypatch.setenv("SCALESOCKET_CACHE", "16")
    monkeypatch.setenv("SCALESOCKET_CACHEPERSIST", "1")
    monkeypatch.setenv("SCALESOCKET_CACHE_TTL", "5")
    monkeypatch.setenv("SCALESOCKET_CACHE_ROOMS", "3")
    s = Settings()
    assert (s.cache_size, s.cachepersist, s.cache_ttl, s.cache_rooms) == (16, True, 5.0, 3)


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--cache=0", "cat"], "--cache"),
        (["--cache=1025", "cat"], "--cache"),
        (["--cache=some:5", "cat"], "--cache"),
        (["--cache=tagged:", "cat"], "--cache"),
        (["--cache=-1", "cat"], "--cache"),
        (["--cache=tagged:5", "cat"], "--cache"),  # tagged needs json server framing
        (["--cachepersist", "cat"], "--cachepersist"),
    ],
)
def test_bad_cache_values_exit_2(argv: list[str], names: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(argv, capsys)
    assert names in err, err


# --- through a real server ----------------------------------------------------------------------------------


async def say(ws: ClientConnection, line: str) -> None:
    await ws.send(json.dumps({"say": line}))


@pytest.mark.anyio
async def test_joiner_gets_the_last_size_messages_then_live(server: Serve) -> None:
    async with server(child_settings("echo", cache="3")) as s, s.connect("/r") as a:
        ready = await recv_text(a)
        for i in range(1, 6):
            await a.send(f"m{i}")
        assert [await recv(a) for _ in range(5)] == ["m1", "m2", "m3", "m4", "m5"]
        async with s.connect("/r") as b:
            assert [await recv(b) for _ in range(3)] == ["m3", "m4", "m5"]
            await a.send("live")
            assert await recv(b) == "live"
            assert await recv(a) == "live"
        assert ready.startswith("ready")


@pytest.mark.anyio
async def test_private_messages_are_never_replayed(server: Serve) -> None:
    async with server(child_settings("json-say", frame="json", cache="all:10")) as s, s.connect("/r") as a:
        await say(a, '{"m": 1}')
        await say(a, '{"id": 1, "secret": "for a"}')
        await say(a, '{"id": 99, "secret": "for nobody"}')
        await say(a, '{"m": 2}')
        assert [json.loads(await recv(a)) for _ in range(3)] == [{"m": 1}, {"id": 1, "secret": "for a"}, {"m": 2}]
        async with s.connect("/r") as b:
            assert [json.loads(await recv(b)) for _ in range(2)] == [{"m": 1}, {"m": 2}]
            await say(b, '{"m": "live"}')
            assert json.loads(await recv(b)) == {"m": "live"}  # nothing private came between


@pytest.mark.anyio
async def test_tagged_replays_only_marked_lines(server: Serve) -> None:
    async with server(child_settings("json-say", frame="json", cache="tagged:2")) as s, s.connect("/r") as a:
        lines = ['{"_cache": true, "c": 1}', '{"plain": 1}', '{"_cache": true, "c": 2}', '{"_cache": true, "c": 3}']
        for line in lines:
            await say(a, line)
        assert [await recv(a) for _ in lines] == lines  # delivered live as usual, _cache and all
        async with s.connect("/r") as b:
            assert [await recv(b) for _ in range(2)] == [lines[2], lines[3]]
            await say(b, '{"m": "live"}')
            assert await recv(b) == '{"m": "live"}'


@pytest.mark.anyio
async def test_without_persist_the_cache_goes_with_the_room(server: Serve) -> None:
    async with server(child_settings("echo", cache="5")) as s:
        async with s.connect("/r") as a:
            await recv(a)
            await a.send("old")
            assert await recv(a) == "old"
            pid = child_pid(s, "r")
        await wait_gone(pid)
        async with s.connect("/r") as b:
            assert (await recv_text(b)).startswith("ready")  # the new child's first line: no replay


def child_pid(s: Running, room: str) -> int:
    """The pid of `room`'s child: once it is gone, so is the room (it leaves the registry before the stop)."""
    child = s.rooms.live[room].child
    assert child is not None
    return int(child.pid)


@pytest.mark.anyio
async def test_persist_keeps_the_cache_for_the_next_child(server: Serve) -> None:
    settings = child_settings("echo", cache="5", cachepersist=True)
    async with server(settings) as s:
        async with s.connect("/r") as a:
            first_ready = await recv_text(a)
            await a.send("kept")
            assert await recv(a) == "kept"
            pid = child_pid(s, "r")
        await wait_gone(pid)
        async with s.connect("/r") as b:
            assert [await recv(b) for _ in range(2)] == [first_ready, "kept"]  # the old child's lines, then
            second_ready = await recv_text(b)  # the new child's own
            assert second_ready.startswith("ready") and second_ready != first_ready


async def close_room(s: Running, name: str) -> str:
    """Open room `name`, leave a line in its cache, close it and wait for its child to be gone; its ready line."""
    async with s.connect(f"/{name}") as ws:
        ready = await recv_text(ws)
        await ws.send(name)
        assert await recv(ws) == name
        pid = child_pid(s, name)
    await wait_gone(pid)
    return ready


async def fresh(ws: ClientConnection) -> bool:
    """Nothing replayed: the new child's ready line is the first message, and nothing else comes before "x"."""
    first = await recv_text(ws)
    await ws.send("x")
    rest = [await recv(ws)]
    while rest[-1] != "x":
        rest.append(await recv(ws))
    return first.startswith("ready") and rest == ["x"]


@pytest.mark.anyio
async def test_persisted_caches_are_capped(server: Serve) -> None:
    async with server(child_settings("echo", cache="5", cachepersist=True, cache_rooms=1)) as s:
        await close_room(s, "a")
        await close_room(s, "b")
        async with s.connect("/a") as ws:  # only one closed room's cache is kept: "a" made way for "b"
            assert await fresh(ws)
    async with server(child_settings("echo", cache="5", cachepersist=True, cache_rooms=2)) as s:
        await close_room(s, "a")
        ready_b = await close_room(s, "b")
        async with s.connect("/b") as ws:  # within the cap: kept
            assert [await recv(ws) for _ in range(2)] == [ready_b, "b"]


@pytest.mark.anyio
async def test_persisted_cache_expires(server: Serve) -> None:
    ttl = 1.0 * UNIT
    async with server(child_settings("echo", cache="5", cachepersist=True, cache_ttl=ttl)) as s:
        await close_room(s, "a")
        await anyio.sleep(ttl * 1.2)  # the TTL itself is what is tested: nothing to wait for but time
        async with s.connect("/a") as ws:
            assert await fresh(ws)


# --- joins racing continuous output ------------------------------------------------------------------------

SIZE = 256  # after its first burst the child prints 20 lines a second, so 12 s of output fit in the cache
BURST = SIZE + 500


async def watch(ws: ClientConnection, seen: list[int], private: list[int], warm: anyio.Event) -> None:
    """The first client reads everything, all the time, so the room never waits on it."""
    while True:
        if len(seen) >= BURST:
            warm.set()  # the cache is full: joins from now on get SIZE messages
        message = json.loads(await recv(ws))
        if "private" in message:
            private.append(message["private"])
        else:
            seen.append(message["n"])


async def join_and_check(s: object, seen: list[int], failures: list[str], index: int) -> None:
    latest = seen[-1] if seen else 0
    async with s.connect("/race") as ws:  # type: ignore[attr-defined]
        got = [json.loads(await recv(ws)) for _ in range(SIZE + 5)]  # the replay, then live ones
    numbers = [m.get("n") for m in got]
    if any("private" in m or "id" in m for m in got):
        failures.append(f"joiner {index} got a private message: {got}")
    elif numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        failures.append(f"joiner {index}: not contiguous (a gap, a repeat or disorder): {numbers}")
    elif numbers[0] < latest - SIZE + 1:
        failures.append(f"joiner {index} started at {numbers[0]} with {latest} out: more than {SIZE} replayed")
    elif numbers[0] > max(latest, 1):
        # The watcher had seen `latest` before this client even connected: unless more than SIZE lines came out
        # during its handshake (12 s here), those are in its replay.
        failures.append(f"joiner {index} started at {numbers[0]}, after {latest} were out: no replay")


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_replay_under_concurrent_joins_and_continuous_output(server: Serve) -> None:
    settings = child_settings("count", str(BURST), "20", "json", frame="json", cache=f"all:{SIZE}")
    seen: list[int] = []
    private: list[int] = []
    failures: list[str] = []
    async with server(settings) as s, s.connect("/race") as watcher, anyio.create_task_group() as tg:
        warm = anyio.Event()
        tg.start_soon(watch, watcher, seen, private, warm)
        with anyio.fail_after(TIMEOUT):
            await warm.wait()
        for wave in range(4):
            async with anyio.create_task_group() as joins:
                for index in range(6):  # six joins at once, racing each other and the output
                    joins.start_soon(join_and_check, s, seen, failures, wave * 6 + index)
        tg.cancel_scope.cancel()
    assert not failures, "\n".join(failures[:3])
    assert seen == list(range(1, len(seen) + 1))  # the watcher too got everything once, in order
    assert private and all(p % 3 == 0 for p in private)  # the private lines did flow, to their client only


@pytest.mark.anyio
async def test_a_room_refused_for_want_of_a_port_leaves_the_kept_cache(server: Serve) -> None:
    async with server(tcp_settings("echo", ports=free_ports(1), cache="5", cachepersist=True)) as s:
        async with s.connect("/b") as b:
            await ready(b)
            await b.send("kept")
            assert await recv(b) == "kept"
        await until(lambda: not s.rooms.running)
        async with s.connect("/a") as a:  # takes the only port
            await ready(a)
            async with s.connect("/b") as refused:
                assert (await closed_with(refused))[0] == 1013
        await until(lambda: not s.rooms.running)
        async with s.connect("/b") as b:
            replay = [await recv_text(b) for _ in range(2)]
            assert replay[0].startswith("ready") and replay[1] == "kept"


@pytest.mark.anyio
async def test_gwsocket_frames_for_one_client_are_never_replayed(server: Serve) -> None:
    gw = str(Path(__file__).parent / "children" / "gw.py")
    settings = child_settings("unused", frame="binary", cache="10").model_copy(update={"args": ["-u", gw]})
    async with server(settings) as s, s.connect("/r") as a:
        first = [await recv(a) for _ in range(4)]  # the child's opening frames, text and binary
        await a.send("ping")
        assert [await recv(a) for _ in range(2)] == ["echo:ping", "from 1 type 1"]  # private, then broadcast
        async with s.connect("/r") as b:
            assert [await recv(b) for _ in range(5)] == [*first, "from 1 type 1"]  # kinds kept, no echo:ping
            await b.send("x")
            assert await recv(b) == "echo:x"
