"""Logging: one line per event on stderr, plain or JSON, with structured fields — never blocking the loop.

Events carry their fields (room, id, pid, code, ...) as `extra`, so the plain formatter can
append them as `key=value` and the JSON formatter can emit them as fields.

The event loop only ever puts a record on a bounded queue (`DroppingQueueHandler`); a thread
(`LogWriter`) formats it and writes it to file descriptor 2. When stderr is slow, or is a pipe
that nobody reads, the thread blocks in `write` and the queue fills: further records are dropped
and counted (`dropped()`, in `/metrics` too), and once the thread gets going again its first line
says how many were lost. The thread writes with `os.write` on a descriptor of its own, so a write
blocked forever holds no lock that the rest of the process (or its exit) needs.

`configure` sets this up for the CLI (every logger, uvicorn's included); `configure_library`
does it for `uvicorn app:asgi`, where uvicorn owns its own loggers and only ours are added.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from typing import Any

TRACE = 5  # -vv: everything, uvicorn's trace level included
logging.addLevelName(TRACE, "TRACE")

QUEUE_SIZE = 10_000  # records waiting for the writer thread; past it they are dropped and counted
STOP_TIMEOUT = 1.0  # how long exit waits for the writer to flush; a stderr nobody reads never drains
REPORT_EVERY = 1.0  # a drop is reported within this long even if nothing else is logged

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_COLOR_MESSAGE = "color_message"  # uvicorn adds a coloured copy of its message


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record was logged with."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k != _COLOR_MESSAGE}


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in fields(record).items())
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}" + (f" {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class _DropDenialNoise(logging.Filter):
    """uvicorn logs an error for every websocket refused before the upgrade (a 400 for a bad room
    name, a 503 under --oneshot); the refusal is deliberate and logged at debug by us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


class DroppingQueueHandler(logging.Handler):
    """The loop's side: put the record on a bounded queue, or count it as dropped. Never waits."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__()
        self.records = records
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        # Freeze what may change or not survive the thread hop: the message (its args may be
        # mutable) and the traceback (its frames go on running). Formatting itself is the thread's.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def handle(self, record: logging.LogRecord) -> bool:
        # logging.Handler.handle takes the handler's lock around emit; a queue needs none.
        rv = self.filter(record)
        if rv:
            self.emit(record)
        return bool(rv)


class LogWriter:
    """The writer thread: takes records off the queue, formats them and writes them to a descriptor."""

    def __init__(self, handler: DroppingQueueHandler, formatter: logging.Formatter, fd: int = 2) -> None:
        self.handler = handler
        self.formatter = formatter
        self.fd = os.dup(fd)  # our own: closing or replacing fd 2 later does not pull it from under us
        os.set_inheritable(self.fd, False)
        self.reported = 0  # drops already reported in a log line
        self._thread = threading.Thread(target=self._run, name="scalesocket-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        records = self.handler.records
        while True:
            try:
                record: logging.LogRecord | None = records.get(timeout=REPORT_EVERY)
            except queue.Empty:  # quiet now: still say what was lost, without waiting for a next line
                if self.handler.dropped > self.reported:
                    self._write((self._report() + "\n").encode(errors="replace"))
                continue
            if record is None:
                return
            lines = [self.formatter.format(record)]
            if self.handler.dropped > self.reported:
                lines.insert(0, self._report())
            self._write(("\n".join(lines) + "\n").encode(errors="replace"))

    def _report(self) -> str:
        dropped = self.handler.dropped
        lost, self.reported = dropped - self.reported, dropped
        return self.formatter.format(_dropped_record(lost, dropped))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except InterruptedError:
                continue
            except OSError:
                return  # stderr closed (EPIPE, EBADF): nothing to tell anyone

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Flush what is queued, waiting at most `timeout` (a blocked stderr is left behind)."""
        deadline = time.monotonic() + timeout
        try:
            self.handler.records.put(None, timeout=timeout)
        except queue.Full:
            return  # the writer is stuck on a stderr nobody reads: leave it (it is a daemon thread)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            os.close(self.fd)


def _dropped_record(lost: int, total: int) -> logging.LogRecord:
    record = logging.LogRecord(
        "scalesocket", logging.WARNING, __file__, 0, "log lines dropped: stderr was not keeping up", None, None
    )
    record.__dict__.update(dropped=lost, dropped_total=total)
    return record


_active: tuple[DroppingQueueHandler, LogWriter] | None = None
_lock = threading.Lock()


def dropped() -> int:
    """Log records dropped so far because the writer thread was behind (0 if not configured here)."""
    return _active[0].dropped if _active is not None else 0


_stderr_dropped = [0, 0]  # lines, bytes of children's stderr over its rate limit, since start


def stderr_dropped(lines: int = 0, size: int = 0) -> tuple[int, int]:
    """Count `lines` / `size` bytes of a child's stderr as dropped; the totals so far."""
    _stderr_dropped[0] += lines
    _stderr_dropped[1] += size
    return _stderr_dropped[0], _stderr_dropped[1]


def _install(json_logs: bool) -> DroppingQueueHandler:
    """The one queue handler of this process, (re)made with the formatter asked for."""
    global _active
    with _lock:
        if _active is not None:
            _active[1].stop()
        handler = DroppingQueueHandler(queue.Queue(QUEUE_SIZE))
        handler.addFilter(_DropDenialNoise())
        writer = LogWriter(handler, JsonFormatter() if json_logs else PlainFormatter())
        _active = (handler, writer)
        return handler


@atexit.register
def shutdown() -> None:
    """Write out what is queued (bounded in time); called at exit."""
    global _active
    with _lock:
        if _active is not None:
            _active[1].stop()
            _active = None


def level_for(verbose: int) -> int:
    return {0: logging.INFO, 1: logging.DEBUG}.get(verbose, TRACE)


def configure(verbose: int, json_logs: bool) -> None:
    """Route every logger (ours and uvicorn's) through one non-blocking stderr handler."""
    handler = _install(json_logs)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Per-record work no formatter here reads: the caller's file and line (a stack walk), the
    # thread and the process. The logging HOWTO's "Optimization" section names these switches.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    level = level_for(verbose)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "scalesocket"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET if name == "scalesocket" else level)
    if verbose < 2:
        # The websockets library logs every frame and every handshake header at debug: that is -vv.
        logging.getLogger("websockets").setLevel(logging.INFO)
    else:
        logging.getLogger("websockets").setLevel(logging.NOTSET)
    if not verbose:
        # uvicorn logs every request, websocket accept and open at info: detail that -v brings back.
        # Our own lines cover listening, connects and disconnects.
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def quiet_below(level: int) -> None:
    """Log only records at `level` or above (websocketd's --loglevel error and fatal): every line
    under the CLI (its one handler is the root's), our own under `uvicorn app:asgi`."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    logging.getLogger("scalesocket").setLevel(level)


def configure_library(verbose: int, json_logs: bool) -> None:
    """Under `uvicorn app:asgi`: give our own loggers a handler, and leave uvicorn's config alone.

    uvicorn has configured its own loggers by the time it imports the app, and the root logger has
    no handler, so without this every scalesocket line (starts, exits, warnings) would be lost. An
    application that set up logging itself (a root handler, or one on "scalesocket") keeps it.
    """
    ours = logging.getLogger("scalesocket")
    if ours.handlers or logging.getLogger().handlers:
        return
    ours.addHandler(_install(json_logs))
    ours.setLevel(level_for(verbose))
    ours.propagate = False
