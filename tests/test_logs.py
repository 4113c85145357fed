"""Logging never blocks the loop, and a child's stderr is rate-bounded (issue 10, item 8; SPEC §4, §10)."""

from __future__ import annotations

import array
import fcntl
import logging
import os
import queue
import select
import statistics
import subprocess
import sys
import termios
import time

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from app import logs
from app.child import LogLines
from app.server import listening_fields
from tests.conftest import TIMEOUT, UNIT, recv_text
from tests.test_process import free_port, run, scalesocket

PIPE_CAPACITY = 64 * 1024  # Linux's default


def test_a_stderr_nobody_reads_never_blocks_the_logger_and_drops_are_reported() -> None:
    read_end, write_end = os.pipe()
    handler = logs.DroppingQueueHandler(queue.Queue(100))
    writer = logs.LogWriter(handler, logs.PlainFormatter(), fd=write_end)
    logger = logging.Logger("t")
    logger.addHandler(handler)
    try:
        started = time.monotonic()
        for i in range(20_000):  # ~1.5 MB of lines: the pipe holds 64 KiB, nobody reads it
            logger.warning("line %d %s", i, "x" * 60)
        took = time.monotonic() - started
        assert took < 2 * UNIT, f"logging 20,000 lines to a stuck stderr took {took:.2f}s"
        assert handler.dropped > 10_000, handler.dropped
        # Now someone reads: the writer gets going again, and says how many it lost on the way.
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        os.set_blocking(read_end, False)
        while b"log lines dropped" not in seen and time.monotonic() < deadline:
            logger.warning("one more")
            try:
                seen += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
        assert b"log lines dropped" in seen and b"dropped=" in seen, seen[-500:]
    finally:
        writer.stop(timeout=1)
        os.close(read_end)
        os.close(write_end)


def test_a_drop_is_reported_even_if_nothing_more_is_logged() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    handler = logs.DroppingQueueHandler(queue.Queue(10))
    writer = logs.LogWriter(handler, logs.PlainFormatter(), fd=write_end)
    logger = logging.Logger("t")
    logger.addHandler(handler)
    try:
        for _ in range(1000):  # fills the pipe and the queue: most are dropped
            logger.warning("x" * 100)
        assert handler.dropped > 0
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while b"log lines dropped" not in seen and time.monotonic() < deadline:  # and no more logging
            if select.select([read_end], [], [], 0.1)[0]:
                seen += os.read(read_end, 1 << 20)
        assert b"log lines dropped" in seen
    finally:
        writer.stop(timeout=1)
        os.close(read_end)
        os.close(write_end)


def test_stop_gives_up_on_a_stuck_stderr_within_its_timeout() -> None:
    read_end, write_end = os.pipe()
    handler = logs.DroppingQueueHandler(queue.Queue(10))
    writer = logs.LogWriter(handler, logs.PlainFormatter(), fd=write_end)
    try:
        logger = logging.Logger("t")
        logger.addHandler(handler)
        for _ in range(5000):
            logger.warning("x" * 100)
        started = time.monotonic()
        writer.stop(timeout=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        os.close(read_end)  # the stuck write now fails with EPIPE, and the thread ends
        os.close(write_end)


def test_child_stderr_is_rate_bounded_and_the_drop_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scalesocket.child")
    lines = LogLines("r", 1)
    before = logs.stderr_dropped()
    chunk = b"y\n" * 32768  # what `yes >&2` writes in one pipe's worth
    started = time.monotonic()
    for _ in range(100):  # 6.5 MB, 3.3 M lines
        lines(chunk)
    took = time.monotonic() - started
    lines.close()
    logged = [r for r in caplog.records if r.getMessage().startswith("child stderr: ")]
    assert len(logged) <= LogLines.LINES_PER_SECOND * 2  # at most two one-second windows went by
    reports = [r for r in caplog.records if "over the rate limit" in r.getMessage()]
    assert reports, "the drop was not reported"
    dropped_lines = sum(r.__dict__["lines"] for r in reports)
    assert dropped_lines + len(logged) >= 100 * 32768 - 1  # every line either logged or counted
    after = logs.stderr_dropped()
    assert after[0] - before[0] == dropped_lines
    assert took < 0.5 * UNIT, f"6.5 MB of stderr cost the loop {took * 1000:.0f} ms"


def test_child_stderr_under_the_limit_is_logged_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scalesocket.child")
    lines = LogLines("r", 1)
    lines(b"one\ntwo\nthr")
    lines(b"ee\n")
    lines.close()
    assert [r.getMessage() for r in caplog.records] == ["child stderr: one", "child stderr: two", "child stderr: three"]


async def health_latencies(port: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
            latencies.append(time.monotonic() - started)
            await anyio.sleep(0.02)
    return latencies


@pytest.mark.anyio
async def test_health_stays_fast_while_children_flood_stderr() -> None:
    async with run(scalesocket(mode="stderr-flood")) as proc:
        async with connect(proc.url + "/a") as a, connect(proc.url + "/b") as b:
            for ws in (a, b):
                assert await recv_text(ws) == "ready"
            await proc.wait_stderr(b"over the rate limit")
            latencies = await health_latencies(proc.port, 2 * UNIT)
    median, worst = statistics.median(latencies), max(latencies)
    assert median < 0.05 * UNIT and worst < 0.5 * UNIT, (
        f"/health median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms"
    )


@pytest.mark.anyio
async def test_a_server_whose_stderr_nobody_reads_keeps_serving() -> None:
    port = free_port()
    argv = [arg.replace("{port}", str(port)) for arg in scalesocket(mode="stderr-lines", args=("5000",))]
    # stderr is a pipe that this test holds open and never reads, shrunk to one page: it fills at once.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    process = await anyio.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    try:
        with anyio.fail_after(TIMEOUT * 2):
            async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await anyio.sleep(0.05)
                for round_ in range(5):  # every room writes 5,000 lines to its stderr, and so to ours
                    async with connect(f"ws://127.0.0.1:{port}/r{round_}", open_timeout=TIMEOUT) as ws:
                        assert await recv_text(ws) == "ready"
                        await ws.send("still here")
                        assert await recv_text(ws) == "still here"
                    assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        queued = array.array("i", [0])
        fcntl.ioctl(read_end, termios.FIONREAD, queued)
        assert queued[0] >= 4096 - 512, f"the server's stderr pipe was never full ({queued[0]} bytes)"
    finally:
        process.kill()
        with anyio.move_on_after(TIMEOUT):
            await process.wait()
        os.close(read_end)


def test_exit_does_not_hang_on_a_stderr_nobody_reads() -> None:
    code = (
        "import logging; from app import logs; logs.configure(0, False)\n"
        "log = logging.getLogger('scalesocket')\n"
        "for i in range(20000): log.info('line %d', i)\n"
    )
    read_end, write_end = os.pipe()
    process = subprocess.Popen([sys.executable, "-c", code], stderr=write_end)
    os.close(write_end)
    try:
        assert process.wait(TIMEOUT) == 0
    finally:
        process.kill()
        os.close(read_end)


@pytest.mark.parametrize(
    ("host", "port", "tls", "addr", "url"),
    [
        ("0.0.0.0", 9000, False, "0.0.0.0:9000", "http://localhost:9000/"),
        ("::", 9000, False, "[::]:9000", "http://localhost:9000/"),
        ("::1", 9700, False, "[::1]:9700", "http://[::1]:9700/"),
        ("127.0.0.1", 80, True, "127.0.0.1:80", "https://127.0.0.1:80/"),
        ("example.com", 9000, False, "example.com:9000", "http://example.com:9000/"),
    ],
)
def test_listening_line_keeps_brackets_and_says_the_url(host: str, port: int, tls: bool, addr: str, url: str) -> None:
    assert listening_fields(host, port, tls) == {"addr": addr, "url": url}


@pytest.mark.anyio
async def test_listening_line_of_a_wildcard_address_gives_a_url_to_open() -> None:
    async with run(scalesocket("--addr", "0.0.0.0:{port}")) as proc:
        await proc.wait_stderr(f"listening addr=0.0.0.0:{proc.port} url=http://localhost:{proc.port}/".encode())


@pytest.mark.anyio
async def test_uvicorn_app_asgi_logs_our_events_and_keeps_uvicorns_own_lines() -> None:
    env = dict(os.environ, SCALESOCKET_CMD="cat")
    argv = [sys.executable, "-m", "uvicorn", "app:asgi", "--host", "127.0.0.1", "--port", "{port}"]
    async with run(argv, env=env) as proc:
        async with connect(proc.url + "/r") as ws:
            await ws.send("hi")
            assert await recv_text(ws) == "hi"
            await proc.wait_stderr(b"child started")
        await proc.wait_stderr(b"child exited")
        assert b"client connected" in proc.stderr
        assert b"INFO:     Application startup complete." in proc.stderr  # uvicorn's config, untouched


@pytest.mark.anyio
@pytest.mark.parametrize(("flag", "detail"), [("-v", False), ("-vv", True)])
async def test_v_is_debug_and_vv_adds_every_frame_and_header(flag: str, detail: bool) -> None:
    async with run(scalesocket(flag, "--frame=json")) as proc, connect(proc.url + "/r") as ws:
        await recv_text(ws)
        await ws.send("not json")
        await proc.wait_stderr(b"not a JSON object")  # debug: both
        await ws.send('{"a": 1}')
        assert await recv_text(ws) == '{"a":1,"id":1}'
    lines = proc.stderr.decode(errors="replace").splitlines()
    traced = [line for line in lines if " TRACE " in line or "sec-websocket" in line.lower()]
    assert bool(traced) == detail, "\n".join(traced[:5]) or "\n".join(lines[-20:])
