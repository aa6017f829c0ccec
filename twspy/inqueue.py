"""The queue controller's in-queue: messages a connection's reading thread delivered, for another thread.

With ``Connection(queue_messages=True)`` every message that ``receive_forever`` delivers
(after ``onmessage``) goes on an :class:`InQueue`; another thread takes it with
``Connection.pop_in_message``. The queue is bounded in messages and in payload bytes; while
it is full the reading thread waits, so the peer is slowed down by TCP, not dropped. Once
the closing handshake has started the reader must not wait for a consumer (it may have to
read the peer's close frame): the connection then calls :meth:`InQueue.wake`, the queue may
hold twice its bound, and later messages are dropped, as RFC 6455 §7.1.2 allows.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

from .message import Message

__all__ = ["InQueue"]

logger = logging.getLogger("twspy.connection")


class InQueue:
    """A bounded queue of messages between one feeding thread and the threads that pop.

    Args:
        bound: messages queued at most while the connection is open (at least 1).
        max_bytes: payload bytes queued at most (past which it takes no more).
        closing: ``f() -> bool``, whether the closing handshake has started.
        owner: the connection, for log lines.

    Attributes:
        feeders: the idents of the threads that feed it (inside ``receive_forever``).
    """

    def __init__(self, bound: int, max_bytes: int, closing: Callable[[], bool], owner: Any = None) -> None:
        self.bound = max(1, bound)
        self.max_bytes = max_bytes
        self.closing = closing
        self.owner = owner
        self.feeders: set[int] = set()
        self._messages: collections.deque[Message] = collections.deque()
        self._bytes = 0  # payload bytes queued (under _lock)
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def __len__(self) -> int:
        return len(self._messages)

    def add_feeder(self) -> None:
        """The calling thread feeds the queue from now on."""
        with self._lock:
            self.feeders.add(threading.get_ident())

    def remove_feeder(self) -> None:
        """The calling thread stopped feeding; poppers then read the connection themselves."""
        with self._lock:
            self.feeders.discard(threading.get_ident())
            self._not_empty.notify_all()

    def busy(self) -> bool:
        """Whether a message waits or a thread feeds the queue (a popper then takes from it)."""
        with self._lock:
            return bool(self._messages or self.feeders)

    def fed(self) -> bool:
        """Whether a thread feeds the queue."""
        with self._lock:
            return bool(self.feeders)

    def put(self, message: Message) -> None:
        """Queue ``message``, waiting while the queue is full and the connection is open."""
        with self._lock:
            queue = self._messages
            bound, max_bytes = self.bound, self.max_bytes
            while (len(queue) >= bound or self._bytes >= max_bytes) and not self.closing():
                self._not_full.wait()
            if len(queue) >= 2 * bound or self._bytes >= 2 * max_bytes:
                logger.debug("%r: in-queue full while closing; message dropped", self.owner)
                return
            queue.append(message)
            self._bytes += len(message)
            self._not_empty.notify()

    def wake(self) -> None:
        """The closing handshake started or the connection closed: wake every waiting thread."""
        with self._lock:
            self._not_full.notify_all()
            self._not_empty.notify_all()

    def take(self, deadline: float | None) -> Message | None:
        """The oldest message, waiting while a thread feeds the queue; None when it is empty and
        nobody feeds it (the caller reads the connection itself). TimeoutError after ``deadline``
        (``time.monotonic()``; None: no limit)."""
        with self._lock:
            queue = self._messages
            while not queue:
                if not self.feeders:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("timed out waiting for a message")
                self._not_empty.wait(left)
            message = queue.popleft()
            self._bytes -= len(message)
            self._not_full.notify()
            return message
