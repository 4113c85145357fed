"""Child: start one wrapped program with its pipes, and carry bytes to and from it.

Knows nothing of websockets or rooms. The message path to a child is a `Channel`: its stdio
pipes, or in TCP mode one socket (`SocketProtocol`; app.tcp connects it). Output arrives by
callback (`on_data`/`on_eof`), so the owner decides what a chunk means; `pause_output` is the
backpressure lever (a paused pipe or socket fills and slows the child, as under websocketd).
The process itself (spawn, exit status, stop sequence) is app.process's `Child`, started through
the spawner helper so that the event loop never waits for a vfork.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence

from app.framing import LineSplitter
from app.process import Child, Spawner

log = logging.getLogger("scalesocket.child")


class _Reader(asyncio.Protocol):
    """Read side of a pipe (or, inside `SocketProtocol`, a socket): forwards chunks and one end-of-stream."""

    def __init__(self, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        self._on_data = on_data
        self._on_eof: Callable[[], None] | None = on_eof
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_eof is not None:
            on_eof, self._on_eof = self._on_eof, None
            on_eof()


class _Writer(asyncio.Protocol):
    """Write side with flow control: `writable` is clear while the transport's buffer is full."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.on_resume: Callable[[], None] = lambda: None  # the buffer drained below its low-water mark
        self.closed = False
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()
        self.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()  # nobody may wait forever on a pipe that is gone
        self.on_resume()


class SocketProtocol(_Writer):
    """Both directions on one socket transport: writes with flow control, reads forwarded as `_Reader` does."""

    def __init__(self, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        super().__init__()
        self._output = _Reader(on_data, on_eof)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._output.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._output.data_received(data)

    def eof_received(self) -> bool | None:
        return self._output.eof_received()  # the child closed its side: close ours too, as at its exit

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._output.connection_lost(exc)

    def channel(self) -> Channel:
        """The connected socket as a `Channel` (after `connection_made`)."""
        return Channel(self, self._output, half_close=True)

    def discard(self) -> None:
        """Drop a connection that turned out not to be the child's, without reporting its end."""
        self._output._on_eof = None
        if self.transport is not None:
            self.transport.abort()


class Channel:
    """The message path to a child: its stdio pipes, or a TCP connection to it."""

    def __init__(self, writer: _Writer, reader: _Reader, *, half_close: bool = False) -> None:
        self._writer = writer
        self._reader = reader
        # A socket carries both directions: closing our input must only shut its write side, so the
        # child still gets to answer (e.g. the leave message) after it sees EOF.
        self._half_close = half_close
        self._input_closed = False

    @property
    def closed(self) -> bool:
        return self._writer.closed or self._input_closed

    @property
    def writable(self) -> bool:
        return self._writer.writable.is_set()

    def write(self, data: bytes) -> None:
        """Queue bytes for the child; never blocks (the caller bounds what it queues)."""
        if not self.closed and self._writer.transport is not None:
            self._writer.transport.write(data)

    async def wait_writable(self) -> None:
        await self._writer.writable.wait()

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the input drains after being full (or is gone)."""
        self._writer.on_resume = callback

    def close_input(self) -> None:
        transport = self._writer.transport
        if transport is None or self._input_closed or transport.is_closing():
            return
        self._input_closed = True
        if self._half_close:
            transport.write_eof()  # flushes what is queued, then FIN; reading goes on
        else:
            transport.close()  # flushes what is queued, then EOF

    def pause_output(self) -> None:
        if self._reader.transport is not None and not self._reader.transport.is_closing():
            self._reader.transport.pause_reading()

    def resume_output(self) -> None:
        if self._reader.transport is not None and not self._reader.transport.is_closing():
            self._reader.transport.resume_reading()

    def close(self) -> None:
        for transport in (self._writer.transport, self._reader.transport):
            if transport is not None:
                transport.close()


async def open_pipes(
    stdin_fd: int, stdout_fd: int, on_data: Callable[[bytes], None], on_eof: Callable[[], None]
) -> Channel:
    """Wrap the parent's ends of the child's stdin and stdout pipes."""
    loop = asyncio.get_running_loop()
    writer, reader = _Writer(), _Reader(on_data, on_eof)
    await loop.connect_write_pipe(lambda: writer, os.fdopen(stdin_fd, "wb", buffering=0))
    await loop.connect_read_pipe(lambda: reader, os.fdopen(stdout_fd, "rb", buffering=0))
    return Channel(writer, reader)


async def drain_to(fd: int, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> asyncio.ReadTransport:
    """Read a pipe to its end, handing chunks to `on_data` (stderr, or stdout in TCP mode)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: _Reader(on_data, on_eof), os.fdopen(fd, "rb", buffering=0))
    return transport


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
) -> tuple[Child, Channel | None]:
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
