"""Compression extensions end to end: twspy client <-> twspy Server over loopback."""

from __future__ import annotations

import random
import socket
import threading

import pytest

import twspy
from twspy import DeflateFrame, DeflateMessage
from twspy.cli import EchoServer
from twspy.frame import OPCODE_CLOSE, FrameParser, decode_close
from twspy.handshake import accept_key, make_key, read_head

from conftest import frame_from, url

SIZES = [0, 1, 125, 126, 1024, 65535, 65536, 1 << 20]


def text_of(size, seed=0):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "{\"id\": 1}", "κόσμε", "🙂"]
    out = []
    n = 0
    while n < size:
        w = rng.choice(words)
        out.append(w)
        n += len(w.encode())
    return "".join(out).encode()[:size].decode("utf-8", "ignore")


def names(conn):
    return [codec.name for codec in conn.sock.extensions]


class TestPermessageDeflate:
    def test_negotiated_by_default(self, serve):
        server = serve(EchoServer)
        # background=False: this test reads frames below the Connection, no reader thread may race it.
        with twspy.connect(url(server), background=False) as conn:
            assert names(conn) == ["permessage-deflate"]
            conn.send("x" * 10000)
            frame = conn.sock.recv(5)  # below the Connection: the echo as it travelled
            assert frame.rsv1 and len(frame.payload) < 200
        assert conn.close_code == 1000

    def test_switched_off(self, serve):
        server = serve(EchoServer, extensions=[])
        with twspy.connect(url(server)) as conn:
            assert names(conn) == []
            conn.send("plain")
            assert conn.recv(5).payload == "plain"
        with twspy.connect(url(serve(EchoServer)), extensions=[]) as conn:
            assert names(conn) == []

    @pytest.mark.parametrize("options", [
        {}, {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"server_max_window_bits": 9, "client_max_window_bits": 10}])
    def test_round_trips(self, serve, options):
        server = serve(EchoServer, max_size=4 << 20)
        with twspy.connect(url(server), extensions=[DeflateMessage(**options)], max_size=4 << 20) as conn:
            assert names(conn) == ["permessage-deflate"]
            for size in SIZES:
                text = text_of(size, size)
                conn.send(text)
                assert conn.recv(10).payload == text
                data = random.Random(size).randbytes(size) if hasattr(random.Random, "randbytes") else \
                    bytes(random.Random(size).getrandbits(8) for _ in range(size))
                conn.send(data, fragment_size=4096)
                assert conn.recv(10).payload == data
                conn.send_ping(b"between")
            conn.send("no thanks", compress=False)
            assert conn.recv(5).payload == "no thanks"

    def test_sixteen_mib(self, serve):
        server = serve(EchoServer, max_size=17 << 20)
        payload = (b"0123456789abcdef" * 4096 + bytes(range(256)) * 16) * 240  # ~16.7 MB, compressible
        payload = payload[:16 << 20]
        with twspy.connect(url(server), max_size=17 << 20) as conn:
            conn.send(payload, fragment_size=1 << 20)
            assert conn.recv(30).payload == payload

    def test_fragmented_and_interleaved_control(self, serve):
        server = serve(EchoServer)
        with twspy.connect(url(server)) as conn:
            for i in range(20):
                message = text_of(5000, i)
                conn.send(message, fragment_size=333)
                conn.send_ping(str(i))
                assert conn.recv(5).payload == message

    def test_decompression_bomb_is_1009(self, serve):
        server = serve(EchoServer, max_size=1 << 20)
        with twspy.connect(url(server)) as conn:
            conn.send(bytes(64 << 20))  # 64 MiB of zeros: about 64 KiB on the wire
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(10)
            assert info.value.code == 1009

    def test_close_codes(self, serve):
        server = serve(EchoServer)
        conn = twspy.connect(url(server))
        conn.close(4321, "bye")
        assert conn.close_code == 4321

    def test_threads_share_one_compressor(self, serve):
        server = serve(EchoServer)
        with twspy.connect(url(server)) as conn:
            sent = ["%d:%s" % (i, text_of(300, i)) for i in range(40)]

            def send(items):
                for item in items:
                    conn.send(item)

            threads = [threading.Thread(target=send, args=(sent[i::4],)) for i in range(4)]
            for t in threads:
                t.start()
            got = sorted(conn.recv(5).payload for _ in sent)
            for t in threads:
                t.join(5)
            assert got == sorted(sent)


class TestDeflateFrame:
    @pytest.mark.parametrize("server_ext,client_ext,expected", [
        ([DeflateFrame()], [DeflateFrame()], ["deflate-frame"]),
        ([DeflateFrame()], [], []),
        ([], [DeflateFrame()], []),
        ([DeflateMessage(), DeflateFrame()], [DeflateFrame(), DeflateMessage()], ["deflate-frame"]),
    ])
    def test_negotiation(self, serve, server_ext, client_ext, expected):
        server = serve(EchoServer, extensions=server_ext)
        with twspy.connect(url(server), extensions=client_ext) as conn:
            assert names(conn) == expected
            conn.send("hello " * 100)
            assert conn.recv(5).payload == "hello " * 100

    @pytest.mark.parametrize("options", [{}, {"no_context_takeover": True}, {"max_window_bits": 10}])
    def test_round_trips(self, serve, options):
        server = serve(EchoServer, extensions=[DeflateFrame()], max_size=2 << 20)
        # background=False: the end reads frames below the Connection, no reader thread may race it.
        with twspy.connect(url(server), extensions=[DeflateFrame(**options)], max_size=2 << 20,
                           background=False) as conn:
            for size in SIZES:
                text = text_of(size, size)
                conn.send(text, fragment_size=1000)
                assert conn.recv(10).payload == text
                conn.send(text.encode())
                assert conn.recv(10).payload == text.encode()
                conn.send_ping(b"p")
            frame_check = conn.sock
            conn.send("y" * 5000)
            frame = frame_check.recv(5)
            while frame.is_control:  # the pongs of the pings above
                frame = frame_check.recv(5)
            assert frame.payload == b"y" * 5000  # decoded by the websocket layer
            assert not frame.rsv1

    def test_bomb_is_1009(self, serve):
        server = serve(EchoServer, extensions=[DeflateFrame()], max_size=1 << 20)
        with twspy.connect(url(server), extensions=[DeflateFrame()]) as conn:
            conn.send(bytes(32 << 20))
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(10)
            assert info.value.code == 1009


def test_broadcast_to_compressing_and_plain_clients(serve):
    server = serve(EchoServer)
    clients = [twspy.connect(url(server), extensions=None if i % 2 else []) for i in range(6)]
    try:
        from conftest import wait_for
        wait_for(lambda: len(server.clients) == 6)
        for i in range(50):
            server.broadcast(b"bin %d" % i if i % 2 else "text %d" % i)
        for conn in clients:
            got = [conn.recv(5) for _ in range(50)]
            assert got == [twspy.BinaryMessage(b"bin %d" % i) if i % 2 else twspy.TextMessage("text %d" % i)
                           for i in range(50)]
    finally:
        for conn in clients:
            conn.close()


@pytest.mark.parametrize("extensions", [[DeflateFrame()], [twspy.Multiplex()]], ids=["deflate-frame", "mux"])
def test_sizes_up_to_16_mib(serve, extensions):
    """Each extension round-trips text and binary from 0 B to 16 MiB, with pings and close codes."""
    server = serve(EchoServer, extensions=extensions, max_size=17 << 20)
    sizes = [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20]
    if isinstance(extensions[0], twspy.Multiplex):
        mux = twspy.connect_multiplexed(url(server), handshake_timeout=10, max_size=17 << 20)
        conn = mux.open_channel("/big", max_size=17 << 20)
    else:
        mux = None
        conn = twspy.connect(url(server), extensions=[DeflateFrame()], max_size=17 << 20)
    try:
        for size in sizes:
            data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
            conn.send(data, fragment_size=1 << 20)
            assert conn.recv(60).payload == data
            conn.send(data.decode())
            assert conn.recv(60).payload == data.decode()
            conn.send_ping(b"between")
        conn.close(4002, "big done")
        assert conn.close_code == 4002
    finally:
        conn.abort()
        if mux is not None:
            mux.close()


# Issue 20 item 1: a frame of complete, empty final deflate blocks (03 00 repeated) inflates
# to nothing, so max_size never fired, and cost quadratic CPU (~9 s per MiB). Both roles
# must now close with 1007 at once; the raw peer below plays the hostile side.
ATTACK = b"\x03\x00" * (256 << 10)  # 512 KiB, within the default 1 MiB max_size


def attack_frame(masked):
    """The ATTACK payload in one binary frame with RSV1 (FIN | RSV1 | binary: c2), masked or not."""
    key = b"\x01\x02\x03\x04"
    n = len(ATTACK)
    head = b"\xc2" + bytes([0x80 | 127 if masked else 127]) + n.to_bytes(8, "big")
    return head + key + twspy.frame.mask(key, ATTACK) if masked else head + ATTACK


def close_code_from(sock):
    parser = FrameParser()
    while True:
        frame = frame_from(sock, parser, timeout=10)
        if frame.opcode == OPCODE_CLOSE:
            return decode_close(frame.payload)[0]


@pytest.mark.parametrize("extension", ["permessage-deflate", "deflate-frame"])
def test_empty_final_blocks_fail_the_server_side_with_1007(serve, extension):
    server = serve(EchoServer, extensions=[DeflateMessage(), DeflateFrame()])
    with socket.create_connection(("127.0.0.1", server.address[1]), timeout=10) as sock:
        key = make_key()
        sock.sendall(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Extensions: %s\r\n\r\n" % (key, extension)).encode())
        head, rest = read_head(sock.recv)
        assert head.startswith(b"HTTP/1.1 101") and extension.encode() in head
        assert not rest
        sock.sendall(attack_frame(masked=True))
        assert close_code_from(sock) == 1007
    with twspy.connect(url(server)) as conn:  # the server is fine
        conn.send("still here")
        assert conn.recv(10).payload == "still here"


@pytest.mark.parametrize("extension", [DeflateMessage(), DeflateFrame()], ids=["permessage-deflate", "deflate-frame"])
def test_empty_final_blocks_fail_the_client_side_with_1007(extension):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    result = {}

    def hostile_server():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            head, _ = read_head(conn.recv)
            key = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Extensions: %s\r\n\r\n"
                          % (accept_key(key), extension.name)).encode())
            conn.sendall(attack_frame(masked=False))
            result["code"] = close_code_from(conn)

    thread = threading.Thread(target=hostile_server)
    thread.start()
    try:
        with twspy.connect("ws://127.0.0.1:%d/" % listener.getsockname()[1], extensions=[extension],
                           handshake_timeout=10) as conn:
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(10)
            assert info.value.code == 1007
    finally:
        thread.join(10)
        listener.close()
    assert not thread.is_alive() and result["code"] == 1007
