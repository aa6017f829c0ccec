"""`make fuzz`: a bounded fuzzing campaign against a live twspy server (default 3 minutes).

    python tools/fuzz.py [--seconds 180] [--seed N]

Against one in-process echo Server (permessage-deflate on) it sends, over many connections:
random bytes after a valid handshake, mutated valid frame streams, truncated and oversized
handshakes, and valid sessions cut off at every byte offset. Then it checks that the server
still echoes a new client correctly and that its threads and file descriptors are back to
the baseline. Finally it runs the property tests with many more (random) examples.
Exits non-zero on any finding.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import twspy  # noqa: E402
from twspy.cli import EchoServer  # noqa: E402

BATCH = 40  # concurrent connections per round
REQUEST = (b"GET /fuzz HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def valid_stream(rng: random.Random) -> bytes:
    out = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.5:
            frame = twspy.Frame(rng.choice([1, 2]), os.urandom(rng.choice([0, 5, 125, 126, 2000])), mask=True)
            out.extend(f.pack() for f in frame.fragment(rng.randint(1, 700), mask=True))
        elif kind < 0.8:
            out.append(twspy.ControlFrame(9, os.urandom(rng.randint(0, 125)), mask=True).pack())
        else:
            out.append(twspy.ControlFrame(10, b"", mask=True).pack())
    out.append(twspy.ControlFrame(8, b"\x03\xe8", mask=True).pack())
    return b"".join(out)


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        if not data or op < 0.4:
            data.insert(rng.randint(0, len(data)), rng.randrange(256))
        elif op < 0.8:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(len(data))]
    return bytes(data)


def attack(port: int, payload: bytes, rng: random.Random) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(payload)
            if rng.random() < 0.5:
                sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + 1.5
            while time.monotonic() < end:  # read what the server answers, until it closes
                if not sock.recv(65536):
                    break
    except OSError:
        pass


def run_batch(jobs: list) -> None:
    """Run attacks concurrently (each may wait for the server's deadlines)."""
    workers = [threading.Thread(target=attack, args=job) for job in jobs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)


def check_echo(port: int) -> None:
    with twspy.connect("ws://127.0.0.1:%d/" % port, handshake_timeout=5) as conn:
        for payload in ("text", b"\x00binary", "κόσμε" * 1000):
            conn.send(payload)
            assert conn.recv(5).payload == payload, "echo broken after fuzzing"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    rng = random.Random(args.seed)
    print("seed %d, %ss" % (args.seed, args.seconds), flush=True)

    threads0, fds0 = threading.active_count(), fds()
    server = EchoServer(("127.0.0.1", 0), handshake_timeout=2, close_timeout=1, max_size=1 << 16)
    errors: list = []
    original = server.onerror
    server.onerror = lambda client, exc: original(client, exc)  # protocol errors are expected
    thread = server.serve_in_thread()
    port = server.address[1]
    stream = valid_stream(rng)
    cases = 0
    deadline = time.monotonic() + args.seconds * 0.6
    try:
        # Every byte offset of a valid session, then random and mutated inputs until the deadline.
        session = REQUEST + stream
        for start in range(0, len(session) + 1, BATCH):
            cuts = range(start, min(start + BATCH, len(session) + 1))
            run_batch([(port, session[:cut], random.Random(rng.random())) for cut in cuts])
            cases += len(cuts)
            if time.monotonic() > deadline:
                break
        while time.monotonic() < deadline:
            choice = rng.random()
            if choice < 0.3:
                payload = REQUEST + os.urandom(rng.randint(1, 3000))
            elif choice < 0.7:
                payload = REQUEST + mutate(rng, valid_stream(rng))
            elif choice < 0.85:
                payload = mutate(rng, REQUEST) + valid_stream(rng)
            else:
                payload = REQUEST[:40] + b"X-Long: " + b"a" * rng.randint(1000, 40000) + b"\r\n\r\n"
            batch = [(port, payload if i == 0 else mutate(rng, payload), random.Random(rng.random()))
                     for i in range(BATCH)]
            run_batch(batch)
            cases += len(batch)
        check_echo(port)
        settle = time.monotonic() + 10
        while (len(server.clients) or threading.active_count() > threads0 + 2) and time.monotonic() < settle:
            time.sleep(0.05)
        if server.clients or threading.active_count() > threads0 + 2:
            errors.append("threads not back to baseline: %d (was %d), clients %d" % (
                threading.active_count(), threads0, len(server.clients)))
    except AssertionError as exc:
        errors.append(str(exc))
    finally:
        server.shutdown()
        thread.join(5)
    if fds() > fds0 + 1:
        errors.append("file descriptors not back to baseline: %d (was %d)" % (fds(), fds0))
    print("%d live cases, server healthy afterwards: %s" % (cases, not errors), flush=True)

    examples = max(300, int(args.seconds * 10))
    env = dict(os.environ, TWSPY_FUZZ_EXAMPLES=str(examples))
    budget = max(120.0, args.seconds * 2)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", os.path.join(HERE, "test_properties.py")],
                            env=env, timeout=budget)
    if result.returncode:
        errors.append("property tests failed with %d examples each" % examples)
    for error in errors:
        print("FINDING:", error)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
