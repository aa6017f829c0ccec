"""twspy.connect: URLs, TLS, redirects, authentication, handshake failures."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import warnings

import pytest

import twspy
import twspy.client
from twspy.cli import EchoServer
from twspy.handshake import accept_key, parse_request, read_head

from conftest import CERT, KEY, url


class ScriptedServer:
    """A raw HTTP server on 127.0.0.1:0 answering each connection with ``script(request, n)``.

    ``script`` returns the response bytes; for a 101 it gets the accept key via
    :func:`switching` and the connection then echoes one text frame before closing.
    """

    def __init__(self, script, ssl_context=None):
        self.script = script
        self.ssl_context = ssl_context
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.ssl_context is not None:
                try:
                    conn.settimeout(5)
                    conn = self.ssl_context.wrap_socket(conn, server_side=True)
                except OSError:
                    conn.close()
                    continue
            with conn:
                conn.settimeout(5)
                try:
                    head, _ = read_head(conn.recv)
                except (OSError, twspy.HandshakeError):
                    continue
                request = parse_request(head)
                self.requests.append(request)
                answer = self.script(request, n)
                n += 1
                if answer is None:  # hang until the client gives up
                    try:
                        conn.recv(1)
                    except OSError:
                        pass
                    continue
                conn.sendall(answer)
                if answer.startswith(b"HTTP/1.1 101"):
                    try:
                        conn.sendall(b"\x81\x02hi\x88\x02\x03\xe8")  # a message, then close 1000
                        conn.recv(100)
                    except OSError:
                        pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (Linux)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def switching(request, extra=""):
    key = request.headers["Sec-WebSocket-Key"]
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n%s\r\n" % (accept_key(key), extra)).encode()


@pytest.fixture
def scripted():
    servers = []

    def make(script, ssl_context=None):
        server = ScriptedServer(script, ssl_context)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


class TestConnect:
    def test_echo_and_request(self, serve):
        server = serve(EchoServer)
        with twspy.connect(url(server, "/path?q=1"), origin="http://me.example", headers=[("X-A", "1")],
                           extensions=[]) as conn:
            conn.send("text")
            assert conn.recv(5) == twspy.TextMessage("text")
            conn.send(b"")
            assert conn.recv(5) == twspy.BinaryMessage(b"")
        assert conn.closed and conn.close_code == 1000

    def test_request_headers(self, scripted):
        server = scripted(lambda request, n: switching(request))
        conn = twspy.connect("ws://127.0.0.1:%d/a/b?c=d" % server.port, origin="http://o.example",
                             headers={"X-Custom": "v"}, protocols=None, extensions=[])
        assert conn.recv(5).payload == "hi"
        with pytest.raises(twspy.ConnectionClosed):
            conn.recv(5)
        request = server.requests[0]
        assert request.path == "/a/b?c=d"
        assert request.headers["Host"] == "127.0.0.1:%d" % server.port
        assert request.headers["Origin"] == "http://o.example"
        assert request.headers["X-Custom"] == "v"
        assert len(base64.b64decode(request.headers["Sec-WebSocket-Key"])) == 16

    def test_ipv6(self):
        try:
            server = EchoServer(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        thread = server.serve_in_thread()
        try:
            with twspy.connect("ws://[::1]:%d/" % server.address[1], extensions=[]) as conn:
                conn.send("v6")
                assert conn.recv(5).payload == "v6"
        finally:
            server.shutdown()
            thread.join(5)

    def test_invalid_uri(self):
        for bad in ("http://x/", "ws://", "ws://h/#frag", "wss://h:99999/"):
            with pytest.raises(twspy.InvalidURI):
                twspy.connect(bad)

    def test_refused_status(self, scripted):
        server = scripted(lambda request, n: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Why: no\r\n\r\nnope")
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect("ws://127.0.0.1:%d/" % server.port, extensions=[])
        assert info.value.status == 403
        assert info.value.headers["X-Why"] == "no"
        assert info.value.body == b"nope"

    def test_wrong_accept(self, scripted):
        server = scripted(lambda request, n: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong=\r\n\r\n")
        with pytest.raises(twspy.HandshakeError):
            twspy.connect("ws://127.0.0.1:%d/" % server.port, extensions=[])

    def test_unoffered_subprotocol(self, scripted):
        server = scripted(lambda request, n: switching(request, "Sec-WebSocket-Protocol: other\r\n"))
        with pytest.raises(twspy.NegotiationError):
            twspy.connect("ws://127.0.0.1:%d/" % server.port, protocols=["mine"], extensions=[])

    def test_unoffered_extension(self, scripted):
        server = scripted(lambda request, n: switching(request, "Sec-WebSocket-Extensions: x-unknown\r\n"))
        with pytest.raises(twspy.NegotiationError):
            twspy.connect("ws://127.0.0.1:%d/" % server.port, extensions=[])

    def test_timeout(self, scripted):
        server = scripted(lambda request, n: None)
        with pytest.raises(TimeoutError):
            twspy.connect("ws://127.0.0.1:%d/" % server.port, handshake_timeout=0.3, extensions=[])

    def test_connection_refused(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        with pytest.raises(ConnectionRefusedError):
            twspy.connect("ws://127.0.0.1:%d/" % port, extensions=[])


class TestRedirectsAndAuth:
    def test_redirect(self, scripted):
        target = scripted(lambda request, n: switching(request))
        first = scripted(lambda request, n: b"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:%d/new\r\n"
                         b"Content-Length: 0\r\n\r\n" % target.port)
        conn = twspy.connect("ws://127.0.0.1:%d/old" % first.port, extensions=[])
        assert conn.recv(5).payload == "hi"
        assert target.requests[0].path == "/new"
        conn.abort()

    def test_redirect_loop_is_bounded(self, scripted):
        loop = scripted(lambda request, n: b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /again\r\n"
                        b"Content-Length: 0\r\n\r\n")
        with pytest.raises(twspy.RedirectError):
            twspy.connect("ws://127.0.0.1:%d/" % loop.port, extensions=[])
        assert len(loop.requests) == twspy.client.MAX_REDIRECTS + 1

    SECRETS = {"Authorization": "Bearer s3cret", "cookie": "sid=1", "PROXY-AUTHORIZATION": "Basic eDp5"}

    def test_credentials_do_not_follow_a_redirect_to_another_port(self, scripted):
        # Issue 17 item 1: a redirect that changes scheme, host or port drops Authorization,
        # Cookie and Proxy-Authorization (any case) and the URL's credentials.
        recorder = scripted(lambda request, n: switching(request))
        redirector = scripted(lambda request, n: b"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:%d/next\r\n"
                              b"Content-Length: 0\r\n\r\n" % recorder.port)
        conn = twspy.connect("ws://127.0.0.1:%d/" % redirector.port, headers=self.SECRETS, extensions=[])
        conn.abort()
        sent = {name.lower() for name, _ in redirector.requests[0].headers.items()}
        assert {"authorization", "cookie", "proxy-authorization"} <= sent
        received = {name.lower() for name, _ in recorder.requests[0].headers.items()}
        assert not received & {"authorization", "cookie", "proxy-authorization"}

    def test_url_credentials_do_not_follow_a_redirect_to_another_host(self, scripted):
        basic = "Basic " + base64.b64encode(b"u:pw").decode()
        challenge = b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\nContent-Length: 0\r\n\r\n'
        recorder = scripted(lambda request, n: challenge)  # would take any credentials it is given

        def redirect_once_authenticated(request, n):
            if request.headers.get("Authorization") != basic:
                return challenge
            return (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: ws://localhost:%d/\r\n"
                    b"Content-Length: 0\r\n\r\n" % recorder.port)

        redirector = scripted(redirect_once_authenticated)
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect("ws://u:pw@127.0.0.1:%d/" % redirector.port, extensions=[])
        assert info.value.status == 401
        assert [r.headers.get("Authorization") for r in redirector.requests] == [None, basic]
        assert [r.headers.get("Authorization") for r in recorder.requests] == [None]  # not answered either

    def test_credentials_follow_a_redirect_on_the_same_origin(self, scripted):
        def script(request, n):
            if request.path == "/old":
                return b"HTTP/1.1 301 Moved\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n"
            return switching(request)

        server = scripted(script)
        conn = twspy.connect("ws://127.0.0.1:%d/old" % server.port, headers=self.SECRETS, extensions=[])
        conn.abort()
        assert server.requests[1].path == "/new"
        assert server.requests[1].headers["Authorization"] == "Bearer s3cret"
        assert server.requests[1].headers["Cookie"] == "sid=1"

    def test_https_to_http_redirect_is_refused(self, scripted):
        plain = scripted(lambda request, n: switching(request))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        secure = scripted(lambda request, n: b"HTTP/1.1 302 Found\r\nLocation: ws://localhost:%d/\r\n"
                          b"Content-Length: 0\r\n\r\n" % plain.port, ssl_context=context)
        with pytest.raises(twspy.RedirectError) as info:
            twspy.connect("wss://localhost:%d/" % secure.port, headers=self.SECRETS, extensions=[],
                          ssl=ssl.create_default_context(cafile=CERT))
        assert info.value.status == 302 and "ws://" in str(info.value)
        assert plain.requests == []

    def test_basic_auth(self, scripted):
        expected = "Basic " + base64.b64encode(b"user:p@ss").decode()

        def script(request, n):
            if request.headers.get("Authorization") == expected:
                return switching(request)
            return b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\nContent-Length: 0\r\n\r\n'

        server = scripted(script)
        conn = twspy.connect("ws://user:p%%40ss@127.0.0.1:%d/" % server.port, extensions=[])
        assert conn.recv(5).payload == "hi"
        assert len(server.requests) == 2
        conn.abort()

    def test_wrong_credentials_bounded(self, scripted):
        server = scripted(lambda request, n: b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\n'
                          b"Content-Length: 0\r\n\r\n")
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect("ws://u:bad@127.0.0.1:%d/" % server.port, extensions=[])
        assert info.value.status == 401
        assert len(server.requests) == 1 + twspy.client.MAX_AUTH_ATTEMPTS

    def test_digest_auth(self, scripted):
        import hashlib

        def script(request, n):
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Digest "):
                fields = dict(part.strip().split("=", 1) for part in auth[7:].split(","))
                fields = {k: v.strip('"') for k, v in fields.items()}
                ha1 = hashlib.md5(b"u:realm:pw").hexdigest()
                ha2 = hashlib.md5(("GET:%s" % fields["uri"]).encode()).hexdigest()
                want = hashlib.md5(("%s:n0nce:%s:%s:auth:%s" % (ha1, fields["nc"], fields["cnonce"], ha2))
                                   .encode()).hexdigest()
                if fields["response"] == want:
                    return switching(request)
            return (b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="realm", nonce="n0nce", '
                    b'qop="auth"\r\nContent-Length: 0\r\n\r\n')

        server = scripted(script)
        conn = twspy.connect("ws://u:pw@127.0.0.1:%d/x" % server.port, extensions=[])
        assert conn.recv(5).payload == "hi"
        conn.abort()


class TestTLS:
    @pytest.fixture
    def tls_server(self, serve):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        return serve(EchoServer, ssl=context)

    def client_context(self):
        context = ssl.create_default_context(cafile=CERT)
        return context

    def test_wss_echo(self, tls_server):
        for host in ("localhost", "127.0.0.1"):
            with twspy.connect("wss://%s:%d/" % (host, tls_server.address[1]), ssl=self.client_context(),
                               extensions=[]) as conn:
                conn.send("secure")
                assert conn.recv(5).payload == "secure"
                conn.send(b"z" * 300000)
                assert conn.recv(5).payload == b"z" * 300000

    def test_untrusted_certificate_refused(self, tls_server):
        with pytest.raises(ssl.SSLCertVerificationError):
            twspy.connect("wss://localhost:%d/" % tls_server.address[1], extensions=[])

    def test_plain_client_against_tls_server(self, tls_server):
        with pytest.raises((twspy.HandshakeError, OSError)):
            twspy.connect("ws://127.0.0.1:%d/" % tls_server.address[1], extensions=[], handshake_timeout=2)


class TestUnixSocket:
    def test_connect_over_a_unix_socket(self, tmp_path):
        path = str(tmp_path / "ws.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        seen = {}

        def serve_one():
            raw, _ = listener.accept()
            ws = twspy.websocket(raw)
            ws.server_handshake(5)
            seen["path"], seen["host"] = ws.path, ws.headers["Host"]
            with twspy.Connection(ws) as conn:
                conn.send(conn.recv(5))
                with pytest.raises(twspy.ConnectionClosed):
                    conn.recv(5)  # until the client closes

        thread = threading.Thread(target=serve_one)
        thread.start()
        try:
            with twspy.connect("ws://app.local/chat?x=1", unix_path=path, handshake_timeout=5, extensions=[]) as conn:
                conn.send("over AF_UNIX")
                assert conn.recv(5).payload == "over AF_UNIX"
                assert conn.sock.address == path
        finally:
            thread.join(5)
            listener.close()
        assert seen == {"path": "/chat?x=1", "host": "app.local"}
        assert conn.close_code == 1000

    def test_missing_unix_socket(self, tmp_path):
        with pytest.raises(FileNotFoundError):
            twspy.connect("ws://x/", unix_path=str(tmp_path / "nothing"), handshake_timeout=5)


class TestOptionVocabulary:
    """Issue 11: one name per option; connect()'s old ``timeout=`` still works, with a DeprecationWarning."""

    def test_timeout_is_a_deprecated_spelling_of_handshake_timeout(self, monkeypatch):
        seen = []

        def fake_open(uri, protocols, extensions, origin, headers, ssl, ws_options, route):
            seen.append(ws_options["handshake_timeout"])
            raise OSError("stop here")

        monkeypatch.setattr(twspy.client, "_open", fake_open)
        with pytest.warns(DeprecationWarning, match="handshake_timeout"):
            with pytest.raises(OSError):
                twspy.connect("ws://127.0.0.1:1/", timeout=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(OSError):
                twspy.connect("ws://127.0.0.1:1/", handshake_timeout=4)
            with pytest.raises(OSError):
                twspy.connect("ws://127.0.0.1:1/")
        assert seen == [3, 4, 10.0]

    def test_unknown_options_are_a_type_error(self):
        with pytest.raises(TypeError):
            twspy.connect("ws://127.0.0.1:1/", open_timout=1)  # a typo is not ignored
