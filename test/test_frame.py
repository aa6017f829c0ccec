"""twspy.frame: exact wire bytes for RFC 6455 §5 (vectors from rfc6455.md §9). No I/O."""

from __future__ import annotations

import random
import struct

import pytest

import twspy
from twspy.errors import PayloadTooBig, ProtocolError
from twspy.frame import (
    CLOSE_NO_STATUS,
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    CloseCode,
    ControlFrame,
    Frame,
    FrameParser,
    Opcode,
    contains_frame,
    decode_close,
    encode_close,
    mask,
    pack_frame,
    pop_frame,
    read_frame,
    valid_close_code,
)

KEY = bytes.fromhex("37fa213d")  # the masking key of the RFC §5.7 examples
DATA_OPCODES = (OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY)
CONTROL_OPCODES = (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG)
RESERVED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def parse_all(data: bytes, **options) -> list:
    parser = FrameParser(**options)
    parser.feed(data)
    return list(parser)


def parse_error(data: bytes, **options) -> ProtocolError:
    parser = FrameParser(**options)
    parser.feed(data)
    with pytest.raises(ProtocolError) as info:
        parser.next_frame()
    return info.value


def slow_mask(key: bytes, data: bytes) -> bytes:
    """The §5.3 definition, byte by byte: the reference for mask()."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


# -- §5.7 examples -------------------------------------------------------------------------

RFC_5_7 = [
    # (id, frame, wire bytes)
    ("text-unmasked", Frame(OPCODE_TEXT, "Hello"), h("81 05 48 65 6c 6c 6f")),
    ("text-masked", Frame(OPCODE_TEXT, "Hello", masking_key=KEY), h("81 85 37 fa 21 3d 7f 9f 4d 51 58")),
    ("fragment-1", Frame(OPCODE_TEXT, "Hel", final=False), h("01 03 48 65 6c")),
    ("fragment-2", Frame(OPCODE_CONTINUATION, "lo"), h("80 02 6c 6f")),
    ("ping", Frame(OPCODE_PING, "Hello"), h("89 05 48 65 6c 6c 6f")),
    ("pong-masked", Frame(OPCODE_PONG, "Hello", masking_key=KEY), h("8a 85 37 fa 21 3d 7f 9f 4d 51 58")),
    ("binary-256", Frame(OPCODE_BINARY, bytes(range(256))), h("82 7e 01 00") + bytes(range(256))),
    ("binary-65536", Frame(OPCODE_BINARY, b"\xab" * 65536), h("82 7f 00 00 00 00 00 01 00 00") + b"\xab" * 65536),
]


class TestSection5_7Examples:
    @pytest.mark.parametrize("frame, wire", [r[1:] for r in RFC_5_7], ids=[r[0] for r in RFC_5_7])
    def test_pack(self, frame, wire):
        assert frame.pack() == wire

    @pytest.mark.parametrize("frame, wire", [r[1:] for r in RFC_5_7], ids=[r[0] for r in RFC_5_7])
    def test_read_frame(self, frame, wire):
        parsed, consumed = read_frame(wire + b"\x81\x00")
        assert consumed == len(wire)
        assert parsed == frame
        assert parsed.payload == frame.payload
        assert parsed.masking_key == frame.masking_key

    @pytest.mark.parametrize("frame, wire", [r[1:] for r in RFC_5_7], ids=[r[0] for r in RFC_5_7])
    def test_pop_frame(self, frame, wire):
        parsed, rest = pop_frame(wire + b"tail")
        assert parsed == frame
        assert rest == b"tail"
        assert pop_frame(wire[:-1]) == (None, wire[:-1])

    @pytest.mark.parametrize("frame, wire", [r[1:] for r in RFC_5_7], ids=[r[0] for r in RFC_5_7])
    def test_contains_frame(self, frame, wire):
        assert contains_frame(wire)
        assert contains_frame(wire + b"\x00")
        for cut in (0, 1, 2, len(wire) - 1):
            assert not contains_frame(wire[:cut])

    @pytest.mark.parametrize("frame, wire", [r[1:] for r in RFC_5_7], ids=[r[0] for r in RFC_5_7])
    def test_frame_parser(self, frame, wire):
        masked = frame.mask
        assert parse_all(wire) == [frame]
        assert parse_all(wire, require_mask=masked) == [frame]  # right side: accepted
        assert parse_error(wire, require_mask=not masked).code == 1002  # wrong side: refused

    def test_parsed_types(self):
        frames = parse_all(b"".join(r[2] for r in RFC_5_7))
        assert [f.opcode for f in frames] == [1, 1, 1, 0, 9, 10, 2, 2]
        assert [type(f) for f in frames] == [Frame] * 4 + [ControlFrame] * 2 + [Frame] * 2
        assert frames[1].payload == b"Hello" and frames[1].masking_key == KEY
        assert [f.final for f in frames] == [True, True, False, True, True, True, True, True]

    def test_fragmented_hello_reassembles(self):
        frames = parse_all(h("01 03 48 65 6c 80 02 6c 6f"))
        assert b"".join(f.payload for f in frames) == b"Hello"
        assert (frames[0].opcode, frames[0].final, frames[1].opcode, frames[1].final) == (1, False, 0, True)


# -- §9 additional vectors -----------------------------------------------------------------

class TestAdditionalVectors:
    @pytest.mark.parametrize("header, length", [
        ("82 7d", 125), ("82 7e 00 7e", 126), ("82 7e ff ff", 65535),
    ])
    def test_length_headers(self, header, length):
        payload = bytes(i % 251 for i in range(length))
        assert Frame(OPCODE_BINARY, payload).pack() == h(header) + payload
        assert parse_all(h(header) + payload) == [Frame(OPCODE_BINARY, payload)]

    def test_close_1000_bye(self):
        wire = h("88 05 03 e8 62 79 65")
        assert Frame(OPCODE_CLOSE, encode_close(1000, "bye")).pack() == wire
        (frame,) = parse_all(wire)
        assert isinstance(frame, ControlFrame)
        assert frame.unpack_close() == (1000, "bye")

    def test_close_1000_masked(self):
        wire = h("88 82 37 fa 21 3d 34 12")
        assert Frame(OPCODE_CLOSE, encode_close(1000), masking_key=KEY).pack() == wire
        (frame,) = parse_all(wire, require_mask=True)
        assert frame.payload == b"\x03\xe8"
        assert frame.unpack_close() == (1000, "")

    def test_empty_close(self):
        wire = h("88 00")
        (frame,) = parse_all(wire)
        assert frame.unpack_close() == (1005, "")
        assert Frame(OPCODE_CLOSE, encode_close(None)).pack() == wire  # the reply: no code
        assert Frame(OPCODE_CLOSE, encode_close(None), masking_key=KEY).pack() == h("88 80 37 fa 21 3d")

    @pytest.mark.parametrize("payload, code", [
        ("03", 1002),        # 1-byte body
        ("03 ed", 1002),     # 1005 on the wire
        ("03 e7", 1002),     # 999
        ("03 ec", 1002),     # 1004
        ("03 ee", 1002),     # 1006
        ("03 f7", 1002),     # 1015
        ("13 88", 1002),     # 5000
        ("03 e8 ff", 1007),  # 1000 + invalid UTF-8 reason
    ])
    def test_invalid_close_payloads(self, payload, code):
        wire = bytes([0x88, len(h(payload))]) + h(payload)
        (frame,) = parse_all(wire)  # framing is fine; the body is not
        with pytest.raises(ProtocolError) as info:
            decode_close(frame.payload)
        assert info.value.code == code
        with pytest.raises(ProtocolError) as info:
            frame.unpack_close()
        assert info.value.code == code

    @pytest.mark.parametrize("wire, code", [("88 02 0b b8", 3000), ("88 02 13 87", 4999)])
    def test_valid_close_codes_3000_4999(self, wire, code):
        (frame,) = parse_all(h(wire))
        assert frame.unpack_close() == (code, "")

    @pytest.mark.parametrize("wire, options", [
        ("c1 05 48 65 6c 6c 6f", {}),                         # RSV1 without an extension
        ("83 00", {}), ("8b 00", {}),                         # reserved opcodes
        ("09 00", {}),                                        # fragmented ping
        ("89 7e 00 7e", {}),                                  # ping with 126 bytes (header only)
        ("82 7f 80 00 00 00 00 00 00 00", {}),                # 64-bit length, MSB set
        ("81 05 48 65 6c 6c 6f", {"require_mask": True}),     # server gets an unmasked frame
        ("81 85 37 fa 21 3d 7f 9f 4d 51 58", {"require_mask": False}),  # client gets a masked one
    ])
    def test_failures_1002(self, wire, options):
        exc = parse_error(h(wire), **options)
        assert exc.code == 1002
        assert type(exc) is ProtocolError
        assert isinstance(exc, twspy.ProtocolError)

    def test_ping_between_fragments(self):
        frames = parse_all(h("01 03 48 65 6c 89 00 80 02 6c 6f"))
        assert [(f.opcode, f.final, f.payload) for f in frames] == [
            (1, False, b"Hel"), (9, True, b""), (0, True, b"lo")]
        assert Frame(OPCODE_PONG, frames[1].payload).pack() == h("8a 00")

    def test_utf8_split_across_fragments(self):
        frames = parse_all(h("01 01 ce 80 01 ba"))
        assert b"".join(f.payload for f in frames).decode("utf-8") == "\u03ba"


# -- §5.2 base framing: lengths, opcodes, RSV ----------------------------------------------

LENGTH_HEADERS = [
    (0, "00"), (1, "01"), (125, "7d"), (126, "7e 00 7e"), (127, "7e 00 7f"), (65535, "7e ff ff"),
    (65536, "7f 00 00 00 00 00 01 00 00"), (65537, "7f 00 00 00 00 00 01 00 01"),
]


class TestSection5_2Lengths:
    @pytest.mark.parametrize("length, tail", LENGTH_HEADERS)
    @pytest.mark.parametrize("masked", [False, True])
    def test_pack_and_parse(self, length, tail, masked):
        payload = random.Random(length).getrandbits(8 * length).to_bytes(length, "little")
        b1 = h(tail)
        if masked:
            b1 = bytes([b1[0] | 0x80]) + b1[1:] + KEY
        header = b"\x82" + b1
        body = slow_mask(KEY, payload) if masked else payload
        frame = Frame(OPCODE_BINARY, payload, masking_key=KEY if masked else None)
        assert pack_frame(OPCODE_BINARY, payload, masking_key=KEY if masked else None) == (header, body)
        assert frame.pack() == header + body
        assert parse_all(header + body, require_mask=masked) == [frame]
        assert read_frame(header + body) == (frame, len(header) + len(body))

    @pytest.mark.parametrize("wire, length", [
        ("82 7e 00 05", 5),                           # 16-bit form for a 7-bit length
        ("82 7f 00 00 00 00 00 00 00 05", 5),         # 64-bit form for a 7-bit length
        ("82 7f 00 00 00 00 00 00 01 00", 256),       # 64-bit form for a 16-bit length
    ])
    def test_non_minimal_lengths_accepted(self, wire, length):
        payload = b"x" * length
        (frame,) = parse_all(h(wire) + payload)
        assert frame.payload == payload

    def test_msb_set_fails_even_without_max_size(self):
        for first in (0x80, 0xFF):
            wire = bytes([0x82, 0x7F, first]) + b"\x00" * 7
            assert parse_error(wire).code == 1002
            assert parse_error(wire, max_size=10).code == 1002  # 1002 wins over 1009

    def test_largest_legal_length_waits_for_payload(self):
        parser = FrameParser()
        parser.feed(h("82 7f 7f ff ff ff ff ff ff ff"))
        assert parser.next_frame() is None
        assert parser.wanted() == (1 << 63) - 1

    @pytest.mark.parametrize("cut", range(1, 10))
    def test_incomplete_header(self, cut):
        wire = h("82 7f 00 00 00 00 00 01 00 00")
        assert read_frame(wire[:cut]) == (None, 0)
        assert not contains_frame(wire[:cut])
        parser = FrameParser()
        parser.feed(wire[:cut])
        assert parser.next_frame() is None
        assert parser.wanted() == 0  # header not complete yet


class TestSection5_2Opcodes:
    @pytest.mark.parametrize("opcode", DATA_OPCODES + CONTROL_OPCODES)
    def test_known_opcodes(self, opcode):
        wire = bytes([0x80 | opcode, 0x02]) + b"ab"
        assert Frame(opcode, b"ab").pack() == wire
        (frame,) = parse_all(wire)
        assert frame.opcode == opcode
        assert isinstance(frame, ControlFrame) == (opcode >= 8)
        assert frame.is_control == (opcode >= 8)

    @pytest.mark.parametrize("opcode", RESERVED_OPCODES)
    @pytest.mark.parametrize("fin", [0x80, 0x00])
    def test_reserved_opcodes(self, opcode, fin):
        wire = bytes([fin | opcode, 0x00])
        assert parse_error(wire).code == 1002
        with pytest.raises(ProtocolError) as info:
            read_frame(wire)
        assert info.value.code == 1002

    def test_reserved_opcode_can_be_packed(self):
        # Frame itself allows any 4-bit opcode (to test peers); only the parser refuses.
        assert Frame(0x3).pack() == h("83 00")
        with pytest.raises(ValueError):
            Frame(0x10)
        with pytest.raises(ValueError):
            Frame(-1)

    def test_enum_values(self):
        assert [int(o) for o in Opcode] == [0, 1, 2, 8, 9, 10]
        assert Opcode.TEXT == OPCODE_TEXT == twspy.OPCODE_TEXT
        assert CloseCode.MESSAGE_TOOBIG == 1009 and CloseCode.NO_STATUS == CLOSE_NO_STATUS


class TestSection5_5ControlFrames:
    @pytest.mark.parametrize("opcode", CONTROL_OPCODES)
    def test_125_bytes_ok_126_fails(self, opcode):
        ok = bytes([0x80 | opcode, 125]) + b"x" * 125
        (frame,) = parse_all(ok)
        assert len(frame.payload) == 125
        # only the header: refused before the payload arrives
        assert parse_error(bytes([0x80 | opcode, 126, 0, 126])).code == 1002
        assert parse_error(bytes([0x80 | opcode, 127]) + struct.pack("!Q", 126)).code == 1002

    @pytest.mark.parametrize("opcode", CONTROL_OPCODES)
    @pytest.mark.parametrize("masked", [False, True])
    def test_fragmented_control_frame(self, opcode, masked):
        wire = bytes([opcode, 0x80 if masked else 0x00]) + (KEY if masked else b"")
        assert parse_error(wire).code == 1002

    def test_control_frame_class_limits(self):
        assert ControlFrame(OPCODE_PING, b"x" * 125).pack() == b"\x89\x7d" + b"x" * 125
        with pytest.raises(ValueError):
            ControlFrame(OPCODE_PING, b"x" * 126)
        with pytest.raises(ValueError):
            ControlFrame(OPCODE_PING, "\u00e9" * 63)  # 126 bytes once encoded
        with pytest.raises(ValueError):
            ControlFrame(OPCODE_TEXT, b"")
        with pytest.raises(ValueError):
            ControlFrame(OPCODE_PING, b"", final=False)

    def test_control_frame_unpack_close(self):
        assert ControlFrame(OPCODE_CLOSE, encode_close(1001, "away")).unpack_close() == (1001, "away")
        assert ControlFrame(OPCODE_CLOSE).unpack_close() == (1005, "")


class TestSection5_2Rsv:
    @pytest.mark.parametrize("rsv", [0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70])
    def test_rsv_allowed(self, rsv):
        wire = bytes([0x80 | rsv | OPCODE_TEXT, 0x01]) + b"a"
        frame = Frame(OPCODE_TEXT, "a", rsv1=bool(rsv & 0x40), rsv2=bool(rsv & 0x20), rsv3=bool(rsv & 0x10))
        assert frame.rsv == rsv
        assert frame.pack() == wire
        assert parse_all(wire, rsv_allowed=rsv) == [frame]
        assert parse_all(wire, rsv_allowed=0x70) == [frame]
        assert read_frame(wire) == (frame, 3)  # read_frame accepts all RSV bits by default
        if rsv:
            assert parse_error(wire).code == 1002
            assert parse_error(wire, rsv_allowed=0x70 & ~rsv).code == 1002
            with pytest.raises(ProtocolError):
                read_frame(wire, rsv_allowed=0)

    def test_one_disallowed_bit_among_allowed(self):
        wire = bytes([0x80 | 0x40 | 0x10 | OPCODE_BINARY, 0x00])
        assert parse_error(wire, rsv_allowed=0x40).code == 1002
        assert parse_all(wire, rsv_allowed=0x50)[0].rsv == 0x50


class TestMaxSize:
    def test_header_only_raises_1009(self):
        parser = FrameParser(max_size=125)
        parser.feed(h("82 7e 00 7e"))  # no payload yet
        with pytest.raises(PayloadTooBig) as info:
            parser.next_frame()
        assert info.value.code == 1009
        assert isinstance(info.value, ProtocolError)

    def test_masked_header_before_key_raises_1009(self):
        parser = FrameParser(max_size=1000, require_mask=True)
        parser.feed(h("82 fe 10 00"))  # 4096 bytes announced, key not received yet
        with pytest.raises(PayloadTooBig):
            parser.next_frame()

    def test_64_bit_length_raises_1009(self):
        parser = FrameParser(max_size=1 << 20)
        parser.feed(h("82 7f 00 00 00 01 00 00 00 00"))  # 4 GiB
        with pytest.raises(PayloadTooBig) as info:
            parser.next_frame()
        assert info.value.code == 1009

    def test_exactly_max_size_is_accepted(self):
        wire = h("82 7e 00 7e") + b"x" * 126
        assert len(parse_all(wire, max_size=126)[0].payload) == 126
        assert parse_error(wire, max_size=125).code == 1009
        assert parse_all(h("82 00"), max_size=0)[0].payload == b""
        with pytest.raises(PayloadTooBig):
            read_frame(wire, max_size=125)


# -- incremental parsing -------------------------------------------------------------------

def _stream():
    rng = random.Random(6455)
    frames = []
    for i, length in enumerate((0, 1, 5, 125, 126, 1000, 65535, 65536, 70000, 3)):
        payload = bytes(rng.getrandbits(8) for _ in range(length)) if length < 2000 else \
            rng.getrandbits(8 * length).to_bytes(length, "little")
        key = bytes(rng.getrandbits(8) for _ in range(4)) if i % 2 else None
        frames.append(Frame(OPCODE_BINARY, payload, masking_key=key, final=i != 3))
        if i == 3:
            frames.append(Frame(OPCODE_PING, b"ping", masking_key=key))
            frames.append(Frame(OPCODE_CONTINUATION, b"end", masking_key=key))
    return frames


class TestIncremental:
    frames = _stream()
    wire = b"".join(f.pack() for f in frames)

    def feed_in(self, sizes):
        parser = FrameParser()
        out, pos = [], 0
        for size in sizes:
            parser.feed(self.wire[pos:pos + size])
            pos += size
            out.extend(parser)
        assert pos == len(self.wire)
        assert parser.take_buffer() == b""
        return out

    def test_all_at_once(self):
        assert self.feed_in([len(self.wire)]) == self.frames

    def test_one_byte_at_a_time(self):
        assert self.feed_in([1] * len(self.wire)) == self.frames

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_random_chunks(self, seed):
        rng = random.Random(seed)
        sizes, left = [], len(self.wire)
        while left:
            size = min(left, rng.choice((1, 2, 3, 7, 100, 4096, 70000)))
            sizes.append(size)
            left -= size
        assert self.feed_in(sizes) == self.frames

    def test_several_frames_in_one_feed(self):
        parser = FrameParser()
        parser.feed(h("81 05 48 65 6c 6c 6f 89 00 82 02 01 02 8a"))
        assert [f.opcode for f in parser] == [1, 9, 2]
        assert parser.take_buffer() == h("8a")
        assert list(parser) == []

    def test_pop_frame_loop(self):
        data, out = self.wire, []
        while data:
            frame, data = pop_frame(data)
            out.append(frame)
        assert out == self.frames

    def test_wanted_counts_missing_payload(self):
        parser = FrameParser()
        parser.feed(h("82 7e 01 00") + b"x" * 56)
        assert parser.next_frame() is None
        assert parser.wanted() == 200
        parser.feed(b"x" * 200)
        assert parser.wanted() == 0
        assert len(parser.next_frame().payload) == 256

    def test_take_buffer_hands_over_unparsed_bytes(self):
        parser = FrameParser()
        parser.feed(h("81 02 68 69 82 05 01 02"))
        assert parser.next_frame().payload == b"hi"
        assert parser.next_frame() is None
        assert parser.take_buffer() == h("82 05 01 02")
        parser.feed(h("81 01 61"))
        assert parser.next_frame().payload == b"a"

    def test_memoryview_and_bytearray_input(self):
        parser = FrameParser()
        parser.feed(memoryview(h("81 85 37 fa")))
        parser.feed(bytearray(h("21 3d 7f 9f 4d 51 58")))
        assert parser.next_frame().payload == b"Hello"
        assert read_frame(memoryview(h("81 05 48 65 6c 6c 6f")))[0].payload == b"Hello"
        assert contains_frame(bytearray(h("81 00")))

    def test_error_does_not_depend_on_chunking(self):
        parser = FrameParser(require_mask=True)
        for byte in h("81 05"):
            parser.feed(bytes([byte]))
            if byte == 0x81:
                assert parser.next_frame() is None
        with pytest.raises(ProtocolError):
            parser.next_frame()


# -- §5.3 masking --------------------------------------------------------------------------

class TestSection5_3Masking:
    def test_hello_vector(self):
        assert mask(KEY, b"Hello") == h("7f 9f 4d 51 58")
        assert mask(KEY, h("7f 9f 4d 51 58")) == b"Hello"

    @pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 65535, 65536, 65537, 1 << 20])
    def test_involution_and_reference(self, size):
        data = random.Random(size).getrandbits(8 * size).to_bytes(size, "little") if size else b""
        key = bytes.fromhex("a1b2c3d4")
        masked = mask(key, data)
        assert isinstance(masked, bytes)
        assert len(masked) == size
        assert mask(key, masked) == data
        if size <= 65537:
            assert masked == slow_mask(key, data)
        else:  # the reference loop is too slow for 1 MiB: check the period instead
            assert masked[:4096] == slow_mask(key, data[:4096])
            assert masked[-4096:] == slow_mask(key, data[-4096:])  # 1 MiB is a multiple of 4

    @pytest.mark.parametrize("size", [5, 65536])
    def test_input_types(self, size):
        data = bytes(i % 256 for i in range(size))
        expected = slow_mask(KEY, data)
        assert mask(KEY, data) == expected
        assert mask(KEY, bytearray(data)) == expected
        assert mask(KEY, memoryview(data)) == expected

    def test_zero_key_is_identity(self):
        assert mask(b"\x00" * 4, b"abc") == b"abc"
        assert mask(b"\x00" * 4, b"a" * 70000) == b"a" * 70000

    def test_random_key_when_mask_without_key(self):
        frame = Frame(OPCODE_TEXT, "Hello", mask=True)
        one, two = frame.pack(), frame.pack()
        assert one[:2] == h("81 85") and two[:2] == h("81 85")
        assert one != two or one[2:6] == two[2:6]  # fresh keys (collision chance 2**-32)
        (parsed,) = parse_all(one, require_mask=True)
        assert parsed.payload == b"Hello"
        assert parsed.masking_key == one[2:6]


# -- the Frame API -------------------------------------------------------------------------

class TestFrameApi:
    def test_payload_types(self):
        assert Frame(OPCODE_TEXT, "h\u00e9").payload == b"h\xc3\xa9"
        assert Frame(OPCODE_TEXT, "h\u00e9").pack() == h("81 03 68 c3 a9")
        assert Frame(OPCODE_BINARY, bytearray(b"ab")).payload == b"ab"
        assert type(Frame(OPCODE_BINARY, bytearray(b"ab")).payload) is bytes
        assert Frame(OPCODE_BINARY, memoryview(b"ab")).payload == b"ab"
        assert Frame(OPCODE_BINARY).payload == b""

    def test_defaults_and_flags(self):
        frame = Frame(OPCODE_BINARY, b"x")
        assert (frame.final, frame.mask, frame.masking_key, frame.rsv) == (True, False, None, 0)
        assert Frame(OPCODE_BINARY, masking_key=KEY).mask is True
        assert Frame(OPCODE_BINARY, mask=True).masking_key is None
        with pytest.raises(ValueError):
            Frame(OPCODE_BINARY, masking_key=b"abc")

    def test_fragment(self):
        frames = Frame(OPCODE_TEXT, "abcdefg", rsv1=True).fragment(3)
        assert [(f.opcode, f.payload, f.final, f.rsv) for f in frames] == [
            (OPCODE_TEXT, b"abc", False, 0x40), (OPCODE_CONTINUATION, b"def", False, 0),
            (OPCODE_CONTINUATION, b"g", True, 0)]
        assert b"".join(f.pack() for f in frames) == h("41 03 61 62 63 00 03 64 65 66 80 01 67")

    def test_fragment_all_rsv_bits_on_first_only(self):
        frames = Frame(OPCODE_BINARY, b"abcd", rsv1=True, rsv2=True, rsv3=True).fragment(2)
        assert [f.rsv for f in frames] == [0x70, 0]
        assert [f.pack()[0] for f in frames] == [0x72, 0x80]

    def test_fragment_edges(self):
        assert Frame(OPCODE_BINARY, b"abcdef").fragment(3) == [
            Frame(OPCODE_BINARY, b"abc", final=False), Frame(OPCODE_CONTINUATION, b"def")]
        assert Frame(OPCODE_BINARY, b"ab").fragment(10) == [Frame(OPCODE_BINARY, b"ab")]
        assert Frame(OPCODE_TEXT).fragment(4) == [Frame(OPCODE_TEXT)]
        # a non-final frame stays non-final on its last fragment
        assert [f.final for f in Frame(OPCODE_TEXT, "abc", final=False).fragment(2)] == [False, False]
        for size in (0, -1):
            with pytest.raises(ValueError):
                Frame(OPCODE_BINARY, b"ab").fragment(size)

    def test_fragment_masked(self):
        frames = Frame(OPCODE_BINARY, b"abcd").fragment(2, mask=True)
        assert all(f.mask for f in frames)
        wire = b"".join(f.pack() for f in frames)
        assert [f.payload for f in parse_all(wire, require_mask=True)] == [b"ab", b"cd"]
        assert all(f.mask for f in Frame(OPCODE_BINARY, b"abcd", masking_key=KEY).fragment(2))

    @pytest.mark.parametrize("opcode", CONTROL_OPCODES)
    def test_control_frames_refuse_to_fragment(self, opcode):
        with pytest.raises(ValueError):
            Frame(opcode, b"abc").fragment(1)
        with pytest.raises(ValueError):
            ControlFrame(opcode, b"abc").fragment(1)

    def test_equality(self):
        base = Frame(OPCODE_TEXT, "a")
        assert base == Frame(OPCODE_TEXT, b"a")
        assert base != Frame(OPCODE_BINARY, "a")
        assert base != Frame(OPCODE_TEXT, "b")
        assert base != Frame(OPCODE_TEXT, "a", final=False)
        assert base != Frame(OPCODE_TEXT, "a", rsv1=True)
        assert base != Frame(OPCODE_TEXT, "a", rsv2=True)
        assert base != Frame(OPCODE_TEXT, "a", rsv3=True)
        assert base != Frame(OPCODE_TEXT, "a", mask=True)
        # the key is not part of the value: a frame equals itself re-parsed with any key
        assert Frame(OPCODE_TEXT, "a", masking_key=KEY) == Frame(OPCODE_TEXT, "a", masking_key=b"1234")
        assert Frame(OPCODE_PING) == ControlFrame(OPCODE_PING)
        assert base != "a" and base != None  # noqa: E711
        with pytest.raises(TypeError):
            hash(base)

    @pytest.mark.parametrize("frame", [
        Frame(OPCODE_TEXT, "Hello"), Frame(0x3), Frame(0xF, mask=True),
        Frame(OPCODE_BINARY, b"\x00" * 1000, final=False, rsv1=True, rsv2=True, rsv3=True, masking_key=KEY),
        ControlFrame(OPCODE_CLOSE, encode_close(1000, "bye")),
    ])
    def test_repr(self, frame):
        text = repr(frame)
        assert text.startswith("<%s " % type(frame).__name__)
        assert "%d bytes" % len(frame.payload) in text
        assert len(text) < 200  # at most 32 payload bytes are shown
        assert text.endswith("...'>") == (len(frame.payload) > 32)

    def test_repr_flags(self):
        assert repr(Frame(OPCODE_TEXT, "hi")) == "<Frame TEXT [F] 2 bytes b'hi'>"
        assert repr(Frame(0x3, final=False, rsv1=True, mask=True)) == "<Frame 0x3 [1M] 0 bytes b''>"

    @pytest.mark.parametrize("opcode", DATA_OPCODES + CONTROL_OPCODES)
    @pytest.mark.parametrize("masked", [False, True])
    def test_parse_pack_round_trip(self, opcode, masked):
        lengths = (0, 1, 125) if opcode >= 8 else (0, 1, 125, 126, 65535, 65536)
        finals = (True,) if opcode >= 8 else (True, False)
        checked = 0
        for length in lengths:
            payload = bytes(i * 7 % 256 for i in range(length))
            for rsv in (0, 0x40, 0x20, 0x10, 0x70):
                for final in finals:
                    frame = Frame(opcode, payload, mask=masked, final=final,
                                  rsv1=bool(rsv & 0x40), rsv2=bool(rsv & 0x20), rsv3=bool(rsv & 0x10))
                    wire = frame.pack()
                    assert read_frame(wire) == (frame, len(wire))
                    assert parse_all(wire, require_mask=masked, rsv_allowed=rsv) == [frame]
                    checked += 1
        assert checked == len(lengths) * 5 * len(finals)


# -- §5.5.1 / §7.4 close payloads ----------------------------------------------------------

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]


class TestSection7_4CloseCodes:
    @pytest.mark.parametrize("code", VALID_CODES)
    def test_valid(self, code):
        assert valid_close_code(code)
        assert encode_close(code) == struct.pack("!H", code)
        assert encode_close(code, "r") == struct.pack("!H", code) + b"r"
        assert decode_close(struct.pack("!H", code) + b"r") == (code, "r")

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_invalid(self, code):
        assert not valid_close_code(code)
        with pytest.raises(ProtocolError) as info:
            decode_close(struct.pack("!H", code))
        assert info.value.code == 1002
        if code != 1005:  # 1005 means "no code": see test_1005_means_empty_body
            with pytest.raises(ValueError):
                encode_close(code)

    def test_range_edges(self):
        valid = {c for c in range(0, 6000) if valid_close_code(c)}
        assert valid == set(VALID_CODES[:12]) | set(range(3000, 5000))

    def test_1005_means_empty_body(self):
        assert encode_close(1005) == b""
        assert encode_close(None) == b"" == encode_close()
        with pytest.raises(ValueError):
            encode_close(1005, "reason")
        with pytest.raises(ValueError):
            encode_close(None, "reason")


class TestSection5_5_1CloseBody:
    def test_empty(self):
        assert decode_close(b"") == (1005, "")

    def test_one_byte(self):
        for body in (b"\x03", b"\x00", b"\xff"):
            with pytest.raises(ProtocolError) as info:
                decode_close(body)
            assert info.value.code == 1002

    def test_utf8_reason(self):
        assert encode_close(1000, "\u00e9t\u00e9") == h("03 e8 c3 a9 74 c3 a9")
        assert decode_close(h("03 e8 c3 a9 74 c3 a9")) == (1000, "\u00e9t\u00e9")
        assert encode_close(1000, b"bye") == h("03 e8 62 79 65")

    @pytest.mark.parametrize("reason", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xc0\xaf"])
    def test_invalid_utf8_reason(self, reason):
        with pytest.raises(ProtocolError) as info:
            decode_close(b"\x03\xe8" + reason)
        assert info.value.code == 1007
        with pytest.raises(ValueError):
            encode_close(1000, reason)

    def test_123_byte_limit(self):
        assert len(encode_close(1000, "x" * 123)) == 125
        assert len(encode_close(1000, "\u00e9" * 61 + "x")) == 125
        for reason in ("x" * 124, "\u00e9" * 62, b"x" * 124):
            with pytest.raises(ValueError):
                encode_close(1000, reason)
        assert decode_close(b"\x03\xe8" + b"x" * 123) == (1000, "x" * 123)

    def test_close_frame_round_trip(self):
        wire = Frame(OPCODE_CLOSE, encode_close(4001, "custom"), masking_key=KEY).pack()
        (frame,) = parse_all(wire, require_mask=True)
        assert frame.unpack_close() == (4001, "custom")


class TestParseDataFrame:
    """The receive fast path: whole unfragmented data frames only; everything else is None."""

    HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])  # RFC 6455 §5.7
    HELLO = bytes([0x81, 0x05]) + b"Hello"

    def test_rfc_vectors(self):
        from twspy.frame import parse_data_frame
        assert parse_data_frame(self.HELLO_MASKED, 0, True, None) == (1, b"Hello", 11)
        assert parse_data_frame(self.HELLO, 0, False, None) == (1, b"Hello", 7)
        binary256 = bytes([0x82, 0x7E, 0x01, 0x00]) + bytes(range(256))  # §5.7: 256 bytes, 16-bit length
        assert parse_data_frame(binary256, 0, False, None) == (2, bytes(range(256)), 260)
        assert parse_data_frame(bytearray(b"xx" + self.HELLO_MASKED + b"tail"), 2, True, 5) == (1, b"Hello", 13)

    @pytest.mark.parametrize("data, require_mask, max_size", [
        (bytes([0x01, 0x03]) + b"Hel", False, None),                          # §5.7 first fragment
        (bytes([0x80, 0x02]) + b"lo", False, None),                           # continuation
        (bytes([0x89, 0x05]) + b"Hello", False, None),                        # ping
        (bytes([0x88, 0x02, 0x03, 0xE8]), False, None),                       # close
        (bytes([0xC1, 0x05]) + b"Hello", False, None),                        # RSV1 (compressed)
        (bytes([0x81, 0x05]) + b"Hell", False, None),                         # incomplete payload
        (bytes([0x81]), False, None),                                         # incomplete header
        (bytes([0x82, 0x7E, 0x01]), False, None),                             # incomplete length
        (bytes([0x82, 0x7E, 0x00, 0x05]) + b"Hello", False, None),            # non-minimal length
        (bytes([0x82, 0x7F]) + (70000).to_bytes(8, "big") + bytes(70000), False, None),  # 64-bit length
        (HELLO, True, None),                                                  # server: unmasked
        (HELLO_MASKED, False, None),                                          # client: masked
        (HELLO, False, 4),                                                    # over max_size
        (HELLO_MASKED[:-1], True, None),                                      # incomplete masked
    ])
    def test_left_to_the_general_parser(self, data, require_mask, max_size):
        from twspy.frame import parse_data_frame
        assert parse_data_frame(data, 0, require_mask, max_size) is None

    def test_agrees_with_the_general_parser(self):
        import random

        from twspy.frame import parse_data_frame
        rng = random.Random(5)
        for _ in range(300):
            opcode = rng.choice([1, 2])
            payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 125, 126, 300, 1024, 65535])))
            key = bytes(rng.getrandbits(8) for _ in range(4))
            wire = b"".join(pack_frame(opcode, payload, True, 0, key))
            assert parse_data_frame(wire, 0, True, None) == (opcode, payload, len(wire))
