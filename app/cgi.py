"""websocketd's CGI environment (SPEC §14): what a child learns of the request that started its room.

Pure: built from the ASGI scope of the starting connection. Header bytes reach the child exactly
(decoded with surrogateescape, which the spawn encodes back); `http_variables` is also what
`#HTTP_<NAME>` in join and leave messages reads (app/templates.py percent-encodes it there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.version import __version__

__all__ = ["cgi_environment", "http_variables", "variable_name"]


def variable_name(header: bytes | str) -> str:
    """`HTTP_<NAME>` for a request header: upper-cased, `-` becomes `_` (as websocketd does)."""
    name = header.decode("latin-1") if isinstance(header, bytes) else header
    return "HTTP_" + name.upper().replace("-", "_")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def http_variables(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Every request header as `HTTP_<NAME>`; a header sent more than once is joined with `, `."""
    variables: dict[str, str] = {}
    for name, value in headers:
        key = variable_name(name)
        text = _text(value)
        variables[key] = variables[key] + ", " + text if key in variables else text
    return variables


def _split_host(host: str) -> tuple[str, str]:
    """`name[:port]` or `[v6][:port]` of a Host header -> (name, port or "")."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, ""


def cgi_environment(scope: Mapping[str, Any], room: str) -> dict[str, str]:
    """The CGI/1.1 variables websocketd gives its child, for the websocket `scope`.

    `HTTPS=on` when the connection came over TLS (uvicorn's scheme `wss`, also from a trusted
    proxy's `X-Forwarded-Proto`). SERVER_NAME and SERVER_PORT come from the Host header, what it
    lacks from the address the server is bound to. Every header but `Proxy` is an `HTTP_<NAME>`.
    """
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    server = scope.get("server") or ("", None)
    client = scope.get("client") or ("", None)
    host = next((_text(value) for name, value in headers if name.lower() == b"host"), "")
    name, port = _split_host(host) if host else ("", "")
    raw_path: bytes = scope.get("raw_path") or scope.get("path", "/").encode()
    query: bytes = scope.get("query_string", b"")
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": f"scalesocket/{__version__}",
        "SERVER_PROTOCOL": "HTTP/" + str(scope.get("http_version", "1.1")),
        "SERVER_NAME": name or str(server[0]),
        "SERVER_PORT": port or ("" if server[1] is None else str(server[1])),
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": _text(raw_path) + ("?" + _text(query) if query else ""),
        "SCRIPT_NAME": "/" + room,
        "PATH_INFO": "",
        "REMOTE_HOST": str(client[0]),
        "REMOTE_PORT": "" if client[1] is None else str(client[1]),
    }
    if scope.get("scheme") in ("wss", "https"):
        env["HTTPS"] = "on"
    variables = http_variables(headers)
    # httpoxy (CVE-2016-5385 and kin): a client's `Proxy:` header would become HTTP_PROXY, which
    # many HTTP libraries take as their outgoing proxy. `#HTTP_PROXY` in a template still has it.
    variables.pop("HTTP_PROXY", None)
    env.update(variables)
    return env
