"""Connection: a threaded shell over the sans-I/O core (:mod:`twspy.protocol`).

The rules of a live connection (messages, fragmentation, control frames, the close
handshake, UTF-8, limits, extensions) live in :class:`~twspy.protocol.Protocol`; a
Connection moves its bytes and runs the threads, locks, timeouts and handlers around it.
It runs over a handshaken :class:`~twspy.websocket.websocket`. Use it
directly (``send``/``recv``/iteration) or subclass it and override the ``on*`` handlers,
then call :meth:`Connection.receive_forever`.

Threads: any thread may send; one lock covers a whole frame or fragmented message, the
automatic pongs and the close frame, so frames never interleave. One thread reads at a
time. While ``onmessage`` runs in the reading thread, a watchdog lets another thread keep
reading after a short delay, so pings are still answered during slow handlers (the
messages read meanwhile wait in a bounded queue). The common fast path hands nothing to
another thread.

With ``queue_messages=True`` another thread can drive the connection through queues:
:meth:`Connection.pop_in_message`, :meth:`Connection.push_out_message` and
:meth:`Connection.should_stop`.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Union, cast

from .deprecation import keyword_only
from .errors import ConnectionClosed, InvalidState, ProtocolError, closed_error
from .frame import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    CLOSE_UNABLE,
    OPCODE_BINARY,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    encode_close,
    valid_close_code,
)
from .inqueue import InQueue
from .message import BinaryMessage, Message, TextMessage
from .outbox import DEFAULT_MAX_OUTBOX, Outbox, as_message
from .protocol import CLIENT, SERVER, Close, Ping, Pong, Protocol, short_reason
from .protocol import OPEN as CORE_OPEN
from .watchdog import RESCUE_AFTER, start_thread, watchdog
from .websocket import websocket

__all__ = ["Connection", "DEFAULT_CLOSE_TIMEOUT", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_QUEUE_BYTES",
           "DEFAULT_MAX_FRAGMENTS", "DEFAULT_MAX_OUTBOX",
           "DEFAULT_PING_INTERVAL", "DEFAULT_PING_TIMEOUT"]

logger = logging.getLogger("twspy.connection")

DEFAULT_CLOSE_TIMEOUT = 5.0   # seconds to wait for the peer's close frame / TCP close
DEFAULT_MAX_QUEUE = 16        # messages read ahead while a slow handler runs
DEFAULT_MAX_QUEUE_BYTES = 2 << 20  # ... and at most this many payload bytes (issue 20: 16 x 1 MB each)
DEFAULT_MAX_FRAGMENTS = 1 << 17  # frames in one fragmented message (Autobahn 9.3.1 sends 65,536)
# Connection's keywords that Server and connect() take on its behalf.
CONNECTION_OPTIONS = ("close_timeout", "max_queue", "max_outbox", "ping_interval", "ping_timeout", "queue_messages",
                      "max_fragments", "max_queue_bytes", "background")
_SEPARATE = 16 * 1024  # from this size a message's frames are written in pieces (Protocol.encode_frames)
_FEED_SLICE = 4096  # with an extension that inflates, reads are fed to the core in slices this large
DEFAULT_PING_INTERVAL = 20.0  # Server and connect() send keepalive pings this often...
DEFAULT_PING_TIMEOUT = 20.0   # ...and drop a peer that leaves one unanswered this long

OPEN, CLOSING, CLOSED = "OPEN", "CLOSING", "CLOSED"

MessageLike = Union[Message, str, bytes, bytearray, memoryview]


class Connection:
    """A WebSocket connection that speaks messages.

    Args:
        sock: a :class:`~twspy.websocket.websocket` whose handshake is done.
        close_timeout: seconds to wait for the peer's side of the closing handshake.
        max_size: largest message (after extensions) accepted; default: ``sock.max_size``.
        max_queue: messages read ahead while ``onmessage`` is slow.
        max_queue_bytes: payload bytes read ahead at most (reading stops once the queued
            messages hold this many, so one message always fits and TCP slows the peer down).
        max_outbox: bytes queued by :meth:`send_nowait` for a peer that does not read.
        ping_interval: send a keepalive ping this often (seconds; None: never).
        ping_timeout: while the connection is being read, a keepalive ping unanswered
            for this long fails it (close 1011, then TCP dropped: 1006 locally).
        max_fragments: frames one fragmented message may span; beyond, close 1009 (a message
            that never ends is too big to process, however small its frames; None: no limit).
        background: while no thread reads (not in :meth:`recv`, iteration or
            :meth:`receive_forever`), read in the background anyway: pings are answered, the
            close handshake is seen, and messages wait (at most ``max_queue`` /
            ``max_queue_bytes``; then reading stops and TCP slows the peer down). ``connect()``
            turns it on; False for a single-threaded script that reads only when it wants to.
        queue_messages: also put every message that :meth:`receive_forever` delivers (after
            ``onmessage``) on an in-queue that another thread reads with :meth:`pop_in_message`.
            The queue holds at most ``max_queue`` messages (DEFAULT_MAX_QUEUE if None) and
            ``max_queue_bytes`` (past which it takes no more); when it is full the reading
            thread waits, so the peer is slowed down by TCP, not dropped.

    Handlers (override them; they run in the reading thread): ``onopen()``,
    ``onmessage(message)``, ``onping(payload)``, ``onpong(payload)``,
    ``onclose(code, reason)`` (exactly once) and ``onerror(exc)``.
    """

    @keyword_only(2)
    def __init__(self, sock: websocket, *, close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
                 max_size: int | None = -1, max_queue: int = DEFAULT_MAX_QUEUE,
                 max_outbox: int = DEFAULT_MAX_OUTBOX, ping_interval: float | None = None,
                 ping_timeout: float | None = None, queue_messages: bool = False,
                 max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES, background: bool = False) -> None:
        if not sock.handshake_done:
            raise InvalidState("Connection needs a websocket whose handshake is done")
        self.sock = sock
        self.close_timeout = close_timeout
        self.max_size = sock.max_size if max_size == -1 else max_size
        self.max_queue = max_queue
        self.max_fragments = max_fragments
        self.max_queue_bytes = max_queue_bytes
        # Background reading needs a transport that can tell it has bytes (a mux channel cannot).
        self._sock_readable: Callable[[], bool] | None = getattr(sock, "readable", None) if background else None
        self.background = self._sock_readable is not None
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._ping_sent: float | None = None   # monotonic time of the unanswered keepalive ping
        self._ping_payload = b""
        self._next_ping = None if ping_interval is None else time.monotonic() + ping_interval
        self._readers = 0                         # threads currently reading (keepalive judges only then)
        self._recv_wanted = False                 # a recv() waits for the helper reader's read lock
        self.state = OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self._close_cause: BaseException | None = None  # what made us close, for ConnectionClosedError
        self.close_sent = False
        self.close_received = False
        self._closed = threading.Event()
        self._state_lock = threading.Lock()
        self._read_lock = threading.RLock()  # reentrant: a handler may close from the reading thread
        self._onclose_called = False
        self._inbox: collections.deque[Message] = collections.deque()
        self._debug = logger.isEnabledFor(logging.DEBUG)
        # The rules live in the sans-I/O core; this shell moves bytes (a websocket) or, for a
        # transport that parses frames itself (a mux channel), frames. The core answers a close
        # frame and fails the connection only once the messages before them were handed over
        # (answer_close=False, defer_failure), so that their replies go out first (§5.5.1).
        self._read_bytes: Callable[[float | None], bytes] | None = getattr(sock, "read_bytes", None)
        self._proto = Protocol(SERVER if sock.server_side else CLIENT, max_size=self.max_size,
                               max_fragments=max_fragments, extensions=sock.extensions, answer_close=False,
                               logger=cast(logging.Logger, _ConnectionLog(logger, {"conn": self}))
                               if self._debug else logger)
        self._proto.defer_failure = True
        # Serialises the core between the reading thread and the control frames other threads
        # send; data messages are encoded under the send lock only (the core's state check is
        # a read, and a compressor's history must follow the wire order, which that lock keeps).
        self._proto_lock = threading.Lock()
        self._events: collections.deque[Any] = collections.deque()  # events of the last read not handled yet
        self._parse_message = self._proto.parse_message
        self._encode_data = self._proto.encode_data
        # A websocket's frames go straight to its socket; a mux channel re-encapsulates them.
        self._send_bytes: Callable[[bytes], Any] = (sock.sock.sendall if isinstance(sock, websocket)
                                                    else sock.send_frame_bytes)
        self._whole_frames = self._read_bytes is None  # a mux channel takes whole frames only
        self._send_pieces: Callable[[list[bytes]], Any] = getattr(sock, "send_pieces", self._write)
        self._inflates = bool(sock.extensions)  # a codec may inflate: big reads are fed in slices
        self._unfed = b""  # received bytes not fed to the core yet (see _feed_slices)
        # watchdog state
        self.handler_since: float | None = None
        self._rescuing = False
        # non-blocking sends (broadcast)
        self.outbox = Outbox(self, sock.send_lock, self._frame_bytes, sock, self._send_bytes,
                             self._lost, self._finish, max_outbox)
        # queue controller (queue_messages): messages from receive_forever for pop_in_message
        self.queue_messages = queue_messages
        self._in_queue: InQueue | None = InQueue(
            DEFAULT_MAX_QUEUE if max_queue is None else max_queue, max_queue_bytes,
            lambda: self.close_sent, self) if queue_messages else None
        self._send_lock = sock.send_lock
        if ping_interval is not None or self.background:
            watchdog.add(self)
        self._call_handler(self.onopen)

    # -- handlers --------------------------------------------------------------------------
    def onopen(self) -> None:
        """Called once the connection is open. May be overridden."""

    def onmessage(self, message: Message) -> None:
        """Called for every message by :meth:`receive_forever`. May be overridden."""

    def onping(self, payload: bytes) -> None:
        """Called for every ping, after the pong is sent. May be overridden."""

    def onpong(self, payload: bytes) -> None:
        """Called for every pong. May be overridden."""

    def onclose(self, code: int, reason: str) -> None:
        """Called exactly once when the connection is closed, however that happened. May be overridden."""

    def onerror(self, exc: BaseException) -> None:
        """Called when the connection fails (protocol error, handler exception, I/O error). May be overridden."""

    # -- properties ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def protocol(self) -> str | None:
        """The negotiated subprotocol."""
        return self.sock.protocol

    @property
    def max_outbox(self) -> int:
        """Bytes queued by :meth:`send_nowait` at most before the peer is dropped (1013)."""
        return self.outbox.max_outbox

    @max_outbox.setter
    def max_outbox(self, value: int) -> None:
        self.outbox.max_outbox = value

    @property
    def can_share_frames(self) -> bool:
        """Whether a message's frame bytes can be shared with other such connections
        (:meth:`prepare`): nothing masks or compresses them."""
        return not self._proto.extensions and bool(self.sock.can_share_frames)

    def __repr__(self) -> str:
        return "<%s %s %s>" % (type(self).__name__, self.state, getattr(self.sock, "address", None))

    # -- sending ---------------------------------------------------------------------------
    def _encode(self, message: MessageLike) -> Any:
        if isinstance(message, str):
            opcode, payload = OPCODE_TEXT, message.encode("utf-8")
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode, payload = OPCODE_BINARY, bytes(message) if not isinstance(message, bytes) else message
        elif isinstance(message, Message):
            opcode, payload = message.opcode, message.encode()
        else:
            raise TypeError("cannot send %s" % type(message).__name__)
        return opcode, payload

    def send(self, message: MessageLike, fragment_size: int | None = None, compress: bool = True) -> None:
        """Send a message: a Message, a ``str`` (text) or bytes (binary).

        ``fragment_size`` splits it into frames of at most that many bytes (§5.4);
        ``compress=False`` sends this one uncompressed when permessage-deflate is on.
        Raises ConnectionClosed once the closing handshake has started.
        """
        if self.state != OPEN or self.close_sent:
            raise self._closed_error()
        item: Any = message
        kind = type(item)  # the common cases first, without the isinstance chain
        if kind is str:
            opcode, payload = OPCODE_TEXT, item.encode("utf-8")
        elif kind is TextMessage:
            opcode, payload = OPCODE_TEXT, item.payload.encode("utf-8")
        elif kind is BinaryMessage or kind is bytes:
            opcode, payload = OPCODE_BINARY, item if kind is bytes else item.payload
        else:
            opcode, payload = self._encode(item)
        try:
            with self._send_lock:
                if self.close_sent:
                    raise self._closed_error()
                if (fragment_size is None and len(payload) < _SEPARATE) or self._whole_frames:
                    self._send_bytes(self._encode_data(opcode, payload, fragment_size, compress))
                else:  # a large payload is written apart from its header, never copied
                    self._send_pieces(self._proto.encode_frames(opcode, payload, fragment_size, compress))
        except InvalidState:  # the core's closing handshake started first
            raise self._closed_error() from None
        except OSError as exc:
            self._lost(exc)
            raise self._closed_error() from exc

    def send_ping(self, payload: bytes | str = b"") -> None:
        """Send a ping (at most 125 bytes); the peer answers with a pong (``onpong``)."""
        self._send_control(OPCODE_PING, payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))

    def send_pong(self, payload: bytes | str = b"") -> None:
        """Send an unsolicited pong (a one-way heartbeat, §5.5.3)."""
        self._send_control(OPCODE_PONG, payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))

    def _send_control(self, opcode: int, payload: bytes) -> None:
        if len(payload) > 125:
            raise ValueError("control frame payload is %d bytes; the limit is 125" % len(payload))
        if self.state != OPEN or self.close_sent:
            raise self._closed_error()
        proto = self._proto
        try:
            with self._send_lock:
                with self._proto_lock:
                    if opcode == OPCODE_PING:
                        proto.send_ping(payload)
                    else:
                        proto.send_pong(payload)
                self._write(proto.data_to_send())
        except InvalidState:
            raise self._closed_error() from None
        except OSError as exc:
            self._lost(exc)
            raise self._closed_error() from exc

    def _write(self, out: list[bytes]) -> None:
        """Write what the core queued, in order; ``b""`` half-closes. The caller holds the send lock."""
        for data in out:
            if data:
                self._send_bytes(data)
            else:
                self.sock.half_close()

    def _send_pending(self) -> None:
        """Write what the core queued while reading (a pong, a close frame), under the send lock
        so that it keeps its place among other threads' frames."""
        with self._send_lock:
            self._write(self._proto.data_to_send())

    def prepare(self, message: MessageLike) -> bytes | None:
        """Encode ``message`` once as frame bytes that several server connections can share.

        Returns None when this connection cannot share frames (it masks or compresses).
        """
        if not self.can_share_frames:
            return None
        opcode, payload = self._encode(message)
        try:
            return self._encode_data(opcode, payload)
        except InvalidState:  # closing: send_nowait drops it
            return None

    def send_nowait(self, message: MessageLike, prepared: bytes | None = None) -> None:
        """Send without ever blocking the caller (used by Server.broadcast).

        ``prepared`` is the message already encoded by :meth:`prepare`. What the socket
        cannot take now is queued, in order, and a helper thread flushes it; a peer that lets
        the queue grow past ``max_outbox`` bytes is dropped (1013).
        """
        if self.state != OPEN or self.close_sent:
            return
        if self._debug:
            logger.debug("%r > %r (non-blocking)", self, as_message(message) if prepared is None else
                         "%d prepared bytes" % len(prepared))
        self.outbox.put(message, prepared)

    def _frame_bytes(self, message: MessageLike) -> bytes:
        """``message`` as wire bytes (b"" once the core no longer sends); the caller holds the send lock."""
        opcode, payload = self._encode(message)
        try:
            return self._encode_data(opcode, payload)
        except InvalidState:  # the closing handshake started: nothing more to send (§7.1.2)
            return b""

    # -- receiving -------------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Message:
        """Receive the next message, answering pings and handling close on the way.

        Raises ConnectionClosed (code and reason) once the connection is closed and
        TimeoutError when ``timeout`` seconds pass without a whole message.
        """
        inbox = self._inbox
        if inbox:
            return inbox.popleft()
        if self._rescuing:  # a helper reads: it hands over after the message it is reading
            self._recv_wanted = True
        if timeout is None:
            deadline = None
            self._read_lock.acquire()
        else:
            deadline = time.monotonic() + timeout
            if not self._read_lock.acquire(timeout=max(0.0, timeout)):
                raise TimeoutError("timed out waiting for a message")
        self._readers += 1
        try:
            if inbox:
                return inbox.popleft()
            while True:
                message = self._read_one(deadline)
                if message is not None:
                    return message
        finally:
            self._readers -= 1
            self._read_lock.release()

    def __iter__(self) -> Iterator[Message]:
        """Iterate over messages until the connection closes, normally or not.

        The loop ends quietly either way (``reconnect()``'s loop relies on it); ``close_code``
        tells how it ended, and :meth:`recv` raises ConnectionClosedOK or ConnectionClosedError.
        """
        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                return

    def receive_forever(self) -> None:
        """Read messages and call ``onmessage`` for each until the connection closes.

        An exception in a handler is logged, given to ``onerror`` and closes the connection
        with 1011. Returns when the connection is closed. With ``queue_messages``, each
        message is then put on the in-queue for :meth:`pop_in_message`.
        """
        watchdog.add(self)
        queue = self._in_queue  # None unless queue_messages: one check per message on the hot path
        if queue is not None:
            queue.add_feeder()
        try:
            while True:
                try:
                    message = self.recv()
                except ConnectionClosed:
                    return
                self.handler_since = time.monotonic()
                try:
                    self.onmessage(message)
                except ConnectionClosed as exc:
                    if self.state != CLOSED and not self.close_sent:
                        self._handler_failed(exc)
                    return  # otherwise the handler's send met a connection that is gone: not its bug
                except Exception as exc:
                    self._handler_failed(exc)
                    return
                finally:
                    self.handler_since = None
                if queue is not None:
                    queue.put(message)
        finally:
            if queue is not None:
                queue.remove_feeder()  # poppers now read the socket themselves
            if (self.ping_interval is None and not self.background) or self.state == CLOSED:
                watchdog.discard(self)

    # -- queue controller: drive the connection from another thread ---------------------------
    def _wake_queue(self) -> None:
        """The closing handshake started or the connection closed: wake in-queue waiters."""
        if self._in_queue is not None:
            self._in_queue.wake()

    def pop_in_message(self, timeout: float | None = None) -> Message | None:
        """The next message received, in arrival order; None once the connection is closed and drained.

        Needs ``queue_messages=True``. While a thread runs :meth:`receive_forever`, this
        takes messages from the in-queue it fills (after ``onmessage``); otherwise it reads
        the socket itself, like :meth:`recv` (``onmessage`` is not called then). The two
        cases are told apart by the set of threads inside receive_forever, checked with the
        read lock held, so messages keep their order; a message read here while a thread
        entered receive_forever is handed to it. Do not call it from the thread that runs
        receive_forever (it would wait for itself).

        Raises:
            TimeoutError: ``timeout`` seconds passed without a message.
            InvalidState: the connection was made without ``queue_messages``, or this thread
                is the one that runs receive_forever.
        """
        queue = self._in_queue
        if queue is None:
            raise InvalidState("pop_in_message needs a Connection made with queue_messages=True")
        if threading.get_ident() in queue.feeders:
            raise InvalidState("pop_in_message called from the thread that runs receive_forever")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = queue.take(deadline)
            if message is not None:
                return message
            # Nobody runs receive_forever: read the socket here, holding the read lock so that
            # a receive_forever starting now reads only after this message (order kept).
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._read_lock.acquire(timeout=-1 if left is None else left):
                raise TimeoutError("timed out waiting for a message")
            try:
                if queue.busy():
                    continue  # receive_forever started meanwhile: take from the queue
                try:
                    message = self.recv(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except ConnectionClosed:
                    return None
                if not queue.fed():
                    return message
                # receive_forever started while this thread was reading (it waits for the read
                # lock): hand it the message, older than any it will read, so that it goes
                # through onmessage and the queue like the rest.
                self._inbox.appendleft(message)
            finally:
                self._read_lock.release()

    def push_out_message(self, message: MessageLike) -> None:
        """Send ``message`` (like :meth:`send`) from any thread without ever blocking on the peer.

        Pushes go out in order, through :meth:`send_nowait`'s bounded outbox: a peer that
        lets more than ``max_outbox`` bytes pile up is dropped (1013).

        Raises:
            ConnectionClosed: the closing handshake has started or the connection is closed.
            TypeError: ``message`` is not a str, bytes-like or Message.
        """
        if not isinstance(message, (str, bytes, bytearray, memoryview, Message)):
            raise TypeError("cannot send %s" % type(message).__name__)
        if self.should_stop():
            raise self._closed_error()
        self.outbox.put(message, None)

    def should_stop(self) -> bool:
        """Whether the closing handshake has started (either side) or the connection is closed.

        A producer loop ``while not conn.should_stop(): conn.push_out_message(...)`` ends with
        the connection (a push may still race with the close and raise ConnectionClosed).
        """
        return self.close_sent or self.close_received or self.state != OPEN

    def _readable(self) -> bool:
        """Whether a read would make progress: events are pending, or the transport has bytes."""
        return bool(self._events or self._unfed) or (self._sock_readable is not None and self._sock_readable())

    def _inbox_full(self) -> bool:
        """Whether read-ahead must stop: ``max_queue`` messages or ``max_queue_bytes`` queued."""
        inbox = self._inbox
        if len(inbox) >= self.max_queue:
            return True
        # list() copies the deque at once (recv() may pop from another thread); at most
        # max_queue items, and only when reading ahead.
        return sum(len(message) for message in list(inbox)) >= self.max_queue_bytes

    def _read_one(self, deadline: float | None) -> Message | None:
        """Handle the next event of the core, reading once when none is pending (holding the
        read lock); a Message when one completes."""
        if self.state == CLOSED:
            raise self._closed_error()
        events = self._events
        proto = self._proto
        try:
            while not events:
                if proto.error is not None:
                    raise proto.error  # after the messages parsed before it (defer_failure)
                read = self._read_bytes
                if read is not None:
                    data = self._unfed
                    if data:
                        self._unfed = b""
                    else:
                        data = read(deadline)
                        message = self._parse_message(data)  # the fused path: one whole small frame
                        if message is not None:
                            return message
                    if self._inflates and len(data) > _FEED_SLICE:
                        received = self._feed_slices(data)
                    else:
                        with self._proto_lock:
                            proto.receive_data(data)
                            received = proto.events_received()
                else:
                    frame = self.sock.read_frame(deadline)
                    with self._proto_lock:
                        proto.receive_frame(frame)
                        received = proto.events_received()
                if proto.has_data_to_send():
                    self._send_pending()
                events.extend(received)
            event = events.popleft()
            kind = type(event)
            if kind is TextMessage or kind is BinaryMessage:
                return event  # type: ignore[no-any-return]
            if kind is Ping:  # the core queued the pong, sent above
                self._call_handler(self.onping, event.data)
            elif kind is Pong:
                if self._ping_sent is not None and event.data == self._ping_payload:
                    self._ping_sent = None
                self._call_handler(self.onpong, event.data)
            elif kind is Close:  # answered now, after the messages before it (§5.5.1)
                self.close_received = True
                self._answer_close()
                self._finish(event.code, event.reason)
                raise closed_error(event.code, event.reason)
            return None
        except ProtocolError as exc:
            self._fail(exc)
        except ConnectionClosed:
            self._lost(None)
        except TimeoutError:
            raise  # nothing lost: the core keeps partial frames for the next call
        except OSError as exc:
            self._lost(exc)
        raise self._closed_error()

    def _feed_slices(self, data: bytes) -> list[Any]:
        """Feed a read to the core in slices, and keep the rest for later once its messages
        hold ``max_queue_bytes``: compressed messages inflate (1 KiB of zeros is 1 MiB), so one
        64 KiB read could otherwise hold dozens of ``max_size`` messages at once."""
        proto = self._proto
        received: list[Any] = []
        size = 0
        for start in range(0, len(data), _FEED_SLICE):
            with self._proto_lock:
                proto.receive_data(data[start:start + _FEED_SLICE])
                events = proto.events_received()
            received.extend(events)
            size += sum(len(event) for event in events if isinstance(event, Message))
            if size >= self.max_queue_bytes and start + _FEED_SLICE < len(data):
                self._unfed = data[start + _FEED_SLICE:]  # fed on the next read, before the socket
                break
        return received

    # -- closing ---------------------------------------------------------------------------
    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Run the closing handshake (§7) with ``code`` and ``reason`` and return.

        Waits up to ``close_timeout`` for the peer's close frame (and, on a client, for
        the server to close TCP), then closes the socket. Calling it again does nothing.
        """
        if not valid_close_code(code):
            raise ValueError("close code %r may not be sent (RFC 6455 §7.4)" % (code,))
        if self.state == CLOSED:
            return
        encode_close(code, reason)  # validate the reason before changing any state
        self._send_close(code, reason)
        self._wait_closed()

    def _answer_close(self) -> None:
        """Answer the peer's close frame (the core echoes its code), unless ours is out."""
        self._send_close(None, "", answer=True)

    def _send_close(self, code: int | None, reason: str, answer: bool = False) -> None:
        """Send our close frame once: ``code`` and ``reason``, the code of the protocol error
        the core found (§7.1.7), or (``answer``) the echo of the peer's close frame (§5.5.1)."""
        with self._state_lock:
            if self.close_sent or self.state == CLOSED:
                return
            self.close_sent = True
            self.state = CLOSING
        self._wake_queue()
        proto = self._proto
        try:
            with self._send_lock:
                with self._proto_lock:
                    if proto.failure_pending:
                        proto.fail_pending()
                    elif proto.state is CORE_OPEN:  # else the core sent one (a failure)
                        if answer and proto.close_rcvd is not None:
                            proto.answer_close()
                        else:
                            proto.send_close(code, reason)
                self._write(proto.data_to_send())
        except OSError:
            pass  # the peer is gone: _wait_closed ends with 1006

    def start_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Begin the closing handshake without blocking; the reading thread finishes it."""
        encode_close(code, reason)
        with self._state_lock:
            if self.close_sent or self.state == CLOSED:
                return
            self.close_sent = True
            self.state = CLOSING
        self._wake_queue()
        proto = self._proto
        with self._proto_lock:
            if proto.state is CORE_OPEN:
                proto.send_close(code, reason)
            data = b"".join(proto.data_to_send())
        if data:
            self.outbox.put(None, data)

    def _wait_closed(self) -> None:
        deadline = None if self.close_timeout is None else time.monotonic() + self.close_timeout
        while not self._closed.is_set():
            left = -1 if deadline is None else deadline - time.monotonic()
            if left != -1 and left <= 0:
                break
            if not self._read_lock.acquire(timeout=left):
                break
            try:
                # Read until the peer's close frame arrives; messages it sent before that are
                # kept for recv() (bounded by max_queue, beyond which §7.1.2 lets us drop them).
                while not self._closed.is_set():
                    try:
                        message = self._read_one(deadline)
                        if message is not None and not self._inbox_full():
                            self._inbox.append(message)
                    except ConnectionClosed:
                        break
                    except TimeoutError:
                        deadline = time.monotonic()
                        break
            finally:
                self._read_lock.release()
        if not self._closed.is_set():
            logger.debug("%r: no close frame from the peer within %ss", self, self.close_timeout)
            self._finish(CLOSE_ABNORMAL, "")

    def _fail(self, exc: ProtocolError) -> None:
        """Fail the connection (§7.1.7): send a close with the error's code, then close."""
        if self.state == CLOSED:
            return
        logger.info("%r: %s", self, exc)
        self._close_cause = exc
        self._call_handler(self.onerror, exc)
        self._send_close(exc.code, short_reason(exc.message))
        if not self.close_received:
            self._discard_until_eof()
        self._finish(exc.code, exc.message)

    def _discard_until_eof(self) -> None:
        """§7.1.7: process nothing more; a server half-closes, both wait (bounded) for the peer's EOF."""
        if self.sock.server_side:
            self.sock.half_close()
        self.sock.wait_eof(None if self.close_timeout is None else time.monotonic() + self.close_timeout,
                           discard=True)

    def _drain_until_close(self) -> None:
        """After sending a close (holding the read lock): wait for the peer's, bounded."""
        deadline = None if self.close_timeout is None else time.monotonic() + self.close_timeout
        events = self._events
        proto = self._proto
        while self.state != CLOSED and proto.error is None:
            while events:
                event = events.popleft()
                if type(event) is Close:
                    self.close_received = True
                    self._finish(event.code, event.reason)
                    return
            try:
                read = self._read_bytes
                received = read(deadline) if read is not None else self.sock.read_frame(deadline)
            except (ProtocolError, ConnectionClosed, OSError, TimeoutError):
                break
            with self._proto_lock:
                if read is not None:
                    proto.receive_data(received)  # type: ignore[arg-type]
                else:
                    proto.receive_frame(received)  # type: ignore[arg-type]
                events.extend(proto.events_received())
        self._finish(CLOSE_ABNORMAL, "")

    def _lost(self, exc: BaseException | None) -> None:
        """The TCP connection broke (or the peer closed it) without a closing handshake."""
        if self.state == CLOSED:
            return
        if exc is not None:
            logger.debug("%r: connection lost: %s", self, exc)
        self._finish(CLOSE_ABNORMAL, "")

    def _finish(self, code: int, reason: str) -> None:
        """Enter CLOSED once: close TCP (server first, §7.1.1), then call onclose."""
        with self._state_lock:
            if self.state == CLOSED:
                return
            self.state = CLOSED
            self.close_code = code
            self.close_reason = reason
            self.close_sent = True
        self._wake_queue()
        sock = self.sock
        if not sock.server_side and self.close_received and code != CLOSE_ABNORMAL:
            # §7.1.1: the client waits for the server to close TCP first (bounded).
            sock.wait_eof(time.monotonic() + (self.close_timeout or 0))
        sock.abort()
        self._closed.set()
        watchdog.discard(self)
        self._call_handler(self.onclose, code, reason)

    def abort(self) -> None:
        """Close the TCP connection at once, without a closing handshake (code 1006)."""
        self._finish(CLOSE_ABNORMAL, "")

    def _closed_error(self) -> ConnectionClosed:
        """ConnectionClosedOK (1000, 1001, 1005) or ConnectionClosedError, with the error that
        made us close (if any) as its ``cause``: e.g. PayloadTooBig for 1009."""
        if self.state == CLOSED:
            return closed_error(self.close_code or CLOSE_ABNORMAL, self.close_reason, self._close_cause)
        return closed_error(self.close_code or CLOSE_ABNORMAL, "closing handshake in progress", self._close_cause)

    def _call_handler(self, handler: Any, *args: Any) -> None:
        try:
            handler(*args)
        except Exception as exc:
            if handler == self.onerror or handler == self.onclose:
                logger.exception("%r: error in %s", self, handler.__name__)
                return
            self._handler_failed(exc)

    def _handler_failed(self, exc: Exception) -> None:
        logger.error("%r: error in handler", self, exc_info=exc)
        self._close_cause = exc
        try:
            self.onerror(exc)
        except Exception:
            logger.exception("%r: error in onerror", self)
        if self.state != CLOSED:
            self._send_close(CLOSE_UNABLE, "")
            if self.state != CLOSED and self._read_lock.acquire(blocking=False):
                try:
                    self._drain_until_close()
                finally:
                    self._read_lock.release()
            else:
                self._wait_closed()

    # -- watchdog: keepalive, and reading on while a slow handler runs ------------------------
    def is_keepalive_pong(self, payload: bytes) -> bool:
        """Whether ``payload`` answers this connection's own keepalive ping (a relay keeps it)."""
        return bool(payload) and payload == self._ping_payload

    def _keepalive(self, now: float) -> None:
        """Called by the watchdog: send the next ping, or fail a peer that stopped answering."""
        if self.state != OPEN or self.close_sent:
            return
        if self._ping_sent is not None:
            read = self._readers or (self.background and not self._inbox_full())
            if self.ping_timeout is not None and read and now - self._ping_sent > self.ping_timeout:
                logger.info("%r: no pong within %ss; closing", self, self.ping_timeout)
                self._ping_sent = None
                self.start_close(CLOSE_UNABLE, "keepalive ping timeout")
                # The peer is not answering: do not wait for its close frame (1006 locally).
                self._finish(CLOSE_ABNORMAL, "keepalive ping timeout")
            return
        if self._next_ping is not None and now >= self._next_ping:
            self._next_ping = now + (self.ping_interval or 0)
            self._ping_payload = os.urandom(4)
            lock = self._send_lock
            if lock.acquire(blocking=False):  # never wait behind a large send: try next round
                # Outstanding before it is sent: the reading thread may see the pong before
                # it is written, and must recognise it.
                self._ping_sent = now
                try:
                    with self._proto_lock:
                        self._proto.send_ping(self._ping_payload)
                    self._write(self._proto.data_to_send())
                except (OSError, InvalidState):
                    self._ping_sent = None
                finally:
                    lock.release()

    def watchdog_tick(self, now: float) -> None:
        """Called by the watchdog (:mod:`twspy.watchdog`) about every ``RESCUE_AFTER / 2`` seconds:
        keepalive, a helper reader for a handler that runs long, background reading."""
        if self.ping_interval is not None:
            self._keepalive(now)
        since = self.handler_since
        if since is not None and now - since >= RESCUE_AFTER and not self._rescuing and self.state == OPEN:
            self._rescuing = True
            if not start_thread(self._rescue, name="twspy-rescue"):
                self._rescuing = False  # try again next round; the handler's thread reads after it
        elif self.background and not self._readers and not self._rescuing and self.state != CLOSED \
                and self._readable():
            self._rescuing = True
            if not start_thread(self._read_idle, name="twspy-rescue"):
                self._rescuing = False

    # -- watchdog: keep reading while a slow handler runs -------------------------------------
    def _rescue(self) -> None:
        if not self._read_lock.acquire(blocking=False):
            self._rescuing = False
            return
        self._readers += 1
        try:
            while self.handler_since is not None and self.state == OPEN and not self._inbox_full():
                try:
                    message = self._read_one(time.monotonic() + 0.05)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return
                if message is not None:
                    self._inbox.append(message)
        finally:
            self._readers -= 1
            self._rescuing = False
            self._read_lock.release()

    def _read_idle(self) -> None:
        """Background reading (``background=True``), started by the watchdog when the socket
        has bytes and no thread reads: process what has arrived, then return.

        Short waits (5 ms) keep the read lock free for a recv() that comes along; messages
        wait in the inbox (recv() takes them first, in order). Once our close frame is out,
        messages beyond the bounds are dropped (§7.1.2) so that the peer's close is read.
        """
        if not self._read_lock.acquire(blocking=False):
            self._rescuing = False
            return
        self._readers += 1
        try:
            while self.state != CLOSED and (self.close_sent or not self._inbox_full()):
                try:
                    message = self._read_one(time.monotonic() + 0.005)
                except (TimeoutError, ConnectionClosed):
                    return
                if message is not None and not (self.close_sent and self._inbox_full()):
                    self._inbox.append(message)
                if self._recv_wanted:
                    return
        finally:
            self._readers -= 1
            self._recv_wanted = False
            self._rescuing = False
            self._read_lock.release()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _ConnectionLog(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]  # generic from 3.11 on
    """The core's DEBUG lines (frames both ways), prefixed with the connection."""

    def process(self, msg: Any, kwargs: Any) -> Any:
        return "%s %s" % (repr(self.extra["conn"]).replace("%", "%%"), msg), kwargs  # type: ignore[index,unused-ignore]
