"""Join and leave message templates (SPEC §6): ``#ID``, ``#QUERY_STRING``, ``#REMOTE_ADDR``, ``#ROOM``, ``#QUERY_*``.

Pure: a template is tokenised once (one regex pass, so substituted text is never expanded again) and then
expanded per client. Values a client controls are percent-encoded, so no quote, ``#`` or newline can be
injected. Writing the result to the child (and adding ``\\n`` in text mode) is left to the room.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, quote

__all__ = ["ClientInfo", "Template", "expand"]

# Alternation order is the spec's precedence: #IDX is #ID then "X", and #QUERY_STRING wins over a parameter
# named "string", so a query parameter can never change another variable.
_VARIABLE = re.compile(r"#(?:(ID)|(QUERY_STRING)|(REMOTE_ADDR)|(ROOM)|QUERY_([A-Za-z0-9_]+))")

# SPEC §6: the characters of #QUERY_STRING kept as they are (quote() always keeps A-Z a-z 0-9 _ . - ~).
_QUERY_STRING_SAFE = "!$&'()*+,;=:@/?%"

_LITERAL, _ID, _QUERY_STRING, _REMOTE_ADDR, _ROOM, _QUERY = range(6)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a template may say about a client: its connection id and CGI values (SPEC §7)."""

    id: int
    query_string: str
    remote_addr: str
    room: str


class Template:
    """A join/leave message, tokenised once; ``expand`` is a plain join (and a no-op without variables)."""

    __slots__ = ("_parts", "_static", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        # (kind, text): the literal text, the parameter NAME for _QUERY, the variable as written otherwise.
        parts: list[tuple[int, str]] = []
        position = 0
        for match in _VARIABLE.finditer(text):
            if match.start() > position:
                parts.append((_LITERAL, text[position : match.start()]))
            kind = match.lastindex or 0  # group 1..5 is _ID.._QUERY
            parts.append((kind, match[5] if kind == _QUERY else match[0]))
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
            else:
                if params is None:
                    params = _query_params(client.query_string)
                found = params.get(value)
                out.append("#QUERY_" + value if found is None else found)
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
