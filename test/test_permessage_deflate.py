"""Tests for twspy/permessage_deflate.py: RFC 7692 negotiation, vectors, limits. No I/O."""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib

import pytest

from twspy.errors import NegotiationError, PayloadTooBig, ProtocolError
from twspy.extension import negotiate_client, negotiate_server, offer_header, parse_extensions
from twspy.frame import OPCODE_BINARY, OPCODE_TEXT, RSV1, Frame, read_frame
from twspy.permessage_deflate import DeflateMessage, DeflateMessageCodec

from conftest import count_zlib_streams

MiB = 1 << 20
HELLO = bytes.fromhex("f2 48 cd c9 c9 07 00")


def server(header, **config):
    """Run the server side of the negotiation: (response header, codec or None)."""
    response, codecs = negotiate_server(header, [DeflateMessage(**config)])
    assert len(codecs) <= 1
    return response, (codecs[0] if codecs else None)


def client(response, **config):
    """Run the client side against a response header; return the codec."""
    codecs = negotiate_client(response, [DeflateMessage(**config)])
    assert len(codecs) == 1
    return codecs[0]


def settings(codec):
    return (codec.local_max_window_bits, codec.remote_max_window_bits,
            codec.local_no_context_takeover, codec.remote_no_context_takeover)


def decode(codec, payload, compressed=True, max_size=None):
    """Decode a single-frame message."""
    return codec.decode_frame_of_message(payload, RSV1 if compressed else 0, True, max_size)


def pair(**config):
    """A negotiated (client codec, server codec) pair."""
    ext = DeflateMessage(**config)
    response, codecs = negotiate_server(offer_header([ext]), [ext])
    return negotiate_client(response, [ext])[0], codecs[0]


def corpus(size, seed=0):
    """Compressible but varied text of ``size`` bytes."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


class TestConfiguration:
    def test_defaults(self):
        ext = DeflateMessage()
        assert (ext.name, ext.aliases, ext.rsv) == ("permessage-deflate", (), 0x40)
        assert (ext.compress_level, ext.mem_level, ext.threshold) == (6, 5, 32)
        assert "DeflateMessage(" in repr(ext)

    @pytest.mark.parametrize("kwargs", [
        {"server_max_window_bits": 7}, {"server_max_window_bits": 16},
        {"server_max_window_bits": True}, {"client_max_window_bits": 16},
        {"client_max_window_bits": "10"}, {"compress_level": 10}, {"mem_level": 0},
        {"threshold": -1},
    ])
    def test_invalid(self, kwargs):
        with pytest.raises(ValueError):
            DeflateMessage(**kwargs)

    def test_codec_repr(self):
        assert repr(DeflateMessageCodec(local_max_window_bits=9)).startswith(
            "DeflateMessageCodec(local_max_window_bits=9, remote_max_window_bits=15")

    def test_codec_invalid(self):
        with pytest.raises(ValueError):
            DeflateMessageCodec(local_max_window_bits=7)


class TestOffer:
    """RFC 7692 §7.1: the client's offer."""

    @pytest.mark.parametrize("kwargs, header", [
        ({}, "permessage-deflate; client_max_window_bits"),
        ({"client_max_window_bits": True}, "permessage-deflate; client_max_window_bits"),
        ({"client_max_window_bits": False}, "permessage-deflate"),
        ({"client_max_window_bits": 10}, "permessage-deflate; client_max_window_bits=10"),
        ({"server_max_window_bits": 10},
         "permessage-deflate; server_max_window_bits=10; client_max_window_bits"),
        ({"server_no_context_takeover": True, "client_no_context_takeover": True,
          "server_max_window_bits": 12, "client_max_window_bits": 11},
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
         "server_max_window_bits=12; client_max_window_bits=11"),
    ])
    def test_offer(self, kwargs, header):
        assert offer_header([DeflateMessage(**kwargs)]) == header


class TestServerNegotiation:
    """RFC 7692 §5, §7.1: the server picks an offer or declines it, never fails."""

    @pytest.mark.parametrize("offer, config, response, expected", [
        # (local bits, remote bits, local no takeover, remote no takeover)
        ("permessage-deflate", {}, "permessage-deflate", (15, 15, False, False)),
        ("permessage-deflate; client_max_window_bits", {}, "permessage-deflate",
         (15, 15, False, False)),
        ("permessage-deflate; client_max_window_bits=10", {}, "permessage-deflate",
         (15, 15, False, False)),
        ("permessage-deflate; client_max_window_bits", {"client_max_window_bits": 10},
         "permessage-deflate; client_max_window_bits=10", (15, 10, False, False)),
        ("permessage-deflate; client_max_window_bits=12", {"client_max_window_bits": 10},
         "permessage-deflate; client_max_window_bits=10", (15, 10, False, False)),
        ("permessage-deflate; client_max_window_bits=9", {"client_max_window_bits": 10},
         "permessage-deflate; client_max_window_bits=9", (15, 9, False, False)),
        # client_max_window_bits MUST NOT be sent unless offered
        ("permessage-deflate", {"client_max_window_bits": 10}, "permessage-deflate",
         (15, 15, False, False)),
        ("permessage-deflate; server_max_window_bits=10", {},
         "permessage-deflate; server_max_window_bits=10", (10, 15, False, False)),
        ("permessage-deflate; server_max_window_bits=10", {"server_max_window_bits": 9},
         "permessage-deflate; server_max_window_bits=9", (9, 15, False, False)),
        ("permessage-deflate; server_max_window_bits=10", {"server_max_window_bits": 12},
         "permessage-deflate; server_max_window_bits=10", (10, 15, False, False)),
        ("permessage-deflate", {"server_max_window_bits": 11},
         "permessage-deflate; server_max_window_bits=11", (11, 15, False, False)),
        ('permessage-deflate; server_max_window_bits="10"', {},
         "permessage-deflate; server_max_window_bits=10", (10, 15, False, False)),
        ("permessage-deflate; server_max_window_bits=8", {},
         "permessage-deflate; server_max_window_bits=8", (8, 15, False, False)),
        ("permessage-deflate; server_no_context_takeover", {},
         "permessage-deflate; server_no_context_takeover", (15, 15, True, False)),
        ("permessage-deflate", {"server_no_context_takeover": True},
         "permessage-deflate; server_no_context_takeover", (15, 15, True, False)),
        ("permessage-deflate; client_no_context_takeover", {},
         "permessage-deflate; client_no_context_takeover", (15, 15, False, True)),
        ("permessage-deflate", {"client_no_context_takeover": True},
         "permessage-deflate; client_no_context_takeover", (15, 15, False, True)),
        ("permessage-deflate; client_max_window_bits; server_max_window_bits=10", {},
         "permessage-deflate; server_max_window_bits=10", (10, 15, False, False)),
    ])
    def test_accept(self, offer, config, response, expected):
        header, codec = server(offer, **config)
        assert header == response
        assert settings(codec) == expected

    @pytest.mark.parametrize("offer", [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=8.0",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover=true",
        "permessage-deflate; client_no_context_takeover=1",
        "permessage-deflate; foo",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "deflate-frame",
    ])
    def test_decline(self, offer):
        assert server(offer) == ("", None)

    def test_later_offer_accepted(self):
        header, codec = server("permessage-deflate; foo, permessage-deflate; "
                               "server_max_window_bits=16, permessage-deflate; client_no_context_takeover")
        assert header == "permessage-deflate; client_no_context_takeover"
        assert settings(codec) == (15, 15, False, True)

    def test_first_acceptable_offer_only(self):
        header, _ = server("permessage-deflate; server_max_window_bits=10, permessage-deflate")
        assert header == "permessage-deflate; server_max_window_bits=10"

    def test_codec_options(self):
        _, codec = server("permessage-deflate", compress_level=1, mem_level=9, threshold=0)
        assert codec.threshold == 0
        assert codec._deflater.level == 1 and codec._deflater.mem_level == 9


class TwoOffers(DeflateMessage):
    """The RFC 7692 §7.1.3 example client, with two offers."""

    def offers(self):
        return parse_extensions("permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
                                "permessage-deflate; client_max_window_bits")


class TestClientNegotiation:
    """RFC 7692 §5.1, §7.1: the client validates the response, failing with 1010 if needed."""

    PLAIN = {"client_max_window_bits": False}  # offer: permessage-deflate

    @pytest.mark.parametrize("config, response, expected", [
        (PLAIN, "permessage-deflate", (15, 15, False, False)),
        ({}, "permessage-deflate; client_max_window_bits=10", (10, 15, False, False)),
        (PLAIN, "permessage-deflate; server_max_window_bits=9", (15, 9, False, False)),
        ({"server_max_window_bits": 10}, "permessage-deflate; server_max_window_bits=9",
         (15, 9, False, False)),
        ({"server_max_window_bits": 10}, "permessage-deflate; server_max_window_bits=10",
         (15, 10, False, False)),
        (PLAIN, "permessage-deflate; client_no_context_takeover", (15, 15, True, False)),
        (PLAIN, "permessage-deflate; server_no_context_takeover", (15, 15, False, True)),
        ({"server_no_context_takeover": True}, "permessage-deflate; server_no_context_takeover",
         (15, 15, False, True)),
        ({"client_no_context_takeover": True}, "permessage-deflate", (15, 15, True, False)),
        # lenient: a larger client window than we hinted; we keep to our hint
        ({"client_max_window_bits": 10}, "permessage-deflate; client_max_window_bits=12",
         (10, 15, False, False)),
        ({"client_max_window_bits": 12}, "permessage-deflate; client_max_window_bits=10",
         (10, 15, False, False)),
        ({"client_max_window_bits": 10}, "permessage-deflate", (10, 15, False, False)),
        ({"client_max_window_bits": 8}, "permessage-deflate; client_max_window_bits=8",
         (8, 15, False, False)),
        (PLAIN, 'permessage-deflate; server_max_window_bits="12"', (15, 12, False, False)),
        ({}, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
             "server_max_window_bits=11; client_max_window_bits=9", (9, 11, True, True)),
    ])
    def test_accept(self, config, response, expected):
        assert settings(client(response, **config)) == expected

    @pytest.mark.parametrize("config, response, match", [
        (PLAIN, "permessage-deflate; client_max_window_bits=10", "not offered"),
        ({"server_max_window_bits": 10}, "permessage-deflate", "not confirmed"),
        ({"server_max_window_bits": 10}, "permessage-deflate; server_max_window_bits=12", "exceeds"),
        ({"server_no_context_takeover": True}, "permessage-deflate", "not confirmed"),
        (PLAIN, "permessage-deflate; server_max_window_bits=08", "invalid"),
        (PLAIN, "permessage-deflate; server_max_window_bits=16", "invalid"),
        (PLAIN, "permessage-deflate; server_max_window_bits", "needs a value"),
        ({}, "permessage-deflate; client_max_window_bits", "needs a value"),
        (PLAIN, "permessage-deflate; foo", "unknown"),
        (PLAIN, "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
         "duplicate"),
        (PLAIN, "permessage-deflate; client_no_context_takeover=x", "no value"),
        (PLAIN, "permessage-deflate, permessage-deflate", "twice"),
        (PLAIN, "deflate-frame", "not offered"),
    ])
    def test_fail(self, config, response, match):
        with pytest.raises(NegotiationError, match=match):
            client(response, **config)

    def test_rfc_example_two_offers(self):
        first = negotiate_client("permessage-deflate; server_max_window_bits=10", [TwoOffers()])[0]
        assert settings(first) == (15, 10, False, False)
        second = negotiate_client("permessage-deflate", [TwoOffers()])[0]
        assert settings(second) == (15, 15, False, False)
        # the second offer lets the server pick any window
        third = negotiate_client("permessage-deflate; server_max_window_bits=12", [TwoOffers()])[0]
        assert settings(third) == (15, 12, False, False)

    def test_response_matching_no_offer(self):
        class Strict(DeflateMessage):
            def offers(self):
                return parse_extensions("permessage-deflate; server_no_context_takeover, "
                                        "permessage-deflate; server_max_window_bits=10")

        codec = negotiate_client("permessage-deflate; server_no_context_takeover", [Strict()])[0]
        assert settings(codec) == (15, 15, False, True)
        codec = negotiate_client("permessage-deflate; server_max_window_bits=9", [Strict()])[0]
        assert settings(codec) == (15, 9, False, False)
        for response in ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"):
            with pytest.raises(NegotiationError, match="answers none of our offers"):
                negotiate_client(response, [Strict()])

    def test_rfc_example_server_side(self):
        header, codec = server(offer_header([TwoOffers()]))
        assert header == "permessage-deflate; server_max_window_bits=10"

    def test_no_offers(self):
        with pytest.raises(NegotiationError, match="not offered"):
            DeflateMessage().accept_response("permessage-deflate", [], [])

    def test_codec_options(self):
        codec = client("permessage-deflate", compress_level=0, threshold=7)
        assert codec.threshold == 7 and codec._deflater.level == 0


class TestVectors:
    """RFC 7692 §7.2.3 examples, byte for byte (RFC erratum: example 7.2.3.3 has length 11)."""

    def test_hello(self):
        c, _ = pair(threshold=0)
        payload, rsv = c.encode_message(OPCODE_TEXT, b"Hello")
        assert (payload, rsv) == (HELLO, RSV1)
        frame = Frame(OPCODE_TEXT, payload, rsv1=bool(rsv))
        assert frame.pack() == bytes.fromhex("c1 07 f2 48 cd c9 c9 07 00")
        masked = Frame(OPCODE_TEXT, payload, rsv1=True, masking_key=bytes.fromhex("37 fa 21 3d"))
        assert masked.pack() == bytes.fromhex("c1 87 37 fa 21 3d c5 b2 ec f4 fe fd 21")

    def test_decode_hello_frame(self):
        frame, _ = read_frame(bytes.fromhex("c1 87 37 fa 21 3d c5 b2 ec f4 fe fd 21"))
        _, s = pair()
        assert s.decode_frame_of_message(frame.payload, frame.rsv, frame.final, None) == b"Hello"

    def test_fragmented(self):
        data = bytes.fromhex("41 03 f2 48 cd 80 04 c9 c9 07 00")
        first, n = read_frame(data)
        second, _ = read_frame(data[n:])
        assert (first.rsv, first.final, second.rsv, second.opcode) == (RSV1, False, 0, 0)
        c, _ = pair()
        out = c.decode_frame_of_message(first.payload, first.rsv, first.final, None)
        out += c.decode_frame_of_message(second.payload, first.rsv, second.final, None)
        assert out == b"Hello"

    def test_shared_window(self):
        c, s = pair(threshold=0)
        assert c.encode_message(OPCODE_TEXT, b"Hello")[0] == HELLO
        assert c.encode_message(OPCODE_TEXT, b"Hello")[0] == bytes.fromhex("f2 00 11 00 00")
        assert decode(s, HELLO) == b"Hello"
        assert decode(s, bytes.fromhex("f2 00 11 00 00")) == b"Hello"

    def test_uncompressed_messages_leave_window_alone(self):
        c, s = pair(threshold=0)
        assert c.encode_message(OPCODE_TEXT, b"Hello")[0] == HELLO
        assert c.encode_message(OPCODE_TEXT, b"other", compress=False) == (b"other", 0)
        assert c.encode_message(OPCODE_TEXT, b"Hello")[0] == bytes.fromhex("f2 00 11 00 00")
        assert decode(s, HELLO) == b"Hello"
        assert decode(s, b"other", compressed=False) == b"other"
        assert decode(s, bytes.fromhex("f2 00 11 00 00")) == b"Hello"

    @pytest.mark.parametrize("offer_param", ["server_no_context_takeover", "client_no_context_takeover"])
    def test_no_context_takeover(self, offer_param):
        response, (s,) = negotiate_server("permessage-deflate; " + offer_param,
                                          [DeflateMessage(threshold=0)])
        (c,) = negotiate_client(response, [DeflateMessage(threshold=0)])
        sender = s if offer_param.startswith("server") else c
        receiver = c if sender is s else s
        for _ in range(3):
            assert sender.encode_message(OPCODE_TEXT, b"Hello") == (HELLO, RSV1)
            assert decode(receiver, HELLO) == b"Hello"
        assert receiver._inflater._zobj is None  # dropped between messages

    def test_stored_block(self):
        frame, _ = read_frame(bytes.fromhex("c1 0b 00 05 00 fa ff 48 65 6c 6c 6f 00"))
        _, s = pair()
        assert decode(s, frame.payload) == b"Hello"
        c, _ = pair(compress_level=0, threshold=0)
        assert c.encode_message(OPCODE_TEXT, b"Hello")[0] == frame.payload

    def test_bfinal(self):
        _, s = pair()
        assert decode(s, bytes.fromhex("f3 48 cd c9 c9 07 00 00")) == b"Hello"
        # The next message still decodes, back-references into the previous one included.
        assert decode(s, bytes.fromhex("f2 00 11 00 00")) == b"Hello"
        assert decode(s, HELLO) == b"Hello"

    def test_bfinal_without_padding_byte(self):
        _, s = pair()
        assert decode(s, bytes.fromhex("f3 48 cd c9 c9 07 00")) == b"Hello"
        assert decode(s, bytes.fromhex("f2 00 11 00 00")) == b"Hello"

    def test_bfinal_fragmented(self):
        _, s = pair()
        payload = bytes.fromhex("f3 48 cd c9 c9 07 00 00")
        out = b"".join(s.decode_frame_of_message(payload[i:i + 1], RSV1, i == len(payload) - 1, None)
                       for i in range(len(payload)))
        assert out == b"Hello"
        assert decode(s, bytes.fromhex("f2 00 11 00 00")) == b"Hello"

    def test_two_blocks(self):
        _, s = pair()
        assert decode(s, bytes.fromhex("f2 48 05 00 00 00 ff ff ca c9 c9 07 00")) == b"Hello"

    def test_empty_message(self):
        c, s = pair(threshold=0)
        assert c.encode_message(OPCODE_BINARY, b"") == (b"\x00", RSV1)
        assert Frame(OPCODE_TEXT, b"\x00", rsv1=True).pack() == bytes.fromhex("c1 01 00")
        assert decode(s, b"\x00") == b""

    def test_empty_compressed_payload_is_lenient(self):
        # Not valid output of §7.2.1; delivered empty without corrupting the window.
        _, s = pair()
        assert decode(s, HELLO) == b"Hello"
        assert decode(s, b"") == b""
        assert s.decode_frame_of_message(b"", RSV1, False, None) == b""
        assert s.decode_frame_of_message(b"", RSV1, True, None) == b""
        assert decode(s, bytes.fromhex("f2 00 11 00 00")) == b"Hello"

    def test_tail_completes_stored_block(self):
        # A stored block announcing 6 bytes but carrying 2: the appended 00 00 ff ff are
        # its last 4 (§7.2.2 appends them blindly); still bounded by max_size.
        payload = bytes.fromhex("00 06 00 f9 ff 48 65")
        _, s = pair()
        assert decode(s, payload) == b"He\x00\x00\xff\xff"
        _, s = pair()
        with pytest.raises(PayloadTooBig):
            decode(s, payload, max_size=5)

    def test_empty_frames_inside_message(self):
        _, s = pair()
        parts = [b"", HELLO[:2], b"", HELLO[2:], b""]
        out = b"".join(s.decode_frame_of_message(p, RSV1, i == len(parts) - 1, None)
                       for i, p in enumerate(parts))
        assert out == b"Hello"


class TestRoundTrip:
    """RFC 7692 §7.2.1 and §7.2.2 against each other."""

    @pytest.mark.parametrize("size", [0, 1, 100, 70000, MiB])
    def test_sizes(self, size):
        c, s = pair(threshold=0)
        for data in (corpus(size), os.urandom(size)):
            payload, rsv = c.encode_message(OPCODE_BINARY, data)
            assert rsv == RSV1 and payload
            assert decode(s, payload, max_size=size) == data
            payload, rsv = s.encode_message(OPCODE_BINARY, data)
            assert decode(c, payload, max_size=size) == data

    @pytest.mark.parametrize("chunk", [1, 7, 1000, 10000])
    def test_fragmented(self, chunk):
        c, s = pair()
        data = corpus(200000)
        for _ in range(2):
            payload, rsv = c.encode_message(OPCODE_TEXT, data)
            pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)]
            out = [s.decode_frame_of_message(p, rsv, i == len(pieces) - 1, len(data))
                   for i, p in enumerate(pieces)]
            assert b"".join(out) == data
            assert sum(len(o) for o in out[:-1]) > 0  # inflated as frames arrive

    def test_context_takeover(self):
        data = corpus(2000)
        c, s = pair()
        first = c.encode_message(OPCODE_TEXT, data)[0]
        second = c.encode_message(OPCODE_TEXT, data)[0]
        assert len(second) < len(first) // 10
        assert decode(s, first) == decode(s, second) == data

    def test_no_context_takeover(self):
        data = corpus(2000)
        ext = DeflateMessage(client_no_context_takeover=True)
        response, (s,) = negotiate_server(offer_header([ext]), [DeflateMessage()])
        (c,) = negotiate_client(response, [ext])
        first = c.encode_message(OPCODE_TEXT, data)[0]
        assert c.encode_message(OPCODE_TEXT, data)[0] == first
        assert decode(s, first) == decode(s, first) == data

    @pytest.mark.parametrize("bits", range(8, 16))
    def test_window_bits(self, bits):
        # The peer decodes with exactly the agreed window: we never exceed it (8 -> 9 is safe).
        _, s = server("permessage-deflate; server_max_window_bits=%d" % bits, threshold=0)
        assert s.local_max_window_bits == bits
        strict = zlib.decompressobj(-bits)
        for seed in range(4):
            data = corpus(5000, seed) * 2
            payload = s.encode_message(OPCODE_BINARY, data)[0]
            assert strict.decompress(payload + b"\x00\x00\xff\xff") == data

    @pytest.mark.parametrize("bits", [8, 9, 12])
    def test_small_remote_window(self, bits):
        ext = DeflateMessage(client_max_window_bits=bits, threshold=0)
        response, (s,) = negotiate_server(offer_header([ext]), [ext])
        (c,) = negotiate_client(response, [ext])
        assert s.remote_max_window_bits == c.local_max_window_bits == bits
        for seed in range(3):
            data = corpus(3000, seed)
            assert decode(s, c.encode_message(OPCODE_TEXT, data)[0]) == data

    def test_threshold(self):
        c, s = pair()
        assert c.encode_message(OPCODE_TEXT, b"x" * 31) == (b"x" * 31, 0)
        payload, rsv = c.encode_message(OPCODE_TEXT, b"x" * 32)
        assert rsv == RSV1 and len(payload) < 32
        assert decode(s, payload) == b"x" * 32
        assert c.encode_message(OPCODE_TEXT, b"x" * 1000, compress=False) == (b"x" * 1000, 0)

    def test_bytearray_and_memoryview(self):
        c, s = pair(threshold=0)
        data = corpus(1000)
        payload, _ = c.encode_message(OPCODE_BINARY, bytearray(data))
        assert decode(s, memoryview(payload)) == data

    def test_close(self):
        c, s = pair(threshold=0)
        decode(s, c.encode_message(OPCODE_TEXT, b"Hello")[0])
        c.close()
        s.close()
        assert c._deflater._zobj is None and s._inflater._zobj is None


class TestLimits:
    """Decompression bombs (§8) and corrupt data."""

    def test_bomb(self):
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = (bomb.compress(bytes(10 * MiB)) + bomb.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert len(payload) < 20000
        _, s = pair()
        tracemalloc.start()
        try:
            with pytest.raises(PayloadTooBig) as info:
                decode(s, payload, max_size=MiB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.value.code == 1009
        assert peak < 3 * MiB  # refused without inflating the 10 MiB (no wall-clock check: bench/ does speed)

    def test_bomb_across_frames(self):
        c, s = pair()
        payload, rsv = c.encode_message(OPCODE_BINARY, bytes(3 * MiB))
        pieces = [payload[i:i + 100] for i in range(0, len(payload), 100)]
        with pytest.raises(PayloadTooBig):
            for i, piece in enumerate(pieces):
                s.decode_frame_of_message(piece, rsv, i == len(pieces) - 1, MiB)
        assert i < len(pieces) - 1  # refused before the end

    @pytest.mark.parametrize("size", [0, 1, 1000, 65536])
    def test_exact_limit(self, size):
        c, s = pair(threshold=0)
        data = corpus(size)
        assert decode(s, c.encode_message(OPCODE_BINARY, data)[0], max_size=size) == data
        c, s = pair(threshold=0)
        with pytest.raises(PayloadTooBig):
            decode(s, c.encode_message(OPCODE_BINARY, data + b"!")[0], max_size=size)

    def test_limit_counts_whole_message(self):
        c, s = pair()
        payload, rsv = c.encode_message(OPCODE_BINARY, corpus(1000))
        half = len(payload) // 2
        s.decode_frame_of_message(payload[:half], rsv, False, 1000)
        assert s.decode_frame_of_message(payload[half:], rsv, True, 1000)
        # the count starts again with the next message
        payload, rsv = c.encode_message(OPCODE_BINARY, corpus(1000))
        assert len(decode(s, payload, max_size=1000)) == 1000

    def test_uncompressed_message_limit(self):
        _, s = pair()
        assert s.decode_frame_of_message(b"x" * 60, 0, False, 100) == b"x" * 60
        with pytest.raises(PayloadTooBig):
            s.decode_frame_of_message(b"x" * 60, 0, True, 100)

    @pytest.mark.parametrize("payload", [b"\xff\xff", b"\x07", bytes.fromhex("f2 48 cd c9 c9 07 00 07")])
    def test_corrupt(self, payload):
        _, s = pair()
        with pytest.raises(ProtocolError) as info:
            decode(s, payload)
        assert info.value.code == 1007

    def test_corrupt_frame_vector(self):
        frame, _ = read_frame(bytes.fromhex("c1 02 ff ff"))
        _, s = pair()
        with pytest.raises(ProtocolError) as info:
            decode(s, frame.payload)
        assert info.value.code == 1007 and not isinstance(info.value, PayloadTooBig)

    def test_window_violation(self):
        # A peer that agreed to 2**9 bytes but refers 1000 bytes back, into the previous
        # message (within one call zlib lets output already produced serve as window).
        _, s = server("permessage-deflate; client_max_window_bits", client_max_window_bits=9)
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = os.urandom(1000)
        first = (comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
        second = (comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert decode(s, first) == data
        with pytest.raises(ProtocolError) as info:
            decode(s, second)
        assert info.value.code == 1007


class TestEmptyFinalBlocks:
    """Issue 20 item 1: ``03 00`` (a complete, empty BFINAL block) repeated inflates to
    nothing, so max_size never fires; it used to cost a new zlib object and a copy of the
    remaining input per block (1 MiB: ~9 s of CPU). At most one restart per message now."""

    EMPTY_FINAL = b"\x03\x00"

    @pytest.mark.parametrize("side", ["client", "server"])
    def test_one_frame_is_1007(self, monkeypatch, side):
        c, s = pair()
        receiver = s if side == "server" else c
        made = count_zlib_streams(monkeypatch)
        with pytest.raises(ProtocolError) as info:
            decode(receiver, self.EMPTY_FINAL * (MiB // 2), max_size=MiB)
        assert info.value.code == 1007 and "final deflate block" in str(info.value)
        assert len(made) == 2  # the first stream and the one restart allowed

    def test_across_frames_is_1007(self, monkeypatch):
        _, s = pair()
        made = count_zlib_streams(monkeypatch)
        with pytest.raises(ProtocolError) as info:
            for n in range(1000):  # noqa: B007 - read after the loop
                s.decode_frame_of_message(self.EMPTY_FINAL, RSV1, False, MiB)
        assert info.value.code == 1007
        assert n == 2 and len(made) == 2

    def test_one_restart_per_message_is_allowed(self, monkeypatch):
        _, s = pair()
        # An empty final block, then "Hello" as a new stream: lenient, as before.
        assert decode(s, self.EMPTY_FINAL + HELLO) == b"Hello"
        with pytest.raises(ProtocolError):
            decode(s, self.EMPTY_FINAL * 2 + HELLO)

    def test_bfinal_on_every_message_is_not_a_restart(self, monkeypatch):
        # §7.2.3.4: a peer may end every message with a BFINAL block; each message then
        # starts one stream, and the restart budget is per message.
        _, s = pair()
        made = count_zlib_streams(monkeypatch)
        for _ in range(5):
            assert decode(s, bytes.fromhex("f3 48 cd c9 c9 07 00 00")) == b"Hello"
            assert decode(s, bytes.fromhex("f3 48 cd c9 c9 07 00")) == b"Hello"
        # Two streams per pair: the padding byte's empty block starts one, which the
        # unpadded message that follows ends.
        assert len(made) == 10


class TestCompressedLimit:
    """The compressed bytes of one message are capped (``max_compressed_size``, issue 20)."""

    EMPTY_STORED = b"\x00\x00\x00\xff\xff"  # a non-final empty stored block: valid, inflates to nothing

    def test_default_is_twice_max_size(self):
        _, s = pair()
        assert s.max_compressed_size == -1
        frame = self.EMPTY_STORED * 1000
        sent = 0
        with pytest.raises(PayloadTooBig) as info:
            while sent < 2 * (2 * 1000 + 65536):  # bounded: the limit is 2 * 1000 + 64 KiB
                s.decode_frame_of_message(frame, RSV1, False, 1000)
                sent += len(frame)
        assert info.value.code == 1009 and "compressed" in str(info.value)
        assert 2 * 1000 + 65536 - len(frame) <= sent <= 2 * 1000 + 65536

    def test_count_restarts_with_each_message(self):
        _, s = pair(max_compressed_size=len(HELLO))
        for _ in range(3):
            assert decode(s, HELLO) == b"Hello"
        with pytest.raises(PayloadTooBig):
            decode(s, HELLO + self.EMPTY_STORED)

    def test_explicit_and_none(self):
        _, s = pair(max_compressed_size=10)
        assert s.decode_frame_of_message(self.EMPTY_STORED * 2, RSV1, False, None) == b""
        with pytest.raises(PayloadTooBig):
            s.decode_frame_of_message(self.EMPTY_STORED + b"\x00", RSV1, False, None)
        _, s = pair(max_compressed_size=None)
        assert decode(s, self.EMPTY_STORED * 1000 + HELLO, max_size=10) == b"Hello"
        _, s = pair()  # -1 and no max_size: no limit either
        assert decode(s, self.EMPTY_STORED * 1000 + HELLO, max_size=None) == b"Hello"

    @pytest.mark.parametrize("value", [-2, 1.5, True, "1"])
    def test_invalid(self, value):
        with pytest.raises(ValueError):
            DeflateMessage(max_compressed_size=value)
        with pytest.raises(ValueError):
            DeflateMessageCodec(max_compressed_size=value)

    def test_configuration_reaches_both_sides(self):
        c, s = pair(max_compressed_size=123)
        assert c.max_compressed_size == s.max_compressed_size == 123
        assert "max_compressed_size=123" in repr(DeflateMessage(max_compressed_size=123))
