"""Connection: messages, fragmentation, control frames and the close handshake (RFC 6455 §5-§7).

A :class:`Connection` runs over a handshaken :class:`~twspy.websocket.websocket`. Use it
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

import codecs
import collections
import logging
import os
import threading
import time
from typing import Any, Deque, Iterator, List, Optional, Union

from .errors import ConnectionClosed, InvalidState, PayloadTooBig, ProtocolError
from .frame import (CLOSE_ABNORMAL, CLOSE_NO_STATUS, CLOSE_NORMAL, CLOSE_TRY_AGAIN_LATER, CLOSE_UNABLE,
                    OPCODE_BINARY, OPCODE_CLOSE,
                    OPCODE_CONTINUATION, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, decode_close, encode_close,
                    _header, _short_reason, mask, pack_frame, valid_close_code)
from .message import BinaryMessage, Message, TextMessage
from .websocket import websocket

__all__ = ["Connection", "DEFAULT_CLOSE_TIMEOUT", "DEFAULT_MAX_QUEUE", "DEFAULT_PING_INTERVAL",
           "DEFAULT_PING_TIMEOUT"]

logger = logging.getLogger("twspy.connection")

DEFAULT_CLOSE_TIMEOUT = 5.0   # seconds to wait for the peer's close frame / TCP close
DEFAULT_MAX_QUEUE = 16        # messages read ahead while a slow handler runs
RESCUE_AFTER = 0.1            # a handler running this long gets a helper reader
# Connection's keywords that Server and connect() take on its behalf.
CONNECTION_OPTIONS = ("close_timeout", "max_queue", "max_outbox", "ping_interval", "ping_timeout", "queue_messages")
_FAST_SEND = 16 * 1024  # Connection.send's fused path: frames below this join header and payload
DEFAULT_MAX_OUTBOX = 4 << 20  # bytes queued for a slow client by non-blocking sends
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
        max_outbox: bytes queued by :meth:`send_nowait` for a peer that does not read.
        ping_interval: send a keepalive ping this often (seconds; None: never).
        ping_timeout: while the connection is being read, a keepalive ping unanswered
            for this long fails it (close 1011, then TCP dropped: 1006 locally).
        queue_messages: also put every message that :meth:`receive_forever` delivers (after
            ``onmessage``) on an in-queue that another thread reads with :meth:`pop_in_message`.
            The queue holds at most ``max_queue`` messages (DEFAULT_MAX_QUEUE if None); when it
            is full the reading thread waits, so the peer is slowed down by TCP, not dropped.

    Handlers (override them; they run in the reading thread): ``onopen()``,
    ``onmessage(message)``, ``onping(payload)``, ``onpong(payload)``,
    ``onclose(code, reason)`` (exactly once) and ``onerror(exc)``.
    """

    def __init__(self, sock: websocket, close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
                 max_size: Optional[int] = -1, max_queue: int = DEFAULT_MAX_QUEUE,
                 max_outbox: int = DEFAULT_MAX_OUTBOX, ping_interval: Optional[float] = None,
                 ping_timeout: Optional[float] = None, queue_messages: bool = False) -> None:
        if not sock.handshake_done:
            raise InvalidState("Connection needs a websocket whose handshake is done")
        self.sock = sock
        self.close_timeout = close_timeout
        self.max_size = sock.max_size if max_size == -1 else max_size
        self.max_queue = max_queue
        self.max_outbox = max_outbox
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._ping_sent: Optional[float] = None   # monotonic time of the unanswered keepalive ping
        self._ping_payload = b""
        self._next_ping = None if ping_interval is None else time.monotonic() + ping_interval
        self._readers = 0                         # threads currently reading (keepalive judges only then)
        self.state = OPEN
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self.close_sent = False
        self.close_received = False
        self._closed = threading.Event()
        self._state_lock = threading.Lock()
        self._read_lock = threading.RLock()  # reentrant: a handler may close from the reading thread
        self._onclose_called = False
        self._inbox: Deque[Message] = collections.deque()
        self._codecs = sock.message_codecs
        self._rsv_owned = 0
        for codec in self._codecs:
            self._rsv_owned |= codec.rsv
        # message being assembled
        self._msg_opcode: Optional[int] = None
        self._msg_rsv = 0
        self._msg_parts: List[Any] = []
        self._msg_size = 0
        self._decoder: Any = None
        # watchdog state
        self.handler_since: Optional[float] = None
        self._rescuing = False
        # non-blocking sends (broadcast)
        self._outbox: Optional[Deque[bytes]] = None
        self._outbox_size = 0
        self._overflowed = False  # set once the outbox overflowed: the 1013 close is on its way
        self._out_lock = threading.Lock()
        # queue controller (queue_messages): messages from receive_forever for pop_in_message
        self.queue_messages = queue_messages
        self._in_queue: Optional[Deque[Message]] = collections.deque() if queue_messages else None
        self._in_bound = DEFAULT_MAX_QUEUE if max_queue is None else max(1, max_queue)
        self._in_lock = threading.Lock()
        self._in_not_empty = threading.Condition(self._in_lock)
        self._in_not_full = threading.Condition(self._in_lock)
        self._feeders: "set[int]" = set()  # threads in receive_forever feeding the in-queue
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._validator: Any = None  # UTF-8 check of a text frame that is still arriving
        self._partial_checks = not self._codecs and hasattr(sock, "partial_hook")
        if self._partial_checks:
            sock.partial_hook = self._check_partial
        # The fused receive path (websocket.read_data_frame) when nothing transforms frames or
        # messages and frames are not logged: the common small message skips the Frame object.
        self._fast_read = None if (self._codecs or self._debug or getattr(sock, "_frame_codecs", True)) \
            else getattr(sock, "read_data_frame", None)
        # ... and the fused send of a small frame with nothing to encode (websocket only).
        self._send_lock = sock.send_lock
        self._mask_out = getattr(sock, "_mask_out", None)
        self._fast_send = sock.sock.sendall if (not self._codecs and self._mask_out is not None
                                                and not getattr(sock, "_frame_codecs", True)) else None
        if ping_interval is not None:
            _watchdog.add(self)
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
    def protocol(self) -> Optional[str]:
        """The negotiated subprotocol."""
        return self.sock.protocol

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

    def _compress(self, opcode: int, payload: bytes, compress: bool = True) -> Any:
        # Called with the send lock held: with context takeover the compressor's history
        # must follow the order in which messages go on the wire.
        rsv = 0
        for codec in self._codecs:
            payload, bits = codec.encode_message(opcode, payload, compress)
            rsv |= bits
        return payload, rsv

    def send(self, message: MessageLike, fragment_size: Optional[int] = None, compress: bool = True) -> None:
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
        fast = self._fast_send
        if fast is not None and fragment_size is None and len(payload) < _FAST_SEND:
            # A frame with nothing to encode, small enough to join its header: a server's as it
            # is, a client's masked (§5.3) with a key from the websocket's pool.
            if self._mask_out:
                key = self.sock._masking_key()
                data = _header(0x80 | opcode, len(payload), 0x80) + key + mask(key, payload)
            else:
                data = _header(0x80 | opcode, len(payload), 0) + payload
            try:
                with self._send_lock:
                    if self.close_sent:
                        raise self._closed_error()
                    fast(data)
            except OSError as exc:
                self._lost(exc)
                raise self._closed_error() from exc
            return
        ws = self.sock
        try:
            with ws.send_lock:
                if self.close_sent:
                    raise self._closed_error()
                rsv = 0
                if self._codecs:
                    payload, rsv = self._compress(opcode, payload, compress)
                if fragment_size is None or len(payload) <= fragment_size:
                    ws.send_raw(opcode, payload, True, rsv)
                else:
                    if fragment_size <= 0:
                        raise ValueError("fragment_size must be positive")
                    last = len(payload) - fragment_size
                    for start in range(0, len(payload), fragment_size):
                        ws.send_raw(opcode if start == 0 else OPCODE_CONTINUATION,
                                    payload[start:start + fragment_size], start >= last, rsv if start == 0 else 0)
        except OSError as exc:
            self._lost(exc)
            raise self._closed_error() from exc

    def send_ping(self, payload: Union[bytes, str] = b"") -> None:
        """Send a ping (at most 125 bytes); the peer answers with a pong (``onpong``)."""
        self._send_control(OPCODE_PING, payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))

    def send_pong(self, payload: Union[bytes, str] = b"") -> None:
        """Send an unsolicited pong (a one-way heartbeat, §5.5.3)."""
        self._send_control(OPCODE_PONG, payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))

    def _send_control(self, opcode: int, payload: bytes) -> None:
        if len(payload) > 125:
            raise ValueError("control frame payload is %d bytes; the limit is 125" % len(payload))
        if self.state != OPEN or self.close_sent:
            raise self._closed_error()
        try:
            with self.sock.send_lock:
                self.sock.send_raw(opcode, payload)
        except OSError as exc:
            self._lost(exc)
            raise self._closed_error() from exc

    def prepare(self, message: MessageLike) -> Optional[bytes]:
        """Encode ``message`` once as frame bytes that several server connections can share.

        Returns None when this connection cannot share frames (it masks or compresses).
        """
        if self._codecs or not self.sock.can_share_frames:
            return None
        opcode, payload = self._encode(message)
        header, body = pack_frame(opcode, payload, True, 0)
        return header + body

    def send_nowait(self, message: MessageLike, prepared: Optional[bytes] = None) -> None:
        """Send without ever blocking the caller (used by Server.broadcast).

        ``prepared`` is the message already encoded by :meth:`prepare`. What the socket
        cannot take now is queued, in order, and a helper thread flushes it; a peer that lets
        the queue grow past ``max_outbox`` bytes is dropped (1013).
        """
        if self.state != OPEN or self.close_sent:
            return
        self._nowait(message, prepared)

    def _nowait(self, message: Optional[MessageLike], prepared: Optional[bytes]) -> None:
        lock = self.sock.send_lock
        with self._out_lock:
            if self._overflowed:  # being dropped (1013): nothing more for this peer
                return
            if self._outbox is None and lock.acquire(blocking=False):
                # Nothing queued and the socket is ours: encode now (compression state follows
                # the wire order under the lock) and hand the kernel what it takes.
                try:
                    data = prepared if prepared is not None else self._frame_bytes(message)  # type: ignore[arg-type]
                    sent = -1 if data is None else self.sock.send_nowait(data)
                except OSError as exc:
                    lock.release()
                    threading.Thread(target=self._lost, args=(exc,), daemon=True).start()
                    return
                if data is not None and sent == len(data):
                    lock.release()
                    return
                if data is None:  # this transport has no standalone frames: the flusher encodes
                    lock.release()
                    self._start_flusher(collections.deque([_as_message(message)]),  # type: ignore[arg-type]
                                        locked=False)
                elif sent < 0:   # it cannot send without blocking (TLS): the flusher sends it all
                    self._start_flusher(collections.deque([data]), locked=True)
                else:            # keep the lock: the rest of this frame goes out before any other
                    self._start_flusher(collections.deque([data[sent:]]), locked=True)
                return
            item: Any = prepared if prepared is not None else _as_message(message)  # type: ignore[arg-type]
            if self._outbox is None:
                self._start_flusher(collections.deque([item]), locked=False)
                return
            if self._outbox_size + len(item) > self.max_outbox:
                # Its buffers are full, so a close frame could not get through either:
                # drop the connection (1013, try again later) and free the flusher.
                logger.info("%r: outbound queue over %d bytes; dropping the client", self, self.max_outbox)
                self._outbox = None
                self._overflowed = True
                threading.Thread(target=self._finish, args=(CLOSE_TRY_AGAIN_LATER, "outbound queue overflow"),
                                 daemon=True).start()
                return
            self._outbox.append(item)
            self._outbox_size += len(item)

    def _frame_bytes(self, message: MessageLike) -> Optional[bytes]:
        """Encode and compress ``message`` into wire bytes; the caller holds the send lock."""
        opcode, payload = self._encode(message)
        payload, rsv = self._compress(opcode, payload)
        return self.sock.frame_bytes(opcode, payload, True, rsv)

    def _start_flusher(self, outbox: Deque[Any], locked: bool) -> None:
        # With self._out_lock held. Items are bytes (encoded frames) or Messages (encoded later).
        self._outbox = outbox
        self._outbox_size = sum(len(item) for item in outbox)
        threading.Thread(target=self._flush, args=(locked,), daemon=True).start()

    def _flush(self, locked: bool) -> None:
        lock = self.sock.send_lock
        if not locked:
            lock.acquire()
        try:
            while True:
                with self._out_lock:
                    if not self._outbox:
                        self._outbox = None
                        self._outbox_size = 0
                        return
                    item = self._outbox.popleft()
                    self._outbox_size -= len(item)
                if isinstance(item, bytes):
                    self.sock.send_frame_bytes(item)
                else:
                    opcode, payload = self._encode(item)
                    payload, rsv = self._compress(opcode, payload)
                    self.sock.send_raw(opcode, payload, True, rsv)
        except OSError as exc:
            with self._out_lock:
                self._outbox = None
            self._lost(exc)
        finally:
            lock.release()

    # -- receiving -------------------------------------------------------------------------
    def recv(self, timeout: Optional[float] = None) -> Message:
        """Receive the next message, answering pings and handling close on the way.

        Raises ConnectionClosed (code and reason) once the connection is closed and
        TimeoutError when ``timeout`` seconds pass without a whole message.
        """
        inbox = self._inbox
        if inbox:
            return inbox.popleft()
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
        """Iterate over messages until the connection closes (normally or not)."""
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
        _watchdog.add(self)
        queue = self._in_queue  # None unless queue_messages: one check per message on the hot path
        if queue is not None:
            with self._in_lock:
                self._feeders.add(threading.get_ident())
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
                    self._queue_in(message)
        finally:
            if queue is not None:
                with self._in_lock:
                    self._feeders.discard(threading.get_ident())
                    self._in_not_empty.notify_all()  # poppers now read the socket themselves
            if self.ping_interval is None or self.state == CLOSED:
                _watchdog.discard(self)

    # -- queue controller: drive the connection from another thread ---------------------------
    def _queue_in(self, message: Message) -> None:
        """Put a message from receive_forever on the in-queue, waiting while it is full.

        While the connection is open the reading thread waits for room: not reading is what
        slows the peer down (TCP backpressure). Once the closing handshake has started it
        must not wait for a consumer (it may have to read the peer's close frame), so every
        change of close_sent/state notifies this condition (_wake_queue); the queue may then
        hold twice its bound (its own plus the max_queue messages recv() may read ahead
        during a close), and later messages are dropped, as §7.1.2 allows.
        """
        with self._in_lock:
            queue = self._in_queue
            assert queue is not None
            bound = self._in_bound
            while len(queue) >= bound and not self.close_sent:
                self._in_not_full.wait()
            if len(queue) >= 2 * bound:
                logger.debug("%r: in-queue full while closing; message dropped", self)
                return
            queue.append(message)
            self._in_not_empty.notify()

    def _wake_queue(self) -> None:
        """The closing handshake started or the connection closed: wake in-queue waiters."""
        if self._in_queue is not None:
            with self._in_lock:
                self._in_not_full.notify_all()
                self._in_not_empty.notify_all()

    def pop_in_message(self, timeout: Optional[float] = None) -> Optional[Message]:
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
        if threading.get_ident() in self._feeders:
            raise InvalidState("pop_in_message called from the thread that runs receive_forever")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._in_lock:
                while not queue:
                    if not self._feeders:
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError("timed out waiting for a message")
                    self._in_not_empty.wait(left)
                else:
                    message = queue.popleft()
                    self._in_not_full.notify()
                    return message
            # Nobody runs receive_forever: read the socket here, holding the read lock so that
            # a receive_forever starting now reads only after this message (order kept).
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._read_lock.acquire(timeout=-1 if left is None else left):
                raise TimeoutError("timed out waiting for a message")
            try:
                with self._in_lock:
                    if queue or self._feeders:
                        continue  # receive_forever started meanwhile: take from the queue
                try:
                    message = self.recv(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except ConnectionClosed:
                    return None
                with self._in_lock:
                    if not self._feeders:
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
        self._nowait(message, None)

    def should_stop(self) -> bool:
        """Whether the closing handshake has started (either side) or the connection is closed.

        A producer loop ``while not conn.should_stop(): conn.push_out_message(...)`` ends with
        the connection (a push may still race with the close and raise ConnectionClosed).
        """
        return self.close_sent or self.close_received or self.state != OPEN

    def _read_one(self, deadline: Optional[float]) -> Optional[Message]:
        """Read and process one frame (holding the read lock); a Message when one completes."""
        if self.state == CLOSED:
            raise self._closed_error()
        try:
            fast = self._fast_read
            if fast is not None and self._msg_opcode is None:
                simple = fast(deadline)
                if simple is not None:
                    self._validator = None
                    return self._single(simple[0], simple[1])
            frame = self.sock.read_frame(deadline)
            self._validator = None
            if self._debug:
                logger.debug("%r < %r", self, frame)
            opcode = frame.opcode
            if opcode >= 0x8:
                if frame.rsv:
                    raise ProtocolError("control frame with RSV bits set")
                self._control(opcode, frame.payload)
                return None
            if opcode == OPCODE_CONTINUATION:
                if self._msg_opcode is None:
                    raise ProtocolError("continuation frame without a message to continue")
                if frame.rsv & self._rsv_owned:
                    raise ProtocolError("RSV bits on a continuation frame")
            else:
                if self._msg_opcode is not None:
                    raise ProtocolError("new data frame inside an unfinished fragmented message")
                if frame.final and not self._codecs:
                    return self._single(opcode, frame.payload)
                self._msg_opcode = opcode
                self._msg_rsv = frame.rsv
                self._msg_parts = []
                self._msg_size = 0
                self._decoder = codecs.getincrementaldecoder("utf-8")("strict") if opcode == OPCODE_TEXT else None
                if self._partial_checks:
                    self.sock.text_in_progress = opcode == OPCODE_TEXT
            return self._fragment(frame.payload, frame.final)
        except ProtocolError as exc:
            self._fail(exc)
        except ConnectionClosed:
            self._lost(None)
        except TimeoutError:
            raise  # nothing lost: the parser keeps partial frames for the next call
        except OSError as exc:
            self._lost(exc)
        raise self._closed_error()

    def _check_partial(self, b0: int, chunk: bytes) -> None:
        """Validate UTF-8 of a text frame before it has fully arrived (§8.1: fail fast)."""
        validator = self._validator
        if validator is None:
            opcode = b0 & 0x0F
            if opcode == OPCODE_TEXT and self._msg_opcode is None:
                validator = codecs.getincrementaldecoder("utf-8")("strict")
            elif opcode == OPCODE_CONTINUATION and self._msg_opcode == OPCODE_TEXT and self._decoder is not None:
                validator = codecs.getincrementaldecoder("utf-8")("strict")
                validator.setstate(self._decoder.getstate())  # continue from the message so far
            else:
                return
            self._validator = validator
        try:
            validator.decode(chunk, False)
        except UnicodeDecodeError:
            raise ProtocolError("invalid UTF-8 in a text message", 1007) from None

    def _single(self, opcode: int, payload: bytes) -> Message:
        if self.max_size is not None and len(payload) > self.max_size:
            raise PayloadTooBig("message of %d bytes exceeds the limit of %d" % (len(payload), self.max_size))
        message = _new_message(_TEXT if opcode == OPCODE_TEXT else _BINARY)  # skips __init__'s type checks
        if opcode == OPCODE_TEXT:
            try:
                payload = payload.decode("utf-8")  # type: ignore[assignment]
            except UnicodeDecodeError:
                raise ProtocolError("invalid UTF-8 in a text message", 1007) from None
        message.opcode = opcode
        message.payload = payload
        return message

    def _fragment(self, payload: bytes, final: bool) -> Optional[Message]:
        for codec in reversed(self._codecs):
            payload = codec.decode_frame_of_message(payload, self._msg_rsv, final, self.max_size)
        self._msg_size += len(payload)
        if self.max_size is not None and self._msg_size > self.max_size:
            raise PayloadTooBig("message exceeds the limit of %d bytes" % self.max_size)
        if self._decoder is not None:
            try:  # fail fast: as soon as the bytes cannot be valid UTF-8 any more (§8.1)
                self._msg_parts.append(self._decoder.decode(payload, final))
            except UnicodeDecodeError:
                raise ProtocolError("invalid UTF-8 in a text message", 1007) from None
        else:
            self._msg_parts.append(payload)
        if not final:
            return None
        opcode, parts = self._msg_opcode, self._msg_parts
        self._msg_opcode, self._msg_parts, self._decoder = None, [], None
        if self._partial_checks:
            self.sock.text_in_progress = False
        if opcode == OPCODE_TEXT:
            return TextMessage("".join(parts))
        return BinaryMessage(b"".join(parts))

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OPCODE_PING:
            if not self.close_sent:
                try:
                    with self.sock.send_lock:
                        if not self.close_sent:
                            self.sock.send_raw(OPCODE_PONG, payload)
                except OSError as exc:
                    self._lost(exc)
                    raise self._closed_error() from exc
            self._call_handler(self.onping, payload)
        elif opcode == OPCODE_PONG:
            if self._ping_sent is not None and payload == self._ping_payload:
                self._ping_sent = None
            self._call_handler(self.onpong, payload)
        else:
            self.close_received = True  # even if invalid: the peer will not send another
            code, reason = decode_close(payload)
            if not self.close_sent:
                # Echo the peer's code (an empty body if it sent none: 1005 never goes on the wire).
                self._send_close(None if code == CLOSE_NO_STATUS else code, "")
            self._finish(code, reason)
            raise ConnectionClosed(code, reason)

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

    def _send_close(self, code: Optional[int], reason: str) -> None:
        with self._state_lock:
            if self.close_sent or self.state == CLOSED:
                return
            self.close_sent = True
            self.state = CLOSING
        self._wake_queue()
        try:
            with self.sock.send_lock:
                self.sock.send_raw(OPCODE_CLOSE, encode_close(code, reason))
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
        payload = encode_close(code, reason)
        data = self.sock.frame_bytes(OPCODE_CLOSE, payload)
        if data is None:  # a mux channel re-encapsulates RFC 6455 frames given to send_frame_bytes
            header, body = pack_frame(OPCODE_CLOSE, payload, True, 0, os.urandom(4))
            data = header + body
        self._nowait(None, data)

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
                        if message is not None and len(self._inbox) < self.max_queue:
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
        self._call_handler(self.onerror, exc)
        self._send_close(exc.code, _short_reason(exc.message))
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
        while self.state != CLOSED:
            try:
                frame = self.sock.read_frame(deadline)
            except (ProtocolError, ConnectionClosed, OSError, TimeoutError):
                break
            if frame.opcode == OPCODE_CLOSE:
                try:
                    code, reason = decode_close(frame.payload)
                except ProtocolError:
                    break
                self.close_received = True
                self._finish(code, reason)
                return
        self._finish(CLOSE_ABNORMAL, "")

    def _lost(self, exc: Optional[BaseException]) -> None:
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
        _watchdog.discard(self)
        self._call_handler(self.onclose, code, reason)

    def abort(self) -> None:
        """Close the TCP connection at once, without a closing handshake (code 1006)."""
        self._finish(CLOSE_ABNORMAL, "")

    def _closed_error(self) -> ConnectionClosed:
        if self.state == CLOSED:
            return ConnectionClosed(self.close_code or CLOSE_ABNORMAL, self.close_reason)
        return ConnectionClosed(self.close_code or CLOSE_ABNORMAL, "closing handshake in progress")

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
            if self.ping_timeout is not None and self._readers and now - self._ping_sent > self.ping_timeout:
                logger.info("%r: no pong within %ss; closing", self, self.ping_timeout)
                self._ping_sent = None
                self.start_close(CLOSE_UNABLE, "keepalive ping timeout")
                # The peer is not answering: do not wait for its close frame (1006 locally).
                self._finish(CLOSE_ABNORMAL, "keepalive ping timeout")
            return
        if self._next_ping is not None and now >= self._next_ping:
            self._next_ping = now + (self.ping_interval or 0)
            self._ping_payload = os.urandom(4)
            lock = self.sock.send_lock
            if lock.acquire(blocking=False):  # never wait behind a large send: try next round
                # Outstanding before it is sent: the reading thread may see the pong before
                # send_raw returns, and must recognise it.
                self._ping_sent = now
                try:
                    self.sock.send_raw(OPCODE_PING, self._ping_payload)
                except OSError:
                    self._ping_sent = None
                finally:
                    lock.release()

    # -- watchdog: keep reading while a slow handler runs -------------------------------------
    def _rescue(self) -> None:
        if not self._read_lock.acquire(blocking=False):
            self._rescuing = False
            return
        self._readers += 1
        try:
            while self.handler_since is not None and self.state == OPEN and len(self._inbox) < self.max_queue:
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

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_new_message = object.__new__
_TEXT, _BINARY = TextMessage, BinaryMessage


def _as_message(message: MessageLike) -> Message:
    """Queued items that are bytes are encoded frames, so queue payloads as Messages."""
    if isinstance(message, Message):
        return message
    if isinstance(message, str):
        return TextMessage(message)
    return BinaryMessage(message)


class _Watchdog:
    """One thread for the process: keepalive pings, and a helper reader for handlers that run long.

    It wakes every RESCUE_AFTER / 2 seconds while any connection is registered and exits when
    none is left, so an idle process has no extra thread.
    """

    def __init__(self) -> None:
        self._conns: "set[Connection]" = set()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def add(self, conn: Connection) -> None:
        with self._lock:
            self._conns.add(conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="twspy-watchdog", daemon=True)
                self._thread.start()

    def discard(self, conn: Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _run(self) -> None:
        while True:
            time.sleep(RESCUE_AFTER / 2)
            with self._lock:
                if not self._conns:
                    self._thread = None
                    return
                conns = list(self._conns)
            now = time.monotonic()
            for conn in conns:
                if conn.ping_interval is not None:
                    conn._keepalive(now)
                since = conn.handler_since
                if since is not None and now - since >= RESCUE_AFTER and not conn._rescuing \
                        and conn.state == OPEN:
                    conn._rescuing = True
                    threading.Thread(target=conn._rescue, name="twspy-rescue", daemon=True).start()


_watchdog = _Watchdog()
