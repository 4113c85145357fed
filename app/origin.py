"""Origin: which browser pages may open a websocket here (SPEC §13) — pure functions, no I/O.

A browser sends `Origin` with every websocket handshake, and a page on any site can open a
websocket to any address; without this check `scalesocket bash` on localhost is a shell for every
site its user visits. A handshake without `Origin` cannot come from a page and is allowed.

- `--origin LIST`: the `Origin` must match an entry — `scheme://host[:port]` or `host[:port]`;
  scheme (where given) and host compared case-insensitively; a port where given, the Origin's own
  port defaulting from its scheme (80 for http/ws, 443 for https/wss); an entry without a port
  allows any port. `*` allows every origin, `null` the opaque origin `null` (sandboxed frames,
  `file:` pages), which nothing else matches.
- Same origin (the default): the Origin's host and port must be the request's `Host`, a port that
  is the default for the Origin's scheme counting as absent on either side, so
  `Origin: https://example.com` matches `Host: example.com` behind a TLS proxy. The scheme is not
  compared: behind a proxy the server cannot know it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"
# A registered name (letters, digits, `-`, `.`, `_`; IDNs arrive as punycode), an IPv4 address
# (matches the same pattern) or a bracketed IPv6 address.
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+"
_AUTHORITY = rf"(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?"
_ORIGIN = re.compile(rf"(?P<scheme>{_SCHEME})://{_AUTHORITY}")
_ENTRY = re.compile(rf"(?:(?P<scheme>{_SCHEME})://)?{_AUTHORITY}")
_HOST_HEADER = re.compile(_AUTHORITY)


@dataclass(frozen=True)
class Origin:
    """A parsed `scheme://host[:port]`: scheme and host lower-cased, port as written (None if absent)."""

    scheme: str
    host: str
    port: int | None

    @property
    def effective_port(self) -> int | None:
        """The port, or the scheme's default (None for a scheme without one)."""
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme)


@dataclass(frozen=True)
class Entry:
    """One `--origin` entry: `scheme` and `port` None where the entry leaves them open."""

    scheme: str | None
    host: str
    port: int | None

    def matches(self, origin: Origin) -> bool:
        if self.scheme is not None and self.scheme != origin.scheme:
            return False
        if self.host != origin.host:
            return False
        return self.port is None or self.port == origin.effective_port


@dataclass(frozen=True)
class Allowed:
    """The `--origin` list, parsed."""

    entries: tuple[Entry, ...] = ()
    anything: bool = False  # `*`
    null: bool = False  # `null` listed


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    port = int(text)
    if port > 65535:
        raise ValueError(f"port {port} out of range")
    return port


def parse_origin(value: str) -> Origin | None:
    """The `Origin` header's value parsed, or None if it is not `scheme://host[:port]` (`null` included)."""
    match = _ORIGIN.fullmatch(value)
    if match is None:
        return None
    try:
        port = _port(match["port"])
    except ValueError:
        return None
    return Origin(match["scheme"].lower(), match["host"].lower(), port)


def parse_entry(text: str) -> Entry:
    """One `--origin` entry (not `*` or `null`); ValueError naming it if it is malformed.

    A trailing `/` is forgiven (a URL copied from the address bar); any other path is an error."""
    match = _ENTRY.fullmatch(text.removesuffix("/") if "://" in text else text)
    if match is None:
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port] or host[:port])")
    try:
        port = _port(match["port"])
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    scheme = match["scheme"].lower() if match["scheme"] else None
    return Entry(scheme, match["host"].lower(), port)


def parse_allowed(items: Iterable[str]) -> Allowed:
    """The `--origin` list (already split on commas); ValueError on a malformed entry or an empty list."""
    entries: list[Entry] = []
    anything = null = False
    for raw in items:
        item = raw.strip()
        if item == "*":
            anything = True
        elif item.lower() == "null":
            null = True
        elif item:
            entries.append(parse_entry(item))
    if not (entries or anything or null):
        raise ValueError("expected a comma-separated list of origins, or *")
    return Allowed(tuple(entries), anything, null)


def split_host(host: str) -> tuple[str, int | None] | None:
    """A `Host` header's (host lower-cased, port or None), or None if it does not parse."""
    match = _HOST_HEADER.fullmatch(host)
    if match is None:
        return None
    try:
        return match["host"].lower(), _port(match["port"])
    except ValueError:
        return None


def same_origin(origin: Origin, host_header: str | None) -> bool:
    """Whether `origin` is the server's own origin as the request's `Host` names it."""
    if host_header is None or (host := split_host(host_header)) is None:
        return False
    name, port = host
    default = DEFAULT_PORTS.get(origin.scheme)
    origin_port = None if origin.port == default else origin.port
    host_port = None if port == default else port
    return origin.host == name and origin_port == host_port


def origin_allowed(origin_header: str | None, host_header: str | None, allowed: Allowed | None) -> bool:
    """Whether a handshake with these headers may proceed; `allowed` None means same origin (the default)."""
    if origin_header is None:
        return True  # not from a browser page
    if allowed is not None and allowed.anything:
        return True
    value = origin_header.strip()
    if value.lower() == "null":
        return allowed is not None and allowed.null
    origin = parse_origin(value)
    if origin is None:
        return False
    if allowed is None:
        return same_origin(origin, host_header)
    return any(entry.matches(origin) for entry in allowed.entries)


def allow_hint(origin_header: str) -> str:
    """The option that would let this origin in, for the refusal's log line."""
    origin = parse_origin(origin_header.strip())
    if origin is None:
        return "--origin '*'" if origin_header.strip().lower() != "null" else "--origin null"
    port = "" if origin.port is None else f":{origin.port}"
    return f"--origin {origin.scheme}://{origin.host}{port}"
