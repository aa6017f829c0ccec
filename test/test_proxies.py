"""twspy.connect through proxies: real tinyproxy (HTTP CONNECT, Basic auth) and microsocks (SOCKS5
user/password), an https:// proxy written here (TLS inside TLS), broken proxies, the environment."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

import twspy
from twspy.cli import EchoServer
from twspy.proxies import open_tunnel, parse_proxy, proxy_for

from conftest import CERT, KEY, url, wait_for


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def start_daemon(argv_for, tmp_path, tries=3):
    """Start a proxy daemon on a free 127.0.0.1 port (``argv_for(port)``), once it accepts connections:
    ``(process, port)``. Neither daemon takes port 0, so a port freed for it may be taken meanwhile:
    then it exits at once, and another port is tried."""
    for _ in range(tries):
        port = free_port()
        argv = argv_for(port)
        log_path = tmp_path / ("%s.log" % os.path.basename(argv[0]))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        def listening(proc=proc, port=port):
            if proc.poll() is not None:
                return True
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        try:
            wait_for(listening, timeout=10)
        except BaseException:
            proc.kill()
            proc.wait(10)
            raise
        if proc.poll() is None:
            return proc, port
        proc.wait(10)
    raise AssertionError("%s did not start: %s" % (argv[0], log_path.read_text()))


def stop_daemon(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def tinyproxy(tmp_path):
    """tinyproxy on 127.0.0.1 (a free port) with BasicAuth user / pa55; its http:// URL, no credentials."""
    if shutil.which("tinyproxy") is None:
        pytest.skip("tinyproxy is not installed (Debian package tinyproxy; .ci/run installs it)")
    def argv_for(port):
        config = tmp_path / "tinyproxy.conf"
        config.write_text("Port %d\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\n"
                          "BasicAuth user pa55\nLogLevel Info\n%s" % (port, "User nobody\nGroup nogroup\n"
                                                                       if os.getuid() == 0 else ""))
        return ["tinyproxy", "-d", "-c", str(config)]

    proc, port = start_daemon(argv_for, tmp_path)
    yield "127.0.0.1:%d" % port
    stop_daemon(proc)


@pytest.fixture
def microsocks(tmp_path):
    """microsocks on 127.0.0.1 (a free port) with user / s3cret; its host:port."""
    if shutil.which("microsocks") is None:
        pytest.skip("microsocks is not installed (Debian package microsocks; .ci/run installs it)")
    proc, port = start_daemon(lambda port: ["microsocks", "-i", "127.0.0.1", "-p", str(port), "-u", "user",
                                            "-P", "s3cret"], tmp_path)
    yield "127.0.0.1:%d" % port
    stop_daemon(proc)


class FakeProxy:
    """An HTTP CONNECT proxy on 127.0.0.1:0 (TLS with ``context``); ``answer(request)`` returns the bytes to
    send back, None to relay (200 then copying both ways), or b"" to close without answering."""

    def __init__(self, answer=None, context=None):
        self.answer, self.context = answer, context
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.threads = [threading.Thread(target=self._run)]
        self.threads[0].start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,))
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn):
        upstream = None
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.requests.append(request)
            answer = self.answer(request) if self.answer else None
            if answer is not None:
                conn.sendall(answer)
                return
            host, _, port = request.split(b" ")[1].decode().rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            back = threading.Thread(target=self._copy, args=(upstream, conn))
            back.start()
            self._copy(conn, upstream)
            back.join(5)
        except OSError:
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()

    @staticmethod
    def _copy(source, sink):
        try:
            source.settimeout(10)
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait_idle(self):
        """Join the threads serving connections (their sockets are closed then)."""
        for thread in self.threads[1:]:
            thread.join(10)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def fake_proxy():
    made = []

    def make(answer=None, context=None):
        proxy = FakeProxy(answer, context)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def echo(serve):
    return serve(EchoServer)


def roundtrip(conn, text="through"):
    with conn:
        conn.send(text)
        assert conn.recv(5) == twspy.TextMessage(text)
    assert conn.close_code == 1000


class TestHTTPConnect:
    def test_tinyproxy_with_basic_auth(self, tinyproxy, echo):
        roundtrip(twspy.connect(url(echo), proxy="http://user:pa55@" + tinyproxy, handshake_timeout=5))

    @pytest.mark.parametrize("creds", ["", "user:wrong@"])
    def test_tinyproxy_wrong_credentials(self, tinyproxy, echo, creds):
        before = open_fds()
        with pytest.raises(twspy.ProxyError) as info:
            twspy.connect(url(echo), proxy="http://%s%s" % (creds, tinyproxy), handshake_timeout=5)
        # tinyproxy answers 407 without credentials and 401 with wrong ones
        status = info.value.status
        assert status == (401 if creds else 407) and "%d %s" % (status, info.value.reason) in str(info.value)
        assert info.value.proxy == "http://" + tinyproxy and "wrong" not in str(info.value)
        assert isinstance(info.value, ConnectionError)
        assert open_fds() == before

    @pytest.mark.parametrize("status", [b"403 Forbidden", b"502 Bad Gateway", b"401 Unauthorized"])
    def test_refusal_names_status_and_reason(self, fake_proxy, echo, status):
        proxy = fake_proxy(lambda request: b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(twspy.ProxyError) as info:
            twspy.connect(url(echo), proxy="http://127.0.0.1:%d" % proxy.port, handshake_timeout=5)
        code, reason = status.decode().split(" ", 1)
        assert info.value.status == int(code) and info.value.reason == reason
        assert status.decode() in str(info.value)

    def test_request_and_auth_header(self, fake_proxy, echo):
        proxy = fake_proxy()
        roundtrip(twspy.connect(url(echo), proxy="http://al%%20ice:p%%40ss@127.0.0.1:%d" % proxy.port, handshake_timeout=5))
        head = proxy.requests[0].decode()
        target = "127.0.0.1:%d" % echo.address[1]
        assert head.startswith("CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (target, target))
        assert "Proxy-Authorization: Basic YWwgaWNlOnBAc3M=\r\n" in head  # "al ice:p@ss"

    @pytest.mark.parametrize("answer,message", [
        (b"", "closed the connection before answering"),
        (b"HTTP/1.1 200 Conn", "closed the connection in the middle of its answer"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed answer to CONNECT"),
        (b"HTTP/1.1 200 OK\r\n\r\nextra", "unexpected bytes"),
    ])
    def test_broken_proxy(self, fake_proxy, echo, answer, message):
        proxy = fake_proxy(lambda request: answer)
        before = open_fds()
        with pytest.raises(twspy.ProxyError, match=message):
            twspy.connect(url(echo), proxy="http://127.0.0.1:%d" % proxy.port, handshake_timeout=5)
        proxy.wait_idle()
        assert open_fds() == before

    def test_silent_proxy_times_out(self, fake_proxy, echo):
        release = threading.Event()
        proxy = fake_proxy(lambda request: release.wait(10) and b"")
        try:
            with pytest.raises(twspy.ProxyError, match="no answer in time"):
                twspy.connect(url(echo), proxy="http://127.0.0.1:%d" % proxy.port, handshake_timeout=0.3)
        finally:
            release.set()

    def test_unreachable_proxy(self, echo):
        with pytest.raises(ConnectionRefusedError):
            twspy.connect(url(echo), proxy="http://127.0.0.1:%d" % free_port(), handshake_timeout=5)


class TestHTTPSProxy:
    def test_tls_to_the_proxy_then_tls_inside(self, fake_proxy, serve):
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(CERT, KEY)
        server = serve(EchoServer, ssl=server_context, max_size=4 << 20)
        proxy = fake_proxy(context=server_context)
        trust = ssl.create_default_context(cafile=CERT)
        conn = twspy.connect("wss://localhost:%d/" % server.address[1], ssl=trust, proxy_ssl=trust,
                             proxy="https://localhost:%d" % proxy.port, timeout=5, max_size=4 << 20, extensions=[])
        with conn:
            for size in (0, 1, 200000, 1 << 20):
                data = os.urandom(size)
                conn.send(data)
                assert conn.recv(10) == twspy.BinaryMessage(data)
        assert conn.close_code == 1000
        assert proxy.requests[0].startswith(b"CONNECT localhost:%d " % server.address[1])

    def test_untrusted_server_inside_leaks_nothing(self, fake_proxy, serve):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        server = serve(EchoServer, ssl=context)
        proxy = fake_proxy(context=context)
        before = open_fds()
        with pytest.raises(ssl.SSLCertVerificationError):  # the server's certificate, checked inside the tunnel
            twspy.connect("wss://localhost:%d/" % server.address[1], proxy="https://localhost:%d" % proxy.port,
                          proxy_ssl=ssl.create_default_context(cafile=CERT), timeout=5)
        proxy.wait_idle()
        wait_for(lambda: open_fds() == before)  # the tunnel's thread closes its sockets as it ends

    def test_ws_through_https_proxy(self, fake_proxy, echo):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        proxy = fake_proxy(context=context)
        roundtrip(twspy.connect(url(echo), proxy="https://localhost:%d" % proxy.port, handshake_timeout=5,
                                proxy_ssl=ssl.create_default_context(cafile=CERT)))

    def test_untrusted_proxy_certificate(self, fake_proxy, echo):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        proxy = fake_proxy(context=context)
        with pytest.raises(ssl.SSLCertVerificationError):
            twspy.connect(url(echo), proxy="https://localhost:%d" % proxy.port, handshake_timeout=5)


class TestSOCKS:
    @pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
    def test_microsocks_with_user_and_password(self, microsocks, echo, scheme):
        target = "ws://localhost:%d/" % echo.address[1] if scheme == "socks5h" else url(echo)
        roundtrip(twspy.connect(target, proxy="%s://user:s3cret@%s" % (scheme, microsocks), handshake_timeout=5))

    @pytest.mark.parametrize("creds", ["", "user:wrong@"])
    def test_microsocks_wrong_credentials(self, microsocks, echo, creds):
        before = open_fds()
        with pytest.raises(twspy.ProxyError) as info:
            twspy.connect(url(echo), proxy="socks5://%s%s" % (creds, microsocks), handshake_timeout=5)
        assert ("refused the user and password" if creds else "accepts none of our SOCKS5 auth") in str(info.value)
        assert open_fds() == before

    def test_microsocks_target_refused(self, microsocks):
        with pytest.raises(twspy.ProxyError, match=r"SOCKS5 reply [1-5] "):
            twspy.connect("ws://127.0.0.1:%d/" % free_port(), proxy="socks5://user:s3cret@" + microsocks,
                          timeout=5)

    @pytest.mark.parametrize("reply,message", [
        (b"", "closed the connection before answering"),
        (b"\x05", "closed the connection in the middle"),
        (b"HTTP/1.1 400 Bad\r\n\r\n", "malformed SOCKS5 answer"),
        (b"\x05\x00\x05\x00\x00\x09", "malformed SOCKS5 reply \\(address type 9\\)"),
    ])
    def test_broken_socks5_proxy(self, echo, reply, message):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer():
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                conn.recv(100)
                conn.sendall(reply[:2])
                if len(reply) > 2:
                    conn.recv(100)
                    conn.sendall(reply[2:])

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            with pytest.raises(twspy.ProxyError, match=message):
                twspy.connect(url(echo), proxy="socks5://127.0.0.1:%d" % server.getsockname()[1], handshake_timeout=5)
        finally:
            thread.join(5)
            server.close()

    @pytest.mark.parametrize("scheme,tail", [("socks4", b"\x7f\x00\x00\x01me\x00"),
                                             ("socks4a", b"\x00\x00\x00\x01me\x00localhost\x00")])
    def test_socks4_request(self, echo, scheme, tail):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        seen = []

        def answer():
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                seen.append(conn.recv(100))
                conn.sendall(b"\x00\x5b\x00\x00\x00\x00\x00\x00")  # 91: rejected

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            with pytest.raises(twspy.ProxyError, match="SOCKS4 reply 91"):
                twspy.connect("ws://localhost:%d/" % echo.address[1], handshake_timeout=5,
                              proxy="%s://me@127.0.0.1:%d" % (scheme, server.getsockname()[1]))
        finally:
            thread.join(5)
            server.close()
        assert seen[0] == b"\x04\x01" + echo.address[1].to_bytes(2, "big") + tail


class TestEnvironment:
    def test_http_proxy_for_ws_and_no_proxy(self, monkeypatch, fake_proxy, echo):
        proxy = fake_proxy()
        for name in ("https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % proxy.port)
        roundtrip(twspy.connect(url(echo), handshake_timeout=5))
        assert len(proxy.requests) == 1
        roundtrip(twspy.connect(url(echo), handshake_timeout=5, proxy=False))  # never
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        roundtrip(twspy.connect(url(echo), handshake_timeout=5))
        assert len(proxy.requests) == 1

    def test_scheme_mapping(self, monkeypatch):
        for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                     "ALL_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        assert proxy_for(False, "example.com", 80) is None
        monkeypatch.setenv("https_proxy", "http://secure:1")
        monkeypatch.setenv("all_proxy", "socks5h://any:2")
        assert proxy_for(True, "example.com", 443) == "http://secure:1"
        assert proxy_for(False, "example.com", 80) == "socks5h://any:2"
        monkeypatch.setenv("no_proxy", ".example.com,localhost")
        assert proxy_for(True, "www.example.com", 443) is None
        assert proxy_for(False, "other.org", 80) == "socks5h://any:2"


class TestParse:
    def test_parse_proxy(self):
        assert parse_proxy("proxy:3128") == ("http", "proxy", 3128, None)
        assert parse_proxy("socks5h://u:p%40@h") == ("socks5h", "h", 1080, ("u", "p@"))
        assert parse_proxy("https://[::1]").shown == "https://[::1]:443"
        for bad in ("ftp://h:1", "http://:8080", "http://h:99999"):
            with pytest.raises(ValueError):
                parse_proxy(bad)
        with pytest.raises(ValueError):
            twspy.connect("ws://127.0.0.1:1/", proxy="gopher://h")
        with pytest.raises(TypeError):
            twspy.connect("ws://127.0.0.1:1/", proxy="http://h:1", unix_path="/tmp/x")

    def test_open_tunnel_is_public(self, fake_proxy, echo):
        proxy = fake_proxy()
        sock = open_tunnel("127.0.0.1", echo.address[1], "http://127.0.0.1:%d" % proxy.port, timeout=5)
        with sock:
            sock.settimeout(5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not an upgrade: the echo server answers 4xx
            assert sock.recv(12).startswith(b"HTTP/1.1 4")
