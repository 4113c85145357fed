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
from collections.abc import Callable, Mapping, Sequence

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
) -> tuple[Process, Channel | None]:
    """Spawn with fresh pipes; stderr is logged. With `stdio` the child's stdin and stdout are the
    returned channel; otherwise stdin is /dev/null and stdout is logged too (the caller connects)."""
    stdin_r, stdin_w = os.pipe() if stdio else (os.open(os.devnull, os.O_RDONLY), -1)
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    try:
        child = await spawner.spawn(path, args, env, stdin_r, stdout_w, stderr_w)
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
    """A child's stderr (and stdout with --tcp), line by line, into the server's log (so `--json` covers it)."""

    def __init__(self, room: str, pid: int, stream: str = "stderr") -> None:
        self._extra = {"room": room, "pid": pid}
        self._stream = stream
        self._lines = LineSplitter(64 * 1024)

    def __call__(self, data: bytes) -> None:
        self._log(self._lines.feed(data))

    def close(self) -> None:
        self._log(self._lines.close())

    def _log(self, lines: list[bytes]) -> None:
        for line in lines:
            log.info("child %s: %s", self._stream, line.decode(errors="replace"), extra=self._extra)
