"""Channel: the message path to a child — its stdio pipes, or in TCP mode one socket.

Knows nothing of websockets, rooms or processes. Output arrives by callback (`on_data`/`on_eof`),
so the owner decides what a chunk means; `pause_output` is the backpressure lever (a paused pipe
or socket fills and slows the child, as under websocketd). `SocketProtocol` is the TCP form
(app.tcp connects it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


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

    @property
    def buffered(self) -> int:
        """Bytes written and not yet taken by the child."""
        transport = self._writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

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
