"""twspy.connect through proxies: real tinyproxy (HTTP CONNECT, Basic auth) and microsocks (SOCKS5
user/password), an https:// proxy written here (TLS inside TLS), broken proxies, the environment."""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

import twspy
from twspy.cli import EchoServer
from twspy.proxies import ProxyURL, open_tunnel, parse_proxy, proxy_for, wrap_tls_inside

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
        roundtrip(twspy.connect(url(echo), proxy="http://al%%20ice:p%%40ss@127.0.0.1:%d" % proxy.port,
                                handshake_timeout=5))
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
                             proxy="https://localhost:%d" % proxy.port, handshake_timeout=5,
                             max_size=4 << 20, extensions=[])
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
                          proxy_ssl=ssl.create_default_context(cafile=CERT), handshake_timeout=5)
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
                          handshake_timeout=5)

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


# -- scripted proxies: every answer a proxy may give, through open_tunnel -----------------------------

class OneShot:
    """A fake proxy on 127.0.0.1:0 for one connection: ``script(conn, self)`` plays its side, reading with
    :meth:`read` (recorded in ``received``). ``rcvbuf`` shrinks its receive buffer (a proxy that stops
    reading fills up fast)."""

    def __init__(self, script, rcvbuf=None):
        self.script = script
        self.received = b""
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by the accepted socket
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        try:
            with conn:
                conn.settimeout(10)
                self.script(conn, self)
        except OSError:
            pass  # the client gave up first: what it did is what the test checks
        finally:
            self.done.set()

    def read(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        self.received += data
        return data

    def read_until_eof(self, conn):
        """What the client still sends before it closes: b"" if it sent nothing more."""
        return self.read(conn, 1 << 20)

    def close(self):
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def one_shot():
    made = []

    def make(script, rcvbuf=None):
        made.append(OneShot(script, rcvbuf))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def reset(conn):
    """Close with a TCP RST (SO_LINGER 0) rather than a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def through(sock, proxy):
    """The tunnel carries bytes both ways, and nothing of the proxy's answer is left in it."""
    with sock:
        sock.settimeout(5)
        sock.sendall(b"to the target")
        assert sock.recv(100) == b"from the target"
        sock.shutdown(socket.SHUT_WR)
        assert proxy.done.wait(5)
    assert proxy.received.endswith(b"to the target")


def socks5_tunnel(greeting_answer, reply, then=b"from the target", request_size=None):
    """A SOCKS5 proxy script: answer the greeting, read the CONNECT request, send ``reply`` + ``then``."""
    def script(conn, proxy):
        proxy.read(conn, 3)
        conn.sendall(greeting_answer)
        proxy.read(conn, request_size or 4)
        if request_size is None:  # the rest of the request: its size depends on the address type
            atyp = proxy.received[-1]
            proxy.read(conn, {1: 4 + 2, 4: 16 + 2}.get(atyp, 0) or proxy.read(conn, 1)[0] + 2)
        conn.sendall(reply + then)
        proxy.read_until_eof(conn)
    return script


class TestScriptedSOCKS5:
    @pytest.mark.parametrize("bound", [
        b"\x01\x7f\x00\x00\x01\x04\x38",                   # IPv4 BND.ADDR, BND.PORT
        b"\x04" + bytes(15) + b"\x01\x04\x38",            # IPv6
        b"\x03\x0bexample.com\x04\x38",                    # a domain name, with its length byte
    ])
    def test_bound_address_is_skipped_exactly(self, one_shot, bound):
        # RFC 1928 §6: the reply ends with BND.ADDR and BND.PORT, whose size depends on ATYP; what
        # follows is the target's first bytes, which must reach the caller (sent in the same packet).
        proxy = one_shot(socks5_tunnel(b"\x05\x00", b"\x05\x00\x00" + bound))
        through(open_tunnel("example.com", 443, "socks5h://127.0.0.1:%d" % proxy.port, timeout=None), proxy)
        assert proxy.received.startswith(b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0bexample.com\x01\xbb")

    def test_ipv6_target_is_sent_as_an_address(self, one_shot):
        proxy = one_shot(socks5_tunnel(b"\x05\x00", b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"))
        through(open_tunnel("::1", 8080, "socks5h://127.0.0.1:%d" % proxy.port, timeout=5), proxy)
        assert proxy.received.startswith(b"\x05\x01\x00\x05\x01\x00\x04" + bytes(15) + b"\x01\x1f\x90")

    @pytest.mark.parametrize("greeting, reply, message, status", [
        (b"\x05\x01", b"", r"chose a SOCKS5 auth method we did not offer \(1\)", None),
        (b"\x05\x00", b"\x04\x00\x00\x01", r"malformed SOCKS5 reply \(version 4\)", None),
        (b"\x05\x00", b"\x05\x02\x00\x01", r"SOCKS5 reply 2 \(connection not allowed by ruleset\)", 2),
        (b"\x05\x00", b"\x05\x42\x00\x01", r"SOCKS5 reply 66 \(unassigned reply code\)", 0x42),
    ])
    def test_refusals_and_malformed_answers(self, one_shot, greeting, reply, message, status):
        proxy = one_shot(socks5_tunnel(greeting, reply, then=b"", request_size=10))
        with pytest.raises(twspy.ProxyError, match=message) as info:
            open_tunnel("127.0.0.1", 80, "socks5://127.0.0.1:%d" % proxy.port, timeout=5)
        assert info.value.status == status and info.value.proxy == "socks5://127.0.0.1:%d" % proxy.port

    def test_credentials_too_long_are_never_sent(self, one_shot):
        seen = []

        def script(conn, proxy):
            proxy.read(conn, 4)
            conn.sendall(b"\x05\x02")  # user/password, please
            seen.append(proxy.read_until_eof(conn))

        proxy = one_shot(script)
        with pytest.raises(twspy.ProxyError, match="limited to 255 bytes") as info:
            open_tunnel("127.0.0.1", 80, "socks5://user:%s@127.0.0.1:%d" % ("p" * 256, proxy.port), timeout=5)
        assert proxy.done.wait(5)
        assert seen == [b""] and proxy.received == b"\x05\x02\x00\x02"  # offered none and user/password
        assert "ppp" not in str(info.value)  # the password is not in the message

    def test_host_name_too_long_for_socks5h(self, one_shot):
        name = ".".join(["a" * 60] * 5)  # 304 bytes: valid labels, too long for the 1-byte length
        proxy = one_shot(socks5_tunnel(b"\x05\x00", b"", then=b"", request_size=0))
        with pytest.raises(twspy.ProxyError, match="host name longer than 255 bytes"):
            open_tunnel(name, 80, "socks5h://127.0.0.1:%d" % proxy.port, timeout=5)
        assert proxy.done.wait(5) and proxy.received == b"\x05\x01\x00"  # no CONNECT request went out


def socks4_answer(reply, then=b""):
    def script(conn, proxy):
        request = b""
        while request.count(b"\x00") < 2 or (request[4:8] == b"\x00\x00\x00\x01" and request.count(b"\x00") < 6):
            chunk = proxy.read(conn, 1)  # byte by byte: the request ends with one or two NULs
            if not chunk:
                return
            request = proxy.received
        conn.sendall(reply + then)
        proxy.read_until_eof(conn)
    return script


class TestScriptedSOCKS4:
    @pytest.mark.parametrize("scheme, host, request_tail", [
        ("socks4", "127.0.0.1", b"\x7f\x00\x00\x01\x00"),
        ("socks4a", "10.1.2.3", b"\x0a\x01\x02\x03\x00"),  # SOCKS4a sends an address as an address
    ])
    def test_granted(self, one_shot, scheme, host, request_tail):
        proxy = one_shot(socks4_answer(b"\x00\x5a" + bytes(6), b"from the target"))
        through(open_tunnel(host, 80, "%s://127.0.0.1:%d" % (scheme, proxy.port), timeout=5), proxy)
        assert proxy.received.startswith(b"\x04\x01\x00\x50" + request_tail)

    @pytest.mark.parametrize("reply, message, status", [
        (b"\x04\x5a" + bytes(6), r"malformed SOCKS4 reply \(version 4\)", None),
        (b"\x00\x5c" + bytes(6), r"SOCKS4 reply 92 \(rejected: no identd on the client\)", 92),
        (b"\x00\x20" + bytes(6), r"SOCKS4 reply 32 \(unknown reply code\)", 32),
    ])
    def test_refused_or_malformed(self, one_shot, reply, message, status):
        proxy = one_shot(socks4_answer(reply))
        with pytest.raises(twspy.ProxyError, match=message) as info:
            open_tunnel("127.0.0.1", 80, "socks4://127.0.0.1:%d" % proxy.port, timeout=5)
        assert info.value.status == status


def http_answer(answer, then=b""):
    """An HTTP proxy script: read the CONNECT head, send ``answer``; then, once the client spoke
    (the server behind a tunnel says nothing first), send ``then``."""
    def script(conn, proxy):
        while b"\r\n\r\n" not in proxy.received:
            if not proxy.read(conn, 1):
                return
        conn.sendall(answer)
        if then:
            proxy.read(conn, 13)
            conn.sendall(then)
        proxy.read_until_eof(conn)
    return script


class TestScriptedHTTPConnect:
    def test_status_without_reason_and_ipv6_target(self, one_shot):
        proxy = one_shot(http_answer(b"HTTP/1.0 200\r\n\r\n", b"from the target"))
        sock = open_tunnel("::1", 8443, "http://127.0.0.1:%d" % proxy.port, timeout=5)
        through(sock, proxy)
        assert proxy.received.startswith(b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n")

    def test_endless_answer_head_is_cut_off(self, one_shot):
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Padding: %s\r\n" % (b"x" * 100) * 300  # 30 KB, no blank line
        proxy = one_shot(http_answer(head))
        with pytest.raises(twspy.ProxyError, match="answer head larger than 16384 bytes"):
            open_tunnel("example.com", 443, "http://127.0.0.1:%d" % proxy.port, timeout=5)

    def test_reset_while_waiting_for_the_answer(self, one_shot):
        def script(conn, proxy):
            while b"\r\n\r\n" not in proxy.received:
                if not proxy.read(conn, 1):
                    return
            reset(conn)

        proxy = one_shot(script)
        with pytest.raises(twspy.ProxyError, match="connection lost: ") as info:
            open_tunnel("example.com", 443, "http://127.0.0.1:%d" % proxy.port, timeout=5)
        assert isinstance(info.value, ConnectionError)

    # A request larger than every buffer between us and a proxy that stops reading: the loopback's
    # send buffer is at most 4 MB (tcp_wmem) and the proxy's receive buffer is made tiny.
    HUGE = ProxyURL("http", "127.0.0.1", 0, ("user", "p" * (12 << 20)))

    def test_proxy_that_stops_reading_times_out_the_send(self, one_shot):
        release = threading.Event()
        proxy = one_shot(lambda conn, proxy: (proxy.read(conn, 10), release.wait(10)), rcvbuf=4096)
        try:
            with pytest.raises(twspy.ProxyError, match="no answer in time"):
                open_tunnel("example.com", 443, self.HUGE._replace(port=proxy.port), timeout=0.5)
        finally:
            release.set()

    def test_reset_while_sending(self, one_shot):
        proxy = one_shot(lambda conn, proxy: (proxy.read(conn, 10), reset(conn)), rcvbuf=4096)
        with pytest.raises(twspy.ProxyError, match="connection lost while sending: "):
            open_tunnel("example.com", 443, self.HUGE._replace(port=proxy.port), timeout=5)


class TestTLSInside:
    """wrap_tls_inside's relay, over a plain socket pair standing in for the TLS socket to the proxy."""

    def test_relays_both_ways_with_backpressure_and_closes_outer(self):
        outer, far = socket.socketpair()  # far: the proxy's side of the outer connection
        inner = wrap_tls_inside(outer)
        data = os.urandom(4 << 20)  # more than the socket buffers hold: the relay must wait for far to read
        received = []
        try:
            inner.settimeout(5)
            far.settimeout(5)
            sender = threading.Thread(target=inner.sendall, args=(data,))
            sender.start()
            # far reads nothing yet: the relay's writes to outer block, then it stops reading ours,
            # and inner's buffer fills up (no longer writable). Only then does far start reading.
            wait_for(lambda: not select.select([], [inner], [], 0)[1])
            got = b""
            while len(got) < len(data):
                chunk = far.recv(1 << 16)
                assert chunk, "the relay closed before passing everything on"
                got += chunk
            sender.join(5)
            assert got == data
            far.sendall(b"answer")
            while len(b"".join(received)) < 6:
                received.append(inner.recv(100))
            assert b"".join(received) == b"answer"
        finally:
            inner.close()  # our end closes: the relay ends and closes outer, which far sees
        assert far.recv(100) == b""
        far.close()

    def test_far_side_closing_ends_the_tunnel(self):
        outer, far = socket.socketpair()
        inner = wrap_tls_inside(outer, name="tunnel-under-test")
        inner.settimeout(5)
        far.sendall(b"last words")
        far.close()
        assert inner.recv(100) == b"last words"
        assert inner.recv(100) == b""  # then EOF, as from a server that closed
        inner.close()


def test_http_connect_to_an_international_name(one_shot):
    # The CONNECT line is ASCII: a Unicode host name goes in its IDNA form (as SOCKS5h sends it).
    proxy = one_shot(http_answer(b"HTTP/1.1 200 OK\r\n\r\n", b"from the target"))
    through(open_tunnel("bücher.example", 443, "http://127.0.0.1:%d" % proxy.port, timeout=5), proxy)
    target = b"xn--bcher-kva.example:443"
    assert proxy.received.startswith(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
