"""Proxy: relay each client connection to an upstream ws:// or wss:// server.

A :class:`ProxyServer` connects to the upstream *before* it answers the client's upgrade,
so an unreachable upstream costs the client an HTTP 502 rather than a 101 followed by a
close. Once both legs are open, messages (text stays text, binary stays binary), pings,
pongs and the close code and reason go across in both directions::

    from twspy.proxy import ProxyServer

    # ws://127.0.0.1:8000/chat?room=1 is relayed to wss://backend.example/ws/chat?room=1
    ProxyServer("wss://backend.example/ws", ("127.0.0.1", 8000)).run()

or ``python -m twspy proxy --upstream wss://backend.example/ws``.

The two legs are independent WebSocket connections: each negotiates its own extensions
(permessage-deflate by default) and may fragment messages its own way (RFC 6455 §5.4
lets an intermediary do so). The subprotocol is the exception: the client is answered
with the one the upstream chose from the client's own offer.

Close codes that RFC 6455 §7.4.1 forbids on the wire are mapped when they cross over:

=====================  ===========================  ===========================
code on one leg        sent to the client            sent to the upstream
=====================  ===========================  ===========================
1005 (no status)       1000                          1000
1006 (abnormal)        1014 (bad gateway)            1001 (going away)
1015 (TLS failure)     1014 (bad gateway)            1001 (going away)
anything else          the same code and reason      the same code and reason
=====================  ===========================  ===========================

Not supported: the multiplexing extension on the client leg (a channel has no thread
of its own to connect upstream from).
"""

from __future__ import annotations

import logging
import re
import ssl as _ssl
import threading
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from typing import Any, Callable, cast

from .client import connect
from .connection import CLOSED, CONNECTION_OPTIONS, DEFAULT_CLOSE_TIMEOUT, Connection
from .errors import ConnectionClosed, HandshakeError, InvalidURI, WebSocketError
from .extension import parse_extensions, parse_tokens
from .frame import (
    CLOSE_ABNORMAL,
    CLOSE_BAD_GATEWAY,
    CLOSE_GOING_AWAY,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_TLS_FAILURE,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNABLE,
    short_reason,
    valid_close_code,
)
from .handshake import Headers, Reply, Request, server_handshake
from .message import Message
from .server import Server, ServerConnection
from .uri import parse_uri
from .websocket import DEFAULT_HANDSHAKE_TIMEOUT

__all__ = ["ProxyServer", "DEFAULT_FORWARD_HEADERS", "PASS_THROUGH_STATUSES"]

logger = logging.getLogger("twspy.proxy")

_UNSET: Any = object()  # ProxyServer(upstream_timeout=) not given

DEFAULT_FORWARD_HEADERS = ("Authorization", "Cookie", "Origin", "User-Agent")
PASS_THROUGH_STATUSES = (401, 403, 404, 429)
"""Upstream refusals answered to the client as they are; any other failure is a 502."""
_PASS_THROUGH_HEADERS = ("WWW-Authenticate", "Retry-After")


class _Upstream(Connection):
    """The upstream leg: what it receives goes to ``peer``, the client leg.

    Its reading thread is the relay thread started by :meth:`ProxyServer.onopen`.
    """

    peer: ServerConnection | None = None

    def onmessage(self, message: Message) -> None:
        if self.peer is not None:
            _forward(self.peer.send, message)

    def onping(self, payload: bytes) -> None:
        if self.peer is not None:
            _forward(self.peer.send_ping, payload)

    def onpong(self, payload: bytes) -> None:
        if self.peer is not None and not self.is_keepalive_pong(payload):
            _forward(self.peer.send_pong, payload)


class ProxyServer(Server):
    """A :class:`~twspy.server.Server` that relays every client to ``upstream``.

    The upstream URL is the client's request target appended to the upstream's path
    (see :meth:`upstream_url`); the upstream's query, if any, comes before the client's.

    Each client costs two threads (the server's thread reading the client, a relay thread
    reading the upstream) and two sockets; both end when either leg closes.

    Besides the Server's hooks, these may be overridden: ``upstream_url(path)`` (route
    clients elsewhere) and ``forwarded_headers(request)``. ``process_request`` and filters
    run first, so a request they answer never reaches the upstream. ``onopen``,
    ``onmessage``, ``onping``, ``onpong``, ``onclose`` and ``select_subprotocol`` do the
    relaying: an override must call ``super()``.

    Args:
        upstream: ws:// or wss:// base URL; InvalidURI if it is not one.
        address: ``(host, port)`` to listen on (port 0 picks one).
        ssl: an ``ssl.SSLContext`` to serve wss:// to clients.
        upstream_ssl: the ``ssl.SSLContext`` for a wss:// upstream (default: the system's
            CAs, hostname checked).
        upstream_timeout: deprecated (DeprecationWarning): ``handshake_timeout``, the server's
            deadline for a client's handshake, is also the upstream's (TCP connect, TLS, upgrade).
        upstream_proxy: how to reach the upstream, as ``connect(proxy=...)`` takes it: None
            (the default) reads ``http_proxy`` / ``https_proxy`` / ``all_proxy`` / ``no_proxy``
            from the environment, False never uses a proxy, or an ``http://``, ``https://``,
            ``socks5://``, ``socks5h://``, ``socks4://`` URL (credentials in it).
        forward_headers: request headers copied to the upstream request (every value).
            ``X-Forwarded-For`` is always sent: the client's own ``X-Forwarded-For`` (if any)
            is kept and the client's address appended, so only the last entry is known to be
            true; an upstream must not trust the earlier ones unless its own proxies wrote them.
        **server_kwargs: see :class:`~twspy.server.Server`. ``max_size``, ``close_timeout``
            and the keepalive options apply to both legs; ``protocols`` is not used (the
            upstream picks the subprotocol).
    """

    def __init__(self, upstream: str, address: tuple[str, int] = ("127.0.0.1", 8000),
                 ssl: _ssl.SSLContext | None = None, upstream_ssl: _ssl.SSLContext | None = None,
                 upstream_timeout: Any = _UNSET, forward_headers: Sequence[str] = DEFAULT_FORWARD_HEADERS,
                 upstream_proxy: None | bool | str = None, **server_kwargs: Any) -> None:
        parse_uri(upstream)  # InvalidURI now rather than a 502 for every client
        if any(getattr(ext, "name", "") == "mux" for ext in server_kwargs.get("extensions") or ()):
            raise ValueError("ProxyServer does not relay the multiplexing extension")
        self.upstream = upstream
        self.upstream_ssl = upstream_ssl
        if upstream_timeout is not _UNSET:
            warnings.warn("ProxyServer(upstream_timeout=) is deprecated: handshake_timeout= sets both legs' deadline",
                          DeprecationWarning, stacklevel=2)
        # The upstream leg's opening-handshake deadline: handshake_timeout, as the client's.
        self.upstream_timeout: float | None = server_kwargs.get("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT) \
            if upstream_timeout is _UNSET else upstream_timeout
        self.upstream_proxy = upstream_proxy
        self.forward_headers = tuple(forward_headers)
        self._base = urllib.parse.urlsplit(upstream)
        # Per client thread: the upstream connected during its handshake, the subprotocol the
        # upstream chose (for select_subprotocol) and the relay thread. One thread runs a
        # client's whole handshake and its onopen, so no lock is needed.
        self._local = threading.local()
        super().__init__(address, ssl=ssl, **server_kwargs)

    # -- hooks (may be overridden) ----------------------------------------------------------
    def upstream_url(self, path: str) -> str:
        """The upstream URL for a client's request target ``path`` (path and query).

        ``ws://h:1/base`` with ``/chat?x=1`` gives ``ws://h:1/base/chat?x=1`` (also from
        ``ws://h:1/base/``); ``/`` and ``/?x=1`` give the upstream path itself
        (``ws://h:1/base``, ``ws://h:1/base?x=1``); ``ws://h:1/base?k=v`` with ``/chat?x=1``
        gives ``ws://h:1/base/chat?k=v&x=1``. Raises InvalidURI (the client gets 400) for a
        target that is not a path or that has a ``.`` or ``..`` segment, even percent-encoded
        (``/../x``, ``/%2e%2e/x``, ``/..%2fx``): the client stays below the upstream's path.
        (Browsers resolve dot segments before sending, so only hand-made requests have them.)
        """
        if not path.startswith("/"):
            raise InvalidURI(path, "the request target is not a path")
        client_path, _, client_query = path.partition("?")
        if _dot_segment(client_path):
            raise InvalidURI(path, "the request target has a '.' or '..' segment")
        base = self._base
        if client_path == "/":
            new_path = base.path or "/"
        else:
            new_path = base.path.rstrip("/") + client_path
        query = "&".join(q for q in (base.query, client_query) if q)
        url = urllib.parse.urlunsplit((base.scheme, base.netloc, new_path, query, ""))
        parse_uri(url)
        return url

    def forwarded_headers(self, request: Request) -> list[tuple[str, str]]:
        """The headers of the upstream request: ``forward_headers`` and ``X-Forwarded-For``."""
        headers = [(name, value) for name in self.forward_headers for value in request.headers.get_all(name)]
        if isinstance(request.address, tuple) and request.address:
            chain = request.headers.get("X-Forwarded-For")
            host = str(request.address[0])
            headers.append(("X-Forwarded-For", "%s, %s" % (chain, host) if chain else host))
        return headers

    # -- the handshake: connect upstream before answering the client -------------------------
    def _process_request(self, request: Request) -> Reply:
        reply = super()._process_request(request)
        if reply is not None:
            return reply
        try:
            offered = parse_tokens(request.headers.get("Sec-WebSocket-Protocol") or "")
            # A request that is no valid upgrade (a plain GET, a bad key) must not open an
            # upstream connection: let the websocket's own check answer it, a moment later.
            # (Checked here without our extensions: negotiating them would build codecs.)
            server_handshake(request, (), (), self.sock.trusted_origins, self.sock.locations)
            parse_extensions(request.headers.get("Sec-WebSocket-Extensions") or "")
        except HandshakeError:
            return None
        try:
            url = self.upstream_url(request.path)
        except InvalidURI as exc:
            return 400, "bad request target: %s\n" % exc.why
        who, shown = _fmt_address(request.address), _redact(url)
        # The upstream leg is read by the relay thread: no in-queue for it.
        options = {k: v for k, v in self.connection_options.items()
                   if k in CONNECTION_OPTIONS and k != "queue_messages"}
        try:
            upstream = connect(url, protocols=offered or None, headers=self.forwarded_headers(request),
                               ssl=self.upstream_ssl, handshake_timeout=self.upstream_timeout,
                               connection_class=_Upstream, proxy=self.upstream_proxy,
                               max_size=self.sock.max_size, write_timeout=self.sock.write_timeout, **options)
        except HandshakeError as exc:
            if exc.status in PASS_THROUGH_STATUSES:
                logger.info("%s: upstream %s answered %d", who, shown, exc.status)
                answer = exc.headers if isinstance(exc.headers, Headers) else Headers()
                relayed = [(k, v) for k, v in answer.items() if k.lower() in _PASS_THROUGH_LOWER]
                return exc.status, relayed, exc.body
            logger.warning("%s: upstream %s refused the upgrade: %s", who, shown, exc)
            return 502, "upstream unavailable: %s\n" % exc
        except (OSError, WebSocketError, ValueError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
            logger.warning("%s: upstream %s unavailable: %s", who, shown, exc or type(exc).__name__)
            return 502, "upstream unavailable: %s\n" % (exc or type(exc).__name__)
        upstream = cast(_Upstream, upstream)
        logger.info("%s: upstream %s open (subprotocol %s)", who, shown, upstream.protocol)
        request.state["upstream"] = upstream
        # Remembered for _serve (which closes an upstream whose client never opened) and for
        # select_subprotocol, which the websocket calls next in this same thread.
        self._local.upstream = upstream
        self._local.protocol = upstream.protocol
        return None

    def select_subprotocol(self, client_protocols: list[str], server_protocols: Sequence[str]) -> str | None:
        """The subprotocol the upstream chose (it was offered the client's list, so it is one of them)."""
        return getattr(self._local, "protocol", None)

    def _serve(self, sock: Any, address: Any) -> None:
        local = self._local
        local.upstream = local.protocol = local.relay = None
        try:
            super()._serve(sock, address)
        finally:
            upstream, relay = local.upstream, local.relay
            local.upstream = local.protocol = local.relay = None
            if upstream is not None:
                self._finish_upstream(upstream, relay)

    def _finish_upstream(self, upstream: _Upstream, relay: threading.Thread | None) -> None:
        """After the client's thread is done: end the upstream leg and its relay thread, bounded."""
        if upstream.close_timeout is None:  # a proxy thread never waits for ever on one leg
            upstream.close_timeout = DEFAULT_CLOSE_TIMEOUT
        if relay is None:
            # The handshake failed after the upstream connected, the server is stopping, or a
            # filter's on_open refused the client: nobody reads this leg, close() does.
            upstream.close(CLOSE_GOING_AWAY, "")
            return
        wait = upstream.close_timeout + 1.0
        relay.join(wait)
        if relay.is_alive():  # the upstream did not answer our close in time
            upstream.abort()
            relay.join(wait)

    # -- relaying ---------------------------------------------------------------------------
    def onopen(self, client: ServerConnection) -> None:
        """Start relaying: a thread reads the upstream and sends to ``client``."""
        upstream = client.request.state.get("upstream")
        if not isinstance(upstream, _Upstream):  # pragma: no cover - every upgrade connects upstream
            client.start_close(CLOSE_UNABLE, "no upstream")
            return
        upstream.peer = client
        relay = threading.Thread(target=self._relay, args=(client, upstream), daemon=True,
                                 name="twspy-proxy-%s" % client.id)
        try:
            relay.start()
        except RuntimeError as exc:  # "can't start new thread" (pid limits): refuse this client only
            _warn_limited("%r: %s; closing with 1013", client, exc)
            client.start_close(CLOSE_TRY_AGAIN_LATER, "proxy overloaded")
            return  # _serve then closes the upstream leg, which nobody reads
        self._local.relay = relay

    def _relay(self, client: ServerConnection, upstream: _Upstream) -> None:
        try:
            upstream.receive_forever()
        finally:
            if upstream.state != CLOSED:  # pragma: no cover - receive_forever ends closed
                upstream.abort()
            code, reason = _toward_client(upstream.close_code, upstream.close_reason)
            logger.info("%r: upstream closed %s %s", client, upstream.close_code, upstream.close_reason)
            try:
                client.close(code, reason)  # bounded by close_timeout; nothing if already closed
            except Exception:  # pragma: no cover - the socket is gone: close() already gave up
                logger.debug("closing %r failed", client, exc_info=True)

    def onmessage(self, client: ServerConnection, message: Message) -> None:
        """Send ``message`` upstream as it came (text or binary)."""
        upstream = client.request.state.get("upstream")
        if upstream is not None:
            _forward(upstream.send, message)

    def onping(self, client: ServerConnection, payload: bytes) -> None:
        """Forward the client's ping (already answered by this leg) with the same payload."""
        upstream = client.request.state.get("upstream")
        if upstream is not None:
            _forward(upstream.send_ping, payload)

    def onpong(self, client: ServerConnection, payload: bytes) -> None:
        """Forward the client's pong, unless it answers this leg's own keepalive ping."""
        upstream = client.request.state.get("upstream")
        if upstream is not None and not client.is_keepalive_pong(payload):
            _forward(upstream.send_pong, payload)

    def onclose(self, client: ServerConnection, code: int, reason: str) -> None:
        """Close the upstream leg with the client's code and reason (mapped, see the module doc)."""
        upstream = client.request.state.get("upstream")
        if upstream is not None and upstream.state != CLOSED:
            upstream.start_close(*_toward_upstream(code, reason))


_PASS_THROUGH_LOWER = tuple(name.lower() for name in _PASS_THROUGH_HEADERS)


def _forward(send: Callable[[Any], None], item: Any) -> None:
    """Send ``item`` on the other leg; if that leg has closed, drop it: the leg's own closing
    (the relay thread for the upstream, onclose for the client) ends this one too."""
    try:
        send(item)
    except ConnectionClosed:
        pass


_warned_at = [-1e9]  # monotonic time of the last rate-limited warning


def _warn_limited(message: str, *args: Any) -> None:
    """A warning a peer can cause at will (e.g. under a thread limit): at most one a second."""
    now = time.monotonic()
    if now - _warned_at[0] >= 1.0:
        _warned_at[0] = now
        logger.warning(message, *args)


def _fmt_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) of a client's address, for the logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return "[%s]:%s" % (host, address[1]) if ":" in host else "%s:%s" % (host, address[1])
    return str(address)


def _dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment (RFC 3986 §3.3), also percent-encoded
    (once or more) or delimited by a backslash, as some upstream servers read them."""
    decoded = path
    for _ in range(4):
        once = urllib.parse.unquote(decoded)
        if once == decoded:
            break
        decoded = once
    return any(segment in (".", "..") for segment in re.split(r"[/\\]", decoded))


def _toward_client(code: int | None, reason: str) -> tuple[int, str]:
    """The close status for the client when the upstream leg ended with ``code``."""
    if code is None or code == CLOSE_NO_STATUS:
        return CLOSE_NORMAL, ""
    if code == CLOSE_ABNORMAL:
        return CLOSE_BAD_GATEWAY, short_reason("upstream connection lost" + (": " + reason if reason else ""))
    if code == CLOSE_TLS_FAILURE:
        return CLOSE_BAD_GATEWAY, "upstream TLS failure"
    if not valid_close_code(code):  # pragma: no cover - decode_close only lets wire codes in
        return CLOSE_UNABLE, ""
    return code, short_reason(reason)


def _toward_upstream(code: int | None, reason: str) -> tuple[int, str]:
    """The close status for the upstream when the client leg ended with ``code``."""
    if code is None or code == CLOSE_NO_STATUS:
        return CLOSE_NORMAL, ""
    if code in (CLOSE_ABNORMAL, CLOSE_TLS_FAILURE):
        return CLOSE_GOING_AWAY, "client connection lost"
    if not valid_close_code(code):  # pragma: no cover - decode_close only lets wire codes in
        return CLOSE_UNABLE, ""
    return code, short_reason(reason)


def _redact(url: str) -> str:
    """``url`` for the logs: without ``user:password@`` and the query (it may carry a token)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
