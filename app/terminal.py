"""--pty: a pseudo-terminal for the child's stdout, so programs that buffer piped output don't.

C's stdio and Python's `print` buffer stdout in blocks when it is a pipe, and flush each line when
it is a terminal; websocketd's users meet this as output that "never arrives". Only stdout becomes
the terminal (its slave side): stdin stays a pipe, so EOF still reaches the child, and stderr stays
a separate pipe. Raw mode: no `\\r` is added before `\\n`, no byte is translated, nothing is echoed.
The server reads the master side like a pipe; when the child (and everything that inherited its
stdout) has exited, reading the master fails with EIO, which asyncio takes as the end of the stream.
"""

from __future__ import annotations

import os
import termios
import tty

SIZE = (24, 80)  # rows, columns: what a terminal that says nothing of its size is taken to be


def open_raw() -> tuple[int, int]:
    """A pty pair in raw mode: (master, slave), both close-on-exec; the slave is the child's stdout."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        termios.tcsetwinsize(slave, SIZE)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave
