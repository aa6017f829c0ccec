"""Server: the selector loop that reads request heads (no thread per waiting socket), its limits
(max_pending, max_connections), failures of accept() and of thread starts, handler exceptions of
any type, request hooks, SO_REUSEADDR and Unix domain sockets (issues 14, 17, 18, 20)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import sys
import threading
import time

import pytest

import twspy
from twspy.cli import EchoServer
from twspy.filters import BearerAuth, Echo
from twspy.handshake import make_key

from conftest import CERT, KEY, frame_from, http_exchange, url, wait_for

TIMEOUT = 5


def upgrade(path="/", **headers) -> bytes:
    fields = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": make_key(), "Sec-WebSocket-Version": "13"}
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = ["GET %s HTTP/1.1" % path] + ["%s: %s" % kv for kv in fields.items() if kv[1] is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def echo_once(server, text="through"):
    with twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT) as conn:
        conn.send(text)
        assert conn.recv(TIMEOUT).payload == text


def connect_idle(server, n):
    return [socket.create_connection(("127.0.0.1", server.address[1]), timeout=TIMEOUT) for _ in range(n)]


def closed_by_peer(sock) -> bool:
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def client_threads():
    return [t for t in threading.enumerate() if t.name.startswith("twspy-client")]


# -- issue 18 item 3: idle sockets hold no slot and no thread ---------------------------------------

class TestIdleSockets:
    def test_idle_sockets_take_no_slot_and_no_thread(self, serve):
        # 50 sockets that never send a byte, against max_connections=4: they used to take the 4
        # slots (a thread each) and every real client got 503 until the handshake timeout.
        server = serve(EchoServer, max_connections=4, extensions=[], handshake_timeout=30)
        idle = connect_idle(server, 50)
        wait_for(lambda: len(server._pending) == 50)
        assert client_threads() == []
        for _ in range(6):  # more real clients than max_connections, one after another
            echo_once(server)
        wait_for(lambda: client_threads() == [])  # the last one's thread ends after our close
        assert len(server._pending) == 50
        for sock in idle:
            sock.close()
        wait_for(lambda: not server._pending)

    def test_max_connections_counts_upgraded_clients(self, serve):
        server = serve(EchoServer, max_connections=2, extensions=[])
        idle = connect_idle(server, 5)
        a = twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
        b = twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
        assert info.value.status == 503
        a.close()
        wait_for(lambda: len(server._threads) < 2)
        echo_once(server)
        b.close()
        for sock in idle:
            sock.close()

    def test_max_pending_closes_the_oldest(self, serve, caplog):
        server = serve(EchoServer, max_pending=10, extensions=[], handshake_timeout=30)
        with caplog.at_level(logging.WARNING, logger="twspy.server"):
            old = connect_idle(server, 10)
            wait_for(lambda: len(server._pending) == 10)
            new = connect_idle(server, 10)
            assert all(closed_by_peer(sock) for sock in old)  # the oldest made room
            echo_once(server)  # and a real client still gets through
        assert len(server._pending) <= 10
        warnings = [r for r in caplog.records if "max_pending" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited: one line for 11 evictions
        for sock in old + new:
            sock.close()

    def test_deadline_closes_idle_and_partial_heads(self, serve):
        server = serve(EchoServer, handshake_timeout=0.3, extensions=[])
        idle, partial = connect_idle(server, 2)
        partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert closed_by_peer(idle) and closed_by_peer(partial)
        assert not server._pending
        echo_once(server)
        idle.close()
        partial.close()

    def test_request_split_into_many_reads(self, serve):
        server = serve(EchoServer, extensions=[])
        request = upgrade() + twspy.Frame(twspy.OPCODE_TEXT, "early", mask=True).pack()
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=TIMEOUT) as sock:
            for i in range(0, len(request), 7):
                sock.sendall(request[i:i + 7])
            parser = twspy.FrameParser()
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            parser.feed(rest)
            assert frame_from(sock, parser).payload == b"early"

    def test_shutdown_closes_pending_sockets(self, serve):
        server = serve(EchoServer, handshake_timeout=30)
        idle = connect_idle(server, 3)
        wait_for(lambda: len(server._pending) == 3)
        server.shutdown()
        assert all(closed_by_peer(sock) for sock in idle)
        for sock in idle:
            sock.close()


class TestTLSInTheLoop:
    @pytest.fixture
    def tls_server(self, serve):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        return serve(EchoServer, ssl=context, max_connections=2, extensions=[], handshake_timeout=30)

    def test_stalled_tls_handshakes_take_no_thread(self, tls_server):
        idle = connect_idle(tls_server, 20)  # TCP only: they never send a ClientHello
        half = socket.create_connection(("127.0.0.1", tls_server.address[1]), timeout=TIMEOUT)
        half.sendall(b"\x16\x03\x01\x00")  # the first bytes of a TLS record, and no more
        wait_for(lambda: len(tls_server._pending) == 21)
        assert client_threads() == []
        for _ in range(3):
            context = ssl.create_default_context(cafile=CERT)
            with twspy.connect("wss://localhost:%d/" % tls_server.address[1], ssl=context, extensions=[],
                               handshake_timeout=TIMEOUT) as conn:
                conn.send("secure")
                assert conn.recv(TIMEOUT).payload == "secure"
        for sock in idle + [half]:
            sock.close()

    def test_garbage_instead_of_tls_is_dropped(self, tls_server):
        with socket.create_connection(("127.0.0.1", tls_server.address[1]), timeout=TIMEOUT) as sock:
            sock.sendall(upgrade())  # plain HTTP to a TLS port
            assert closed_by_peer(sock)


# -- issue 20 item 2: a thread that cannot start ----------------------------------------------------

class TestThreadStartFails:
    def test_503_and_the_server_keeps_running(self, serve, monkeypatch, caplog):
        server = serve(EchoServer, extensions=[])
        real_start = threading.Thread.start
        failing = threading.Event()
        failing.set()

        def start(thread):
            if failing.is_set() and thread.name.startswith("twspy-client"):
                raise RuntimeError("can't start new thread")
            return real_start(thread)

        monkeypatch.setattr(threading.Thread, "start", start)
        with caplog.at_level(logging.WARNING, logger="twspy.server"):
            for _ in range(3):
                with pytest.raises(twspy.HandshakeError) as info:
                    twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
                assert info.value.status == 503
        assert len([r for r in caplog.records if "cannot start a thread" in r.getMessage()]) == 1
        failing.clear()
        echo_once(server)
        assert not server._threads or all(t.ident is not None for t in server._threads)
        server.shutdown()  # used to raise: "cannot join thread before it is started"

    def test_shutdown_skips_a_thread_not_started(self):
        server = EchoServer(("127.0.0.1", 0))
        server._threads.add(threading.Thread(target=lambda: None))  # added, start() not reached yet
        start = time.monotonic()
        server.shutdown(timeout=0.5)
        assert time.monotonic() - start < 2


# -- issue 20 item 13: out of file descriptors ------------------------------------------------------

class TestAcceptFails:
    def test_emfile_backs_off_and_logs_once(self, serve, monkeypatch, caplog):
        server = serve(EchoServer, extensions=[])
        listener = server.sock.sock
        real_accept = socket.socket.accept
        failing = threading.Event()
        failing.set()
        calls = []

        def accept(sock):
            if sock is listener and failing.is_set():
                calls.append(time.monotonic())
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_accept(sock)

        monkeypatch.setattr(socket.socket, "accept", accept)
        with caplog.at_level(logging.WARNING, logger="twspy.server"):
            waiting = socket.create_connection(("127.0.0.1", server.address[1]), timeout=TIMEOUT)
            wait_for(lambda: len(calls) >= 6)  # used to retry every 10 ms, a warning each time
            failing.clear()
            gaps = [b - a for a, b in zip(calls, calls[1:6])]
            # Each pause doubles (10, 20, 40, 80, 160 ms): a lower bound, whatever the machine's load.
            assert all(gap >= 0.01 * 2 ** i * 0.95 for i, gap in enumerate(gaps)), gaps
            echo_once(server)  # accepting again, within the last pause (at most 1 s)
        failed = [r for r in caplog.records if "accept failed" in r.getMessage()]
        assert len(failed) == 1 and "pausing accept" in failed[0].getMessage()
        waiting.close()

    def test_emfile_drops_the_oldest_pending_socket_first(self, serve, monkeypatch):
        server = serve(EchoServer, extensions=[], handshake_timeout=30)
        idle = connect_idle(server, 3)
        wait_for(lambda: len(server._pending) == 3)
        listener = server.sock.sock
        real_accept = socket.socket.accept
        failures = [1]

        def accept(sock):
            if sock is listener and failures[0]:
                failures[0] -= 1
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_accept(sock)

        monkeypatch.setattr(socket.socket, "accept", accept)
        echo_once(server)  # no pause: the descriptor of the socket waiting longest was freed
        assert closed_by_peer(idle[0])
        assert len(server._pending) == 2
        for sock in idle:
            sock.close()


# -- issue 20 item 12: handler and hook exceptions of any type ----------------------------------------

class TestAnyException:
    def test_sys_exit_in_a_handler_closes_the_peer(self, serve, caplog):
        closed = []

        class Exiting(EchoServer):
            def onmessage(self, client, message):
                sys.exit(3)

            def onclose(self, client, code, reason):
                closed.append(code)

        server = serve(Exiting, extensions=[])
        conn = twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
        conn.send("bye")
        with pytest.raises(twspy.ConnectionClosed) as info:  # used to wait for ever: the socket was left open
            conn.recv(TIMEOUT)
        assert info.value.code == 1011  # as for any other exception in a handler
        wait_for(lambda: not server.clients and not server._threads)
        assert closed == [1011]
        assert any(r.levelno == logging.ERROR and r.exc_info and isinstance(r.exc_info[1].__cause__, SystemExit)
                   for r in caplog.records)
        conn.close()

    @pytest.mark.parametrize("where", ["onopen", "filter"])
    def test_sys_exit_elsewhere_closes_the_peer(self, serve, where):
        from twspy.filters import Filter

        class ExitFilter(Filter):
            def on_message(self, client, message):
                sys.exit(4)

        class Exiting(EchoServer):
            def onopen(self, client):
                if where == "onopen":
                    sys.exit(3)

        server = serve(Exiting, extensions=[], filters=[ExitFilter()] if where == "filter" else [])
        conn = twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
        conn.send("bye")
        with pytest.raises(twspy.ConnectionClosed) as info:
            conn.recv(TIMEOUT)
        assert info.value.code == 1011
        wait_for(lambda: not server.clients and not server._threads)
        conn.close()

    @pytest.mark.parametrize("exc", [RuntimeError("bug"), SystemExit(1)])
    def test_select_subprotocol_raising_answers_500(self, serve, caplog, exc):
        class Broken(EchoServer):
            def select_subprotocol(self, client_protocols, server_protocols):
                raise exc

        server = serve(Broken, protocols=["a"], extensions=[])
        with pytest.raises(twspy.HandshakeError) as info:  # used to be a close with no HTTP answer
            twspy.connect(url(server), protocols=["a"], extensions=[], handshake_timeout=TIMEOUT)
        assert info.value.status == 500
        assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)
        echo_once(server)

    def test_process_request_sys_exit_answers_500(self, serve):
        class Broken(EchoServer):
            def process_request(self, *request):
                sys.exit(2)

        server = serve(Broken)
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
        assert info.value.status == 500


# -- issue 18 item 4, issue 20 item 10: request lines --------------------------------------------------

class TestRequestLine:
    @pytest.mark.parametrize("request_bytes, status", [
        (b"GET / HTTP/1.1\nHost: x\nUpgrade: websocket\n\n", 400),            # bare LF: at once
        (upgrade().replace(b"HTTP/1.1", b"HTTP/2.0", 1), 505),
        (upgrade().replace(b"HTTP/1.1", b"HTTP/1.0", 1), 505),
        (upgrade("http://evil.example/x"), 400),
        (upgrade("/x\x1bFAKE-LOG-LINE"), 400),
        (upgrade("/a\x00b"), 400),
    ])
    def test_answered_without_waiting(self, serve, request_bytes, status):
        server = serve(EchoServer, handshake_timeout=30)  # an answer must not wait for the deadline
        answer = http_exchange(server.address[1], request_bytes, timeout=TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:80]

    def test_control_characters_never_reach_the_log(self, serve, caplog):
        server = serve(EchoServer)
        with caplog.at_level(logging.DEBUG, logger="twspy.server"):
            answer = http_exchange(server.address[1], upgrade("/x\rFAKE-LOG-LINE\x1b[2J"), timeout=TIMEOUT)
            # The client thread logs after it closed the socket: wait for the line.
            wait_for(lambda: any("FAKE" in r.getMessage() for r in caplog.records))
        assert answer.startswith(b"HTTP/1.1 400 ")
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "FAKE-LOG-LINE" in text  # logged, escaped
        assert "\r" not in text and "\x1b" not in text


# -- issue 17 item 4: process_request ------------------------------------------------------------------

class Health(EchoServer):
    def process_request(self, request):
        if request.path == "/healthz":
            if request.method != "GET":
                return 405, [("Allow", "GET")], "GET only\n"
            return 200, [("Content-Type", "application/json")], '{"ok": true}'
        return None


class TestProcessRequest:
    def get(self, server, method, path):
        request = "%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (method, path)
        return http_exchange(server.address[1], request.encode(), timeout=TIMEOUT)

    def test_whole_request_and_callers_content_type(self, serve):
        server = serve(Health)
        answer = self.get(server, "GET", "/healthz")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
        assert head.lower().count(b"content-type") == 1 and b"Content-Type: application/json" in head
        assert body == b'{"ok": true}'
        assert self.get(server, "POST", "/healthz").startswith(b"HTTP/1.1 405 ")  # the method is seen
        echo_once(server)

    def test_old_signature_still_works_with_a_warning(self, serve):
        with pytest.warns(DeprecationWarning, match=r"process_request\(request\)") as warned:
            class Old(EchoServer):
                def process_request(self, path, headers):
                    return (200, "old\n") if path == "/healthz" else None
        assert warned[0].filename == __file__  # it points at the class statement

        server = serve(Old)
        assert self.get(server, "GET", "/healthz").endswith(b"\r\n\r\nold\n")
        echo_once(server)

    def test_new_signature_gives_no_warning(self, recwarn):
        class New(EchoServer):
            def process_request(self, request):
                return None

        assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]

    def test_log_names_who_answered(self, serve, caplog):
        server = serve(Health, filters=[BearerAuth("s3cret"), Echo()])
        with caplog.at_level(logging.DEBUG, logger="twspy.server"):
            self.get(server, "GET", "/healthz")
            self.get(server, "GET", "/chat?token=wrong")
            wait_for(lambda: len([r for r in caplog.records if "answered" in r.getMessage()]) == 2)
        answered = [r for r in caplog.records if "answered" in r.getMessage()]
        health, auth = sorted(answered, key=lambda r: r.levelno)
        assert health.levelno == logging.DEBUG and "answered 200 by process_request" in health.getMessage()
        assert auth.levelno == logging.INFO and "answered 401 by filter BearerAuth" in auth.getMessage()
        assert "wrong" not in auth.getMessage()  # no query: it may hold a token
        assert not [r for r in caplog.records if "refused" in r.getMessage()]


# -- issue 17 item 5: SO_REUSEADDR -------------------------------------------------------------------

class TestReuseAddress:
    @pytest.mark.skipif(os.name != "posix", reason="SO_REUSEADDR is set on POSIX only")
    def test_raw_websocket_port_rebinds_after_a_connected_client(self):
        listener = twspy.websocket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = twspy.websocket(handshake_timeout=TIMEOUT)
        thread = threading.Thread(target=client.connect, args=(("127.0.0.1", port),))
        thread.start()
        accepted, _ = listener.accept()
        thread.join(TIMEOUT)
        accepted.close()  # the server closes first: its end of the connection is in TIME_WAIT
        assert client.sock.recv(10) == b""
        client.close()
        listener.close()
        again = twspy.websocket()
        again.bind(("127.0.0.1", port))  # used to fail with EADDRINUSE for about 60 s
        again.close()

    def test_server_port_rebinds_after_shutdown_with_clients(self, serve):
        server = serve(EchoServer, extensions=[])
        port = server.address[1]
        conn = twspy.connect(url(server), extensions=[], handshake_timeout=TIMEOUT)
        server.shutdown()
        with pytest.raises(twspy.ConnectionClosed):
            conn.recv(TIMEOUT)
        conn.close()
        again = EchoServer(("127.0.0.1", port))
        again.shutdown()


# -- issue 14: Unix domain sockets -------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix domain sockets")
class TestUnixSocket:
    def test_handshake_and_echo_over_af_unix(self, serve, tmp_path):
        path = str(tmp_path / "ws.sock")
        server = serve(EchoServer, unix_path=path, extensions=[])
        assert server.address == path
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            sock.sendall(upgrade() + twspy.Frame(twspy.OPCODE_TEXT, "over unix", mask=True).pack())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            parser = twspy.FrameParser()
            parser.feed(rest)
            assert frame_from(sock, parser).payload == b"over unix"
            wait_for(lambda: len(server.clients) == 1)
            assert repr(next(iter(server.clients))).startswith("<client #")
        server.shutdown()
        assert not os.path.exists(path)  # removed at shutdown

    def test_stale_socket_file_is_replaced(self, serve, tmp_path):
        path = str(tmp_path / "ws.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()  # a dead server's file
        server = serve(EchoServer, unix_path=path)
        assert server.address == path

    def test_other_files_are_left_alone(self, tmp_path):
        path = tmp_path / "not-a-socket"
        path.write_text("data")
        with pytest.raises(OSError):
            EchoServer(unix_path=str(path))
        assert path.read_text() == "data"
