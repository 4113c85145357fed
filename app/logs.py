"""Logging: one line per event on stderr, plain or JSON, with structured fields.

Events carry their fields (room, id, pid, code, ...) as `extra`, so the plain formatter can
append them as `key=value` and the JSON formatter can emit them as fields. Only the server
runner calls `configure`; library code just logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

TRACE = 5  # -vv: everything, uvicorn's trace level included
logging.addLevelName(TRACE, "TRACE")

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
        return json.dumps(entry, default=str, ensure_ascii=False)


class _DropDenialNoise(logging.Filter):
    """uvicorn logs an error for every websocket refused before the upgrade (a 400 for a bad room
    name, a 503 under --oneshot); the refusal is deliberate and logged at debug by us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def configure(verbose: int, json_logs: bool) -> None:
    """Route every logger (ours and uvicorn's) through one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else PlainFormatter())
    handler.addFilter(_DropDenialNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Per-record work no formatter here reads: the caller's file and line (a stack walk), the
    # thread and the process. The logging HOWTO's "Optimization" section names these switches.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    level = {0: logging.INFO, 1: logging.DEBUG}.get(verbose, TRACE)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(level)
    if not verbose:
        # uvicorn logs every request, websocket accept and open at info: detail that -v brings back.
        # Our own lines cover listening, connects and disconnects.
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def quiet_below(level: int) -> None:
    """Log only records at `level` or above (websocketd's --loglevel error and fatal)."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
