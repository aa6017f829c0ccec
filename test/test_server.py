"""Server: thread per client, handlers, broadcast, shutdown, limits, HTTP failures over loopback."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

import twspy
from twspy.cli import EchoServer
from twspy.handshake import make_key

from conftest import http_exchange, url, wait_for


def raw_request(server, request: bytes, timeout=5) -> bytes:
    """Send raw bytes to the server and return everything it answers until it closes."""
    return http_exchange(server.address[1], request, timeout)


def upgrade(path="/", **headers) -> bytes:
    fields = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": make_key(), "Sec-WebSocket-Version": "13"}
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = ["GET %s HTTP/1.1" % path] + ["%s: %s" % kv for kv in fields.items() if kv[1] is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Recording(twspy.Server):
    def __init__(self, *args, **kwargs):
        self.events = []
        self.lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def record(self, *event):
        with self.lock:
            self.events.append(event)

    def onopen(self, client):
        self.record("open", client.id, client.path, client.headers.get("X-Test"), client.address[0])

    def onmessage(self, client, message):
        if message.payload == "boom":
            raise RuntimeError("handler failure")
        client.send(message)

    def onclose(self, client, code, reason):
        self.record("close", client.id, code, reason)

    def onerror(self, client, exc):
        self.record("error", client.id, type(exc).__name__)


class TestServing:
    def test_echo_and_handlers(self, serve):
        server = serve(Recording)
        with twspy.connect(url(server, "/room?x=1"), headers={"X-Test": "yes"}, extensions=[]) as c:
            c.send("hi")
            assert c.recv(5) == twspy.TextMessage("hi")
            c.send(b"\x00")
            assert c.recv(5) == twspy.BinaryMessage(b"\x00")
            assert len(server.clients) == 1
        wait_for(lambda: any(e[0] == "close" for e in server.events))
        assert server.events[0][0] == "open" and server.events[0][2:] == ("/room?x=1", "yes", "127.0.0.1")
        assert server.events[-1][2] == 1000
        wait_for(lambda: not server.clients)

    def test_many_concurrent_clients(self, serve):
        server = serve(EchoServer)
        errors = []

        def client(i):
            try:
                with twspy.connect(url(server), extensions=[]) as c:
                    for j in range(20):
                        payload = "%d-%d-" % (i, j) + "x" * (j * 50)
                        c.send(payload, fragment_size=200 if j % 3 == 0 else None)
                        assert c.recv(10).payload == payload
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        wait_for(lambda: not server.clients)

    def test_handler_exception_is_1011_and_server_survives(self, serve, caplog):
        server = serve(Recording)
        c = twspy.connect(url(server), extensions=[])
        c.send("boom")
        with pytest.raises(twspy.ConnectionClosed) as info:
            c.recv(5)
        assert info.value.code == 1011
        assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
        with twspy.connect(url(server), extensions=[]) as other:
            other.send("still serving")
            assert other.recv(5).payload == "still serving"
        wait_for(lambda: ("error",) == tuple(e[0] for e in server.events if e[0] == "error")[:1])

    def test_disconnect_without_close_is_quiet(self, serve, caplog):
        server = serve(Recording)
        c = twspy.connect(url(server), extensions=[])
        c.sock.sock.close()  # vanish without a close frame
        wait_for(lambda: any(e[0] == "close" for e in server.events))
        assert [e for e in server.events if e[0] == "close"][0][2] == 1006
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    def test_subprotocol(self, serve):
        server = serve(EchoServer, protocols=["b", "c"])
        with twspy.connect(url(server), protocols=["a", "c", "b"], extensions=[]) as c:
            assert c.protocol == "c"
        with twspy.connect(url(server), protocols=["a"], extensions=[]) as c:
            assert c.protocol is None

    def test_select_subprotocol_override(self, serve):
        class Picky(EchoServer):
            def select_subprotocol(self, client_protocols, server_protocols):
                return client_protocols[-1]

        server = serve(Picky, protocols=["x", "y"])
        with twspy.connect(url(server), protocols=["x", "y"], extensions=[]) as c:
            assert c.protocol == "y"

    def test_max_size(self, serve):
        server = serve(EchoServer, max_size=1000)
        with twspy.connect(url(server), extensions=[]) as c:
            c.send(b"x" * 1001)
            with pytest.raises(twspy.ConnectionClosed) as info:
                c.recv(5)
            assert info.value.code == 1009


class TestBroadcast:
    def test_reaches_everyone(self, serve):
        server = serve(EchoServer)
        clients = [twspy.connect(url(server), extensions=[]) for _ in range(5)]
        wait_for(lambda: len(server.clients) == 5)
        server.broadcast("news")
        server.broadcast(b"bin", exclude=next(iter(server.clients)))
        got = [[c.recv(5) for _ in range(1)] for c in clients]
        assert all(g == [twspy.TextMessage("news")] for g in got)
        binaries = 0
        for c in clients:
            try:
                binaries += c.recv(0.3) == twspy.BinaryMessage(b"bin")
            except TimeoutError:
                pass
        assert binaries == 4
        for c in clients:
            c.close()

    def test_slow_client_does_not_stall_others(self, serve):
        server = serve(EchoServer, max_outbox=1 << 20)
        # A client that completes the handshake and then never reads.
        slow = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(upgrade())
        assert slow.recv(4096).startswith(b"HTTP/1.1 101")
        fast = twspy.connect(url(server), extensions=[])
        wait_for(lambda: len(server.clients) == 2)
        payload = b"y" * 65536
        closed = []
        slow_client = [c for c in server.clients if c.address[1] == slow.getsockname()[1]][0]
        slow_client.onclose = lambda code, reason: closed.append(code)
        start = time.monotonic()
        for _ in range(400):  # up to 25 MiB: more than the kernel buffers plus the 1 MiB outbox
            server.broadcast(payload)
            assert fast.recv(5).payload == payload  # never held up by the slow one
            if closed:
                break
        assert time.monotonic() - start < 20
        # The slow client overflowed its outbound queue and was dropped (1013).
        assert closed == [1013]
        wait_for(lambda: len(server.clients) == 1, timeout=5)
        fast.close()
        slow.close()


class TestShutdown:
    def test_clients_get_1001(self, serve):
        server = serve(EchoServer)
        clients = [twspy.connect(url(server), extensions=[]) for _ in range(20)]
        wait_for(lambda: len(server.clients) == 20)
        server.shutdown()
        for c in clients:
            with pytest.raises(twspy.ConnectionClosed) as info:
                c.recv(5)
            assert info.value.code == 1001
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.address[1]), timeout=1)

    def test_context_manager_and_run(self):
        server = EchoServer(("127.0.0.1", 0))
        thread = threading.Thread(target=server.run)
        thread.start()
        with server:
            with twspy.connect(url(server), extensions=[]) as c:
                c.send("x")
                assert c.recv(5).payload == "x"
        thread.join(5)
        assert not thread.is_alive()

    def test_stuck_handshake_does_not_block(self, serve):
        server = serve(EchoServer, handshake_timeout=0.5)
        stuck = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        stuck.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        silent = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        with twspy.connect(url(server), extensions=[]) as c:
            c.send("through")
            assert c.recv(5).payload == "through"
        assert stuck.recv(100) == b""  # closed by the handshake deadline
        assert silent.recv(100) == b""
        stuck.close()
        silent.close()


class TestHandshakeFailures:
    """§4.2.1: a bad request gets a real HTTP answer."""

    @pytest.mark.parametrize("request_bytes,status", [
        (upgrade(Sec_WebSocket_Version="8"), 426),
        (upgrade(Sec_WebSocket_Key="short"), 400),
        (upgrade(Sec_WebSocket_Key=None), 400),
        (upgrade(Upgrade=None), 426),
        (upgrade(Connection="keep-alive"), 426),
        (upgrade().replace(b"GET", b"POST", 1), 405),
        (b"garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ])
    def test_status(self, serve, request_bytes, status):
        server = serve(EchoServer)
        answer = raw_request(server, request_bytes)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:80]
        if status == 426 and b"Version: 8" in request_bytes:
            assert b"Sec-WebSocket-Version: 13" in answer

    def test_origin_and_location(self, serve):
        server = serve(EchoServer, trusted_origins=["https://good.example"], locations=["/ok"])
        assert raw_request(server, upgrade("/ok", Origin="https://evil.example")).startswith(b"HTTP/1.1 403")
        assert raw_request(server, upgrade("/nope", Origin="https://good.example")).startswith(b"HTTP/1.1 403")
        with twspy.connect(url(server, "/ok"), origin="https://good.example", extensions=[]) as c:
            c.send("ok")
            assert c.recv(5).payload == "ok"

    def test_max_connections_503(self, serve):
        server = serve(EchoServer, max_connections=2)
        a = twspy.connect(url(server), extensions=[])
        b = twspy.connect(url(server), extensions=[])
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect(url(server), extensions=[])
        assert info.value.status == 503
        a.close()
        b.close()


class TestLimits:
    def test_shutdown_drops_clients_in_handshake(self, serve):
        server = serve(EchoServer, handshake_timeout=30)
        stuck = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        stuck.sendall(b"GET / HTTP/1.1\r\n")
        # Wait until the server loop has read the partial head (no thread yet): closing a socket
        # with unread bytes would answer RST instead of FIN.
        wait_for(lambda: any(p.buf for p in list(server._pending.values())))
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 15  # not its 30 s handshake deadline
        assert stuck.recv(10) == b""
        stuck.close()

    def test_bytes_after_request_are_kept(self, serve):
        server = serve(EchoServer, extensions=[])
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=5) as sock:
            frame = twspy.Frame(twspy.OPCODE_TEXT, "early", mask=True).pack()
            sock.sendall(upgrade() + frame)  # the frame travels in the same segment as the request
            data = b""
            while b"early" not in data:
                chunk = sock.recv(4096)
                assert chunk
                data += chunk
            assert data.startswith(b"HTTP/1.1 101") and data.endswith(b"\x81\x05early")

    def test_write_timeout_frees_the_thread(self, serve):
        sent = threading.Event()
        failed = []

        class Firehose(twspy.Server):
            def onmessage(self, client, message):
                try:
                    for _ in range(10000):  # bounded; the peer never reads
                        client.send(b"z" * 65536)
                except twspy.ConnectionClosed as exc:
                    failed.append(exc.code)
                sent.set()

        server = serve(Firehose, write_timeout=0.3, extensions=[])
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(upgrade() + twspy.Frame(twspy.OPCODE_TEXT, "go", mask=True).pack())
        assert sent.wait(10)
        assert failed == [1006]
        wait_for(lambda: not server.clients)
        sock.close()

    def test_keepalive_pings_and_drops_dead_peer(self, serve):
        closed = []

        class Watched(EchoServer):
            def onclose(self, client, code, reason):
                closed.append(code)

        server = serve(Watched, ping_interval=0.1, ping_timeout=0.3, extensions=[])
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=5) as sock:
            sock.sendall(upgrade())
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 101")
            parser = twspy.FrameParser()
            parser.feed(reply.split(b"\r\n\r\n", 1)[1])
            while True:  # a ping arrives; we play dead and never answer it
                frame = parser.next_frame()
                if frame is not None:
                    break
                parser.feed(sock.recv(4096))
            assert frame.opcode == twspy.OPCODE_PING and len(frame.payload) == 4
            wait_for(lambda: closed, timeout=5)
            assert closed == [1006]

    def test_keepalive_alive_peer_stays(self, serve):
        server = serve(EchoServer, ping_interval=0.05, ping_timeout=0.2, extensions=[])
        pongs = []

        class Counting(twspy.Connection):
            def onping(self, payload):
                pongs.append(payload)

        with twspy.connect(url(server), connection_class=Counting, extensions=[]) as conn:
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:
                conn.send("x")
                assert conn.recv(5).payload == "x"
                time.sleep(0.02)
            assert len(pongs) >= 3  # pinged several times and never dropped
            assert conn.state == "OPEN"
