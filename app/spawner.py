"""The spawner: a small helper process that starts, signals and reaps the server's children.

Why a process of its own: `posix_spawn` is a vfork, and the parent sleeps until the child has
exec'd — about half a millisecond on a small VM, during which an event loop serves nobody. The
server sends each spawn request here instead (argv and environment as JSON, the three stdio
descriptors alongside with SCM_RIGHTS) and goes on serving; this process does the vfork.

It is also the only process that reaps the children, so it is the one place where "signal the
group" and "reap" can never race: a child's group is killed the moment the child exits, *before*
it is reaped (the zombie still holds the group id, so the id cannot be reused by then), and the
exit status then goes back to the server. The server's side of the socket is `app.process.Spawner`.

Messages are JSON objects on a SOCK_SEQPACKET socket, one per datagram:

    server -> spawner  {"op": "spawn", "path", "args", "env", "deadline"?} + fds 0, 1, 2 for the child
                       {"op": "signal", "pid", "sig", "group"}
                       {"op": "deadline", "pids", "at"}
    spawner -> server  {"op": "started", "pid"} or {"op": "failed", "errno", "error"}, in request order
                       {"op": "exited", "pid", "code"}  (code as `os.waitstatus_to_exitcode`)

End of file on the socket means the server is gone or done: every child still running has its
group killed and is reaped, then the spawner exits.

Descendants that leave the child's process group (`setsid`, a double fork) escape that kill, so
the helper is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): whatever a room's processes
orphan becomes the helper's child rather than init's. `Descendants` remembers which room each
descendant came from (walking /proc's children lists from every room's child, once a second and
whenever a child exits), and when a room's child exits every descendant of that room is killed
and reaped here. What it cannot see: a process born and orphaned within the same second in two
rooms at once is credited to the room whose child exits first; one that leaves the subtree in a
way the kernel does not reparent to us (a daemon started through a service manager) escapes.

It runs with `python -I -S` and imports only
the standard library, so it starts in milliseconds and holds a few MB.

Deadlines (SPEC §16, fencing): a cluster room's child may only run while its instance holds the
room's lease. The server sends each child's deadline (a `time.monotonic()` value: CLOCK_MONOTONIC
is one clock for every process of the machine) with the spawn and after every renewal; once it
passes, this process kills the child's group itself. It does not depend on the server being
scheduled, so a server paused by SIGSTOP or a long stall cannot leave its child running past the
lease, which is what lets another instance start the room's next child.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

# A request is argv + environment; one datagram must fit the socket's default send buffer (about
# 208 KiB). Linux itself caps a single argument or variable at 128 KiB.
MAX_MESSAGE = 128 * 1024
# Signals Python itself ignores; a child must start with their default actions (as subprocess does).
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
SCAN_INTERVAL = 1.0  # seconds between walks of the rooms' process trees while any room runs


def become_subreaper() -> bool:
    """Make orphaned descendants our children instead of init's (Linux 3.4+); False where it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, it names one process); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def room_variable(pid: int) -> str | None:
    """The ROOM variable a process was started with (or inherited across fork), if it kept it."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            for entry in environ.read().split(b"\0"):
                if entry.startswith(b"ROOM="):
                    return entry[5:].decode(errors="replace")
    except OSError:
        pass
    return None


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children (each thread keeps the list of the children it forked)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as listing:
                found += map(int, listing.read().split())
        except OSError:
            continue
    return found


class Descendants:
    """Which room each process below the helper belongs to, however it detached from the room's group."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self.room_of: dict[int, tuple[int, int]] = {}  # pid -> (the room's child pid, its start time)
        self.unclaimed: set[int] = set()  # orphans of ours no room claims (yet)

    def scan(self, rooms: dict[int, int], names: dict[int, str] | None = None) -> set[int]:
        """Walk every room's tree and our orphans; return the orphans first seen in this scan.

        `rooms`: each running room's child pid -> its start time. An orphan no walk saw (its parent
        exited between two scans, as in a double fork) is credited by its ROOM variable to the one
        running room of that name that started before it, with `names` (child pid -> ROOM).
        """
        seen: dict[int, tuple[int, int]] = {}
        for room in rooms:
            self._walk(room, room, seen)
        new: set[int] = set()
        for orphan in children(self.me):
            if orphan in rooms:
                continue
            known = self.room_of.get(orphan)
            started = start_time(orphan)
            if known is not None and known[1] == started and known[0] in rooms:
                self._walk(orphan, known[0], seen)
                seen[orphan] = known
            elif orphan not in self.unclaimed:
                new.add(orphan)
        self.room_of = seen
        if names:
            by_name: dict[str, list[int]] = {}
            for room, name in names.items():
                by_name.setdefault(name, []).append(room)
            for orphan in list(new):
                started = start_time(orphan)
                candidates = [
                    room
                    for room in by_name.get(room_variable(orphan) or "", [])
                    if started is not None and rooms.get(room, 1 << 62) <= started
                ]
                if len(candidates) == 1:
                    self.claim({orphan}, candidates[0])
                    new.discard(orphan)
        self.unclaimed |= new
        self.unclaimed.intersection_update(children(self.me))
        return new

    def _walk(self, top: int, room: int, seen: dict[int, tuple[int, int]]) -> None:
        stack = [top]
        while stack:
            for pid in children(stack.pop()):
                started = start_time(pid)
                if started is not None and pid not in seen:
                    seen[pid] = (room, started)
                    stack.append(pid)

    def of_room(self, room: int) -> list[tuple[int, int]]:
        return [(pid, started) for pid, (owner, started) in self.room_of.items() if owner == room]

    def new_orphans(self, rooms: dict[int, int]) -> tuple[list[int], set[int]]:
        """Our children now: (all that are not rooms' children, those neither known nor unclaimed)."""
        ours = [pid for pid in children(self.me) if pid not in rooms]
        return ours, {pid for pid in ours if pid not in self.room_of and pid not in self.unclaimed}

    def claim(self, roots: set[int], room: int) -> None:
        """Credit `roots` and everything below them to `room`, whose child just exited."""
        seen: dict[int, tuple[int, int]] = {}
        for root in roots:
            started = start_time(root)
            if started is not None:
                seen[root] = (room, started)
                self._walk(root, room, seen)
        self.room_of.update(seen)
        self.unclaimed -= roots

    def kill(self, victims: list[tuple[int, int]]) -> None:
        """SIGKILL each (pid, start time) that is still that same process."""
        for pid, started in victims:
            if start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.room_of.pop(pid, None)

    def everyone(self) -> list[tuple[int, int]]:
        """Every descendant that is not a room's child: the rooms' trees and every orphan of ours."""
        victims = [(pid, started) for pid, (_, started) in self.room_of.items()]
        for orphan in self.unclaimed:
            started = start_time(orphan)
            if started is not None:
                victims.append((orphan, started))
                seen: dict[int, tuple[int, int]] = {}
                self._walk(orphan, 0, seen)
                victims += [(pid, st) for pid, (_, st) in seen.items()]
        return victims

    def reap_orphans(self, rooms: dict[int, int]) -> None:
        """Collect the exit status of every orphan of ours that has died (rooms' own children are not ours to)."""
        for pid in children(self.me):
            if pid not in rooms:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message


def spawn(path: str, args: list[str], env: dict[str, str], fds: list[int]) -> int:
    """Start `path args...` with exactly `env`, `fds` as its 0, 1, 2, in a session of its own."""
    return os.posix_spawn(
        path,
        [path, *args],
        env,
        file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
        setsid=True,  # its own group: the whole group can be killed, and terminal signals miss it
        setsigdef=RESET_SIGNALS,
        setsigmask=(),
    )


class Helper:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ)
        self.pidfds: dict[int, int] = {}  # pid -> pidfd, for every child not yet reaped
        self.deadlines: dict[int, float] = {}  # pid -> monotonic time past which it is killed
        self.started: dict[int, int] = {}  # pid -> start time, for the same children
        self.names: dict[int, str] = {}  # pid -> its ROOM variable, for the same children
        self.descendants = Descendants()
        self.subreaper = become_subreaper()
        # SIGCHLD wakes the selector: orphans that die are reaped here (they are our children now).
        self.wakeup, wakeup_w = socket.socketpair()
        self.wakeup.setblocking(False)
        wakeup_w.setblocking(False)
        self._wakeup_w = wakeup_w
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(wakeup_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(self.wakeup, selectors.EVENT_READ)
        self.last_scan = 0.0

    def serve(self) -> None:
        while True:
            timeout = SCAN_INTERVAL if self.subreaper and self.pidfds else None
            if self.deadlines:
                until_deadline = max(0.0, min(self.deadlines.values()) - time.monotonic())
                timeout = until_deadline if timeout is None else min(timeout, until_deadline)
            events = self.selector.select(timeout)
            self.enforce_deadlines()
            for key, _ in events:
                if key.fileobj is self.sock:
                    if not self.request():
                        self.finish()
                        return
                elif key.fileobj is self.wakeup:
                    while True:
                        try:
                            if not self.wakeup.recv(4096):
                                break
                        except BlockingIOError:
                            break
                    self.descendants.reap_orphans(self.started)
                else:
                    self.reap(key.data)
            if self.subreaper and self.pidfds and time.monotonic() - self.last_scan >= SCAN_INTERVAL:
                self.scan()

    def scan(self) -> set[int]:
        self.last_scan = time.monotonic()
        return self.descendants.scan(self.started, self.names)

    def request(self) -> bool:
        """Handle one request; False at end of file."""
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 3)
        except ConnectionError:
            return False
        if not data:
            return False
        try:
            message = decode(data)
            if message["op"] == "spawn":
                self.spawn(message, fds, truncated=bool(flags & socket.MSG_CTRUNC))
            elif message["op"] == "signal":
                self.signal(message["pid"], message["sig"], message["group"])
            elif message["op"] == "deadline":
                for pid in message["pids"]:
                    if pid in self.pidfds:
                        self.deadlines[pid] = float(message["at"])
        finally:
            for fd in fds:  # the child has its own copies now (or never will)
                os.close(fd)
        return True

    def spawn(self, message: dict[str, Any], fds: list[int], truncated: bool = False) -> None:
        try:
            if truncated:  # the kernel had no descriptor of ours left to put them in
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            if len(fds) != 3:
                raise OSError(errno.EINVAL, f"expected 3 descriptors, got {len(fds)}")
            pid = spawn(message["path"], message["args"], message["env"], fds)
        except OSError as error:
            self.send({"op": "failed", "errno": error.errno or 0, "error": error.strerror or str(error)})
            return
        except (KeyError, TypeError, ValueError) as error:  # a malformed request (a NUL in a variable)
            self.send({"op": "failed", "errno": errno.EINVAL, "error": f"bad spawn request: {error}"})
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as error:
            # Out of descriptors: a child we cannot watch cannot be served. It has only just started.
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.send({"op": "failed", "errno": error.errno or 0, "error": error.strerror or str(error)})
            return
        self.pidfds[pid] = pidfd
        self.started[pid] = start_time(pid) or 0
        if isinstance(message["env"].get("ROOM"), str):
            self.names[pid] = message["env"]["ROOM"]
        self.selector.register(pidfd, selectors.EVENT_READ, pid)
        if message.get("deadline") is not None:
            self.deadlines[pid] = float(message["deadline"])
        self.send({"op": "started", "pid": pid})

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for pid, deadline in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[pid]  # killed once; it is reaped like any other exit
                self.signal(pid, signal.SIGKILL, group=True)

    def signal(self, pid: int, sig: int, group: bool) -> None:
        if pid not in self.pidfds:
            return  # already reaped: the id may belong to someone else by now
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self, pid: int) -> None:
        # Grandchildren die with the child (they would keep its stdout open, and EOF never comes),
        # killed while the exited child still holds its group's id.
        self.signal(pid, signal.SIGKILL, group=True)
        if self.subreaper:
            self.kill_descendants(pid)
        _, status = os.waitpid(pid, 0)
        pidfd = self.pidfds.pop(pid)
        self.deadlines.pop(pid, None)
        self.started.pop(pid, None)
        self.names.pop(pid, None)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        if self.subreaper and not self.pidfds:  # no room left: whatever is below us is left over
            self.descendants.kill(self.descendants.everyone())
        self.send({"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def kill_descendants(self, pid: int) -> None:
        """The room of `pid` (exited, not yet reaped) is over: so is every process it started, detached or not."""
        # Its children became ours the moment it exited: those known to be its, and those not seen
        # before that started after it did, are its; so is everything below them, walked again now.
        ours, fresh = self.descendants.new_orphans(self.started)
        started = self.started.get(pid, 0)
        known = {o for o in ours if self.descendants.room_of.get(o, (0, 0))[0] == pid}
        name = self.names.get(pid)
        mine = {o for o in fresh if (start_time(o) or 0) >= started and room_variable(o) in (None, name)}
        self.descendants.claim(known | mine, pid)
        self.descendants.kill(self.descendants.of_room(pid))
        self.descendants.reap_orphans(self.started)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.send(encode(message))
        except OSError:
            pass  # the server is gone: its end of file is what we act on

    def finish(self) -> None:
        """The server is gone: no child may outlive it."""
        for pid in list(self.pidfds):
            self.signal(pid, signal.SIGKILL, group=True)
        if self.subreaper:
            self.scan()
            self.descendants.kill(self.descendants.everyone())
        for pid in list(self.pidfds):
            os.waitpid(pid, 0)
            os.close(self.pidfds.pop(pid))
        # Whatever is still our child now is left over from some room: kill it, and reap it before we go.
        while leftover := children(self.descendants.me):
            for pid in leftover:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal, or a service manager's SIGTERM to the whole group, also reaches the
    # server, which stops its rooms and then closes our socket: we live until then, to reap them.
    # Handlers rather than SIG_IGN, so that children start with the default actions (exec resets
    # handlers, but keeps what is ignored).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: None)
    sock = socket.socket(fileno=int(argv[0]))
    sock.set_inheritable(False)
    Helper(sock).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
