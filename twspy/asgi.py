"""The hub and the filters inside ASGI apps: FastAPI, Starlette, any ASGI server.

The ASGI server (uvicorn, hypercorn, daphne...) did the opening handshake and frames the
messages; this module speaks the ASGI websocket messages (``websocket.connect``, ``accept``,
``receive``, ``send``, ``disconnect``, ``close``) and imports no framework::

    from fastapi import FastAPI, WebSocket
    from twspy.asgi import Endpoint
    from twspy.hub import Hub, TopicBroadcast

    hub = Hub("redis://127.0.0.1:6379/0")
    topics = Endpoint(hub=hub, filters=[TopicBroadcast()])
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await topics.serve(websocket.scope, websocket.receive, websocket.send)

Each client is a :class:`Connection` that the hub holds as it holds a twspy server's clients
(``hub.subscribe(conn, "chat/+")``, ``send_to``, presence, the ``TopicBroadcast`` protocol).
Deliveries from any thread (the hub's reader, publishers) go into a bounded outbox that one
task hands to the ASGI ``send``, in order; a client that lets more than ``max_outbox`` bytes
wait there is closed with 1013, as the threaded and asyncio servers do.

The connection's rules come from the sans-I/O core (:class:`twspy.protocol.Protocol`, created
``OPEN``): ``max_size`` (1009), which close codes and reasons may be sent (§7.4, §5.5.1), the
state and the close code (1005, 1006). The bytes it would write are dropped: the ASGI server
writes the frames, and answers pings (keepalive is its business: uvicorn ``--ws-ping-interval``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Callable, Union

from .errors import ConnectionClosed, InvalidState, closed_error
from .filters import Filter, run_close, run_connect, run_message, run_open
from .frame import CLOSE_NORMAL, CLOSE_TRY_AGAIN_LATER, CLOSE_UNABLE, Frame, encode_close, valid_close_code
from .handshake import Headers, Reply, Request, reply_parts
from .message import Message
from .protocol import DEFAULT_MAX_SIZE, OPEN, SERVER, Protocol, short_reason

__all__ = ["Endpoint", "Connection", "SyncView", "Scope", "Receive", "Send",
           "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_OUTBOX", "DEFAULT_CLOSE_TIMEOUT"]

logger = logging.getLogger("twspy.asgi")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
MessageLike = Union[Message, str, bytes, bytearray, memoryview]

# The asyncio layer's defaults (twspy.asyncio.connection), repeated: importing one shell does
# not import another.
DEFAULT_MAX_QUEUE = 16         # messages received and not yet taken by recv(); receive() waits beyond
DEFAULT_MAX_OUTBOX = 4 << 20   # bytes waiting for the ASGI send (1013 beyond)
DEFAULT_CLOSE_TIMEOUT = 5.0    # seconds for the server to report the end after our close

_ids = itertools.count(1)


class Connection:
    """An accepted ASGI websocket: ``await send()``, ``await recv()``, ``async for``, ``await close()``.

    :meth:`Endpoint.accept` makes them. ``send_nowait`` and ``start_close`` may be called from
    any thread (the hub does); the rest from the connection's event loop.

    Attributes:
        id: unique in the process; ``"<node id>.<n>.<16 hex digits>"`` (routable and not
            guessable) when the endpoint has a hub.
        server: the :class:`Endpoint` (filters look for ``client.server.hub``).
        scope: the ASGI scope; ``request`` (``path``, ``headers``) is built from it.
        protocol: the accepted subprotocol, or None.
        close_code, close_reason: None / "" while open; then the peer's code (1005 without
            one), the code we failed the connection with, or 1006 when it ended without a
            closing handshake.
    """

    def __init__(self, server: Endpoint, scope: Scope, receive: Receive, send: Send, *,
                 max_size: int | None = DEFAULT_MAX_SIZE, max_queue: int | None = DEFAULT_MAX_QUEUE,
                 max_outbox: int = DEFAULT_MAX_OUTBOX,
                 close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        self.server = server
        self.scope = scope
        self.request = _request(scope)
        self.address = scope.get("client")
        n = next(_ids)
        self.id = "%s.%d.%s" % (server.node_id, n, secrets.token_hex(8)) if server.node_id else str(n)
        self.protocol: str | None = None
        self.core = Protocol(SERVER, state=OPEN, max_size=max_size, logger=logger)
        self.max_queue = max_queue
        self.max_outbox = max_outbox
        self.close_timeout = close_timeout
        self._receive = receive
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        # The outbox: (ASGI event, size, future of an awaited send()). Filled from any thread
        # under the lock, emptied by the writer task in order.
        self._lock = threading.Lock()
        self._outbox: collections.deque[tuple[dict[str, Any], int, asyncio.Future[None] | None]] = collections.deque()
        self._outbox_size = 0
        self._outbox_open = True    # False once nothing more may be queued (closing, closed)
        self._idle = True           # the writer waits for _wake: whoever queues sets it
        self._wake = asyncio.Event()
        self._inbox: collections.deque[Message] = collections.deque()
        self._arrived = asyncio.Event()   # a message came, or the connection ended
        self._taken = asyncio.Event()     # recv() took one: the reader may receive again
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._closing = False       # our websocket.close is queued or sent
        self.closed_future: asyncio.Future[None] = self._loop.create_future()
        self._sync: SyncView | None = None

    def _start(self) -> None:
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def headers(self) -> Headers:
        return self.request.headers

    @property
    def sync(self) -> SyncView:
        """This connection as synchronous code sees it: the filters of :mod:`twspy.filters`."""
        if self._sync is None:
            self._sync = SyncView(self)
        return self._sync

    # -- receiving -----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        receive, core = self._receive, self.core
        try:
            while True:
                while self.max_queue is not None and len(self._inbox) >= self.max_queue:
                    # Not receiving is the flow control: the ASGI server stops reading the socket.
                    self._taken.clear()
                    await self._taken.wait()
                event = await receive()
                kind = event.get("type")
                if kind == "websocket.receive":
                    text = event.get("text")
                    # The core checks what the ASGI server does not: max_size (1009).
                    core.receive_frame(Frame(0x1, text) if text is not None else Frame(0x2, event.get("bytes") or b""))
                    for message in core.events_received():
                        self._inbox.append(message)
                    self._arrived.set()
                    if core.close_sent is not None and not self._closing:
                        self._close(drop=False)  # the core failed the connection (1009)
                elif kind == "websocket.disconnect":
                    self._disconnected(event.get("code", 1005), event.get("reason") or "")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # receive() itself failed: the client is gone
            logger.debug("%r: receive failed: %r", self, exc)
            self._finish()

    def _disconnected(self, code: Any, reason: str) -> None:
        """The ASGI server says the connection ended, with the peer's close code (or ours)."""
        core = self.core
        if core.close_rcvd is None and isinstance(code, int):
            if code == 1005:
                core.receive_frame(Frame(0x8, b""))
            elif valid_close_code(code):
                core.receive_frame(Frame(0x8, encode_close(code, short_reason(str(reason)))))
        self._finish()

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message that passed the endpoint's filters.

        Raises:
            ConnectionClosed: the connection ended and every message was taken.
            TimeoutError: nothing within ``timeout`` seconds.
        """
        deadline = None if timeout is None else self._loop.time() + timeout
        inbox = self._inbox
        while True:
            while not inbox:
                if self.closed_future.done() or self.core.close_code is not None:
                    raise self._closed_error()
                self._arrived.clear()
                if deadline is None:
                    await self._arrived.wait()
                else:
                    try:
                        await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - self._loop.time()))
                    except asyncio.TimeoutError:
                        raise TimeoutError("no message within %s seconds" % timeout) from None
            message = inbox.popleft()
            self._taken.set()
            filters = self.server.filters
            if filters:
                passed = run_message(filters, self.sync, message)
                if passed is None:
                    continue
                message = passed
            return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        """Messages until the connection closes: ends on 1000/1001, raises ConnectionClosed otherwise."""
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed as exc:
                if exc.code in (1000, 1001):
                    return
                raise
            yield message

    # -- sending -------------------------------------------------------------------------------
    async def send(self, message: MessageLike) -> None:
        """Send a message (``str`` as text, bytes-like as binary, or a Message) after those
        queued before it; returns once the ASGI server took it (it waits while the client
        does not read).

        Raises:
            ConnectionClosed: the connection is closing or closed.
        """
        event, size = _event(message)
        done: asyncio.Future[None] = self._loop.create_future()
        if not self._queue(event, size, done, bounded=False):
            raise self._closed_error()
        await done

    def send_nowait(self, message: MessageLike, prepared: bytes | None = None) -> None:
        """Queue a message without waiting, from any thread (the hub's deliveries). Past
        ``max_outbox`` bytes waiting the client is closed with 1013 (try again later); a
        closing connection ignores it. ``prepared`` is ignored (the ASGI server frames)."""
        event, size = _event(message)
        if self._queue(event, size, None, bounded=True) is None:
            self._in_loop(self._overflow)

    def prepare(self, message: MessageLike) -> bytes | None:
        """None: frames are the ASGI server's, never shared (:func:`twspy.server.send_all`)."""
        return None

    _codecs: Sequence[Any] = ()  # what send_all looks at before calling prepare()

    def _queue(self, event: dict[str, Any], size: int, done: asyncio.Future[None] | None,
               bounded: bool) -> bool | None:
        """Put an event in the outbox: True; False if closing; None if over ``max_outbox``."""
        with self._lock:
            if not self._outbox_open:
                return False
            if bounded and self._outbox_size + size > self.max_outbox:
                return None
            self._outbox.append((event, size, done))
            self._outbox_size += size
            wake, self._idle = self._idle, False
        if wake:
            self._in_loop(self._wake.set)
        return True

    def _in_loop(self, callback: Callable[[], Any]) -> None:
        if threading.get_ident() == self._thread:
            callback()
        else:
            try:
                self._loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop is closed: so is the connection
                pass

    async def _write_loop(self) -> None:
        send, outbox = self._send, self._outbox
        try:
            while True:
                with self._lock:
                    if not outbox:
                        self._idle = True
                        self._wake.clear()
                        item = None
                    else:
                        item = outbox[0]
                if item is None:
                    await self._wake.wait()
                    continue
                event, size, done = item
                await send(event)
                with self._lock:
                    if outbox and outbox[0] is item:
                        outbox.popleft()
                        self._outbox_size -= size
                if done is not None and not done.done():
                    done.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # uvicorn's ClientDisconnected, Starlette's WebSocketDisconnect...
            logger.debug("%r: send failed: %r", self, exc)
            self._finish()

    def _overflow(self) -> None:
        if self.core.state is not OPEN:
            return
        logger.warning("%r: %d bytes waiting for a client that does not read: closing with 1013", self,
                       self._outbox_size)
        self.core.fail(CLOSE_TRY_AGAIN_LATER, "client too slow")
        self._close(drop=True)

    # -- closing -------------------------------------------------------------------------------
    def start_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start closing after what is queued, without waiting; from any thread.

        Raises ValueError for a code that may not be sent (§7.4) or a reason over 123 bytes.
        """
        encode_close(code, reason)  # the core's rule, checked in the caller's thread
        self._in_loop(lambda: self._start_close(code, reason))

    def _start_close(self, code: int, reason: str) -> None:
        if self.core.state is OPEN:
            self.core.send_close(code, reason)
            self._close(drop=False)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close (after what is queued) and wait until the ASGI server reports the end, at
        most ``close_timeout`` seconds."""
        self.start_close(code, reason)
        await self.wait_closed()

    def fail(self, code: int, reason: str = "") -> None:
        """Close at once with ``code``, dropping what waits to be sent (§7.1.7)."""
        if self.core.state is OPEN:
            self.core.fail(code, short_reason(reason))
            self._close(drop=True)

    def _close(self, drop: bool) -> None:
        """The core sent its close frame: hand the ASGI server a ``websocket.close`` with its
        code, after the queued messages, or instead of them (``drop``: a writer stuck on a
        client that does not read is cancelled); then wait ``close_timeout`` for the end."""
        self.core.data_to_send()  # the ASGI server writes the frames
        if self._closing:
            return
        self._closing = True
        sent = self.core.close_sent
        event: dict[str, Any] = {"type": "websocket.close", "code": CLOSE_UNABLE, "reason": ""}
        if sent is not None and valid_close_code(sent.code):
            event.update(code=sent.code, reason=sent.reason)
        with self._lock:
            self._outbox_open = False
            dropped = list(self._outbox) if drop else []
            if drop:
                self._outbox.clear()
                self._outbox_size = 0
        for _, _, done in dropped:
            if done is not None and not done.done():
                done.set_exception(self._closed_error())
        if drop and self._writer is not None:
            self._writer.cancel()
            self._writer = self._loop.create_task(self._send_close(event))
        else:
            self._queue_close(event)
        if self._close_timer is None and self.close_timeout is not None:
            self._close_timer = self._loop.call_later(self.close_timeout, self._finish)

    def _queue_close(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._outbox.append((event, 0, None))
            wake, self._idle = self._idle, False
        if wake:
            self._wake.set()

    async def _send_close(self, event: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self._send(event), self.close_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a timeout (the client does not read), or it is gone
            logger.debug("%r: websocket.close not sent: %r", self, exc)

    def _finish(self) -> None:
        """The end: the ASGI server reported it, failed, or ``close_timeout`` passed."""
        if self.closed_future.done():
            return
        self.core.receive_eof()  # 1006 unless a close code is known
        self.core.data_to_send()
        with self._lock:
            self._outbox_open = False
            dropped = list(self._outbox)
            self._outbox.clear()
            self._outbox_size = 0
        error = self._closed_error()
        for _, _, done in dropped:
            if done is not None and not done.done():
                done.set_exception(error)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()
        self.closed_future.set_result(None)
        self._arrived.set()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended."""
        await asyncio.shield(self.closed_future)

    @property
    def closed(self) -> bool:
        return self.closed_future.done()

    @property
    def close_code(self) -> int | None:
        return self.core.close_code

    @property
    def close_reason(self) -> str:
        return self.core.close_reason

    @property
    def state(self) -> str:
        """``OPEN``, ``CLOSING`` or ``CLOSED`` (the core's state)."""
        return self.core.state.name

    def _closed_error(self) -> ConnectionClosed:
        core = self.core
        if core.close_code is not None:
            return closed_error(core.close_code, core.close_reason)
        sent = core.close_sent
        return closed_error(sent.code, sent.reason) if sent is not None else closed_error(1006)

    def __repr__(self) -> str:
        return "<asgi client #%s %s>" % (self.id, self.path.partition("?")[0])  # no query: it may hold a token


class SyncView:
    """A :class:`Connection` as the synchronous filters of :mod:`twspy.filters` and the hub see
    it: ``send`` never waits (it is ``send_nowait``). Other attributes are the connection's."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def send(self, message: MessageLike) -> None:
        self.connection.send_nowait(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)

    def __repr__(self) -> str:
        return repr(self.connection)


class Endpoint:
    """Where an ASGI app's websocket route hands its clients: a hub, filters, limits.

    Three ways in, each given the ASGI triple ``(scope, receive, send)`` or one object that
    has them (a Starlette or FastAPI ``WebSocket``, not yet accepted: the endpoint accepts):

    - ``await endpoint.serve(scope, receive, send)``: the filters do everything (e.g. the
      hub's JSON protocol, :class:`~twspy.hub.TopicBroadcast`);
    - ``async with endpoint.accept(scope, receive, send) as conn:`` your own code, with
      ``conn`` a :class:`Connection` (messages that passed the filters come from ``recv``);
      an exception in the block closes it with 1011 and is raised again;
    - the endpoint is itself an ASGI app (``app.mount("/ws", endpoint)``).

    Args:
        hub: a :class:`~twspy.hub.Hub` to attach: clients get routable ids and join it.
        filters: :class:`~twspy.filters.Filter` objects run in order: ``on_connect`` before
            accepting (an HTTP reply refuses: with its status where the server offers the
            ``websocket.http.response`` extension, else 403), ``on_open``, each message,
            ``on_close`` (exactly once per accepted client).
        protocols: subprotocols supported; the client's first one among them is accepted.
        max_size: bytes of a received message (1009 beyond). The ASGI server has its own
            limit too (uvicorn ``--ws-max-size``, 16 MiB).
        max_queue: messages received and not yet taken; the endpoint stops receiving beyond.
        max_outbox: bytes waiting for a client (hub deliveries, ``send_nowait``): 1013 beyond.
        close_timeout: seconds for the ASGI server to report the end after our close.
    """

    def __init__(self, *, hub: Any = None, filters: Sequence[Filter] = (), protocols: Sequence[str] = (),
                 max_size: int | None = DEFAULT_MAX_SIZE, max_queue: int | None = DEFAULT_MAX_QUEUE,
                 max_outbox: int = DEFAULT_MAX_OUTBOX,
                 close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        self.filters: list[Filter] = list(filters)
        self.protocols = list(protocols)
        self.options: dict[str, Any] = {"max_size": max_size, "max_queue": max_queue, "max_outbox": max_outbox,
                                        "close_timeout": close_timeout}
        self.clients: set[Connection] = set()
        self.hub: Any = None
        self.node_id: str | None = None  # set by an attached hub
        if hub is not None:
            hub.attach(self)  # inserts its membership filter first

    def broadcast(self, message: MessageLike, exclude: Any = ()) -> None:
        """Send ``message`` to this endpoint's clients (but those in ``exclude``) without waiting."""
        excluded = exclude if isinstance(exclude, (set, frozenset, list, tuple)) else (exclude,)
        excluded_ids = {getattr(x, "id", x) for x in excluded}
        for client in list(self.clients):
            if client.id not in excluded_ids:
                client.send_nowait(message)

    async def serve(self, scope: Any, receive: Receive | None = None, send: Send | None = None) -> None:
        """Accept the client and run the filters on its messages until it closes."""
        try:
            async with self.accept(scope, receive, send) as conn:
                while True:
                    await conn.recv()  # the filters handled it
        except ConnectionClosed:  # it left or was refused before it was accepted
            pass

    @contextlib.asynccontextmanager
    async def accept(self, scope: Any, receive: Receive | None = None,
                     send: Send | None = None) -> AsyncIterator[Connection]:
        """Accept the client; the block runs with its :class:`Connection`, which is closed
        (1000) when the block ends and 1011 if it raises (the exception is raised again;
        ConnectionClosed, the client leaving, is not).

        Raises:
            ConnectionClosed: the client left before it was accepted, or a filter refused it.
            InvalidState: the application accepted the websocket itself first.
        """
        if receive is None or send is None:  # a Starlette/FastAPI WebSocket or the like
            scope, receive, send = scope.scope, scope.receive, scope.send
        assert receive is not None and send is not None
        if scope.get("type") != "websocket":
            raise ValueError("not a websocket scope: %r" % scope.get("type"))
        event = await receive()
        if event.get("type") == "websocket.receive":
            raise InvalidState("the websocket was accepted already: hand it to the Endpoint before accepting it")
        if event.get("type") != "websocket.connect":
            raise ConnectionClosed(event.get("code", 1006), "left before it was accepted")
        conn = Connection(self, scope, receive, send, **self.options)
        reply = run_connect(self.filters, conn.request) if self.filters else None
        if reply is not None:
            await _refuse(scope, send, reply)
            raise ConnectionClosed(1006, "refused by a filter")
        chosen = next((p for p in scope.get("subprotocols") or () if p in self.protocols), None)
        await send({"type": "websocket.accept", "subprotocol": chosen})
        conn.protocol = chosen
        self.clients.add(conn)
        logger.info("%r: open", conn)
        opened = False
        try:
            conn._start()
            opened = True
            if self.filters:
                run_open(self.filters, conn.sync)  # False: a filter closes it, recv() says so
            yield conn
        except ConnectionClosed:
            pass
        except Exception:
            conn.fail(CLOSE_UNABLE, "internal error")
            raise
        finally:
            try:
                conn.start_close(CLOSE_NORMAL)
                await conn.wait_closed()  # close_timeout bounds it
            finally:
                conn._finish()  # cancelled meanwhile: end it now
                self.clients.discard(conn)
                logger.info("%r: closed %s %s", conn, conn.close_code, conn.close_reason)
                if opened and self.filters:
                    run_close(self.filters, conn.sync, conn.close_code or 1006, conn.close_reason)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The endpoint as an ASGI app: websocket scopes are served; HTTP gets 426."""
        if scope.get("type") == "websocket":
            await self.serve(scope, receive, send)
        elif scope.get("type") == "http":
            await send({"type": "http.response.start", "status": 426,
                        "headers": [(b"upgrade", b"websocket"), (b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"a WebSocket endpoint\n"})
        else:
            raise ValueError("an Endpoint serves websocket (and http) scopes, not %r" % scope.get("type"))

    def __repr__(self) -> str:
        return "<asgi Endpoint, %d clients>" % len(self.clients)


def _event(message: MessageLike) -> tuple[dict[str, Any], int]:
    """The ``websocket.send`` event for a message, and its size (characters for text)."""
    if isinstance(message, str):
        return {"type": "websocket.send", "text": message}, len(message)
    if isinstance(message, Message):
        if message.opcode == 0x1:
            return {"type": "websocket.send", "text": message.payload}, len(message.payload)
        return {"type": "websocket.send", "bytes": message.encode()}, len(message.payload)
    if isinstance(message, (bytes, bytearray, memoryview)):
        data = bytes(message)
        return {"type": "websocket.send", "bytes": data}, len(data)
    raise TypeError("cannot send %s" % type(message).__name__)


def _request(scope: Scope) -> Request:
    """The upgrade request as twspy's filters see it (``on_connect``, ``client.path``)."""
    path = scope.get("path") or "/"
    query = scope.get("query_string") or b""
    if query:
        path += "?" + query.decode("latin-1")
    headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers") or ())
    return Request("GET", path, "HTTP/1.1", headers, scope.get("client"))


async def _refuse(scope: Scope, send: Send, reply: Reply) -> None:
    """Answer a filter's HTTP reply: as given when the server can (the ``websocket.http.response``
    extension of ASGI), else ``websocket.close`` before accepting (the server answers 403)."""
    try:
        parts = reply_parts(reply)
    except (TypeError, ValueError) as exc:  # a filter's bug: 500, as the threaded server answers
        logger.error("on_connect answered something that is not an HTTP reply: %s", exc)
        parts = (500, [], b"")
    assert parts is not None  # only a refusal comes here
    status, headers, body = parts
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


