"""The command line: servers (``echo``, ``serve``, ``proxy``) and an interactive client (``connect``).

::

    twspy echo    [--host H] [--port P] [--max-size N] [--certfile F --keyfile F] [--subprotocol P]
                  [--no-compression] [--max-connections N] [--asyncio] [--quiet]
    twspy serve   [-f SPEC]... [-c FILE] [--token T]... [--redis URL | --hub URL] + echo's options
    twspy proxy   --upstream URL [--insecure] [--host H] [--port P] [--max-size N] [--certfile F --keyfile F]
                  [--quiet]
    twspy connect URL [--header "K: V"] [--subprotocol P] [--origin O] [--insecure] [--no-compression]

``serve`` runs a :class:`~twspy.server.Server` composed from filters (:mod:`twspy.filters`): each
``-f SPEC`` is ``package.module:Class``, ``package.module.Class`` or a bundled alias (``echo``,
``broadcast``, ``log``, ``auth``, ``topics``); the class is built with ``Class.from_options(options)``
when it has that classmethod (``options``: every option's value by its long name, dashes turned into
underscores, plus the keys the filter lists in ``config_keys``), else ``Class()``. No filter at all
gives a chat (``broadcast``). ``--token`` puts a :class:`~twspy.filters.BearerAuth` first in the
chain. ``-c FILE`` reads a JSON object with the same long option names (``"max-size"`` or
``"max_size"``) plus ``"filters"``; the command line wins over the file. Usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import signal
import ssl
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .client import connect
from .errors import ConnectionClosed, WebSocketError
from .extension import Extension
from .filters import BearerAuth, Broadcast
from .message import Message, TextMessage
from .server import Server, ServerConnection
from .websocket import DEFAULT_MAX_SIZE

__all__ = ["main", "EchoServer", "FILTER_ALIASES", "load_filter_class"]

logger = logging.getLogger("twspy.cli")

FILTER_ALIASES = {
    "echo": "twspy.filters:Echo",
    "broadcast": "twspy.filters:Broadcast",
    "log": "twspy.filters:Log",
    "auth": "twspy.filters:BearerAuth",
    "topics": "twspy.hub:TopicBroadcast",  # imported only when asked for
}

# What ``serve`` runs with when neither the command line nor the config file sets an option.
_SERVE_DEFAULTS: Dict[str, Any] = {
    "host": "127.0.0.1", "port": 8000, "max_size": DEFAULT_MAX_SIZE, "certfile": None, "keyfile": None,
    "subprotocol": [], "no_compression": False, "quiet": False, "filter": [], "token": [], "redis": None,
    "hub": None, "max_connections": 1024, "asyncio": False,
}


class UsageError(Exception):
    """A bad option, config file or filter spec: reported on stderr, exit status 2."""


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


_SERVE_TYPES: Dict[str, Callable[[str], Any]] = {"port": int, "max_size": _size, "max_connections": int}  # the others are strings


def _listen_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options of every server command: where to listen, the message size, TLS."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--host", default=default("127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default(8000), help="port (default 8000; 0 picks one)")
    parser.add_argument("--max-size", type=_size, metavar="SIZE", default=default(DEFAULT_MAX_SIZE),
                        help="largest message in bytes, e.g. 16777216 or 16M (default 1M)")
    parser.add_argument("--certfile", metavar="PEM", default=default(None),
                        help="TLS certificate (PEM): clients connect with wss://")
    parser.add_argument("--keyfile", metavar="PEM", default=default(None), help="TLS private key (PEM)")


def _server_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """echo's and serve's: the connection limit and the asyncio layer."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--max-connections", type=int, metavar="N", default=default(1024),
                        help="clients served at once; more get HTTP 503 (default 1024)")
    parser.add_argument("--asyncio", action="store_true", default=default(False),
                        help="serve on one asyncio event loop (twspy.asyncio) instead of a thread per client")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twspy", description="WebSocket servers (echo, serve, proxy) and an "
                                     "interactive client (connect).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{echo,serve,proxy,connect}")

    echo = sub.add_parser("echo", help="run an echo server")
    _listen_options(echo, defaults=True)
    echo.add_argument("--subprotocol", action="append", default=[], help="subprotocol to accept (repeatable)")
    echo.add_argument("--no-compression", action="store_true", help="do not accept permessage-deflate")
    echo.add_argument("--quiet", "-q", action="store_true", help="log warnings only")
    _server_options(echo, defaults=True)

    # No defaults here (SUPPRESS): an option absent from the command line may come from --config.
    serve = sub.add_parser(
        "serve", argument_default=argparse.SUPPRESS, help="run a server composed from filters (default: a chat)",
        description="Run a server composed from filters, in order. With no filter: broadcast (a chat). "
                    "Aliases: %s." % ", ".join("%s (%s)" % item for item in FILTER_ALIASES.items()))
    serve.add_argument("-f", "--filter", action="append", metavar="SPEC",
                       help="filter class: package.module:Class, package.module.Class or an alias (repeatable; "
                            "in order)")
    serve.add_argument("-c", "--config", metavar="FILE",
                       help='JSON object of long option names, e.g. {"port": 0, "filters": ["log", "echo"], '
                            '"token": ["s3cret"]}; the command line wins')
    _listen_options(serve, defaults=False)  # absent ones may come from --config
    serve.add_argument("--subprotocol", action="append", metavar="NAME", help="subprotocol to accept (repeatable)")
    serve.add_argument("--no-compression", action="store_true", help="do not accept permessage-deflate")
    serve.add_argument("--quiet", "-q", action="store_true", help="log warnings only")
    serve.add_argument("--token", action="append", metavar="TOKEN",
                       help="accepted bearer token (repeatable): adds the auth filter first; clients send "
                            "'Authorization: Bearer TOKEN' or ?token=TOKEN, others get 401")
    serve.add_argument("--redis", metavar="URL", help="attach a twspy.hub.Hub on this Redis URL (a cluster)")
    serve.add_argument("--hub", metavar="URL", help="attach a twspy.hub.Hub on URL (redis://..., memory://...)")
    _server_options(serve, defaults=False)

    proxy = sub.add_parser("proxy", help="relay every client to an upstream WebSocket server",
                           description="Relay each client to UPSTREAM (path and query appended), message by "
                                       "message, close codes included.")
    proxy.add_argument("--upstream", required=True, metavar="URL", help="ws:// or wss:// URL of the server behind")
    _listen_options(proxy, defaults=True)
    proxy.add_argument("--insecure", "-k", action="store_true",
                       help="do not verify the upstream's TLS certificate")
    proxy.add_argument("--quiet", "-q", action="store_true", help="log warnings only")

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
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "echo":
            return _echo(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "proxy":
            return _proxy(args)
        return _connect(args)
    except UsageError as exc:
        print("twspy %s: %s" % (args.command, exc), file=sys.stderr)
        return 2


def _echo(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    context = _server_context(args.certfile, args.keyfile)
    extensions: Optional[List[Extension]] = [] if args.no_compression else None  # None: permessage-deflate
    if args.asyncio:
        from .asyncio.server import Server as AsyncServer  # imported only when asked for

        class AsyncEcho(AsyncServer):
            async def onmessage(self, client: Any, message: Message) -> None:
                await client.send(message)

        return _run_asyncio(lambda: AsyncEcho((args.host, args.port), ssl=context, max_size=args.max_size,
                                              extensions=extensions, protocols=args.subprotocol,
                                              max_connections=args.max_connections),
                            "twspy echo server on %s (asyncio; Ctrl-C stops it)", context)
    server = EchoServer((args.host, args.port), ssl=context, max_size=args.max_size, extensions=extensions,
                        protocols=args.subprotocol, max_connections=args.max_connections)
    print("twspy echo server on %s (Ctrl-C stops it)" % _url(server, context), file=sys.stderr, flush=True)
    server.run()
    return 0


# -- serve --------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    options = dict(_SERVE_DEFAULTS)
    extra: Dict[str, Any] = {}
    if "config" in args:
        known, extra = _read_config(args.config)
        options.update(known)
    options.update((k, v) for k, v in vars(args).items() if k not in ("command", "config"))  # the command line wins
    if options["redis"] and options["hub"] and options["redis"] != options["hub"]:
        raise UsageError("give --redis or --hub, not both")

    classes = [(spec, load_filter_class(spec)) for spec in options["filter"]]
    allowed: Set[str] = set()
    for _, cls in classes:
        allowed.update(key.replace("-", "_") for key in getattr(cls, "config_keys", ()))
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise UsageError("%s: unknown key %s (known: %s)" % (args.config, ", ".join(map(repr, unknown)),
                                                            ", ".join(_config_names())))
    options.update(extra)
    filters = [_build_filter(spec, cls, options) for spec, cls in classes]
    if not filters:
        filters = [Broadcast()]  # a chat
    if options["token"] and not any(isinstance(f, BearerAuth) for f in filters):
        filters.insert(0, _build_filter("auth", BearerAuth, options))

    _setup_logging(options["quiet"])
    context = _server_context(options["certfile"], options["keyfile"])
    extensions: Optional[List[Extension]] = [] if options["no_compression"] else None
    hub = None
    hub_url = options["hub"] or options["redis"]
    if not hub_url and any(cls.__module__ == "twspy.hub" for _, cls in classes):
        hub_url = "memory://"  # the hub's filters (topics) need one: this process's own
    if hub_url:
        try:
            from .hub import Hub  # imported only when asked for
        except ImportError as exc:
            raise UsageError("--hub needs twspy.hub: %s" % exc) from None
        try:
            hub = Hub(hub_url)
        except Exception as exc:  # a bad URL, redis not installed, ...: a message, not a traceback
            print("twspy serve: cannot attach the hub %s: %s" % (_redact_url(hub_url), exc), file=sys.stderr)
            return 1
    try:
        if options["asyncio"]:
            from .asyncio.server import Server as AsyncServer  # imported only when asked for
            banner = "twspy serve on %%s (asyncio; filters: %s%s; Ctrl-C stops it)" % (
                ", ".join(type(f).__name__ for f in filters), "; hub: %s" % _redact_url(hub_url) if hub_url else "")
            return _run_asyncio(lambda: AsyncServer(
                (options["host"], options["port"]), ssl=context, filters=filters, hub=hub,
                max_size=options["max_size"], extensions=extensions, protocols=options["subprotocol"],
                max_connections=options["max_connections"]), banner, context)
        try:
            server = Server((options["host"], options["port"]), ssl=context, filters=filters, hub=hub,
                            max_size=options["max_size"], extensions=extensions, protocols=options["subprotocol"],
                            max_connections=options["max_connections"])
        except OSError as exc:
            print("twspy serve: cannot listen on %s:%s: %s" % (options["host"], options["port"], exc),
                  file=sys.stderr)
            return 1
        print("twspy serve on %s (filters: %s%s; Ctrl-C stops it)" % (
            _url(server, context), ", ".join(type(f).__name__ for f in filters),
            "; hub: %s" % _redact_url(hub_url) if hub_url else ""), file=sys.stderr, flush=True)
        with _sigterm_stops():
            server.run()
    finally:
        if hub is not None:
            hub.close()
    return 0


def _config_names() -> List[str]:
    return sorted("filters" if dest == "filter" else dest.replace("_", "-") for dest in _SERVE_DEFAULTS)


def _read_config(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(serve's options, other keys)`` from a JSON config file; UsageError for a bad file or value."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as exc:
        raise UsageError("cannot read the config file: %s" % exc) from None
    except ValueError as exc:
        raise UsageError("%s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(data, dict):
        raise UsageError("%s: expected a JSON object of options, got %s" % (path, type(data).__name__))
    known: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        dest = "filter" if dest == "filters" else dest
        if dest not in _SERVE_DEFAULTS:
            extra[dest] = value
            continue
        try:
            known[dest] = _config_value(dest, value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise UsageError("%s: bad value for %r: %s" % (path, key, exc)) from None
    return known, extra


def _config_value(dest: str, value: Any) -> Any:
    """A JSON value checked (and converted) as the command line would."""
    default = _SERVE_DEFAULTS[dest]
    convert = _SERVE_TYPES.get(dest, str)
    if isinstance(default, bool):  # a flag
        if not isinstance(value, bool):
            raise TypeError("expected true or false, got %r" % (value,))
        return value
    if isinstance(default, list):  # a repeatable option
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise TypeError("expected a string or a list of strings, got %r" % (value,))
        return [convert(v) for v in values]
    if value is None and default is None:
        return None
    if isinstance(value, str):
        return convert(value)
    if isinstance(value, int) and not isinstance(value, bool) and dest in _SERVE_TYPES:
        return value  # a number for --port or --max-size
    raise TypeError("expected %s, got %r" % ("a number" if dest in _SERVE_TYPES else "a string", value))


def load_filter_class(spec: str) -> type:
    """The class named by ``spec``: ``package.module:Class``, ``package.module.Class`` or an alias.

    Raises UsageError (with the reason) when it cannot be imported.
    """
    target = FILTER_ALIASES.get(spec, spec)
    module_name, sep, name = target.partition(":")
    if not sep:
        module_name, _, name = target.rpartition(".")
    if not module_name or not name:
        raise UsageError("filter %r: expected package.module:Class, package.module.Class or one of %s"
                         % (spec, ", ".join(FILTER_ALIASES)))
    try:
        obj: Any = importlib.import_module(module_name)
        for part in name.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise UsageError("filter %r: cannot import %s: %s" % (spec, module_name, exc)) from None
    except AttributeError:
        raise UsageError("filter %r: module %s has no %s" % (spec, module_name, name)) from None
    except Exception as exc:  # the module itself failed while importing
        raise UsageError("filter %r: importing %s failed: %s: %s" % (spec, module_name, type(exc).__name__,
                                                                    exc)) from None
    if not isinstance(obj, type):
        raise UsageError("filter %r: %s is not a class" % (spec, target))
    return obj


def _build_filter(spec: str, cls: type, options: Dict[str, Any]) -> Any:
    factory = getattr(cls, "from_options", None)
    try:
        return factory(options) if callable(factory) else cls()
    except Exception as exc:
        raise UsageError("filter %r: %s" % (spec, exc)) from None


# -- proxy --------------------------------------------------------------------------------------
def _proxy(args: argparse.Namespace) -> int:
    try:
        from .proxy import ProxyServer  # imported only when asked for
    except ImportError as exc:
        print("twspy proxy: unavailable: %s" % exc, file=sys.stderr)
        return 1
    _setup_logging(args.quiet)
    context = _server_context(args.certfile, args.keyfile)
    upstream_ssl = _client_context(args.upstream, args.insecure)
    try:
        server = ProxyServer(args.upstream, (args.host, args.port), ssl=context, upstream_ssl=upstream_ssl,
                             max_size=args.max_size)
    except ValueError as exc:  # InvalidURI among others
        raise UsageError(str(exc)) from None
    except OSError as exc:
        print("twspy proxy: cannot listen on %s:%s: %s" % (args.host, args.port, exc), file=sys.stderr)
        return 1
    print("twspy proxy on %s -> %s (Ctrl-C stops it)" % (_url(server, context), _redact_url(args.upstream)),
          file=sys.stderr, flush=True)
    with _sigterm_stops():
        server.run()
    return 0


# -- shared by the servers ----------------------------------------------------------------------
def _run_asyncio(make_server: Callable[[], Any], banner: str, context: Optional[ssl.SSLContext]) -> int:
    """Run a twspy.asyncio server until Ctrl-C or SIGTERM, which close it (1001 to every client)."""
    import asyncio

    async def main() -> int:
        server = make_server()
        try:
            await server.start()
        except OSError as exc:
            print("twspy: cannot listen on %s:%s: %s" % (server.address[0], server.address[1], exc),
                  file=sys.stderr)
            return 1
        print(banner % _url(server, context), file=sys.stderr, flush=True)
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, lambda: asyncio.ensure_future(server.close()))
        await server.serve_forever()
        return 0

    return asyncio.run(main())


class _RedactingFormatter(logging.Formatter):
    """Hides ``token=...`` query values: request paths are logged, and a token in one is a secret."""

    _TOKEN = re.compile(r"([?&]token=)[^&\s>]+")

    def format(self, record: logging.LogRecord) -> str:
        return self._TOKEN.sub(r"\1***", super().format(record))


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler])


def _redact_url(url: str) -> str:
    """``url`` without a password or token to print."""
    url = re.sub(r"//[^/@]*@", "//***@", url)
    return _RedactingFormatter._TOKEN.sub(r"\1***", url)


def _server_context(certfile: Optional[str], keyfile: Optional[str]) -> Optional[ssl.SSLContext]:
    if not certfile:
        if keyfile:
            raise UsageError("--keyfile needs --certfile")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError("cannot load the certificate %s: %s" % (certfile, exc)) from None
    return context


def _url(server: Any, context: Optional[ssl.SSLContext]) -> str:
    host = "[%s]" % server.address[0] if ":" in server.address[0] else server.address[0]
    return "%s://%s:%d/" % ("wss" if context else "ws", host, server.address[1])


class _sigterm_stops:
    """While inside, SIGTERM stops ``run()`` as Ctrl-C does (a clean shutdown, exit status 0)."""

    def __enter__(self) -> None:
        self.previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _interrupt)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _client_context(url: str, insecure: bool) -> Optional[ssl.SSLContext]:
    """The TLS context for a wss:// URL (None for ws://); ``insecure`` skips verification."""
    if not url.lower().startswith("wss:"):
        return None
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _connect(args: argparse.Namespace) -> int:
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            print("twspy: bad --header %r (want 'Name: value')" % header, file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    context = _client_context(args.url, args.insecure)
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
