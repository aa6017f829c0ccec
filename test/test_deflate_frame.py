"""Tests for twspy/deflate_frame.py: the per-frame DEFLATE draft (x-webkit-deflate-frame). No I/O."""

from __future__ import annotations

import os
import tracemalloc
import zlib

import pytest

from twspy.deflate_frame import DeflateFrame, DeflateFrameCodec
from twspy.errors import NegotiationError, PayloadTooBig, ProtocolError
from twspy.extension import negotiate_client, negotiate_server, offer_header
from twspy.frame import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_TEXT,
    ControlFrame,
    Frame,
    read_frame,
)
from twspy.permessage_deflate import DeflateMessage, DeflateMessageCodec

from conftest import count_zlib_streams

MiB = 1 << 20
HELLO_FRAME = bytes.fromhex("c1 07 f2 48 cd c9 c9 07 00")


def frames(hexdata):
    """Parse space-separated hex into frames."""
    data = bytes.fromhex(hexdata)
    result = []
    while data:
        frame, n = read_frame(data)
        result.append(frame)
        data = data[n:]
    return result


def pair(**config):
    ext = DeflateFrame(**config)
    response, codecs = negotiate_server(offer_header([ext]), [ext])
    return negotiate_client(response, [ext])[0], codecs[0]


def settings(codec):
    return codec.name, codec.max_window_bits, codec.no_context_takeover


def text(size, seed=0):
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta"]
    out = bytearray()
    i = seed
    while len(out) < size:
        out += words[(i * 7 + i // 3) % len(words)] + b" %d " % (i % 97)
        i += 1
    return bytes(out[:size])


class TestNegotiation:
    """Draft -06 §5 (as implemented by pywebsocket): parameters constrain the peer."""

    def test_defaults(self):
        ext = DeflateFrame()
        assert (ext.name, ext.aliases, ext.rsv) == ("deflate-frame", ("x-webkit-deflate-frame",), 0x40)
        assert (ext.compress_level, ext.mem_level, ext.threshold) == (6, 5, 32)
        assert "DeflateFrame(" in repr(ext)

    @pytest.mark.parametrize("kwargs", [{"max_window_bits": 7}, {"max_window_bits": 16},
                                        {"threshold": -1}, {"compress_level": 11}])
    def test_invalid_config(self, kwargs):
        with pytest.raises(ValueError):
            DeflateFrame(**kwargs)

    @pytest.mark.parametrize("kwargs, header", [
        ({}, "deflate-frame"),
        ({"max_window_bits": 10}, "deflate-frame; max_window_bits=10"),
        ({"no_context_takeover": True}, "deflate-frame; no_context_takeover"),
        ({"max_window_bits": 8, "no_context_takeover": True},
         "deflate-frame; max_window_bits=8; no_context_takeover"),
    ])
    def test_offer(self, kwargs, header):
        assert offer_header([DeflateFrame(**kwargs)]) == header

    @pytest.mark.parametrize("offer, config, response, expected", [
        ("x-webkit-deflate-frame", {}, "x-webkit-deflate-frame",
         ("x-webkit-deflate-frame", 15, False)),
        ("deflate-frame", {}, "deflate-frame", ("deflate-frame", 15, False)),
        ("x-webkit-deflate-frame; max_window_bits=10", {}, "x-webkit-deflate-frame",
         ("x-webkit-deflate-frame", 10, False)),
        ("deflate-frame; no_context_takeover", {}, "deflate-frame", ("deflate-frame", 15, True)),
        ('deflate-frame; max_window_bits="8"; no_context_takeover', {}, "deflate-frame",
         ("deflate-frame", 8, True)),
        ("x-webkit-deflate-frame", {"no_context_takeover": True},
         "x-webkit-deflate-frame; no_context_takeover", ("x-webkit-deflate-frame", 15, False)),
        ("deflate-frame", {"max_window_bits": 9}, "deflate-frame; max_window_bits=9",
         ("deflate-frame", 15, False)),
        ("deflate-frame; foo=bar; baz", {}, "deflate-frame", ("deflate-frame", 15, False)),
    ])
    def test_server_accepts(self, offer, config, response, expected):
        header, codecs = negotiate_server(offer, [DeflateFrame(**config)])
        assert header == response
        assert settings(codecs[0]) == expected

    @pytest.mark.parametrize("offer", [
        "deflate-frame; max_window_bits=7", "deflate-frame; max_window_bits=16",
        "deflate-frame; max_window_bits=08", "deflate-frame; max_window_bits",
        "deflate-frame; no_context_takeover=1", "deflate-frame; no_context_takeover; no_context_takeover",
        "permessage-deflate",
    ])
    def test_server_declines(self, offer):
        assert negotiate_server(offer, [DeflateFrame()]) == ("", [])

    def test_server_takes_later_valid_offer(self):
        header, codecs = negotiate_server("x-webkit-deflate-frame; max_window_bits=99, deflate-frame",
                                          [DeflateFrame()])
        assert header == "deflate-frame"

    @pytest.mark.parametrize("response, expected", [
        ("deflate-frame", ("deflate-frame", 15, False)),
        ("deflate-frame; max_window_bits=11", ("deflate-frame", 11, False)),
        ("deflate-frame; no_context_takeover", ("deflate-frame", 15, True)),
        ("deflate-frame; unknown", ("deflate-frame", 15, False)),
    ])
    def test_client_accepts(self, response, expected):
        assert settings(negotiate_client(response, [DeflateFrame()])[0]) == expected

    @pytest.mark.parametrize("response, match", [
        ("x-webkit-deflate-frame", "not offered"),  # a server must echo the offered name
        ("deflate-frame; max_window_bits=16", "invalid"),
        ("deflate-frame; max_window_bits", "invalid"),
        ("deflate-frame; no_context_takeover=yes", "no value"),
        ("deflate-frame; max_window_bits=9; max_window_bits=9", "duplicate"),
        ("deflate-frame, deflate-frame", "twice"),
    ])
    def test_client_fails(self, response, match):
        with pytest.raises(NegotiationError, match=match):
            negotiate_client(response, [DeflateFrame()])

    def test_no_offers(self):
        with pytest.raises(NegotiationError, match="not offered"):
            DeflateFrame().accept_response("x-webkit-deflate-frame", [], [])


class TestRSV1Conflict:
    """Both extensions use RSV1: at most one is accepted."""

    def test_server_accepts_one(self):
        exts = [DeflateMessage(), DeflateFrame()]
        header, codecs = negotiate_server("permessage-deflate, x-webkit-deflate-frame", exts)
        assert header == "permessage-deflate"
        assert [type(c) for c in codecs] == [DeflateMessageCodec]
        header, codecs = negotiate_server("x-webkit-deflate-frame, permessage-deflate", exts)
        assert header == "x-webkit-deflate-frame"
        assert [type(c) for c in codecs] == [DeflateFrameCodec]

    def test_server_falls_back(self):
        header, _ = negotiate_server("permessage-deflate; foo, x-webkit-deflate-frame",
                                     [DeflateMessage(), DeflateFrame()])
        assert header == "x-webkit-deflate-frame"

    def test_client_refuses_both(self):
        with pytest.raises(NegotiationError, match="RSV"):
            negotiate_client("permessage-deflate, deflate-frame", [DeflateMessage(), DeflateFrame()])


class TestVectors:
    """deflate-frame.md §6, byte for byte."""

    def test_hello(self):
        c, s = pair(threshold=0)
        assert s.encode_frame(Frame(OPCODE_TEXT, b"Hello")).pack() == HELLO_FRAME
        assert s.encode_frame(Frame(OPCODE_TEXT, b"Hello")).pack() == bytes.fromhex("c1 05 f2 00 11 00 00")
        for frame in frames("c1 07 f2 48 cd c9 c9 07 00 c1 05 f2 00 11 00 00"):
            assert c.decode_frame(frame, None) == Frame(OPCODE_TEXT, b"Hello")

    def test_masked(self):
        c, s = pair(threshold=0)
        frame = c.encode_frame(Frame(OPCODE_TEXT, b"Hello", masking_key=bytes.fromhex("37 fa 21 3d")))
        assert frame.pack() == bytes.fromhex("c1 87 37 fa 21 3d c5 b2 ec f4 fe fd 21")
        (parsed,) = frames(frame.pack().hex())
        decoded = s.decode_frame(parsed, None)
        assert (decoded.payload, decoded.rsv1, decoded.mask) == (b"Hello", False, True)

    def test_no_context_takeover(self):
        header, (s,) = negotiate_server("x-webkit-deflate-frame; no_context_takeover",
                                        [DeflateFrame(threshold=0)])
        for _ in range(3):
            assert s.encode_frame(Frame(OPCODE_TEXT, b"Hello")).pack() == HELLO_FRAME
        assert s._deflater._zobj is None

    def test_client_no_context_takeover(self):
        (c,) = negotiate_client("deflate-frame; no_context_takeover", [DeflateFrame(threshold=0)])
        for _ in range(2):
            assert c.encode_frame(Frame(OPCODE_TEXT, b"Hello")).payload == HELLO_FRAME[2:]

    def test_fragmented(self):
        c, s = pair(threshold=0)
        first = s.encode_frame(Frame(OPCODE_TEXT, b"Hel", final=False))
        second = s.encode_frame(Frame(OPCODE_CONTINUATION, b"lo"))
        assert first.pack() + second.pack() == bytes.fromhex("41 05 f2 48 cd 01 00 c0 04 ca c9 07 00")
        a, b = frames("41 05 f2 48 cd 01 00 c0 04 ca c9 07 00")
        assert c.decode_frame(a, None) == Frame(OPCODE_TEXT, b"Hel", final=False)
        assert c.decode_frame(b, None) == Frame(OPCODE_CONTINUATION, b"lo")

    def test_mixed_compressed_and_plain(self):
        c, _ = pair()
        a, b = frames("c1 07 f2 48 cd c9 c9 07 00 81 05 48 65 6c 6c 6f")
        assert c.decode_frame(a, None) == Frame(OPCODE_TEXT, b"Hello")
        assert c.decode_frame(b, None) is b
        # the plain frame didn't touch the window: back-reference to the first frame
        (third,) = frames("c1 05 f2 00 11 00 00")
        assert c.decode_frame(third, None).payload == b"Hello"

    def test_mixed_fragments(self):
        # One message, RSV1 on the first and last frames only: each frame decides (§3).
        c, s = pair(threshold=0)
        sent = [s.encode_frame(Frame(OPCODE_TEXT, b"Hello ", final=False)),
                Frame(OPCODE_CONTINUATION, b"plain ", final=False),
                s.encode_frame(Frame(OPCODE_CONTINUATION, b"Hello"))]
        assert [f.rsv1 for f in sent] == [True, False, True]
        wire = frames("".join(f.pack().hex() for f in sent))
        got = [c.decode_frame(f, None) for f in wire]
        assert b"".join(f.payload for f in got) == b"Hello plain Hello"
        assert not any(f.rsv1 for f in got)

    def test_empty_frame(self):
        c, s = pair(threshold=0)
        assert s.encode_frame(Frame(OPCODE_TEXT, b"")).pack() == bytes.fromhex("c1 01 00")
        (frame,) = frames("c1 01 00")
        assert c.decode_frame(frame, None) == Frame(OPCODE_TEXT, b"")

    def test_empty_compressed_payload_is_lenient(self):
        c, _ = pair()
        a, empty, b = frames("c1 07 f2 48 cd c9 c9 07 00 c1 00 c1 05 f2 00 11 00 00")
        assert c.decode_frame(a, None).payload == b"Hello"
        assert c.decode_frame(empty, None) == Frame(OPCODE_TEXT, b"")
        assert c.decode_frame(b, None).payload == b"Hello"

    def test_tail_completes_stored_block(self):
        c, _ = pair()
        frame = Frame(OPCODE_BINARY, bytes.fromhex("00 06 00 f9 ff 48 65"), rsv1=True)
        assert c.decode_frame(frame, None).payload == b"He\x00\x00\xff\xff"

    def test_bfinal(self):
        c, _ = pair()
        frame = Frame(OPCODE_TEXT, bytes.fromhex("f3 48 cd c9 c9 07 00 00"), rsv1=True)
        assert c.decode_frame(frame, None).payload == b"Hello"
        (after,) = frames("c1 05 f2 00 11 00 00")
        assert c.decode_frame(after, None).payload == b"Hello"


class TestCodec:
    def test_control_frames_untouched(self):
        c, s = pair(threshold=0)
        ping = ControlFrame(OPCODE_PING, b"x" * 100)
        assert s.encode_frame(ping) is ping
        assert c.decode_frame(ping, None) is ping

    @pytest.mark.parametrize("opcode", [OPCODE_PING, OPCODE_CLOSE])
    def test_compressed_control_frame(self, opcode):
        c, _ = pair()
        with pytest.raises(ProtocolError) as info:
            c.decode_frame(ControlFrame(opcode, b"\x00", rsv1=True), None)
        assert info.value.code == 1002

    def test_threshold(self):
        _, s = pair()
        small = Frame(OPCODE_TEXT, b"x" * 31)
        assert s.encode_frame(small) is small
        assert s.encode_frame(Frame(OPCODE_TEXT, b"x" * 32)).rsv1

    @pytest.mark.parametrize("size", [0, 1, 1000, MiB])
    def test_round_trip(self, size):
        c, s = pair(threshold=0)
        for data in (text(size), os.urandom(size)):
            sent = c.encode_frame(Frame(OPCODE_BINARY, data, mask=True))
            assert sent.rsv1 and sent.mask and sent.payload
            (wire,) = frames(sent.pack().hex())
            assert s.decode_frame(wire, size).payload == data

    def test_fragmented_message(self):
        c, s = pair(threshold=0)
        data = text(300000)
        message = Frame(OPCODE_TEXT, data).fragment(7000)
        for _ in range(2):  # second time with context taken over
            sent = [c.encode_frame(f) for f in message]
            assert all(f.rsv1 for f in sent) and sent[1].opcode == OPCODE_CONTINUATION
            got = [s.decode_frame(f, len(data)) for f in sent]
            assert b"".join(f.payload for f in got) == data
            assert [(f.opcode, f.final) for f in got] == [(f.opcode, f.final) for f in message]

    def test_context_takeover(self):
        c, s = pair(threshold=0)
        data = text(3000)
        first = c.encode_frame(Frame(OPCODE_BINARY, data)).payload
        second = c.encode_frame(Frame(OPCODE_BINARY, data)).payload
        assert len(second) < len(first) // 10
        (n,) = negotiate_client("deflate-frame; no_context_takeover", [DeflateFrame(threshold=0)])
        assert n.encode_frame(Frame(OPCODE_BINARY, data)).payload == \
            n.encode_frame(Frame(OPCODE_BINARY, data)).payload

    @pytest.mark.parametrize("bits", range(8, 16))
    def test_window_bits(self, bits):
        _, (s,) = negotiate_server("deflate-frame; max_window_bits=%d" % bits, [DeflateFrame(threshold=0)])
        strict = zlib.decompressobj(-bits)
        for seed in range(3):
            payload = s.encode_frame(Frame(OPCODE_BINARY, text(4000, seed))).payload
            assert strict.decompress(payload + b"\x00\x00\xff\xff") == text(4000, seed)

    def test_close(self):
        c, s = pair(threshold=0)
        s.decode_frame(c.encode_frame(Frame(OPCODE_TEXT, b"Hello")), None)
        c.close()
        s.close()
        assert c._deflater._zobj is None and s._inflater._zobj is None

    def test_codec_repr(self):
        assert "x-webkit-deflate-frame" in repr(DeflateFrameCodec("x-webkit-deflate-frame"))


class TestLimits:
    def test_bomb(self):
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = (comp.compress(bytes(10 * MiB)) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
        frame = Frame(OPCODE_BINARY, payload, rsv1=True)
        c, _ = pair()
        tracemalloc.start()
        try:
            with pytest.raises(PayloadTooBig) as info:
                c.decode_frame(frame, MiB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.value.code == 1009
        assert peak < 3 * MiB  # refused without inflating the 10 MiB (no wall-clock check: bench/ does speed)

    def test_limit_is_per_message(self):
        c, s = pair(threshold=0)
        parts = [c.encode_frame(f) for f in Frame(OPCODE_BINARY, bytes(3000)).fragment(1000)]
        assert s.decode_frame(parts[0], 2500).payload == bytes(1000)
        assert s.decode_frame(parts[1], 2500).payload == bytes(1000)
        with pytest.raises(PayloadTooBig):
            s.decode_frame(parts[2], 2500)

    def test_limit_counts_plain_frames(self):
        c, _ = pair()
        first = Frame(OPCODE_BINARY, b"x" * 60, final=False)
        assert c.decode_frame(first, 100) is first
        with pytest.raises(PayloadTooBig):
            c.decode_frame(Frame(OPCODE_CONTINUATION, b"x" * 60), 100)

    def test_limit_resets_after_final(self):
        c, s = pair(threshold=0)
        for _ in range(3):
            frame = c.encode_frame(Frame(OPCODE_BINARY, bytes(1000)))
            assert s.decode_frame(frame, 1000).payload == bytes(1000)

    @pytest.mark.parametrize("hexdata", ["c1 02 ff ff", "c1 01 07", "c1 08 f2 48 cd c9 c9 07 00 07"])
    def test_corrupt(self, hexdata):
        c, _ = pair()
        (frame,) = frames(hexdata)
        with pytest.raises(ProtocolError) as info:
            c.decode_frame(frame, None)
        assert info.value.code == 1007


class TestEmptyFinalBlocks:
    """Issue 20 item 1: ``03 00`` repeated used to cost a zlib object and a copy of the rest
    of the frame per two bytes (1 MiB: ~9 s of CPU). At most one restart per frame now."""

    @pytest.mark.parametrize("side", ["client", "server"])
    def test_one_frame_is_1007(self, monkeypatch, side):
        c, s = pair()
        receiver = s if side == "server" else c
        made = count_zlib_streams(monkeypatch)
        with pytest.raises(ProtocolError) as info:
            receiver.decode_frame(Frame(OPCODE_BINARY, b"\x03\x00" * (MiB // 2), rsv1=True), MiB)
        assert info.value.code == 1007 and "final deflate block" in str(info.value)
        assert len(made) == 2

    def test_one_restart_per_frame_is_allowed(self, monkeypatch):
        c, _ = pair()
        made = count_zlib_streams(monkeypatch)
        hello = bytes.fromhex("f2 48 cd c9 c9 07 00")
        for _ in range(3):  # each frame may end one stream and start another
            frame = Frame(OPCODE_TEXT, b"\x03\x00" + hello, rsv1=True)
            assert c.decode_frame(frame, None).payload == b"Hello"
        assert len(made) == 4
        with pytest.raises(ProtocolError):
            c.decode_frame(Frame(OPCODE_TEXT, b"\x03\x00\x03\x00" + hello, rsv1=True), None)


class TestCompressedLimit:
    """Compressed bytes per message are capped too (``max_compressed_size``, issue 20)."""

    # Empty stored blocks: inflate to nothing; the last one is completed by the tail.
    EMPTY = b"\x00\x00\x00\xff\xff" * 999 + b"\x00"

    def test_default_is_twice_max_size(self):
        c, _ = pair()
        frame = Frame(OPCODE_BINARY, self.EMPTY, final=False, rsv1=True)
        more = Frame(OPCODE_CONTINUATION, self.EMPTY, final=False, rsv1=True)
        sent = 0
        with pytest.raises(PayloadTooBig) as info:
            while sent < 2 * (2 * 1000 + 65536):  # bounded
                c.decode_frame(more if sent else frame, 1000)
                sent += len(frame.payload)
        assert info.value.code == 1009 and "compressed" in str(info.value)
        assert sent > 2 * 1000 + 65536 - len(frame.payload)

    def test_counts_per_message(self):
        c, s = pair(max_compressed_size=100)
        assert c.max_compressed_size == s.max_compressed_size == 100
        for _ in range(5):
            frame = s.encode_frame(Frame(OPCODE_BINARY, bytes(1000)))
            assert len(frame.payload) < 100 and c.decode_frame(frame, None).payload == bytes(1000)
        first = s.encode_frame(Frame(OPCODE_BINARY, os.urandom(60), final=False))
        assert c.decode_frame(first, None)
        with pytest.raises(PayloadTooBig):
            c.decode_frame(s.encode_frame(Frame(OPCODE_CONTINUATION, os.urandom(60))), None)

    @pytest.mark.parametrize("value", [-2, 0.5, False])
    def test_invalid(self, value):
        with pytest.raises(ValueError):
            DeflateFrame(max_compressed_size=value)
        with pytest.raises(ValueError):
            DeflateFrameCodec(max_compressed_size=value)
