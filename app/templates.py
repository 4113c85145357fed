"""Join and leave message templates (SPEC §6, §14): ``#ID``, ``#QUERY_STRING``, ``#REMOTE_ADDR``, ``#ROOM``,
``#QUERY_*`` and ``#HTTP_*`` (the joining client's own request headers).

Pure: a template is tokenised once (one regex pass, so substituted text is never expanded again) and then
expanded per client. Values a client controls are percent-encoded, so no quote, ``#`` or newline can be
injected. Writing the result to the child (and adding ``\\n`` in text mode) is left to the room.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote

from app.cgi import http_variables

__all__ = ["ClientInfo", "Template", "expand"]

# Alternation order is the spec's precedence: #IDX is #ID then "X", and #QUERY_STRING wins over a parameter
# named "string", so a query parameter can never change another variable.
_VARIABLE = re.compile(r"#(?:(ID)|(QUERY_STRING)|(REMOTE_ADDR)|(ROOM)|QUERY_([A-Za-z0-9_]+)|HTTP_([A-Za-z0-9_]+))")

# SPEC §6: the characters of #QUERY_STRING kept as they are (quote() always keeps A-Z a-z 0-9 _ . - ~).
_QUERY_STRING_SAFE = "!$&'()*+,;=:@/?%"

_NO_REQUEST: Mapping[str, Any] = MappingProxyType({})

_LITERAL, _ID, _QUERY_STRING, _REMOTE_ADDR, _ROOM, _QUERY, _HTTP = range(7)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a template may say about a client: its connection id and CGI values (SPEC §7), and
    the ASGI scope of its request (its headers for ``#HTTP_*``; websocketd's CGI set under --cgi)."""

    id: int
    query_string: str
    remote_addr: str
    room: str
    request: Mapping[str, Any] = field(default_factory=lambda: _NO_REQUEST, compare=False, repr=False)


class Template:
    """A join/leave message, tokenised once; ``expand`` is a plain join (and a no-op without variables)."""

    __slots__ = ("_parts", "_static", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        # (kind, text): the literal text, the parameter NAME for _QUERY, HTTP_<NAME> for _HTTP, the
        # variable as written otherwise.
        parts: list[tuple[int, str]] = []
        position = 0
        for match in _VARIABLE.finditer(text):
            if match.start() > position:
                parts.append((_LITERAL, text[position : match.start()]))
            kind = match.lastindex or 0  # group 1..6 is _ID.._HTTP
            if kind == _QUERY:
                parts.append((kind, match[5]))
            elif kind == _HTTP:
                parts.append((kind, "HTTP_" + match[6]))
            else:
                parts.append((kind, match[0]))
            position = match.end()
        if position < len(text):
            parts.append((_LITERAL, text[position:]))
        self._parts = parts
        self._static = all(kind == _LITERAL for kind, _ in parts)

    def expand(self, client: ClientInfo) -> str:
        """Return the template with every variable replaced by the client's value."""
        if self._static:
            return self.text
        params: dict[str, str] | None = None
        headers: dict[str, str] | None = None
        out: list[str] = []
        for kind, value in self._parts:
            if kind == _LITERAL:
                out.append(value)
            elif kind == _ID:
                out.append(str(client.id))
            elif kind == _QUERY_STRING:
                out.append(_quote(client.query_string, _QUERY_STRING_SAFE))
            elif kind == _REMOTE_ADDR:
                out.append(client.remote_addr)
            elif kind == _ROOM:
                out.append(client.room)
            elif kind == _QUERY:
                if params is None:
                    params = _query_params(client.query_string)
                found = params.get(value)
                out.append("#QUERY_" + value if found is None else found)
            else:
                if headers is None:
                    headers = http_variables(client.request.get("headers", ()))
                found = headers.get(value)  # `value` is HTTP_<NAME>, as the variable was written
                out.append("#" + value if found is None else _quote(found, ""))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _query_params(query_string: str) -> dict[str, str]:
    """Map upper-cased parameter names to their last value, percent-encoded (spaces as %20)."""
    return {name.upper(): _quote(value, "") for name, value in parse_qsl(query_string, keep_blank_values=True)}


def _quote(text: str, safe: str) -> str:
    """Percent-encode ``text`` as UTF-8, never failing on a lone surrogate."""
    try:
        # A query decoded with surrogateescape (as os.environ does) gets its raw bytes back exactly.
        return quote(text, safe=safe, errors="surrogateescape")
    except UnicodeEncodeError:
        return quote(text, safe=safe, errors="surrogatepass")


@lru_cache(maxsize=64)
def _compile(text: str) -> Template:
    return Template(text)


def expand(template: str, client: ClientInfo) -> str:
    """Return ``template`` with every variable replaced by the client's value."""
    return _compile(template).expand(client)
