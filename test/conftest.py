"""Shared fixtures: loopback servers on port 0, socket pairs, and a thread-leak check."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import zlib

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import twspy  # noqa: E402
from twspy.websocket import DEFAULT_MAX_SIZE  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CERT = os.path.join(HERE, "certs", "localhost.pem")
KEY = os.path.join(HERE, "certs", "localhost.key")


def wait_for(predicate, timeout=5.0, interval=0.005):
    """Poll ``predicate`` until true (for conditions no event signals); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        time.sleep(interval)


def http_exchange(port, request, timeout=5):
    """Send raw ``request`` bytes to 127.0.0.1:``port``; everything answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def frame_from(sock, parser, timeout=5):
    """The next frame a raw test peer receives on ``sock``, parsed by its ``FrameParser``."""
    sock.settimeout(timeout)
    while True:
        frame = parser.next_frame()
        if frame is not None:
            return frame
        data = sock.recv(65536)
        if not data:
            raise EOFError("peer closed")
        parser.feed(data)


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    """Every test ends with the threads it started (the shared watchdog aside)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in set(threading.enumerate()) - before
                 if t.is_alive() and t.name not in ("twspy-watchdog", "twspy-rescue")]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, "threads left running: %r" % extra


@pytest.fixture
def serve():
    """``serve(ServerClass, **kwargs)`` starts a server on 127.0.0.1:0 in a thread; shut down after."""
    servers = []

    def start(cls=twspy.Server, **kwargs):
        server = cls(("127.0.0.1", 0), **kwargs)
        thread = server.serve_in_thread()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive()


def url(server, path="/"):
    return "ws://127.0.0.1:%d%s" % (server.address[1], path)


def opened_websocket(sock, server_side, extensions=(), max_size=DEFAULT_MAX_SIZE, timeout=5):
    """A twspy websocket on a connected ``sock``, its handshake marked done (no HTTP)."""
    sock.settimeout(timeout)
    ws = twspy.websocket(sock, max_size=max_size)
    ws.server_side = server_side
    ws.extensions = list(extensions)
    ws._opened(b"", require_mask=server_side)
    return ws


@pytest.fixture
def pair():
    """A connected (server websocket, client websocket) pair over a socketpair, handshake marked done.

    Frames written by hand on the raw peer socket test protocol edge cases byte by byte.
    """
    made = []

    def make(server_side=True, extensions=(), max_size=DEFAULT_MAX_SIZE):
        a, b = socket.socketpair()
        b.settimeout(5)
        ws = opened_websocket(a, server_side, extensions, max_size)
        made.append((ws, b))
        return ws, b

    yield make
    for ws, raw in made:
        ws.close()
        raw.close()


@pytest.fixture
def twspy_process():
    """``start(command, *args)`` runs ``python -m twspy command *args --port 0`` and returns
    (process, the port its banner names); each process is killed and reaped afterwards."""
    procs = []

    def start(*args):
        env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "twspy", *args, "--port", "0"], cwd=os.path.dirname(HERE),
                                env=env, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stderr.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        return proc, int(match.group(1))

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()


def count_zlib_streams(monkeypatch):
    """Count the zlib decompressors twspy creates: the work a hostile stream can cause."""
    made = []
    real = zlib.decompressobj

    def counting(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(zlib, "decompressobj", counting)
    return made
