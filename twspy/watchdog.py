"""The threaded layer's one helper thread, and starting threads without unwinding.

:data:`watchdog` wakes every ``RESCUE_AFTER / 2`` seconds while any connection is registered
and calls its ``watchdog_tick(now)``: a :class:`~twspy.connection.Connection` sends its
keepalive ping there, fails a peer that stopped answering, and starts a helper reader while
a slow ``onmessage`` runs or while nobody reads (background reading). The thread exits when
no connection is left, so an idle process has no extra thread.

:func:`start_thread` starts a daemon thread and returns False when the process is out of
threads (``RuntimeError: can't start new thread`` from pid limits: containers, systemd
TasksMax, RLIMIT_NPROC); callers degrade instead of letting it unwind (issue 20 item 2).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol

__all__ = ["RESCUE_AFTER", "Watchdog", "watchdog", "start_thread"]

logger = logging.getLogger("twspy.connection")

RESCUE_AFTER = 0.1  # a handler running this long gets a helper reader; the watchdog wakes twice as often


class Watched(Protocol):
    """What the watchdog calls on a registered connection."""

    def watchdog_tick(self, now: float) -> None: ...


_last_warning: list[float] = [0.0]


def _thread_failed(name: str, exc: BaseException) -> None:
    """Log a failed thread start, at most once every 10 s (each new client could trigger one)."""
    now = time.monotonic()
    if now - _last_warning[0] >= 10.0:
        _last_warning[0] = now
        logger.warning("cannot start a thread (%s): %s; degrading", name, exc)


def start_thread(target: Callable[..., Any], *args: Any, name: str | None = None) -> bool:
    """Start a daemon thread running ``target(*args)``; False when the process is out of threads."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError as exc:
        _thread_failed(name or str(getattr(target, "__name__", "thread")), exc)
        return False
    return True


class Watchdog:
    """One thread for the process, ticking the registered connections (see the module docstring)."""

    def __init__(self) -> None:
        self._conns: set[Watched] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, conn: Watched) -> None:
        """Watch ``conn`` (again: no effect); starts the thread if it is not running."""
        with self._lock:
            self._conns.add(conn)
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="twspy-watchdog", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # out of threads: no keepalive until the next add() starts it
                    _thread_failed("twspy-watchdog", exc)
                    return
                self._thread = thread

    def discard(self, conn: Watched) -> None:
        """Stop watching ``conn`` (not watched: no effect)."""
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
                conn.watchdog_tick(now)


watchdog = Watchdog()
