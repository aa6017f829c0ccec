"""CPU cost of masking and of one message through twspy's socket layer, C accelerator on and off.

Usage: python bench/mask_micro.py [--repeat 7] [--root DIR]

No network: a fake socket hands ``websocket.recv`` pre-masked frames from memory (the server
side) and swallows what ``send_raw`` writes (the client side), so the numbers are Python
and C per message, free of the kernel and of the load generator, and stable on a busy
machine (each is the minimum of ``--repeat`` timed runs, in CPU time). Runs itself twice,
once with ``TWSPY_NO_SPEEDUPS=1``, and prints both side by side. The sans-I/O core
(``twspy.protocol``, under the asyncio layer) is measured the same way: a server
``Protocol`` fed masked frames in 256 KiB reads, as asyncio hands them over. ``--root DIR``
measures another checkout (a baseline: before and after a change).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [16, 1024, 64 << 10, 1 << 20, 16 << 20]


class FakeSocket:
    """Enough of a socket for twspy.websocket: reads from ``data``, discards writes."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = memoryview(data)
        self.pos = 0

    def recv(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return bytes(chunk)

    def recv_into(self, buffer: Any, n: int = 0) -> int:
        n = min(n or len(buffer), len(buffer), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def sendall(self, data: Any) -> None:
        pass

    def settimeout(self, timeout: Any) -> None:
        pass

    def gettimeout(self) -> None:
        return None

    def setsockopt(self, *args: Any) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def _opened(twspy: Any, sock: FakeSocket, server_side: bool) -> Any:
    ws = twspy.websocket(sock, max_size=None)
    ws.server_side = server_side
    ws.extensions = []
    ws._opened(b"", require_mask=server_side)  # the handshake marked done, as test/conftest.py does
    return ws


def _best(fn: Any, repeat: int) -> float:
    """Minimum CPU seconds of ``fn()`` over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _repeat(n: int, fn: Any, *args: Any) -> None:
    for _ in range(n):
        fn(*args)


def _receive(twspy: Any, wire: bytes, n: int) -> None:
    """A server websocket reads ``n`` masked frames from memory."""
    ws = _opened(twspy, FakeSocket(wire), server_side=True)
    for _ in range(n):
        ws.recv()


def _core_receive(protocol_class: Any, side: Any, reads: list[bytes], n: int) -> None:
    """A server Protocol (the sans-I/O core) fed ``n`` masked frames in 256 KiB reads."""
    p = protocol_class(side, max_size=None)
    for _ in range(n):
        for data in reads:
            p.receive_data(data)
        p.events_received()


def measure(repeat: int, root: str) -> dict[str, Any]:
    sys.path.insert(0, root)
    import twspy
    from twspy.frame import OPCODE_BINARY, Frame, mask, mask_into  # C or Python, as imported
    from twspy.protocol import SERVER, Protocol

    out: dict[str, Any] = {"speedups": twspy.speedups_enabled(), "mask_us": {}, "recv_us": {}, "send_us": {},
                           "core_us": {}}
    key = b"\x12\x34\x56\x78"
    for size in SIZES:
        data = os.urandom(size)
        n = max(1, (64 << 20) // max(size, 1 << 10) // 8)  # about 8 MiB of payload per timed run
        buf = bytearray(data)
        wire = Frame(OPCODE_BINARY, data, masking_key=key).pack() * n
        client = _opened(twspy, FakeSocket(), server_side=False)
        out["mask_us"][size] = 1e6 * _best(functools.partial(_repeat, n, mask, key, data), repeat) / n
        out["mask_us"]["%d-in-place" % size] = 1e6 * _best(functools.partial(_repeat, n, mask_into, key, buf),
                                                           repeat) / n
        out["recv_us"][size] = 1e6 * _best(functools.partial(_receive, twspy, wire, n), repeat) / n
        out["send_us"][size] = 1e6 * _best(functools.partial(_repeat, n, client.send_raw, OPCODE_BINARY, data),
                                           repeat) / n
        one = wire[:len(wire) // n]
        reads = [one[i:i + (256 << 10)] for i in range(0, len(one), 256 << 10)]
        out["core_us"][size] = 1e6 * _best(functools.partial(_core_receive, Protocol, SERVER, reads, n), repeat) / n
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--root", default=ROOT, help="the twspy checkout to measure (default: this one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.repeat, os.path.abspath(args.root))))
        return 0
    runs = {}
    for label, value in (("C", ""), ("Python", "1")):
        env = dict(os.environ, TWSPY_NO_SPEEDUPS=value)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--repeat", str(args.repeat),
                              "--root", args.root],
                             env=env, capture_output=True, text=True, timeout=1800, check=True)
        runs[label] = json.loads(out.stdout)
    if not runs["C"]["speedups"]:
        print("note: twspy._speedups is not built (`make build`): both columns are pure Python")
    print("%s: CPU microseconds per call or message (min of %d runs); speed-up = Python / C" % (
        args.root, args.repeat))
    print("%-34s %12s %12s %9s" % ("", "C", "Python", "speed-up"))
    for section, title in (("mask_us", "mask() %s"), ("recv_us", "server websocket.recv(), %s frame"),
                           ("send_us", "client websocket.send_raw(), %s"),
                           ("core_us", "server Protocol, %s frame")):
        for key in runs["C"][section]:
            c, py = runs["C"][section][key], runs["Python"][section][key]
            size, _, how = key.partition("-")
            label = _size(int(size)) + (" in place" if how else "")
            print("%-34s %12.2f %12.2f %8.1fx" % (title % label, c, py, py / c if c else float("nan")))
    return 0


def _size(n: int) -> str:
    return "%d MiB" % (n >> 20) if n >= 1 << 20 else "%d KiB" % (n >> 10) if n >= 1 << 10 else "%d B" % n


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
