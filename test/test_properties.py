"""Property tests (hypothesis): any input either parses or raises twspy's own error, and round trips hold."""

from __future__ import annotations

import os
import socket
import threading
import tracemalloc

import pytest

hypothesis = pytest.importorskip("hypothesis")  # in the test extra; `make test` installs it
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import twspy  # noqa: E402
from twspy.extension import parse_extensions, parse_tokens  # noqa: E402
from twspy.frame import FrameParser, decode_close  # noqa: E402
from twspy.handshake import parse_request, parse_response, read_head, server_handshake  # noqa: E402
from twspy.permessage_deflate import DeflateMessageCodec  # noqa: E402

# Deterministic in the suite; `make fuzz` sets TWSPY_FUZZ_EXAMPLES for a longer, random campaign.
EXAMPLES = int(os.environ.get("TWSPY_FUZZ_EXAMPLES", 0))
FAST = settings(max_examples=EXAMPLES or 300, deadline=None, derandomize=not EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow])
LIMIT = 4096


@FAST
@given(st.binary(max_size=600), st.sampled_from([None, True, False]), st.integers(0, 7))
def test_frame_parser_any_bytes(data, require_mask, rsv):
    parser = FrameParser(max_size=LIMIT, require_mask=require_mask, rsv_allowed=rsv << 4)
    parser.feed(data)
    try:
        for frame in parser:
            assert len(frame.payload) <= LIMIT
    except twspy.ProtocolError as exc:
        assert exc.code in (1002, 1009)


@FAST
@given(st.binary(max_size=64))
def test_frame_parser_never_allocates_announced_length(header):
    # A header may announce 2**63 - 1 bytes: the parser must refuse it, not allocate it.
    tracemalloc.start()
    try:
        parser = FrameParser(max_size=LIMIT)
        parser.feed(b"\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff" + header)
        with pytest.raises(twspy.PayloadTooBig):
            parser.next_frame()
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


@FAST
@given(st.binary(max_size=130))
def test_close_payload_any_bytes(payload):
    try:
        code, reason = decode_close(payload)
    except twspy.ProtocolError as exc:
        assert exc.code in (1002, 1007)
    else:
        assert code == 1005 or twspy.frame.valid_close_code(code)


frames = st.builds(
    lambda opcode, payload, mask, final, rsv: twspy.Frame(
        opcode, payload[:125] if opcode >= 8 else payload, mask=mask, final=final or opcode >= 8,
        rsv1=rsv[0], rsv2=rsv[1], rsv3=rsv[2]),
    st.sampled_from([0, 1, 2, 8, 9, 10]),
    st.one_of(st.binary(max_size=200), st.sampled_from([b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536])),
    st.booleans(), st.booleans(), st.tuples(st.booleans(), st.booleans(), st.booleans()))


@FAST
@given(st.lists(frames, min_size=1, max_size=5), st.integers(1, 50))
def test_pack_parse_round_trip(items, chunk):
    data = b"".join(frame.pack() for frame in items)
    parser = FrameParser(rsv_allowed=0x70)
    parsed = []
    for i in range(0, len(data), chunk):  # fed in arbitrary pieces
        parser.feed(data[i:i + chunk])
        parsed.extend(parser)
    assert parsed == items


@FAST
@given(st.binary(max_size=2000))
def test_http_parsers_any_bytes(data):
    for parse in (parse_request, parse_response):
        try:
            parse(data)
        except twspy.HandshakeError:
            pass


@FAST
@given(st.lists(st.binary(max_size=50), max_size=40))
def test_read_head_any_chunks(chunks):
    pieces = list(chunks)

    def recv(n):
        return pieces.pop(0) if pieces else b""

    try:
        head, rest = read_head(recv, max_size=1024)
        assert head.endswith(b"\r\n\r\n") and len(head) <= 1024
    except (twspy.HandshakeError, ConnectionError):
        pass


header_text = st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=0x7e), max_size=120)


@FAST
@given(header_text)
def test_extension_header_any_text(value):
    try:
        parsed = parse_extensions(value)
    except twspy.NegotiationError:
        return
    assert parse_extensions(twspy.extension.format_extensions(parsed)) == parsed


@FAST
@given(header_text)
def test_token_list_any_text(value):
    try:
        parse_tokens(value)
    except twspy.NegotiationError:
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
                                        "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Origin"]),
                       header_text, max_size=8))
def test_server_handshake_any_headers(fields):
    head = "GET / HTTP/1.1\r\n" + "".join("%s: %s\r\n" % kv for kv in fields.items()) + "\r\n"
    try:
        request = parse_request(head.encode("latin-1"))
        server_handshake(request, protocols=["chat"], extensions=[twspy.DeflateMessage(), twspy.DeflateFrame()])
    except twspy.HandshakeError as exc:
        assert exc.status in (400, 405, 426, 431)


@FAST
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_inflate_any_bytes(chunks):
    codec = DeflateMessageCodec()
    try:
        for i, chunk in enumerate(chunks):
            out = codec.decode_frame_of_message(chunk, 0x40, i == len(chunks) - 1, LIMIT)
            assert len(out) <= LIMIT
    except twspy.ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)
    finally:
        codec.close()


@settings(max_examples=EXAMPLES // 5 or 60, deadline=None, derandomize=not EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_connection_any_bytes(data):
    """A Connection fed arbitrary bytes delivers messages or closes with a code; it never hangs."""
    a, b = socket.socketpair()
    try:
        ws = twspy.websocket(a, max_size=LIMIT)
        ws.server_side = True
        ws._opened(b"", require_mask=True)
        conn = twspy.Connection(ws, close_timeout=0.05)
        b.sendall(data)
        b.shutdown(socket.SHUT_WR)
        try:
            for _ in range(100):
                conn.recv(timeout=1)
        except twspy.ConnectionClosed as exc:
            assert exc.code in (1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                                1014) or 3000 <= exc.code <= 4999
        assert threading.active_count() < 50
    finally:
        a.close()
        b.close()
