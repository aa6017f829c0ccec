"""Two attacks on a Server, measured (issue 18 item 3, issue 20 item 13).

``python bench/attack_server.py idle [N]``: N (default 1,100) TCP connections that never send a
byte against a default Server (max_connections 1,024); prints the server's threads and RSS while
they wait and whether (and how fast) a real client still upgrades.

``python bench/attack_server.py emfile [SECONDS]``: accept() fails with EMFILE for SECONDS
(default 3); prints the warnings logged, the accept() calls made and the CPU time used.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import twspy  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def idle(n: int) -> None:
    server = twspy.Server(("127.0.0.1", 0), extensions=[])
    thread = server.serve_in_thread()
    port = server.address[1]
    base_threads, base_rss = threading.active_count(), rss_mib()
    socks = []
    for _ in range(n):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    time.sleep(1.0)  # let the server accept them all (a measurement, not a test)
    threads, rss = threading.active_count(), rss_mib()
    start = time.monotonic()
    try:
        with twspy.connect("ws://127.0.0.1:%d/" % port, extensions=[], handshake_timeout=15):
            result = "upgraded"
    except Exception as exc:
        result = "refused: %s" % exc
    elapsed = time.monotonic() - start
    print("idle sockets: %d; server threads %d -> %d; RSS %.1f -> %.1f MiB; real client: %s in %.3f s"
          % (n, base_threads, threads, base_rss, rss, result, elapsed))
    for s in socks:
        s.close()
    server.shutdown()
    thread.join(5)


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def emfile(seconds: float) -> None:
    counter = Counter()
    logging.getLogger("twspy.server").addHandler(counter)
    logging.getLogger("twspy.server").setLevel(logging.WARNING)
    server = twspy.Server(("127.0.0.1", 0), extensions=[])
    calls = [0]
    real_accept = server.sock.sock.accept
    failing = [True]

    def accept():  # type: ignore[no-untyped-def]
        calls[0] += 1
        if failing[0]:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_accept()

    sock = server.sock.sock
    original = type(sock).accept
    type(sock).accept = lambda self: accept() if self is sock else original(self)  # type: ignore[method-assign]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    thread = server.serve_in_thread()
    pending = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)  # keeps the listener readable
    time.sleep(seconds)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    failing[0] = False
    pending.close()
    server.shutdown()
    thread.join(5)
    type(sock).accept = original  # type: ignore[method-assign]
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    print("EMFILE for %.0f s: %d warnings, %d accept() calls, %.2f s CPU" % (seconds, counter.count, calls[0], cpu))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "idle"
    if what == "idle":
        idle(int(sys.argv[2]) if len(sys.argv) > 2 else 1100)
    else:
        emfile(float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)
