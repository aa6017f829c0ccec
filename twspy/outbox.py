"""Non-blocking sends for one threaded connection: :meth:`Connection.send_nowait`, broadcasts.

An :class:`Outbox` hands the kernel what it takes now and queues the rest, in order, for a
helper thread that flushes it under the connection's send lock. A peer that lets more than
``max_outbox`` bytes pile up is dropped (1013, try again later): its buffers are full, so a
close frame could not get through either. The caller never blocks, and never unwinds when
the process is out of threads (the peer is dropped instead, issue 20 item 2).

Queued items are bytes (frames already encoded: prepared broadcasts, a close frame) or
messages, encoded only when their turn comes: with compression the compressor's history
must follow the order on the wire.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from typing import Any, Callable

from .frame import CLOSE_TRY_AGAIN_LATER
from .message import BinaryMessage, Message, TextMessage
from .watchdog import start_thread

__all__ = ["Outbox", "DEFAULT_MAX_OUTBOX", "as_message"]

logger = logging.getLogger("twspy.connection")

DEFAULT_MAX_OUTBOX = 4 << 20  # bytes queued for a slow client by non-blocking sends


def as_message(message: Any) -> Message:
    """``message`` (a Message, str or bytes-like) as a Message: queued bytes are encoded frames,
    so a queued payload is kept as a Message."""
    if isinstance(message, Message):
        return message
    if isinstance(message, str):
        return TextMessage(message)
    return BinaryMessage(message)


class Outbox:
    """The bounded queue of one connection's non-blocking sends, and its flusher thread.

    Args:
        owner: the connection, for log lines.
        send_lock: the connection's send lock (one frame at a time on the wire).
        encode: ``f(message) -> bytes``, the frames of a message (b"" once the connection no
            longer sends); called with ``send_lock`` held.
        transport: its ``send_nowait(data) -> int`` gives the bytes the transport took without
            blocking (-1: it cannot, e.g. TLS); called with ``send_lock`` held.
        write: ``f(data)``, a blocking write of encoded frames; called with ``send_lock`` held.
        lost: ``f(exc)``, the transport failed.
        drop: ``f(code, reason)``, end the connection at once without a closing handshake.
        max_outbox: bytes queued at most.
    """

    def __init__(self, owner: Any, send_lock: Any, encode: Callable[[Any], bytes],
                 transport: Any, write: Callable[[bytes], Any],
                 lost: Callable[[BaseException], Any], drop: Callable[[int, str], Any],
                 max_outbox: int = DEFAULT_MAX_OUTBOX) -> None:
        self.owner = owner
        self.send_lock = send_lock
        self.encode = encode
        self.transport = transport
        self.write = write
        self.lost = lost
        self.drop = drop
        self.max_outbox = max_outbox
        self.overflowed = False  # set once the outbox overflowed: the 1013 close is on its way
        self._queue: collections.deque[Any] | None = None  # None: no flusher runs
        self._size = 0
        self._lock = threading.Lock()
        self._debug = logger.isEnabledFor(logging.DEBUG)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the flusher."""
        return self._size

    def put(self, message: Any, prepared: bytes | None) -> None:
        """Send ``prepared`` frame bytes, or ``message`` (a Message, str or bytes-like), without
        blocking (see the module docstring)."""
        with self._lock:
            fallback = self._put_locked(message, prepared)
        if fallback is not None:  # a thread could not be started: do its work here, without the lock
            fallback()

    def _put_locked(self, message: Any, prepared: bytes | None) -> Callable[[], None] | None:
        """:meth:`put` with ``_lock`` held; returns work to do once it is released."""
        lock = self.send_lock
        if self.overflowed:  # being dropped (1013): nothing more for this peer
            return None
        if self._queue is None and lock.acquire(blocking=False):
            # Nothing queued and the socket is ours: encode now (compression state follows
            # the wire order under the lock) and hand the kernel what it takes.
            try:
                data = prepared if prepared is not None else self.encode(message)
                sent = self.transport.send_nowait(data) if data else 0
            except OSError as exc:
                lock.release()
                return None if start_thread(self.lost, exc) else functools.partial(self.lost, exc)
            if sent == len(data):
                lock.release()
                return None
            if sent < 0:   # it cannot send without blocking (TLS): the flusher sends it all
                return self._start_flusher(collections.deque([data]), locked=True)
            # keep the lock: the rest of this frame goes out before any other
            return self._start_flusher(collections.deque([data[sent:]]), locked=True)
        item: Any = prepared if prepared is not None else as_message(message)
        if self._queue is None:
            return self._start_flusher(collections.deque([item]), locked=False)
        if self._size + len(item) > self.max_outbox:
            # Its buffers are full, so a close frame could not get through either:
            # drop the connection (1013, try again later) and free the flusher.
            logger.info("%r: outbound queue over %d bytes; dropping the client", self.owner, self.max_outbox)
            self._queue = None
            self.overflowed = True
            args = (CLOSE_TRY_AGAIN_LATER, "outbound queue overflow")
            return None if start_thread(self.drop, *args) else functools.partial(self.drop, *args)
        self._queue.append(item)
        self._size += len(item)
        return None

    def _start_flusher(self, queue: collections.deque[Any], locked: bool) -> Callable[[], None] | None:
        """With ``_lock`` held. Without a thread to flush (the process is out of threads) the
        peer is dropped (1013): a frame may be half sent, and the caller must not block.
        Returns that fallback for the caller to run once it has released the lock."""
        self._queue = queue
        self._size = sum(len(item) for item in queue)
        if start_thread(self._flush, locked):
            return None
        self._queue = None
        self.overflowed = True
        if locked:
            self.send_lock.release()
        return functools.partial(self.drop, CLOSE_TRY_AGAIN_LATER, "cannot start a thread")

    def _flush(self, locked: bool) -> None:
        lock = self.send_lock
        if not locked:
            lock.acquire()
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._queue = None
                        self._size = 0
                        return
                    item = self._queue.popleft()
                    self._size -= len(item)
                if isinstance(item, bytes):
                    if self._debug:
                        logger.debug("%r > %d bytes of encoded frames (flushed)", self.owner, len(item))
                    data = item
                else:
                    data = self.encode(item)
                if data:
                    self.write(data)
        except OSError as exc:
            with self._lock:
                self._queue = None
            self.lost(exc)
        finally:
            lock.release()
