"""twspy/proxy.py (ProxyServer) edges beside test_proxy.py: a client over a Unix socket, an upstream
closing without a status code, ``close_timeout=None``, and the multiplexing extension refused."""

from __future__ import annotations

import os
import queue

import pytest

import twspy
from twspy.multiplex import Multiplex
from twspy.proxy import ProxyServer

from conftest import url, wait_for

TIMEOUT = 5


class Upstream(twspy.Server):
    """Echoes, records opens and closes in ``events``, and answers "bare" with a close frame
    without a status code (1005 on its leg)."""

    def __init__(self, *args, **kwargs):
        self.events = queue.Queue()
        super().__init__(*args, **kwargs)

    def onopen(self, client):
        self.events.put(("open", client.path, client.headers))

    def onmessage(self, client, message):
        if message == twspy.TextMessage("bare"):
            client.sock.send(twspy.Frame(twspy.OPCODE_CLOSE, b""))
        else:
            client.send(message)

    def onclose(self, client, code, reason):
        self.events.put(("close", code, reason))


def expect(events, kind):
    """The next event of ``kind`` (earlier events of other kinds are dropped)."""
    while True:
        event = events.get(timeout=TIMEOUT)
        if event[0] == kind:
            return event


@pytest.fixture
def proxy_server():
    started = []

    def start(upstream, **kwargs):
        server = ProxyServer(upstream, ("127.0.0.1", 0), **kwargs)
        started.append((server, server.serve_in_thread()))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_mux_is_refused_at_construction():
    with pytest.raises(ValueError, match="does not relay the multiplexing extension"):
        ProxyServer("ws://127.0.0.1:9/", ("127.0.0.1", 0), extensions=[Multiplex()])


def test_upstream_close_without_status_is_1000_to_the_client(serve, proxy_server):
    # 1005 must never go on the wire (RFC 6455 §7.4.1): the client gets a normal close.
    upstream = serve(Upstream)
    server = proxy_server(url(upstream))
    with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
        conn.send("bare")
        with pytest.raises(twspy.ConnectionClosed) as info:
            conn.recv(TIMEOUT)
    assert isinstance(info.value, twspy.ConnectionClosedOK)
    assert (conn.close_code, conn.close_reason) == (1000, "")
    wait_for(lambda: not server.clients and not upstream.clients)


def test_close_timeout_none_still_ends_both_legs(serve, proxy_server):
    upstream = serve(Upstream)
    server = proxy_server(url(upstream), close_timeout=None)
    with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
        conn.send("hello")
        assert conn.recv(TIMEOUT) == twspy.TextMessage("hello")
    assert conn.close_code == 1000
    assert expect(upstream.events, "close")[1:] == (1000, "")
    wait_for(lambda: not server.clients and not upstream.clients)


def test_unix_socket_client_has_no_forwarded_for(serve, tmp_path):
    # A client on a Unix socket has no IP address: the upstream gets no X-Forwarded-For.
    upstream = serve(Upstream)
    path = str(tmp_path / "proxy.sock")
    server = ProxyServer(url(upstream), unix_path=path, forward_headers=("X-Trace",))
    thread = server.serve_in_thread()
    try:
        with twspy.connect("ws://localhost/room?x=1", unix_path=path, headers={"X-Trace": "t1"},
                           handshake_timeout=TIMEOUT) as conn:
            conn.send("via unix")
            assert conn.recv(TIMEOUT) == twspy.TextMessage("via unix")
        _, target, headers = expect(upstream.events, "open")
        assert target == "/room?x=1" and headers["X-Trace"] == "t1"
        assert "X-Forwarded-For" not in headers
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
    assert not thread.is_alive() and not os.path.exists(path)
