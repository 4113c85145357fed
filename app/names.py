"""Room names (SPEC §3): which path segments name a room, and which rule another one breaks — pure.

A room name is 1-128 characters of `A-Z a-z 0-9 . _ ~ -`, is not `.` or `..` (a child that uses
`ROOM` in a file name must not be led out of its directory), and is not one of the server's own
paths. The 400 body and the log say which rule a refused name broke.
"""

from __future__ import annotations

import re

MAX_LENGTH = 128
RESERVED = frozenset({"health", "metrics", "api", "static", "stats"})
_CHARACTERS = re.compile(r"[A-Za-z0-9._~-]*")


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid room name, in a few words; None if it is one."""
    if not name:
        return "empty: a room name is 1-128 characters"
    if len(name) > MAX_LENGTH:
        return f"length: {len(name)} characters, a room name has at most {MAX_LENGTH}"
    if _CHARACTERS.fullmatch(name) is None:
        return "characters: a room name uses only A-Z a-z 0-9 . _ ~ -"
    if name in (".", ".."):
        return f"{name!r} is not a room name: it would name a directory"
    if name in RESERVED:
        return f"reserved: /{name} is one of the server's own paths"
    return None


def valid_room(name: str) -> bool:
    return name_problem(name) is None
