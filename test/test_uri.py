"""twspy.uri: ws:// and wss:// URIs (RFC 6455 §3)."""

from __future__ import annotations

import pytest

import twspy
from twspy.errors import InvalidURI, WebSocketError
from twspy.uri import WebSocketURI, parse_uri


class TestSection3:
    @pytest.mark.parametrize("uri, expected", [
        ("ws://example.com", (False, "example.com", 80, "/", None)),
        ("ws://example.com/", (False, "example.com", 80, "/", None)),
        ("wss://example.com", (True, "example.com", 443, "/", None)),
        ("ws://example.com:8080/chat", (False, "example.com", 8080, "/chat", None)),
        ("wss://example.com:8443/chat", (True, "example.com", 8443, "/chat", None)),
        ("ws://example.com:443/", (False, "example.com", 443, "/", None)),
        ("wss://example.com:80/", (True, "example.com", 80, "/", None)),
        ("ws://h/chat?x=1", (False, "h", 80, "/chat?x=1", None)),
        ("ws://h?x=1", (False, "h", 80, "/?x=1", None)),
        ("ws://h/a/b/?x=1&y=%20", (False, "h", 80, "/a/b/?x=1&y=%20", None)),
        ("ws://h/?", (False, "h", 80, "/", None)),          # empty query: no "?"
        ("ws://h/x;p?q", (False, "h", 80, "/x;p?q", None)),
        ("ws://h/%23x", (False, "h", 80, "/%23x", None)),    # an escaped "#" is fine
        ("ws://h:/", (False, "h", 80, "/", None)),           # empty port: the default
        ("ws://127.0.0.1:9000/", (False, "127.0.0.1", 9000, "/", None)),
        ("ws://[::1]:9000/", (False, "::1", 9000, "/", None)),
        ("wss://[::1]", (True, "::1", 443, "/", None)),
        ("ws://[2001:DB8::1]/x", (False, "2001:db8::1", 80, "/x", None)),
        ("WS://Example.COM/Path", (False, "example.com", 80, "/Path", None)),  # scheme, host: case-insensitive
        ("WsS://h", (True, "h", 443, "/", None)),
        ("ws://h:0/", (False, "h", 0, "/", None)),           # kept as given, not the default
        ("ws://h:65535/", (False, "h", 65535, "/", None)),
    ])
    def test_parse(self, uri, expected):
        parsed = parse_uri(uri)
        assert isinstance(parsed, WebSocketURI)
        assert tuple(parsed) == expected
        assert (parsed.secure, parsed.host, parsed.port, parsed.resource, parsed.user_info) == expected

    def test_non_ascii_and_spaces_are_percent_encoded(self):
        assert parse_uri("ws://h/caf\u00e9?q=\u00e9 x").resource == "/caf%C3%A9?q=%C3%A9%20x"
        assert parse_uri("ws://h/a b").resource == "/a%20b"

    @pytest.mark.parametrize("uri, user_info", [
        ("ws://user:pass@h/", ("user", "pass")),
        ("ws://user@h/", ("user", "")),
        ("ws://:pw@h/", ("", "pw")),
        ("ws://us%40er:p%3Ass%20w@h:81/", ("us@er", "p:ss w")),
        ("wss://u%C3%A9:x@[::1]:9000/", ("u\u00e9", "x")),
    ])
    def test_user_info_percent_decoded(self, uri, user_info):
        parsed = parse_uri(uri)
        assert parsed.user_info == user_info
        assert "@" not in parsed.host_header

    @pytest.mark.parametrize("uri", ["ws://h/#", "ws://h/#frag", "ws://h/chat?x=1#frag", "wss://h#", "ws://h#a"])
    def test_fragment_rejected(self, uri):
        with pytest.raises(InvalidURI) as info:
            parse_uri(uri)
        assert "fragment" in info.value.why

    @pytest.mark.parametrize("uri", [
        "http://h/", "https://h/", "ftp://h/", "wss+x://h/", "h/chat", "//h/chat", "", "ws", "ws:",
    ])
    def test_bad_scheme(self, uri):
        with pytest.raises(InvalidURI) as info:
            parse_uri(uri)
        assert info.value.uri == uri

    @pytest.mark.parametrize("uri", [
        "ws://", "ws:///chat", "ws:/chat", "ws:h", "ws://user@/", "ws://:80/",
        "ws://h:99999/", "ws://h:abc/", "ws://h:-1/", "ws://[::1/", "ws://::1/",
    ])
    def test_bad_host_or_port(self, uri):
        with pytest.raises(InvalidURI):
            parse_uri(uri)

    def test_invalid_uri_is_a_value_error(self):
        with pytest.raises(ValueError) as info:
            parse_uri("http://example.com/")
        exc = info.value
        assert isinstance(exc, InvalidURI) and isinstance(exc, WebSocketError) and isinstance(exc, twspy.InvalidURI)
        assert (exc.uri, exc.why) == ("http://example.com/", "scheme isn't ws or wss")
        assert str(exc) == "http://example.com/ isn't a valid WebSocket URI: scheme isn't ws or wss"


class TestHostHeader:
    @pytest.mark.parametrize("uri, host_header, origin", [
        ("ws://example.com/", "example.com", "http://example.com"),
        ("ws://example.com:80/", "example.com", "http://example.com"),
        ("ws://example.com:443/", "example.com:443", "http://example.com:443"),
        ("wss://example.com:443/", "example.com", "https://example.com"),
        ("wss://example.com:80/", "example.com:80", "https://example.com:80"),
        ("ws://example.com:8080/", "example.com:8080", "http://example.com:8080"),
        ("ws://[::1]/", "[::1]", "http://[::1]"),
        ("ws://[::1]:9000/", "[::1]:9000", "http://[::1]:9000"),
        ("wss://[::1]:443/", "[::1]", "https://[::1]"),
        ("ws://user:pw@h:81/", "h:81", "http://h:81"),
    ])
    def test_host_header_and_origin(self, uri, host_header, origin):
        parsed = parse_uri(uri)
        assert parsed.host_header == host_header
        assert parsed.origin == origin

    def test_constructed_directly(self):
        uri = WebSocketURI(True, "::1", 8443, "/", None)
        assert uri.host_header == "[::1]:8443"
        assert uri.origin == "https://[::1]:8443"
