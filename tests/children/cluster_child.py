"""A cluster test child: logs its start, every line it receives and its exit to the file ARGV[1],
each with time.monotonic() (one clock for every process of the machine), and answers every line
with "<instance> <pid> <line>" — except join messages ("join #REMOTE_ADDR ..."), which it only logs."""

from __future__ import annotations

import os
import signal
import sys
import time


def main() -> int:
    log = open(sys.argv[1], "a", buffering=1)
    room, instance, pid = os.environ.get("ROOM", "?"), os.environ.get("INSTANCE", "?"), os.getpid()

    def record(what: str, text: str = "") -> None:
        log.write(f"{what} {room} {instance} {pid} {time.monotonic():.6f} {text}\n")

    lingering = False  # ?linger in the room's first request: after EOF, take half a second to exit

    def terminated(signum: int, frame: object) -> None:
        if lingering:
            return  # a slow child: only SIGKILL or its own time ends it
        record("exit", "SIGTERM")
        os._exit(0)

    signal.signal(signal.SIGTERM, terminated)
    record("start", os.environ.get("REMOTE_ADDR", ""))
    for line in sys.stdin:
        text = line.rstrip("\n")
        record("line", text)
        if text.startswith("join "):  # the instances' --joinmsg: logged, not answered
            continue
        sys.stdout.write(f"{instance} {pid} {text}\n")
        sys.stdout.flush()
    if "linger" in os.environ.get("QUERY_STRING", ""):
        lingering = True
        time.sleep(0.5)
    record("exit", "eof")
    return 0


if __name__ == "__main__":
    sys.exit(main())
