"""Meta: the json lines a child writes about its room rather than to its clients (SPEC §15).

Pure. Under json server framing a line that is a JSON object with `"_meta": true` is the room's
metadata (for `--api`), and a line with `"_cache": true` is what `--cache=tagged:` keeps. Anything
else — not JSON, not an object, `_meta` absent or not `true` — is an ordinary line.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

__all__ = ["metadata_of", "tagged"]


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _object(line: bytes, key: bytes) -> dict[str, Any] | None:
    """`line` as a JSON object if it may hold `key`, else None (most lines are never parsed)."""
    # The key may also be spelled with \\u escapes, so only lines with neither skip the parse.
    if line.find(key) < 0 and line.find(b"\\u") < 0:
        return None
    try:
        obj = _DECODER.decode(line.decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return obj if type(obj) is dict else None


def metadata_of(line: bytes) -> dict[str, Any] | None:
    """The room metadata a `"_meta": true` line carries (the object without `_meta`), or None."""
    obj = _object(line, b'"_meta"')
    if obj is None or obj.get("_meta") is not True:
        return None
    del obj["_meta"]
    return obj


def tagged(line: bytes) -> bool:
    """A json line marked `"_cache": true`, which `--cache=tagged:` keeps for joiners."""
    obj = _object(line, b'"_cache"')
    return obj is not None and obj.get("_cache") is True
