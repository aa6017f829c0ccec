"""Connecting as a client: :func:`connect` a URL, get a Connection."""

from __future__ import annotations

import logging
import random
import socket
import ssl as _ssl
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from .connection import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_FRAGMENTS,
    DEFAULT_MAX_OUTBOX,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    Connection,
)
from .errors import HandshakeError, InvalidURI, NegotiationError, ProxyError, RedirectError
from .extension import Extension
from .handshake import MAX_HEADER_SIZE, basic_auth, digest_auth
from .permessage_deflate import default_extensions
from .proxies import open_tunnel, parse_proxy, proxy_for, wrap_tls_inside
from .redirects import CREDENTIAL_HEADERS, MAX_AUTH_ATTEMPTS, MAX_REDIRECTS, HandshakeRetries
from .uri import WebSocketURI, parse_uri
from .websocket import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_SIZE, DEFAULT_WRITE_TIMEOUT, websocket

__all__ = ["connect", "reconnect", "DEFAULT_FINAL_CODES", "FINAL_STATUSES", "basic_auth", "digest_auth",
           "default_extensions", "MAX_REDIRECTS", "MAX_AUTH_ATTEMPTS", "CREDENTIAL_HEADERS"]

logger = logging.getLogger("twspy.client")

#: Close codes after which :func:`reconnect` stops: a normal close, and the peer's verdicts on what
#: we sent (protocol error, unacceptable data, policy, too big, missing extension).
DEFAULT_FINAL_CODES = frozenset((1000, 1002, 1003, 1007, 1008, 1009, 1010))
#: Handshake answers (from the server or a proxy) that retrying cannot fix.
FINAL_STATUSES = frozenset((400, 401, 403, 404, 407))
_UNSET: Any = object()  # connect(timeout=) not given


def connect(url: str, protocols: Sequence[str] | None = None, extensions: Sequence[Extension] | None = None,
            origin: str | None = None, headers: None | Mapping[str, str] | Iterable[tuple[str, str]] = None,
            ssl: _ssl.SSLContext | None = None, timeout: Any = _UNSET,
            connection_class: type[Connection] = Connection, *, proxy: None | bool | str = None,
            proxy_ssl: _ssl.SSLContext | None = None, unix_path: str | None = None,
            handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
            max_size: int | None = DEFAULT_MAX_SIZE, max_header_size: int = MAX_HEADER_SIZE,
            write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
            close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
            ping_interval: float | None = DEFAULT_PING_INTERVAL,
            ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
            max_queue: int = DEFAULT_MAX_QUEUE, max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
            max_outbox: int = DEFAULT_MAX_OUTBOX, max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
            queue_messages: bool = False, background: bool = True) -> Connection:
    """Open a WebSocket connection to a ws:// or wss:// ``url`` and return it.

    Follows redirects (up to MAX_REDIRECTS) and answers a 401 with Basic or Digest auth
    when the URL has ``user:password@`` (at most MAX_AUTH_ATTEMPTS tries). A redirect to
    another scheme, host or port drops the URL's credentials and the ``Authorization``,
    ``Cookie`` and ``Proxy-Authorization`` headers; one from wss:// to ws:// is refused.

    Args:
        protocols: subprotocols to offer (``conn.protocol`` is the chosen one).
        extensions: Extension instances to offer (None: the defaults, permessage-deflate
            when available; ``[]`` for none).
        origin: the Origin header. headers: extra request headers.
        ssl: SSLContext for wss:// (default: ``ssl.create_default_context()``, which
            checks the certificate and the hostname, with SNI).
        timeout: deprecated spelling of ``handshake_timeout`` (DeprecationWarning).
        connection_class: the Connection subclass to build.
        proxy: ``None`` (default) or True: the environment's proxy, as urllib picks it (ws:// uses
            ``http_proxy``, wss:// ``https_proxy``, then ``all_proxy``; ``no_proxy`` honoured);
            ``False``: never a proxy; or a URL ``http://``, ``https://``, ``socks5://``,
            ``socks5h://``, ``socks4://``, ``socks4a://`` with optional ``user:password@``
            (see :mod:`twspy.proxies`). A refusal raises ProxyError with the proxy's answer.
        proxy_ssl: SSLContext for an https:// proxy (default: the system's, verifying it).
        unix_path: connect to this Unix domain socket instead of the URL's host and port
            (the URL still gives the Host header and the path); no proxy is used.
        handshake_timeout: seconds for TCP connect + TLS + the HTTP upgrade (None: no limit).
        max_size, max_header_size, write_timeout: see :class:`~twspy.websocket.websocket`.
        close_timeout, ping_interval, ping_timeout, max_queue, max_queue_bytes, max_outbox, max_fragments:
            see :class:`~twspy.connection.Connection`; keepalive pings every 20 s by default.
        queue_messages, background: see :class:`~twspy.connection.Connection`; ``background=False``
            turns off reading in the background. docs/limits.md lists every option with its default.

    Raises:
        InvalidURI, HandshakeError (``status``, ``headers``, ``body`` of the answer),
        NegotiationError, RedirectError, ProxyError, TimeoutError, OSError.
    """
    if extensions is None:
        extensions = default_extensions()
    header_list = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    if timeout is not _UNSET:
        warnings.warn("connect(timeout=) is deprecated: use handshake_timeout=", DeprecationWarning, stacklevel=2)
        handshake_timeout = timeout
    # background: pings answered while the caller is not in recv()
    conn_options: dict[str, Any] = dict(
        close_timeout=close_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout, max_queue=max_queue,
        max_queue_bytes=max_queue_bytes, max_outbox=max_outbox, max_fragments=max_fragments,
        queue_messages=queue_messages, background=background)
    ws_options: dict[str, Any] = dict(handshake_timeout=handshake_timeout, max_size=max_size,
                                      max_header_size=max_header_size, write_timeout=write_timeout)
    if proxy is True:  # "a proxy, the usual one": the environment's
        proxy = None
    if unix_path is not None and proxy:
        raise TypeError("give unix_path or proxy, not both")
    if isinstance(proxy, str):
        parse_proxy(proxy)  # ValueError now for a bad proxy URL
    route = _Route(proxy, proxy_ssl, unix_path)
    retries = HandshakeRetries(parse_uri(url), header_list)
    while True:
        try:
            ws = _open(retries.uri, protocols or (), extensions, origin, retries.headers(), ssl, ws_options, route)
        except HandshakeError as exc:
            if retries.retry(exc):  # a redirect or a 401 we can answer (RedirectError past the limits)
                continue
            raise
        return connection_class(ws, **conn_options)


class _Route(NamedTuple):
    """How to reach the server: directly, through a proxy (None: the environment's), or a Unix socket."""

    proxy: None | bool | str
    proxy_ssl: _ssl.SSLContext | None
    unix_path: str | None


def _connect_socket(uri: WebSocketURI, route: _Route, timeout: float | None) -> tuple[socket.socket, Any]:
    """A connected socket to the server (or a tunnel to it) and the peer address to report."""
    if route.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(route.unix_path)
        except BaseException:
            sock.close()
            raise
        return sock, route.unix_path
    proxy = route.proxy
    if proxy is None:
        proxy = proxy_for(uri.secure, uri.host, uri.port)
    if not proxy:
        sock = socket.create_connection((uri.host, uri.port), timeout)
        return sock, sock.getpeername()
    sock = open_tunnel(uri.host, uri.port, str(proxy), timeout, route.proxy_ssl)
    if uri.secure and isinstance(sock, _ssl.SSLSocket):
        sock = wrap_tls_inside(sock)  # TLS to the server inside TLS to the proxy
    return sock, (uri.host, uri.port)


def _open(uri: WebSocketURI, protocols: Sequence[str], extensions: Sequence[Extension], origin: str | None,
          headers: list[tuple[str, str]], ssl: _ssl.SSLContext | None, ws_options: dict[str, Any],
          route: _Route) -> websocket:
    timeout = ws_options.get("handshake_timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    sock, address = _connect_socket(uri, route, timeout)
    if uri.secure:
        context = ssl or _ssl.create_default_context()
    else:
        context = None
    ws = websocket(sock, origin=origin, protocols=protocols, extensions=extensions, location=uri.resource,
                   ssl=context, host=uri.host_header, headers=headers, server_hostname=uri.host, **ws_options)
    ws.server_side = False
    try:
        if context is not None:
            sock.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
            ws.sock = context.wrap_socket(sock, server_hostname=uri.host)
        ws.client_handshake(uri.host_header, deadline)
        ws.address = address
        ws.sock.settimeout(None)
    except BaseException:
        ws.close()
        raise
    return ws


def reconnect(url: str, *, first_delay: float = 1.0, max_delay: float = 60.0, factor: float = 2.0,
              final_codes: Iterable[int] = DEFAULT_FINAL_CODES, max_tries: int | None = None,
              stop: threading.Event | None = None, **connect_options: Any) -> Iterator[Connection]:
    """Yield an open connection to ``url``, and a new one each time the previous one is lost.

    ::

        for conn in twspy.reconnect("ws://127.0.0.1:8000/"):
            for message in conn:
                print(message)

    Asking for the next connection (the ``for`` loop going round) means the previous one is
    done: if it closed with one of ``final_codes`` the iteration ends; if it is still open it
    is closed (1000) first. Between tries it waits with jittered exponential backoff: from
    ``first_delay`` seconds, times ``factor`` after each failed try, at most ``max_delay``
    (each wait drawn between half and all of that); a successful connection resets it. Each
    retry is logged at INFO on ``twspy.client``. Breaking out of the loop closes the current
    connection.

    Args:
        url: ws:// or wss:// URL; ``connect_options`` are :func:`connect`'s.
        first_delay, max_delay, factor: the backoff, in seconds.
        final_codes: close codes the server means as final (default: DEFAULT_FINAL_CODES).
        max_tries: give up after this many failed tries in a row, raising the last error
            (None: never).
        stop: an Event that ends the iteration (checked between tries, and wakes a wait).

    Raises:
        HandshakeError (and ProxyError) with a status in FINAL_STATUSES (400, 401, 403, 404,
        407), InvalidURI, NegotiationError, RedirectError, a TLS certificate error: what
        retrying cannot fix. The last error once ``max_tries`` is reached.
    """
    final = frozenset(final_codes)
    shown = _shown_url(url)
    delay = first_delay
    failures = 0
    conn: Connection | None = None
    try:
        while stop is None or not stop.is_set():
            try:
                conn = connect(url, **connect_options)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                failures += 1
                if max_tries is not None and failures >= max_tries:
                    raise
                why = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
            else:
                failures, delay = 0, first_delay
                yield conn
                if not conn.closed:
                    conn.close()
                    why = "closed by the caller"
                else:
                    code = conn.close_code
                    if code in final:
                        logger.info("%s closed with %s: not reconnecting", shown, code)
                        return
                    why = "closed with %s" % code
                conn = None
            wait = random.uniform(delay / 2, delay)
            logger.info("%s: %s; retrying in %.1f s", shown, why, wait)
            if stop is not None:
                if stop.wait(wait):
                    return
            else:
                time.sleep(wait)
            delay = min(max_delay, delay * factor)
    finally:
        if conn is not None and not conn.closed:
            conn.close()


def _retryable(exc: BaseException) -> bool:
    """Whether a failed :func:`connect` may succeed later (refused, reset, timed out, 5xx...)."""
    if isinstance(exc, (InvalidURI, RedirectError, NegotiationError, _ssl.SSLCertVerificationError, TypeError,
                        ValueError)):
        return False
    if isinstance(exc, (HandshakeError, ProxyError)):
        if exc.status is None:  # an answer we could not accept (bad accept key, negotiation)
            return isinstance(exc, ProxyError)  # a proxy dropping the tunnel may recover
        return exc.status not in FINAL_STATUSES
    return isinstance(exc, OSError)


def _shown_url(url: str) -> str:
    """``url`` for a log line: no credentials, no query (it may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
