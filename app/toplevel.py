"""JSON framing for big messages: only the top level of the object is looked at, never built.

Pure, like app.framing, which calls these for messages over `framing.FULL_PARSE_MAX`. Parsing a
whole 15.7 MiB message of 5.5 M empty arrays took the stdlib 1.6 s and orjson 1.9 s on the loop
(they build every list); msgspec validates the same message and hands back only the top-level
`"id"` in about 25 ms, because a `Struct` with one field skips every other member without
building it. Values other than the id are passed on as the client wrote them, only with the
whitespace between tokens removed (`msgspec.json.format`), so nested numbers keep their
spelling (`1e3` stays `1e3`; under FULL_PARSE_MAX it is rewritten as `1000.0`).

Removing a client's own top-level `"id"` members without building the object: in the
one-space-indented form that `msgspec.json.format(..., indent=1)` writes, every top-level member
starts a line with exactly one space and a quote, deeper lines start with two spaces or more, and
a string never holds a raw newline; so a top-level member is a line-anchored pattern. The key
"id" can only be spelled with `i`/`\\u0069` and `d`/`\\u0064` (hex digits that are all digits).

Limits, as the full parse has them too: invalid UTF-8, NaN/Infinity, trailing data and nesting
deeper than msgspec's recursion limit make the message "not JSON". Unlike the full parse, an
escaped lone surrogate (`"\\ud800"`) is refused by msgspec: a big client message holding one is
dropped, and a big child line holding one is routed as if the surrogate were U+FFFD.
"""

from __future__ import annotations

import re

import msgspec

__all__ = ["route_top", "stamp_top"]


class _Top(msgspec.Struct):
    """A JSON object, of which only "id" is kept (the last one, if the key repeats)."""

    id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_DECODER = msgspec.json.Decoder(_Top)
_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError)
_UINT = re.compile(rb"-?(?:0|[1-9][0-9]*)")  # an integer written without fraction or exponent
_ID_MEMBER = re.compile(
    # One top-level member keyed "id" in msgspec's indent=1 layout: its first line, then the lines
    # of its value (two-space indent, or the one-space line closing it), up to the next member.
    rb'\n "(?:i|\\u0069)(?:d|\\u0064)": [^\n]*(?:\n(?:  | [\]}])[^\n]*)*'
)
_ID_KEY = re.compile(rb'"(?:i|\\u0069)(?:d|\\u0064)":')
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _top(data: bytes) -> _Top | None:
    try:
        data.decode()  # msgspec does not check the UTF-8 of strings it skips
        return _DECODER.decode(data)
    except _ERRORS:
        return None


def stamp_top(data: bytes, client_id: int, *, utf8: bool = False) -> bytes | None:
    """`framing.stamp_id` for a big message: the object with "id" set, compact; None if not an object.

    `utf8`: the caller knows `data` is valid UTF-8 (it encoded a str), so it is not checked again.
    """
    try:
        if not utf8:
            data.decode()  # msgspec does not check the UTF-8 of strings
        compact = msgspec.json.format(data, indent=-1)  # as strict as decoding: NaN, trailing data, depth
        if not compact.startswith(b"{"):
            return None
        # Most messages carry no id key at all: then the compact form is all there is to do. In it a key
        # is always followed by ':' at once, and a quote inside a string is escaped, so this finds every
        # top-level "id" (and sometimes a nested one: that only costs the decode below).
        if _ID_KEY.search(compact) is not None and _DECODER.decode(compact).id is not msgspec.UNSET:
            # The client sent one (or several): remove them all first.
            pretty = _ID_MEMBER.sub(b"", msgspec.json.format(compact, indent=1))
            if pretty.endswith(b",\n}"):  # the removed member was the last one
                pretty = pretty[:-3] + b"\n}"
            compact = msgspec.json.format(pretty, indent=-1)
    except _ERRORS:
        return None
    stamp = b'"id":%d}' % client_id
    return compact[:-1] + (stamp if compact == b"{}" else b"," + stamp)


def route_top(line: bytes) -> int | None:
    """`framing.route` for a big line: the client id it is addressed to, or None to broadcast it."""
    if line.find(b"\\u") >= 0:  # for the decision only: lone surrogates would make msgspec refuse it
        line = _SURROGATE.sub(rb"\\ufffd", line)
    top = _top(line)
    if top is None or top.id is msgspec.UNSET:
        return None
    raw = bytes(top.id)
    if not _UINT.fullmatch(raw):
        return None
    try:
        target = int(raw)
    except ValueError:  # more digits than int() takes (4,300): as the full parse, broadcast
        return None
    return target if target >= 0 else None
