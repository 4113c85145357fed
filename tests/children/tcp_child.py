"""A --tcp test child with modes: `tcp_child.py MODE [ARGS...]`, listening on 127.0.0.1:$PORT.

Modes that listen accept one connection (the server's), greet it with `ready <pid> <port>\\n`
unless told otherwise, then echo every byte back until the server closes its side.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time


def listen() -> socket.socket:
    # create_server sets SO_REUSEADDR, as real servers do, so a port reused after TIME_WAIT binds.
    return socket.create_server(("127.0.0.1", int(os.environ["PORT"])))


def accept(server: socket.socket) -> socket.socket:
    conn, _ = server.accept()
    server.close()
    return conn


def echo(conn: socket.socket) -> None:
    """Echo until EOF; the line `exit N` makes the child exit N at once, still connected."""
    while data := conn.recv(65536):
        if data.startswith(b"exit "):
            os._exit(int(data.split()[1]))
        conn.sendall(data)


def greet(conn: socket.socket) -> None:
    conn.sendall(f"ready {os.getpid()} {os.environ['PORT']}\n".encode())


def frame(client: int, kind: int, payload: bytes) -> bytes:
    return struct.pack("!III", client, kind, len(payload)) + payload


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "echo":  # greet, echo
        conn = accept(listen())
        greet(conn)
        echo(conn)
        return 0
    if mode == "env":  # send the environment as one JSON line, then echo
        conn = accept(listen())
        conn.sendall(json.dumps(dict(os.environ)).encode() + b"\n")
        echo(conn)
        return 0
    if mode == "late":  # bind only after ARGS[0] seconds, then greet and echo
        time.sleep(float(args[0]))
        conn = accept(listen())
        greet(conn)
        echo(conn)
        return 0
    if mode == "never":  # never listen: print the pid on stdout (the server's log) and wait to be stopped
        print(f"never listening {os.getpid()}", flush=True)
        while True:
            time.sleep(60)
    if mode == "exit-early":  # exit ARGS[0] without ever listening
        return int(args[0])
    if mode == "split-frames":  # gwsocket frames cut across TCP segments, then echo the client's frames
        conn = accept(listen())
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = frame(0, 1, b"hello everyone") + frame(0, 2, bytes(range(10)))
        for cut in (5, 13, 20, 33):  # inside the header, across a frame boundary, inside payloads
            conn.sendall(stream[:cut])
            stream = stream[cut:]
            time.sleep(0.05)  # separate segments, separate reads on the server
        conn.sendall(stream)
        echo(conn)
        return 0
    if mode == "hang-up":  # greet, close the socket; then exit ARGS[0], or with "linger" stay until stopped
        conn = accept(listen())
        greet(conn)
        conn.sendall(b"bye\n")
        conn.close()
        if args[0] == "linger":
            while True:
                time.sleep(60)
        return int(args[0])
    if mode == "flood":  # write ARGS[0] bytes of lines to stdout and stderr before listening, then greet, echo
        line = "z" * 99 + "\n"
        for _ in range(int(args[0]) // len(line)):
            sys.stdout.write(line)
            sys.stderr.write(line)
        sys.stdout.flush()
        sys.stderr.flush()
        conn = accept(listen())
        greet(conn)
        echo(conn)
        return 0
    if mode == "count":  # greet, send 1..ARGS[0] as 1000-digit lines as fast as the socket takes them, then echo
        conn = accept(listen())
        greet(conn)
        for i in range(1, int(args[0]) + 1):
            conn.sendall(f"{i:01000d}\n".encode())
        echo(conn)
        return 0
    if mode == "record":  # greet, echo, and append everything received, then "eof", to the file ARGS[0]
        conn = accept(listen())
        greet(conn)
        with open(args[0], "ab") as record:
            while data := conn.recv(65536):
                record.write(data)
                record.flush()
                conn.sendall(data)
            record.write(b"eof\n")
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
