"""twspy/client.py: HTTP auth answers against the RFCs' examples, challenges twspy cannot answer, and
reconnect's edges (a stop set before the first try, a connection the caller left open, a retried
5xx with a stop event, a proxy that drops the tunnel). The rest is in test_client.py and
test_reconnect.py."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

import twspy
from twspy.client import basic_auth, digest_auth
from twspy.errors import HandshakeError, ProxyError
from twspy.handshake import accept_key, parse_request, read_head

TIMEOUT = 5


def digest_fields(value: str) -> dict:
    assert value.startswith("Digest ")
    fields = dict(part.strip().split("=", 1) for part in value[len("Digest "):].split(","))
    return {k: v.strip('"') for k, v in fields.items()}


class FixedNonce(bytes):
    """What os.urandom returns in a test: its hex() is the cnonce of an RFC example."""

    cnonce = ""

    def hex(self, *args):  # type: ignore[override]
        return self.cnonce


@pytest.fixture
def cnonce(monkeypatch):
    def fix(value):
        nonce = FixedNonce(b"")
        nonce.cnonce = value
        monkeypatch.setattr(os, "urandom", lambda n: nonce)
    return fix


class TestDigest:
    def test_rfc2617_example(self, cnonce):
        # RFC 2617 §3.5: MD5, qop=auth, with an opaque value echoed back.
        cnonce("0a4f113b")
        challenge = ('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                     'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
        fields = digest_fields(digest_auth(challenge, "Mufasa", "Circle Of Life", "GET", "/dir/index.html"))
        assert fields == {
            "username": "Mufasa", "realm": "testrealm@host.com", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "uri": "/dir/index.html", "algorithm": "MD5", "qop": "auth", "nc": "00000001", "cnonce": "0a4f113b",
            "response": "6629fae49393a05397450978507c4ef1", "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
        }

    @pytest.mark.parametrize("algorithm, response", [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ])
    def test_rfc7616_examples(self, cnonce, algorithm, response):
        # RFC 7616 §3.9.1, both algorithms.
        cnonce("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
        challenge = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=%s, '
                     'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                     'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"' % algorithm)
        fields = digest_fields(digest_auth(challenge, "Mufasa", "Circle of Life", "GET", "/dir/index.html"))
        assert (fields["response"], fields["algorithm"], fields["qop"]) == (response, algorithm, "auth")
        assert fields["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"

    def test_sess_variant_hashes_the_nonces_into_ha1(self, cnonce):
        # RFC 7616 §3.4.2: for -sess, HA1 = H(H(user:realm:password):nonce:cnonce).
        cnonce("c0ffee")
        value = digest_auth('Digest realm="r", nonce="n", qop=auth, algorithm=SHA-256-sess', "u", "p", "GET", "/x")
        fields = digest_fields(value)

        def h(text):
            return hashlib.sha256(text.encode()).hexdigest()

        ha1 = h("%s:n:c0ffee" % h("u:r:p"))
        assert fields["response"] == h("%s:n:00000001:c0ffee:auth:%s" % (ha1, h("GET:/x")))
        assert fields["algorithm"] == "SHA-256-sess" and "opaque" not in fields

    def test_without_qop_the_rfc2069_form(self):
        # No qop offered: response = H(HA1:nonce:HA2), and no nc/cnonce are sent.
        fields = digest_fields(digest_auth("Digest realm=r, nonce=abc", "u", "p", "GET", "/"))
        md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
        assert fields["response"] == md5("%s:abc:%s" % (md5("u:r:p"), md5("GET:/")))
        assert "qop" not in fields and "cnonce" not in fields and "nc" not in fields

    @pytest.mark.parametrize("algorithm", ["SHA-512-256", "SHA1", "bogus"])
    def test_unsupported_algorithm(self, algorithm):
        with pytest.raises(HandshakeError, match="unsupported Digest algorithm %s" % algorithm) as info:
            digest_auth('Digest realm="r", nonce="n", algorithm=%s' % algorithm, "u", "p", "GET", "/")
        assert info.value.status == 401


def test_basic_rfc7617_example():
    assert basic_auth("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert basic_auth("test", "123\u00a3") == "Basic dGVzdDoxMjPCow=="  # RFC 7617 §2.1: UTF-8


class RawServer:
    """Answers each connection on 127.0.0.1:0 with ``answers[n]`` (bytes; b"" closes once the request's
    head is read, with no answer); for a 101 it accepts the upgrade and answers the client's close.
    Records the requests' heads."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        for answer in self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    head, _ = read_head(conn.recv)
                    if not answer:  # the whole request read: the close is a FIN, not a reset
                        continue
                    request = parse_request(head)
                    self.requests.append(request)
                    if answer == b"101":
                        key = request.headers["Sec-WebSocket-Key"]
                        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                                     % accept_key(key).encode())
                        # The closing handshake: the client's masked close frame (2 + 4 + 2 bytes),
                        # answered with 1000.
                        got = b""
                        while len(got) < 8:
                            chunk = conn.recv(8 - len(got))
                            if not chunk:
                                break
                            got += chunk
                        if got[:1] == b"\x88":
                            conn.sendall(b"\x88\x02\x03\xe8")  # then the server closes the TCP first
                    else:
                        conn.sendall(answer)
                except (OSError, twspy.HandshakeError):
                    pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (Linux)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def raw_server():
    made = []

    def make(answers):
        made.append(RawServer(answers))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_unknown_auth_scheme_is_not_answered(raw_server):
    # Only Basic and Digest are answered: a Bearer/Negotiate challenge raises the 401 at once.
    server = raw_server([b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\n'
                        b'WWW-Authenticate: Bearer realm="x"\r\nContent-Length: 0\r\n\r\n'])
    with pytest.raises(HandshakeError) as info:
        twspy.connect("ws://u:p@127.0.0.1:%d/" % server.port, handshake_timeout=TIMEOUT)
    assert info.value.status == 401
    assert len(server.requests) == 1 and "Authorization" not in server.requests[0].headers


def test_digest_preferred_over_basic(raw_server):
    challenges = (b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="b"\r\n'
                  b'WWW-Authenticate: Digest realm="d", nonce="n", qop="auth"\r\nContent-Length: 0\r\n\r\n')
    server = raw_server([challenges, b"101"])
    with twspy.connect("ws://u:p@127.0.0.1:%d/chat" % server.port, handshake_timeout=TIMEOUT, extensions=[]) as conn:
        assert not conn.closed
    fields = digest_fields(server.requests[1].headers["Authorization"])
    assert (fields["username"], fields["realm"], fields["uri"]) == ("u", "d", "/chat")


class TestReconnect:
    def test_stop_set_before_the_first_try(self, raw_server):
        server = raw_server([b"101"])
        stop = threading.Event()
        stop.set()
        assert list(twspy.reconnect("ws://127.0.0.1:%d/" % server.port, stop=stop, handshake_timeout=TIMEOUT)) == []
        server.close()
        assert server.requests == []  # not even one connection

    def test_retry_after_5xx_then_the_caller_leaves_it_open(self, raw_server):
        server = raw_server([b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", b"101", b"101"])
        stop = threading.Event()
        gen = twspy.reconnect("ws://127.0.0.1:%d/" % server.port, first_delay=0.01, stop=stop,
                              handshake_timeout=TIMEOUT, extensions=[])
        first = next(gen)  # after the 503 and a short wait that the (unset) stop did not end
        assert not first.closed
        second = next(gen)  # the caller asked for another: the open one is closed (1000) first
        assert first.closed and first.close_code == 1000
        stop.set()
        with pytest.raises(StopIteration):
            next(gen)  # the stop ends the iteration; the current connection is closed
        assert second.closed
        assert len(server.requests) == 3

    def test_proxy_dropping_the_tunnel_is_retried(self, raw_server):
        proxy = raw_server([b"", b""])  # closes before answering CONNECT, twice
        gen = twspy.reconnect("ws://127.0.0.1:9/", proxy="http://127.0.0.1:%d" % proxy.port, first_delay=0.01,
                              max_tries=2, handshake_timeout=TIMEOUT)
        with pytest.raises(ProxyError, match="closed the connection before answering") as info:
            next(gen)
        assert info.value.status is None
        proxy.thread.join(TIMEOUT)
        assert not proxy.thread.is_alive()  # both connections were made: the first failure was retried


def test_unexpected_options_are_refused_before_connecting():
    # connect()'s options are explicit keyword-only parameters (issue 11): Python refuses the rest.
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        twspy.connect("ws://127.0.0.1:9/", bogus=1, colour="red", max_size=10)


def test_proxy_true_is_the_environments(raw_server, monkeypatch):
    proxy = raw_server([b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"])
    for name in ("https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % proxy.port)
    with pytest.raises(ProxyError) as info:
        twspy.connect("ws://example.invalid/", proxy=True, handshake_timeout=TIMEOUT)
    assert info.value.status == 407 and proxy.requests[0].method == "CONNECT"
