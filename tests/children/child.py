"""A test child with modes, as in websocketd's testcmd: `child.py MODE [ARGS...]`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "unflushed":  # print() without flushing (run it without -u), then answer input lines
        print("hello")
        print(f"tty {int(os.isatty(0))}{int(os.isatty(1))}{int(os.isatty(2))}")  # stdin, stdout, stderr
        for line in sys.stdin:
            print("got " + line.rstrip("\n"))
        return 0
    if mode == "echo":  # print "ready <pid>", then echo every line
        out(f"ready {os.getpid()}")
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "env":  # print the environment as one JSON line, then echo
        out(json.dumps(dict(os.environ)))
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "pid":  # answer every line with "<pid> <line>"
        for line in sys.stdin:
            out(f"{os.getpid()} {line.rstrip()}")
        return 0
    if mode == "record":  # append every input line to the file ARGS[0], echo it too
        with open(args[0], "a") as record:
            record.write(f"start {os.getpid()}\n")
            record.flush()
            for line in sys.stdin:
                record.write(line)
                record.flush()
                out(line.rstrip("\n"))
            record.write("eof\n")
        return 0
    if mode == "exit":  # print ARGS[1:] lines, the last without newline, then exit with ARGS[0]
        lines = args[1:]
        for line in lines[:-1]:
            out(line)
        if lines:
            sys.stdout.write(lines[-1])
            sys.stdout.flush()
        return int(args[0])
    if mode == "wait-exit":  # echo until the line "exit N", then exit N
        out("ready")
        for line in sys.stdin:
            if line.startswith("exit "):
                return int(line.split()[1])
            out(line.rstrip("\n"))
        return 0
    if mode == "ignore-term":  # ignore SIGTERM and stdin EOF; print pid
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        out(f"ready {os.getpid()}")
        while True:
            time.sleep(60)
    if mode == "grandchild":  # start a grandchild that ignores SIGTERM, print both pids, echo
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(60)
        out(f"ready {os.getpid()} {pid}")
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "bytes":  # write ARGS[0] (hex) to stdout raw, then echo stdin raw as hex lines
        sys.stdout.buffer.write(bytes.fromhex(args[0]))
        sys.stdout.flush()
        while chunk := os.read(0, 65536):
            out(chunk.hex())
        return 0
    if mode == "big":  # print one line of ARGS[0] bytes ('x' * n), then echo
        out("x" * int(args[0]))
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "go-seq":  # wait for one line, then print 1..ARGS[0]
        sys.stdin.readline()
        for i in range(1, int(args[0]) + 1):
            sys.stdout.write(f"{i}\n")
        sys.stdout.flush()
        sys.stdin.read()
        return 0
    if mode == "no-read":  # never read stdin; print ready, then sleep
        out(f"ready {os.getpid()}")
        while True:
            time.sleep(60)
    # Start ARGS[0] `setsid sleep` (own sessions, our stdio), print their pids; then ARGS[1]: exit or
    # stay (echo). A room named "stays" always stays, so one server can hold both kinds.
    if mode == "setsid":
        import subprocess

        pids = [subprocess.Popen(["setsid", "sleep", "1000"]).pid for _ in range(int(args[0]))]
        out("ready " + " ".join(map(str, pids)))
        if args[1] == "exit" and os.environ.get("ROOM") != "stays":
            os._exit(0)  # no waiting for them: they are orphans from here on
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "daemon":  # double fork + setsid: a daemon that is nobody's child; print its pid, echo
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(write_end, str(os.getpid()).encode())
                os.close(write_end)
                while True:
                    time.sleep(60)
            os._exit(0)
        os.close(write_end)
        daemon = os.read(read_end, 100).decode()
        out(f"ready {daemon}")
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "stderr-flood":  # print "ready", then write "y" lines to stderr as fast as `yes >&2` would
        out("ready")
        chunk = b"y\n" * 32768
        while True:
            os.write(2, chunk)
    if mode == "stderr-lines":  # print "ready", then ARGS[0] numbered lines to stderr, then echo
        out("ready")
        for i in range(int(args[0])):
            sys.stderr.write(f"line {i} from the child\n")
        sys.stderr.flush()
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "stderr":  # print ARGS[0] to stderr, then echo
        sys.stderr.write(args[0] + "\n")
        sys.stderr.flush()
        out("ready")
        for line in sys.stdin:
            out(line.rstrip("\n"))
        return 0
    if mode == "json-say":  # json framing: print a message's "say" verbatim, else echo the stamped object
        for line in sys.stdin:
            message = json.loads(line)
            out(message["say"] if "say" in message else json.dumps(message, separators=(",", ":")))
        return 0
    if mode == "count":  # print 1, 2, 3, ... without end: ARGS[0] lines at once, then ARGS[1] lines a second
        burst, rate = int(args[0]), float(args[1])
        as_json = args[2:3] == ["json"]  # {"n": i}, and every third number a private line for client 1
        i = 0
        while True:
            i += 1
            if as_json:
                sys.stdout.write(f'{{"n":{i}}}\n' + (f'{{"id":1,"private":{i}}}\n' if i % 3 == 0 else ""))
            else:
                sys.stdout.write(f"{i}\n")
            if i % 10 == 0:
                sys.stdout.flush()
                if i > burst:
                    time.sleep(10 / rate)
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
