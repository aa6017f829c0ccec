"""Server: a thread per client over a listening :class:`~twspy.websocket.websocket`."""

from __future__ import annotations

import itertools
import logging
import selectors
import socket
import ssl as _ssl
import threading
import time
from typing import Any, Iterable, List, Optional, Sequence, Set, Tuple

from .connection import CONNECTION_OPTIONS, DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT, Connection
from .errors import HandshakeError
from .filters import Filter, run_close, run_connect, run_message, run_open
from .frame import CLOSE_GOING_AWAY
from .handshake import Headers, Reply, Request, build_response
from .message import Message
from .permessage_deflate import default_extensions
from .websocket import websocket

__all__ = ["Server", "ServerConnection", "send_all"]

logger = logging.getLogger("twspy.server")



class ServerConnection(Connection):
    """A client of a :class:`Server`: a Connection whose handlers call the server's.

    Attributes: ``server``; ``id``, a string unique in the process (and across a cluster
    when a :class:`~twspy.hub.Hub` is attached: ``"<node id>.<n>"``); ``request``, ``path``
    and ``headers`` of the upgrade request; ``address`` of the peer.
    """

    _ids = itertools.count(1)
    _refused = False

    def __init__(self, server: "Server", sock: websocket, **options: Any) -> None:
        self.server = server
        n = next(self._ids)
        self.id = "%s.%d" % (server.node_id, n) if server.node_id else str(n)
        request = getattr(sock, "request", None)  # None for sockets made without a handshake
        self.request: Request = request or Request("GET", sock.path or "/", "HTTP/1.1", Headers())
        self.path: str = sock.path or "/"
        self.headers: Headers = sock.headers or Headers()
        self.address = sock.address
        super().__init__(sock, **options)

    # Each handler runs the server's filters first (in list order), then the server's handler.
    def onopen(self) -> None:
        server = self.server
        with server._lock:  # a member of server.clients before the handler runs (it may broadcast)
            server.clients.add(self)
        if server.filters and not run_open(server.filters, self):
            self._refused = True  # a filter closed it: the server's onopen/onclose never see it
            return
        server.onopen(self)

    def onmessage(self, message: Message) -> None:
        server = self.server
        if server.filters:
            filtered = run_message(server.filters, self, message)
            if filtered is None:
                return
            message = filtered
        server.onmessage(self, message)

    def onping(self, payload: bytes) -> None:
        self.server.onping(self, payload)

    def onpong(self, payload: bytes) -> None:
        self.server.onpong(self, payload)

    def onclose(self, code: int, reason: str) -> None:
        server = self.server
        if server.filters:
            run_close(server.filters, self, code, reason)
        if not self._refused:
            server.onclose(self, code, reason)

    def onerror(self, exc: BaseException) -> None:
        self.server.onerror(self, exc)

    def __repr__(self) -> str:
        # The path without its query, which may carry a credential (?token=...).
        return "<client #%s %s %s>" % (self.id, _fmt_address(self.address), self.path.partition("?")[0])


class Server:
    """A WebSocket server with a thread per client.

    Subclass it and override any of these (each may be overridden; they run in the
    client's thread):

    - ``onopen(client)``
    - ``onmessage(client, message)``
    - ``onping(client, payload)`` / ``onpong(client, payload)``
    - ``onclose(client, code, reason)`` — exactly once per client
    - ``onerror(client, exc)`` — after a protocol error or an exception in a handler
      (which is logged with its traceback and closes that client with 1011)
    - ``select_subprotocol(client_protocols, server_protocols)``
    - ``process_request(path, headers)`` — before the upgrade: None to go on, or an HTTP
      answer (a status, ``(status, body)`` or ``(status, headers, body)``) sent instead,
      e.g. 200 for a health check or 401; runs in the client's thread

    Or compose it from ``filters`` (see :mod:`twspy.filters`): they run in list order
    before the server's own handlers.

    Then ``run()``; ``shutdown()`` from any thread (or Ctrl-C) stops it.

    Args:
        address: ``(host, port)`` to listen on; port 0 picks a free port (see ``address``).
        ssl: an ``ssl.SSLContext`` with the certificate, for wss://.
        backlog_size: the listen() backlog.
        max_connections: clients served at once (handshaking included); more get HTTP 503.
        filters: :class:`~twspy.filters.Filter` objects run in order on connect, open, each
            message and close (``server.filters`` is the list; it may be changed before ``run``).
        hub: a :class:`~twspy.hub.Hub` to attach (topics, cluster-wide broadcast and send-to-id).
        close_timeout, max_queue, max_outbox, ping_interval (default 20 s), ping_timeout
            (default 20 s), queue_messages: passed to each client's Connection.
        **websocket_kwargs: protocols, extensions (default: permessage-deflate; ``[]`` for
            none), trusted_origins, locations, max_size,
            max_header_size, handshake_timeout: see :class:`~twspy.websocket.websocket`.
    """

    connection_class = ServerConnection

    def __init__(self, address: Tuple[str, int] = ("127.0.0.1", 8000), ssl: Optional[_ssl.SSLContext] = None,
                 backlog_size: int = 128, max_connections: int = 1024, filters: Sequence[Filter] = (),
                 hub: Any = None, **websocket_kwargs: Any) -> None:
        self.connection_options = {k: websocket_kwargs.pop(k) for k in CONNECTION_OPTIONS if k in websocket_kwargs}
        self.connection_options.setdefault("ping_interval", DEFAULT_PING_INTERVAL)
        self.connection_options.setdefault("ping_timeout", DEFAULT_PING_TIMEOUT)
        if websocket_kwargs.get("extensions") is None:
            websocket_kwargs["extensions"] = default_extensions()  # permessage-deflate; extensions=[] for none
        host = address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = websocket(ssl=ssl, family=family, select_subprotocol=self.select_subprotocol,
                              process_request=self._process_request, **websocket_kwargs)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(backlog_size)
        self.address: Tuple[Any, ...] = self.sock.getsockname()
        self.max_connections = max_connections
        self.clients: Set[ServerConnection] = set()
        self._threads: Set[threading.Thread] = set()
        self._handshaking: Set[socket.socket] = set()  # raw sockets still in the opening handshake
        self._reserved = 0  # extra clients served over an existing socket (reserve_connection)
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._running = threading.Event()
        self._loop_done = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock.sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self.filters: List[Filter] = list(filters)
        self.node_id: Optional[str] = None  # set by an attached hub: client ids become routable
        self.hub: Any = None
        if hub is not None:
            hub.attach(self)

    # -- handlers (may be overridden) -------------------------------------------------------
    def onopen(self, client: ServerConnection) -> None:
        """A client finished its handshake."""

    def onmessage(self, client: ServerConnection, message: Message) -> None:
        """A client sent a message."""

    def onping(self, client: ServerConnection, payload: bytes) -> None:
        """A client sent a ping (already answered)."""

    def onpong(self, client: ServerConnection, payload: bytes) -> None:
        """A client sent a pong."""

    def onclose(self, client: ServerConnection, code: int, reason: str) -> None:
        """A client's connection closed (``code`` 1006 if it vanished)."""

    def onerror(self, client: ServerConnection, exc: BaseException) -> None:
        """A client's connection failed."""

    def select_subprotocol(self, client_protocols: List[str], server_protocols: Sequence[str]) -> Optional[str]:
        """Pick the subprotocol: by default the first of the client's that the server supports."""
        for protocol in client_protocols:
            if protocol in server_protocols:
                return protocol
        return None

    def process_request(self, path: str, headers: Headers) -> Reply:
        """Answer a request before the upgrade: None to go on (the default), or an HTTP reply."""
        return None

    def _process_request(self, request: Request) -> Reply:
        reply = self.process_request(request.path, request.headers)
        if reply is None and self.filters:
            reply = run_connect(self.filters, request)
        return reply

    # -- serving ---------------------------------------------------------------------------
    def run(self) -> None:
        """Accept and serve clients until :meth:`shutdown` (or Ctrl-C)."""
        logger.info("listening on %s", _fmt_address(self.address))
        self._running.set()
        try:
            while not self._stopping:
                for key, _ in self._selector.select():
                    if key.fileobj is self._wake_r or self._stopping:
                        break
                    self._accept()
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            self._loop_done.set()
            self.shutdown()

    def serve_in_thread(self) -> threading.Thread:
        """Start :meth:`run` in a daemon thread (handy for tests and embedding)."""
        thread = threading.Thread(target=self.run, name="twspy-server", daemon=True)
        thread.start()
        self._running.wait(5)
        return thread

    def _accept(self) -> None:
        try:
            sock, address = self.sock.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: log, back off a little, keep serving
            logger.warning("accept failed: %s", exc)
            time.sleep(0.01)
            return
        with self._lock:
            busy = len(self._threads) + self._reserved >= self.max_connections
        if busy:
            logger.warning("%s: too many connections (%d); answering 503", _fmt_address(address),
                           self.max_connections)
            try:
                sock.send(build_response(503, (("Retry-After", "1"),), b"too many connections\n"),
                          getattr(socket, "MSG_DONTWAIT", 0))
            except OSError:
                pass
            sock.close()
            return
        thread = threading.Thread(target=self._serve, args=(sock, address), daemon=True,
                                  name="twspy-client-%s" % _fmt_address(address))
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _serve(self, sock: socket.socket, address: Any) -> None:
        client: Optional[ServerConnection] = None
        try:
            ws = self.sock._child(sock)
            ws.address = address
            with self._lock:
                self._handshaking.add(sock)
            try:
                ws.server_handshake()
            except HandshakeError as exc:
                logger.info("%s: handshake refused: %s", _fmt_address(address), exc)
                return
            except (OSError, TimeoutError, ValueError) as exc:
                # Probes, port scanners and slow clients end here: not an error of ours.
                logger.info("%s: handshake failed: %s", _fmt_address(address), exc or type(exc).__name__)
                return
            finally:
                with self._lock:
                    self._handshaking.discard(sock)
            if self._stopping:
                ws.close()
                return
            for codec in ws.extensions:  # an extension that replaces Connection (mux) serves ws itself
                serve_connection = getattr(codec, "serve_connection", None)
                if serve_connection is not None:
                    serve_connection(self, ws)
                    return
            client = self.connection_class(self, ws, **self.connection_options)
            with self._lock:
                self.clients.add(client)
            logger.info("%r: open", client)
            if self._stopping:
                client.start_close(self._stop_code, self._stop_reason)
            client.receive_forever()
        except Exception:
            logger.exception("%s: unexpected error", _fmt_address(address))
            if client is not None:
                client.abort()
        finally:
            if client is not None:
                logger.info("%r: closed %s %s", client, client.close_code, client.close_reason)
                with self._lock:
                    self.clients.discard(client)
            else:
                try:
                    sock.close()
                except OSError:  # pragma: no cover
                    pass
            with self._lock:
                self._threads.discard(threading.current_thread())

    def broadcast(self, message: Any, exclude: Any = ()) -> None:
        """Send ``message`` to every open client (but those in ``exclude``).

        Encoded once for all clients that can share frames; never blocks on a slow client
        (see :meth:`Connection.send_nowait`).
        """
        excluded = exclude if isinstance(exclude, (set, frozenset, list, tuple)) else (exclude,)
        with self._lock:
            clients = [client for client in self.clients if client not in excluded]
        send_all(clients, message)

    _stop_code = CLOSE_GOING_AWAY
    _stop_reason = ""

    @property
    def stopping(self) -> Optional[Tuple[int, str]]:
        """None while serving; the ``(code, reason)`` given to :meth:`shutdown` once it began."""
        return (self._stop_code, self._stop_reason) if self._stopping else None

    def reserve_connection(self) -> bool:
        """Count one more client against ``max_connections``, for a transport that serves several
        clients over one socket (each mux channel); False when full or stopping."""
        with self._lock:
            if self._stopping or len(self._threads) + self._reserved >= self.max_connections:
                return False
            self._reserved += 1
            return True

    def release_connection(self, client: Optional[ServerConnection] = None) -> None:
        """Give back a :meth:`reserve_connection` and take ``client`` (if any) out of ``clients``."""
        with self._lock:
            self._reserved -= 1
            self.clients.discard(client)  # type: ignore[arg-type]

    def shutdown(self, code: int = CLOSE_GOING_AWAY, reason: str = "", timeout: float = 2.0) -> None:
        """Stop accepting, close every client with ``code`` and join their threads.

        Clients that have not finished the closing handshake within ``timeout`` seconds
        are disconnected. Safe to call from any thread, more than once.
        """
        with self._lock:
            first = not self._stopping
            self._stopping = True
            self._stop_code, self._stop_reason = code, reason
        if not first:
            self._stopped.wait(timeout + 1)
            return
        try:
            self._wake_w.send(b"x")
        except OSError:  # pragma: no cover
            pass
        deadline = time.monotonic() + timeout
        try:
            # Stop accepting first; the accept loop owns the selector until it has left it.
            if self._running.is_set():
                self._loop_done.wait(timeout)
            self._selector.close()
            self.sock.close()
            with self._lock:
                clients = list(self.clients)
                handshaking = list(self._handshaking)
            for raw in handshaking:  # not open yet: nothing to close politely
                try:
                    raw.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for client in clients:
                try:
                    client.start_close(code, reason)
                except Exception:  # pragma: no cover - best effort
                    logger.debug("start_close failed", exc_info=True)
            self._join(deadline)
            with self._lock:
                clients = list(self.clients)
            for client in clients:
                client.abort()
            self._join(time.monotonic() + 1.0)
        finally:
            self._wake_r.close()
            self._wake_w.close()
            self._stopped.set()
            logger.info("stopped")

    def _join(self, deadline: float) -> None:
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                return
            for thread in threads:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                thread.join(left)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def send_all(clients: Iterable[Connection], message: Any) -> None:
    """Send ``message`` to each client without blocking (:meth:`Connection.send_nowait`),
    encoding its frame once for every client that can share it."""
    prepared = None
    for client in clients:
        data = None
        if not client._codecs:
            if prepared is None:
                prepared = client.prepare(message)
            data = prepared
        client.send_nowait(message, data)


def _fmt_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return "[%s]:%s" % (host, address[1]) if ":" in str(host) else "%s:%s" % (host, address[1])
    return str(address)
