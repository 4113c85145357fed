"""Child processes as the server sees them: `Spawner`, its side of the spawner helper process
(app/spawner.py), and `Process`, one running program with its exit status and its stop sequence.

The server never forks or reaps: it sends a spawn request (with the stdio descriptors) and goes
on serving; the helper answers with the pid, and later with the exit status, after it has killed
the child's group. Signals go through the helper too, which knows for sure whether a pid is still
its unreaped child. The app's lifespan owns the one `Spawner`: it starts the helper with the app
and closes it after every room has stopped. If the helper dies anyway, the next spawn starts a
new one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from app import spawner

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("scalesocket.child")

# Between closing stdin and SIGTERM: a well-behaved child (cat, a line-reading script) exits by
# itself on EOF, after reading what we wrote last (the leave message), as websocketd allows too.
STDIN_GRACE = 0.1
KILL_RETRY = 1.0
HELPER_EXIT_TIMEOUT = 5.0  # for the helper to reap what is left and exit once its socket closes


class Process:
    """One running program, in a session of its own (so its whole group can be killed)."""

    def __init__(self, pid: int, spawner: Spawner) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # asyncio's Event, not anyio's: it is set from the spawner's socket callback, outside any task.
        self.exited = asyncio.Event()
        self.on_exit: Callable[[], None] = lambda: None
        self._spawner = spawner

    def signal(self, sig: int) -> None:
        if self.returncode is None:
            self._spawner.signal(self.pid, sig, group=False)

    def kill_group(self) -> None:
        if self.returncode is None:
            self._spawner.signal(self.pid, signal.SIGKILL, group=True)

    def reaped(self, code: int) -> None:
        """The helper reaped it (its group already killed): `code` as `os.waitstatus_to_exitcode`."""
        if self.returncode is None:
            self.returncode = code
            self.exited.set()
            self.on_exit()

    async def stop(self, grace: float) -> None:
        """SIGTERM, and after `grace` SIGKILL the group; returns once reaped.

        The caller closes the child's stdin first (its channel): a well-behaved child exits on EOF."""
        if self.returncode is not None:
            return  # already reaped (and its group killed)
        with anyio.CancelScope(shield=True):  # runs during cancellation too: never leave a child behind
            with anyio.move_on_after(STDIN_GRACE):
                await self.exited.wait()
            if self.returncode is None:
                self.signal(signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self.exited.wait()
            if self.returncode is None:
                log.warning("child ignored SIGTERM, killing its process group", extra={"pid": self.pid})
            while self.returncode is None:  # again each second: a signal the spawner missed is resent
                self.kill_group()
                with anyio.move_on_after(KILL_RETRY):
                    await self.exited.wait()


class Spawner:
    """The server's end of the spawner helper: spawn requests out, pids and exit statuses back."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._helper_pid = 0
        self._pending: deque[asyncio.Future[Process]] = deque()  # spawn requests sent, in order
        self._children: dict[int, Process] = {}  # started and not yet reported reaped
        self._helpers_exited: dict[int, asyncio.Event] = {}
        self._waiting_to_send: set[asyncio.Future[None]] = set()  # spawns waiting for room in the queue

    @classmethod
    @asynccontextmanager
    async def running(cls) -> AsyncIterator[Spawner]:
        """A spawner for the app's lifetime: the helper starts now (not at the first client) and,
        on the way out, is told to finish and waited for."""
        self = cls()
        self._connect()
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    async def spawn(
        self,
        path: str,
        args: Sequence[str],
        env: Mapping[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
        deadline: float | None = None,
    ) -> Process:
        """Start `path args...` with exactly `env` and the given descriptors as its fds 0, 1, 2;
        the helper kills it at `deadline` (monotonic) unless a later one is set."""
        spawn: dict[str, Any] = {"op": "spawn", "path": path, "args": list(args), "env": dict(env)}
        if deadline is not None:
            spawn["deadline"] = deadline
        request = spawner.encode(spawn)
        if len(request) > spawner.MAX_MESSAGE:
            raise OSError(errno.E2BIG, os.strerror(errno.E2BIG))
        sock = self._connect()
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(sock, [request], [stdin, stdout, stderr])
                break
            except BlockingIOError:  # the helper has its hands full: wait for room in its queue
                await self._writable(sock)
            except ConnectionError as error:  # the helper is gone (any other error fails this spawn only)
                self._lost(f"cannot reach it: {error}")
                raise OSError(errno.EPIPE, "the spawner process is gone") from error
            if self._sock is not sock:  # lost while we waited
                raise OSError(errno.EPIPE, "the spawner process is gone")
        started: asyncio.Future[Process] = loop.create_future()
        self._pending.append(started)
        return await started  # if cancelled, the dispatcher kills what was started for nobody

    def signal(self, pid: int, sig: int, *, group: bool) -> None:
        if self._sock is not None:
            self._send({"op": "signal", "pid": pid, "sig": int(sig), "group": group})

    def set_deadline(self, pids: Sequence[int], at: float) -> None:
        """Move the kill deadline of these children (a cluster room's lease was renewed)."""
        if self._sock is not None and pids:
            self._send({"op": "deadline", "pids": list(pids), "at": at})

    # --- the helper process ------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        """The socket to the helper, starting the helper if there is none."""
        if self._sock is not None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            script = str(Path(spawner.__file__).resolve())
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", script, "3"],  # only the standard library: no site, no env
                {},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
                ],
                setsigmask=(),
            )
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(ours, self._received)
        self._sock, self._helper_pid = ours, pid
        exited = self._helpers_exited[pid] = asyncio.Event()
        pidfd = os.pidfd_open(pid)

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            del self._helpers_exited[pid]
            exited.set()
            if self._helper_pid == pid:  # not told to finish: it died
                self._lost(f"it exited with status {os.waitstatus_to_exitcode(status)}")

        loop.add_reader(pidfd, reap)
        return ours

    async def _close(self) -> None:
        """Tell the helper to finish (it kills and reaps whatever is left) and wait until it has."""
        pid = self._helper_pid
        exited = self._helpers_exited.get(pid)
        self._disconnect()
        for child in list(self._children.values()):  # nothing should be left; if it is, it's killed
            child.reaped(-signal.SIGKILL)
        if exited is None:
            return
        with anyio.move_on_after(HELPER_EXIT_TIMEOUT):
            await exited.wait()
        if not exited.is_set():
            log.error("spawner process did not exit, killing it", extra={"pid": pid})
            os.kill(pid, signal.SIGKILL)
            await exited.wait()

    def _disconnect(self) -> None:
        sock, self._sock, self._helper_pid = self._sock, None, 0
        if sock is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock)
            loop.remove_writer(sock)
            sock.close()
        self._wake_senders()  # they see the socket gone, and fail their spawn
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(OSError(errno.EPIPE, "the spawner process is gone"))

    def _lost(self, why: str) -> None:
        """The helper died: its children are orphans now. Kill them and report them gone."""
        if self._sock is None:
            return
        log.error("spawner process lost: %s", why, extra={"pid": self._helper_pid})
        self._disconnect()
        for pid, child in list(self._children.items()):
            try:
                os.killpg(pid, signal.SIGKILL)  # a last resort: nobody can reap it for us any more
            except (ProcessLookupError, PermissionError):
                pass
            child.reaped(-signal.SIGKILL)
        self._children.clear()

    async def _writable(self, sock: socket.socket) -> None:
        """Wait until the helper's queue has room (or the helper is gone)."""
        loop = asyncio.get_running_loop()
        if not self._waiting_to_send:  # one callback for every waiter: add_writer keeps only one
            loop.add_writer(sock, self._wake_senders)
        ready: asyncio.Future[None] = loop.create_future()
        self._waiting_to_send.add(ready)
        try:
            await ready
        finally:
            self._waiting_to_send.discard(ready)
            if not self._waiting_to_send and sock is self._sock:
                loop.remove_writer(sock)

    def _wake_senders(self) -> None:
        for waiter in self._waiting_to_send:
            if not waiter.done():
                waiter.set_result(None)

    # --- messages ----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        assert self._sock is not None
        try:
            self._sock.send(spawner.encode(message))
        except ConnectionError as error:
            self._lost(f"cannot reach it: {error}")
        except OSError as error:
            # A full queue (it holds 10 requests) or no buffer: drop the signal rather than block.
            # The stop sequence escalates to SIGKILL of the group on its own timer, and sends it again.
            log.warning("signal not sent to the spawner: %s", error, extra={"pid": message.get("pid")})

    def _received(self) -> None:
        sock = self._sock
        while sock is not None and sock is self._sock:
            try:
                data = sock.recv(spawner.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as error:
                self._lost(f"cannot read from it: {error}")
                return
            if not data:
                self._lost("it closed its socket")
                return
            self._dispatch(spawner.decode(data))

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "exited":
            child = self._children.pop(message["pid"], None)
            if child is not None:
                child.reaped(message["code"])
            return
        future = self._pending.popleft()
        if op == "failed":
            if not future.cancelled():
                future.set_exception(OSError(message["errno"], message["error"]))
            return
        # Registered here, not when the spawning task resumes: its exit may be the next message.
        child = self._children[message["pid"]] = Process(message["pid"], self)
        if future.cancelled():  # its room stopped while the spawn was in flight
            child.kill_group()
        else:
            future.set_result(child)
