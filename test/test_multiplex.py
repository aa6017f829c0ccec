"""Multiplexing (mux): encodings byte by byte against the notes' vectors, negotiation, scripted
peers on socket pairs, and round trips through unmodified Server subclasses over loopback."""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import threading

import pytest

import twspy
from twspy import Frame
from twspy.cli import EchoServer
from twspy.extension import negotiate_client, negotiate_server
from twspy.frame import OPCODE_BINARY, OPCODE_CLOSE, OPCODE_CONTINUATION, OPCODE_TEXT, FrameParser, decode_close
from twspy.handshake import build_request, make_key, parse_response, read_head
from twspy.multiplex import (
    AddChannelRequest,
    AddChannelResponse,
    Channel,
    DropChannel,
    FlowControl,
    Multiplex,
    MultiplexCodec,
    MuxClient,
    MuxError,
    NewChannelSlot,
    connect_multiplexed,
    decapsulate,
    decode_channel_id,
    decode_number,
    encapsulate,
    encode_channel_id,
    encode_control_blocks,
    encode_number,
    parse_control_blocks,
)
from twspy.mux_frames import accept_head, request_head
from twspy.mux_server import ServerSession
from twspy.mux_session import RateLimitedLog
from twspy.permessage_deflate import DeflateMessage

from conftest import frame_from, url, wait_for

H = bytes.fromhex
HS97 = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nConnection: Upgrade\r\nOrigin: http://example.com\r\n\r\n"
HS57 = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n"
KEY = H("37fa213d")


def code_of(excinfo) -> int:
    return excinfo.value.code


# -- encodings (§3) -----------------------------------------------------------------------------

CHANNEL_IDS = [(0, "00"), (1, "01"), (127, "7f"), (128, "80 80"), (16383, "bf ff"), (16384, "c0 40 00"),
               (2097151, "df ff ff"), (2097152, "e0 20 00 00"), (536870911, "ff ff ff ff")]
NUMBERS = [(0, "00"), (125, "7d"), (126, "7e 00 7e"), (65535, "7e ff ff"), (65536, "7f 00 00 00 00 00 01 00 00")]


class TestChannelId:
    @pytest.mark.parametrize("value, hexbytes", CHANNEL_IDS)
    def test_vectors(self, value, hexbytes):
        assert encode_channel_id(value) == H(hexbytes)
        assert decode_channel_id(H(hexbytes) + b"rest") == (value, len(H(hexbytes)))

    @pytest.mark.parametrize("hexbytes", ["80 00", "80 7f", "c0 00 00", "c0 3f ff", "e0 00 00 00", "e0 1f ff ff"])
    def test_non_minimal_rejected(self, hexbytes):
        with pytest.raises(MuxError) as info:
            decode_channel_id(H(hexbytes))
        assert code_of(info) == 2002
        with pytest.raises(MuxError) as info:  # inside a control block
            decode_channel_id(H(hexbytes), 0, 2005)
        assert code_of(info) == 2005

    @pytest.mark.parametrize("hexbytes", ["", "80", "c0 40", "e0 20 00"])
    def test_truncated(self, hexbytes):
        with pytest.raises(MuxError) as info:
            decode_channel_id(H(hexbytes))
        assert code_of(info) == 2002

    @pytest.mark.parametrize("value", [-1, 1 << 29])
    def test_out_of_range(self, value):
        with pytest.raises(ValueError):
            encode_channel_id(value)


class TestNumber:
    @pytest.mark.parametrize("value, hexbytes", NUMBERS)
    def test_vectors(self, value, hexbytes):
        assert encode_number(value) == H(hexbytes)
        assert decode_number(b"x" + H(hexbytes), 1) == (value, 1 + len(H(hexbytes)))

    @pytest.mark.parametrize("hexbytes", ["80", "7e 00 7d", "7e 00 00", "7f 00 00 00 00 00 00 ff ff",
                                          "7f ff ff ff ff ff ff ff ff", "7e", "7f 00 00", ""])
    def test_invalid(self, hexbytes):
        with pytest.raises(MuxError) as info:
            decode_number(H(hexbytes))
        assert code_of(info) == 2005

    @pytest.mark.parametrize("value", [-1, 1 << 63])
    def test_out_of_range(self, value):
        with pytest.raises(ValueError):
            encode_number(value)


# -- control blocks (§5) ------------------------------------------------------------------------

BLOCKS = [
    (FlowControl(1, 2), "40 01 02"),
    (FlowControl(1, 8192), "40 01 7e 20 00"),
    (NewChannelSlot(64, 8192), "80 40 7e 20 00"),
    (NewChannelSlot(0, 0, fallback=True), "81 00 00"),
    (AddChannelResponse(1, b"FooBar"), "20 01 06 46 6f 6f 42 61 72"),
    (AddChannelResponse(2, b"Hello", rejected=True, encoding=1), "31 02 05 48 65 6c 6c 6f"),
    (DropChannel(1), "60 01 00"),
    (DropChannel(2, 1000, "Success"), "60 02 09 03 e8 53 75 63 63 65 73 73"),
    (DropChannel(1, 2000, "error"), "60 01 07 07 d0 65 72 72 6f 72"),
    (DropChannel(0, 2005), "60 00 02 07 d5"),
    (AddChannelRequest(2, HS97), "00 02 61" + HS97.hex()),
    (AddChannelRequest(3, b"GET /echo HTTP/1.1\r\n\r\n", encoding=1), "01 03 16" + b"GET /echo HTTP/1.1\r\n\r\n".hex()),
    (AddChannelResponse(2, HS57), "20 02 39" + HS57.hex()),
]


class TestControlBlocks:
    @pytest.mark.parametrize("block, hexbytes", BLOCKS)
    def test_vectors(self, block, hexbytes):
        assert block.encode() == H(hexbytes)
        assert parse_control_blocks(H(hexbytes)) == [block]

    def test_encapsulated_handshakes(self):
        # §9: the 97-byte request and 57-byte response are what twspy builds.
        assert len(HS97) == 97 and len(HS57) == 57
        assert request_head("/chat", "server.example.com", "http://example.com", (), []) == HS97
        assert accept_head(None) == HS57

    def test_physical_frame_with_two_blocks(self):
        wire = H("82 0b 00 80 40 7e 20 00 40 01 7e 20 00")
        parser = FrameParser(require_mask=False)
        parser.feed(wire)
        (frame,) = list(parser)
        blocks = [NewChannelSlot(64, 8192), FlowControl(1, 8192)]
        assert decapsulate(frame.payload) == (0, blocks)
        assert Frame(OPCODE_BINARY, encode_control_blocks(*blocks)).pack() == wire

    def test_empty_control_message_is_a_no_op(self):
        assert decapsulate(b"\x00") == (0, [])

    @pytest.mark.parametrize("hexbytes, code", [
        ("04 02 00", 2005),                # AddChannelRequest reserved bit
        ("02 02 00", 2010), ("03 02 00", 2010),  # request encodings 2, 3
        ("24 02 00", 2005),                # AddChannelResponse reserved bit
        ("22 02 00", 2012),                # response encoding 2
        ("41 01 02", 2005),                # FlowControl reserved bit
        ("61 01 00", 2005),                # DropChannel reserved bit
        ("82 01 00", 2005),                # NewChannelSlot reserved bit
        ("a0", 2004), ("c0", 2004), ("e0", 2004),  # mux opcodes 5-7
        ("60 01 01 03", 2005),             # 1-byte reason
        ("60 01 03 03 e8 ff", 2005),       # reason message not UTF-8
        ("81 01 00", 2005), ("81 00 01", 2005),  # fallback with slots or quota
        ("40 01", 2005), ("40", 2005),     # truncated
        ("00 02 05 48 65", 2005),          # handshake shorter than its size
        ("40 80 01 02", 2005),             # non-minimal channel ID in a block
        ("40 01 80", 2005),                # bad number
        ("40 01 02 a0", 2004),             # a good block, then an unknown one
    ])
    def test_invalid(self, hexbytes, code):
        with pytest.raises(MuxError) as info:
            parse_control_blocks(H(hexbytes))
        assert code_of(info) == code

    def test_encode_checks(self):
        with pytest.raises(ValueError):
            NewChannelSlot(1, 0, fallback=True).encode()
        with pytest.raises(ValueError):
            DropChannel(1, None, "no code").encode()
        with pytest.raises(ValueError):
            AddChannelRequest(2, b"", encoding=2).encode()


# -- encapsulation (§4) -------------------------------------------------------------------------

def physical_messages(wire: bytes):
    """Reassemble the physical messages in server->client bytes: their payloads."""
    parser = FrameParser(require_mask=False)
    parser.feed(wire)
    messages, parts = [], []
    for frame in parser:
        parts.append(frame.payload)
        if frame.final:
            messages.append(b"".join(parts))
            parts = []
    assert not parts
    return messages


EXAMPLE_A = H("82 0d 01 81") + b"Hello world"
EXAMPLE_B = H("02 07 01 81") + b"Hello" + H("80 06") + b" world"
EXAMPLE_C = H("82 07 01 01") + b"Hello" + H("82 05 02 81") + b"bye" + H("82 08 01 80") + b" world"
EXAMPLE_D = H("82 07 02 81 48 65 6c 6c 6f")


class TestEncapsulation:
    def test_examples(self):
        def frames(wire):
            return [(cid, (f.opcode, f.final, f.payload)) for cid, f in map(decapsulate, physical_messages(wire))]

        assert frames(EXAMPLE_A) == [(1, (OPCODE_TEXT, True, b"Hello world"))]
        assert frames(EXAMPLE_B) == [(1, (OPCODE_TEXT, True, b"Hello world"))]
        assert frames(EXAMPLE_C) == [(1, (OPCODE_TEXT, False, b"Hello")), (2, (OPCODE_TEXT, True, b"bye")),
                                     (1, (OPCODE_CONTINUATION, True, b" world"))]
        assert frames(EXAMPLE_D) == [(2, (OPCODE_TEXT, True, b"Hello"))]

    def test_encapsulate(self):
        assert encapsulate(2, OPCODE_TEXT, b"Hello") == H("02 81 48 65 6c 6c 6f")
        assert Frame(OPCODE_BINARY, encapsulate(2, OPCODE_TEXT, b"Hello")).pack() == EXAMPLE_D
        assert encapsulate(1, OPCODE_TEXT, b"Hello", final=False) == H("01 01") + b"Hello"
        assert encapsulate(16384, OPCODE_BINARY) == H("c0 40 00 82")
        with pytest.raises(ValueError):
            encapsulate(0, OPCODE_TEXT, b"")

    @pytest.mark.parametrize("hexbytes, code", [("", 2002), ("80", 2002), ("80 01 81", 2002), ("01", 2003),
                                                ("c0 40 00", 2003)])
    def test_errors(self, hexbytes, code):
        with pytest.raises(MuxError) as info:
            decapsulate(H(hexbytes))
        assert code_of(info) == code


# -- negotiation (§2) ---------------------------------------------------------------------------

class TestNegotiation:
    def test_server_accepts_mux_alone(self):
        header, codecs = negotiate_server("mux", [Multiplex()])
        assert header == "mux" and [type(c) for c in codecs] == [MultiplexCodec]
        assert codecs[0].rsv == 0 and not codecs[0].per_frame
        assert codecs[0].encode_message(OPCODE_TEXT, b"x") == (b"x", 0)  # identity

    def test_server_quota_parameter(self):
        assert negotiate_server("mux; quota=8192", [Multiplex()])[1][0].quota == 8192
        assert negotiate_server("mux; quota=nope", [Multiplex()])[1][0].quota is None  # ignored
        assert negotiate_server("mux; other=1", [Multiplex()]) == ("", [])

    @pytest.mark.parametrize("offer, accepted", [
        ("permessage-deflate, mux", "permessage-deflate"),
        ("mux, permessage-deflate", "mux"),
        ("deflate-frame, mux", "deflate-frame"),
    ])
    def test_server_declines_mux_with_other_extensions(self, offer, accepted):
        from twspy.deflate_frame import DeflateFrame
        header, codecs = negotiate_server(offer, [DeflateMessage(), DeflateFrame(), Multiplex()])
        assert header == accepted and len(codecs) == 1

    def test_client_validation(self):
        assert [type(c) for c in negotiate_client("mux", [Multiplex()])] == [MultiplexCodec]
        with pytest.raises(twspy.NegotiationError):
            negotiate_client("mux; quota=1", [Multiplex()])
        with pytest.raises(twspy.NegotiationError):
            negotiate_client("mux, permessage-deflate", [Multiplex(), DeflateMessage()])
        assert Multiplex().offers() == [("mux", [])]

    def test_configuration_checks(self):
        with pytest.raises(ValueError):
            Multiplex(window=0)
        with pytest.raises(ValueError):
            Multiplex(max_channels=-1)
        with pytest.raises(ValueError):
            Multiplex(max_control_queue=0)
        with pytest.raises(ValueError):
            Multiplex(refusal_rate=-1)
        with pytest.raises(TypeError):  # keyword-only
            Multiplex(1024, 8, None, 4096)  # type: ignore[misc]
        with pytest.raises(TypeError):
            connect_multiplexed("ws://127.0.0.1:1/", extensions=[])

    def test_client_needs_mux(self, serve):
        server = serve(Recording, extensions=[])
        with pytest.raises(twspy.NegotiationError):
            connect_multiplexed(url(server), handshake_timeout=5)
        wait_for(lambda: server.closes())
        assert server.closes()[0][2] == 1010

    def test_mux_is_opt_in(self, serve):
        server = serve(Recording, extensions=[DeflateMessage(), Multiplex()])
        with twspy.connect(url(server), extensions=[]) as plain:
            plain.send("plain")
            assert plain.recv(5).payload == "plain"
        with twspy.connect(url(server), extensions=[DeflateMessage(), Multiplex()]) as both:
            assert [c.name for c in both.sock.extensions] == ["permessage-deflate"]
            both.send("deflated")
            assert both.recv(5).payload == "deflated"
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            mux.default_channel.send("muxed")
            assert mux.default_channel.recv(5).payload == "muxed"
            assert mux.default_channel.mux is mux
        # The same, spelled with twspy.connect.
        with twspy.connect(url(server), extensions=[Multiplex()], connection_class=MuxClient) as mux:
            mux.default_channel.send("also muxed")
            assert mux.default_channel.recv(5).payload == "also muxed"


# -- scripted peers on a socket pair --------------------------------------------------------------

class Peer:
    """The raw far end: writes physical frames by hand (masked when it plays the client) and
    reassembles the physical messages it receives."""

    def __init__(self, sock, client=False):
        self.sock = sock
        self.client = client
        self.parser = FrameParser(require_mask=not client)
        sock.settimeout(5)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes, opcode: int = OPCODE_BINARY) -> None:
        frame = Frame(opcode, payload, masking_key=KEY if self.client else None)
        self.sock.sendall(frame.pack())

    def send_blocks(self, *blocks) -> None:
        self.send(encode_control_blocks(*blocks))

    def frame(self, timeout=5) -> Frame:
        return frame_from(self.sock, self.parser, timeout)

    def message(self, timeout=5) -> bytes:
        parts = []
        while True:
            frame = self.frame(timeout)
            assert frame.opcode in (OPCODE_BINARY, OPCODE_CONTINUATION), frame
            parts.append(frame.payload)
            if frame.final:
                return b"".join(parts)

    def data(self, timeout=5) -> bytes:
        """The next message that carries a logical frame (control messages skipped)."""
        while True:
            message = self.message(timeout)
            if message[:1] != b"\x00":
                return message

    def blocks(self, timeout=5):
        cid, blocks = decapsulate(self.message(timeout))
        assert cid == 0, blocks
        return blocks

    def silent(self, timeout=0.2) -> bool:
        """Nothing arrives within ``timeout`` (how a blocked sender looks from outside)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        self.parser.feed(data)
        return False


@pytest.fixture
def scripted(pair):
    """``scripted(**Multiplex options)``: a MuxClient on a socket pair and the raw server Peer."""
    made = []

    def make(**config):
        ws, raw = pair(server_side=False, extensions=[MultiplexCodec(Multiplex(**config))])
        mux = MuxClient(ws, close_timeout=1)
        made.append(mux)
        peer = Peer(raw)
        assert peer.blocks() == [FlowControl(1, mux.window)]  # [twspy] §6: right after the 101
        return mux, peer

    yield make
    for mux in made:
        mux.abort()


@pytest.fixture
def pool():
    executor = concurrent.futures.ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=True)


def accept(peer, channel_id=2, path="/x", protocol=None, quota=None):
    """Play the server's side of an AddChannelRequest."""
    request, grant = peer.blocks()
    assert request == AddChannelRequest(channel_id, b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
                                        b"\r\n" % path.encode())
    assert grant == FlowControl(channel_id, quota or grant.quota)
    peer.send_blocks(AddChannelResponse(channel_id, accept_head(protocol)))


class TestScriptedServer:
    def test_examples_reach_channels(self, scripted, pool):
        mux, peer = scripted()
        peer.send_blocks(NewChannelSlot(1, 100))
        future = pool.submit(mux.open_channel, "/x", timeout=5)
        accept(peer)
        ch2 = future.result(5)
        assert isinstance(ch2, Channel) and ch2.channel_id == 2 and ch2.path == "/x"
        ch1 = mux.default_channel
        peer.write(EXAMPLE_A + EXAMPLE_B + EXAMPLE_C + EXAMPLE_D)
        assert [ch1.recv(5).payload for _ in range(3)] == ["Hello world"] * 3
        assert [ch2.recv(5).payload for _ in range(2)] == ["bye", "Hello"]
        # Sending uses the slot's initial quota (100) and the client's frames are encapsulated.
        ch2.send("hi")
        assert peer.data() == encapsulate(2, OPCODE_TEXT, b"hi")

    def test_sender_blocks_without_quota_and_resumes(self, scripted, pool):
        mux, peer = scripted()
        peer.send_blocks(FlowControl(1, 10))
        future = pool.submit(mux.default_channel.send, b"x" * 25)
        # Cost = payload + 1 for the first frame (§6): 9 bytes fit, FIN=0.
        assert peer.message() == encapsulate(1, OPCODE_BINARY, b"x" * 9, final=False)
        assert peer.silent(0.2) and not future.done()  # out of quota: waiting
        peer.send_blocks(FlowControl(1, 100))
        assert peer.message() == encapsulate(1, OPCODE_CONTINUATION, b"x" * 16, final=True)
        future.result(5)
        assert mux.default_channel.sock.send_quota == 100 - 16

    def test_control_frame_waits_for_its_whole_cost(self, scripted, pool):
        mux, peer = scripted()
        peer.send_blocks(FlowControl(1, 3))
        future = pool.submit(mux.default_channel.send_ping, b"four")  # costs 5: never split
        assert peer.silent(0.2) and not future.done()
        peer.send_blocks(FlowControl(1, 2))
        assert peer.message() == H("01 89") + b"four"
        future.result(5)

    def test_frame_bytes_are_sent_as_logical_frames(self, scripted):
        # Connection.start_close and Server.broadcast hand over encoded (maybe masked) frames.
        mux, peer = scripted()
        peer.send_blocks(FlowControl(1, 100))
        ch1 = mux.default_channel
        with ch1.sock.send_lock:
            ch1.sock.send_frame_bytes(Frame(OPCODE_TEXT, b"hi", masking_key=KEY).pack() +
                                      Frame(OPCODE_BINARY, b"yo").pack())
        assert peer.data() == encapsulate(1, OPCODE_TEXT, b"hi")
        assert peer.data() == encapsulate(1, OPCODE_BINARY, b"yo")
        for garbage in (b"more", b"\x81"):  # not whole frames: an OSError, which Connection handles
            with pytest.raises(ConnectionAbortedError), ch1.sock.send_lock:
                ch1.sock.send_frame_bytes(garbage)
        ch1.start_close(4000, "x")
        assert peer.data() == encapsulate(1, OPCODE_CLOSE, H("0f a0") + b"x")

    def test_empty_message_costs_one_byte(self, scripted):
        mux, peer = scripted()
        peer.send_blocks(FlowControl(1, 1))
        mux.default_channel.send(b"")
        assert peer.message() == H("01 82")
        assert mux.default_channel.sock.send_quota == 0

    def test_quota_goes_back_as_the_consumer_reads(self, scripted):
        mux, peer = scripted(window=100)
        peer.send(encapsulate(1, OPCODE_BINARY, b"a" * 49))
        peer.send(encapsulate(1, OPCODE_BINARY, b"b" * 49))
        assert peer.silent(0.1)  # nothing consumed, nothing granted
        ch1 = mux.default_channel
        wait_for(lambda: ch1.sock.queued_bytes == 100)
        assert ch1.recv(5).payload == b"a" * 49
        assert peer.blocks() == [FlowControl(1, 50)]
        assert ch1.recv(5).payload == b"b" * 49
        assert peer.blocks() == [FlowControl(1, 50)]

    def test_quota_violation_fails_the_channel(self, scripted):
        mux, peer = scripted(window=100)
        peer.send(encapsulate(1, OPCODE_BINARY, b"a" * 100))  # costs 101
        (drop,) = peer.blocks()
        assert (drop.channel_id, drop.code) == (1, 3005)
        with pytest.raises(twspy.ConnectionClosed) as info:
            mux.default_channel.recv(5)
        assert code_of(info) == 3005 and mux.default_channel.drop_code == 3005

    @pytest.mark.parametrize("frames, code", [
        ([encapsulate(1, OPCODE_CONTINUATION, b"x")], 3009),
        ([encapsulate(1, OPCODE_TEXT, b"a", final=False), encapsulate(1, OPCODE_TEXT, b"b")], 3009),
        ([H("01 09") + b"ping"], 3009),   # fragmented control frame
        ([H("01 83")], 3000),             # reserved opcode
        ([H("01 c1") + b"rsv"], 3000),    # RSV1 without a channel extension
    ])
    def test_channel_errors_drop_it(self, scripted, frames, code):
        mux, peer = scripted()
        for payload in frames:
            peer.send(payload)
        (drop,) = peer.blocks()
        assert (drop.channel_id, drop.code) == (1, code)
        with pytest.raises(twspy.ConnectionClosed) as info:
            mux.default_channel.recv(5)
        assert code_of(info) in (code, 1002)

    def test_drop_from_peer_is_acknowledged(self, scripted):
        mux, peer = scripted()
        peer.send(encapsulate(1, OPCODE_TEXT, b"last words"))
        peer.send_blocks(DropChannel(1, 1000, "done"))
        assert peer.blocks() == [DropChannel(1, 3008, "DropChannel acknowledged")]
        ch1 = mux.default_channel
        assert ch1.recv(5).payload == "last words"  # received before the drop
        with pytest.raises(twspy.ConnectionClosed) as info:
            ch1.recv(5)
        assert code_of(info) == 1006 and (ch1.drop_code, ch1.drop_reason) == (1000, "done")
        peer.send_blocks(DropChannel(1, 3008), DropChannel(7, 1000), FlowControl(9, 1))  # unknown: ignored
        peer.send(encapsulate(1, OPCODE_TEXT, b"late"))  # a frame for a closed channel: ignored
        assert peer.silent(0.1) and not mux.closed

    def test_abort_sends_drop_and_close_handshake_does_not(self, scripted, pool):
        mux, peer = scripted()
        peer.send_blocks(NewChannelSlot(2, 100), FlowControl(1, 100))
        future = pool.submit(mux.open_channel, "/x", timeout=5)
        accept(peer)
        ch2 = future.result(5)
        ch2.abort()
        assert peer.blocks() == [DropChannel(2, 1000)]
        ch1 = mux.default_channel
        future = pool.submit(ch1.close, 4000, "bye")
        assert peer.message() == encapsulate(1, OPCODE_CLOSE, H("0f a0") + b"bye")
        peer.send(encapsulate(1, OPCODE_CLOSE, H("0f a0")))
        future.result(5)
        assert ch1.close_code == 4000
        assert peer.silent(0.1)  # both close frames went through: no DropChannel

    def test_rejected_channel(self, scripted, pool):
        mux, peer = scripted()
        peer.send_blocks(NewChannelSlot(1, 100))
        future = pool.submit(mux.open_channel, "/x", timeout=5)
        request, _ = peer.blocks()
        peer.send_blocks(AddChannelResponse(2, b"HTTP/1.1 404 Not Found\r\n\r\n", rejected=True))
        with pytest.raises(twspy.HandshakeError) as info:
            future.result(5)
        assert info.value.status == 404
        assert mux.channels == [mux.default_channel]

    def test_bad_response_fails_the_channel(self, scripted, pool):
        mux, peer = scripted()
        peer.send_blocks(NewChannelSlot(1, 100))
        future = pool.submit(mux.open_channel, "/x", protocols=["a"], timeout=5)
        peer.blocks()
        peer.send_blocks(AddChannelResponse(2, accept_head("b")))
        with pytest.raises(twspy.NegotiationError):
            future.result(5)
        (drop,) = peer.blocks()
        assert (drop.channel_id, drop.code) == (2, 3000)

    def test_open_timeout_drops_and_ignores_late_answer(self, scripted):
        mux, peer = scripted()
        peer.send_blocks(NewChannelSlot(1, 100))
        with pytest.raises(TimeoutError):
            mux.open_channel("/x", timeout=0.2)
        assert len(peer.blocks()) == 2  # request and quota
        assert peer.blocks() == [DropChannel(2, 1000, "open timed out")]
        peer.send_blocks(AddChannelResponse(2, HS57))  # late: ignored, not a 2011
        peer.send(encapsulate(1, OPCODE_TEXT, b"still here"))
        assert mux.default_channel.recv(5).payload == "still here"

    def test_fallback_refuses_new_channels(self, scripted):
        mux, peer = scripted()
        peer.send_blocks(NewChannelSlot(0, 0, fallback=True))
        with pytest.raises(twspy.InvalidState):
            mux.open_channel("/x", timeout=5)

    def test_no_slot_no_channel(self, scripted):
        mux, peer = scripted()
        with pytest.raises(TimeoutError):
            mux.open_channel("/x", timeout=0.1)
        assert peer.silent(0.1)  # no AddChannelRequest without a slot (2007)

    @pytest.mark.parametrize("payload, opcode, code", [
        (b"text", OPCODE_TEXT, 2001),
        (b"", OPCODE_BINARY, 2002),
        (H("80 01"), OPCODE_BINARY, 2002),
        (H("05"), OPCODE_BINARY, 2003),
        (H("00 a0"), OPCODE_BINARY, 2004),
        (H("00 00 02 00"), OPCODE_BINARY, 2005),   # AddChannelRequest sent to a client
        (H("00 20 09 00"), OPCODE_BINARY, 2011),   # AddChannelResponse for a channel never requested
        (H("00 02 02 00"), OPCODE_BINARY, 2010),
        (encode_control_blocks(NewChannelSlot((1 << 63) - 1, 0), NewChannelSlot(1, 0)), OPCODE_BINARY, 2008),
    ])
    def test_physical_failures(self, scripted, payload, opcode, code):
        mux, peer = scripted()
        peer.send(payload, opcode)
        (drop,) = peer.blocks()
        assert (drop.channel_id, drop.code) == (0, code)
        frame = peer.frame()
        assert frame.opcode == OPCODE_CLOSE and decode_close(frame.payload)[0] == 1011
        peer.sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(twspy.ConnectionClosed) as info:
            mux.default_channel.recv(5)
        assert code_of(info) == 1006
        wait_for(lambda: mux.closed)


# -- round trips through unmodified Server subclasses ---------------------------------------------

class Recording(twspy.Server):
    """Echoes; records the handlers' calls. ``/slow`` waits for ``release``; "please close"
    closes that client with 4002."""

    def __init__(self, *args, **kwargs):
        self.events = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        super().__init__(*args, **kwargs)

    def record(self, *event):
        with self.lock:
            self.events.append(event)

    def closes(self):
        with self.lock:
            return [e for e in self.events if e[0] == "close"]

    def onopen(self, client):
        self.record("open", client.path, client.headers.get("X-Test"), client.protocol)

    def onmessage(self, client, message):
        if client.path == "/slow":
            self.release.wait(10)
        if message.payload == "please close":
            client.close(4002, "asked")
            return
        client.send(message)

    def onping(self, client, payload):
        self.record("ping", client.path, payload)

    def onclose(self, client, code, reason):
        self.record("close", client.path, code, reason)


class Recorder(Channel):
    """A client channel that records its handlers."""

    def onopen(self):
        self.calls = []

    def onpong(self, payload):
        self.calls.append(("pong", payload))

    def onclose(self, code, reason):
        self.calls.append(("close", code, reason))


class TestRoundTrips:
    def test_channels_reach_server_handlers(self, serve):
        server = serve(Recording, extensions=[Multiplex()], protocols=["chat"])
        with connect_multiplexed(url(server, "/main"), headers={"X-Test": "yes"}, handshake_timeout=5) as mux:
            main = mux.default_channel
            assert main.channel_id == 1 and main.path == "/main"
            chat = mux.open_channel("/room?x=1", protocols=["chat"], headers={"X-Test": "chan"})
            assert chat.protocol == "chat" and chat.headers["Connection"] == "Upgrade"
            for channel, text in ((main, "one"), (chat, "two")):
                channel.send(text)
                assert channel.recv(5).payload == text
            assert len(server.clients) == 2
        wait_for(lambda: len(server.closes()) == 2)
        opens = sorted(e for e in server.events if e[0] == "open")
        assert opens == [("open", "/main", "yes", None), ("open", "/room?x=1", "chan", "chat")]
        assert sorted(server.closes()) == [("close", "/main", 1000, ""), ("close", "/room?x=1", 1000, "")]
        wait_for(lambda: not server.clients)

    def test_refused_channel(self, serve):
        server = serve(Recording, extensions=[Multiplex()], locations=["/ok"])
        with connect_multiplexed(url(server, "/ok"), handshake_timeout=5) as mux:
            with pytest.raises(twspy.HandshakeError) as info:
                mux.open_channel("/nope")
            assert info.value.status == 403
            ok = mux.open_channel("/ok")
            ok.send("fine")
            assert ok.recv(5).payload == "fine"

    def test_ten_channels_hundred_messages_interleaved(self, serve):
        server = serve(EchoServer, extensions=[Multiplex()])
        errors = []
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            channels = [mux.default_channel] + [mux.open_channel("/c%d" % i) for i in range(9)]

            def expected(i, j):
                text = "%d:%d:" % (i, j) + "x" * (j * 7 % 300)
                return text if j % 2 else text.encode()

            def send(i, channel):
                try:
                    for j in range(100):
                        channel.send(expected(i, j), fragment_size=13 if j % 5 == 0 else None)
                except Exception as exc:  # reported below
                    errors.append(exc)

            def receive(i, channel):
                try:
                    for j in range(100):
                        message = channel.recv(10)
                        assert message.payload == expected(i, j), (i, j)
                except Exception as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=f, args=(i, c)) for i, c in enumerate(channels) for f in (send, receive)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert not errors and not any(t.is_alive() for t in threads)
        wait_for(lambda: not server.clients)

    def test_large_messages_split_by_quota(self, serve):
        server = serve(EchoServer, extensions=[Multiplex(window=4096)])
        with connect_multiplexed(url(server), multiplex=Multiplex(window=4096), handshake_timeout=5) as mux:
            other = mux.open_channel("/other")
            big_text, big_binary = "é" * 150_000, bytes(range(256)) * 1200
            mux.default_channel.send(big_text)
            other.send(big_binary, fragment_size=70_000)
            assert other.recv(10).payload == big_binary
            assert mux.default_channel.recv(10).payload == big_text

    def test_broadcast_reaches_channels(self, serve):
        # Text only: Connection.send_nowait mistakes a bytes message for encoded frames when
        # the transport cannot share frames (mux channels, compressing or masking connections).
        messages = ["news", "more"]
        server = serve(Recording, extensions=[Multiplex()], close_timeout=1)
        with twspy.connect(url(server), extensions=[]) as plain, \
                connect_multiplexed(url(server), handshake_timeout=5, close_timeout=1) as mux:
            other = mux.open_channel("/b")
            wait_for(lambda: len(server.clients) == 3)
            for message in messages:
                server.broadcast(message)
            for conn in (plain, mux.default_channel, other):
                assert [conn.recv(2).payload for _ in messages] == messages

    def test_pings(self, serve):
        server = serve(Recording, extensions=[Multiplex()])
        with connect_multiplexed(url(server), channel_class=Recorder, handshake_timeout=5) as mux:
            chan = mux.open_channel("/p")
            chan.send_ping(b"abc")
            chan.send("after")
            assert chan.recv(5).payload == "after"
            assert chan.calls == [("pong", b"abc")]
            assert ("ping", "/p", b"abc") in server.events

    def test_dropping_one_channel_leaves_the_others(self, serve):
        server = serve(Recording, extensions=[Multiplex()])
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            a, b = mux.open_channel("/a"), mux.open_channel("/b")
            a.abort()
            wait_for(lambda: server.closes())
            assert server.closes() == [("close", "/a", 1006, "")]
            for channel in (b, mux.default_channel):
                channel.send("alive")
                assert channel.recv(5).payload == "alive"
            assert len(server.clients) == 2
            c = mux.open_channel("/c")  # the server granted a new slot for /a
            c.send("new")
            assert c.recv(5).payload == "new"

    def test_close_codes_propagate_per_channel(self, serve):
        server = serve(Recording, extensions=[Multiplex()])
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            b, c = mux.open_channel("/b"), mux.open_channel("/c")
            b.close(4001, "bye")
            c.send("please close")
            with pytest.raises(twspy.ConnectionClosed) as info:
                c.recv(5)
            assert (info.value.code, info.value.reason) == (4002, "asked")
            mux.default_channel.send("unaffected")
            assert mux.default_channel.recv(5).payload == "unaffected"
            wait_for(lambda: len(server.closes()) == 2)
            # The side that starts the closing handshake gets the code of the echo (RFC 6455 §7.1.5).
            assert sorted(server.closes()) == [("close", "/b", 4001, "bye"), ("close", "/c", 4002, "")]

    def test_slow_channel_is_held_back_without_starving_others(self, serve):
        window = 16384
        server = serve(Recording, extensions=[Multiplex(window=window)])
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            slow, fast = mux.open_channel("/slow"), mux.open_channel("/fast")
            count, echoes, errors = [0], [], []
            payloads = [bytes([i]) * 4096 for i in range(100)]

            def sender():
                try:
                    for payload in payloads:
                        slow.send(payload)
                        count[0] += 1
                except Exception as exc:  # reported below
                    errors.append(exc)

            def receiver():
                try:
                    for _ in payloads:
                        echoes.append(slow.recv(20).payload)
                except Exception as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=sender), threading.Thread(target=receiver)]
            for t in threads:
                t.start()
            try:
                # The handler holds the first message; the peer stops granting quota.
                wait_for(lambda: slow.sock.send_quota < 4097 and count[0] > 1)
                for i in range(50):
                    fast.send("fast %d" % i)
                    assert fast.recv(5).payload == "fast %d" % i
                wait_for(lambda: slow.sock.send_quota < 4097)
                stalled = count[0]
                assert stalled < len(payloads)
                (held,) = [c for c in list(server.clients) if c.path == "/slow"]
                assert held.sock.queued_bytes <= window
            finally:
                server.release.set()
            for t in threads:
                t.join(20)
            assert not errors and echoes == payloads

    def test_server_shutdown_closes_every_channel(self, serve, pool):
        server = serve(Recording, extensions=[Multiplex()])
        mux = connect_multiplexed(url(server), handshake_timeout=5)
        channels = [mux.default_channel] + [mux.open_channel("/s%d" % i) for i in range(3)]
        wait_for(lambda: len(server.clients) == 4)
        stopping = pool.submit(server.shutdown)
        for channel in channels:
            with pytest.raises(twspy.ConnectionClosed) as info:
                channel.recv(5)
            assert code_of(info) == 1001
        wait_for(lambda: mux.closed)
        assert mux.physical.close_code == 1001
        stopping.result(10)
        assert sorted(e[2] for e in server.closes()) == [1001] * 4
        mux.close()

    def test_server_shutdown_with_no_channel_left(self, serve):
        server = serve(Recording, extensions=[Multiplex()])
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            mux.default_channel.close()
            wait_for(lambda: not server.clients)
            server.shutdown()  # the session notices within its idle check and closes the physical connection
            wait_for(lambda: mux.closed)
            assert mux.physical.close_code == 1001

    def test_keepalive_runs_on_the_physical_connection(self, serve):
        server = serve(EchoServer, extensions=[Multiplex()], ping_interval=0.05, ping_timeout=2)
        with connect_multiplexed(url(server), handshake_timeout=5, ping_interval=0.05, ping_timeout=2) as mux:
            chan = mux.open_channel("/k")
            assert mux.physical.ping_interval == 0.05
            assert chan.ping_interval is None and mux.default_channel.ping_interval is None
            wait_for(lambda: server.clients and all(c.ping_interval is None for c in server.clients))
            pings = [mux.physical._ping_payload]
            wait_for(lambda: mux.physical._ping_payload not in pings)  # a second keepalive ping went out
            chan.send("still fine")
            assert chan.recv(5).payload == "still fine"

    def test_physical_close_ends_every_channel_once(self, serve):
        server = serve(Recording, extensions=[Multiplex()])
        mux = connect_multiplexed(url(server), channel_class=Recorder, handshake_timeout=5)
        channels = [mux.default_channel] + [mux.open_channel("/p%d" % i) for i in range(3)]
        wait_for(lambda: len(server.clients) == 4)
        mux.abort()
        wait_for(lambda: all(channel.closed for channel in channels))
        assert [channel.calls for channel in channels] == [[("close", 1006, "")]] * 4
        wait_for(lambda: len(server.closes()) == 4)
        assert sorted(server.closes()) == sorted(("close", p, 1006, "") for p in ("/", "/p0", "/p1", "/p2"))
        wait_for(lambda: not server.clients)
        with pytest.raises(twspy.ConnectionClosed):
            mux.open_channel("/late")

    def test_slots_limit_channels(self, serve):
        server = serve(Recording, extensions=[Multiplex(max_channels=2)])
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            a, _ = mux.open_channel("/a"), mux.open_channel("/b")
            with pytest.raises(TimeoutError):
                mux.open_channel("/c", timeout=0.2)
            a.close()
            c = mux.open_channel("/c", timeout=5)
            c.send("c")
            assert c.recv(5).payload == "c"


# -- a raw client against the server --------------------------------------------------------------

@pytest.fixture
def raw_client(serve):
    """``raw_client(server)``: a hand-driven mux client Peer after the physical handshake."""
    socks = []

    def make(server, path="/", headers=()):
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        socks.append(sock)
        sock.sendall(build_request("127.0.0.1", path, make_key(), None, (), [Multiplex()], headers))
        head, rest = read_head(sock.recv)
        response = parse_response(head)
        assert response.status == 101 and response.headers["Sec-WebSocket-Extensions"] == "mux"
        peer = Peer(sock, client=True)
        peer.parser.feed(rest)
        return peer

    yield make
    for sock in socks:
        sock.close()


class TestServerProtocol:
    def test_greeting_and_delta_request(self, serve, raw_client):
        server = serve(Recording, extensions=[Multiplex(window=1000, max_channels=3)])
        peer = raw_client(server, "/base", [("X-Test", "inherited")])
        assert peer.blocks() == [NewChannelSlot(3, 1000), FlowControl(1, 1000)]
        peer.send_blocks(AddChannelRequest(2, b"GET /delta HTTP/1.1\r\n\r\n", encoding=1), FlowControl(2, 50))
        assert peer.blocks() == [AddChannelResponse(2, HS57)]
        peer.send(encapsulate(2, OPCODE_TEXT, b"hi"))
        assert peer.data() == encapsulate(2, OPCODE_TEXT, b"hi")
        peer.send_blocks(AddChannelRequest(3, b"GET /gone HTTP/1.1\r\nX-Test:\r\n\r\n", encoding=1))
        assert peer.blocks() == [AddChannelResponse(3, HS57)]
        wait_for(lambda: len([e for e in server.events if e[0] == "open"]) == 3)
        opens = sorted(e[1:3] for e in server.events if e[0] == "open")
        assert opens == [("/base", "inherited"), ("/delta", "inherited"), ("/gone", None)]

    def test_bad_handshake_is_refused_and_slot_returned(self, serve, raw_client):
        server = serve(Recording, extensions=[Multiplex(max_channels=1)])
        peer = raw_client(server)
        peer.blocks()
        peer.send_blocks(AddChannelRequest(2, b"not http\r\n\r\n"))
        assert peer.blocks() == [AddChannelResponse(2, b"HTTP/1.1 400 Bad Request\r\n\r\n", rejected=True),
                                 NewChannelSlot(1, 65536)]

    @pytest.mark.parametrize("payload, opcode, code", [
        (b"text", OPCODE_TEXT, 2001),
        (H("00 e0"), OPCODE_BINARY, 2004),
        (encode_control_blocks(AddChannelRequest(1, HS97)), OPCODE_BINARY, 2006),
        (encode_control_blocks(AddChannelResponse(2, HS57)), OPCODE_BINARY, 2005),
        (encode_control_blocks(NewChannelSlot(1, 1)), OPCODE_BINARY, 2005),
    ])
    def test_physical_failures(self, serve, raw_client, payload, opcode, code):
        server = serve(Recording, extensions=[Multiplex()])
        peer = raw_client(server)
        peer.blocks()
        peer.send(payload, opcode)
        while True:  # the server may have sent channel data first
            message = peer.message()
            cid, blocks = decapsulate(message)
            if cid == 0:
                break
        assert [(b.channel_id, b.code) for b in blocks] == [(0, code)]
        frame = peer.frame()
        assert frame.opcode == OPCODE_CLOSE and decode_close(frame.payload)[0] == 1011
        peer.sock.shutdown(socket.SHUT_RDWR)
        wait_for(lambda: server.closes())
        assert server.closes() == [("close", "/", 1006, "")]

    def test_fallback_and_slot_violation(self, serve, raw_client):
        server = serve(Recording, extensions=[Multiplex(max_channels=0)])
        peer = raw_client(server)
        assert peer.blocks() == [NewChannelSlot(0, 0, fallback=True), FlowControl(1, 65536)]
        peer.send_blocks(AddChannelRequest(2, HS97))
        assert peer.blocks() == [DropChannel(0, 2007, "AddChannelRequest without a channel slot")]


# -- limits: what one hostile client may cost the server (issues 18 and 20) --------------------------

@pytest.fixture
def session(pair, serve):
    """``session(**Multiplex options)``: a ServerSession of a Recording server on a socket pair,
    run in a thread, and the raw client Peer (greeting already read)."""
    made = []

    def make(**config):
        server = serve(Recording)
        codec = MultiplexCodec(Multiplex(**config))
        ws, raw = pair(server_side=True, extensions=[codec])
        mux = ServerSession(server, ws, codec)
        thread = threading.Thread(target=mux.run, name="test-session")
        thread.start()
        made.append((raw, thread))
        peer = Peer(raw, client=True)
        peer.blocks()  # NewChannelSlot and FlowControl(1)
        wait_for(lambda: server.events)  # channel 1 is open: its thread sends nothing unasked
        return mux, ws, peer

    yield make
    for raw, thread in made:
        raw.shutdown(socket.SHUT_RDWR)
        thread.join(10)
        assert not thread.is_alive()


def refusals(peer, count):
    """Read control messages until ``count`` AddChannelResponse refusals arrived; return them."""
    got = []
    while len(got) < count:
        got.extend(b for b in peer.blocks() if isinstance(b, AddChannelResponse))
    assert all(b.rejected for b in got)
    return got


class TestLimits:
    def test_control_queue_is_bounded_for_a_peer_that_does_not_read(self, session):
        # Issue 20 item 5: refused 3-byte AddChannelRequests from a client that never reads grew
        # the queue of answers without bound (+207 MiB in 25 s). Now the reader stops reading
        # once the queue holds max_control_queue bytes, and goes on when the writer drains it.
        mux, ws, peer = session(max_control_queue=1024, refusal_rate=0)
        with ws.send_lock:  # the writer is stuck, as on a full TCP buffer
            peer.send_blocks(*[AddChannelRequest(2, b"x")] * 2000)
            wait_for(lambda: mux.control_pauses > 0)
            assert 1024 < mux.control_queue_bytes < 1024 + 64  # past the limit by one answer at most
        assert len(refusals(peer, 2000)) == 2000  # nothing lost: every request answered

    def test_refusals_are_rate_limited(self, session, caplog):
        mux, ws, peer = session(refusal_rate=20)
        with caplog.at_level("INFO", logger="twspy.multiplex"):
            peer.send_blocks(*[AddChannelRequest(2, b"x")] * 30)
            assert len(refusals(peer, 30)) == 30
        # A burst of 20, then the reader waited for tokens; a log line a second, the rest counted.
        assert mux.refusal_pauses >= 1
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert 1 <= len(lines) <= 3

    def test_rate_limited_log(self, caplog):
        log = RateLimitedLog(logging.getLogger("twspy.test"), interval=60)
        with caplog.at_level("INFO", logger="twspy.test"):
            for i in range(100):
                log.log("line %d", i)
        assert [r.getMessage() for r in caplog.records] == ["line 0"]
        assert log.suppressed == 99

    def test_channels_count_against_max_connections(self, serve):
        # Issue 20 item 5: 5 TCP connections made 337 server threads. A channel is a client:
        # the physical connection and channel 1 take two of max_connections, each channel one.
        server = serve(Recording, max_connections=4, extensions=[Multiplex()])
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            a = mux.open_channel("/a")
            mux.open_channel("/b")
            with pytest.raises(twspy.HandshakeError) as info:
                mux.open_channel("/c")
            assert info.value.status == 503
            a.close()
            wait_for(lambda: sorted(c.path for c in server.clients) == ["/", "/b"])  # a's place is free
            c = mux.open_channel("/c")
            c.send("c")
            assert c.recv(5).payload == "c"
            with pytest.raises(twspy.HandshakeError):  # a plain client too: the server is full
                twspy.connect(url(server), handshake_timeout=5)
        wait_for(lambda: free_places(server) == 4)  # every place comes back when the connection ends


def free_places(server):
    """How many more clients ``server`` would take now (reserved and given back at once)."""
    count = 0
    while server.reserve_connection():
        count += 1
    for _ in range(count):
        server.release_connection()
    return count


def failing_start(monkeypatch, fails):
    """Make ``threading.Thread.start`` raise as under a pid limit for threads ``fails(thread)`` picks."""
    start = threading.Thread.start

    def patched(thread):
        if fails(thread):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", patched)


class TestThreadStartFailures:
    """Issue 20 item 2: RuntimeError("can't start new thread") refuses that channel or
    connection instead of unwinding the session."""

    def test_channel_thread_refused_with_503(self, serve, monkeypatch):
        server = serve(Recording, extensions=[Multiplex()])
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            wait_for(lambda: server.events)  # channel 1's thread runs
            failing_start(monkeypatch, lambda t: "-ch" in t.name)
            with pytest.raises(twspy.HandshakeError) as info:
                mux.open_channel("/a")
            assert info.value.status == 503
            mux.default_channel.send("still here")
            assert mux.default_channel.recv(5).payload == "still here"
            monkeypatch.undo()
            b = mux.open_channel("/b")  # the slot came back
            b.send("b")
            assert b.recv(5).payload == "b"

    def test_server_writer_refused_with_1013(self, serve, monkeypatch):
        server = serve(Recording, extensions=[Multiplex()])
        failing_start(monkeypatch, lambda t: t.name == "twspy-mux-writer"
                      and threading.current_thread().name.startswith("twspy-client-"))
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            with pytest.raises(twspy.ConnectionClosed):
                mux.default_channel.recv(5)
            assert mux.physical.close_code == 1013
        monkeypatch.undo()
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:  # the server serves on
            mux.default_channel.send("ok")
            assert mux.default_channel.recv(5).payload == "ok"

    def test_channel_one_refused_with_1013(self, serve, monkeypatch):
        server = serve(Recording, extensions=[Multiplex()])
        failing_start(monkeypatch, lambda t: t.name.endswith("-ch1"))
        with connect_multiplexed(url(server), handshake_timeout=5) as mux:
            with pytest.raises(twspy.ConnectionClosed):
                mux.default_channel.recv(5)
            assert mux.physical.close_code == 1013
        monkeypatch.undo()
        wait_for(lambda: free_places(server) == server.max_connections)  # its place was given back

    def test_client_threads(self, serve, monkeypatch):
        server = serve(Recording, extensions=[Multiplex()])
        failing_start(monkeypatch, lambda t: t.name == "twspy-mux-reader")
        with pytest.raises(RuntimeError):
            connect_multiplexed(url(server), handshake_timeout=5)
        monkeypatch.undo()
        wait_for(lambda: server.closes())
        assert server.closes() == [("close", "/", 1006, "")]
