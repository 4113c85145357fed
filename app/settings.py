"""Settings: every option of the server, typed and validated — the single source of truth.

The CLI builds one from flags, `uvicorn app:asgi` from `SCALESOCKET_*` variables; nothing else
in the app reads the environment or argv.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app import command, tls
from app.names import name_problem
from app.origin import parse_allowed

MiB = 1024 * 1024
INSTANCE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class FrameMode(StrEnum):
    binary = "binary"
    json = "json"


class LogLevel(StrEnum):
    """websocketd's --loglevel names; `access` and `info` are both our default."""

    debug = "debug"
    trace = "trace"
    access = "access"
    info = "info"
    error = "error"
    fatal = "fatal"


_VERBOSITY = {LogLevel.debug: 1, LogLevel.trace: 2}
_QUIET = {LogLevel.error: logging.ERROR, LogLevel.fatal: logging.CRITICAL}


class Settings(BaseSettings):
    """Everything `create_app` needs; frozen once validated."""

    model_config = SettingsConfigDict(env_prefix="SCALESOCKET_", frozen=True, extra="forbid", validate_by_name=True)

    cmd: str = Field(description="Command to wrap (resolved to a full path at start-up)")
    args: list[str] = Field(default_factory=list, description="Arguments to command")
    addr: str = Field("0.0.0.0:9000", description="Interface to bind to")
    binary: bool = Field(False, description="Set scalesocket to experimental binary mode")
    frame: FrameMode | None = Field(None, description="Enable framing and routing for all messages")
    client_frame: FrameMode | None = Field(None, description="Framing for client originated messages")
    server_frame: FrameMode | None = Field(None, description="Framing for server originated messages")
    cmd_attach_delay: float | None = Field(None, ge=0, description="Delay before attaching to child [1 for --tcp]")
    joinmsg: str | None = Field(None, description="Emit message to child on client connect")
    leavemsg: str | None = Field(None, description="Emit message to child on client disconnect")
    json_logs: bool = Field(False, validation_alias="scalesocket_json", description="Log JSON")
    metrics: bool = Field(False, description="Expose OpenMetrics endpoint at /metrics")
    oneshot: bool = Field(False, description="Serve only once")
    passenv: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["PATH", "DYLD_LIBRARY_PATH"], description="List of envvars to pass to child"
    )
    staticdir: Path | None = Field(None, description="Serve static files from directory over HTTP")
    stats: bool = Field(False, description="Expose stats endpoint at /<ROOM>/stats")
    tcp: bool = Field(False, description="Connect to child using TCP instead of stdio")
    tcpports: Annotated[tuple[int, int], NoDecode] = Field((9001, 9999), description="Port range for TCP")
    verbose: int = Field(0, ge=0, description="Verbosity: 1 debug, 2 everything")
    forwarded_allow_ips: str = Field(
        "127.0.0.1,::1", description="Proxies trusted for X-Forwarded-For (comma-separated IPs or networks, or *)"
    )
    # SPEC §15, for scalesocket 0.2 users.
    api: bool = Field(False, description="Expose room list and room metadata at /api/rooms and /api/<ROOM>")
    cache: str | None = Field(None, description="Replay the last SIZE broadcast messages to joiners: [all|tagged:]SIZE")
    cachepersist: bool = Field(False, description="Keep a room's cache after its child ends, for its next child")
    delimiters: str | None = Field(None, description="Output items end at any of these characters instead of \\n")
    null: bool = Field(False, description="Output items end at NUL")
    # A cluster of instances sharing rooms through a registry (SPEC §16; docs/cluster.md).
    registry: str | None = Field(None, description="redis://HOST:PORT[/DB] holding which instance owns which room")
    advertise: str | None = Field(None, description="HOST:PORT other instances use to reach this one")
    instance: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="This instance's name"
    )
    drain_timeout: float = Field(0.0, ge=0, description="On SIGTERM, keep serving live rooms up to this long")
    lease_ttl: float = Field(15.0, gt=0, description="How long a room stays owned by an instance that stopped renewing")
    cluster_secret: str | None = Field(None, min_length=1, description="Authenticates instances to each other")
    # Admission (SPEC §13, app.admission): who may connect, and how much of the server they may take.
    origin: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Origins whose pages may connect: scheme://host[:port] or host[:port]; * for any"
    )
    sameorigin: bool = Field(False, description="Only pages of the server's own origin may connect (the default)")
    rooms: Annotated[list[str] | None, NoDecode] = Field(None, description="Only these rooms can be joined")
    maxrooms: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("maxrooms", "scalesocket_maxrooms", "scalesocket_maxforks"),
        description="At most this many rooms (children) at once",
    )
    maxclients: int | None = Field(None, ge=1, description="At most this many clients in one room")
    maxconnections: int | None = Field(None, ge=1, description="At most this many websocket connections in all")

    # Tunables without a flag of their own (settable through SCALESOCKET_<NAME>).
    max_message_size: int = Field(16 * MiB, ge=1024, description="Largest message in either direction, bytes")
    outbox_bytes: int = Field(1 * MiB, ge=1024, description="Bound of each client's outgoing queue, bytes")
    slow_client_timeout: float = Field(5.0, gt=0, description="Blame a full client may accrue before 1008")
    stop_grace: float = Field(5.0, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping a child")
    tcp_connect_timeout: float = Field(10.0, gt=0, description="How long to retry connecting to a --tcp child")
    ping_interval: float = Field(20.0, ge=0, description="Seconds between keepalive pings to each client (0: none)")
    cache_ttl: float = Field(3600.0, gt=0, description="--cachepersist: seconds a closed room's cache is kept")
    cache_rooms: int = Field(1000, ge=1, description="--cachepersist: closed rooms' caches kept at most")
    cache_bytes: int = Field(4 * MiB, ge=1, description="--cache: bytes one room's cache holds at most")
    ping_timeout: float = Field(20.0, ge=0, description="Seconds a client has to answer a ping (0: no limit)")
    cgi: bool = Field(False, description="Give the child websocketd's CGI environment, from the room's first request")
    pty: bool = Field(False, description="The child's stdout is a pseudo-terminal, so it writes each line at once")
    handshake_timeout: float = Field(10.0, gt=0, description="Seconds a client has to send its HTTP request")
    inbound_bytes: int = Field(
        64 * MiB, ge=1024, description="Bytes all clients together may have buffered on their way to children"
    )
    devconsole: bool = Field(False, description="Serve a developer console page at /")
    ssl: bool = Field(False, description="Serve https:// and wss:// (needs --sslcert and --sslkey)")
    sslcert: Path | None = Field(None, description="TLS certificate chain, PEM")
    sslkey: Path | None = Field(None, description="TLS private key, PEM, matching --sslcert")
    loglevel: LogLevel | None = Field(None, description="websocketd's log level; -v stands for debug, -vv for trace")

    @field_validator("cmd")
    @classmethod
    def _resolve_cmd(cls, cmd: str) -> str:
        return command.resolve(cmd)  # a full path, its #! interpreter checked

    @field_validator("addr")
    @classmethod
    def _check_addr(cls, addr: str) -> str:
        split_addr(addr)
        return addr

    @field_validator("passenv", mode="before")
    @classmethod
    def _split_passenv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name for name in (part.strip() for part in value.split(",")) if name]
        return value

    @field_validator("origin", "rooms", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",")]
        return value

    @field_validator("origin")
    @classmethod
    def _check_origin(cls, origin: list[str] | None) -> list[str] | None:
        if origin is not None:
            parse_allowed(origin)  # ValueError naming the entry that does not parse
        return origin

    @field_validator("rooms")
    @classmethod
    def _check_rooms(cls, rooms: list[str] | None) -> list[str] | None:
        if rooms is None:
            return None
        rooms = [room for room in rooms if room]
        if not rooms:
            raise ValueError("expected a comma-separated list of room names")
        for room in rooms:
            if (problem := name_problem(room)) is not None:
                raise ValueError(f"{room!r} is not a valid room name ({problem})")
        return rooms

    @field_validator("tcpports", mode="before")
    @classmethod
    def _parse_tcpports(cls, value: Any) -> Any:
        if isinstance(value, str):
            start, sep, end = value.partition(":")
            if not sep or not start.strip().isdigit() or not end.strip().isdigit():
                raise ValueError(f"expected START:END, got {value!r}")
            return (int(start), int(end))
        return value

    @field_validator("tcpports")
    @classmethod
    def _check_tcpports(cls, ports: tuple[int, int]) -> tuple[int, int]:
        start, end = ports
        if not (1 <= start < end <= 65536):
            raise ValueError(f"need 1 <= START < END <= 65536 (END exclusive), got {start}:{end}")
        return ports

    @field_validator("frame", "client_frame", "server_frame", mode="before")
    @classmethod
    def _gwsocket_is_binary(cls, value: Any) -> Any:
        return "binary" if value == "gwsocket" else value  # scalesocket 0.2's name for the same framing

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value: str | None) -> str | None:
        if value is None:
            return None
        kind, size = parse_cache(value)
        return f"{kind}:{size}"

    @field_validator("delimiters")
    @classmethod
    def _check_delimiters(cls, value: str | None) -> str | None:
        if value is not None:
            unescape_delimiters(value)
        return value

    @field_validator("staticdir")
    @classmethod
    def _check_staticdir(cls, staticdir: Path | None) -> Path | None:
        if staticdir is not None and not staticdir.is_dir():
            raise ValueError(f"{str(staticdir)!r} is not a directory")
        return staticdir.resolve() if staticdir is not None else None

    @field_validator("registry")
    @classmethod
    def _check_registry(cls, url: str | None) -> str | None:
        if url is not None:
            parse_registry_url(url)
        return url

    @field_validator("advertise")
    @classmethod
    def _check_advertise(cls, advertise: str | None) -> str | None:
        if advertise is not None:
            split_host_port(advertise)
        return advertise

    @field_validator("instance")
    @classmethod
    def _check_instance(cls, name: str) -> str:
        if not INSTANCE_NAME.fullmatch(name):
            raise ValueError(f"expected 1-64 letters, digits, '.', '_' or '-', got {name!r}")
        return name

    @model_validator(mode="after")
    def _check_frames(self) -> Self:
        if self.frame is not None and (self.client_frame is not None or self.server_frame is not None):
            raise ValueError("--frame cannot be combined with --client-frame or --server-frame")
        if (self.delimiters is not None or self.null) and (self.binary or self.server_framing is FrameMode.binary):
            raise ValueError("--delimiters and --null cannot be used with -b or binary server framing")
        if self.origin is not None and self.sameorigin:
            raise ValueError("--origin cannot be combined with --sameorigin (same origin is the default)")
        if self.cache_tagged and self.server_framing is not FrameMode.json:
            raise ValueError('--cache=tagged: needs json server framing (it keeps lines with "_cache": true)')
        if self.cachepersist and self.cache is None:
            raise ValueError("--cachepersist needs --cache")
        return self

    @model_validator(mode="after")
    def _check_pty(self) -> Self:
        if self.pty and self.tcp:
            raise ValueError("--pty cannot be combined with --tcp (the socket is the message path)")
        return self

    @model_validator(mode="after")
    def _check_devconsole(self) -> Self:
        if self.devconsole and self.staticdir is not None:
            raise ValueError("--devconsole cannot be combined with --staticdir (both serve /)")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        # Loaded once here, as uvicorn will load them: a bad file is a usage error before binding.
        if self.sslcert is None and self.sslkey is None:
            if self.ssl:
                raise ValueError("--ssl needs --sslcert and --sslkey")
            return self
        if self.sslcert is None or self.sslkey is None:
            given, missing = ("--sslcert", "--sslkey") if self.sslkey is None else ("--sslkey", "--sslcert")
            raise ValueError(f"{given} needs {missing} too")
        tls.check_pair(self.sslcert, self.sslkey)
        return self

    @property
    def tls(self) -> bool:
        return self.sslcert is not None

    @model_validator(mode="after")
    def _check_loglevel(self) -> Self:
        if self.loglevel is not None and self.verbose:
            raise ValueError("--loglevel cannot be combined with -v")
        return self

    @property
    def verbosity(self) -> int:
        """The -v count in effect: 1 debug, 2 trace (from -v, or websocketd's --loglevel)."""
        return _VERBOSITY.get(self.loglevel, self.verbose) if self.loglevel is not None else self.verbose

    @property
    def quiet_below(self) -> int | None:
        """--loglevel error or fatal: the least severe level still logged (None: verbosity decides)."""
        return _QUIET.get(self.loglevel) if self.loglevel is not None else None

    @property
    def host(self) -> str:
        return split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        return split_addr(self.addr)[1]

    @property
    def client_framing(self) -> FrameMode | None:
        return self.frame or self.client_frame

    @property
    def server_framing(self) -> FrameMode | None:
        return self.frame or self.server_frame

    @property
    def cache_size(self) -> int:
        """--cache: how many broadcast messages a room keeps for joiners (0: no cache)."""
        return parse_cache(self.cache)[1] if self.cache is not None else 0

    @property
    def cache_tagged(self) -> bool:
        return self.cache is not None and parse_cache(self.cache)[0] == "tagged"

    @property
    def item_delimiters(self) -> bytes | None:
        """--delimiters / --null as the bytes that end an output item; None: lines end at \\n."""
        if self.delimiters is None and not self.null:
            return None
        found = unescape_delimiters(self.delimiters) if self.delimiters is not None else b""
        if self.null and b"\0" not in found:
            found += b"\0"
        return found

    @property
    def advertised(self) -> str:
        """HOST:PORT peers reach this instance at: --advertise, else --addr unless it is a wildcard."""
        if self.advertise is not None:
            return self.advertise
        host, port = self.host, self.port
        if host in ("0.0.0.0", "::"):
            host = socket.gethostbyname(socket.gethostname())  # a pod's host name resolves to its IP
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def attach_delay(self) -> float:
        if self.cmd_attach_delay is not None:
            return self.cmd_attach_delay
        return 1.0 if self.tcp else 0.0


def split_addr(addr: str) -> tuple[str, int]:
    """`0.0.0.0:9000` or `[::1]:9000` -> (host, port); ValueError otherwise."""
    host, sep, port = addr.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if not sep or ip is None or not port.isdigit() or int(port) > 65535 or (ip.version == 6) != bracketed:
        raise ValueError(f"expected IP:PORT such as 0.0.0.0:9000 or [::1]:9000, got {addr!r}")
    return host, int(port)


CACHE_MAX = 1024


def parse_cache(value: str) -> tuple[str, int]:
    """`[all|tagged:]SIZE` -> (kind, size); a bare SIZE means `all`. ValueError otherwise."""
    kind, sep, size = value.strip().rpartition(":")
    kind = kind if sep else "all"
    if kind not in ("all", "tagged") or not size.isdigit() or not 1 <= int(size) <= CACHE_MAX:
        raise ValueError(f"expected [all|tagged:]SIZE with SIZE 1-{CACHE_MAX}, got {value!r}")
    return kind, int(size)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\"}


def unescape_delimiters(value: str) -> bytes:
    """`--delimiters` CHARS with `\\n \\t \\r \\0 \\\\` understood -> the distinct delimiter bytes, in order."""
    chars: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            escape = value[i + 1 : i + 2]
            if escape not in _ESCAPES:
                raise ValueError(f"unknown escape {value[i : i + 2]!r} (known: \\n \\t \\r \\0 \\\\)")
            char = _ESCAPES[escape]
            i += 1
        if not char.isascii():
            raise ValueError(f"delimiters must be ASCII characters, got {char!r}")
        if char not in chars:
            chars.append(char)
        i += 1
    if not chars:
        raise ValueError("expected at least one character")
    return "".join(chars).encode()


def split_host_port(addr: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (a name or an address) -> (host, port); ValueError otherwise."""
    host, sep, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535 or any(c in host for c in "/ @"):
        raise ValueError(f"expected HOST:PORT such as 10.0.0.7:9000, got {addr!r}")
    return host, int(port)


@dataclass(frozen=True)
class RegistryURL:
    host: str
    port: int
    db: int


def parse_registry_url(url: str) -> RegistryURL:
    """`redis://HOST[:PORT][/DB]` -> its parts; ValueError otherwise."""
    match = re.fullmatch(r"redis://(\[[^\]]+\]|[^/:@\[\]]+)(?::(\d{1,5}))?(?:/(\d{1,2})?)?", url)
    if match is None or (match[2] is not None and not 0 < int(match[2]) <= 65535):
        raise ValueError(f"expected redis://HOST:PORT[/DB], got {url!r}")
    host = match[1][1:-1] if match[1].startswith("[") else match[1]
    return RegistryURL(host, int(match[2] or 6379), int(match[3] or 0))
