"""twspy.protocol (the sans-I/O core) and twspy.handshake_protocol: bytes in, events and
bytes out. No socket, no thread.

Masking keys are fixed (``37 fa 21 3d``, the key of RFC 6455 §5.7) so that wire bytes can be
compared exactly. Classes follow the RFC's sections.
"""

from __future__ import annotations

import logging
import os
import random
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twspy import protocol
from twspy.deflate_frame import DeflateFrame, DeflateFrameCodec
from twspy.errors import HandshakeError, InvalidState, NegotiationError, PayloadTooBig
from twspy.extension import ExtensionCodec
from twspy.frame import Frame
from twspy.handshake import Request, Response, accept_key
from twspy.handshake_protocol import ClientProtocol, ServerProtocol
from twspy.message import BinaryMessage, TextMessage
from twspy.permessage_deflate import DeflateMessage, DeflateMessageCodec
from twspy.protocol import (
    CLIENT,
    CLOSED,
    CLOSING,
    CONNECTING,
    DEFAULT_MAX_SIZE,
    OPEN,
    SERVER,
    Close,
    Ping,
    Pong,
    Protocol,
    State,
)

KEY = bytes.fromhex("37fa213d")


@pytest.fixture(autouse=True)
def fixed_key(monkeypatch):
    monkeypatch.setattr(protocol, "new_masking_key", lambda: KEY)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def masked(opcode: int, payload: bytes = b"", final: bool = True, rsv1: bool = False) -> bytes:
    """A frame as a client sends it (masked with KEY)."""
    return Frame(opcode, payload, masking_key=KEY, final=final, rsv1=rsv1).pack()


def plain(opcode: int, payload: bytes = b"", final: bool = True, rsv1: bool = False) -> bytes:
    """A frame as a server sends it."""
    return Frame(opcode, payload, final=final, rsv1=rsv1).pack()


def frame_for(side, opcode, payload=b"", final=True, rsv1=False):
    """A frame as the peer of ``side`` sends it."""
    return (masked if side is SERVER else plain)(opcode, payload, final, rsv1)


def bytewise(p: Protocol, data: bytes) -> None:
    for i in range(len(data)):
        p.receive_data(data[i:i + 1])


def failed_with(p: Protocol, code: int) -> list[bytes]:
    """Assert that ``p`` failed the connection with ``code``; return what it sent."""
    assert p.error is not None and p.error.code == code, p.error
    assert p.close_code == code
    assert p.state is CLOSING
    out = p.data_to_send()
    assert out[0][0] == 0x88
    if p.side is SERVER:
        assert out[0][2:4] == code.to_bytes(2, "big") and out[-1] == b""
    else:
        assert out[-1] != b""  # a client waits for the server to close TCP
        assert protocol_unmask(out[0])[:2] == code.to_bytes(2, "big")
    return out


def protocol_unmask(data: bytes) -> bytes:
    """The payload of one masked frame of < 126 bytes."""
    n = data[1] & 0x7F
    key = data[2:6]
    return bytes(b ^ key[i % 4] for i, b in enumerate(data[6:6 + n]))


def pair(extensions_server=(), extensions_client=(), **options):
    return Protocol(SERVER, extensions=extensions_server, **options), \
        Protocol(CLIENT, extensions=extensions_client, **options)


def relay(src: Protocol, dst: Protocol) -> None:
    for data in src.data_to_send():
        if data:
            dst.receive_data(data)
        else:
            dst.receive_eof()


class TestNames:
    def test_contract(self):
        assert [s.name for s in State] == ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]
        assert (CONNECTING, OPEN, CLOSING, CLOSED) == tuple(State)
        assert SERVER is not CLIENT
        from twspy.websocket import DEFAULT_MAX_SIZE as ws_default
        assert DEFAULT_MAX_SIZE == ws_default
        p = Protocol(SERVER)
        assert p.state is OPEN and p.max_size == DEFAULT_MAX_SIZE
        assert p.data_to_send() == [] and p.events_received() == [] and not p.close_expected()

    def test_events_are_frozen(self):
        with pytest.raises(AttributeError):
            Ping(b"x").data = b"y"  # type: ignore[misc]
        assert Close() == Close(1005, "") and Pong() == Pong(b"")

    def test_masking_key_pool(self, monkeypatch):
        monkeypatch.undo()
        keys = {protocol.new_masking_key() for _ in range(2000)}
        assert all(len(k) == 4 for k in keys) and len(keys) > 1900


class TestVectors57:
    """RFC 6455 §5.7 and the spec notes' additional vectors."""

    def test_unmasked_text_to_client(self):
        c = Protocol(CLIENT)
        c.receive_data(h("810548656c6c6f"))
        assert c.events_received() == [TextMessage("Hello")]

    def test_masked_text_to_server(self):
        s = Protocol(SERVER)
        s.receive_data(h("818537fa213d7f9f4d5158"))
        [message] = s.events_received()
        assert type(message) is TextMessage and message.payload == "Hello"

    def test_fragmented_text(self):
        c = Protocol(CLIENT)
        c.receive_data(h("010348656c"))
        assert c.events_received() == []
        c.receive_data(h("80026c6f"))
        assert c.events_received() == [TextMessage("Hello")]

    def test_ping_gets_masked_pong(self):
        c = Protocol(CLIENT)
        c.receive_data(h("890548656c6c6f"))
        assert c.events_received() == [Ping(b"Hello")]
        assert c.data_to_send() == [h("8a8537fa213d7f9f4d5158")]

    @pytest.mark.parametrize("size, header", [(125, "827d"), (126, "827e007e"), (256, "827e0100"),
                                              (65535, "827effff"), (65536, "827f0000000000010000")])
    def test_lengths(self, size, header):
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        c = Protocol(CLIENT)
        c.receive_data(h(header) + payload)
        assert c.events_received() == [BinaryMessage(payload)]
        s = Protocol(SERVER)
        s.send_binary(payload)
        out = s.data_to_send()
        assert out == ([h(header) + payload] if size < 16384 else [h(header), payload])  # never copied
        assert s.encode_binary(payload) == h(header) + payload

    def test_send_vectors(self):
        c = Protocol(CLIENT)
        c.send_text("Hello")
        c.send_pong(b"Hello")
        assert c.data_to_send() == [h("818537fa213d7f9f4d5158"), h("8a8537fa213d7f9f4d5158")]
        s = Protocol(SERVER)
        s.send_text("Hello")
        s.send_ping("Hello")
        s.send_text("Hello", fragment_size=3)
        assert s.data_to_send() == [h("810548656c6c6f"), h("890548656c6c6f"), h("010348656c80026c6f")]

    def test_two_masked_frames_in_one_read(self):
        s = Protocol(SERVER)
        s.receive_data(masked(2, b"a" * 16) + masked(1, b"b" * 16) + masked(2, b"c" * 200))
        assert s.events_received() == [BinaryMessage(b"a" * 16), TextMessage("b" * 16), BinaryMessage(b"c" * 200)]


class TestFraming52:
    """§5.2-§5.5: what a frame may be; every violation fails the connection with 1002."""

    @pytest.mark.parametrize("data", [
        "c10548656c6c6f",        # RSV1 without an extension
        "a100", "9100",          # RSV2, RSV3
        "8300", "8b00",          # reserved opcodes
        "0900",                  # fragmented ping
        "897e007e" + "00" * 126,  # ping of 126 bytes
        "80026c6f",              # continuation without a message
        "827f8000000000000000",  # 64-bit length with the most significant bit
    ])
    def test_protocol_errors_client(self, data):
        c = Protocol(CLIENT, max_size=None)
        c.receive_data(h(data))
        failed_with(c, 1002)
        assert c.events_received() == []

    def test_non_minimal_length_is_read(self):
        # §5.2's "minimal number of bytes" binds senders; like python-websockets we read it.
        c = Protocol(CLIENT)
        c.receive_data(h("827e0005") + b"\0" * 5)
        assert c.events_received() == [BinaryMessage(b"\0" * 5)]

    def test_data_frame_inside_fragmented_message(self):
        c = Protocol(CLIENT)
        c.receive_data(h("010348656c") + h("81026c6f"))
        failed_with(c, 1002)

    def test_ping_between_fragments(self):
        c = Protocol(CLIENT)
        c.receive_data(h("010348656c") + h("8900") + h("80026c6f"))
        assert c.events_received() == [Ping(b""), TextMessage("Hello")]
        assert c.data_to_send() == [h("8a8037fa213d")]

    def test_server_requires_masked_frames(self):
        s = Protocol(SERVER)
        s.receive_data(h("810548656c6c6f"))
        out = failed_with(s, 1002)
        assert out[0] == Frame(0x8, h("03ea") + b"unmasked frame from a client").pack()
        assert "unmasked" in str(s.error)

    def test_client_refuses_masked_frames(self):
        c = Protocol(CLIENT)
        c.receive_data(h("818537fa213d7f9f4d5158"))
        failed_with(c, 1002)

    def test_nothing_processed_after_failing(self):
        s = Protocol(SERVER)
        s.receive_data(h("8300") + masked(1, b"late"))
        failed_with(s, 1002)
        s.receive_data(masked(9, b"ping"))
        assert s.events_received() == [] and s.data_to_send() == []
        s.receive_eof()
        assert s.state is CLOSED and s.close_code == 1002 and s.data_to_send() == []

    def test_control_frame_with_rsv_under_an_extension(self):
        c = Protocol(CLIENT, extensions=[DeflateMessageCodec()])
        c.receive_data(h("c900"))
        failed_with(c, 1002)

    def test_rsv_bit_no_codec_owns(self):
        c = Protocol(CLIENT, extensions=[DeflateMessageCodec()])
        c.receive_data(h("a100"))
        failed_with(c, 1002)

    def test_frame_split_at_every_byte(self):
        for side in (SERVER, CLIENT):
            data = (frame_for(side, 1, "Hé".encode(), final=False) + frame_for(side, 9, b"p")
                    + frame_for(side, 0, b"llo") + frame_for(side, 2, b"\x00" * 300)
                    + frame_for(side, 0xA, b"q") + frame_for(side, 2, b"x" * 70000))
            whole = Protocol(side)
            whole.receive_data(data)
            split = Protocol(side)
            bytewise(split, data)
            expected = [Ping(b"p"), TextMessage("Héllo"), BinaryMessage(b"\0" * 300), Pong(b"q"),
                        BinaryMessage(b"x" * 70000)]
            assert whole.events_received() == expected == split.events_received()
            assert whole.data_to_send() == split.data_to_send() == [frame_for(
                CLIENT if side is SERVER else SERVER, 0xA, b"p") if side is CLIENT else plain(0xA, b"p")]

    def test_large_masked_frame_in_odd_chunks(self):
        payload = bytes(range(256)) * 40
        data = masked(2, payload)
        s = Protocol(SERVER)
        for i in range(0, len(data), 7):
            s.receive_data(data[i:i + 7])
        assert s.events_received() == [BinaryMessage(payload)]

    def test_incomplete_extended_lengths_wait(self):
        c = Protocol(CLIENT)
        for part in (h("82"), h("7e"), h("01"), h("00") + b"a" * 255, b"b"):
            c.receive_data(part)
        c.receive_data(h("827f00000000"))
        c.receive_data(h("0001") + h("0000") + b"c" * 65536)
        assert c.events_received() == [BinaryMessage(b"a" * 255 + b"b"), BinaryMessage(b"c" * 65536)]
        s = Protocol(SERVER)
        data = masked(9, b"ping")
        s.receive_data(data[:3])  # masking key incomplete
        s.receive_data(data[3:8])  # control payload incomplete
        s.receive_data(data[8:])
        assert s.events_received() == [Ping(b"ping")]

    def test_buffer_compacts_between_reads(self):
        # 80 kB of compressed frames then half a frame: the parsed bytes are dropped.
        codec_s, codec_c = DeflateMessageCodec(threshold=0), DeflateMessageCodec(threshold=0)
        s, c = pair([codec_s], [codec_c])
        for i in range(3000):
            c.send_text("message %05d, not compressed" % i, compress=False)
        data = b"".join(c.data_to_send())
        c.send_text("last one")
        last = c.data_to_send()[0]
        assert len(data) > 65536
        s.receive_data(data + last[:4])
        s.receive_data(last[4:])
        events = s.events_received()
        assert len(events) == 3001 and events[-1] == TextMessage("last one")


class TestUTF8:
    """§5.6, §8.1: text is UTF-8, checked as it arrives (1007)."""

    def test_invalid_single_frame(self):
        c = Protocol(CLIENT)
        c.receive_data(h("8101ff"))
        failed_with(c, 1007)

    def test_character_split_across_fragments(self):
        c = Protocol(CLIENT)
        c.receive_data(h("0101ce"))
        c.receive_data(h("8001ba"))
        assert c.events_received() == [TextMessage("κ")]

    def test_fail_fast_on_a_fragment(self):
        c = Protocol(CLIENT)
        c.receive_data(h("0105cebae1bdb9"))
        c.receive_data(h("0002f490"))
        failed_with(c, 1007)

    def test_fail_fast_inside_a_frame_still_arriving(self):
        s = Protocol(SERVER)
        data = masked(1, b"ok" + b"\xff" + b"x" * 100000)
        s.receive_data(data[:20])
        failed_with(s, 1007)

    def test_truncated_character_at_the_end(self):
        s = Protocol(SERVER)
        s.receive_data(masked(1, b"abc\xce", final=False) + masked(0, b""))
        failed_with(s, 1007)

    def test_streamed_text_and_empty_fragments(self):
        s = Protocol(SERVER)
        text = "añb€c" * 1000
        data = masked(1, b"", final=False) + masked(0, text.encode(), final=False) + masked(0, b"")
        for i in range(0, len(data), 1000):
            s.receive_data(data[i:i + 1000])
        assert s.events_received() == [TextMessage(text)]

    def test_empty_messages(self):
        c = Protocol(CLIENT)
        c.receive_data(h("8100") + h("8200") + h("0100") + h("8000") + h("0200") + h("8000"))
        assert c.events_received() == [TextMessage(""), BinaryMessage(b""), TextMessage(""), BinaryMessage(b"")]


class TestLimits:
    """max_size (1009), fragments per message, compressed bytes per message, no allocation
    from an announced length (issue 20 items 1, 3 and 7)."""

    def test_frame_over_max_size_fails_from_its_header(self):
        s = Protocol(SERVER, max_size=1000)
        s.receive_data(masked(2, b"x" * 1001)[:8])
        out = failed_with(s, 1009)
        assert isinstance(s.error, PayloadTooBig)
        assert out[0][2:4] == h("03f1")

    def test_huge_announcement_fails_at_once(self):
        c = Protocol(CLIENT)
        c.receive_data(h("827f4000000000000000"))
        failed_with(c, 1009)

    def test_announced_length_is_not_allocated(self):
        s = Protocol(SERVER, max_size=64 << 20)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            s.receive_data(h("82ff000000000200000037fa213d"))  # 32 MiB announced, masked
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 64 * 1024
        assert s.state is OPEN and s.events_received() == []

    def test_fragmented_message_over_max_size(self):
        s = Protocol(SERVER, max_size=10)
        s.receive_data(masked(2, b"x" * 6, final=False))
        s.receive_data(masked(0, b"y" * 5)[:6])  # the header is enough
        failed_with(s, 1009)

    def test_exactly_max_size(self):
        s = Protocol(SERVER, max_size=10)
        s.receive_data(masked(2, b"x" * 4, final=False) + masked(0, b"y" * 6))
        assert s.events_received() == [BinaryMessage(b"xxxxyyyyyy")]
        s.receive_data(masked(1, b"z" * 10))
        assert s.events_received() == [TextMessage("z" * 10)]

    def test_no_limit(self):
        c = Protocol(CLIENT, max_size=None, max_fragments=None)
        c.receive_data(h("827f0000000000200000") + b"x" * (2 << 20))
        assert c.events_received() == [BinaryMessage(b"x" * (2 << 20))]

    def test_fragments_per_message(self):
        s = Protocol(SERVER, max_fragments=3)
        s.receive_data(masked(2, b"", final=False) + masked(0, b"", final=False) + masked(0, b""))
        assert s.events_received() == [BinaryMessage(b"")]
        s.receive_data(masked(2, b"", final=False) + masked(0, b"", final=False) + masked(0, b"", final=False))
        assert s.state is OPEN
        s.receive_data(masked(0, b"", final=False))
        failed_with(s, 1009)

    def test_many_empty_continuations_cost_no_memory(self):
        s = Protocol(SERVER, max_fragments=None)
        empty = masked(0, b"", final=False)
        s.receive_data(masked(2, b"a", final=False))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            chunk = empty * 1000
            for _ in range(5):
                s.receive_data(chunk)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 64 * 1024
        s.receive_data(masked(0, b"b"))
        assert s.events_received() == [BinaryMessage(b"ab")]

    def test_inflated_over_max_size(self):
        s = Protocol(SERVER, max_size=1000, extensions=[DeflateMessageCodec()])
        bomb = DeflateMessageCodec(threshold=0).encode_message(2, b"\0" * 100000)[0]
        assert len(bomb) < 1000
        s.receive_data(masked(2, bomb, rsv1=True))
        failed_with(s, 1009)

    def test_compressed_bytes_per_message(self):
        # Empty stored blocks (sync flushes) inflate to nothing: only the wire count stops them.
        s = Protocol(SERVER, max_size=1000, extensions=[DeflateMessageCodec()])
        s.receive_data(masked(2, h("0000ffff00") * 120, rsv1=True, final=False))
        assert s.state is OPEN
        s.receive_data(masked(0, h("0000ffff00") * 120, final=False))
        failed_with(s, 1009)

    def test_repeated_final_deflate_blocks(self):
        # One restart after a final block is tolerated; a second is corrupt data (1007).
        s = Protocol(SERVER, max_size=1000, extensions=[DeflateMessageCodec()])
        s.receive_data(masked(2, h("0300") * 300, rsv1=True, final=False))
        failed_with(s, 1007)

    def test_compressed_frame_a_little_over_max_size(self):
        """Incompressible data grows a little when deflated: a compressed frame of slightly more
        than max_size bytes is buffered (up to max_size + 1/256 + 64 bytes, checked from its
        header) and its message judged on its inflated size (Node ws interop, 16 MiB random)."""
        data = random.Random(7).randbytes(4097)
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        wire = (deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert 4096 < len(wire) <= 4096 + 16 + 64
        s = Protocol(SERVER, max_size=4097, extensions=[DeflateMessageCodec()])
        s.receive_data(masked(2, wire, rsv1=True))
        assert s.events_received() == [BinaryMessage(data)]  # exactly max_size once inflated
        s = Protocol(SERVER, max_size=4096, extensions=[DeflateMessageCodec()])
        s.receive_data(masked(2, wire, rsv1=True))
        failed_with(s, 1009)  # one byte over once inflated
        assert "inflated" in s.error.message
        s = Protocol(SERVER, max_size=4096, extensions=[DeflateMessageCodec()])
        s.receive_data(masked(2, b"x" * (4096 + 16 + 65), rsv1=True)[:8])  # the header is enough
        failed_with(s, 1009)
        assert s.error.message.startswith("frame of 4177 bytes")

    def test_uncompressed_message_under_compression_over_max_size(self):
        s = Protocol(SERVER, max_size=10, extensions=[DeflateMessageCodec()])
        s.receive_data(masked(2, b"x" * 11))
        failed_with(s, 1009)


class TestClosing7:
    """§7: the closing handshake in both orders, on both sides, and its failures."""

    def test_server_closes_first(self):
        s, c = pair()
        s.send_close(1000, "bye")
        assert s.state is CLOSING and s.close_expected() and s.close_sent == Close(1000, "bye")
        assert s.data_to_send() == [h("880503e8627965")]
        with pytest.raises(InvalidState):
            s.send_text("late")
        c.receive_data(h("880503e8627965"))
        assert c.events_received() == [Close(1000, "bye")]
        assert c.state is CLOSING and c.close_expected()
        assert c.data_to_send() == [h("888237fa213d3412")]  # the echo; the client waits for TCP
        s.receive_data(h("888237fa213d3412"))
        assert s.events_received() == [Close(1000, "")]
        assert s.data_to_send() == [b""]  # §7.1.1: the server closes TCP first
        c.receive_eof()
        assert c.state is CLOSED and c.data_to_send() == [b""]
        assert (c.close_code, c.close_reason) == (1000, "bye")
        s.receive_eof()
        assert s.state is CLOSED and s.data_to_send() == [] and s.close_code == 1000

    def test_client_closes_first(self):
        s, c = pair()
        c.send_close(1001, "going")
        relay(c, s)
        assert s.events_received() == [Close(1001, "going")]
        assert s.data_to_send() == [h("880203e9"), b""]
        s2 = Protocol(SERVER)
        s2.receive_data(masked(8, h("03e9") + b"going"))
        relay(s2, c)
        assert c.events_received() == [Close(1001, "")]
        assert c.state is CLOSED and c.close_rcvd == Close(1001, "") and c.close_sent == Close(1001, "going")
        assert c.data_to_send() == [b""]
        assert not c.close_expected()

    def test_simultaneous_close(self):
        s, c = pair()
        s.send_close(1000)
        c.send_close(1001)
        out_s, out_c = s.data_to_send(), c.data_to_send()
        for data in out_c:
            s.receive_data(data)
        for data in out_s:
            c.receive_data(data)
        assert s.events_received() == [Close(1001, "")] and c.events_received() == [Close(1000, "")]
        assert s.data_to_send() == [b""] and c.data_to_send() == []
        assert s.close_code == 1001 and c.close_code == 1000

    def test_close_without_code(self):
        for side, reply in ((SERVER, h("8800")), (CLIENT, h("888037fa213d"))):
            p = Protocol(side)
            bytewise(p, frame_for(side, 8) + frame_for(side, 1, b"ignored"))
            assert p.events_received() == [Close(1005, "")]
            assert p.data_to_send()[0] == reply
            assert p.close_code == 1005

    def test_send_close_without_code(self):
        s = Protocol(SERVER)
        s.send_close(None)
        assert s.data_to_send() == [h("8800")] and s.close_sent == Close(1005, "")

    @pytest.mark.parametrize("payload, code", [
        ("03", 1002), ("03ed", 1002), ("03e7", 1002), ("03ec", 1002), ("03ee", 1002), ("03f7", 1002),
        ("1388", 1002), ("03e8ff", 1007)])
    def test_invalid_close_frames(self, payload, code):
        c = Protocol(CLIENT)
        c.receive_data(plain(8, h(payload)))
        failed_with(c, code)
        assert c.close_rcvd is None

    @pytest.mark.parametrize("code", [3000, 4999, 1000, 1014])
    def test_valid_close_codes(self, code):
        c = Protocol(CLIENT)
        c.receive_data(plain(8, code.to_bytes(2, "big")))
        assert c.events_received() == [Close(code, "")]

    def test_send_close_checks_its_arguments(self):
        s = Protocol(SERVER)
        for code, reason in ((1006, ""), (999, ""), (1000, "x" * 124)):
            with pytest.raises(ValueError):
                s.send_close(code, reason)
        assert s.state is OPEN and s.data_to_send() == []
        s.send_close(4000, "é" * 61)
        with pytest.raises(InvalidState):
            s.send_close()

    def test_eof_without_close_frame(self):
        for side in (SERVER, CLIENT):
            p = Protocol(side)
            p.receive_data(frame_for(side, 1, b"partial", final=False))
            p.receive_eof()
            assert p.state is CLOSED and p.close_code == 1006 and p.close_rcvd is None
            assert p.events_received() == [] and p.data_to_send() == [b""]
            p.receive_eof()  # again: nothing more
            p.receive_data(frame_for(side, 1, b"after"))
            assert p.events_received() == [] and p.data_to_send() == []
            with pytest.raises(InvalidState):
                p.send_binary(b"x")

    def test_messages_delivered_while_closing_but_no_pong(self):
        s = Protocol(SERVER)
        s.send_close()
        s.data_to_send()
        s.receive_data(masked(1, b"still") + masked(9, b"ping") + masked(8, h("03e8")) + masked(1, b"ignored"))
        assert s.events_received() == [TextMessage("still"), Ping(b"ping"), Close(1000, "")]
        assert s.data_to_send() == [b""]

    def test_data_after_the_close_frame_is_ignored(self):
        c = Protocol(CLIENT)
        c.receive_data(plain(8, h("03e8")) + plain(1, b"ignored"))
        assert c.events_received() == [Close(1000, "")]
        c.receive_data(plain(1, b"ignored too"))
        assert c.events_received() == []
        s = Protocol(SERVER)
        bytewise(s, masked(8, h("03e9") + b"bye") + masked(1, b"ignored"))
        assert s.events_received() == [Close(1001, "bye")] and s.data_to_send() == [h("880203e9"), b""]

    def test_fail(self):
        s = Protocol(SERVER)
        s.fail(1011, "handler crashed")
        assert s.data_to_send() == [plain(8, h("03f3") + b"handler crashed"), b""]
        assert s.state is CLOSING and s.close_code == 1011 and s.error is None
        s.fail(1002)  # again: nothing more to send
        assert s.data_to_send() == [] and s.close_code == 1011
        s.receive_eof()
        s.fail(1002)
        assert s.state is CLOSED and s.data_to_send() == [] and s.close_code == 1011

    def test_fail_long_reason_is_cut(self):
        c = Protocol(CLIENT)
        c.fail(1008, "é" * 100)
        [data] = c.data_to_send()
        assert len(protocol_unmask(data)) == 2 + 122 and c.close_reason == "é" * 100

    def test_fail_1006_sends_no_frame(self):
        c = Protocol(CLIENT)
        c.fail(1006)
        assert c.data_to_send() == [] and c.state is CLOSING and c.close_code == 1006
        s = Protocol(SERVER)
        s.fail(1006)
        assert s.data_to_send() == [b""]

    def test_fail_after_close_sent(self):
        s = Protocol(SERVER)
        s.send_close()
        s.data_to_send()
        s.receive_data(h("8300"))  # garbage while waiting for the close frame
        assert s.data_to_send() == [b""] and s.close_code == 1002 and s.state is CLOSING


class TestSending:
    def test_states(self):
        p = Protocol(CLIENT, state=CONNECTING)
        for call in (lambda: p.send_text("x"), lambda: p.send_ping(), lambda: p.send_close()):
            with pytest.raises(InvalidState):
                call()

    def test_arguments(self):
        s = Protocol(SERVER)
        with pytest.raises(ValueError):
            s.send_ping(b"x" * 126)
        with pytest.raises(ValueError):
            s.send_binary(b"abc", fragment_size=0)
        s.send_binary(bytearray(b"ab"))
        s.send_binary(memoryview(b"cd"), fragment_size=1)
        s.send_pong(bytearray(b"p"))
        s.send_binary(b"", fragment_size=4)
        assert s.data_to_send() == [h("82026162"), h("0201638001") + b"d", h("8a0170"), h("8200")]

    def test_encode_returns_bytes(self):
        c = Protocol(CLIENT)
        assert c.encode_text("Hello") == h("818537fa213d7f9f4d5158")
        assert c.encode_binary(bytearray(b"\x01")) == masked(2, b"\x01")
        assert c.data_to_send() == []
        s = Protocol(SERVER)
        assert s.encode_binary(b"x" * 200) == plain(2, b"x" * 200)

    def test_receive_message_fused(self):
        s = Protocol(SERVER)
        assert s.receive_message(masked(2, b"bin")) == BinaryMessage(b"bin")
        assert s.receive_message(masked(1, "é".encode())) == TextMessage("é")
        assert s.receive_message(masked(1, b"a") + masked(1, b"b")) is None
        assert s.events_received() == [TextMessage("a"), TextMessage("b")]
        assert s.receive_message(masked(9)) is None
        assert s.events_received() == [Ping(b"")] and s.data_to_send() == [h("8a00")]
        assert s.receive_message(masked(1, b"\xff")) is None
        failed_with(s, 1007)
        assert s.receive_message(masked(1, b"x")) is None and s.events_received() == []

    def test_fast_path_invalid_utf8_in_a_read_of_one_frame(self):
        s = Protocol(SERVER)
        s.receive_data(masked(1, b"\xc0\xaf"))
        failed_with(s, 1007)


class TestPermessageDeflate:
    """RFC 7692 running inside the core (the spec notes' vectors, §7.2.3)."""

    def codec(self, **kw):
        return DeflateMessageCodec(threshold=0, **kw)

    def test_receive_vectors(self):
        s = Protocol(SERVER, extensions=[self.codec()])
        s.receive_data(h("c18737fa213dc5b2ecf4fefd21"))
        assert s.events_received() == [TextMessage("Hello")]
        c = Protocol(CLIENT, extensions=[self.codec()])
        c.receive_data(h("4103f248cd"))
        c.receive_data(h("8004c9c90700"))
        c.receive_data(h("c105f200110000"))  # context takeover
        c.receive_data(h("c10b000500faff48656c6c6f00"))  # a stored block
        c.receive_data(h("c10100"))  # empty message
        assert c.events_received() == [TextMessage("Hello")] * 3 + [TextMessage("")]

    def test_send_vectors(self):
        s = Protocol(SERVER, extensions=[self.codec()])
        s.send_text("Hello")
        s.send_text("Hello")
        s.send_text("Hello", compress=False)
        s.send_binary(bytes(range(100)), fragment_size=5)
        out = s.data_to_send()
        assert out[:3] == [h("c107f248cdc9c90700"), h("c105f200110000"), h("810548656c6c6f")]
        c = Protocol(CLIENT, extensions=[self.codec()])
        c.receive_data(b"".join(out))
        assert c.events_received() == [TextMessage("Hello")] * 3 + [BinaryMessage(bytes(range(100)))]
        assert out[3][0] == 0x42  # RSV1 on the first fragment only

    def test_errors(self):
        for data, code in ((h("4103f248cd") + h("c000"), 1002), (h("c102ffff"), 1007)):
            c = Protocol(CLIENT, extensions=[self.codec()])
            c.receive_data(data)
            failed_with(c, code)

    def test_round_trip_both_sides_bytewise(self):
        s, c = pair([self.codec()], [self.codec()])
        texts = ["Hello", "Hello", "é" * 500, ""]
        for text in texts:
            c.send_text(text, fragment_size=100)
            s.send_text(text)
        for data in c.data_to_send():
            bytewise(s, data)
        for data in s.data_to_send():
            bytewise(c, data)
        assert s.events_received() == [TextMessage(t) for t in texts] == c.events_received()

    def test_codec_state_freed_at_eof(self):
        codec = self.codec()
        s = Protocol(SERVER, extensions=[codec])
        s.send_text("Hello" * 10)
        s.receive_eof()
        assert s.state is CLOSED and repr(codec)


class TestDeflateFrame:
    """deflate-frame: compression per frame, RSV1 on continuations too."""

    def test_round_trip_fragmented(self):
        s, c = pair([DeflateFrameCodec(threshold=0)], [DeflateFrameCodec(threshold=0)])
        payload = b"abcabcabc" * 100
        c.send_binary(payload, fragment_size=300)
        out = c.data_to_send()
        assert out[0][0] == 0x42 and out[0][4 + 4:].count(b"abc") == 0  # compressed, masked
        bytewise(s, out[0])
        assert s.events_received() == [BinaryMessage(payload)]
        s.send_text("hello " * 10)
        s.send_ping(b"p")
        relay(s, c)
        assert c.events_received() == [TextMessage("hello " * 10), Ping(b"p")]

    def test_rsv1_on_control_frame(self):
        c = Protocol(CLIENT, extensions=[DeflateFrameCodec()])
        c.receive_data(h("c900"))
        failed_with(c, 1002)

    def test_inflated_over_max_size(self):
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = bomb.compress(b"\0" * 50000) + bomb.flush(zlib.Z_SYNC_FLUSH)
        c = Protocol(CLIENT, max_size=1000, extensions=[DeflateFrameCodec()])
        c.receive_data(plain(2, data[:-4], rsv1=True))
        failed_with(c, 1009)

    def test_other_codecs_run_in_order(self):
        class Upper(ExtensionCodec):
            name, rsv, per_frame = "upper", 0x20, False

            def encode_message(self, opcode, payload, compress=True):
                return payload.upper(), 0x20

            def decode_frame_of_message(self, payload, first_rsv, final, max_size):
                return payload.lower() if first_rsv & 0x20 else payload

        class Double(ExtensionCodec):
            name, rsv, per_frame = "double", 0, False

            def decode_frame_of_message(self, payload, first_rsv, final, max_size):
                return payload * 2

        s = Protocol(SERVER, max_size=10, extensions=[Double()])
        s.receive_data(masked(2, b"abcd"))
        assert s.events_received() == [BinaryMessage(b"abcdabcd")]
        s.receive_data(masked(2, b"abcdef"))
        failed_with(s, 1009)  # checked after the codecs: they may expand

        s, c = pair([Upper()], [Upper()])
        c.send_text("MiXeD")
        sent = c.data_to_send()
        assert sent[0][0] == 0xA1
        s.receive_data(sent[0])
        assert s.events_received() == [TextMessage("mixed")]


def upgrade_request(**headers) -> bytes:
    lines = {"Host": "example.com", "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    lines.update({k.replace("_", "-"): v for k, v in headers.items()})
    head = "GET /chat HTTP/1.1\r\n" + "".join("%s: %s\r\n" % kv for kv in lines.items() if kv[1] is not None)
    return (head + "\r\n").encode()


def handshake_pair(server_options=None, client_options=None):
    s = ServerProtocol(**(server_options or {}))
    c = ClientProtocol(host="example.com", location="/chat", **(client_options or {}))
    relay(c, s)
    relay(s, c)
    return s, c


class TestServerHandshake4:
    """§4.2: the server reads the request, answers 101 or an HTTP error."""

    def test_rfc_example(self):
        s = ServerProtocol(address=("127.0.0.1", 5))
        assert s.state is CONNECTING
        s.receive_data(upgrade_request())
        [request] = s.events_received()
        assert isinstance(request, Request) and request.path == "/chat" and request.address == ("127.0.0.1", 5)
        [response] = s.data_to_send()
        assert response.startswith(b"HTTP/1.1 101 ") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in response
        assert s.state is OPEN and s.request is request

    def test_head_in_pieces_then_frames_behind_it(self):
        s = ServerProtocol()
        data = upgrade_request() + masked(1, b"early") + masked(2, b"x" * 10)[:5]
        bytewise(s, data[:len(data) - 30])
        s.receive_data(data[len(data) - 30:])
        events = s.events_received()
        assert isinstance(events[0], Request) and events[1:] == [TextMessage("early")]
        s.receive_data(masked(2, b"x" * 10)[5:])
        assert s.events_received() == [BinaryMessage(b"x" * 10)]

    def test_negotiation(self):
        s, c = handshake_pair(
            dict(protocols=["chat", "superchat"], extensions=[DeflateMessage()]),
            dict(protocols=["superchat", "chat"], extensions=[DeflateMessage()]))
        assert s.state is OPEN and c.state is OPEN
        assert s.subprotocol == c.subprotocol == "superchat"
        assert [type(x) for x in s.extensions] == [DeflateMessageCodec] == [type(x) for x in c.extensions]
        c.send_text("Hello" * 20)
        relay(c, s)
        assert s.events_received()[1:] == [TextMessage("Hello" * 20)]

    def test_deflate_frame_negotiated(self):
        s, c = handshake_pair(dict(extensions=[DeflateFrame()]), dict(extensions=[DeflateFrame()]))
        assert [type(x) for x in c.extensions] == [DeflateFrameCodec]
        s.send_binary(b"z" * 1000)
        relay(s, c)
        assert c.events_received()[1:] == [BinaryMessage(b"z" * 1000)]

    @pytest.mark.parametrize("request_bytes, status", [
        (b"garbage\r\n\r\n", 400),
        (upgrade_request().replace(b"GET", b"POST"), 405),
        (upgrade_request(Upgrade=None), 426),
        (upgrade_request(Sec_WebSocket_Version="8"), 426),
        (upgrade_request(Sec_WebSocket_Key="short"), 400),
        (upgrade_request(Origin="http://evil.example"), 403),
        (upgrade_request(X_Big="x" * 20000), 431),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 20000, 431),
        (upgrade_request().replace(b"Upgrade\r\n", b"Upgrade\n", 1), 400),  # a bare LF (RFC 9112 §2.2)
    ])
    def test_refusals(self, request_bytes, status):
        s = ServerProtocol(trusted_origins=["http://example.com"])
        s.receive_data(request_bytes)
        out = s.data_to_send()
        assert out[0].startswith(b"HTTP/1.1 %d " % status) and out[-1] == b""
        assert s.state is CLOSED and isinstance(s.handshake_exc, HandshakeError)
        assert s.handshake_exc.status == status
        s.receive_data(b"more")
        assert s.data_to_send() == [] and not s.close_expected()

    def test_process_request(self):
        seen = []

        def hook(request):
            seen.append(request.path)
            return None if request.headers.get("Authorization") else (404, "nothing here")

        s = ServerProtocol(process_request=hook)
        s.receive_data(upgrade_request())
        out = s.data_to_send()
        assert out[0].startswith(b"HTTP/1.1 404 ") and out[0].endswith(b"nothing here") and out[1] == b""
        assert s.handshake_exc is not None and s.handshake_exc.status == 404
        s = ServerProtocol(process_request=hook)
        s.receive_data(upgrade_request(Authorization="Basic eDp5"))
        assert s.state is OPEN and seen == ["/chat", "/chat"]

    @pytest.mark.parametrize("error, status", [(HandshakeError("no", 401), 401), (RuntimeError("bug"), 500)])
    def test_process_request_raising(self, error, status):
        def hook(request):
            raise error

        s = ServerProtocol(process_request=hook)
        s.receive_data(upgrade_request())
        assert s.data_to_send()[0].startswith(b"HTTP/1.1 %d " % status) and s.state is CLOSED

    @pytest.mark.parametrize("error", [KeyError("bug"), SystemExit(3)])
    def test_select_subprotocol_raising(self, error):
        def select(client, server):
            raise error

        s = ServerProtocol(protocols=["a"], select_subprotocol=select)
        s.receive_data(upgrade_request(Sec_WebSocket_Protocol="a"))
        assert s.data_to_send()[0].startswith(b"HTTP/1.1 500 ") and s.handshake_exc.status == 500

    def test_keep_rest(self):
        # For a shell that parses frames itself: what follows the head is handed over, unparsed.
        frames = masked(1, b"early") + masked(2, b"x" * 10)[:5]
        s = ServerProtocol(keep_rest=True)
        assert s.rest == b""
        bytewise(s, upgrade_request()[:-1])
        s.receive_data(upgrade_request()[-1:] + frames)
        assert s.state is OPEN and s.rest == frames and s.buffered() == b""
        assert [type(e) for e in s.events_received()] == [Request]
        s2 = ServerProtocol(keep_rest=True)
        s2.receive_data(upgrade_request())
        assert s2.state is OPEN and s2.rest == b""

    def test_reject(self):
        s = ServerProtocol()
        s.reject(503, "busy", [("Retry-After", "1")])
        out = s.data_to_send()
        assert out[0].startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in out[0] and out[0].endswith(b"busy")
        assert out[1] == b"" and s.state is CLOSED
        with pytest.raises(InvalidState):
            s.reject(503)
        s2 = ServerProtocol()
        s2.reject(429)
        assert s2.data_to_send()[0].startswith(b"HTTP/1.1 429 ")

    def test_eof_during_handshake(self):
        s = ServerProtocol()
        s.receive_data(b"GET / HTTP/1.1\r\n")
        s.receive_eof()
        assert s.state is CLOSED and s.close_code == 1006 and s.data_to_send() == [b""]
        assert isinstance(s.handshake_exc, HandshakeError)

    def test_fail_during_handshake(self):
        for p in (ServerProtocol(), ClientProtocol(host="h")):
            p.data_to_send()
            p.fail(1011)
            assert p.state is CLOSED and p.data_to_send() == [b""]

    def test_protocol_without_handshake(self):
        p = Protocol(SERVER, state=CONNECTING)
        with pytest.raises(InvalidState):
            p.receive_data(b"GET / HTTP/1.1\r\n\r\n")


def response_bytes(status=101, key="dGhlIHNhbXBsZSBub25jZQ==", body=b"", **headers) -> bytes:
    lines = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_key(key)}
    lines.update({k.replace("_", "-"): v for k, v in headers.items()})
    head = "HTTP/1.1 %d X\r\n" % status + "".join("%s: %s\r\n" % kv for kv in lines.items() if kv[1] is not None)
    return (head + "\r\n").encode() + body


class TestClientHandshake4:
    """§4.1: the client sends the request and checks the answer."""

    def client(self, **options):
        return ClientProtocol(host="example.com", key="dGhlIHNhbXBsZSBub25jZQ==", **options)

    def test_request_queued_at_once(self):
        c = self.client(location="/chat?x=1", origin="http://example.com", protocols=["chat"],
                        headers=[("X-Token", "t")])
        [request] = c.data_to_send()
        assert request.startswith(b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\n")
        for line in (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Origin: http://example.com",
                     b"Sec-WebSocket-Protocol: chat", b"X-Token: t"):
            assert line in request
        assert c.state is CONNECTING and len(ClientProtocol(host="h").key) == 24

    def test_101_then_frames_right_behind(self):
        c = self.client()
        c.data_to_send()
        bytewise(c, response_bytes() + plain(1, b"hi"))
        events = c.events_received()
        assert isinstance(events[0], Response) and events[0].status == 101
        assert events[1:] == [TextMessage("hi")] and c.state is OPEN and c.response is events[0]

    def test_keep_rest(self):
        c = self.client(keep_rest=True)
        c.receive_data(response_bytes() + plain(1, b"hi"))
        assert c.state is OPEN and c.rest == plain(1, b"hi")
        assert [type(e) for e in c.events_received()] == [Response]

    def test_refused_with_body_in_pieces(self):
        c = self.client()
        data = response_bytes(403, body=b"go away", Content_Length="7")
        c.receive_data(data[:-3])
        assert c.events_received() == [] and c.state is CONNECTING
        c.receive_data(data[-3:])
        [response] = c.events_received()
        assert response.status == 403 and response.body == b"go away"
        assert c.state is CLOSED and c.data_to_send()[-1] == b""
        exc = c.handshake_exc
        assert exc is not None and exc.status == 403 and exc.body == b"go away"

    def test_refused_body_cut_by_eof(self):
        c = self.client()
        c.receive_data(response_bytes(500, body=b"oops", Content_Length="100"))
        assert c.state is CONNECTING
        c.receive_eof()
        assert c.state is CLOSED and c.handshake_exc.status == 500 and c.handshake_exc.body == b"oops"

    def test_refused_without_or_with_bad_length(self):
        for length in (None, "nope"):
            c = self.client()
            c.receive_data(response_bytes(404, Content_Length=length))
            assert c.state is CLOSED and c.handshake_exc.status == 404 and c.handshake_exc.body == b""

    @pytest.mark.parametrize("data", [
        response_bytes(Sec_WebSocket_Accept="wrong"),
        response_bytes(Upgrade=None),
        b"NOT HTTP\r\n\r\n",
    ])
    def test_bad_answers(self, data):
        c = self.client()
        c.data_to_send()
        c.receive_data(data)
        assert c.state is CLOSED and isinstance(c.handshake_exc, HandshakeError)
        assert not isinstance(c.handshake_exc, NegotiationError)
        assert c.data_to_send() == [b""]

    def test_failed_negotiation_sends_1010(self):
        c = self.client(protocols=["chat"])
        c.data_to_send()
        c.receive_data(response_bytes(Sec_WebSocket_Extensions="permessage-deflate"))
        out = c.data_to_send()
        assert out[0][:2] == h("88c5") and protocol_unmask(out[0])[:2] == h("03f2") and out[1] == b""
        assert isinstance(c.handshake_exc, NegotiationError) and c.handshake_exc.status == 101
        c2 = self.client(protocols=["chat"])
        c2.receive_data(response_bytes(Sec_WebSocket_Protocol="other"))
        assert isinstance(c2.handshake_exc, NegotiationError)

    def test_eof_during_handshake(self):
        c = self.client()
        c.data_to_send()
        c.receive_eof()
        assert c.state is CLOSED and isinstance(c.handshake_exc, HandshakeError)
        assert c.data_to_send() == [b""]

    def test_head_too_large(self):
        c = self.client(max_header_size=100)
        c.receive_data(response_bytes(X_Big="x" * 200))
        assert c.state is CLOSED and c.handshake_exc.status == 431


class TestPairs:
    """Both sides driven against each other through bytes only."""

    def test_conversation_and_close(self):
        s, c = handshake_pair()
        c.events_received()
        s.events_received()
        c.send_text("ping?")
        c.send_ping(b"1")
        relay(c, s)
        assert s.events_received() == [TextMessage("ping?"), Ping(b"1")]
        s.send_binary(b"pong!")
        relay(s, c)  # the automatic pong and the message
        assert c.events_received() == [Pong(b"1"), BinaryMessage(b"pong!")]
        c.send_close(1000, "done")
        relay(c, s)
        relay(s, c)  # the echo, then EOF
        assert c.state is CLOSED and c.close_code == 1000
        relay(c, s)  # the client's EOF
        assert s.state is CLOSED and s.close_code == 1000 and s.close_reason == "done"


class TestAgainstWebsockets:
    """twspy's core against python-websockets' own sans-I/O core, through bytes only."""

    @staticmethod
    def messages(frames):
        """Whole messages from python-websockets' frame events (it delivers frames)."""
        out, parts, opcode = [], [], None
        for frame in frames:
            if not hasattr(frame, "opcode"):  # its handshake Response
                continue
            if frame.opcode.value in (1, 2):
                opcode, parts = frame.opcode.value, []
            if frame.opcode.value in (0, 1, 2):
                parts.append(frame.data)
                if frame.fin:
                    data = b"".join(parts)
                    out.append(TextMessage(data.decode()) if opcode == 1 else BinaryMessage(data))
        return out

    @staticmethod
    def move(src, dst):
        for data in src.data_to_send():
            if data:
                dst.receive_data(data)
            else:
                dst.receive_eof()

    def test_twspy_client_websockets_server(self, monkeypatch):
        monkeypatch.undo()  # real random keys
        from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
        from websockets.server import ServerProtocol as WebsocketsServer

        c = ClientProtocol(host="example.com", location="/chat", protocols=["chat"], extensions=[DeflateMessage()])
        s = WebsocketsServer(subprotocols=["chat"], extensions=[ServerPerMessageDeflateFactory()])
        self.move(c, s)
        [request] = s.events_received()
        s.send_response(s.accept(request))
        self.move(s, c)
        assert c.state is OPEN and c.subprotocol == "chat" and len(c.extensions) == 1
        texts = ["hello " * 20, "é", "", "hello " * 20]
        for text in texts:
            c.send_text(text, fragment_size=10)
        c.send_binary(bytes(range(256)) * 100)
        c.send_ping(b"are you there")
        self.move(c, s)
        events = s.events_received()
        assert self.messages(events) == [TextMessage(t) for t in texts] + [BinaryMessage(bytes(range(256)) * 100)]
        s.send_text(b"bye " * 50)
        self.move(s, c)  # the message and the pong
        assert c.events_received()[1:] == [Pong(b"are you there"), TextMessage("bye " * 50)]
        s.send_close(1001, "going away")
        self.move(s, c)
        assert c.events_received() == [Close(1001, "going away")]
        self.move(c, s)  # the echo
        self.move(s, c)  # the server's EOF
        assert c.state is CLOSED and c.close_code == 1001
        self.move(c, s)
        assert s.state.name == "CLOSED" and s.close_code == 1001

    def test_websockets_client_twspy_server(self, monkeypatch):
        monkeypatch.undo()
        from websockets.client import ClientProtocol as WebsocketsClient
        from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
        from websockets.uri import parse_uri

        c = WebsocketsClient(parse_uri("ws://example.com/chat"), extensions=[ClientPerMessageDeflateFactory()])
        c.send_request(c.connect())
        s = ServerProtocol(extensions=[DeflateMessage()])
        self.move(c, s)
        self.move(s, c)
        assert s.state is OPEN and c.state.name == "OPEN" and c.handshake_exc is None
        c.send_text(("x" * 1000).encode())
        c.send_binary(b"\x00\xff" * 3000)
        c.send_text("κόσμε".encode()[:3], fin=False)
        c.send_continuation("κόσμε".encode()[3:], fin=True)
        self.move(c, s)
        assert s.events_received()[1:] == [TextMessage("x" * 1000), BinaryMessage(b"\x00\xff" * 3000),
                                           TextMessage("κόσμε")]
        s.send_text("y" * 500)
        s.send_binary(b"z" * 70000, fragment_size=4096)
        self.move(s, c)
        assert self.messages(c.events_received()) == [TextMessage("y" * 500), BinaryMessage(b"z" * 70000)]
        c.send_close(1000)
        self.move(c, s)
        self.move(s, c)  # echo and EOF
        assert c.state.name == "CLOSED" and c.close_code == 1000
        assert s.state is CLOSING and s.close_code == 1000


class TestProperties:
    """Any messages, any fragmentation, any split of the byte stream: the same messages out."""

    @given(messages=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8),
           fragment=st.one_of(st.none(), st.integers(1, 64)), cuts=st.lists(st.integers(0, 4000), max_size=12),
           compress=st.booleans(), client_sends=st.booleans())
    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    def test_stream_split_anywhere(self, messages, fragment, cuts, compress, client_sends):
        codecs = ([DeflateMessageCodec(threshold=0)], [DeflateMessageCodec(threshold=0)]) if compress else ((), ())
        s, c = pair(*codecs)
        sender, receiver = (c, s) if client_sends else (s, c)
        for m in messages:
            (sender.send_text if isinstance(m, str) else sender.send_binary)(m, fragment_size=fragment)
        data = b"".join(sender.data_to_send())
        points = sorted({0, len(data), *(x for x in cuts if x < len(data))})
        for a, b in zip(points, points[1:]):
            receiver.receive_data(data[a:b])
        expected = [TextMessage(m) if isinstance(m, str) else BinaryMessage(m) for m in messages]
        assert receiver.events_received() == expected
        assert receiver.state is OPEN and receiver.data_to_send() == []


class TestReceiveFrame:
    """Frames parsed by the transport (mux channels): the same rules, masking aside."""

    def test_messages_control_and_close(self):
        s = Protocol(SERVER, extensions=[DeflateMessageCodec()])
        payload = DeflateMessageCodec(threshold=0).encode_message(1, b"Hello")[0]
        for frame in (Frame(1, payload[:3], final=False, rsv1=True), Frame(9, b"p"), Frame(0, payload[3:]),
                      Frame(2, b"raw"), Frame(8, h("03e8"))):
            s.receive_frame(frame)
        assert s.events_received() == [Ping(b"p"), TextMessage("Hello"), BinaryMessage(b"raw"), Close(1000, "")]
        assert s.data_to_send() == [h("8a0170"), h("880203e8"), b""]
        s.receive_frame(Frame(1, b"ignored"))
        assert s.events_received() == []

    def test_rules(self):
        for frame, code in ((Frame(0, b"x"), 1002), (Frame(1, b"\xff"), 1007), (Frame(2, b"x" * 11), 1009),
                            (Frame(2, b"x", rsv1=True), 1002)):
            c = Protocol(CLIENT, max_size=10)
            c.receive_frame(frame)
            failed_with(c, code)

    def test_not_during_the_handshake(self):
        with pytest.raises(InvalidState):
            ServerProtocol().receive_frame(Frame(1, b"x"))


class TestParseMessage:
    def test_never_consumes_what_it_does_not_return(self):
        s = Protocol(SERVER)
        assert s.parse_message(masked(2, b"x")) == BinaryMessage(b"x")
        for data in (masked(1, b"\xff"), masked(1, b"a", final=False), masked(9), masked(2, b"ab")[:-1]):
            assert s.parse_message(data) is None
            assert s.events_received() == [] and s.data_to_send() == [] and s.state is OPEN
        s.receive_data(masked(2, b"ab")[:-1])
        assert s.parse_message(masked(2, b"c")) is None  # a frame is half-read

    def test_fused_path_after_an_opening_handshake(self):
        # The handshake protocols open with no extension: their first message takes the fused
        # path too (it was off until a fragmented message ended, so never for most connections).
        s, c = handshake_pair({"extensions": []}, {"extensions": []})
        assert s.state is OPEN and c.state is OPEN and s.extensions == [] and c.extensions == []
        assert s.parse_message(masked(1, b"hi")) == TextMessage("hi")
        assert c.parse_message(plain(2, b"yo")) == BinaryMessage(b"yo")


class TestAnswerCloseLater:
    """answer_close=False: the shell answers the close once earlier messages are handled."""

    def test_replies_before_the_answer(self):
        s = Protocol(SERVER, answer_close=False)
        s.receive_data(masked(1, b"question") + masked(8, h("03e9") + b"bye") + masked(1, b"ignored"))
        assert s.events_received() == [TextMessage("question"), Close(1001, "bye")]
        assert s.state is OPEN and s.data_to_send() == [] and not s.close_expected()
        s.send_text("answer")
        s.answer_close()
        assert s.data_to_send() == [plain(1, b"answer"), h("880203e9"), b""]
        assert s.state is CLOSING and s.close_code == 1001
        with pytest.raises(InvalidState):
            s.answer_close()

    def test_client_answers_without_eof_and_code_1005(self):
        c = Protocol(CLIENT, answer_close=False)
        c.receive_data(h("8800"))
        c.answer_close()
        assert c.data_to_send() == [h("888037fa213d")] and c.close_sent == Close(1005, "")

    def test_send_close_answers_too(self):
        s = Protocol(SERVER, answer_close=False)
        s.receive_data(masked(8, h("03e8")))
        s.send_close(1001, "shutting down")
        assert s.data_to_send() == [plain(8, h("03e9") + b"shutting down"), b""]

    def test_nothing_to_answer(self):
        with pytest.raises(InvalidState):
            Protocol(SERVER, answer_close=False).answer_close()


class TestLargeFrames:
    """A large frame's later reads go to the message without the buffer."""

    def test_invalid_utf8_in_a_later_read(self):
        s = Protocol(SERVER)
        data = masked(1, b"x" * 1000 + b"\xff" + b"y" * 1000)
        s.receive_data(data[:500])
        s.receive_data(data[500:])
        failed_with(s, 1007)

    def test_reused_receive_buffer(self):
        # A shell that reads into one bytearray again and again: nothing kept may alias it.
        payload = bytes(range(256)) * 1000
        for side in (SERVER, CLIENT):
            p = Protocol(side, max_size=None)
            data = frame_for(side, 2, payload) + frame_for(side, 1, b"after")
            buffer = bytearray(70000)
            for i in range(0, len(data), 70000):
                n = len(data[i:i + 70000])
                buffer[:n] = data[i:i + 70000]
                p.receive_data(buffer[:n] if n < 70000 else buffer)
                buffer[:] = b"\xee" * 70000
            assert p.events_received() == [BinaryMessage(payload), TextMessage("after")]

    @pytest.mark.parametrize("side", [SERVER, CLIENT])
    @pytest.mark.parametrize("read", [1000, 65536, 262144])
    def test_binary_frame_in_pieces_is_unmasked_once(self, side, read):
        # The pieces of a large binary frame are kept as received and unmasked together at its
        # end (mask_join), the key's phase following each piece's offset; text is checked as it comes.
        payload = os.urandom(300001)
        data = frame_for(side, 2, payload) + frame_for(side, 1, "é" * 40000) + frame_for(side, 2, b"tail")
        p = Protocol(side, max_size=None)
        for i in range(0, len(data), read):
            p.receive_data(data[i:i + read])
        assert p.events_received() == [BinaryMessage(payload), TextMessage("é" * 40000), BinaryMessage(b"tail")]
        assert p._masked == [] and not p._buf

    def test_failure_in_the_middle_of_a_frame_in_pieces_drops_them(self):
        s = Protocol(SERVER, max_size=None)
        s.receive_data(masked(2, b"x" * 100000)[:50000])
        assert s._masked
        s.fail(1002, "test")  # e.g. the shell's keepalive
        assert s._masked == [] and s.state is CLOSING

    def test_many_frames_buffered_are_compacted_once_per_read(self):
        # A caller's bytearray is copied into the buffer; parsed bytes are dropped from its front
        # once they are most of it, not per frame.
        s = Protocol(SERVER, max_size=None)
        frames = b"".join(masked(2, bytes([i]) * 5000) for i in range(30))
        partial = masked(2, b"z" * 100000)
        s.receive_data(bytearray(frames + partial[:5]))  # the last header incomplete: buffered
        assert [m.payload[:1] for m in s.events_received()] == [bytes([i]) for i in range(30)]
        assert bytes(s._buf) == partial[:5]
        s.receive_data(bytearray(partial[5:]))
        assert s.events_received() == [BinaryMessage(b"z" * 100000)]


class TestEncodePieces:
    def test_large_fragments_are_not_copied(self):
        s = Protocol(SERVER)
        payload = bytes(range(256)) * 200  # 51,200 bytes
        s.send_binary(payload, fragment_size=20000)
        out = s.data_to_send()
        assert [len(piece) for piece in out] == [4, 20000, 4, 20000, 4 + 11200]
        assert out[1] == payload[:20000]
        c = Protocol(CLIENT)
        c.receive_data(b"".join(out))
        assert c.events_received() == [BinaryMessage(payload)]
        s.send_binary(payload[:40000], fragment_size=20000)
        assert [len(piece) for piece in s.data_to_send()] == [4, 20000, 4, 20000]

    def test_encode_checks_state_and_runs_codecs(self):
        s = Protocol(SERVER, extensions=[DeflateMessageCodec(threshold=0)])
        assert s.encode_text("Hello") == h("c107f248cdc9c90700")
        s.send_close()
        for call in (lambda: s.encode_text("x"), lambda: s.encode_frames(1, b"x")):
            with pytest.raises(InvalidState):
                call()


class TestDebugLogging:
    def test_frames_both_ways_at_debug(self, caplog):
        with caplog.at_level(logging.DEBUG, logger="twspy.protocol"):
            s = Protocol(SERVER)
            s.receive_data(masked(1, b"in", final=False) + masked(9, b"q") + masked(0, b"!"))
            s.send_text("out")
            s.send_close()
        assert s.events_received() == [Ping(b"q"), TextMessage("in!")]
        lines = [r.getMessage() for r in caplog.records if r.name == "twspy.protocol"]
        assert [line.split()[:3] for line in lines] == [
            ["<", "<Frame", "TEXT"], ["<", "<ControlFrame", "PING"], [">", "<ControlFrame", "PONG"],
            ["<", "<Frame", "CONTINUATION"], [">", "<Frame", "TEXT"], [">", "<ControlFrame", "CLOSE"]]

    def test_quiet_and_fused_otherwise(self, caplog):
        with caplog.at_level(logging.INFO, logger="twspy.protocol"):
            s = Protocol(SERVER)
            assert s.parse_message(masked(1, b"x")) == TextMessage("x")
        assert not caplog.records


def test_defer_failure_keeps_the_error_pending_until_fail_pending():
    """A shell handing messages over one by one answers those before a protocol error first."""
    p = Protocol(SERVER)
    p.defer_failure = True
    p.receive_data(masked(0x1, b"first") + masked(0x3, b"bad opcode") + masked(0x1, b"after"))
    assert p.events_received() == [TextMessage("first")]
    assert p.failure_pending and p.state is OPEN and p.close_code is None and p.data_to_send() == []
    p.send_text("echo of first")  # still allowed: the peer gets it before the close
    assert p.data_to_send() == [plain(0x1, b"echo of first")]
    p.fail_pending()
    assert p.state is CLOSING and p.close_code == 1002 and not p.failure_pending
    assert p.data_to_send()[0][:1] == b"\x88"
    p.fail_pending()  # nothing pending: nothing happens
    assert p.data_to_send() == []


class TestRawFrames:
    """encode_frame / decode_frame: the core's rules for a raw-frame API (websocket.send/recv)."""

    def test_encode_frame_masks_by_side_whatever_the_state(self):
        c = Protocol(CLIENT)
        c.send_close()
        assert c.encode_frame(0x1, b"Hello") == [h("818537fa213d7f9f4d5158")]  # §5.7, masked
        assert Protocol(SERVER).encode_frame(0x9, b"Hello", True, 0) == [h("890548656c6c6f")]
        assert Protocol(SERVER).encode_frame(0x1, b"Hel", final=False) == [h("010348656c")]

    def test_per_frame_codecs_both_ways(self):
        s = Protocol(SERVER, extensions=[DeflateFrameCodec(threshold=0)])
        c = Protocol(CLIENT, extensions=[DeflateFrameCodec(threshold=0)])
        wire = b"".join(s.encode_frame(0x1, b"abc" * 50))
        assert wire[0] == 0xC1 and len(wire) < 150  # RSV1: compressed
        frame = Frame(0x1, wire[2:], rsv1=True)
        assert c.decode_frame(frame).payload == b"abc" * 50
        ping = Frame(0x9, b"p")
        assert c.decode_frame(ping) is ping  # control frames are never compressed
        assert Protocol(CLIENT).decode_frame(frame) is frame  # no per-frame codec

    def test_has_data_to_send(self):
        s = Protocol(SERVER)
        assert not s.has_data_to_send()
        s.receive_data(masked(0x9, b"p"))
        assert s.has_data_to_send()
        assert s.data_to_send() == [h("8a0170")]
        assert not s.has_data_to_send()


class TestFailPendingAfterClosing:
    def test_a_pending_failure_is_dropped_once_our_close_is_out(self):
        s = Protocol(SERVER)
        s.defer_failure = True
        s.receive_data(masked(0x1, b"ok") + masked(0x1, b"\xff"))
        assert s.events_received() == [TextMessage("ok")] and s.failure_pending
        s.send_close(1001)
        s.fail_pending()
        assert not s.failure_pending and s.close_sent == Close(1001, "")
        assert s.data_to_send() == [h("880203e9")]


def test_fail_pending_after_the_connection_ended_does_nothing():
    p = Protocol(SERVER)
    p.defer_failure = True
    p.receive_data(masked(0x3, b"bad opcode"))
    assert p.failure_pending
    p.receive_eof()  # TCP ended before the shell failed it
    p.fail_pending()
    assert p.state is CLOSED and p.close_code == 1006 and not p.failure_pending
