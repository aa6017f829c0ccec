"""An asyncio WebSocket connection, driven by the sans-I/O core :class:`twspy.protocol.Protocol`.

This module moves bytes and nothing else: :meth:`Connection.data_received` feeds the core,
writes :meth:`~twspy.protocol.Protocol.data_to_send` to the transport, then handles the
events (messages to the receive queue, pongs to the waiting pings, the peer's close).
Framing, masking, UTF-8, limits, compression and the close handshake are the core's rules.

It is an :class:`asyncio.Protocol` (transport callbacks, no stream objects: measured faster
than ``asyncio.StreamReader``/``StreamWriter`` for small messages, and one object less per
connection). Flow control both ways:

- reading pauses while ``max_queue`` messages wait for :meth:`Connection.recv` (TCP then slows
  the peer), and resumes when the application has taken them;
- :meth:`Connection.send` waits while the transport's write buffer is over its high-water
  mark (a peer that does not read cannot make it grow); :meth:`Connection.send_nowait`
  (used by broadcasts) never waits: past ``max_outbox`` buffered bytes the connection is
  failed with 1013 (try again later), as the threaded outbox does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Union

from ..errors import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidState, closed_error
from ..frame import CLOSE_ABNORMAL, CLOSE_NORMAL
from ..handshake import Request, Response
from ..message import BinaryMessage, Message, TextMessage
from ..protocol import CLOSED, CLOSING, CONNECTING, OPEN, Close, Ping, Pong, Protocol

__all__ = ["Connection", "MessageLike", "DEFAULT_CLOSE_TIMEOUT", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_OUTBOX",
           "DEFAULT_PING_INTERVAL", "DEFAULT_PING_TIMEOUT", "CONNECTION_OPTIONS"]

logger = logging.getLogger("twspy.asyncio")

# The threaded layer's defaults (twspy.connection), repeated here so that importing the
# asyncio layer does not import the threaded one.
DEFAULT_CLOSE_TIMEOUT = 5.0      # seconds for the peer's side of the closing handshake
DEFAULT_MAX_QUEUE = 16           # messages received and not yet taken by recv()
DEFAULT_MAX_OUTBOX = 4 << 20     # bytes buffered for a peer by send_nowait() (broadcasts)
DEFAULT_PING_INTERVAL = 20.0     # serve() and connect() send a keepalive ping this often...
DEFAULT_PING_TIMEOUT = 20.0      # ...and fail the connection (1011) if unanswered this long
# Connection's keywords that serve() and connect() take on its behalf.
CONNECTION_OPTIONS = ("close_timeout", "max_queue", "max_outbox", "ping_interval", "ping_timeout")
_WRITE_HIGH = 64 * 1024          # send() waits above this many buffered bytes (asyncio's default)
_LARGE = 64 * 1024               # send() writes payloads from this size as pieces (Protocol.encode_frames)
_HEAD = 64 * 1024                # ... the header goes out with this much of the payload, the rest uncopied

MessageLike = Union[Message, str, bytes, bytearray, memoryview]


class Connection(asyncio.Protocol):
    """A WebSocket connection on an event loop: ``await send()``, ``await recv()``, ``async for``.

    :func:`twspy.asyncio.connect` and :func:`twspy.asyncio.serve` build them; every method
    must be called from the connection's event loop.

    Args:
        protocol: the sans-I/O core (a handshake protocol that starts ``CONNECTING``, or an
            open :class:`~twspy.protocol.Protocol`).
        close_timeout: seconds to wait for the peer's side of the closing handshake, after
            which TCP is dropped.
        max_queue: messages received and not yet taken by :meth:`recv`; reading pauses beyond.
        max_outbox: bytes :meth:`send_nowait` may leave buffered for a slow peer (1013 beyond).
        ping_interval: send a keepalive ping this often (seconds; None: never).
        ping_timeout: a keepalive ping unanswered this long fails the connection (1011).

    Attributes:
        close_code, close_reason: None / "" until the connection is closed; then the peer's
            close frame (1005 when it had no code), the code we failed it with, or 1006 when
            TCP ended without a close frame (RFC 6455 §7.1.5).
        protocol: the negotiated subprotocol, or None.
        request, response: the handshake's HTTP request and response (when known).
        address: the peer's address.
    """

    def __init__(self, protocol: Protocol, *, close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
                 max_queue: int | None = DEFAULT_MAX_QUEUE, max_outbox: int = DEFAULT_MAX_OUTBOX,
                 ping_interval: float | None = None, ping_timeout: float | None = None) -> None:
        self.core = protocol
        # The peer's close frame is answered at once, unless messages that came before it wait
        # in the queue: then once the application has taken them (recv() finds the queue
        # empty), so that it can still reply to them; close_timeout bounds the wait.
        protocol.auto_answer_close = False
        # Likewise a protocol error fails the connection once the messages before it were taken.
        protocol.defer_failure = True
        self.close_timeout = close_timeout
        self.max_queue = max_queue
        self.max_outbox = max_outbox
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.transport: Any = None
        self.address: Any = None
        self.protocol: str | None = None
        self.request: Request | None = None
        self.response: Response | None = None
        self._loop = asyncio.get_running_loop()
        self._inbox: collections.deque[Any] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []   # recv() calls waiting for the inbox
        self._control_events = False    # also queue Ping/Pong (a Server dispatches them to handlers)
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[bytes, list[Any]] = {}  # payload -> [future, time sent]
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self.closed_future: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol callbacks --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.address = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(_WRITE_HIGH)  # type: ignore[attr-defined]
        self._flush()

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core.state is OPEN:
            # The common case, fused: one whole small data frame in this read.
            message = core.receive_message(data)
            if message is not None:
                self._queue(message)
                return
        else:
            core.receive_data(data)
        self._flush()
        self._handle(core.events_received())  # also when empty: a failure may be pending

    def eof_received(self) -> bool | None:
        self.core.receive_eof()
        self._flush()
        self._handle(self.core.events_received())
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        core = self.core
        core.receive_eof()
        core.data_to_send()  # nothing can be written any more
        self._handle(core.events_received())
        for handle in (self._keepalive, self._ping_deadline, self._close_timer):
            if handle is not None:
                handle.cancel()
        self._keepalive = self._ping_deadline = self._close_timer = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionClosedError(CLOSE_ABNORMAL, "connection lost during the handshake"))
            self.opened.exception()  # retrieved: nobody may be waiting
        for future, _ in self._pings.values():
            if not future.done():
                future.set_exception(self._closed_error())
                future.exception()
        self._pings.clear()
        self._wake(self._waiters)
        self._wake(self._drain_waiters)
        if not self.closed_future.done():
            self.closed_future.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake(self._drain_waiters)

    # -- moving bytes and events -----------------------------------------------------------
    def _flush(self) -> None:
        """Write what the core has to send; ``b""`` half-closes our side (or closes, over TLS)."""
        transport = self.transport
        if transport is None:
            return
        for data in self.core.data_to_send():
            if data:
                transport.write(data)
            elif self.core.state is not CLOSED and transport.can_write_eof():
                transport.write_eof()  # closing handshake: the peer closes next (close_timer bounds it)
            elif self.core.state is not CLOSED and self.core.close_rcvd is None:
                # TLS cannot half-close, and the peer may still be sending (we failed the
                # connection): closing now would reset it before it reads our close frame.
                # It closes after reading it; close_timer bounds the wait.
                pass
            else:
                # A refused handshake or a peer that already left: nothing more to read. Close
                # (after the buffered bytes) rather than half-close: a peer that keeps its socket
                # open must not hold a connection slot.
                transport.close()
        core = self.core
        if self._close_timer is None and self.close_timeout is not None and (
                core.state is CLOSING or (core.state is OPEN and (core.close_rcvd is not None
                                                                  or core.failure_pending))):
            # §7.1.1: a close frame went either way; TCP should end soon. Cut a stalled peer
            # (and answer the peer's close frame if the application never took its messages).
            self._close_timer = self._loop.call_later(self.close_timeout, self._close_deadline)

    flush = _flush  # public: the server answers a refused handshake through it

    def _close_deadline(self) -> None:
        self._close_timer = None
        core = self.core
        if core.failure_pending:
            core.fail_pending()
            self._flush()
        elif core.state is OPEN and core.close_rcvd is not None:
            core.answer_close()
            self._flush()
        else:
            self.abort()

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is TextMessage or kind is BinaryMessage:
                self._queue(event)
            elif kind is Ping:
                if self._control_events:
                    self._queue(event)
            elif kind is Pong:
                self._pong(event.data)
                if self._control_events:
                    self._queue(event)
            elif kind is Close:
                core = self.core
                if core.state is OPEN and not any(type(i) in (TextMessage, BinaryMessage) for i in self._inbox):
                    core.answer_close()  # no message waits for a reply: answer at once (§5.5.1)
                    self._flush()
                self._wake(self._waiters)
            elif kind is Request:
                self.request = event
            elif kind is Response:
                self.response = event
        core = self.core
        if core.failure_pending and not any(type(i) in (TextMessage, BinaryMessage) for i in self._inbox):
            core.fail_pending()  # no message waits for a reply: fail at once (§7.1.7)
            self._flush()
            self._wake(self._waiters)
        if not self.opened.done():
            state = self.core.state
            if state is OPEN or (state is not CONNECTING and self.core.handshake_exc is None):
                self.protocol = getattr(self.core, "subprotocol", None)
                self.opened.set_result(None)
                self._start_keepalive()
                self.connection_open()
            elif state is CLOSED and self.core.handshake_exc is not None:
                self.opened.set_exception(self.core.handshake_exc)
                self.opened.exception()

    def connection_open(self) -> None:
        """Called once the opening handshake succeeded, before any message is handled. May be overridden."""

    def _queue(self, item: Any) -> None:
        inbox = self._inbox
        inbox.append(item)
        if self._waiters:
            self._wake(self._waiters)
        if self.max_queue is not None and len(inbox) >= self.max_queue and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        waiters.clear()

    # -- receiving -------------------------------------------------------------------------
    async def recv(self, timeout: float | None = None) -> Message:
        """The next message (:class:`~twspy.message.TextMessage` or ``BinaryMessage``).

        Cancelling the task that awaits it loses nothing: a message is taken from the queue
        only by the call that returns it.

        Raises:
            ConnectionClosedOK: the connection closed normally (1000, 1001, or 1005: a close
                frame without a code) and every message was taken.
            ConnectionClosedError: ... with an error (1006 without a closing handshake, 1002,
                1009, 1011, ...); ``cause`` is the error that made us fail it, if we did.
            TimeoutError: no message within ``timeout`` seconds.
        """
        if not self._control_events:  # the inbox holds messages only: the common case, inlined
            inbox = self._inbox
            if not inbox:
                core = self.core
                if timeout is None and core.close_code is None and not core.failure_pending:
                    # Wait once for the next message without the general loop of _wait().
                    waiter: asyncio.Future[None] = self._loop.create_future()
                    waiters = self._waiters
                    waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiters and waiter in waiters:  # cancelled: woken waiters are cleared
                            waiters.remove(waiter)
                if not inbox:
                    await self._wait(timeout)
            item = inbox.popleft()
            if self._reading_paused:
                self._resume_reading()
            return item  # type: ignore[no-any-return]
        while True:
            item = await self._next(timeout)
            kind = type(item)
            if kind is TextMessage or kind is BinaryMessage:
                return item  # type: ignore[no-any-return]

    async def _next(self, timeout: float | None = None) -> Any:
        """The next queued item (a message, or Ping/Pong with ``_control_events``)."""
        inbox = self._inbox
        if not inbox:
            await self._wait(timeout)
        item = inbox.popleft()
        if self._reading_paused:
            self._resume_reading()
        return item

    def _resume_reading(self) -> None:
        """Resume reading once the application has taken half of ``max_queue`` messages."""
        if self.max_queue is None or len(self._inbox) < max(1, self.max_queue // 2):
            self._reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    async def _wait(self, timeout: float | None = None) -> None:
        """Return once the inbox holds an item; raise ConnectionClosed once none can come."""
        inbox = self._inbox
        deadline = None if timeout is None else self._loop.time() + timeout
        while not inbox:
            # No message can come any more once a close code is known: the peer's close frame
            # arrived, the connection failed (either side), or TCP ended.
            if self.core.failure_pending:
                self.core.fail_pending()  # every message before the protocol error was taken
                self._flush()
            if self.core.close_code is not None or self.closed_future.done():
                if self.core.close_rcvd is not None and self.core.state is OPEN:
                    self.core.answer_close()  # every message before the close frame was taken
                    self._flush()
                raise self._closed_error()
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    left = deadline - self._loop.time()
                    if left <= 0:
                        raise TimeoutError("no message within %s seconds" % timeout)
                    try:
                        await asyncio.wait_for(waiter, left)
                    except asyncio.TimeoutError:
                        raise TimeoutError("no message within %s seconds" % timeout) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    next_event = _next  # public: the server's dispatch loop reads events through it

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        """Messages until the connection closes: ends on ConnectionClosedOK (1000, 1001, 1005),
        raises ConnectionClosedError otherwise."""
        while True:
            try:
                message = await self.recv()
            except ConnectionClosedOK:
                return
            yield message

    # -- sending ---------------------------------------------------------------------------
    def _encode(self, message: MessageLike, fragment_size: int | None, compress: bool) -> bytes:
        core = self.core
        if core.state is not OPEN:
            raise self._closed_error() if core.state is not CONNECTING else \
                InvalidState("the opening handshake is not done")
        if type(message) is str:
            return core.encode_text(message, fragment_size=fragment_size, compress=compress)
        if isinstance(message, (bytes, bytearray, memoryview)):
            return core.encode_binary(message, fragment_size=fragment_size, compress=compress)
        if isinstance(message, Message):
            if message.opcode == 0x1:
                return core.encode_text(message.payload, fragment_size=fragment_size,  # type: ignore[arg-type]
                                        compress=compress)
            return core.encode_binary(message.encode(), fragment_size=fragment_size, compress=compress)
        if isinstance(message, str):
            return core.encode_text(str(message), fragment_size=fragment_size, compress=compress)
        raise TypeError("cannot send %s" % type(message).__name__)

    async def send(self, message: MessageLike, fragment_size: int | None = None, compress: bool = True) -> None:
        """Send a message: ``str`` as text, bytes-like as binary, or a Message.

        Waits while the peer does not read (the write buffer is over its high-water mark).
        ``fragment_size`` splits it into frames (§5.4); ``compress=False`` skips permessage-deflate.

        Raises:
            ConnectionClosed: the connection is closing or closed (ConnectionClosedOK or
                ConnectionClosedError, as :meth:`recv`).
        """
        kind = type(message)
        if (kind is bytes or kind is str) and len(message) >= _LARGE and self.core.state is OPEN:
            # A large payload goes to the transport as its own piece, never copied behind its
            # header: with an empty write buffer asyncio sends it straight from our object.
            if isinstance(message, str):
                pieces = self.core.encode_frames(0x1, message.encode("utf-8"), fragment_size, compress)
            else:
                pieces = self.core.encode_frames(0x2, message, fragment_size, compress)  # type: ignore[arg-type]
            self._write_pieces(pieces)
        else:
            data = self._encode(message, fragment_size, compress)
            self.transport.write(data)
        if self._writing_paused:
            await self._drain()

    def _write_pieces(self, pieces: list[bytes]) -> None:
        """Write encoded pieces (small ones, and large payloads apart from their header).

        A header is never written alone (with TCP_NODELAY, a 10-byte segment and a wake-up of
        the peer per message): it goes out with the first 64 KiB of its payload (copied), the
        rest as a memoryview, which asyncio sends as it is (it slices bytes with a copy, and
        copies into its buffer only what the socket did not take).
        """
        write = self.transport.write
        head = b""
        for piece in pieces:
            if len(piece) < _HEAD:
                head += piece
                continue
            write(head + piece[:_HEAD])
            head = b""
            if len(piece) > _HEAD:
                write(memoryview(piece)[_HEAD:])
        if head:
            write(head)

    async def _drain(self) -> None:
        while self._writing_paused:
            if self.closed_future.done():
                raise self._closed_error()
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._drain_waiters:
                    self._drain_waiters.remove(waiter)

    def send_nowait(self, message: MessageLike, prepared: bytes | None = None) -> None:
        """Queue a message without waiting (broadcasts). A peer that lets more than
        ``max_outbox`` bytes pile up is failed with 1013 (try again later); a closed
        connection ignores it. ``prepared``: the frame's bytes, already encoded."""
        core = self.core
        if core.state is not OPEN or self.transport is None:
            return
        data = prepared if prepared is not None else self._encode(message, None, True)
        if self.transport.get_write_buffer_size() + len(data) > self.max_outbox:
            self.overflow()
            return
        self.transport.write(data)

    def overflow(self) -> None:
        """The peer let more than ``max_outbox`` bytes pile up: fail it with 1013 (try again later)."""
        if self.core.state is not OPEN:
            return
        logger.warning("%r: %d bytes waiting for a client that does not read: closing with 1013", self,
                       self.transport.get_write_buffer_size() if self.transport is not None else 0)
        self.core.fail(1013, "client too slow")
        self._flush()

    def prepare(self, message: MessageLike) -> bytes | None:
        """The frame bytes of ``message`` to share with other connections, or None when this
        connection's frames cannot be shared (a client masks; extensions keep state)."""
        core = self.core
        if core.extensions or core.side.value == "client" or core.state is not OPEN:
            return None
        return self._encode(message, None, True)

    # -- control frames ---------------------------------------------------------------------
    async def ping(self, data: bytes | str | None = None) -> asyncio.Future[float]:
        """Send a ping; return a future resolved with the latency (seconds) when its pong comes.

        ``data`` (at most 125 bytes) defaults to 4 random bytes. A pong answers every earlier
        ping too (§5.5.3). The future fails with ConnectionClosed if the connection closes first.
        """
        if data is None:
            data = os.urandom(4)
            while data in self._pings:  # pragma: no cover - 1 in 2**32
                data = os.urandom(4)
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if payload in self._pings:
            raise InvalidState("a ping with this payload is already waiting for its pong")
        if self.core.state is not OPEN:
            raise self._closed_error()
        self.core.send_ping(payload)
        future: asyncio.Future[float] = self._loop.create_future()
        self._pings[payload] = [future, time.monotonic()]
        self._flush()
        if self._writing_paused:
            await self._drain()
        return future

    async def pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited pong, a one-way heartbeat (§5.5.3)."""
        if self.core.state is not OPEN:
            raise self._closed_error()
        self.core.send_pong(data)
        self._flush()

    def _pong(self, payload: bytes) -> None:
        pings = self._pings
        if payload not in pings:
            return
        now = time.monotonic()
        # A pong acknowledges its ping and every ping sent before it.
        for key in list(pings):
            future, sent = pings.pop(key)
            if not future.done():
                future.set_result(now - sent)
            if key == payload:
                break

    # -- keepalive ---------------------------------------------------------------------------
    def _start_keepalive(self) -> None:
        if self.ping_interval is not None and self._keepalive is None:
            self._keepalive = self._loop.call_later(self.ping_interval, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive = None
        if self.core.state is not OPEN or self.core.close_rcvd is not None:
            return
        payload = os.urandom(4)
        self.core.send_ping(payload)
        future: asyncio.Future[float] = self._loop.create_future()
        self._pings[payload] = [future, time.monotonic()]
        self._flush()
        if self.ping_timeout is not None:
            self._ping_deadline = self._loop.call_later(self.ping_timeout, self._keepalive_expired, future)
        future.add_done_callback(self._keepalive_answered)

    def _keepalive_answered(self, future: asyncio.Future[float]) -> None:
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None
        if not future.cancelled() and future.exception() is None:
            self._start_keepalive()

    def _keepalive_expired(self, future: asyncio.Future[float]) -> None:
        self._ping_deadline = None
        if future.done() or self.core.state is not OPEN:
            return
        logger.info("%r: no pong within %s seconds: closing with 1011", self, self.ping_timeout)
        self.core.fail(1011, "keepalive ping timeout")
        self._flush()
        self.abort()  # the peer is gone or stuck: do not wait for its close frame

    # -- closing -----------------------------------------------------------------------------
    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake (§7.1.2) and wait until TCP is closed.

        The peer has ``close_timeout`` seconds to answer and close; then TCP is dropped.
        Calling it on a closed connection does nothing.
        """
        self.start_close(code, reason)
        await self.wait_closed()

    def start_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send the close frame without waiting (a Server closing all its clients uses it)."""
        core = self.core
        if core.state is OPEN:
            if core.close_rcvd is not None:
                core.answer_close()  # the peer closed first: echo its code (§5.5.1)
            else:
                core.send_close(code, reason)
            self._flush()
        elif core.state is CONNECTING and self.transport is not None:
            self.abort()

    async def wait_closed(self) -> None:
        """Wait until TCP is closed (however the connection ends)."""
        await asyncio.shield(self.closed_future)

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (§7.1.7): a close frame with ``code`` unless one was sent, then TCP ends."""
        self.core.fail(code, reason)
        self._flush()

    def abort(self) -> None:
        """Drop TCP now (no closing handshake); ``close_code`` becomes 1006 unless known."""
        if self.transport is not None:
            self.transport.abort()

    @property
    def close_code(self) -> int | None:
        return self.core.close_code

    @property
    def close_reason(self) -> str:
        return self.core.close_reason

    @property
    def closed(self) -> bool:
        """True once TCP is closed."""
        return self.closed_future.done()

    @property
    def state(self) -> str:
        """``CONNECTING``, ``OPEN``, ``CLOSING`` or ``CLOSED`` (the core's state)."""
        return self.core.state.name

    def _closed_error(self) -> ConnectionClosed:
        """ConnectionClosedOK (1000, 1001, 1005) or ConnectionClosedError, with the protocol
        error that made us fail the connection as its cause (as the threaded layer)."""
        core = self.core
        code = core.close_code
        if code is None:
            # Our close frame is out, the peer's has not come yet.
            sent = core.close_sent
            if sent is None:
                return closed_error(CLOSE_ABNORMAL)
            code, reason = sent.code, sent.reason
        else:
            reason = core.close_reason
        error = core.error
        return closed_error(code, reason, error if error is not None and error.code == code else None)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "<%s %s %s>" % (type(self).__name__, self.core.state.name, self.address)

