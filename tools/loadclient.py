"""Load generator for test_load.py, run as its own process so it does not share the server's GIL.

    python tools/loadclient.py echo URL CLIENTS MESSAGES
    python tools/loadclient.py listen URL CLIENTS MESSAGES

``echo``: each client sends MESSAGES messages of random (seeded) size, text and binary, some
fragmented, half the clients with permessage-deflate, and checks every echo in order.
``listen``: each client connects, the process prints ``ready``, then each client expects the
messages ``news 0`` .. ``news MESSAGES-1`` in order. Prints one JSON line with the counts.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import twspy  # noqa: E402

SIZES = (0, 1, 16, 125, 126, 1000, 5000)  # and 70000 every 50th message

# Hundreds of client threads in one process, on a machine other suites load, can leave a pong
# unread past the 20 s keepalive timeout: keepalive is not what these loads test.
NO_KEEPALIVE = {"ping_interval": None}


def echo(url, i, messages, counts):
    rng = random.Random(i)
    blob = rng.getrandbits(8 * 70000).to_bytes(70000, "little")
    with twspy.connect(url, extensions=None if i % 2 else [], handshake_timeout=60, max_size=1 << 20,
                       **NO_KEEPALIVE) as conn:
        for j in range(messages):
            size = 70000 if j % 50 == 49 else rng.choice(SIZES)
            if j % 2:
                payload = blob[:size]
            else:
                payload = ("%d:%d:" % (i, j) + "κόσμε-abcdefgh" * (size // 8 + 1))[:max(size, 12)]
            conn.send(payload, fragment_size=999 if j % 5 == 0 else None)
            got = conn.recv(60).payload
            if got != payload:
                raise AssertionError("client %d message %d: echo differs" % (i, j))
            counts[i] += 1


def listen(url, i, messages, counts, ready):
    with twspy.connect(url, extensions=None if i % 2 else [], handshake_timeout=60, **NO_KEEPALIVE) as conn:
        ready.wait()
        for j in range(messages):
            got = conn.recv(60).payload
            if got != "news %d" % j:
                raise AssertionError("client %d expected news %d, got %r" % (i, j, got[:40]))
            counts[i] += 1


def main():
    mode, url, clients, messages = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    counts = [0] * clients
    errors = []
    ready = threading.Barrier(clients + 1, timeout=120)

    def run(i):
        try:
            if mode == "echo":
                echo(url, i, messages, counts)
            else:
                listen(url, i, messages, counts, ready)
        except BaseException as exc:  # noqa: B902 - reported
            errors.append("%d: %r" % (i, exc))
            if mode == "listen":
                ready.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    if mode == "listen":
        try:
            ready.wait()
            print("ready", flush=True)
        except threading.BrokenBarrierError:
            pass
    for t in threads:
        t.join(300)
    print(json.dumps({"messages": sum(counts), "errors": errors[:10], "alive": sum(t.is_alive() for t in threads)}),
          flush=True)


if __name__ == "__main__":
    main()
