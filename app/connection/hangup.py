"""HangupWatch: notice that a client whose reading is paused has gone away.

A paused transport reads nothing, so it never sees the peer's FIN: a client that left while the
server was not reading it (its child's input full, the inbound budget spent) would hold its
buffers until a keepalive ping failed. Paused sockets are registered here instead, in one epoll
set for the whole loop, for hang-ups only (EPOLLRDHUP, not EPOLLIN: data arriving does not wake
it), and the owner is told the moment one hangs up. Linux only; elsewhere `available` is False
and the keepalive timeout remains the way to notice.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable

_EVENTS = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)


class HangupWatch:
    available = hasattr(select, "epoll") and hasattr(select, "EPOLLRDHUP")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, on_hangup: Callable[[], None]) -> None:
        if not self.available or fd < 0:
            return
        loop = asyncio.get_running_loop()
        if self._epoll is None or self._loop is not loop:
            self._epoll = select.epoll()
            self._loop = loop
            loop.add_reader(self._epoll.fileno(), self._ready)
        try:
            self._epoll.register(fd, _EVENTS)
        except FileExistsError:
            self._epoll.modify(fd, _EVENTS)
        except OSError:
            return
        self._watched[fd] = on_hangup

    def unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None and self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed: epoll forgot it by itself

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _ in self._epoll.poll(0):
            on_hangup = self._watched.get(fd)
            self.unwatch(fd)
            if on_hangup is not None:
                on_hangup()
