"""The command line: ``twspy echo`` (a server) and ``twspy connect URL`` (an interactive client)."""

from __future__ import annotations

import argparse
import logging
import re
import ssl
import sys
import threading
from typing import List, Optional

from .client import connect
from .errors import ConnectionClosed, WebSocketError
from .extension import Extension
from .message import Message, TextMessage
from .server import Server, ServerConnection
from .websocket import DEFAULT_MAX_SIZE

__all__ = ["main", "EchoServer"]

logger = logging.getLogger("twspy.cli")


class EchoServer(Server):
    """Sends every message back as it came: text stays text, binary stays binary."""

    def onmessage(self, client: ServerConnection, message: Message) -> None:
        client.send(message)


def _size(text: str) -> int:
    """Parse a size such as ``16777216``, ``16M``, ``16MiB`` or ``512k``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError("not a size: %r" % text)
    return int(float(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twspy", description="WebSocket echo server and client.")
    sub = parser.add_subparsers(dest="command", required=True)

    echo = sub.add_parser("echo", help="run an echo server")
    echo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    echo.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks one)")
    echo.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE,
                      help="largest message in bytes, e.g. 16777216 or 16M (default 1M)")
    echo.add_argument("--certfile", help="TLS certificate (PEM) for wss://")
    echo.add_argument("--keyfile", help="TLS private key (PEM)")
    echo.add_argument("--subprotocol", action="append", default=[], help="subprotocol to accept (repeatable)")
    echo.add_argument("--no-compression", action="store_true", help="do not accept permessage-deflate")
    echo.add_argument("--quiet", "-q", action="store_true", help="log warnings only")

    client = sub.add_parser("connect", help="interactive client: stdin lines out, messages printed")
    client.add_argument("url", help="ws:// or wss:// URL")
    client.add_argument("--header", "-H", action="append", default=[], help='extra header "Name: value"')
    client.add_argument("--subprotocol", "-s", action="append", default=[], help="subprotocol to offer")
    client.add_argument("--origin", "-o", help="Origin header")
    client.add_argument("--insecure", "-k", action="store_true", help="do not verify the TLS certificate")
    client.add_argument("--no-compression", action="store_true", help="do not offer permessage-deflate")
    client.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE, help="largest message accepted")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "echo":
        return _echo(args)
    return _connect(args)


def _echo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    context = None
    if args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
    extensions: Optional[List[Extension]] = [] if args.no_compression else None  # None: permessage-deflate
    server = EchoServer((args.host, args.port), ssl=context, max_size=args.max_size, extensions=extensions,
                        protocols=args.subprotocol)
    scheme = "wss" if context else "ws"
    host = "[%s]" % server.address[0] if ":" in server.address[0] else server.address[0]
    print("twspy echo server on %s://%s:%d/ (Ctrl-C stops it)" % (scheme, host, server.address[1]),
          file=sys.stderr, flush=True)
    server.run()
    return 0


def _connect(args: argparse.Namespace) -> int:
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            print("twspy: bad --header %r (want 'Name: value')" % header, file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    context = None
    if args.url.lower().startswith("wss:"):
        context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        conn = connect(args.url, protocols=args.subprotocol or None, origin=args.origin, headers=headers,
                       ssl=context, extensions=[] if args.no_compression else None, max_size=args.max_size)
    except (WebSocketError, OSError) as exc:
        print("twspy: could not connect: %s" % exc, file=sys.stderr)
        return 1
    print("connected to %s%s (Ctrl-D or Ctrl-C closes)" % (
        args.url, " subprotocol %s" % conn.protocol if conn.protocol else ""), file=sys.stderr, flush=True)

    def reader() -> None:
        for message in conn:
            if isinstance(message, TextMessage):
                print("< %s" % message, flush=True)
            else:
                data = message.encode()
                print("< (binary, %d bytes) %s" % (len(data), data[:64].hex()), flush=True)
        print("disconnected: %s %s" % (conn.close_code, conn.close_reason), file=sys.stderr, flush=True)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for line in sys.stdin:
            try:
                conn.send(line.rstrip("\n"))
            except ConnectionClosed:
                break
    except KeyboardInterrupt:
        pass
    conn.close()
    thread.join(5)
    return 0
