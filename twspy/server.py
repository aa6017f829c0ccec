"""Server: a thread per client over a listening :class:`~twspy.websocket.websocket`."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import secrets
import selectors
import socket
import ssl as _ssl
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

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
from .errors import HandshakeError
from .extension import Extension
from .filters import Filter, run_close, run_connect, run_message, run_open
from .frame import CLOSE_GOING_AWAY
from .handshake import (
    MAX_HEADER_SIZE,
    Headers,
    Reply,
    Request,
    build_response,
    error_response,
    head_end,
    legacy_hook,
)
from .message import Message
from .permessage_deflate import default_extensions
from .websocket import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_SIZE, DEFAULT_WRITE_TIMEOUT, websocket

__all__ = ["Server", "ServerConnection", "send_all"]

logger = logging.getLogger("twspy.server")

DEFAULT_MAX_PENDING = 4096  # sockets without a whole request head yet: no thread, a descriptor each
_ACCEPT_BURST = 64          # accept() calls per wake-up before the pending sockets get a turn
_BACKOFF_MIN, _BACKOFF_MAX = 0.01, 1.0  # seconds accept() pauses after a failure (EMFILE), doubling
_BUSY = build_response(503, (("Retry-After", "1"),), b"too many connections\n")


class _Pending:
    """A socket accepted by run() that has not sent a whole request head (nor finished TLS) yet."""

    __slots__ = ("sock", "fd", "address", "deadline", "buf", "tls")

    def __init__(self, sock: socket.socket, address: Any, deadline: float | None) -> None:
        self.sock, self.address, self.deadline = sock, address, deadline
        self.fd = sock.fileno()  # the same once wrapped in TLS
        self.buf = bytearray()
        self.tls = False  # the TLS handshake is still running


class _Throttle:
    """Warnings a hostile peer can trigger, at most one per kind every ``interval`` seconds;
    the next one says how many were left out."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self.log, self.interval = log, interval
        self._next: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return
            self._next[kind] = now + self.interval
            skipped = self._skipped.pop(kind, 0)
        if skipped:
            msg += " (and %d more like it)"
            args += (skipped,)
        self.log.warning(msg, *args)



class ServerConnection(Connection):
    """A client of a :class:`Server`: a Connection whose handlers call the server's.

    Attributes: ``server``; ``id``, a string unique in the process (and across a cluster
    when a :class:`~twspy.hub.Hub` is attached: ``"<node id>.<n>.<16 random hex digits>"``, which
    another client cannot guess); ``request``, ``path``
    and ``headers`` of the upgrade request; ``address`` of the peer.
    """

    _ids = itertools.count(1)
    _refused = False

    def __init__(self, server: Server, sock: websocket, **options: Any) -> None:
        self.server = server
        n = next(self._ids)
        self.id = "%s.%d.%s" % (server.node_id, n, secrets.token_hex(8)) if server.node_id else str(n)
        request = getattr(sock, "request", None)  # None for sockets made without a handshake
        self.request: Request = request or Request("GET", sock.path or "/", "HTTP/1.1", Headers())
        self.path: str = sock.path or "/"
        self.headers: Headers = sock.headers or Headers()
        self.address = sock.address
        super().__init__(sock, **options)

    # Each handler runs the server's filters first (in list order), then the server's handler.
    # A SystemExit in any of them (sys.exit() in a handler) becomes a RuntimeError: Connection then
    # closes this client with 1011 like after any other handler failure, instead of the exception
    # ending the thread with the peer left open.
    def onopen(self) -> None:
        server = self.server
        with server._lock:  # a member of server.clients before the handler runs (it may broadcast)
            server.clients.add(self)
        try:
            if server.filters and not run_open(server.filters, self):
                self._refused = True  # a filter closed it: the server's onopen/onclose never see it
                return
            server.onopen(self)
        except SystemExit as exc:
            raise _exited("onopen", exc) from exc

    def onmessage(self, message: Message) -> None:
        server = self.server
        try:
            if server.filters:
                filtered = run_message(server.filters, self, message)
                if filtered is None:
                    return
                message = filtered
            server.onmessage(self, message)
        except SystemExit as exc:
            raise _exited("onmessage", exc) from exc

    def onping(self, payload: bytes) -> None:
        try:
            self.server.onping(self, payload)
        except SystemExit as exc:
            raise _exited("onping", exc) from exc

    def onpong(self, payload: bytes) -> None:
        try:
            self.server.onpong(self, payload)
        except SystemExit as exc:
            raise _exited("onpong", exc) from exc

    def onclose(self, code: int, reason: str) -> None:
        server = self.server
        try:
            if server.filters:
                run_close(server.filters, self, code, reason)
            if not self._refused:
                server.onclose(self, code, reason)
        except SystemExit as exc:
            raise _exited("onclose", exc) from exc

    def onerror(self, exc: BaseException) -> None:
        try:
            self.server.onerror(self, exc)
        except SystemExit as exit_exc:
            raise _exited("onerror", exit_exc) from exit_exc

    def __repr__(self) -> str:
        # The path without its query, which may carry a credential (?token=...).
        return "<client #%s %s %s>" % (self.id, _fmt_address(self.address), self.path.partition("?")[0])


class Server:
    """A WebSocket server: one selector loop reads request heads, then a thread per client.

    Subclass it and override any of these (each may be overridden; they run in the
    client's thread):

    - ``onopen(client)``
    - ``onmessage(client, message)``
    - ``onping(client, payload)`` / ``onpong(client, payload)``
    - ``onclose(client, code, reason)`` — exactly once per client
    - ``onerror(client, exc)`` — after a protocol error or an exception in a handler
      (which is logged with its traceback and closes that client with 1011)
    - ``select_subprotocol(client_protocols, server_protocols)``
    - ``process_request(request)`` — before the upgrade, with the whole
      :class:`~twspy.handshake.Request` (``method``, ``path``, ``headers``, ``address``,
      ``state``): None to go on, or an HTTP answer (a status, ``(status, body)`` or
      ``(status, headers, body)``) sent instead, e.g. 200 for a health check or 401; runs in
      the client's thread. An override taking ``(path, headers)`` still works (deprecated).

    Or compose it from ``filters`` (see :mod:`twspy.filters`): they run in list order
    before the server's own handlers.

    Then ``run()``; ``shutdown()`` from any thread (or Ctrl-C) stops it.

    Until a client has sent its whole request head it costs no thread: ``run()`` reads the
    heads of every such socket (and their TLS handshakes) in one selector loop, within
    ``handshake_timeout``. So sockets that connect and send nothing cannot take the slots
    of real clients: they wait in ``max_pending``, the oldest dropped first when it is full.

    Args:
        address: ``(host, port)`` to listen on; port 0 picks a free port (see ``address``).
        ssl: an ``ssl.SSLContext`` with the certificate, for wss://.
        backlog_size: the listen() backlog.
        max_connections: clients served at once, each with its thread (from a complete
            request head on); more get HTTP 503. Needs ``ulimit -n`` above it.
        filters: :class:`~twspy.filters.Filter` objects run in order on connect, open, each
            message and close (``server.filters`` is the list; it may be changed before ``run``).
        hub: a :class:`~twspy.hub.Hub` to attach (topics, cluster-wide broadcast and send-to-id).
        max_pending: sockets accepted that have not sent a whole request head yet (default
            4096); beyond it the oldest is closed. They cost a file descriptor and a few
            hundred bytes each, no thread.
        unix_path: listen on this Unix domain socket instead of ``address`` (POSIX; a stale
            socket file there is replaced, and removed at shutdown).
        protocols, extensions (default: permessage-deflate; ``[]`` for none), trusted_origins,
            locations, max_size, max_header_size, handshake_timeout, write_timeout: see
            :class:`~twspy.websocket.websocket`.
        close_timeout, ping_interval (default 20 s), ping_timeout (default 20 s), max_queue,
            max_queue_bytes, max_outbox, max_fragments, queue_messages, background: passed to
            each client's :class:`~twspy.connection.Connection`. The README's option table
            lists every option with its default.
    """

    connection_class = ServerConnection
    _legacy_hook = False  # process_request(path, headers): the signature before twspy 0.x took a Request

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "process_request" in cls.__dict__:  # warned about at the class statement
            cls._legacy_hook = legacy_hook(cls.__dict__["process_request"], "%s.process_request" % cls.__name__,
                                           method=True)

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 8000), ssl: _ssl.SSLContext | None = None,
                 backlog_size: int = 128, max_connections: int = 1024, filters: Sequence[Filter] = (),
                 hub: Any = None, *, max_pending: int = DEFAULT_MAX_PENDING, unix_path: str | None = None,
                 protocols: Sequence[str] = (), extensions: Sequence[Extension] | None = None,
                 trusted_origins: Sequence[str] = (), locations: Sequence[str] = (),
                 max_size: int | None = DEFAULT_MAX_SIZE, max_header_size: int = MAX_HEADER_SIZE,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
                 write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
                 close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
                 ping_interval: float | None = DEFAULT_PING_INTERVAL,
                 ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
                 max_queue: int = DEFAULT_MAX_QUEUE, max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
                 max_outbox: int = DEFAULT_MAX_OUTBOX, max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
                 queue_messages: bool = False, background: bool = False) -> None:
        # What each client's Connection gets (also the proxy's upstream leg and the mux channels).
        self.connection_options: dict[str, Any] = dict(
            close_timeout=close_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout,
            max_queue=max_queue, max_queue_bytes=max_queue_bytes, max_outbox=max_outbox,
            max_fragments=max_fragments, queue_messages=queue_messages)
        if background:
            self.connection_options["background"] = True
        if extensions is None:
            extensions = default_extensions()  # permessage-deflate; extensions=[] for none
        if unix_path is not None:
            if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows
                raise ValueError("unix_path needs Unix domain sockets (POSIX)")
            family = socket.AF_UNIX
            _remove_stale_socket(unix_path)
        else:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.unix_path = unix_path
        self.sock = websocket(ssl=ssl, family=family, select_subprotocol=self.select_subprotocol,
                              process_request=self._answer_request, protocols=protocols, extensions=extensions,
                              trusted_origins=trusted_origins, locations=locations, max_size=max_size,
                              max_header_size=max_header_size, handshake_timeout=handshake_timeout,
                              write_timeout=write_timeout)
        try:
            self.sock.bind(unix_path if unix_path is not None else address)  # SO_REUSEADDR on POSIX
            self.sock.listen(backlog_size)
        except BaseException:
            self.sock.close()
            raise
        self.sock.sock.setblocking(False)  # run() accepts in bursts until EAGAIN
        self.address: Any = self.sock.getsockname()
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.clients: set[ServerConnection] = set()
        self._threads: set[threading.Thread] = set()
        self._handshaking: set[socket.socket] = set()  # sockets whose thread is in the opening handshake
        self._pending: dict[int, _Pending] = {}  # run()'s own, by fd, oldest first: accepted, head not complete
        self._received: dict[socket.socket, tuple[bytes, float | None]] = {}  # head read, for _serve
        self._hook = threading.local()  # per client thread: who answered its request (for the log)
        self._log = _Throttle(logger)
        self._backoff = 0.0
        self._resume_accept: float | None = None  # accept() paused (out of fds) until then
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
        self.filters: list[Filter] = list(filters)
        self.node_id: str | None = None  # set by an attached hub: client ids become routable
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

    def select_subprotocol(self, client_protocols: list[str], server_protocols: Sequence[str]) -> str | None:
        """Pick the subprotocol: by default the first of the client's that the server supports."""
        for protocol in client_protocols:
            if protocol in server_protocols:
                return protocol
        return None

    def process_request(self, request: Request) -> Reply:
        """Answer a request before the upgrade: None to go on (the default), or an HTTP reply.

        ``request.method`` tells ``POST /healthz`` from ``GET /healthz``; a reply's own
        ``Content-Type`` is sent as given.
        """
        return None

    def _process_request(self, request: Request) -> Reply:
        # process_request, then each filter's on_connect: the first reply wins; _hook.by names it.
        if self._legacy_hook:
            reply = self.process_request(request.path, request.headers)  # type: ignore[call-arg,arg-type]
        else:
            reply = self.process_request(request)
        if reply is not None:
            self._hook.by = "process_request"
            return reply
        for flt in self.filters:
            reply = run_connect((flt,), request)
            if reply is not None:
                self._hook.by = "filter %s" % type(flt).__name__
                return reply
        return None

    def _answer_request(self, request: Request) -> Reply:
        """The websocket's request hook: :meth:`_process_request` (which subclasses extend)."""
        self._hook.by = None
        reply = self._process_request(request)
        if reply is not None and self._hook.by is None:
            self._hook.by = type(self).__name__
        return reply

    # -- serving ---------------------------------------------------------------------------
    def run(self) -> None:
        """Accept clients and read their request heads until :meth:`shutdown` (or Ctrl-C)."""
        logger.info("listening on %s", _fmt_address(self.address))
        self._running.set()
        try:
            while not self._stopping:
                for key, events in self._selector.select(self._next_timeout()):
                    if key.fileobj is self._wake_r or self._stopping:
                        break
                    if key.data is None:
                        self._accept()
                    else:
                        self._advance(key.data, events)
                self._expire()
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            for pending in list(self._pending.values()):
                self._drop(pending)
            self._loop_done.set()
            self.shutdown()

    def serve_in_thread(self) -> threading.Thread:
        """Start :meth:`run` in a daemon thread (handy for tests and embedding)."""
        thread = threading.Thread(target=self.run, name="twspy-server", daemon=True)
        thread.start()
        self._running.wait(5)
        return thread

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        wake = []
        if self._pending:  # accepted in order, one timeout for all: the first ends first
            deadline = next(iter(self._pending.values())).deadline
            if deadline is not None:
                wake.append(deadline)
        if self._resume_accept is not None:
            wake.append(self._resume_accept)
        return max(0.0, min(wake) - now) if wake else None

    def _accept(self) -> None:
        listener = self.sock.sock
        for _ in range(_ACCEPT_BURST):  # bounded: the sockets already pending get their turn too
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._pending:
                    # Out of descriptors: the socket waiting longest for a head gives up its own.
                    self._drop(next(iter(self._pending.values())), "out of file descriptors")
                    continue
                self._pause_accept(exc)
                return
            self._backoff = 0.0
            if len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending.values()))
                self._log.warning("pending", "%d sockets without a request head (max_pending); closing the oldest, "
                                  "%s", self.max_pending, _fmt_address(oldest.address))
                self._drop(oldest)
            self._add_pending(sock, address)

    def _pause_accept(self, exc: OSError) -> None:
        """accept() failed (EMFILE, ENOBUFS, ...): stop accepting for a while, doubling up to a second."""
        self._backoff = min(max(self._backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
        self._log.warning("accept", "accept failed: %s; pausing accept for %.2f s", exc, self._backoff)
        try:
            self._selector.unregister(self.sock.sock)
        except (KeyError, ValueError):  # pragma: no cover - already paused
            pass
        self._resume_accept = time.monotonic() + self._backoff

    def _add_pending(self, sock: socket.socket, address: Any) -> None:
        timeout = self.sock.handshake_timeout
        pending = _Pending(sock, address, None if timeout is None else time.monotonic() + timeout)
        try:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, pending)
        except (OSError, ValueError) as exc:  # pragma: no cover - a socket closed under us
            logger.info("%s: handshake failed: %s", _fmt_address(address), exc)
            sock.close()
            return
        # TLS starts with the first byte from the client (its ClientHello): a socket that sends
        # nothing costs no TLS state (measured: ~10 KiB each when wrapped at once).
        pending.tls = self.sock.ssl is not None
        self._pending[pending.fd] = pending

    def _advance(self, pending: _Pending, events: int) -> None:
        """Go on with a socket that became ready: its TLS handshake, then its request head."""
        sock = pending.sock
        try:
            if pending.tls:
                if not isinstance(sock, _ssl.SSLSocket):
                    self._selector.unregister(sock)
                    context: _ssl.SSLContext = self.sock.ssl  # type: ignore[assignment]  # tls: set
                    pending.sock = sock = context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False)
                    self._selector.register(sock, selectors.EVENT_READ, pending)
                try:
                    sock.do_handshake()
                except _ssl.SSLWantReadError:
                    return self._want(pending, selectors.EVENT_READ)
                except _ssl.SSLWantWriteError:
                    return self._want(pending, selectors.EVENT_WRITE)
                pending.tls = False
                self._want(pending, selectors.EVENT_READ)
            max_size = self.sock.max_header_size
            while True:
                try:
                    chunk = sock.recv(4096)
                except (BlockingIOError, _ssl.SSLWantReadError):
                    return
                except _ssl.SSLWantWriteError:  # pragma: no cover - TLS renegotiation
                    return self._want(pending, selectors.EVENT_WRITE)
                if not chunk:
                    raise ConnectionResetError("connection closed before a request head")
                scanned = len(pending.buf)
                pending.buf += chunk
                if head_end(pending.buf, scanned, max_size) >= 0:
                    return self._dispatch(pending)
        except HandshakeError as exc:  # 400 (bare LF) or 431, answered now without a thread
            logger.info("%s: handshake refused: %s", _fmt_address(pending.address), exc)
            self._drop(pending, answer=error_response(exc))
        except (OSError, ValueError) as exc:  # probes, scanners, TLS failures: not an error of ours
            logger.info("%s: handshake failed: %s", _fmt_address(pending.address), exc or type(exc).__name__)
            self._drop(pending)
        except Exception:  # a bug of ours must cost this socket only, never the loop (and every client)
            logger.exception("%s: unexpected error before the handshake", _fmt_address(pending.address))
            self._drop(pending)

    def _want(self, pending: _Pending, event: int) -> None:
        self._selector.modify(pending.sock, event, pending)

    def _expire(self) -> None:
        now = time.monotonic()
        if self._resume_accept is not None and now >= self._resume_accept:
            self._resume_accept = None
            self._selector.register(self.sock.sock, selectors.EVENT_READ)
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline is None or oldest.deadline > now:
                return
            logger.debug("%s: no request head within the handshake timeout", _fmt_address(oldest.address))
            self._drop(oldest)

    def _drop(self, pending: _Pending, why: str = "", answer: bytes = b"") -> None:
        """Close a socket of the loop's, after a best-effort non-blocking ``answer``."""
        if why:
            logger.debug("%s: closed: %s", _fmt_address(pending.address), why)
        self._pending.pop(pending.fd, None)
        try:
            self._selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass
        _close(pending.sock, answer)

    def _dispatch(self, pending: _Pending) -> None:
        """A whole request head arrived: the rest of the handshake and the client get a thread."""
        self._pending.pop(pending.fd, None)
        self._selector.unregister(pending.sock)
        sock, address = pending.sock, pending.address
        with self._lock:
            busy = len(self._threads) + self._reserved >= self.max_connections
        if busy:
            self._log.warning("busy", "%s: too many connections (%d); answering 503", _fmt_address(address),
                              self.max_connections)
            _close(sock, _BUSY)
            return
        sock.setblocking(True)
        thread = threading.Thread(target=self._serve, args=(sock, address), daemon=True,
                                  name="twspy-client-%s" % _fmt_address(address))
        with self._lock:
            self._threads.add(thread)
            self._received[sock] = (bytes(pending.buf), pending.deadline)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": pid limits, TasksMax, RLIMIT_NPROC
            with self._lock:
                self._threads.discard(thread)
                self._received.pop(sock, None)
            self._log.warning("thread", "%s: cannot start a thread (%s); answering 503", _fmt_address(address), exc)
            _close(sock, _BUSY)

    def _serve(self, sock: socket.socket, address: Any) -> None:
        client: ServerConnection | None = None
        ws: websocket | None = None
        try:
            with self._lock:
                received, deadline = self._received.pop(sock, (b"", None))
                self._handshaking.add(sock)
            ws = self.sock.child(sock)
            ws.address = address
            self._hook.by = None
            try:
                # The deadline set at accept() (handshake_timeout) goes on; -1: none set by run().
                ws.server_handshake(-1.0 if deadline is None else max(0.0, deadline - time.monotonic()),
                                    received=received)
            except HandshakeError as exc:
                self._log_refusal(ws, address, exc)
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
        except BaseException as exc:  # SystemExit from a handler too: the peer must not be left open
            logger.error("%s: unexpected %s", _fmt_address(address), type(exc).__name__, exc_info=exc)
            if client is not None:
                client.abort()
        finally:
            if client is not None:
                logger.info("%r: closed %s %s", client, client.close_code, client.close_reason)
                with self._lock:
                    self.clients.discard(client)
            else:
                try:
                    (ws or sock).close()
                except OSError:  # pragma: no cover
                    pass
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _log_refusal(self, ws: websocket, address: Any, exc: HandshakeError) -> None:
        """One line per request answered instead of upgraded: DEBUG for a hook's 2xx/3xx (a health
        check), INFO otherwise, naming who answered (process_request, a filter, the server)."""
        by = getattr(self._hook, "by", None)
        request = ws.request
        if by is None or request is None:
            logger.info("%s: handshake refused: %s", _fmt_address(address), exc)
            return
        status = exc.status or 0
        logger.log(logging.DEBUG if status < 400 else logging.INFO, "%s: %s %r answered %d by %s",
                   _fmt_address(address), request.method, request.path.partition("?")[0], status, by)

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
    def stopping(self) -> tuple[int, str] | None:
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

    def release_connection(self, client: ServerConnection | None = None) -> None:
        """Give back a :meth:`reserve_connection` and take ``client`` (if any) out of ``clients``."""
        with self._lock:
            self._reserved -= 1
            if client is not None:
                self.clients.discard(client)

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
            if self.unix_path is not None:
                _remove_stale_socket(self.unix_path)
            self._stopped.set()
            logger.info("stopped")

    def _join(self, deadline: float) -> None:
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                return
            if all(thread.ident is None for thread in threads):
                return  # added but not started yet (or never: see _dispatch): nothing to join
            for thread in threads:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if thread.ident is not None:
                    thread.join(left)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def send_all(clients: Iterable[Connection], message: Any) -> None:
    """Send ``message`` to each client without blocking (:meth:`Connection.send_nowait`),
    encoding its frame once for every client that can share it (``can_share_frames``)."""
    prepared = None
    for client in clients:
        data = None
        if getattr(client, "can_share_frames", False):  # a shell without it never shares (ASGI)
            if prepared is None:
                prepared = client.prepare(message)
            data = prepared
        client.send_nowait(message, data)


def _fmt_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return "[%s]:%s" % (host, address[1]) if ":" in str(host) else "%s:%s" % (host, address[1])
    if isinstance(address, (str, bytes)):  # AF_UNIX: the path (a client's is usually empty)
        return "unix:%s" % (address.decode("utf-8", "replace") if isinstance(address, bytes) else address)
    return str(address)


def _exited(handler: str, exc: SystemExit) -> RuntimeError:
    return RuntimeError("%s called sys.exit(%r)" % (handler, exc.code))


def _close(sock: socket.socket, answer: bytes = b"") -> None:
    """Send ``answer`` if the socket takes it at once (never blocks), then close."""
    try:
        if answer:
            sock.setblocking(False)
            sock.send(answer)
    except (OSError, ValueError):
        pass
    try:
        sock.close()
    except OSError:  # pragma: no cover
        pass


def _remove_stale_socket(path: str) -> None:
    """Remove a Unix socket file left at ``path`` (a server's that is gone); nothing else."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
