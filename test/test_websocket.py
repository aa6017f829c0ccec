"""websocket: frames over a socket, byte by byte, over socket pairs."""

from __future__ import annotations

import os
import socket
import threading
import tracemalloc

import pytest

import twspy
from twspy.frame import pack_frame

from conftest import opened_websocket


def _header(length, key=b"\x01\x02\x03\x04"):
    """A binary frame header announcing ``length`` payload bytes (8-byte length form), masked with ``key``."""
    return bytes([0x82, (0x80 if key else 0) | 127]) + length.to_bytes(8, "big") + (key or b"")


class TestLargeFrames:
    """Issue 20 item 3: an announced length is a claim, not an allocation."""

    @pytest.mark.parametrize("server_side", [True, False])
    def test_headers_announcing_big_frames_allocate_nothing(self, server_side):
        pairs = [socket.socketpair() for _ in range(20)]
        sockets = [opened_websocket(a, server_side=server_side, max_size=16 << 20) for a, _ in pairs]
        try:
            for _, raw in pairs:
                # 15 bytes on the wire (11 from a server: no mask), 16 MiB announced
                raw.sendall(_header(16 << 20, b"\x01\x02\x03\x04" if server_side else None) + b"x")
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for ws in sockets:
                    with pytest.raises(TimeoutError):
                        ws.recv(timeout=0.01)
                    assert ws.pending()  # the frame is under way, kept for the next call
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            # Before: 20 x 16 MiB. Now what arrived (a byte each) and bookkeeping.
            assert grown < 64 * 1024, grown
        finally:
            for ws in sockets:
                ws.close()
            for _, raw in pairs:
                raw.close()

    @pytest.mark.parametrize("server_side", [True, False])
    def test_large_frames_arrive_intact(self, pair, server_side):
        ws, raw = pair(server_side=server_side, max_size=8 << 20)
        payloads = [os.urandom(300 * 1024), os.urandom(5 << 20), bytes(256 * 1024)]
        frames = b""
        for payload in payloads:
            header, body = pack_frame(twspy.OPCODE_BINARY, payload, True, 0,
                                      os.urandom(4) if server_side else None)
            frames += header + body
        sender = threading.Thread(target=raw.sendall, args=(frames,))
        sender.start()
        try:
            for payload in payloads:
                frame = ws.recv(timeout=10)
                assert frame.opcode == twspy.OPCODE_BINARY and frame.payload == payload
        finally:
            sender.join(10)
        assert not sender.is_alive()

    def test_a_large_frame_resumes_after_timeouts(self, pair):
        ws, raw = pair(server_side=True, max_size=1 << 20)
        payload = os.urandom(700 * 1024)
        header, body = pack_frame(twspy.OPCODE_BINARY, payload, True, 0, os.urandom(4))
        data = header + body
        step = 100 * 1024
        for start in range(0, len(data), step):
            raw.sendall(data[start:start + step])
            if start + step < len(data):
                with pytest.raises(TimeoutError):
                    ws.recv(timeout=0.01)
        assert ws.recv(timeout=5).payload == payload

    def test_eof_inside_a_large_frame(self, pair):
        ws, raw = pair(server_side=True)
        raw.sendall(_header(512 * 1024) + b"y" * 1000)
        raw.shutdown(socket.SHUT_WR)
        with pytest.raises(twspy.ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.code == 1006


def test_a_refused_handshake_answer_is_closed_with_1010_by_the_core():
    """RFC 7692 §5.1 / RFC 6455 §7.4.1: a 101 with an extension we did not offer: the client
    says why (1010, masked) before leaving; the close frame comes from the sans-I/O core."""
    from twspy.frame import FrameParser, decode_close
    from twspy.handshake import accept_key, parse_request

    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    ws = twspy.websocket(a)
    received = []

    def server():
        head = b""
        while b"\r\n\r\n" not in head:
            head += b.recv(4096)
        key = parse_request(head).headers["Sec-WebSocket-Key"]
        b.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n"
                  b"Sec-WebSocket-Extensions: x-unknown\r\n\r\n")
        parser = FrameParser(require_mask=True)
        while not received:
            parser.feed(b.recv(4096))
            received.extend(parser)

    thread = threading.Thread(target=server)
    thread.start()
    try:
        with pytest.raises(twspy.NegotiationError):
            ws.client_handshake("127.0.0.1")
    finally:
        thread.join(5)
        ws.close()
        b.close()
    assert received[0].opcode == twspy.OPCODE_CLOSE and received[0].masking_key is not None
    assert decode_close(received[0].payload)[0] == 1010


@pytest.mark.parametrize("answer, status", [
    (b"NOT HTTP\r\n\r\n", None),                              # not HTTP at all: no Response to keep
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", None),     # a 101 that lacks Upgrade
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope", 404),
])
def test_a_bad_handshake_answer_is_a_handshake_error(answer, status):
    """The client's handshake runs in the core (ClientProtocol); every answer it refuses is a
    HandshakeError out of websocket.client_handshake, with the status and body when there are."""
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    ws = twspy.websocket(a)

    def server():
        head = b""
        while b"\r\n\r\n" not in head:
            head += b.recv(4096)
        b.sendall(answer)
        b.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=server)
    thread.start()
    try:
        with pytest.raises(twspy.HandshakeError) as info:
            ws.client_handshake("127.0.0.1")
        assert info.value.status == status
        if status is not None:
            assert info.value.body == b"nope"
    finally:
        thread.join(5)
        ws.close()
        b.close()
