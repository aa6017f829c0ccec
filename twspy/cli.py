"""The command line: servers (``echo``, ``serve``, ``proxy``) and a client (``connect``).

::

    twspy echo    [--host H] [--port P] [--max-size N] [--certfile F --keyfile F] [--subprotocol P]
                  [--no-compression] [--max-connections N] [--asyncio] [--quiet]
    twspy serve   [-f SPEC]... [-c FILE] [--token T]... [--redis URL | --hub URL] + echo's options
    twspy proxy   --upstream URL [--upstream-proxy URL | --no-upstream-proxy] [--insecure] [--host H] [--port P]
                  [--max-size N] [--certfile F --keyfile F] [--quiet]
    twspy connect URL [-x MSG]... [-w SECS] [-b] [-P] [--slash] [--ping-interval SECS] [-H "K: V"]
                  [-s P] [-o O] [-k] [--no-compression] [--max-size N] [--handshake-timeout SECS]
                  [--proxy URL | --no-proxy | --unix PATH] [-q]
    twspy --version

``connect`` sends each stdin line (or ``-x`` message) and prints each message received; it exits
when the connection ends: 0 after a normal close (1000, 1001, or one it asked for), 1 with one
line on stderr otherwise (or when it cannot connect). Servers that cannot listen exit 1 with one
line. :func:`main` returns the exit status instead of exiting, so it can be called in process.

``serve`` runs a :class:`~twspy.server.Server` composed from filters (:mod:`twspy.filters`): each
``-f SPEC`` is ``package.module:Class``, ``package.module.Class`` or a bundled alias (``echo``,
``broadcast``, ``log``, ``auth``, ``topics``); the class is built with ``Class.from_options(options)``
when it has that classmethod (``options``: every option's value by its long name, dashes turned into
underscores, plus the keys the filter lists in ``config_keys``), else ``Class()``. No filter at all
gives a chat (``broadcast``). ``--token`` puts a :class:`~twspy.filters.BearerAuth` first in the
chain. ``-c FILE`` reads a JSON object with the same long option names (``"max-size"`` or
``"max_size"``) plus ``"filters"``; the command line wins over the file. Usage errors exit with 2.
A config file is trusted input, as the command line is: its filters name code to import and run.
Filter modules are imported from ``sys.path`` as installed (and PYTHONPATH), never from the
working directory.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import importlib
import json
import logging
import os
import queue
import re
import signal
import ssl
import sys
import threading
import time
from typing import Any, Callable

from . import __version__
from .client import connect
from .connection import Connection
from .errors import ConnectionClosed, InvalidURI, WebSocketError
from .extension import Extension
from .filters import BearerAuth, Broadcast
from .frame import CloseCode, speedups_enabled
from .message import Message, TextMessage
from .server import Server, ServerConnection
from .uri import parse_uri
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
_SERVE_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1", "port": 8000, "max_size": DEFAULT_MAX_SIZE, "certfile": None, "keyfile": None,
    "subprotocol": [], "no_compression": False, "quiet": False, "filter": [], "token": [], "redis": None,
    "hub": None, "unix": None, "max_connections": 1024, "asyncio": False,
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


# the others are strings
_SERVE_TYPES: dict[str, Callable[[str], Any]] = {"port": int, "max_size": _size, "max_connections": int}


class _Renamed(argparse.Action):
    """A flag's former spelling: still accepted, with a note on stderr (issue 11, one option vocabulary)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string in ("--open-timeout",):
            print("twspy: %s is deprecated; use --%s" % (option_string, self.dest.replace("_", "-")),
                  file=sys.stderr)
        setattr(namespace, self.dest, values)


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
    parser.add_argument("--unix", metavar="PATH", default=default(None),
                        help="listen on this Unix domain socket instead of host and port")


def _server_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """echo's and serve's: the connection limit and the asyncio layer."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--max-connections", type=int, metavar="N", default=default(1024),
                        help="clients served at once; more get HTTP 503 (default 1024)")
    parser.add_argument("--asyncio", action="store_true", default=default(False),
                        help="serve on one asyncio event loop (twspy.asyncio) instead of a thread per client")


class _Version(argparse.Action):
    """``--version``: the version, then ``speedups: on`` or ``off`` (the optional C accelerator,
    twspy/_speedups.c: off when it was not built or TWSPY_NO_SPEEDUPS is set)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stdout.write("twspy %s\nspeedups: %s\n" % (__version__, "on" if speedups_enabled() else "off"))
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twspy", description="WebSocket servers (echo, serve, proxy) and a "
                                     "client (connect).")
    parser.add_argument("--version", action=_Version, nargs=0, default=argparse.SUPPRESS,
                        help="print the version and whether the C accelerator is used, then exit")
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
    proxy.add_argument("--upstream-proxy", metavar="URL",
                       help="reach the upstream through this http://, https://, socks5://, socks5h:// or socks4:// "
                            "proxy (default: http_proxy / https_proxy / all_proxy, no_proxy)")
    proxy.add_argument("--no-upstream-proxy", action="store_true", help="ignore the proxy environment variables")
    proxy.add_argument("--quiet", "-q", action="store_true", help="log warnings only")

    client = sub.add_parser(
        "connect", help="a client (like wscat): stdin lines out, messages printed",
        description="Connect to URL; each stdin line (or -x MSG) is sent as a message, each message received is "
                    "printed on a line (on a terminal with '< ' before it; binary as hex). When stdin ends it waits "
                    "--wait seconds for replies, then closes. Exit status: 0 after a normal close (1000, 1001, or "
                    "a close you asked for), 1 when the connection fails or the server closes with another code "
                    "(one line on stderr), 2 for a usage error.")
    client.add_argument("url", help="ws:// or wss:// URL")
    client.add_argument("-x", "--execute", action="append", metavar="MSG",
                        help="send MSG (repeatable; stdin is not read), print the replies, close after --wait")
    client.add_argument("-w", "--wait", type=_wait_seconds, default=DEFAULT_WAIT, metavar="SECS",
                        help="after the last message, wait this long for replies before closing; 'inf' waits "
                             "for the server to close (default %s)" % DEFAULT_WAIT)
    client.add_argument("-b", "--binary", action="store_true",
                        help="send binary messages: each line is hex (spaces allowed) or @FILE for a file's bytes")
    client.add_argument("-P", "--show-ping-pong", action="store_true", help="print pings and pongs received")
    client.add_argument("--slash", action="store_true",
                        help="slash commands (/ping [data], /close [code [reason]]; // sends a leading /) even "
                             "when stdin is not a terminal (on a terminal they are on)")
    client.add_argument("--ping-interval", type=float, default=20.0, metavar="SECS",
                        help="send a keepalive ping this often, 0 for never (default 20)")
    client.add_argument("-H", "--header", action="append", default=[], metavar='"NAME: VALUE"',
                        help="extra request header (repeatable)")
    client.add_argument("-s", "--subprotocol", action="append", default=[], help="subprotocol to offer (repeatable)")
    client.add_argument("-o", "--origin", help="Origin header")
    client.add_argument("-k", "--insecure", action="store_true", help="do not verify the TLS certificate")
    client.add_argument("--no-compression", action="store_true", help="do not offer permessage-deflate")
    client.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE, metavar="SIZE",
                        help="largest message accepted (default 1M)")
    client.add_argument("--handshake-timeout", "--open-timeout", dest="handshake_timeout", type=float, default=10.0,
                        action=_Renamed, metavar="SECS",
                        help="seconds for TCP, proxy, TLS and the upgrade (default 10; "
                             "--open-timeout is the former spelling)")
    client.add_argument("--proxy", metavar="URL",
                        help="http://, https://, socks5://, socks5h://, socks4:// or socks4a:// proxy, with "
                             "optional user:password@ (default: http_proxy / https_proxy / all_proxy, no_proxy)")
    client.add_argument("--no-proxy", action="store_true", help="ignore the proxy environment variables")
    client.add_argument("--unix", metavar="PATH", help="connect to this Unix socket (the URL gives Host and path)")
    client.add_argument("-q", "--quiet", action="store_true", help="no 'connected' / 'closed' lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    0 on success (a server stopped with Ctrl-C or SIGTERM, a normal close), 1 when a server
    cannot listen or a connection fails, 2 for a usage error (argparse's own included).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error: argparse printed it
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "echo":
            return _echo(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "proxy":
            return _proxy(args)
        return _connect(args)
    except KeyboardInterrupt:  # Ctrl-C while connecting (once connected, it closes with 1000)
        return 130
    except UsageError as exc:
        print("twspy %s: %s" % (args.command, exc), file=sys.stderr)
        return 2


def _echo(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    context = _server_context(args.certfile, args.keyfile)
    extensions: list[Extension] | None = [] if args.no_compression else None  # None: permessage-deflate
    if args.asyncio:
        if args.unix:
            raise UsageError("--unix is not available with --asyncio yet")
        from .asyncio.server import Server as AsyncServer  # imported only when asked for

        class AsyncEcho(AsyncServer):
            async def onmessage(self, client: Any, message: Message) -> None:
                await client.send(message)

        return _run_asyncio(lambda: AsyncEcho((args.host, args.port), ssl=context, max_size=args.max_size,
                                              extensions=extensions, protocols=args.subprotocol,
                                              max_connections=args.max_connections),
                            "twspy echo server on %s (asyncio; Ctrl-C stops it)", context)
    server = _listen("echo", EchoServer, (args.host, args.port), args.unix, ssl=context, max_size=args.max_size,
                     extensions=extensions, protocols=args.subprotocol,
                     max_connections=args.max_connections)
    if server is None:
        return 1
    print("twspy echo server on %s (Ctrl-C stops it)" % _url(server, context), file=sys.stderr, flush=True)
    with _sigterm_stops():
        server.run()
    return 0


# -- serve --------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    options = dict(_SERVE_DEFAULTS)
    extra: dict[str, Any] = {}
    if "config" in args:
        known, extra = _read_config(args.config)
        options.update(known)
    options.update((k, v) for k, v in vars(args).items() if k not in ("command", "config"))  # the command line wins
    if options["redis"] and options["hub"] and options["redis"] != options["hub"]:
        raise UsageError("give --redis or --hub, not both")

    classes = [(spec, load_filter_class(spec)) for spec in options["filter"]]
    allowed: set[str] = set()
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
    extensions: list[Extension] | None = [] if options["no_compression"] else None
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
            if options["unix"]:
                raise UsageError("--unix is not available with --asyncio yet")
            from .asyncio.server import Server as AsyncServer  # imported only when asked for
            banner = "twspy serve on %%s (asyncio; filters: %s%s; Ctrl-C stops it)" % (
                ", ".join(type(f).__name__ for f in filters), "; hub: %s" % _redact_url(hub_url) if hub_url else "")
            return _run_asyncio(lambda: AsyncServer(
                (options["host"], options["port"]), ssl=context, filters=filters, hub=hub,
                max_size=options["max_size"], extensions=extensions, protocols=options["subprotocol"],
                max_connections=options["max_connections"]), banner, context)
        server = _listen("serve", Server, (options["host"], options["port"]), options["unix"], ssl=context,
                         filters=filters, hub=hub, max_size=options["max_size"], extensions=extensions,
                         protocols=options["subprotocol"],
                         max_connections=options["max_connections"])
        if server is None:
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


def _config_names() -> list[str]:
    return sorted("filters" if dest == "filter" else dest.replace("_", "-") for dest in _SERVE_DEFAULTS)


def _read_config(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
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
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
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


class _installed_path_only:
    """While inside, ``sys.path`` lacks the working directory that ``python -m`` (or ``-c``) puts first.

    A filter spec names code to run: it comes from ``sys.path`` as installed (site-packages,
    PYTHONPATH), not from whatever directory the server was started in, where anyone who can
    write a file could plant ``log.py`` or ``myfilters.py``. A directory listed in PYTHONPATH
    on purpose stays.
    """

    def __enter__(self) -> None:
        cwd = os.getcwd()
        explicit = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
        self.saved = list(sys.path)
        sys.path[:] = [p for p in sys.path
                       if os.path.abspath(p or os.curdir) != cwd or os.path.abspath(p or os.curdir) in explicit]
        self.kept = list(sys.path)

    def __exit__(self, *exc: Any) -> None:
        added = [p for p in sys.path if p not in self.kept]  # entries the imported module added
        sys.path[:] = self.saved + added


def load_filter_class(spec: str) -> type:
    """The class named by ``spec``: ``package.module:Class``, ``package.module.Class`` or an alias.

    The module is imported from ``sys.path`` without the working directory (see
    :class:`_installed_path_only`): put your own filters in an installed package or in a
    directory named by PYTHONPATH. Raises UsageError (with the reason) when it cannot be imported.
    """
    target = FILTER_ALIASES.get(spec, spec)
    module_name, sep, name = target.partition(":")
    if not sep:
        module_name, _, name = target.rpartition(".")
    if not module_name or not name:
        raise UsageError("filter %r: expected package.module:Class, package.module.Class or one of %s"
                         % (spec, ", ".join(FILTER_ALIASES)))
    try:
        with _installed_path_only():
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


def _build_filter(spec: str, cls: type, options: dict[str, Any]) -> Any:
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
        parse_uri(args.upstream)
    except InvalidURI as exc:
        raise UsageError(str(exc)) from None
    if args.upstream_proxy and args.no_upstream_proxy:
        raise UsageError("give --upstream-proxy or --no-upstream-proxy, not both")
    upstream_proxy: None | bool | str = False if args.no_upstream_proxy else args.upstream_proxy
    server = _listen("proxy", functools.partial(ProxyServer, args.upstream), (args.host, args.port), args.unix,
                     ssl=context, upstream_ssl=upstream_ssl, upstream_proxy=upstream_proxy, max_size=args.max_size)
    if server is None:
        return 1
    print("twspy proxy on %s -> %s (Ctrl-C stops it)" % (_url(server, context), _redact_url(args.upstream)),
          file=sys.stderr, flush=True)
    with _sigterm_stops():
        server.run()
    return 0


# -- shared by the servers ----------------------------------------------------------------------
def _run_asyncio(make_server: Callable[[], Any], banner: str, context: ssl.SSLContext | None) -> int:
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


def _server_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
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


def _listen(command: str, factory: Callable[..., Server], address: tuple[str, int], unix: str | None,
            **kwargs: Any) -> Server | None:
    """The server listening on ``address`` (or the Unix socket ``unix``); None after one line on stderr."""
    if unix:
        kwargs["unix_path"] = unix
    try:
        return factory(address, **kwargs)
    except TypeError as exc:
        if unix and "unix_path" in str(exc):
            raise UsageError("--unix: this twspy's Server cannot listen on a Unix socket") from None
        raise
    except OSError as exc:  # the port is taken, the address is not ours, ...: one line, not a traceback
        where = "unix:%s" % unix if unix else "%s:%s" % address
        print("twspy %s: cannot listen on %s: %s" % (command, where, exc), file=sys.stderr)
        return None


def _url(server: Any, context: ssl.SSLContext | None) -> str:
    if isinstance(server.address, str):  # a Unix socket
        return "unix:%s (%s://localhost/)" % (server.address, "wss" if context else "ws")
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


def _client_context(url: str, insecure: bool) -> ssl.SSLContext | None:
    """The TLS context for a wss:// URL (None for ws://); ``insecure`` skips verification."""
    if not url.lower().startswith("wss:"):
        return None
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- connect: an interactive client in the style of wscat / websocat ----------------------------
#: Close codes after which ``connect`` exits 0 (a normal close, or the server going away).
NORMAL_CLOSE_CODES = (1000, 1001)
DEFAULT_WAIT = 1.0  # seconds ``connect`` waits for replies after stdin ends or -x is sent


class _Output:
    """Prints received messages (one per line) and notes, from any thread, never interleaved.

    On a terminal, messages are prefixed with ``< `` and binary ones described; piped, text goes
    out as it came and binary as hex, so ``twspy connect URL < in > out`` gives the bare replies.
    """

    def __init__(self, interactive: bool, quiet: bool) -> None:
        self.interactive, self.quiet = interactive, quiet
        self.lock = threading.Lock()

    def message(self, message: Message) -> None:
        if isinstance(message, TextMessage):
            text = message.payload if isinstance(message.payload, str) else message.payload.decode("utf-8", "replace")
            line = "< " + text if self.interactive else text
        else:
            data = message.encode()
            line = "< (binary, %d bytes) %s" % (len(data), data.hex()) if self.interactive else data.hex()
        with self.lock:
            print(line, flush=True)

    def control(self, kind: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")
        with self.lock:
            print("< %s%s" % (kind, " %s" % text if text else ""), flush=True)

    def note(self, text: str) -> None:
        """An informational line on stderr (not with --quiet)."""
        if not self.quiet:
            self.error(text)

    def error(self, text: str) -> None:
        with self.lock:
            print(text, file=sys.stderr, flush=True)


class _ConsoleConnection(Connection):
    """The client's connection: shows pings and pongs when asked (-P)."""

    output: _Output | None = None

    def onping(self, payload: bytes) -> None:
        if self.output is not None:
            self.output.control("ping", payload)

    def onpong(self, payload: bytes) -> None:
        if self.output is not None:
            self.output.control("pong", payload)


def _wait_seconds(text: str) -> float | None:
    """``--wait``: seconds, or ``inf`` to wait until the server closes (None)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text) from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError("expected 0 or more seconds, or inf")
    return None if value == float("inf") else value


def _read_lines(events: queue.Queue[tuple[str, Any]]) -> None:
    """The stdin thread: each line as ("line", text), then ("eof", None).

    On a real file descriptor it reads with os.read, not through sys.stdin's buffer: a daemon
    thread left blocked inside the buffer's lock when the connection ends would make the
    interpreter abort at exit.
    """
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stdin (io.StringIO, in tests)
        fd = -1
    try:
        if fd < 0:
            for line in sys.stdin:
                events.put(("line", line.rstrip("\r\n")))
            return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        while True:
            data = os.read(fd, 65536)
            pending += decoder.decode(data, final=not data)
            *lines, pending = pending.split("\n")
            for line in lines:
                events.put(("line", line.rstrip("\r")))
            if not data:
                if pending:
                    events.put(("line", pending.rstrip("\r")))
                return
    except (OSError, ValueError):
        return
    finally:
        events.put(("eof", None))


def _connect(args: argparse.Namespace) -> int:
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise UsageError("bad --header %r (want 'Name: value')" % header)
        headers.append((name.strip(), value.strip()))
    if args.proxy and args.unix:
        raise UsageError("give --proxy or --unix, not both")
    interactive = sys.stdin.isatty() and not args.execute
    out = _Output(sys.stdout.isatty(), args.quiet)
    proxy: None | bool | str = False if args.no_proxy else args.proxy
    # The output is set on a class of its own: a ping may be handled as soon as the connection exists.
    connection_class = type("_ConsoleConnection", (_ConsoleConnection,),
                            {"output": out if args.show_ping_pong else None})
    try:
        conn = connect(args.url, protocols=args.subprotocol or None, origin=args.origin, headers=headers,
                       ssl=_client_context(args.url, args.insecure), extensions=[] if args.no_compression else None,
                       max_size=args.max_size, handshake_timeout=args.handshake_timeout,
                       connection_class=connection_class,
                       ping_interval=args.ping_interval or None, proxy=proxy, unix_path=args.unix)
    except (WebSocketError, OSError, ValueError) as exc:  # TimeoutError, ssl.SSLError, a bad proxy URL
        out.error("twspy connect: could not connect to %s: %s" % (_redact_url(args.url),
                                                                  _redact_url(str(exc) or type(exc).__name__)))
        return 1
    greeting = "connected to %s%s%s" % (_redact_url(args.url), " (subprotocol %s)" % conn.protocol
                                        if conn.protocol else "", "; Ctrl-D or Ctrl-C closes" if interactive else "")
    return _Console(conn, out, args, slash=args.slash or interactive).run(greeting)


class _Console:
    """Runs ``connect``: lines (or -x messages) out, messages printed, then the exit status."""

    def __init__(self, conn: Connection, out: _Output, args: argparse.Namespace, slash: bool) -> None:
        self.conn, self.out, self.args, self.slash = conn, out, args, slash
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.we_closed = False  # we sent the close (stdin ended, Ctrl-C, /close): not the server's verdict

    def run(self, greeting: str) -> int:
        reader = threading.Thread(target=self._receive, name="twspy-connect-reader", daemon=True)
        reader.start()
        try:
            self.out.note(greeting)
            if self._send_all():
                self._wait_replies()
        except KeyboardInterrupt:
            try:
                self._close(1000, "")
            except KeyboardInterrupt:  # a second Ctrl-C: leave now
                self.conn.abort()
        reader.join(self.conn.close_timeout or None)
        return self._status()

    # -- the threads -------------------------------------------------------------------------
    def _receive(self) -> None:
        """The reader thread: print every message until the connection closes, then say so."""
        try:
            while True:
                self.out.message(self.conn.recv())
        except ConnectionClosed:
            pass
        except Exception as exc:  # pragma: no cover - a bug: end the session rather than hang
            self.out.error("twspy connect: reading failed: %s" % exc)
            self.conn.abort()
        finally:
            self.events.put(("closed", None))

    def _send_all(self) -> bool:
        """Send -x messages or stdin's lines; False once the connection has ended."""
        if self.args.execute:
            for text in self.args.execute:
                if not self._handle(text):
                    return False
            return True
        threading.Thread(target=_read_lines, args=(self.events,), name="twspy-connect-stdin", daemon=True).start()
        while True:
            kind, value = self.events.get()
            if kind == "closed":
                return False
            if kind == "eof":
                return True
            if not self._handle(value):
                return False

    def _wait_replies(self) -> None:
        """After the last message: replies may still be on their way; wait --wait seconds, then close."""
        wait = self.args.wait
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                kind, _ = self.events.get(timeout=left)
            except queue.Empty:
                break
            if kind == "closed":
                return
        self._close(1000, "")

    # -- one line ----------------------------------------------------------------------------
    def _handle(self, line: str) -> bool:
        """Send one line (a message, or a slash command); False once the connection has ended."""
        if self.slash and line.startswith("/") and not line.startswith("//"):
            return self._command(line)
        if self.slash and line.startswith("//"):
            line = line[1:]
        try:
            if self.args.binary:
                data = self._binary(line)
                if data is None:
                    return True
                self.conn.send(data)
            else:
                self.conn.send(line)
        except ConnectionClosed:
            return False
        return True

    def _binary(self, line: str) -> bytes | None:
        """-b input: hex (spaces allowed), or ``@PATH`` for a file's bytes; None (and a note) if bad."""
        if line.startswith("@"):
            try:
                with open(line[1:], "rb") as file:
                    return file.read()
            except OSError as exc:
                self.out.error("twspy connect: cannot read %s: %s" % (line[1:], exc))
                return None
        try:
            return bytes.fromhex(line)
        except ValueError:
            self.out.error("twspy connect: not hex (with -b, lines are hex or @FILE): %r" % line[:40])
            return None

    def _command(self, line: str) -> bool:
        name, _, rest = line.partition(" ")
        try:
            if name == "/ping":
                self.conn.send_ping(rest.encode("utf-8"))
                return True
            if name == "/close":
                code_text, _, reason = rest.strip().partition(" ")
                try:
                    code = int(code_text) if code_text else 1000
                    self._close(code, reason)
                except ValueError as exc:  # not a number, a code that may not be sent, a long reason
                    self.out.error("twspy connect: /close: %s" % exc)
                    return True
                return False
        except ConnectionClosed:
            return False
        self.out.error("twspy connect: unknown command %s (commands: /ping [data], /close [code [reason]]; "
                       "// sends a line starting with /)" % name)
        return True

    def _close(self, code: int, reason: str) -> None:
        was_open = not self.conn.closed
        self.conn.close(code, reason)  # ValueError for a code that may not be sent, before anything changes
        self.we_closed = self.we_closed or was_open

    # -- the end -----------------------------------------------------------------------------
    def _status(self) -> int:
        """0 for a normal close (or one we asked for and the server answered), else 1 and one line."""
        conn = self.conn
        code, reason = conn.close_code, conn.close_reason
        if code in NORMAL_CLOSE_CODES or (self.we_closed and conn.close_received):
            self.out.note("closed: %s%s" % (code, " %s" % reason if reason else ""))
            return 0
        try:
            name = " (%s)" % CloseCode(code or 0).name.lower().replace("_", " ")
        except ValueError:
            name = ""
        if code == 1006:
            why = "the connection was lost without a close frame (1006)"
        else:
            why = "the server closed the connection with %s%s%s" % (code, name, ": %s" % reason if reason else "")
        self.out.error("twspy connect: %s" % why)
        return 1
