"""twspy.handshake: the opening handshake (RFC 6455 §1.3, §4) on bytes. No I/O."""

from __future__ import annotations

import base64

import pytest

from twspy.errors import HandshakeError, NegotiationError
from twspy.extension import Extension, ExtensionCodec
from twspy.handshake import (
    GUID,
    MAX_HEADER_SIZE,
    Headers,
    Request,
    Response,
    accept_key,
    build_request,
    build_response,
    check_response,
    error_response,
    head_end,
    make_key,
    parse_request,
    parse_response,
    read_head,
    server_handshake,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# The §1.3 example request, as (name, value) pairs.
EXAMPLE_HEADERS = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Origin", "http://example.com"),
    ("Sec-WebSocket-Protocol", "chat, superchat"),
    ("Sec-WebSocket-Version", "13"),
]
EXAMPLE_REQUEST = (b"GET /chat HTTP/1.1\r\n"
                   b"Host: server.example.com\r\n"
                   b"Upgrade: websocket\r\n"
                   b"Connection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Origin: http://example.com\r\n"
                   b"Sec-WebSocket-Protocol: chat, superchat\r\n"
                   b"Sec-WebSocket-Version: 13\r\n"
                   b"\r\n")


def make_request(drop=(), replace=None, add=(), method="GET", path="/chat", version="HTTP/1.1") -> bytes:
    """The §1.3 request with headers dropped (by name), replaced ({name: value}) or added."""
    replace = replace or {}
    lines = ["%s %s %s" % (method, path, version)]
    for name, value in EXAMPLE_HEADERS:
        if name in drop:
            continue
        lines.append("%s: %s" % (name, replace.get(name, value)))
    lines.extend("%s: %s" % item for item in add)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def handshake(raw: bytes, **options):
    return server_handshake(parse_request(raw), **options)


def refused(raw: bytes, **options) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        handshake(raw, **options)
    return info.value


def ok_response(*extra: str, accept: str = ACCEPT) -> Response:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Accept: %s" % accept] + list(extra)
    return parse_response(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def parse_error_response(raw: bytes) -> Response:
    """Parse the head of an HTTP error reply; its body is set on the Response."""
    end = raw.index(b"\r\n\r\n") + 4
    response = parse_response(raw[:end])
    response.body = raw[end:]
    assert int(response.headers["Content-Length"]) == len(response.body)
    return response


def chunks_recv(*chunks: bytes):
    """A recv(n) callable returning ``chunks`` in order, then b"" (EOF); records the calls."""
    queue = list(chunks)
    calls = []

    def recv(n):
        assert isinstance(n, int) and n > 0
        calls.append(n)
        return queue.pop(0) if queue else b""

    recv.calls = calls
    recv.left = queue
    return recv


# -- §1.3 / §4.2.2 Sec-WebSocket-Accept ----------------------------------------------------

class TestSection4_2_2AcceptKey:
    @pytest.mark.parametrize("key, accept", [
        ("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ("x3JJHMbDL1EzLkh9GBhXDw==", "HSmrc0sMlYUkAGmm5OPpG2HaGWk="),
        ("AQIDBAUGBwgJCgsMDQ4PEA==", "C/0nmHhBztSRGR1CwL6Tf4ZjwpY="),
    ])
    def test_vectors(self, key, accept):
        assert accept_key(key) == accept
        assert accept_key(" %s\t" % key) == accept  # trimmed, as received

    def test_guid(self):
        assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def test_make_key(self):
        keys = {make_key() for _ in range(8)}
        assert len(keys) == 8
        for key in keys:
            assert len(key) == 24 and key.endswith("==")
            assert len(base64.b64decode(key, validate=True)) == 16


# -- reading and parsing heads -------------------------------------------------------------

class TestReadHead:
    def test_stops_at_blank_line_and_keeps_the_rest(self):
        frame = b"\x81\x05Hello"
        recv = chunks_recv(EXAMPLE_REQUEST + frame, b"never read")
        assert read_head(recv) == (EXAMPLE_REQUEST, frame)
        assert len(recv.calls) == 1
        assert recv.left == [b"never read"]

    def test_terminator_split_across_reads(self):
        head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        for cut in range(len(head) - 4, len(head)):
            recv = chunks_recv(head[:cut], head[cut:] + b"\x88\x00", b"never read")
            assert read_head(recv) == (head, b"\x88\x00")
            assert recv.left == [b"never read"]

    def test_one_byte_at_a_time(self):
        recv = chunks_recv(*[bytes([b]) for b in EXAMPLE_REQUEST])
        assert read_head(recv) == (EXAMPLE_REQUEST, b"")
        assert recv.left == []

    @pytest.mark.parametrize("raw", [
        b"GET / HTTP/1.1\nHost: a\n\n",             # bare LF everywhere (a hand-written request)
        b"GET / HTTP/1.1\r\nHost: a\n\n",           # LFs after a CRLF start line
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",         # only the blank line bare
        b"\nGET / HTTP/1.1\r\n",                    # at the very start
    ])
    def test_bare_lf_400_at_once(self, raw):
        # RFC 9112 §2.2: lines end with CRLF. A bare LF used to leave the request unanswered until
        # the handshake timeout (it never ends with CRLF CRLF): refuse it as soon as it is seen.
        recv = chunks_recv(raw, b"never read")
        with pytest.raises(HandshakeError) as info:
            read_head(recv)
        assert info.value.status == 400 and "bare LF" in info.value.message
        assert recv.left == [b"never read"]

    def test_bare_lf_found_across_reads(self):
        recv = chunks_recv(b"GET / HTTP/1.1\r", b"\nHost: a\r\nX: 1\n", b"never read")
        with pytest.raises(HandshakeError):
            read_head(recv)
        assert recv.left == [b"never read"]

    def test_already_received_bytes_come_first(self):
        recv = chunks_recv(b"\r\n\r\nrest")
        assert read_head(recv, received=b"GET / HTTP/1.1\r\nHost: a") == (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"rest")
        recv = chunks_recv(b"never read")
        assert read_head(recv, received=EXAMPLE_REQUEST + b"x") == (EXAMPLE_REQUEST, b"x")
        assert recv.left == [b"never read"]

    def test_head_end_incremental(self):
        buf = bytearray(b"GET / HTTP/1.1\r\nHost: a\r\n")
        assert head_end(buf) == -1
        scanned = len(buf)
        buf += b"\r\nframe"
        assert head_end(buf, scanned) == len(buf) - 5
        with pytest.raises(HandshakeError) as info:
            head_end(b"x" * 20, 0, max_size=10)
        assert info.value.status == 431

    def test_too_large_431(self):
        recv = chunks_recv(*[b"X-Filler: " + b"a" * 1000 + b"\r\n"] * 40)
        with pytest.raises(HandshakeError) as info:
            read_head(recv, max_size=16 * 1024)
        assert info.value.status == 431
        assert len(recv.calls) < 40  # gave up without reading everything

    def test_terminator_beyond_max_size_431(self):
        head = b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100 + b"\r\n\r\n"
        with pytest.raises(HandshakeError) as info:
            read_head(chunks_recv(head), max_size=len(head) - 1)
        assert info.value.status == 431
        assert read_head(chunks_recv(head), max_size=len(head)) == (head, b"")

    def test_default_max_size(self):
        assert MAX_HEADER_SIZE == 16 * 1024
        with pytest.raises(HandshakeError) as info:
            read_head(chunks_recv(b"a" * (MAX_HEADER_SIZE + 1)))
        assert info.value.status == 431

    @pytest.mark.parametrize("chunks", [(), (b"GET / HTTP/1.1\r\n",), (b"GET / HTTP/1.1\r\n\r",)])
    def test_eof_is_connection_error(self, chunks):
        with pytest.raises(ConnectionError):
            read_head(chunks_recv(*chunks))


class TestHeaders:
    def test_multidict(self):
        headers = Headers([("Host", "a"), ("X-Ext", "foo"), ("x-ext", "bar; baz=2")])
        assert headers.get("HOST") == "a" and headers["host"] == "a"
        assert headers.get_all("X-EXT") == ["foo", "bar; baz=2"]
        assert headers.get("x-Ext") == "foo, bar; baz=2"
        assert headers.get("missing") is None and headers.get("missing", "d") == "d"
        assert "x-ext" in headers and "missing" not in headers and 1 not in headers
        assert len(headers) == 3
        assert list(headers) == ["Host", "X-Ext", "x-ext"]
        assert headers.items()[0] == ("Host", "a")
        with pytest.raises(KeyError):
            headers["missing"]
        headers.add("New", "v")
        assert headers["new"] == "v"
        assert repr(Headers([("a", "b")])) == "Headers([('a', 'b')])"


class TestParseRequest:
    def test_example(self):
        request = parse_request(EXAMPLE_REQUEST)
        assert isinstance(request, Request)
        assert (request.method, request.path, request.version) == ("GET", "/chat", "HTTP/1.1")
        assert request.headers.items() == EXAMPLE_HEADERS

    def test_value_whitespace_trimmed_and_empty_value(self):
        request = parse_request(b"GET / HTTP/1.1\r\nHost: \t a b \t\r\nX-Empty:\r\n\r\n")
        assert request.headers["Host"] == "a b"
        assert request.headers["X-Empty"] == ""

    def test_obs_text_allowed(self):
        assert parse_request(b"GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n").headers["X"] == "caf\u00e9"

    @pytest.mark.parametrize("raw", [
        b"\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",        # space before the colon
        b"GET / HTTP/1.1\r\n: a\r\n\r\n",            # empty name
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",   # control character
        b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
    ])
    def test_malformed_400(self, raw):
        with pytest.raises(HandshakeError) as info:
            parse_request(raw)
        assert info.value.status == 400

    def test_too_many_headers_431(self):
        raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(129)) + b"\r\n"
        with pytest.raises(HandshakeError) as info:
            parse_request(raw)
        assert info.value.status == 431
        raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(128)) + b"\r\n"
        assert len(parse_request(raw).headers) == 128


class TestParseResponse:
    def test_101(self):
        response = ok_response("Sec-WebSocket-Protocol: chat")
        assert (response.status, response.reason, response.body) == (101, "Switching Protocols", b"")
        assert response.headers["sec-websocket-accept"] == ACCEPT
        assert response.headers["Sec-WebSocket-Protocol"] == "chat"

    def test_reason_optional_and_free_text(self):
        assert parse_response(b"HTTP/1.1 101\r\n\r\n").reason == ""
        assert parse_response(b"HTTP/1.1 404 Not  Found here\r\n\r\n").reason == "Not  Found here"

    @pytest.mark.parametrize("raw", [
        b"\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"FTP/1.1 101 OK\r\n\r\n",
        b"HTTP/1.1 1O1 OK\r\n\r\n",
        b"HTTP/1.1 1010 OK\r\n\r\n",
        b"HTTP/1.1 10 OK\r\n\r\n",
        b"HTTP/1.1 \xb201 OK\r\n\r\n",    # "\xb2" is a digit to str.isdigit() but not to HTTP
        b"HTTP/1.1 +01 OK\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nbad header\r\n\r\n",
    ])
    def test_malformed(self, raw):
        with pytest.raises(HandshakeError):
            parse_response(raw)


# -- §4.1 the client's request ---------------------------------------------------------------

class TestSection4_1BuildRequest:
    def test_example_bytes(self):
        raw = build_request("server.example.com", "/chat", KEY, origin="http://example.com",
                            protocols=["chat", "superchat"])
        assert raw == (b"GET /chat HTTP/1.1\r\n"
                       b"Host: server.example.com\r\n"
                       b"Upgrade: websocket\r\n"
                       b"Connection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n"
                       b"Origin: http://example.com\r\n"
                       b"Sec-WebSocket-Protocol: chat, superchat\r\n"
                       b"\r\n")
        assert handshake(raw, protocols=["chat"])[1] == "chat"  # a server accepts it

    def test_minimal(self):
        assert build_request("h:8080", "/?x=1", KEY) == (
            b"GET /?x=1 HTTP/1.1\r\nHost: h:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def test_extensions_and_extra_headers(self):
        raw = build_request("h", "/", KEY, extensions=[FakeExt("x-one"), FakeExt("x-two", offer_params=[("a", "1")])],
                            headers=[("Cookie", "a=b"), ("Authorization", "Basic eDp5")])
        assert raw.endswith(b"Sec-WebSocket-Version: 13\r\n"
                            b"Sec-WebSocket-Extensions: x-one, x-two; a=1\r\n"
                            b"Cookie: a=b\r\nAuthorization: Basic eDp5\r\n\r\n")
        assert parse_request(raw).headers["cookie"] == "a=b"

    def test_extension_without_offers_adds_no_header(self):
        class Silent(Extension):
            name = "x-silent"

            def offers(self):
                return []

        assert b"Sec-WebSocket-Extensions" not in build_request("h", "/", KEY, extensions=[Silent()])

    @pytest.mark.parametrize("kwargs", [
        {"headers": [("X-Bad", "a\r\nInjected: 1")]},
        {"headers": [("X-Bad\n", "a")]},
        {"host": "h\r\nInjected: 1"},
        {"path": "/\r\nInjected: 1"},
        {"origin": "http://h\nInjected: 1"},
        {"protocols": ["chat\r\nInjected: 1"]},
    ])
    def test_line_breaks_refused(self, kwargs):
        args = {"host": "h", "path": "/", "key": KEY}
        args.update(kwargs)
        with pytest.raises(ValueError):
            build_request(**args)

    @pytest.mark.parametrize("protocol", ["", "a b", "a,b", "caf\u00e9", "x/y"])
    def test_subprotocols_must_be_tokens(self, protocol):
        with pytest.raises(ValueError):
            build_request("h", "/", KEY, protocols=[protocol])


# -- §4.2.1 / §4.2.2 the server side ---------------------------------------------------------

class TestSection4_2_2Accept:
    def test_example_response_bytes(self):
        response, protocol, codecs = handshake(EXAMPLE_REQUEST, protocols=["chat"])
        assert response == (b"HTTP/1.1 101 Switching Protocols\r\n"
                            b"Upgrade: websocket\r\n"
                            b"Connection: Upgrade\r\n"
                            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            b"Sec-WebSocket-Protocol: chat\r\n"
                            b"\r\n")
        assert (protocol, codecs) == ("chat", [])

    def test_no_protocols_configured(self):
        response, protocol, codecs = handshake(EXAMPLE_REQUEST)
        assert response == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        assert (protocol, codecs) == (None, [])

    def test_response_passes_check_response(self):
        response, _, _ = handshake(EXAMPLE_REQUEST, protocols=["superchat"])
        assert check_response(parse_response(response), KEY, ["chat", "superchat"]) == ("superchat", [])

    @pytest.mark.parametrize("case", [str.lower, str.upper])
    def test_header_names_case_insensitive(self, case):
        lines = ["GET /chat HTTP/1.1"] + ["%s: %s" % (case(n), v) for n, v in EXAMPLE_HEADERS]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
        assert handshake(raw, protocols=["chat"])[1] == "chat"

    @pytest.mark.parametrize("name, value", [
        ("Upgrade", "WebSocket"), ("Upgrade", "WEBSOCKET"), ("Upgrade", "h2c, websocket"),
        ("Connection", "upgrade"), ("Connection", "keep-alive, Upgrade"), ("Connection", "Upgrade,keep-alive"),
        ("Connection", "keep-alive,\tUPGRADE"),
        ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
        ("Sec-WebSocket-Version", " 13"),
    ])
    def test_accepted_variants(self, name, value):
        response = parse_response(handshake(make_request(replace={name: value}))[0])
        key = value if name == "Sec-WebSocket-Key" else KEY
        assert response.status == 101
        assert response.headers["Sec-WebSocket-Accept"] == accept_key(key)

    def test_connection_over_two_lines(self):
        raw = make_request(drop=("Connection",), add=[("Connection", "keep-alive"), ("Connection", "Upgrade")])
        assert parse_response(handshake(raw)[0]).status == 101

    def test_http_1_1(self):
        assert parse_response(handshake(make_request(version="HTTP/1.1"))[0]).status == 101

    def test_unknown_headers_ignored(self):
        raw = make_request(add=[("X-Whatever", "1"), ("Cookie", "a=b")])
        assert parse_response(handshake(raw)[0]).status == 101

    def test_no_origin_is_not_an_error(self):
        assert parse_response(handshake(make_request(drop=("Origin",)))[0]).status == 101


class TestSection4_2_1Refusals:
    @pytest.mark.parametrize("method", ["POST", "HEAD", "get", "PUT"])
    def test_method_405(self, method):
        exc = refused(make_request(method=method))
        assert exc.status == 405
        assert exc.extra_headers == (("Allow", "GET"),)

    def test_405_error_response_bytes(self):
        exc = refused(make_request(method="POST"))
        body = b"method POST is not GET\n"
        assert exc.message == "method POST is not GET"
        assert error_response(exc) == (b"HTTP/1.1 405 Method Not Allowed\r\n"
                                       b"Allow: GET\r\n"
                                       b"Content-Length: %d\r\n"
                                       b"Connection: close\r\n"
                                       b"Content-Type: text/plain; charset=utf-8\r\n"
                                       b"\r\n" % len(body) + body)

    @pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/0.9", "HTTP/1.2", "HTTP/2.0", "HTTP/3.0"])
    def test_other_http_version_505(self, version):
        # The upgrade exists in HTTP/1.1 only: "HTTP/2.0" used to pass a string comparison and get 101.
        exc = refused(make_request(version=version))
        assert exc.status == 505 and version in exc.message

    @pytest.mark.parametrize("version", ["HTTP/1", "HTTP/1.10", "HTTP/x.y", "HTTP/1.1x"])
    def test_malformed_http_version_400(self, version):
        assert refused(make_request(version=version)).status == 400

    @pytest.mark.parametrize("target", ["http://evil.example/x", "ws://127.0.0.1/", "evil.example:80", "*"])
    def test_target_not_a_path_400(self, target):
        # Absolute-form is for proxies (RFC 9112 §3.2.2); a plain server used to answer 101 to it.
        exc = refused(make_request(path=target))
        assert exc.status == 400 and "not a path" in exc.message

    @pytest.mark.parametrize("target", [b"/a\x00b", b"/x\x1bFAKE-LOG-LINE", b"/\x7f", b"/caf\xc3\xa9", b"/a\tb"])
    def test_control_characters_in_target_400(self, target):
        raw = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        with pytest.raises(HandshakeError) as info:
            parse_request(raw)
        assert info.value.status == 400
        assert repr(target.decode("latin-1")) in info.value.message  # shown escaped, never raw
        assert not any(ord(ch) < 0x20 or 0x7f <= ord(ch) < 0xa0 for ch in info.value.message)

    def test_missing_or_repeated_host_400(self):
        assert refused(make_request(drop=("Host",))).status == 400
        assert refused(make_request(add=[("Host", "other")])).status == 400

    @pytest.mark.parametrize("drop, replace", [
        (("Upgrade",), None), ((), {"Upgrade": "h2c"}), ((), {"Upgrade": "websockets"}),
        ((), {"Upgrade": ""}), ((), {"Upgrade": "web socket"}),
    ])
    def test_upgrade_426(self, drop, replace):
        exc = refused(make_request(drop=drop, replace=replace))
        assert exc.status == 426
        assert ("Upgrade", "websocket") in exc.extra_headers

    @pytest.mark.parametrize("drop, replace", [
        (("Connection",), None), ((), {"Connection": "keep-alive"}), ((), {"Connection": "close"}),
        ((), {"Connection": "Upgrades"}), ((), {"Connection": "keep-alive Upgrade"}),
    ])
    def test_connection_426(self, drop, replace):
        exc = refused(make_request(drop=drop, replace=replace))
        assert exc.status == 426
        assert ("Upgrade", "websocket") in exc.extra_headers

    @pytest.mark.parametrize("drop, replace, add", [
        (("Sec-WebSocket-Version",), None, ()),
        ((), {"Sec-WebSocket-Version": "8"}, ()),
        ((), {"Sec-WebSocket-Version": "12"}, ()),
        ((), {"Sec-WebSocket-Version": "13, 8"}, ()),
        ((), {"Sec-WebSocket-Version": "013"}, ()),
        ((), None, [("Sec-WebSocket-Version", "13")]),  # repeated
    ])
    def test_version_426_with_supported_version(self, drop, replace, add):
        exc = refused(make_request(drop=drop, replace=replace, add=add))
        assert exc.status == 426
        assert exc.extra_headers == (("Sec-WebSocket-Version", "13"),)
        response = parse_error_response(error_response(exc))
        assert response.status == 426 and response.reason == "Upgrade Required"
        assert response.headers.get_all("Sec-WebSocket-Version") == ["13"]

    @pytest.mark.parametrize("key", [
        "",
        "not base64!",
        "dGhlIHNhbXBsZSBub25jZQ",          # padding missing
        "dGhlIHNhbXBsZSBub25j",            # 15 bytes
        "dGhlIHNhbXBsZSBub25jZXM=",        # 17 bytes
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # 24 bytes
        "dGhlIHNhbXBs ZSBub25jZQ==",       # inner space
        "\u00e9" * 24,                     # not ASCII
    ])
    def test_bad_key_400(self, key):
        raw = make_request(replace={"Sec-WebSocket-Key": key})
        assert refused(raw).status == 400

    def test_missing_or_repeated_key_400(self):
        assert refused(make_request(drop=("Sec-WebSocket-Key",))).status == 400
        assert refused(make_request(add=[("Sec-WebSocket-Key", KEY)])).status == 400
        assert refused(make_request(add=[("sec-websocket-key", "x3JJHMbDL1EzLkh9GBhXDw==")])).status == 400

    def test_origin_403(self):
        trusted = ["http://example.com", "https://other.example"]
        assert handshake(EXAMPLE_REQUEST, trusted_origins=trusted)[0].startswith(b"HTTP/1.1 101 ")
        raw = make_request(replace={"Origin": "HTTP://EXAMPLE.COM"})
        assert handshake(raw, trusted_origins=trusted)[0].startswith(b"HTTP/1.1 101 ")
        assert refused(make_request(replace={"Origin": "http://evil.example"}), trusted_origins=trusted).status == 403
        assert refused(make_request(drop=("Origin",)), trusted_origins=trusted).status == 403
        # without trusted_origins any origin is fine
        assert handshake(make_request(replace={"Origin": "http://evil.example"}))[0].startswith(b"HTTP/1.1 101 ")

    def test_location_403(self):
        assert handshake(make_request(path="/chat?room=1"), locations=["/chat"])[0].startswith(b"HTTP/1.1 101 ")
        exc = refused(make_request(path="/other"), locations=["/chat"])
        assert exc.status == 403
        assert parse_error_response(error_response(exc)).status == 403

    def test_location_403_message_leaves_the_query_out(self):
        # The refusal is logged: a token in the query must not reach the log (issue 20 item 11).
        exc = refused(make_request(path="/elsewhere?token=s3cret"), locations=["/chat"])
        assert exc.status == 403 and "s3cret" not in str(exc) and "/elsewhere" in str(exc)

    @pytest.mark.parametrize("value", ["chat, a b", "chat;x", "chat, \"q\"", "caf\u00e9"])
    def test_malformed_subprotocol_header_400(self, value):
        exc = refused(make_request(replace={"Sec-WebSocket-Protocol": value}), protocols=["chat"])
        assert exc.status == 400

    @pytest.mark.parametrize("value", ["x-one;", "x-one; a=\"b c\"", "x-one x-two", "=x"])
    def test_malformed_extension_header_400(self, value):
        exc = refused(make_request(add=[("Sec-WebSocket-Extensions", value)]), extensions=[FakeExt("x-one")])
        assert exc.status == 400
        assert type(exc) is HandshakeError

    def test_error_response_for_each_status(self):
        for status, reason in ((400, b"Bad Request"), (403, b"Forbidden"), (426, b"Upgrade Required"),
                               (431, b"Request Header Fields Too Large"), (500, b"Internal Server Error")):
            raw = error_response(HandshakeError("no", status))
            assert raw.startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))
            assert raw.endswith(b"\r\n\r\nno\n")
            assert parse_error_response(raw).body == b"no\n"

    def test_error_response_without_status_is_400(self):
        assert error_response(HandshakeError("x")).startswith(b"HTTP/1.1 400 Bad Request\r\n")


class TestSubprotocolSelection:
    @pytest.mark.parametrize("offered, supported, chosen", [
        ("chat, superchat", ["chat"], "chat"),
        ("chat, superchat", ["superchat"], "superchat"),
        ("chat, superchat", ["superchat", "chat"], "chat"),  # the client's preference wins
        ("chat, superchat", ["other"], None),
        ("chat,,superchat", ["superchat"], "superchat"),
    ])
    def test_default(self, offered, supported, chosen):
        response, protocol, _ = handshake(make_request(replace={"Sec-WebSocket-Protocol": offered}),
                                          protocols=supported)
        assert protocol == chosen
        assert parse_response(response).headers.get_all("Sec-WebSocket-Protocol") == ([chosen] if chosen else [])

    def test_client_offers_none(self):
        response, protocol, _ = handshake(make_request(drop=("Sec-WebSocket-Protocol",)), protocols=["chat"])
        assert protocol is None
        assert b"Sec-WebSocket-Protocol" not in response

    def test_repeated_header_lines_are_one_list(self):
        seen = []

        def select(client, server):
            seen.append((list(client), list(server)))
            return client[-1]

        raw = make_request(drop=("Sec-WebSocket-Protocol",),
                           add=[("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "superchat")])
        _, protocol, _ = handshake(raw, protocols=["chat", "superchat"], select_subprotocol=select)
        assert protocol == "superchat"
        assert seen == [(["chat", "superchat"], ["chat", "superchat"])]

    def test_custom_selector(self):
        _, protocol, _ = handshake(EXAMPLE_REQUEST, protocols=["chat", "superchat"],
                                   select_subprotocol=lambda client, server: "superchat")
        assert protocol == "superchat"
        response, protocol, _ = handshake(EXAMPLE_REQUEST, protocols=["chat"],
                                          select_subprotocol=lambda client, server: None)
        assert protocol is None and b"Sec-WebSocket-Protocol" not in response

    def test_custom_selector_without_protocols_list(self):
        calls = []

        def select(client, server):
            calls.append((client, server))
            return "superchat"

        _, protocol, _ = handshake(EXAMPLE_REQUEST, select_subprotocol=select)
        assert protocol == "superchat"
        assert calls == [(["chat", "superchat"], ())]

    def test_custom_selector_not_called_without_offers(self):
        def select(client, server):
            raise AssertionError("called")

        assert handshake(make_request(drop=("Sec-WebSocket-Protocol",)), protocols=["chat"],
                         select_subprotocol=select)[1] is None

    def test_selector_choosing_an_unoffered_protocol_is_500(self):
        exc = refused(EXAMPLE_REQUEST, protocols=["chat"], select_subprotocol=lambda c, s: "other")
        assert exc.status == 500


class TestServerExtensions:
    def test_negotiated_extension_in_response(self):
        ext = FakeExt("x-one", answer=[("p", "1")])
        raw = make_request(add=[("Sec-WebSocket-Extensions", "x-unknown, x-one; q")])
        response, _, codecs = handshake(raw, extensions=[ext])
        assert response.endswith(b"Sec-WebSocket-Extensions: x-one; p=1\r\n\r\n")
        assert [c.name for c in codecs] == ["x-one"]
        assert ext.seen == [("x-one", [("q", None)])]

    def test_unsupported_extension_is_not_an_error(self):
        raw = make_request(add=[("Sec-WebSocket-Extensions", "x-unknown")])
        response, _, codecs = handshake(raw, extensions=[FakeExt("x-one")])
        assert b"Sec-WebSocket-Extensions" not in response and codecs == []


# -- §4.1 the client checks the response ----------------------------------------------------

class TestSection4_1CheckResponse:
    def test_ok(self):
        assert check_response(ok_response(), KEY) == (None, [])
        assert check_response(ok_response("Sec-WebSocket-Protocol: chat"), KEY, ["chat", "superchat"]) == \
            ("chat", [])

    def test_case_insensitive(self):
        raw = (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nCONNECTION: upgrade\r\n"
               b"sec-websocket-accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo= \r\n\r\n")
        assert check_response(parse_response(raw), KEY) == (None, [])

    @pytest.mark.parametrize("status", [200, 301, 400, 403, 404, 426, 503])
    def test_not_101(self, status):
        raw = b"HTTP/1.1 %d Whatever\r\nX-Reason: nope\r\nContent-Length: 4\r\n\r\n" % status
        response = parse_response(raw)
        response.body = b"nope"
        with pytest.raises(HandshakeError) as info:
            check_response(response, KEY)
        exc = info.value
        assert type(exc) is HandshakeError
        assert exc.status == status
        assert exc.headers["x-reason"] == "nope"
        assert exc.body == b"nope"
        assert str(exc).endswith("(HTTP %d)" % status)

    @pytest.mark.parametrize("lines", [
        ["Connection: Upgrade", "Sec-WebSocket-Accept: " + ACCEPT],
        ["Upgrade: h2c", "Connection: Upgrade", "Sec-WebSocket-Accept: " + ACCEPT],
        ["Upgrade: websocket", "Sec-WebSocket-Accept: " + ACCEPT],
        ["Upgrade: websocket", "Connection: keep-alive", "Sec-WebSocket-Accept: " + ACCEPT],
        ["Upgrade: websocket", "Connection: Upgrade"],
        ["Upgrade: websocket", "Connection: Upgrade",
         "Sec-WebSocket-Accept: " + accept_key("x3JJHMbDL1EzLkh9GBhXDw==")],
        ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: " + ACCEPT.lower()],
        ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: " + ACCEPT,
         "Sec-WebSocket-Accept: " + ACCEPT],
    ], ids=["no-upgrade", "wrong-upgrade", "no-connection", "wrong-connection", "no-accept", "wrong-accept",
            "accept-case", "repeated-accept"])
    def test_bad_upgrade_or_accept(self, lines):
        raw = ("\r\n".join(["HTTP/1.1 101 Switching Protocols"] + lines) + "\r\n\r\n").encode()
        with pytest.raises(HandshakeError) as info:
            check_response(parse_response(raw), KEY)
        assert type(info.value) is HandshakeError
        assert info.value.status is None
        assert info.value.headers is not None

    @pytest.mark.parametrize("extra, offered", [
        (["Sec-WebSocket-Protocol: superchat"], ["chat"]),
        (["Sec-WebSocket-Protocol: chat"], []),
        (["Sec-WebSocket-Protocol: "], ["chat"]),
        (["Sec-WebSocket-Protocol: chat, superchat"], ["chat", "superchat"]),
        (["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: chat"], ["chat"]),
        (["Sec-WebSocket-Protocol: CHAT"], ["chat"]),
    ], ids=["unoffered", "none-offered", "empty", "two-in-one-line", "repeated", "case"])
    def test_bad_subprotocol(self, extra, offered):
        with pytest.raises(NegotiationError):
            check_response(ok_response(*extra), KEY, offered)

    def test_unoffered_extension(self):
        with pytest.raises(NegotiationError):
            check_response(ok_response("Sec-WebSocket-Extensions: x-one"), KEY)
        with pytest.raises(NegotiationError):
            check_response(ok_response("Sec-WebSocket-Extensions: x-two"), KEY, extensions=[FakeExt("x-one")])

    def test_negotiated_extension(self):
        ext = FakeExt("x-one")
        protocol, codecs = check_response(ok_response("Sec-WebSocket-Extensions: x-one; p=1"), KEY,
                                          extensions=[ext])
        assert protocol is None
        assert [(c.name, c.params) for c in codecs] == [("x-one", [("p", "1")])]

    def test_malformed_extension_header(self):
        with pytest.raises(NegotiationError):
            check_response(ok_response("Sec-WebSocket-Extensions: x-one;"), KEY, extensions=[FakeExt("x-one")])


class TestBuildResponse:
    def test_101_has_no_body_headers(self):
        assert build_response(101, [("Upgrade", "websocket")], b"ignored") == \
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"

    def test_error_with_and_without_body(self):
        assert build_response(503, [("Retry-After", "1")], b"busy\n") == (
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 5\r\nConnection: close\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nbusy\n")
        assert build_response(404) == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        assert build_response(599).startswith(b"HTTP/1.1 599 Unknown\r\n")

    def test_callers_content_type_is_not_doubled(self):
        # A process_request answer with its own Content-Type used to go out with two of them.
        answer = build_response(200, [("Content-Type", "application/json")], b"{}")
        assert answer == (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                          b"Connection: close\r\n\r\n{}")

    def test_framing_headers_are_ours(self):
        answer = build_response(200, [("content-length", "99"), ("Connection", "keep-alive")], b"ok")
        assert answer == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n"
                          b"Content-Type: text/plain; charset=utf-8\r\n\r\nok")


# -- fakes -----------------------------------------------------------------------------------

class FakeCodec(ExtensionCodec):
    def __init__(self, name, params):
        self.name = name
        self.params = params


class FakeExt(Extension):
    """Offers ``name`` (with ``offer_params``); accepts any offer, answering ``answer``."""

    def __init__(self, name, offer_params=(), answer=()):
        self.name = name
        self.offer_params = list(offer_params)
        self.answer = list(answer)
        self.seen = []

    def offers(self):
        return [(self.name, self.offer_params)]

    def accept_offer(self, name, params):
        self.seen.append((name, params))
        return self.answer, FakeCodec(name, params)

    def accept_response(self, name, params, offers):
        return FakeCodec(name, params)


class TestStricterRequests:
    """Details of §4.1/§4.2.1 the owner tightened after review."""

    def _request(self, **fields):
        base = {"Host": "h", "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
        base.update(fields)
        head = "GET / HTTP/1.1\r\n" + "".join("%s: %s\r\n" % kv for kv in base.items()) + "\r\n"
        return parse_request(head.encode())

    def test_empty_host_is_400(self):
        with pytest.raises(HandshakeError) as info:
            server_handshake(self._request(Host=""))
        assert info.value.status == 400

    def test_repeated_subprotocol_is_400(self):
        with pytest.raises(HandshakeError) as info:
            server_handshake(self._request(**{"Sec-WebSocket-Protocol": "chat, chat"}), protocols=["chat"])
        assert info.value.status == 400

    def test_client_wants_exactly_websocket(self):
        from twspy.handshake import Headers, Response, check_response
        headers = Headers([("Upgrade", "h2c, websocket"), ("Connection", "Upgrade"),
                           ("Sec-WebSocket-Accept", accept_key("dGhlIHNhbXBsZSBub25jZQ=="))])
        with pytest.raises(HandshakeError):
            check_response(Response(101, "Switching Protocols", headers), "dGhlIHNhbXBsZSBub25jZQ==")
