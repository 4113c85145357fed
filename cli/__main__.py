"""`scalesocket [OPTIONS] <CMD> [-- <ARGS>...]`: turn flags into `Settings` and run the server.

No behaviour lives here: parsing, one-line usage errors (exit 2, before anything is bound or
spawned), `--help` and `--version`. The grammar (`--frame[=MODE]`, `-vv`, options on either side of
CMD, ARGS only after `--`) is argparse's plus one rewrite: a bare `--frame` means `--frame=binary`,
so `--frame cat` frames with binary and wraps `cat`.
"""

from __future__ import annotations

import argparse
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
}


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
        metavar="<MODE>",
        choices=["binary", "json"],
        help="Enable framing and routing for client originated messages. See --frame for options.",
    )
    p.add_argument(
        "--cmd-attach-delay",
        metavar="<SECONDS>",
        type=float,
        help="Delay before attaching to child [default: 1 for --tcp]",
    )
    p.add_argument(
        "--frame",
        metavar="[=<MODE>]",
        choices=["binary", "json"],
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
        metavar="<MODE>",
        choices=["binary", "json"],
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
    p.add_argument("-v", dest="verbose", action="count", help="Increase level of verbosity")
    p.add_argument(
        "-V", "--version", action="version", version=f"scalesocket {__version__}", help="Print version information"
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
    values["args"] = args
    try:
        return Settings(**values)  # flags win; SCALESOCKET_* variables fill in what no flag gave
    except ValidationError as error:
        problem = error.errors()[0]
        where = FLAGS.get(str(problem["loc"][0]), str(problem["loc"][0])) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        p.error(f"{where}: {message}" if where else message)


def main(argv: Sequence[str] | None = None) -> int:
    settings = to_settings(sys.argv[1:] if argv is None else argv)
    from app import logs, server  # after parsing: `--help` stays fast

    logs.configure(settings.verbose, settings.json_logs)
    return server.run(settings)


if __name__ == "__main__":
    sys.exit(main())
