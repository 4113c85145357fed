"""`scalesocket [OPTIONS] <CMD> [-- <ARGS>...]`: turn flags into `Settings` and run the server.

No behaviour lives here: parsing, one-line usage errors (exit 2, before anything is bound or
spawned), `--help` and `--version`. The grammar (`--frame[=MODE]`, `-vv`, options on either side of
CMD, ARGS only after `--`) is argparse's plus one rewrite: a bare `--frame` means `--frame=binary`,
so `--frame cat` frames with binary and wraps `cat`.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from app import __version__
from app.settings import Settings

FLAGS = {  # Settings field -> the flag a user typed
    "cmd": "CMD",
    "args": "ARGS",
    "addr": "--addr",
    "binary": "--binary",
    "frame": "--frame",
    "client_frame": "--client-frame",
    "server_frame": "--server-frame",
    "cmd_attach_delay": "--cmd-attach-delay",
    "joinmsg": "--joinmsg",
    "leavemsg": "--leavemsg",
    "json_logs": "--json",
    "metrics": "--metrics",
    "oneshot": "--oneshot",
    "passenv": "--passenv",
    "staticdir": "--staticdir",
    "stats": "--stats",
    "tcp": "--tcp",
    "tcpports": "--tcpports",
    "verbose": "-v",
    "forwarded_allow_ips": "--forwarded-allow-ips",
    "ping_interval": "--ping-interval",
    "ping_timeout": "--ping-timeout",
    "loglevel": "--loglevel",
    "cgi": "--cgi",
    "pty": "--pty",
    "stop_grace": "--closems",
    "delimiters": "--delimiters",
    "null": "--null",
    "registry": "--registry",
    "advertise": "--advertise",
    "instance": "--instance",
    "drain_timeout": "--drain-timeout",
    "lease_ttl": "SCALESOCKET_LEASE_TTL",
    "cluster_secret": "SCALESOCKET_CLUSTER_SECRET",
}
MODES = ["binary", "json", "gwsocket"]  # gwsocket: scalesocket 0.2's name for binary


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"scalesocket: error: {message}\n")  # one line, no usage dump


def parser() -> Parser:
    p = Parser(
        prog="scalesocket",
        usage="scalesocket [OPTIONS] <CMD> [-- <ARGS>...]",
        description=f"scalesocket {__version__}\nA websocket server and autoscaler",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument("cmd", metavar="CMD", nargs="?", help="Command to wrap")
    p.add_argument("--addr", metavar="<ADDR>", help="Interface to bind to [default: 0.0.0.0:9000]")
    p.add_argument(
        "-b", "--binary", action="store_true", default=None, help="Set scalesocket to experimental binary mode"
    )
    p.add_argument(
        "--client-frame",
        "--clientframe",
        metavar="<MODE>",
        choices=MODES,
        help="Enable framing and routing for client originated messages. See --frame for options.",
    )
    p.add_argument(
        "--cmd-attach-delay",
        "--delay",
        metavar="<SECONDS>",
        type=float,
        help="Delay before attaching to child [default: 1 for --tcp]",
    )
    p.add_argument(
        "--frame",
        metavar="[=<MODE>]",
        choices=MODES,
        help="Enable framing and routing for all messages. Client messages are tagged with an ID header (u32). "
        "Server messages with optional client ID are routed to clients. When set to `json` messages are parsed "
        'as JSON: client messages are amended with an "id" field, server messages are routed to clients based on '
        'an optional "id" field. When set to `binary` messages are parsed according to gwsocket\'s strict mode. '
        "Unparseable messages may be dropped. See --server-frame and --client-frame for specifying framing "
        "independently. [default: binary when set, possible values: binary, json]",
    )
    p.add_argument("-h", "--help", action="help", help="Print help information")
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="<IPS>",
        help="Proxies trusted to set X-Forwarded-For (comma-separated, or *) [default: 127.0.0.1,::1]",
    )
    p.add_argument("--joinmsg", metavar="<MSG>", help="Emit message to child on client connect (use #ID for id)")
    p.add_argument("--json", dest="json_logs", action="store_true", default=None, help="Log JSON")
    p.add_argument("--leavemsg", metavar="<MSG>", help="Emit message to child on client disconnect (use #ID for id)")
    p.add_argument("--metrics", action="store_true", default=None, help="Expose OpenMetrics endpoint at /metrics")
    p.add_argument("--oneshot", action="store_true", default=None, help="Serve only once")
    p.add_argument(
        "--passenv", metavar="<LIST>", help="List of envvars to pass to child [default: PATH,DYLD_LIBRARY_PATH]"
    )
    p.add_argument(
        "--server-frame",
        "--serverframe",
        metavar="<MODE>",
        choices=MODES,
        help="Enable framing and routing for server originated messages. See --frame for options.",
    )
    p.add_argument("--staticdir", metavar="<DIR>", help="Serve static files from directory over HTTP")
    p.add_argument(
        "--stats",
        action="store_true",
        default=None,
        help="Expose stats endpoint at /<ROOM>/stats. "
        "Exposed statistics can be queried individually at /<ROOM>/stats/<STATISTIC>",
    )
    p.add_argument(
        "--tcp", action="store_true", default=None, help="Connect to child using TCP instead of stdio. Use PORT to bind"
    )
    p.add_argument("--tcpports", metavar="<START:END>", help="Port range for TCP [default: 9001:9999]")
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
    p.add_argument("-v", dest="verbose", action="count", help="Increase level of verbosity")
    p.add_argument(
        "-V", "--version", action="version", version=f"scalesocket {__version__}", help="Print version information"
    )
    # SPEC §15: for scalesocket 0.2 users.
    p.add_argument(
        "--delimiters",
        metavar="<CHARS>",
        help="Output items end at any of CHARS instead of \\n (escapes \\n \\t \\r \\0 \\\\ understood)",
    )
    p.add_argument("--null", action="store_true", default=None, help="Output items end at NUL")
    p.add_argument(
        "--log",
        metavar="<json|text>",
        choices=["json", "text"],
        help="Log format: --log=json is --json (scalesocket 0.2's spelling)",
    )
    cluster = p.add_argument_group("cluster (docs/cluster.md)")
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
    p.epilog = "ARGS after `--` are passed to CMD unchanged."
    return p


def to_settings(argv: Sequence[str]) -> Settings:
    """Parse `argv` (without the program name) into Settings, or exit 2 with a one-line error."""
    argv = list(argv)
    before, args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    before = ["--frame=binary" if token == "--frame" else token for token in before]
    p = parser()
    namespace = p.parse_args(before)
    if namespace.cmd is None:
        p.error("the following arguments are required: CMD")
    values: dict[str, Any] = {k: v for k, v in vars(namespace).items() if v is not None}
    if (log_format := values.pop("log", None)) is not None:
        if values.get("json_logs") and log_format == "text":
            p.error("--log=text contradicts --json")
        values["json_logs"] = log_format == "json"
    values["args"] = args
    _websocketd_spellings(p, values)
    try:
        return Settings(**values)  # flags win; SCALESOCKET_* variables fill in what no flag gave
    except ValidationError as error:
        problem = error.errors()[0]
        where = FLAGS.get(str(problem["loc"][0]), str(problem["loc"][0])) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        p.error(f"{where}: {message}" if where else message)


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
    settings = to_settings(sys.argv[1:] if argv is None else argv)
    from app import logs, server  # after parsing: `--help` stays fast

    logs.configure(settings.verbosity, settings.json_logs)
    if settings.quiet_below is not None:  # --loglevel error/fatal
        logs.quiet_below(settings.quiet_below)
    return server.run(settings)


if __name__ == "__main__":
    sys.exit(main())
