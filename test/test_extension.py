"""twspy.extension: the Sec-WebSocket-Extensions grammar and negotiation (RFC 6455 §9.1), with fakes.

The real permessage-deflate and deflate-frame extensions are tested in their own files.
"""

from __future__ import annotations

import pytest

from twspy.errors import HandshakeError, NegotiationError
from twspy.extension import (
    Extension,
    ExtensionCodec,
    format_extensions,
    negotiate_client,
    negotiate_server,
    offer_header,
    parse_extensions,
    parse_tokens,
)
from twspy.handshake import Headers


class FakeCodec(ExtensionCodec):
    def __init__(self, ext, name, params):
        self.ext = ext
        self.name = name
        self.params = params
        self.rsv = ext.rsv


class FakeExt(Extension):
    """A configurable extension.

    Server side: accepts an offer unless one of its parameter names is in ``refuse``; the
    answer echoes the offer's parameters. Client side: offers ``offers_list`` and accepts
    any answer unless a parameter is named ``bad``.
    """

    def __init__(self, name, rsv=0, aliases=(), offers_list=None, refuse=(), label=None):
        self.name = name
        self.rsv = rsv
        self.aliases = tuple(aliases)
        self.offers_list = offers_list if offers_list is not None else [(name, [])]
        self.refuse = set(refuse)
        self.label = label or name
        self.offered = []    # server: offers seen
        self.responses = []  # client: (name, params, offers) seen

    def offers(self):
        return list(self.offers_list)

    def accept_offer(self, name, params):
        self.offered.append((name, params))
        if any(p in self.refuse for p, _ in params):
            return None
        return list(params), FakeCodec(self, name, params)

    def accept_response(self, name, params, offers):
        self.responses.append((name, params, offers))
        if any(p == "bad" for p, _ in params):
            raise NegotiationError("%s refuses %r" % (name, params))
        return FakeCodec(self, name, params)


# -- §9.1 grammar ------------------------------------------------------------------------------

class TestSection9_1Grammar:
    @pytest.mark.parametrize("value, expected", [
        ("foo", [("foo", [])]),
        ("foo, bar", [("foo", []), ("bar", [])]),
        ("foo, bar; baz=2", [("foo", []), ("bar", [("baz", "2")])]),
        ("permessage-deflate; client_max_window_bits; server_max_window_bits=10",
         [("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")])]),
        ("a;b;c=d;e", [("a", [("b", None), ("c", "d"), ("e", None)])]),
        ("x-webkit-deflate-frame", [("x-webkit-deflate-frame", [])]),
        ("foo; p=!#$%&'*+-.^_`|~09azAZ", [("foo", [("p", "!#$%&'*+-.^_`|~09azAZ")])]),
        # the same offer twice is two list elements
        ("foo; a=1, foo; a=2", [("foo", [("a", "1")]), ("foo", [("a", "2")])]),
    ])
    def test_tokens(self, value, expected):
        assert parse_extensions(value) == expected

    @pytest.mark.parametrize("value", [
        "  foo ;  a = 1 ,  bar  ", "foo;a=1,bar", "\tfoo\t;\ta\t=\t1\t,\tbar\t", "foo ; a=1 , bar",
    ])
    def test_optional_whitespace(self, value):
        assert parse_extensions(value) == [("foo", [("a", "1")]), ("bar", [])]

    @pytest.mark.parametrize("value, unquoted", [
        ('"10"', "10"),
        ('"abc"', "abc"),
        (r'"1\0"', "10"),          # quoted-pair
        (r'"\a\b\c"', "abc"),
        ('"x-y.z"', "x-y.z"),
    ])
    def test_quoted_values_unquote_to_tokens(self, value, unquoted):
        assert parse_extensions("foo; p=%s" % value) == [("foo", [("p", unquoted)])]
        assert parse_extensions("foo; p = %s , bar" % value) == [("foo", [("p", unquoted)]), ("bar", [])]

    def test_quoted_equals_unquoted(self):
        assert parse_extensions('permessage-deflate; server_max_window_bits="10"') == \
            parse_extensions("permessage-deflate; server_max_window_bits=10")

    @pytest.mark.parametrize("value", ['"a b"', '""', '"a,b"', '"a;b"', '"a=b"', r'"a\"b"', '"caf\u00e9"', '"a\tb"'])
    def test_quoted_values_that_are_not_tokens(self, value):
        with pytest.raises(NegotiationError) as info:
            parse_extensions("foo; p=%s" % value)
        assert info.value.status == 400

    def test_param_without_value_differs_from_empty(self):
        assert parse_extensions("foo; p") == [("foo", [("p", None)])]
        with pytest.raises(NegotiationError):
            parse_extensions("foo; p=")

    @pytest.mark.parametrize("value, expected", [
        ("", []),
        ("   ", []),
        (",", []),
        (", ,\t,", []),
        ("foo, , bar", [("foo", []), ("bar", [])]),
        (",foo", [("foo", [])]),
        ("foo,", [("foo", [])]),
        ("foo ,, bar ,", [("foo", []), ("bar", [])]),
    ])
    def test_empty_list_elements_skipped(self, value, expected):
        assert parse_extensions(value) == expected

    def test_several_header_lines(self):
        headers = Headers([("Sec-WebSocket-Extensions", "foo"), ("sec-websocket-extensions", "bar; baz=2")])
        assert headers.get("Sec-WebSocket-Extensions") == "foo, bar; baz=2"
        assert parse_extensions(headers["Sec-WebSocket-Extensions"]) == [("foo", []), ("bar", [("baz", "2")])]

    @pytest.mark.parametrize("value", [
        "foo;", "foo; ", ";a", "; a=1", "foo bar", "foo; a=b c", "foo;a=", "foo; =1", "=", "foo=1",
        "foo/bar", "foo; a/b", "foo; a=b/c", 'foo; a="b"c', 'foo; a="b', 'foo; a=b"', "foo;;a",
        "foo; a==b", "[foo]", "caf\u00e9", "foo\n", "foo\r\n", "foo\nbar", "foo; a=1\n", "foo\x00",
    ])
    def test_malformed(self, value):
        with pytest.raises(NegotiationError) as info:
            parse_extensions(value)
        assert info.value.status == 400
        assert isinstance(info.value, HandshakeError)


class TestFormatExtensions:
    def test_format(self):
        assert format_extensions([]) == ""
        assert format_extensions([("foo", [])]) == "foo"
        assert format_extensions([("foo", [("a", "1"), ("b", None)]), ("bar", [])]) == "foo; a=1; b, bar"

    @pytest.mark.parametrize("value", [
        "foo",
        "foo; a=1; b, bar",
        "permessage-deflate; client_max_window_bits; server_max_window_bits=10, permessage-deflate",
        "x; a=!#$%&'*+-.^_`|~",
    ])
    def test_round_trip(self, value):
        assert format_extensions(parse_extensions(value)) == value
        items = parse_extensions(value)
        assert parse_extensions(format_extensions(items)) == items

    def test_quoted_input_formats_as_token(self):
        assert format_extensions(parse_extensions('foo; a="10" ,bar')) == "foo; a=10, bar"

    def test_offer_header(self):
        exts = [FakeExt("x-one"), FakeExt("x-two", offers_list=[("x-two", [("a", "1")]), ("x-two", [])])]
        assert offer_header(exts) == "x-one, x-two; a=1, x-two"
        assert offer_header([]) == ""


class TestParseTokens:
    @pytest.mark.parametrize("value, expected", [
        ("chat", ["chat"]),
        ("chat, superchat", ["chat", "superchat"]),
        ("chat,superchat", ["chat", "superchat"]),
        (" chat ,\tsuperchat\t", ["chat", "superchat"]),
        ("a,,b", ["a", "b"]),
        (", a ,", ["a"]),
        ("", []),
        (" , ", []),
        ("v1.chat.example.com", ["v1.chat.example.com"]),
    ])
    def test_valid(self, value, expected):
        assert parse_tokens(value) == expected

    @pytest.mark.parametrize("value", ["a b", "a;b", "a/b", '"a"', "a=b", "caf\u00e9", "a\n", "[a]", "a:b"])
    def test_invalid(self, value):
        with pytest.raises(NegotiationError) as info:
            parse_tokens(value)
        assert info.value.status == 400


# -- §9.1 server side ---------------------------------------------------------------------------

class TestNegotiateServer:
    def test_nothing_to_negotiate(self):
        assert negotiate_server("", [FakeExt("x-one")]) == ("", [])
        assert negotiate_server("x-one", []) == ("", [])
        assert negotiate_server("x-unknown", [FakeExt("x-one")]) == ("", [])

    def test_malformed_header(self):
        with pytest.raises(NegotiationError) as info:
            negotiate_server("x-one;", [FakeExt("x-one")])
        assert info.value.status == 400

    def test_accepts_one_offer(self):
        ext = FakeExt("x-one")
        response, codecs = negotiate_server("x-one; a=1; b", [ext])
        assert response == "x-one; a=1; b"
        assert [(c.ext, c.name, c.params) for c in codecs] == [(ext, "x-one", [("a", "1"), ("b", None)])]
        assert ext.offered == [("x-one", [("a", "1"), ("b", None)])]

    def test_first_acceptable_offer_wins(self):
        ext = FakeExt("x-one", refuse={"bad"})
        response, codecs = negotiate_server("x-one; bad, x-one; a=1, x-one; a=2", [ext])
        assert response == "x-one; a=1"
        assert len(codecs) == 1
        assert ext.offered == [("x-one", [("bad", None)]), ("x-one", [("a", "1")])]  # a=2 never asked

    def test_all_offers_declined(self):
        ext = FakeExt("x-one", refuse={"bad"})
        assert negotiate_server("x-one; bad, x-one; bad=1", [ext]) == ("", [])
        assert len(ext.offered) == 2

    def test_order_follows_the_client(self):
        one, two = FakeExt("x-one"), FakeExt("x-two")
        response, codecs = negotiate_server("x-two, x-one", [one, two])
        assert response == "x-two, x-one"
        assert [c.ext for c in codecs] == [two, one]

    def test_rsv_conflict_first_offer_wins(self):
        one, two, three = FakeExt("x-one", rsv=0x40), FakeExt("x-two", rsv=0x40), FakeExt("x-three", rsv=0x20)
        response, codecs = negotiate_server("x-two, x-one, x-three", [one, two, three])
        assert response == "x-two, x-three"
        assert [c.ext for c in codecs] == [two, three]
        assert one.offered == []  # declined without asking: its RSV bit is taken

    def test_alias(self):
        ext = FakeExt("deflate-frame", aliases=["x-webkit-deflate-frame"])
        response, codecs = negotiate_server("x-webkit-deflate-frame; max_window_bits=10", [ext])
        assert response == "x-webkit-deflate-frame; max_window_bits=10"  # answered under the offered name
        assert codecs[0].name == "x-webkit-deflate-frame"

    def test_declined_offer_goes_to_the_next_extension_with_that_name(self):
        strict = FakeExt("x-one", refuse={"a"}, label="strict")
        lenient = FakeExt("x-one", label="lenient")
        response, codecs = negotiate_server("x-one; a=1", [strict, lenient])
        assert response == "x-one; a=1"
        assert [c.ext.label for c in codecs] == ["lenient"]
        assert strict.offered == lenient.offered == [("x-one", [("a", "1")])]

    def test_one_configuration_per_extension_name_used_once(self):
        first, second = FakeExt("x-one", label="first"), FakeExt("x-one", label="second")
        response, codecs = negotiate_server("x-one; a=1, x-one; a=2", [first, second])
        assert response == "x-one; a=1, x-one; a=2"
        assert [(c.ext.label, c.params) for c in codecs] == [("first", [("a", "1")]), ("second", [("a", "2")])]


# -- §9.1 client side ---------------------------------------------------------------------------

class TestNegotiateClient:
    def test_nothing_accepted(self):
        assert negotiate_client("", [FakeExt("x-one")]) == []

    def test_accepted(self):
        one, two = FakeExt("x-one", rsv=0x40), FakeExt("x-two", rsv=0x20)
        codecs = negotiate_client("x-two; p=1, x-one", [one, two])
        assert [(c.ext, c.params) for c in codecs] == [(two, [("p", "1")]), (one, [])]

    def test_offers_passed_are_those_with_the_answered_name(self):
        ext = FakeExt("deflate-frame", aliases=["x-webkit-deflate-frame"],
                      offers_list=[("deflate-frame", [("a", "1")]), ("x-webkit-deflate-frame", []),
                                   ("deflate-frame", [])])
        negotiate_client("deflate-frame; a=1", [ext])
        assert ext.responses == [("deflate-frame", [("a", "1")], [("deflate-frame", [("a", "1")]),
                                                                  ("deflate-frame", [])])]

    def test_unoffered_extension(self):
        with pytest.raises(NegotiationError):
            negotiate_client("x-two", [FakeExt("x-one")])
        with pytest.raises(NegotiationError):
            negotiate_client("x-one", [])

    def test_alias_that_was_not_offered(self):
        ext = FakeExt("deflate-frame", aliases=["x-webkit-deflate-frame"])  # offers "deflate-frame" only
        with pytest.raises(NegotiationError):
            negotiate_client("x-webkit-deflate-frame", [ext])
        assert ext.responses == []

    def test_accepted_twice(self):
        with pytest.raises(NegotiationError):
            negotiate_client("x-one, x-one", [FakeExt("x-one")])

    def test_shared_rsv_bits(self):
        with pytest.raises(NegotiationError):
            negotiate_client("x-one, x-two", [FakeExt("x-one", rsv=0x40), FakeExt("x-two", rsv=0x40)])

    def test_extension_refuses_the_answer(self):
        with pytest.raises(NegotiationError):
            negotiate_client("x-one; bad", [FakeExt("x-one")])

    def test_malformed(self):
        with pytest.raises(NegotiationError):
            negotiate_client("x-one; a=\"b c\"", [FakeExt("x-one")])


class TestDefaultExtension:
    def test_base_class_contract(self):
        ext = Extension()
        assert ext.names == ("",)
        assert ext.accept_offer("x", []) is None
        with pytest.raises(NegotiationError):
            ext.accept_response("x", [], [])
        assert repr(FakeExt("x")) == "FakeExt()"
        assert FakeExt("a", aliases=["b", "c"]).names == ("a", "b", "c")
        assert FakeExt("a").offers() == [("a", [])]
        assert Extension.offers(FakeExt("a")) == [("a", [])]

    def test_base_codec_is_identity(self):
        codec = ExtensionCodec()
        assert (codec.name, codec.rsv, codec.per_frame) == ("", 0, False)
        assert codec.encode_message(1, b"abc") == (b"abc", 0)
        assert codec.decode_frame_of_message(b"abc", 0, True, None) == b"abc"
        assert codec.encode_frame("frame") == "frame"
        assert codec.decode_frame("frame", None) == "frame"
        assert codec.close() is None
