#!/usr/bin/env python3
"""Scale of the asyncio server: N idle connections in one process, and one broadcast to all of them.

    python3 bench/asyncio_scale.py [--conns 9000] [--size 16] [--server twspy-asyncio|websockets-asyncio]

Starts the server in its own process (127.0.0.1, port 0, keepalive off, compression off), opens
``--conns`` WebSocket connections to it from this process (asyncio streams, hand-written
handshake), reads the server's VmRSS before and after, then sends one message on an extra
connection that the server broadcasts to every client, and reports the time until the last
client has it (measured here: it includes this process reading N sockets, so it is an upper
bound). ``make bench`` runs it after ``bench/run.py`` (twspy-asyncio, 9,000 connections, with the
issue's target of 16 KiB per connection). Raises the soft RLIMIT_NOFILE to the hard limit (N + a few fds each side).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SERVER = r'''
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
kind = sys.argv[1]
if kind == "twspy-asyncio":
    sys.path.insert(0, sys.argv[2])
    from twspy.asyncio import Server

    class Hub(Server):
        async def onmessage(self, client, message):
            self.broadcast(message)

    async def main():
        async with Hub(("127.0.0.1", 0), extensions=[], ping_interval=None, max_connections=1 << 20,
                       backlog_size=4096) as server:
            print("PORT %d" % server.port, flush=True)
            await server.serve_forever()
else:
    import websockets
    from websockets.asyncio.server import serve, broadcast

    async def main():
        clients = set()

        async def handler(ws):
            clients.add(ws)
            try:
                async for message in ws:
                    broadcast(clients, message)
            finally:
                clients.discard(ws)

        async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None, backlog=4096) as server:
            print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
            await server.serve_forever()
asyncio.run(main())
'''

UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError("handshake refused: %r" % head[:40])
    return reader, writer


async def measure(port: int, pid: int, conns: int, size: int, target: int | None = None) -> None:
    before = rss_kib(pid)
    clients = []
    for start in range(0, conns, 200):  # 200 handshakes at a time: the backlog holds them
        clients += await asyncio.gather(*(open_ws(port) for _ in range(start, min(conns, start + 200))))
    await asyncio.sleep(1.0)  # let the server settle (its tasks reach recv())
    after = rss_kib(pid)
    per_conn = (after - before) / conns
    print("%d idle connections: server VmRSS %d -> %d KiB, %.1f KiB per connection"
          % (conns, before, after, per_conn), flush=True)
    if target is not None:
        print("target (issue 12): <= %d KiB per connection: %s" % (target, "ok" if per_conn <= target else "MISS"),
              flush=True)

    payload = b"x" * size
    frame = bytes([0x82, 0x80 | size]) + b"\x00\x00\x00\x00" + payload  # masked with a zero key
    expected = 2 + size
    sender_r, sender_w = await open_ws(port)
    t0 = time.perf_counter()
    sender_w.write(frame)
    await asyncio.gather(*(r.readexactly(expected) for r, _ in clients))
    elapsed = time.perf_counter() - t0
    print("one %d-byte broadcast reached all %d clients in %.0f ms" % (size, conns, elapsed * 1000), flush=True)
    for _, w in clients + [(sender_r, sender_w)]:
        w.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=9000)
    parser.add_argument("--size", type=int, default=16, help="broadcast payload bytes (< 126)")
    parser.add_argument("--server", default="twspy-asyncio", choices=("twspy-asyncio", "websockets-asyncio"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.conns + 100 > hard:
        if hard < 1100:
            print("RLIMIT_NOFILE %d is too low for %d connections" % (hard, args.conns), file=sys.stderr)
            return 2
        print("RLIMIT_NOFILE %d: %d connections instead of %d" % (hard, hard - 100, args.conns), flush=True)
        args.conns = hard - 100
    proc = subprocess.Popen([sys.executable, "-c", SERVER, args.server, ROOT], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = int(line.split()[1])
        print("%s (pid %d) on port %d" % (args.server, proc.pid, port), flush=True)
        target = 16 if args.server == "twspy-asyncio" else None
        asyncio.run(measure(port, proc.pid, args.conns, args.size, target))
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
