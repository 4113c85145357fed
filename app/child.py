"""Child: start one wrapped program with its pipes; its stderr goes to the log.

Knows nothing of websockets or rooms. The message path to the child is an `app.channel.Channel`
(its stdio pipes; in TCP mode app.tcp connects one). The process itself (exit status, stop
sequence) is app.process's `Process`, started through the spawner helper so that the event loop
never waits for a vfork.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from app import logs, terminal
from app.channel import Channel, drain_to, open_pipes
from app.framing import LineSplitter
from app.process import Process, Spawner

log = logging.getLogger("scalesocket.child")


async def start_child(
    spawner: Spawner,
    path: str,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    label: str,
    stdio: bool,
    on_data: Callable[[bytes], None],
    on_eof: Callable[[], None],
    deadline: float | None = None,
    pty: bool = False,
) -> tuple[Process, Channel | None]:
    """Spawn with fresh pipes; stderr is logged. With `stdio` the child's stdin and stdout are the
    returned channel; otherwise stdin is /dev/null and stdout is logged too (the caller connects).
    With `pty` stdout is a raw pseudo-terminal instead of a pipe (app.terminal)."""
    stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w = _stdio_pipes(stdio, pty)
    try:
        child = await spawner.spawn(path, args, env, stdin_r, stdout_w, stderr_w, deadline)
    except BaseException:
        for fd in (stdin_w, stdout_r, stderr_r):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in (stdin_r, stdout_w, stderr_w):  # the child's ends: the spawner passed it copies
            os.close(fd)
    stderr = LogLines(label, child.pid)
    await drain_to(stderr_r, stderr, stderr.close)
    if stdio:
        return child, await open_pipes(stdin_w, stdout_r, on_data, on_eof)
    stdout = LogLines(label, child.pid, "stdout")
    await drain_to(stdout_r, stdout, stdout.close)  # always drained: a full pipe would block the child
    return child, None


def _stdio_pipes(stdio: bool, pty: bool) -> tuple[int, int, int, int, int, int]:
    """Fresh pipes for a child's stdin, stdout and stderr (stdin /dev/null and -1 without `stdio`,
    stdout a raw pseudo-terminal with `pty`).

    Out of descriptors, the pipes already made are closed again before the error goes up.
    """
    fds: list[int] = []
    try:
        fds.extend(os.pipe() if stdio else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1))
        fds.extend(terminal.open_raw() if pty else os.pipe())
        fds.extend(os.pipe())
    except OSError:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        raise
    stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w = fds
    return stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w


def describe_exit(code: int) -> str:
    """Close reason for an exit status, within a close frame's 123 bytes."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"process killed by signal {name}"
    return f"process exited with code {code}"


def shell_status(code: int) -> int:
    """Exit status a shell would report: 128+N for a signal."""
    return 128 - code if code < 0 else code


class LogLines:
    """A child's stderr (and stdout with --tcp) into the server's log (so `--json` covers it), rate-bounded.

    A child flooding stderr (`yes >&2`) must not cost the loop more than a child that is quiet: each
    stream gets LINES_PER_SECOND lines and BYTES_PER_SECOND bytes a second; what is over is only
    counted (a newline count per chunk, never split into lines) and reported in one warning per
    second, and in /metrics. The pipe is still drained at full speed, so the child never blocks.
    """

    LINES_PER_SECOND = 100
    BYTES_PER_SECOND = 64 * 1024
    MAX_LINE = 64 * 1024

    def __init__(self, room: str, pid: int, stream: str = "stderr") -> None:
        self._extra = {"room": room, "pid": pid}
        self._stream = stream
        self._lines = LineSplitter(self.MAX_LINE)
        self._window = 0.0  # start of the current second
        self._lines_left = 0
        self._bytes_left = 0
        self._dropped_lines = 0  # in the current second, not yet reported
        self._dropped_bytes = 0

    def __call__(self, data: bytes) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._report_dropped()
            self._window = now
            self._lines_left, self._bytes_left = self.LINES_PER_SECOND, self.BYTES_PER_SECOND
        if self._lines_left <= 0 or self._bytes_left <= 0:
            self._drop(data.count(b"\n"), len(data))
            self._lines.close()  # the line it was in the middle of is gone with it
            return
        lines = self._lines.feed(data)
        self._bytes_left -= len(data)
        if len(lines) > self._lines_left:
            dropped = lines[self._lines_left :]
            del lines[self._lines_left :]
            self._drop(len(dropped), sum(map(len, dropped)) + len(dropped))
        self._lines_left -= len(lines)
        self._log(lines)

    def close(self) -> None:
        self._log(self._lines.close())
        self._report_dropped()

    def _drop(self, lines: int, size: int) -> None:
        self._dropped_lines += lines
        self._dropped_bytes += size
        logs.stderr_dropped(lines, size)

    def _report_dropped(self) -> None:
        if self._dropped_lines or self._dropped_bytes:
            log.warning(
                "child %s over the rate limit: lines dropped",
                self._stream,
                extra={**self._extra, "lines": self._dropped_lines, "bytes": self._dropped_bytes},
            )
            self._dropped_lines = self._dropped_bytes = 0

    def _log(self, lines: list[bytes]) -> None:
        for line in lines:
            log.info("child %s: %s", self._stream, line.decode(errors="replace"), extra=self._extra)
