"""twspy/mux_frames.py: the encapsulated handshake heads of the mux extension (§5.1, §5.2), bytes only.

The channel-ID, number, control-block and encapsulation codecs are tested byte by byte against
the notes' vectors in test_multiplex.py; this file covers the handshake heads a channel carries.
"""

from __future__ import annotations

import pytest

from twspy.errors import HandshakeError, NegotiationError
from twspy.handshake import Headers
from twspy.mux_frames import (
    DROP_NORMAL,
    AddChannelRequest,
    AddChannelResponse,
    DropChannel,
    accept_head,
    apply_delta,
    check_response,
    decapsulate,
    encode_control_blocks,
    request_head,
    status_head,
)


class TestRequestHead:
    def test_protocols_and_headers(self):
        head = request_head("/chat?room=1", "example.com:8000", None, ["v2.chat", "chat"],
                            [("Cookie", "a=1"), ("X-Trace", "t")])
        assert head == (b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com:8000\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Protocol: v2.chat, chat\r\nCookie: a=1\r\nX-Trace: t\r\n\r\n")

    def test_no_key_upgrade_or_version(self):
        # §5.1: the identity encoding carries only what the logical channel needs.
        head = request_head("/", "h", "", (), [])
        assert head == b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\r\n"  # an empty origin is left out

    @pytest.mark.parametrize("path, host, headers", [
        ("/a\r\nX-Injected: 1", "h", []),
        ("/", "h\nevil", []),
        ("/", "h", [("X-Ok", "v\r\nX-Injected: 1")]),
        ("/", "h", [("X-Bad\r\nName", "v")]),
    ])
    def test_line_breaks_are_refused(self, path, host, headers):
        # A caller's value must never add a header line to the encapsulated request.
        with pytest.raises(ValueError, match="line break"):
            request_head(path, host, None, (), headers)


class TestResponseHeads:
    def test_accept_head(self):
        assert accept_head("chat") == (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                       b"Sec-WebSocket-Protocol: chat\r\n\r\n")

    @pytest.mark.parametrize("status, head", [
        (401, b"HTTP/1.1 401 Unauthorized\r\n\r\n"),
        (503, b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
        (499, b"HTTP/1.1 499 Error\r\n\r\n"),  # not in http.HTTPStatus: a generic phrase
    ])
    def test_status_head(self, status, head):
        assert status_head(status) == head

    def test_heads_travel_in_control_blocks(self):
        payload = encode_control_blocks(AddChannelResponse(3, status_head(503), rejected=True),
                                        DropChannel(3, DROP_NORMAL, "bye"))
        assert decapsulate(payload) == (0, [AddChannelResponse(3, status_head(503), rejected=True),
                                            DropChannel(3, DROP_NORMAL, "bye")])
        request = AddChannelRequest(5, request_head("/", "h", None, (), []))
        assert decapsulate(encode_control_blocks(request)) == (0, [request])


class TestApplyDelta:
    def test_delta_replaces_adds_and_removes(self):
        base = Headers([("Host", "h"), ("Cookie", "a=1"), ("Accept", "x"), ("accept", "y"), ("User-Agent", "u")])
        delta = Headers([("ACCEPT", "z"), ("Cookie", ""), ("X-New", "n")])
        merged = apply_delta(base, delta)
        assert merged.items() == [("Host", "h"), ("User-Agent", "u"), ("ACCEPT", "z"), ("X-New", "n")]
        assert "Cookie" not in merged and merged.get_all("Accept") == ["z"]
        assert base.get_all("accept") == ["x", "y"]  # the base is not changed: the next request reuses it

    def test_empty_delta_is_the_base(self):
        base = Headers([("Host", "h")])
        assert apply_delta(base, Headers()).items() == [("Host", "h")]


def response(head: bytes, rejected: bool = False) -> AddChannelResponse:
    return AddChannelResponse(7, head, rejected=rejected)


class TestCheckResponse:
    def test_accepted(self):
        protocol, headers = check_response(response(accept_head(None)), ())
        assert protocol is None and headers.items() == [("Connection", "Upgrade")]
        protocol, headers = check_response(response(accept_head("chat")), ["chat", "superchat"])
        assert protocol == "chat" and headers["Sec-WebSocket-Protocol"] == "chat"

    def test_rejected_carries_status_headers_and_body(self):
        head = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 5\r\n\r\n"
        with pytest.raises(HandshakeError) as info:
            check_response(response(head + b"no!\r\n", rejected=True), ())
        exc = info.value
        assert (exc.status, exc.headers["WWW-Authenticate"], exc.body) == (401, "Bearer", b"no!\r\n")
        assert "server refused the channel: 401 Unauthorized" in str(exc)
        assert not isinstance(exc, NegotiationError)

    @pytest.mark.parametrize("head, message", [
        (b"HTTP/1.1 200 OK\r\nConnection: Upgrade\r\n\r\n", "channel accepted with status 200"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "lacks Connection: Upgrade"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: keep-alive\r\n\r\n", "lacks Connection: Upgrade"),
    ])
    def test_invalid_acceptance(self, head, message):
        with pytest.raises(HandshakeError, match=message) as info:
            check_response(response(head), ())
        assert info.value.status is None  # not a refusal with a status: the answer itself is wrong

    def test_subprotocol_not_offered(self):
        with pytest.raises(NegotiationError):
            check_response(response(accept_head("chat")), ["superchat"])
        with pytest.raises(NegotiationError):
            check_response(response(accept_head("chat")), ())

    def test_channel_extensions_are_never_accepted(self):
        # §5.2 [twspy]: no per-channel extensions are offered, so any accepted is an error.
        head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Extensions: x\r\n\r\n"
        with pytest.raises(NegotiationError, match="extensions"):
            check_response(response(head), ())
