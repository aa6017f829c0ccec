"""ProxyServer: a client relayed to an upstream server, over loopback sockets on port 0."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from test_proxies import tinyproxy  # noqa: F401 - the fixture: a real tinyproxy with Basic auth

import twspy
from twspy.filters import Filter, Reject
from twspy.handshake import make_key
from twspy.proxy import ProxyServer

from conftest import CERT, KEY, http_exchange, url, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Upstream(twspy.Server):
    """Echoes, records what reaches it, and obeys a few commands sent as text."""

    def __init__(self, *args, **kwargs):
        self.events = queue.Queue()
        super().__init__(*args, **kwargs)

    def select_subprotocol(self, client_protocols, server_protocols):
        for protocol in server_protocols:  # the server's preference, not the client's
            if protocol in client_protocols:
                return protocol
        return None

    def onopen(self, client):
        self.events.put(("open", client.path, client.headers, client.protocol))

    def onmessage(self, client, message):
        if message == twspy.TextMessage("close"):
            client.start_close(4002, "later")
        elif message == twspy.TextMessage("abort"):
            client.abort()
        elif message == twspy.TextMessage("ping"):
            client.send_ping(b"up")
            client.send("pinged")
        else:
            client.send(message)

    def onping(self, client, payload):
        self.events.put(("ping", payload))

    def onpong(self, client, payload):
        self.events.put(("pong", payload))

    def onclose(self, client, code, reason):
        self.events.put(("close", code, reason))


class Refusing(twspy.Server):
    """Answers every upgrade with the HTTP status in ``status``."""

    status = 403

    def process_request(self, request):
        if self.status == 401:
            return 401, [("WWW-Authenticate", 'Basic realm="up"')], "who are you?\n"
        return self.status, "no\n"


class Recording(twspy.Connection):
    """A client that records the pings it receives."""

    def __init__(self, *args, **kwargs):
        self.pings = []
        self.pongs = []
        super().__init__(*args, **kwargs)

    def onping(self, payload):
        self.pings.append(payload)

    def onpong(self, payload):
        self.pongs.append(payload)


def expect(events, kind, timeout=5):
    """The next event of ``kind`` (earlier events of other kinds are dropped)."""
    while True:
        event = events.get(timeout=timeout)
        if event[0] == kind:
            return event


@pytest.fixture
def proxy():
    """``proxy(upstream_url, **kwargs)`` starts a ProxyServer on 127.0.0.1:0 in a thread."""
    started = []

    def start(upstream, **kwargs):
        server = ProxyServer(upstream, ("127.0.0.1", 0), **kwargs)
        thread = server.serve_in_thread()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def relay(serve, proxy):
    """An Upstream server and a proxy in front of it: ``(upstream, proxy)``."""
    upstream = serve(Upstream, protocols=["chat.v2", "chat.v1"])
    return upstream, proxy(url(upstream))


def free_port():
    """A port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upgrade_request(path="/", extra=None) -> bytes:
    lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: %s" % make_key(), "Sec-WebSocket-Version: 13"] + ([extra] if extra else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def raw_request(server, path="/", extra=None, timeout=5) -> bytes:
    """An upgrade request sent by hand; everything the server answers until it closes."""
    return http_exchange(server.address[1], upgrade_request(path, extra), timeout)


class TestMessages:
    def test_text_and_binary(self, relay):
        upstream, server = relay
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            conn.send("hello")
            assert conn.recv(5) == twspy.TextMessage("hello")
            conn.send(b"\x00\xff")
            assert conn.recv(5) == twspy.BinaryMessage(b"\x00\xff")
            conn.send("")
            assert conn.recv(5) == twspy.TextMessage("")

    @pytest.mark.parametrize("extensions", [None, []], ids=["deflate", "plain"])
    def test_one_mib_binary(self, relay, extensions):
        upstream, server = relay
        # 1 MiB, the default max_size. Repeated within deflate's 32 KiB window: a random MiB would
        # deflate to a frame larger than max_size, which each leg refuses (1009) before inflating.
        data = os.urandom(1 << 10) * (1 << 10)
        with twspy.connect(url(server), extensions=extensions, handshake_timeout=5) as conn:
            conn.send(data)
            assert conn.recv(10) == twspy.BinaryMessage(data)

    def test_fragmented_message(self, relay):
        upstream, server = relay
        text = "fragmenté " * 10000
        with twspy.connect(url(server), extensions=[], handshake_timeout=5) as conn:
            conn.send(text, fragment_size=1000)
            assert conn.recv(5) == twspy.TextMessage(text)
            data = os.urandom(3000)
            conn.send(data, fragment_size=3)
            assert conn.recv(5) == twspy.BinaryMessage(data)

    def test_concurrent_clients_get_their_own_upstream(self, relay):
        upstream, server = relay
        conns = [twspy.connect(url(server, "/c%d" % i), handshake_timeout=5) for i in range(6)]
        try:
            wait_for(lambda: len(upstream.clients) == 6 and len(server.clients) == 6)
            for i, conn in enumerate(conns):
                conn.send("from %d" % i)
            for i, conn in enumerate(conns):
                assert conn.recv(5) == twspy.TextMessage("from %d" % i)
            paths = sorted(expect(upstream.events, "open")[1] for _ in conns)
            assert paths == ["/c%d" % i for i in range(6)]
        finally:
            for conn in conns:
                conn.close()
        wait_for(lambda: not upstream.clients and not server.clients)


class TestHandshake:
    @pytest.mark.parametrize("base, target, expected", [
        ("ws://h:1/base", "/chat?x=1", "ws://h:1/base/chat?x=1"),
        ("ws://h:1/base/", "/chat", "ws://h:1/base/chat"),
        ("ws://h:1/base", "/", "ws://h:1/base"),
        ("ws://h:1/base/", "/?x=1", "ws://h:1/base/?x=1"),
        ("ws://h:1", "/chat", "ws://h:1/chat"),
        ("ws://h:1", "/", "ws://h:1/"),
        ("wss://h/base?k=v", "/chat?x=1", "wss://h/base/chat?k=v&x=1"),
    ])
    def test_upstream_url(self, base, target, expected):
        server = ProxyServer(base, ("127.0.0.1", 0))
        try:
            assert server.upstream_url(target) == expected
            with pytest.raises(twspy.InvalidURI):
                server.upstream_url("http://elsewhere/")
        finally:
            server.shutdown()

    @pytest.mark.parametrize("bad", ["http://h/", "ws://", "ws://h/#frag", "h:80"])
    def test_invalid_upstream(self, bad):
        with pytest.raises(twspy.InvalidURI):
            ProxyServer(bad, ("127.0.0.1", 0))

    def test_path_query_and_headers_forwarded(self, serve, proxy):
        upstream = serve(Upstream)
        server = proxy(url(upstream, "/base"))
        with twspy.connect(url(server, "/chat?x=1"), headers={"Authorization": "Bearer t0k", "X-Private": "no"},
                           origin="https://app.example", handshake_timeout=5):
            _, path, headers, _ = expect(upstream.events, "open")
        assert path == "/base/chat?x=1"
        assert headers["Authorization"] == "Bearer t0k"
        assert headers["Origin"] == "https://app.example"
        assert headers["X-Forwarded-For"] == "127.0.0.1"
        assert headers["Host"] == "127.0.0.1:%d" % upstream.address[1]  # the upstream's, not the proxy's
        assert "X-Private" not in headers
        with twspy.connect(url(server, "/"), handshake_timeout=5):
            assert expect(upstream.events, "open")[1] == "/base"

    def test_subprotocol_chosen_by_upstream(self, relay):
        upstream, server = relay
        with twspy.connect(url(server), protocols=["chat.v1", "chat.v2"], handshake_timeout=5) as conn:
            assert conn.protocol == "chat.v2"  # the upstream prefers v2; a local choice would be v1
            assert expect(upstream.events, "open")[3] == "chat.v2"
        with twspy.connect(url(server), protocols=["other"], handshake_timeout=5) as conn:
            assert conn.protocol is None
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            assert conn.protocol is None

    def test_one_name_for_the_handshake_deadline(self):
        """Issue 11: handshake_timeout is both legs' deadline; upstream_timeout= still works, deprecated."""
        server = ProxyServer("ws://127.0.0.1:1/", ("127.0.0.1", 0), handshake_timeout=3)
        try:
            assert server.upstream_timeout == 3 and server.sock.handshake_timeout == 3
        finally:
            server.shutdown()
        with pytest.warns(DeprecationWarning, match="upstream_timeout"):
            server = ProxyServer("ws://127.0.0.1:1/", ("127.0.0.1", 0), upstream_timeout=4)
        try:
            assert server.upstream_timeout == 4 and server.sock.handshake_timeout == 10.0
        finally:
            server.shutdown()

    def test_unreachable_upstream_is_502(self, proxy):
        server = proxy("ws://127.0.0.1:%d/" % free_port(), handshake_timeout=5)
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect(url(server), handshake_timeout=5)
        assert info.value.status == 502
        assert b"upstream unavailable" in info.value.body
        answer = raw_request(server)
        assert answer.startswith(b"HTTP/1.1 502 ")
        assert b"101" not in answer.split(b"\r\n", 1)[0] and b"Upgrade" not in answer

    @pytest.mark.parametrize("status, relayed", [(403, 403), (404, 404), (401, 401), (500, 502), (503, 502)])
    def test_upstream_refusal(self, serve, proxy, status, relayed):
        upstream = serve(type("Refuse%d" % status, (Refusing,), {"status": status}))
        server = proxy(url(upstream))
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect(url(server), handshake_timeout=5)
        assert info.value.status == relayed
        if status == 401:
            assert info.value.headers["WWW-Authenticate"] == 'Basic realm="up"'
            assert info.value.body == b"who are you?\n"

    def test_not_an_upgrade_never_reaches_upstream(self, relay):
        upstream, server = relay
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 426 ")
        with twspy.connect(url(server, "/after"), handshake_timeout=5):
            assert expect(upstream.events, "open")[1] == "/after"  # the first upstream client

    @pytest.mark.parametrize("header", ["Sec-WebSocket-Extensions: ;;;", "Sec-WebSocket-Protocol: a b"])
    def test_bad_upgrade_never_reaches_upstream(self, relay, header):
        upstream, server = relay
        answer = raw_request(server, extra=header)
        assert answer.startswith(b"HTTP/1.1 400 ")
        with twspy.connect(url(server, "/after"), handshake_timeout=5):
            assert expect(upstream.events, "open")[1] == "/after"

    def test_client_leaving_during_handshake(self, relay):
        upstream, server = relay
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=5) as sock:
            sock.sendall(upgrade_request("/gone"))
            sock.shutdown(socket.SHUT_WR)  # and never reads the 101
            assert expect(upstream.events, "open")[1] == "/gone"
        assert expect(upstream.events, "close")[1:] == (1001, "client connection lost")
        wait_for(lambda: not server.clients and not upstream.clients)

    def test_filter_refusing_the_open_client(self, serve, proxy):
        opened = []

        class Refuse(Filter):
            def on_open(self, client):
                opened.append(client)
                raise Reject(4003, "nope")

        upstream = serve(Upstream)
        server = proxy(url(upstream), filters=[Refuse()])
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(5)
        assert (info.value.code, info.value.reason) == (4003, "nope")
        # A refused client never reaches the server's onopen/onclose: no relay thread, and the
        # proxy leaves the upstream leg it had opened for it (going away).
        assert expect(upstream.events, "close")[1] == 1001
        wait_for(lambda: opened[0].request.state["upstream"].closed)  # the proxy's end of that leg too
        wait_for(lambda: not server.clients and not upstream.clients)

    def test_process_request_answers_before_upstream(self, serve, proxy):
        class Guarded(ProxyServer):
            def process_request(self, request):
                return None if request.headers.get("Authorization") == "ok" else 401

        upstream = serve(Upstream)
        server = Guarded(url(upstream), ("127.0.0.1", 0))
        thread = server.serve_in_thread()
        try:
            with pytest.raises(twspy.HandshakeError) as info:
                twspy.connect(url(server), handshake_timeout=5)
            assert info.value.status == 401
            with twspy.connect(url(server, "/in"), headers={"Authorization": "ok"}, handshake_timeout=5):
                assert expect(upstream.events, "open")[1] == "/in"  # the refused one never got there
        finally:
            server.shutdown()
            thread.join(5)

    def test_wss_upstream(self, serve, proxy):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        upstream = serve(Upstream, ssl=context)
        base = "wss://localhost:%d/secure" % upstream.address[1]
        server = proxy(base, upstream_ssl=ssl.create_default_context(cafile=CERT))
        with twspy.connect(url(server, "/x"), handshake_timeout=5) as conn:
            conn.send("over tls")
            assert conn.recv(5) == twspy.TextMessage("over tls")
            conn.send(b"z" * 300000)
            assert conn.recv(5) == twspy.BinaryMessage(b"z" * 300000)
        assert expect(upstream.events, "open")[1] == "/secure/x"

    def test_untrusted_wss_upstream_is_502(self, serve, proxy):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        upstream = serve(Upstream, ssl=context)
        server = proxy("wss://localhost:%d/" % upstream.address[1])  # the system CAs do not know it
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect(url(server), handshake_timeout=5)
        assert info.value.status == 502


class TestControlFrames:
    def test_ping_from_client_reaches_upstream(self, relay):
        upstream, server = relay
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            conn.send_ping(b"abc")
            conn.send("sync")
            assert conn.recv(5) == twspy.TextMessage("sync")
            assert expect(upstream.events, "ping") == ("ping", b"abc")
            conn.send_pong(b"beat")
            assert expect(upstream.events, "pong") == ("pong", b"beat")

    def test_ping_from_upstream_reaches_client(self, relay):
        upstream, server = relay
        with twspy.connect(url(server), connection_class=Recording, handshake_timeout=5) as conn:
            conn.send("ping")
            assert conn.recv(5) == twspy.TextMessage("pinged")  # sent after the ping, on the same leg
            assert conn.pings == [b"up"]
            # The client's pong goes back through the proxy to the upstream.
            assert expect(upstream.events, "pong") == ("pong", b"up")

    def test_keepalive_pongs_stay_on_their_leg(self, serve, proxy):
        upstream = serve(Upstream)
        server = proxy(url(upstream), ping_interval=0.05)  # keepalive pings on both legs
        with twspy.connect(url(server), connection_class=Recording, handshake_timeout=5) as conn:
            assert len(expect(upstream.events, "ping")[1]) == 4  # the upstream leg's keepalive
            deadline = time.monotonic() + 5
            while not conn.pings:  # the client leg's keepalive, answered inside recv()
                assert time.monotonic() < deadline
                with pytest.raises(TimeoutError):
                    conn.recv(0.05)
            # Frames stay in order on each leg: a relayed pong would arrive before these echoes.
            conn.send("sync")
            assert conn.recv(5) == twspy.TextMessage("sync")
        assert conn.pongs == []
        events = []
        while not upstream.events.empty():
            events.append(upstream.events.get_nowait())
        assert [e for e in events if e[0] == "pong"] == []


class TestClosing:
    def test_client_close_code_reaches_upstream(self, relay):
        upstream, server = relay
        conn = twspy.connect(url(server), handshake_timeout=5)
        conn.close(4001, "bye")
        assert conn.close_code == 4001
        assert expect(upstream.events, "close") == ("close", 4001, "bye")
        wait_for(lambda: not server.clients and not upstream.clients)

    def test_client_close_without_status(self, relay):
        upstream, server = relay
        conn = twspy.connect(url(server), extensions=[], handshake_timeout=5)
        conn.sock.send(twspy.Frame(twspy.OPCODE_CLOSE, b""))  # a close frame without a code (1005)
        with pytest.raises(twspy.ConnectionClosed):
            conn.recv(5)
        assert expect(upstream.events, "close")[1:] == (1000, "")

    def test_upstream_close_code_reaches_client(self, relay):
        upstream, server = relay
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            conn.send("close")
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(5)
        assert (info.value.code, info.value.reason) == (4002, "later")
        assert (conn.close_code, conn.close_reason) == (4002, "later")
        assert expect(upstream.events, "close")[1] == 4002  # the echo of its own close (no reason)
        wait_for(lambda: not server.clients)

    def test_upstream_vanishing_is_1014(self, relay):
        upstream, server = relay
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            conn.send("abort")
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(5)
        assert info.value.code == 1014  # bad gateway: 1006 never goes on the wire
        assert conn.close_code == 1014 and conn.close_reason.startswith("upstream connection lost")
        wait_for(lambda: not server.clients)

    def test_client_vanishing_is_1001_upstream(self, relay):
        upstream, server = relay
        conn = twspy.connect(url(server), handshake_timeout=5)
        expect(upstream.events, "open")
        conn.abort()
        assert expect(upstream.events, "close")[1:] == (1001, "client connection lost")
        wait_for(lambda: not server.clients and not upstream.clients)

    def test_shutdown_closes_both_legs(self, serve):
        upstream = serve(Upstream)
        server = ProxyServer(url(upstream), ("127.0.0.1", 0))
        thread = server.serve_in_thread()
        stopper = threading.Thread(target=server.shutdown)
        try:
            conn = twspy.connect(url(server), handshake_timeout=5)
            expect(upstream.events, "open")
            wait_for(lambda: server.clients)  # the proxy's client leg is open, not just handshaken
            stopper.start()
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(5)  # reading: the client answers the proxy's close at once
        finally:
            if stopper.ident is None:  # failed before starting it
                server.shutdown()
            stopper.join(5)
            thread.join(5)
        assert not thread.is_alive()
        assert info.value.code == 1001
        assert expect(upstream.events, "close")[1] == 1001
        wait_for(lambda: not upstream.clients)
        conn.close()


def test_cli_proxy(serve):
    upstream = serve(Upstream)
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "twspy", "proxy", "--upstream", url(upstream, "/up"),
                             "--port", "0"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        match = re.search(r"twspy proxy on ws://127\.0\.0\.1:(\d+)/ -> (\S+)", line)
        assert match, line
        assert match.group(2) == url(upstream, "/up")
        with twspy.connect("ws://127.0.0.1:%s/down?q=1" % match.group(1), handshake_timeout=5) as conn:
            conn.send("via cli")
            assert conn.recv(5) == twspy.TextMessage("via cli")
        assert expect(upstream.events, "open")[1] == "/up/down?q=1"
        assert expect(upstream.events, "close")[1] == 1000
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()


class TestUpstreamProxy:
    """Issue 14: the relay reaches its upstream through a proxy, as connect(proxy=...) does."""

    def test_through_tinyproxy(self, serve, proxy, tinyproxy):  # noqa: F811
        upstream = serve(Upstream)
        relay = proxy(url(upstream), upstream_proxy="http://user:pa55@" + tinyproxy)
        with twspy.connect(url(relay, "/via"), handshake_timeout=5, proxy=False) as conn:
            conn.send("proxied")
            assert conn.recv(5) == twspy.TextMessage("proxied")
        assert expect(upstream.events, "open")[1] == "/via"

    def test_refused_by_the_proxy_is_a_502(self, serve, proxy, tinyproxy):  # noqa: F811
        upstream = serve(Upstream)
        relay = proxy(url(upstream), upstream_proxy="http://user:wrong@" + tinyproxy)
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect(url(relay), handshake_timeout=5, proxy=False)
        assert info.value.status == 502 and b"401 Unauthorized" in info.value.body  # the proxy's answer, named
        assert upstream.events.empty()

    def test_environment_is_read_unless_told_not_to(self, serve, proxy, monkeypatch):
        upstream = serve(Upstream)
        with socket.socket() as dead:  # a port nobody listens on: a proxy that refuses
            dead.bind(("127.0.0.1", 0))
            monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % dead.getsockname()[1])
            monkeypatch.delenv("no_proxy", raising=False)
            monkeypatch.delenv("NO_PROXY", raising=False)
            with pytest.raises(twspy.HandshakeError) as info:
                twspy.connect(url(proxy(url(upstream))), handshake_timeout=5, proxy=False)
            assert info.value.status == 502
            with twspy.connect(url(proxy(url(upstream), upstream_proxy=False)), handshake_timeout=5,
                               proxy=False) as conn:
                conn.send("direct")
                assert conn.recv(5) == twspy.TextMessage("direct")

    def test_cli_upstream_proxy(self, serve, tinyproxy):  # noqa: F811
        upstream = serve(Upstream)
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "twspy", "proxy", "--upstream", url(upstream), "--port", "0",
                                 "--upstream-proxy", "http://user:pa55@" + tinyproxy],
                                cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        try:
            match = re.search(r"twspy proxy on ws://127\.0\.0\.1:(\d+)/", proc.stderr.readline())
            assert match
            with twspy.connect("ws://127.0.0.1:%s/" % match.group(1), handshake_timeout=5, proxy=False) as conn:
                conn.send("cli via tinyproxy")
                assert conn.recv(5) == twspy.TextMessage("cli via tinyproxy")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stderr.close()


class TestConfinement:
    """Issue 18 item 6: ``/..//x`` reached the upstream as ``/base/..//x``. Dot segments are
    refused (400), plain or percent-encoded, so a client stays below the upstream's path."""

    @pytest.mark.parametrize("target", [
        "/..//x", "/../x", "/a/../../x", "/.", "/./x", "/..", "/%2e%2e/x", "/%2E%2e//x", "/.%2e/x",
        "/..%2fx", "/..%2Fsecret", "/%252e%252e/x", "/..\\x", "/a\\..\\..\\x",
    ])
    def test_dot_segments_refused(self, target):
        server = ProxyServer("ws://h:1/base", ("127.0.0.1", 0))
        try:
            with pytest.raises(twspy.InvalidURI):
                server.upstream_url(target)
        finally:
            server.shutdown()

    @pytest.mark.parametrize("target, expected", [
        ("/a..b/x", "ws://h:1/base/a..b/x"), ("/.well-known/x", "ws://h:1/base/.well-known/x"),
        ("/x?next=/../y", "ws://h:1/base/x?next=/../y"), ("/a//b", "ws://h:1/base/a//b"),
    ])
    def test_dots_inside_names_and_queries_pass(self, target, expected):
        server = ProxyServer("ws://h:1/base", ("127.0.0.1", 0))
        try:
            assert server.upstream_url(target) == expected
        finally:
            server.shutdown()

    def test_dot_segment_is_400_and_never_reaches_upstream(self, serve, proxy):
        upstream = serve(Upstream)
        server = proxy(url(upstream, "/base"))
        answer = raw_request(server, "/..//x")
        assert answer.startswith(b"HTTP/1.1 400 ")
        with twspy.connect(url(server, "/after"), handshake_timeout=5):
            assert expect(upstream.events, "open")[1] == "/base/after"  # the first to reach it

    def test_client_forwarded_for_is_kept_and_appended_to(self, serve, proxy):
        upstream = serve(Upstream)
        server = proxy(url(upstream))
        with twspy.connect(url(server), headers={"X-Forwarded-For": "203.0.113.7"}, handshake_timeout=5):
            headers = expect(upstream.events, "open")[2]
        assert headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"


def proxy_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(("twspy-client", "twspy-proxy")))


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class TestResources:
    def test_flood_drains_to_baseline(self, serve, proxy):
        # Issue 18 item 6: after a flood the proxy still had 6 threads / 12 fds against 1 / 7.
        # A bounded flood of every way a client may come and go, then threads and fds go back
        # to what they were (bounded by close_timeout: a leg that does not answer is cut).
        upstream = serve(Upstream, close_timeout=1)
        server = proxy(url(upstream), close_timeout=1, handshake_timeout=5)
        port = server.address[1]
        with twspy.connect(url(server), handshake_timeout=5) as conn:  # warm up (the keepalive watchdog)
            conn.send("x")
            conn.recv(5)
        wait_for(lambda: not server.clients and not upstream.clients and not proxy_threads())
        threads, fds = proxy_threads(), open_fds()

        def client(i):
            kind = i % 7
            if kind == 0:  # a polite client
                with twspy.connect(url(server, "/x"), handshake_timeout=5) as conn:
                    conn.send("hi")
                    conn.recv(5)
            elif kind == 1:  # vanishes after a message
                conn = twspy.connect(url(server, "/x"), handshake_timeout=5)
                conn.send("hi")
                conn.abort()
            elif kind in (2, 3):  # an upgrade request, then gone before the answer (or half of one)
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(upgrade_request("/x") if kind == 2 else b"GET / HTTP/1.1\r\n")
            elif kind == 4:  # half-closes after the upgrade
                conn = twspy.connect(url(server, "/x"), handshake_timeout=5)
                conn.sock.sock.shutdown(socket.SHUT_WR)
                conn.abort()
            elif kind == 5:  # a frame cut short
                conn = twspy.connect(url(server, "/x"), handshake_timeout=5)
                conn.sock.sock.sendall(b"\x81\xfe\x10\x00abcd" + b"x" * 100)
                conn.abort()
            else:  # a close frame, then gone without waiting for the answer
                conn = twspy.connect(url(server, "/x"), handshake_timeout=5)
                conn.start_close(1000)
                conn.abort()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(140)))
        wait_for(lambda: not server.clients and not upstream.clients, timeout=20)
        wait_for(lambda: proxy_threads() == threads and open_fds() == fds, timeout=20)

    def test_relay_thread_refused_with_1013(self, serve, proxy, monkeypatch):
        # Issue 20 item 2: a relay thread that cannot start closes that client with 1013 and
        # its upstream leg; the proxy serves on.
        upstream = serve(Upstream)
        server = proxy(url(upstream))
        start = threading.Thread.start

        def failing(thread):
            if thread.name.startswith("twspy-proxy"):
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", failing)
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(5)
        assert info.value.code == 1013
        assert expect(upstream.events, "close")[1] in (1001, 1013)  # the upstream leg is closed too
        monkeypatch.undo()
        with twspy.connect(url(server), handshake_timeout=5) as conn:
            conn.send("again")
            assert conn.recv(5) == twspy.TextMessage("again")
        wait_for(lambda: not server.clients and not upstream.clients)
