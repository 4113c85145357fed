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
group killed and is reaped, then the spawner exits. It runs with `python -I -S` and imports only
the standard library, so it starts in milliseconds and holds a few MB.

Deadlines (SPEC §16, fencing): a cluster room's child may only run while its instance holds the
room's lease. The server sends each child's deadline (a `time.monotonic()` value: CLOCK_MONOTONIC
is one clock for every process of the machine) with the spawn and after every renewal; once it
passes, this process kills the child's group itself. It does not depend on the server being
scheduled, so a server paused by SIGSTOP or a long stall cannot leave its child running past the
lease, which is what lets another instance start the room's next child.
"""

from __future__ import annotations

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

    def serve(self) -> None:
        while True:
            timeout = None
            if self.deadlines:
                timeout = max(0.0, min(self.deadlines.values()) - time.monotonic())
            events = self.selector.select(timeout)
            self.enforce_deadlines()
            for key, _ in events:
                if key.fileobj is self.sock:
                    if not self.request():
                        self.finish()
                        return
                else:
                    self.reap(key.data)

    def request(self) -> bool:
        """Handle one request; False at end of file."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 3)
        except ConnectionError:
            return False
        if not data:
            return False
        try:
            message = decode(data)
            if message["op"] == "spawn":
                self.spawn(message, fds)
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

    def spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        try:
            if len(fds) != 3:
                raise OSError(errno.EINVAL, f"expected 3 descriptors, got {len(fds)}")
            pid = spawn(message["path"], message["args"], message["env"], fds)
        except OSError as error:
            self.send({"op": "failed", "errno": error.errno or 0, "error": error.strerror or str(error)})
            return
        except (KeyError, TypeError, ValueError) as error:  # a malformed request (a NUL in a variable)
            self.send({"op": "failed", "errno": errno.EINVAL, "error": f"bad spawn request: {error}"})
            return
        pidfd = os.pidfd_open(pid)
        self.pidfds[pid] = pidfd
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
        _, status = os.waitpid(pid, 0)
        pidfd = self.pidfds.pop(pid)
        self.deadlines.pop(pid, None)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        self.send({"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.send(encode(message))
        except OSError:
            pass  # the server is gone: its end of file is what we act on

    def finish(self) -> None:
        """The server is gone: no child may outlive it."""
        for pid in list(self.pidfds):
            self.signal(pid, signal.SIGKILL, group=True)
        for pid in list(self.pidfds):
            os.waitpid(pid, 0)
            os.close(self.pidfds.pop(pid))


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
