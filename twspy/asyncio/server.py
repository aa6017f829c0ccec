"""An asyncio WebSocket server: :func:`serve` a handler, or subclass :class:`Server`.

Each client is a :class:`ServerConnection` whose opening handshake runs in the sans-I/O
core (:class:`twspy.handshake_protocol.ServerProtocol`), and one task that runs the handler
(or the ``on*`` methods) once the connection is open.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl as _ssl
import threading
from collections.abc import Awaitable, Sequence
from typing import Any, Callable

from ..errors import ConnectionClosed, HandshakeError, InvalidState
from ..filters import Filter, run_close, run_connect, run_message, run_open
from ..frame import CLOSE_GOING_AWAY, CLOSE_UNABLE
from ..handshake import MAX_HEADER_SIZE, Headers, Reply, Request, legacy_hook
from ..handshake_protocol import ServerProtocol
from ..message import Message
from ..permessage_deflate import default_extensions
from ..protocol import DEFAULT_MAX_SIZE, Ping, Pong
from .connection import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_OUTBOX,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    Connection,
    MessageLike,
)

__all__ = ["Server", "ServerConnection", "SyncView", "serve", "DEFAULT_HANDSHAKE_TIMEOUT", "DEFAULT_MAX_CONNECTIONS"]

logger = logging.getLogger("twspy.asyncio.server")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0   # seconds for TLS + the HTTP upgrade, as the threaded server
DEFAULT_MAX_CONNECTIONS = 1024     # clients at once (handshaking included); HTTP 503 beyond

Handler = Callable[["ServerConnection"], Awaitable[None]]


class ServerConnection(Connection):
    """A client of a :class:`Server`.

    Attributes: ``server``; ``id``, a string unique in the process; ``request``, ``path`` and
    ``headers`` of the upgrade request (once the handshake is done); ``address`` of the peer.
    """

    _ids = itertools.count(1)

    def __init__(self, server: Server, core: ServerProtocol, **options: Any) -> None:
        super().__init__(core, **options)
        self.server = server
        n = next(self._ids)
        # Routable across a cluster when a hub is attached: "<node id>.<n>", as the threaded server.
        self.id = "%s.%d" % (server.node_id, n) if server.node_id else str(n)
        self.task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return self.request.path if self.request is not None else "/"

    @property
    def headers(self) -> Headers:
        return self.request.headers if self.request is not None else Headers()

    @property
    def sync(self) -> SyncView:
        """This client as the synchronous :mod:`twspy.filters` expect it (``send`` never waits)."""
        view = self.__dict__.get("_sync")
        if view is None:
            view = self.__dict__["_sync"] = SyncView(self)
        return view

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.core.address = transport.get_extra_info("peername")  # type: ignore[attr-defined]
        super().connection_made(transport)
        self.server._connection_made(self)

    def connection_open(self) -> None:
        # A member of server.clients as soon as the 101 is out: a broadcast sent after the
        # client saw its handshake complete reaches it, even before its task runs onopen.
        self.server.clients.add(self)

    def __repr__(self) -> str:
        # The path without its query, which may carry a credential (?token=...).
        return "<client #%s %s %s>" % (self.id, _fmt_address(self.address), self.path.partition("?")[0])


class SyncView:
    """A :class:`ServerConnection` seen by synchronous code, from any thread: the filters of
    :mod:`twspy.filters` and a :class:`twspy.hub.Hub` hold clients as these.

    ``send``/``send_nowait`` never wait: called from another thread they hand the frame to the
    connection's loop (``call_soon_threadsafe``), and past ``max_outbox`` bytes waiting there
    or in the transport the client is closed with 1013, as the threaded outbox does.
    ``start_close`` likewise. Other attributes are the connection's.
    """

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self._loop = connection._loop
        self._lock = threading.Lock()
        self._pending = 0  # bytes handed to the loop and not yet written to the transport

    @property
    def _codecs(self) -> list[Any]:
        # What send_all (twspy.server, used by the hub) looks at to share encoded frames.
        return self.connection.core.extensions

    @property
    def can_share_frames(self) -> bool:
        """What send_all (twspy.server) asks before sharing encoded frames: nothing transforms them."""
        return not self.connection.core.extensions

    def prepare(self, message: MessageLike) -> bytes | None:
        try:
            return self.connection.prepare(message)
        except (ConnectionClosed, InvalidState):
            # Called from another thread, the loop may close the connection meanwhile.
            return None

    def send(self, message: MessageLike) -> None:
        self.send_nowait(message)

    def send_nowait(self, message: MessageLike, prepared: bytes | None = None) -> None:
        conn = self.connection
        if self._in_loop():
            conn.send_nowait(message, prepared)
            return
        size = len(prepared) if prepared is not None else len(message)
        with self._lock:
            overflow = self._pending + size > conn.max_outbox
            if not overflow:
                self._pending += size
        try:
            if overflow:
                self._loop.call_soon_threadsafe(conn.overflow)
            else:
                self._loop.call_soon_threadsafe(self._deliver, message, prepared, size)
        except RuntimeError:  # the loop is closed: so is the connection
            pass

    def _deliver(self, message: MessageLike, prepared: bytes | None, size: int) -> None:
        with self._lock:
            self._pending -= size
        self.connection.send_nowait(message, prepared)

    def start_close(self, code: int = 1000, reason: str = "") -> None:
        if self._in_loop():
            self.connection.start_close(code, reason)
            return
        try:
            self._loop.call_soon_threadsafe(self.connection.start_close, code, reason)
        except RuntimeError:
            pass

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)

    def __repr__(self) -> str:
        return repr(self.connection)


class Server:
    """An asyncio WebSocket server.

    Give it a ``handler`` coroutine (``async def handler(client)``: the connection closes
    with 1000 when it returns, 1011 if it raises), or subclass it and override any of these
    (each may be overridden; all are coroutines run in the client's task, in order):

    - ``async def onopen(client)``
    - ``async def onmessage(client, message)``
    - ``async def onping(client, payload)`` / ``async def onpong(client, payload)``
    - ``async def onclose(client, code, reason)`` — exactly once per opened client
    - ``async def onerror(client, exc)`` — after a protocol error or an exception in a
      handler (which is logged with its traceback and closes that client with 1011)
    - ``select_subprotocol(client_protocols, server_protocols)``
    - ``process_request(request)`` — before the upgrade, with the whole
      :class:`~twspy.handshake.Request` (``method``, ``path``, ``headers``, ``address``): None
      to go on, or an HTTP answer (a status, ``(status, body)`` or ``(status, headers, body)``),
      as the threaded Server's. A hook taking ``(path, headers)`` still works (deprecated).

    Or compose it from ``filters`` (:mod:`twspy.filters`, the threaded server's): they run in
    list order before the ``on*`` methods and see each client as a :class:`SyncView`.

    Use it as ``async with Server(...) as server:`` (or ``await server.start()``), then
    ``await server.serve_forever()``; ``await server.close()`` stops it.

    Args:
        address: ``(host, port)``; port 0 picks a free port (see ``address`` once started).
        handler: the coroutine serving each client, instead of the ``on*`` methods.
        ssl: an ``ssl.SSLContext`` with the certificate, for wss://.
        max_connections: clients at once (handshaking included); more get HTTP 503.
        handshake_timeout: seconds for TLS and the HTTP upgrade; a stalled client is dropped.
        protocols, extensions (default: permessage-deflate; ``[]`` for none), trusted_origins,
            locations, max_size, max_header_size: as the threaded :class:`twspy.Server`.
        process_request, select_subprotocol: replace the methods of the same names.
        filters: :class:`~twspy.filters.Filter` objects run in order on connect, open, each message
            and close. hub: a :class:`~twspy.hub.Hub` to attach (topics, cluster-wide broadcast
            and send-to-id; delivered through each client's loop, thread-safe).
        close_timeout, max_queue, max_outbox, ping_interval (default 20 s), ping_timeout
            (default 20 s): passed to each client's :class:`~twspy.asyncio.Connection`.
        backlog_size: the listen() backlog.
    """

    connection_class = ServerConnection
    _legacy_hook = False  # process_request(path, headers): the signature before it took a Request

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "process_request" in cls.__dict__:  # warned about at the class statement
            cls._legacy_hook = legacy_hook(cls.__dict__["process_request"], "%s.process_request" % cls.__name__,
                                           method=True)

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 8000), *, handler: Handler | None = None,
                 ssl: _ssl.SSLContext | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
                 protocols: Sequence[str] = (), extensions: Sequence[Any] | None = None,
                 trusted_origins: Sequence[str] = (), locations: Sequence[str] = (),
                 max_size: int | None = DEFAULT_MAX_SIZE, max_header_size: int = MAX_HEADER_SIZE,
                 process_request: Callable[[Request], Reply] | None = None,
                 select_subprotocol: Callable[[list[str], Sequence[str]], str | None] | None = None,
                 filters: Sequence[Filter] = (), hub: Any = None, backlog_size: int = 128,
                 close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT, max_queue: int | None = DEFAULT_MAX_QUEUE,
                 max_outbox: int = DEFAULT_MAX_OUTBOX, ping_interval: float | None = DEFAULT_PING_INTERVAL,
                 ping_timeout: float | None = DEFAULT_PING_TIMEOUT) -> None:
        # What each client's Connection gets.
        self.connection_options: dict[str, Any] = dict(
            close_timeout=close_timeout, max_queue=max_queue, max_outbox=max_outbox, ping_interval=ping_interval,
            ping_timeout=ping_timeout)
        self.close_timeout = close_timeout
        self.address: tuple[Any, ...] = tuple(address)
        self.handler = handler
        self.ssl = ssl
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.protocols = list(protocols)
        self.extensions = default_extensions() if extensions is None else list(extensions)
        self.trusted_origins = list(trusted_origins)
        self.locations = list(locations)
        self.max_size = max_size
        self.max_header_size = max_header_size
        self.backlog_size = backlog_size
        self.filters: list[Filter] = list(filters)
        self.hub: Any = None
        self.node_id: str | None = None  # set by an attached hub: client ids become routable
        if hub is not None:
            hub.attach(self)  # inserts its membership filter; delivers through each client's SyncView
        if process_request is not None:
            self._legacy_hook = legacy_hook(process_request)
            self.process_request = process_request  # type: ignore[method-assign,assignment]
        if select_subprotocol is not None:
            self.select_subprotocol = select_subprotocol  # type: ignore[method-assign,assignment]
        self.clients: set[ServerConnection] = set()      # open connections
        self._connections: set[ServerConnection] = set()  # every connection, handshaking included
        self._server: asyncio.AbstractServer | None = None
        self._closing = False
        self._stopped: asyncio.Event | None = None

    # -- handlers (may be overridden) -------------------------------------------------------
    async def onopen(self, client: ServerConnection) -> None:
        """A client finished its handshake."""

    async def onmessage(self, client: ServerConnection, message: Message) -> None:
        """A client sent a message."""

    async def onping(self, client: ServerConnection, payload: bytes) -> None:
        """A client sent a ping (already answered)."""

    async def onpong(self, client: ServerConnection, payload: bytes) -> None:
        """A client sent a pong."""

    async def onclose(self, client: ServerConnection, code: int, reason: str) -> None:
        """A client's connection closed (``code`` 1006 if it vanished)."""

    async def onerror(self, client: ServerConnection, exc: BaseException) -> None:
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
        if self._legacy_hook:
            reply = self.process_request(request.path, request.headers)  # type: ignore[call-arg,arg-type]
        else:
            reply = self.process_request(request)
        if reply is None and self.filters:
            reply = run_connect(self.filters, request)
        return reply

    # -- serving ---------------------------------------------------------------------------
    async def start(self) -> Server:
        """Start listening (``address`` then holds the actual port)."""
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        host, port = self.address[0], self.address[1]
        self._server = await loop.create_server(self._factory, host, port, ssl=self.ssl, backlog=self.backlog_size,
                                                reuse_address=True)
        self.address = self._server.sockets[0].getsockname()
        return self

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _factory(self) -> ServerConnection:
        core = ServerProtocol(protocols=self.protocols, extensions=self.extensions,
                              trusted_origins=self.trusted_origins, locations=self.locations,
                              select_subprotocol=self.select_subprotocol, process_request=self._process_request,
                              max_header_size=self.max_header_size, max_size=self.max_size, logger=logger)
        return self.connection_class(self, core, **self.connection_options)

    def _connection_made(self, conn: ServerConnection) -> None:
        if self._closing or len(self._connections) >= self.max_connections:
            logger.warning("%s: too many connections (%d); answering 503", _fmt_address(conn.address),
                           self.max_connections)
            conn.core.reject(503, b"too many connections\n", (("Retry-After", "1"),))  # type: ignore[attr-defined]
            conn.flush()
            return
        self._connections.add(conn)
        conn.task = asyncio.get_running_loop().create_task(self._serve_client(conn))

    async def _serve_client(self, conn: ServerConnection) -> None:
        try:
            try:
                await asyncio.wait_for(asyncio.shield(conn.opened), self.handshake_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                logger.info("%s: handshake timed out", _fmt_address(conn.address))
                conn.abort()
                return
            except (HandshakeError, ConnectionClosed) as exc:
                # Probes, port scanners and slow clients end here: not an error of ours.
                logger.info("%s: handshake refused: %s", _fmt_address(conn.address), exc)
                return
            await self._run_open(conn)
        finally:
            if not conn.closed:
                await conn.wait_closed()  # bounded: the core is closing, close_timeout cuts it
            self._connections.discard(conn)

    async def _run_open(self, conn: ServerConnection) -> None:
        filtered_out = False  # a filter closed it on open: the on* methods never see it
        self.clients.add(conn)
        logger.info("%r: open", conn)
        try:
            if self._closing:
                conn.start_close(CLOSE_GOING_AWAY)
            if self.handler is not None:
                await self.handler(conn)
                await conn.close()
            else:
                conn._control_events = True
                filters = self.filters
                if filters and not run_open(filters, conn.sync):
                    filtered_out = True
                    return
                await self.onopen(conn)
                next_item = conn.next_event
                while True:
                    try:
                        item = await next_item()
                    except ConnectionClosed:
                        break
                    kind = type(item)
                    if kind is Ping:
                        await self.onping(conn, item.data)
                    elif kind is Pong:
                        await self.onpong(conn, item.data)
                    elif filters:
                        message = run_message(filters, conn.sync, item)
                        if message is not None:
                            await self.onmessage(conn, message)
                    else:
                        await self.onmessage(conn, item)
        except ConnectionClosed:
            pass
        except Exception as exc:
            logger.exception("%r: error in a handler", conn)
            conn.fail(CLOSE_UNABLE, "internal error")
            await self._call(self.onerror, conn, exc)
        finally:
            if not conn.closed:
                await conn.wait_closed()
            self.clients.discard(conn)
            error = conn.core.error
            if error is not None:
                await self._call(self.onerror, conn, error)
            logger.info("%r: closed %s %s", conn, conn.close_code, conn.close_reason)
            code = conn.close_code or 1006
            if self.handler is None and self.filters:
                run_close(self.filters, conn.sync, code, conn.close_reason)
            if self.handler is None and not filtered_out:
                await self._call(self.onclose, conn, code, conn.close_reason)

    async def _call(self, handler: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await handler(*args)
        except Exception:
            logger.exception("error in %s", getattr(handler, "__name__", handler))

    def broadcast(self, message: MessageLike, exclude: Any = ()) -> None:
        """Send ``message`` to every open client (but those in ``exclude``) without waiting.

        Encoded once for every client whose frames can be shared (no extension); a client
        that lets more than ``max_outbox`` bytes pile up is closed with 1013.
        """
        excluded = exclude if isinstance(exclude, (set, frozenset, list, tuple)) else (exclude,)
        excluded = [getattr(x, "connection", x) for x in excluded]  # SyncView -> its connection
        prepared = None
        for client in list(self.clients):
            if client in excluded:
                continue
            data = None
            if not client.core.extensions:
                if prepared is None:
                    prepared = client.prepare(message)
                data = prepared
            client.send_nowait(message, data)

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` (cancelling this task closes the server too)."""
        if self._server is None:
            await self.start()
        assert self._stopped is not None
        logger.info("listening on %s", _fmt_address(self.address))
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.close())
            raise

    async def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "") -> None:
        """Stop listening, close every client with ``code`` (1001) and wait for them.

        Clients that have not finished the closing handshake within ``close_timeout``
        are dropped. Safe to call more than once.
        """
        if self._closing:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        conns = list(self._connections)
        for conn in conns:
            conn.start_close(code, reason)
        tasks = [conn.task for conn in conns if conn.task is not None]
        if tasks:
            timeout = self.close_timeout
            done, pending = await asyncio.wait(tasks, timeout=None if timeout is None else timeout + 0.5)
            for conn in conns:
                if not conn.closed:
                    conn.abort()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        if self._stopped is not None:
            self._stopped.set()
        logger.info("stopped")

    async def __aenter__(self) -> Server:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __await__(self) -> Any:
        return self.__aenter__().__await__()


def serve(handler: Handler | None, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> Server:
    """A :class:`Server` running ``handler(client)`` for each client; ``async with`` or ``await`` it.

    Example::

        async def echo(client):
            async for message in client:
                await client.send(message)

        async with serve(echo, "127.0.0.1", 8765) as server:
            await server.serve_forever()
    """
    return Server((host, port), handler=handler, **options)


def _fmt_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return "[%s]:%s" % (host, address[1]) if ":" in str(host) else "%s:%s" % (host, address[1])
    return str(address)

