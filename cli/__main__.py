"""`scalesocket [OPTIONS] <CMD> [-- <ARGS>...]`: turn flags into `Settings` and run the server.

No behaviour lives here: parsing, one-line usage errors (exit 2, before anything is bound or
spawned), `--help` and `--version`. The grammar (`--frame[=MODE]`, `-vv`, options on either side of
CMD, ARGS only after `--`) is argparse's plus one rewrite: a bare `--frame` means `--frame=binary`,
so `--frame cat` frames with binary and wraps `cat`.

`SCALESOCKET_<OPTION>` variables fill in whatever no flag gives (CMD and ARGS included), so one
environment configures both `scalesocket` and `uvicorn app:asgi`; an error in a value names the flag
and, when the value came from the environment, the variable.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from app import __version__
from app.settings import Settings
from cli.help import SeedHelpFormatter, format_help

USAGE = "scalesocket [OPTIONS] <CMD> [-- <ARGS>...]"
TEMPLATES = (
    "MSG is a template: #ID is the client's id, #ROOM the room, #REMOTE_ADDR the client's address, "
    "#QUERY_STRING the query string of its URL, #QUERY_<NAME> its query parameter NAME and #HTTP_<NAME> its "
    "request header NAME (both percent-encoded)."
)
MODES = ["binary", "json", "gwsocket"]  # gwsocket: scalesocket 0.2's name for binary


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"scalesocket: error: {message}\n")  # one line, no usage dump

    def format_help(self) -> str:
        args = argparse.Action([], dest="args", metavar="<ARGS>...", help="Arguments to command")  # after `--`
        return format_help(self, {"ARGS": [args]})


def parser() -> Parser:
    root = Parser(
        prog="scalesocket",
        usage=USAGE,
        description=f"scalesocket {__version__}\nA websocket server and autoscaler",
        formatter_class=SeedHelpFormatter,
        add_help=False,
    )
    root.add_argument_group("ARGS").add_argument("cmd", metavar="<CMD>", nargs="?", help="Command to wrap")
    p = root.add_argument_group("OPTIONS")  # every option below; --help sorts them by name
    p.add_argument("--addr", metavar="<ADDR>", help="Interface to bind to (IPv6 as [::1]:9000)")
    p.add_argument(
        "-b", "--binary", action="store_true", default=None, help="Set scalesocket to experimental binary mode"
    )
    p.add_argument(
        "--client-frame",
        "--clientframe",
        metavar="=<MODE>",
        choices=MODES,
        help="Enable framing and routing for client originated messages\n\nSee --frame for options.",
    )
    p.add_argument(
        "--cmd-attach-delay",
        "--delay",
        metavar="<SECONDS>",
        type=float,
        help="Delay before attaching to child [default: 1 for --tcp, else 0]",
    )
    p.add_argument(
        "--frame",
        metavar="[=<MODE>]",
        choices=MODES,
        help="Enable framing and routing for all messages\n\n"
        "Client messages are tagged with an ID header (u32). Server messages with optional client ID are "
        "routed to clients.\n\n"
        'When set to `json` messages are parsed as JSON. Client messages are amended with an "id" field. '
        'Server messages are routed to clients based an optional "id" field. When set to `binary` messages '
        "are parsed according to gwsocket's strict mode. Unparseable messages may be dropped.\n\n"
        "The mode needs `=`: --frame=json (a bare --frame is binary). "
        "`gwsocket` is scalesocket 0.2's name for `binary`.\n\n"
        "See --server-frame and --client-frame for specifying framing independently.\n\n"
        "[default: binary when set, possible values: binary, json]",
    )
    p.add_argument("-h", "--help", action="help", help="Print help information")
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="<IPS>",
        help="Proxies trusted to set X-Forwarded-For (comma-separated IPs or networks, or *)",
    )
    p.add_argument(
        "--joinmsg", metavar="<MSG>", help=f"Emit message to child on client connect (use #ID for id)\n\n{TEMPLATES}"
    )
    p.add_argument("--json", dest="json_logs", action="store_true", default=None, help="Log JSON")
    p.add_argument(
        "--leavemsg",
        metavar="<MSG>",
        help=f"Emit message to child on client disconnect (use #ID for id)\n\n{TEMPLATES}",
    )
    p.add_argument("--metrics", action="store_true", default=None, help="Expose OpenMetrics endpoint at /metrics")
    p.add_argument("--oneshot", action="store_true", default=None, help="Serve only once")
    p.add_argument(
        "--passenv",
        metavar="<LIST>",
        help="List of envvars to pass to child\n\n`--passenv=` passes none. "
        "Add PYTHONUNBUFFERED to the list for Python children that do not flush.",
    )
    p.add_argument(
        "--server-frame",
        "--serverframe",
        metavar="=<MODE>",
        choices=MODES,
        help="Enable framing and routing for server originated messages\n\nSee --frame for options.",
    )
    p.add_argument("--staticdir", metavar="<DIR>", help="Serve static files from directory over HTTP")
    p.add_argument(
        "--stats",
        action="store_true",
        default=None,
        help="Expose stats endpoint at /<ROOM>/stats\n\n"
        "Exposed statistics can be queried individually at /<ROOM>/stats/<STATISTIC>",
    )
    p.add_argument(
        "--tcp", action="store_true", default=None, help="Connect to child using TCP instead of stdio. Use PORT to bind"
    )
    p.add_argument("--tcpports", metavar="<START:END>", help="Port range for TCP (END exclusive)")
    p.add_argument(
        "--ping-interval",
        metavar="<SECONDS>",
        type=float,
        help="Ping each client every SECONDS to keep its connection alive; 0 turns pings off [default: 20]",
    )
    p.add_argument(
        "--ping-timeout",
        metavar="<SECONDS>",
        type=float,
        help="Close a client that has not answered a ping within SECONDS; 0 waits forever [default: 20]",
    )
    p.add_argument(
        "--cgi",
        action="store_true",
        default=None,
        help="Give the child websocketd's CGI environment from the request that started its room: "
        "SERVER_NAME, REQUEST_URI, REMOTE_HOST, every header as HTTP_<NAME>, ...",
    )
    p.add_argument(
        "--pty",
        action="store_true",
        default=None,
        help="Make the child's stdout a pseudo-terminal (raw: no \\r, no echo), so a program that buffers "
        "piped output (print() in Python, printf in C) writes each line at once. Not with --tcp",
    )
    p.add_argument(
        "--devconsole",
        action="store_true",
        default=None,
        help="Serve a developer console at / to connect to a room, send messages and watch every message "
        "in and out. Not with --staticdir",
    )
    p.add_argument(
        "--ssl",
        action="store_true",
        default=None,
        help="Serve https:// and wss:// directly (needs --sslcert and --sslkey, which alone turn it on too)",
    )
    p.add_argument("--sslcert", metavar="<FILE>", help="TLS certificate chain (PEM) for --ssl")
    p.add_argument("--sslkey", metavar="<FILE>", help="TLS private key (PEM, no passphrase) for --ssl")
    # websocketd's spellings, so its command lines carry over.
    p.add_argument(
        "--port", metavar="<PORT>", type=int, help="websocketd's spelling: the port of --addr [default: 9000]"
    )
    p.add_argument(
        "--address", metavar="<HOST>", help="websocketd's spelling: the IP address of --addr [default: 0.0.0.0]"
    )
    p.add_argument(
        "--loglevel",
        metavar="<LEVEL>",
        choices=["debug", "trace", "access", "info", "error", "fatal"],
        help="websocketd's spelling: debug is -v, trace is -vv, access and info the default, error and fatal "
        "log only those [possible values: debug, trace, access, info, error, fatal]",
    )
    p.add_argument(
        "--closems",
        metavar="<MS>",
        type=int,
        help="websocketd's spelling: milliseconds between SIGTERM and SIGKILL when stopping a child "
        "(SCALESOCKET_STOP_GRACE in seconds) [default: 5000]",
    )
    p.add_argument("-v", dest="verbose", action="count", help="Increase level of verbosity (-vv: more still)")
    p.add_argument(
        "-V", "--version", action="version", version=f"scalesocket {__version__}", help="Print version information"
    )
    # SPEC §15: for scalesocket 0.2 users.
    p.add_argument(
        "--api", action="store_true", default=None, help="Expose room list and metadata at /api/rooms and /api/<ROOM>"
    )
    p.add_argument(
        "--cache",
        metavar="=[all|tagged:]<SIZE>",
        help="Replay the room's last SIZE (1-1024) broadcast messages to each client that joins; "
        'tagged: keeps only json lines with "_cache": true',
    )
    p.add_argument(
        "--cachepersist",
        action="store_true",
        default=None,
        help="Keep a room's cache after its child ends, for the room's next child "
        "[SCALESOCKET_CACHE_TTL seconds, default 3600; SCALESOCKET_CACHE_ROOMS rooms, default 1000]",
    )
    p.add_argument(
        "--delimiters",
        metavar="=<CHARS>",
        help="Output items end at any of CHARS instead of \\n (escapes \\n \\t \\r \\0 \\\\ understood)",
    )
    p.add_argument("--null", action="store_true", default=None, help="Output items end at NUL")
    p.add_argument(
        "--log",
        metavar="<json|text>",
        choices=["json", "text"],
        help="Log format: --log=json is --json (scalesocket 0.2's spelling)",
    )
    cluster = root.add_argument_group("CLUSTER (docs/cluster.md)")
    cluster.add_argument(
        "--registry", metavar="<URL>", help="redis://HOST:PORT[/DB] holding which instance owns which room"
    )
    cluster.add_argument(
        "--advertise",
        metavar="<HOST:PORT>",
        help="Address other instances use to reach this one [default: --addr unless 0.0.0.0]",
    )
    cluster.add_argument(
        "--instance", metavar="<NAME>", help="This instance's name in logs and INSTANCE [default: host name-pid]"
    )
    cluster.add_argument(
        "--drain-timeout",
        metavar="<SECONDS>",
        type=float,
        help="On SIGTERM, keep serving live rooms up to this long [default: 0]",
    )
    access = root.add_argument_group("ACCESS AND LIMITS")
    access.add_argument(
        "--origin",
        metavar="<LIST>",
        help="Browser pages allowed to connect: comma-separated scheme://host[:port] or host[:port] "
        "(without a port: any port), null, or * for every origin\n\n"
        "Other pages get 403. Clients that send no Origin (not browsers) are always allowed. "
        "[default: same origin only, see --sameorigin]",
    )
    access.add_argument(
        "--sameorigin",
        action="store_true",
        default=None,
        help="Only pages of the server's own origin (its Host header) may connect: the default",
    )
    access.add_argument(
        "--rooms", metavar="<LIST>", help="Only these rooms (comma-separated) can be joined; others get 403"
    )
    access.add_argument(
        "--maxrooms",
        "--maxforks",
        metavar="<NUM>",
        help="At most NUM rooms (children) at once; a new room beyond gets 503 [default: what RLIMIT_NOFILE allows]",
    )
    access.add_argument("--maxclients", metavar="<NUM>", help="At most NUM clients in one room; more get 503")
    access.add_argument(
        "--maxconnections",
        metavar="<NUM>",
        help="At most NUM websocket connections in all; more get 503 [default: what RLIMIT_NOFILE allows]",
    )
    root.epilog = (
        "ENVIRONMENT:\n    Every option is also a variable SCALESOCKET_<OPTION>; flags win over variables.\n"
        '    SCALESOCKET_CMD=cat SCALESOCKET_FRAME=json SCALESOCKET_ARGS=\'["-n", "1"]\' scalesocket'
    )
    return root


def to_settings(argv: Sequence[str]) -> Settings:
    """Parse `argv` (without the program name) into Settings, or exit 2 with a one-line error."""
    return _parse(argv)[0]


def _parse(argv: Sequence[str]) -> tuple[Settings, dict[str, Any]]:
    """Settings, and the values the flags gave (what did not come from the environment)."""
    argv = list(argv)
    before, args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = parser()
    for flag, value in zip(before, before[1:], strict=False):
        if flag == "--frame" and value in MODES:
            p.error(f"--frame {value}: the mode needs `=`: write --frame={value} (a bare --frame is binary)")
    namespace, extras = p.parse_known_args(["--frame=binary" if token == "--frame" else token for token in before])
    if extras:
        p.error(_unrecognized(before, args, namespace.cmd, extras))
    values: dict[str, Any] = {k: v for k, v in vars(namespace).items() if v is not None}
    if (log_format := values.pop("log", None)) is not None:
        if values.get("json_logs") and log_format == "text":
            p.error("--log=text contradicts --json")
        values["json_logs"] = log_format == "json"
    if namespace.cmd is not None or "--" in argv:
        values["args"] = args  # CMD from the command line takes its ARGS from there, never the environment
    if namespace.cmd is None and not _env("cmd"):
        p.error(f"missing <CMD>, the command to wrap (or set SCALESOCKET_CMD): {USAGE}")
    _websocketd_spellings(p, values)
    try:
        return Settings(**values), values  # flags win; SCALESOCKET_* variables fill in what no flag gave
    except ValidationError as error:
        problem = error.errors()[0]
        field = _field(str(problem["loc"][0])) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        p.error(f"{name(field, values)}: {message}" if field else message)
    except SettingsError as error:  # a variable pydantic could not even decode, e.g. SCALESOCKET_ARGS=x
        field = next((f for f in Settings.model_fields if f'field "{f}"' in str(error)), "")
        p.error(f'{name(field, {})}: cannot decode the value (a list is JSON: \'["-n", "1"]\')')


def _field(loc: str) -> str:
    """The Settings field an error's location names (an alias such as `scalesocket_json` -> `json_logs`)."""
    return next((f for f, info in Settings.model_fields.items() if info.validation_alias == loc), loc)


def _env(field: str) -> str | None:
    return os.environ.get(env_name(field)) or os.environ.get(env_name(field).lower())


def env_name(field: str) -> str:
    """The variable that sets the Settings field: SCALESOCKET_ADDR, SCALESOCKET_JSON for json_logs."""
    alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
    return (alias if isinstance(alias, str) else f"SCALESOCKET_{field}").upper()


def flag_name(field: str) -> str:
    """The flag that sets the Settings field (`--addr`, `--json`, `<CMD>`), or the variable if no flag does."""
    if field == "args":
        return "<ARGS>"
    for action in parser()._actions:
        if action.dest == field:
            longs = [o for o in action.option_strings if o.startswith("--")]
            return (longs or action.option_strings or [str(action.metavar)])[0]
    return env_name(field)


def name(field: str, from_flags: dict[str, Any]) -> str:
    """How an error names a value: `--addr`, or `--addr (from SCALESOCKET_ADDR)` when a variable gave it."""
    flag = flag_name(field)
    if field in from_flags or flag == env_name(field) or _env(field) is None:
        return flag
    return f"{flag} (from {env_name(field)})"


def _unrecognized(before: list[str], args: list[str], cmd: str | None, extras: list[str]) -> str:
    """`unrecognized arguments`, with the command line rewritten when they were meant for CMD."""
    message = f"unrecognized arguments: {shlex.join(extras)}"
    if cmd is None or cmd not in before:
        return message
    at = before.index(cmd)
    rest, pending, meant = [], list(extras), []
    for token in before[at + 1 :]:  # what follows CMD: ours stays ours, the rest was meant for CMD
        if pending and token == pending[0]:
            meant.append(pending.pop(0))
        else:
            rest.append(token)
    if pending:  # some unknown option stands before CMD: a typo of ours, not arguments for CMD
        return message
    fixed = shlex.join(["scalesocket", *before[:at], *rest, cmd, "--", *meant, *args])
    return f"{message}: arguments for CMD go after `--`: {fixed}"


def _websocketd_spellings(p: Parser, values: dict[str, Any]) -> None:
    """Turn --port/--address into --addr, and --closems into the stop grace, in `values`."""
    port, address, closems = values.pop("port", None), values.pop("address", None), values.pop("closems", None)
    if port is not None or address is not None:
        if "addr" in values:
            p.error(f"{'--port' if port is not None else '--address'} cannot be combined with --addr")
        if port is not None and not 0 <= port <= 65535:
            p.error(f"--port: expected 0 to 65535, got {port}")
        if address is not None and not _is_ip(address):
            p.error(f"--address: expected an IP address such as 127.0.0.1 or ::1, got {address!r}")
        host, port = address if address is not None else "0.0.0.0", 9000 if port is None else port
        values["addr"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if closems is not None:
        if closems < 0:
            p.error(f"--closems: must be 0 or more, got {closems}")
        values["stop_grace"] = closems / 1000


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    settings, from_flags = _parse(sys.argv[1:] if argv is None else argv)
    from app import logs, server  # after parsing: `--help` stays fast

    logs.configure(settings.verbosity, settings.json_logs)
    if settings.quiet_below is not None:  # --loglevel error/fatal
        logs.quiet_below(settings.quiet_below)
    try:
        return server.run(settings)
    except server.BindError as error:
        parser().error(f"{name('addr', from_flags)}: {error}")


if __name__ == "__main__":
    sys.exit(main())
