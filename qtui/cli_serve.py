"""``qtui serve``: the app in a browser through textual-serve.

Binds 127.0.0.1 by default: the app loads models and writes files as the user who runs it, and
textual-serve has no authentication, so anything else is a flag with a warning. A port already in
use is a one-line error before anything starts. Each browser tab runs its own app process.
"""

from __future__ import annotations

import argparse
import errno
import shlex
import socket
import sys

from qtui.cli_common import EXIT_OK

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve the app to a web browser (textual-serve) on 127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; anything else is reachable by others, with no login)",
    )
    s.add_argument("--public-url", default=None, help="the URL browsers use, when behind a proxy")
    s.add_argument("--no-autoload", action="store_true", help="start on the Models screen")
    s.add_argument("--app-command", default=None, help=argparse.SUPPRESS)  # tests: the app command to serve
    s.set_defaults(func=cmd_serve)


def check_port(host: str, port: int) -> None:
    """A one-line QtuiError when ``host:port`` cannot be bound (in use, no such address)."""
    from engine.errors import QtuiError

    if not 0 < port < 65536:
        raise QtuiError(f"port {port} is not a TCP port (1-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise QtuiError(f"port {port} on {host} is already in use; pick another with --port") from exc
            raise QtuiError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def app_command(no_autoload: bool) -> str:
    return " ".join(shlex.quote(p) for p in [sys.executable, "-m", "qtui", "app"]) + (
        " --no-autoload" if no_autoload else ""
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from textual_serve.server import Server

    check_port(args.host, args.port)
    if args.host not in LOOPBACK:
        print(
            f"qtui: warning: serving on {args.host}: anyone who can reach this address can use the app "
            "(load models, write files) with no login",
            file=sys.stderr,
        )
    url = args.public_url or f"http://{'localhost' if args.host in LOOPBACK else args.host}:{args.port}"
    print(f"qtui: serving the app at {url} (Ctrl+C stops)", file=sys.stderr, flush=True)
    server = Server(args.app_command or app_command(args.no_autoload), host=args.host, port=args.port,
                    title="qtui", public_url=args.public_url)  # fmt: skip
    server.serve()
    return EXIT_OK
