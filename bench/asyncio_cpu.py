"""CPU per round trip of twspy.asyncio, client and server in one event loop (no load generator).

Usage: python bench/asyncio_cpu.py [--size 1024] [--conns 32] [--messages 300] [--root DIR]

Each of ``--conns`` clients sends ``--messages`` text messages of ``--size`` bytes, one in flight,
to an echo server on 127.0.0.1 (port 0, no compression, no keepalive); the result is the process's
CPU time per round trip (both sides' Python and the kernel's loopback), the minimum of 5 runs.
Steadier than the bench's rates on a busy machine; ``--root`` measures another checkout (before
and after a change).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def _measure(args: argparse.Namespace) -> float:
    from twspy.asyncio import connect, serve

    async def echo(client: Any) -> None:
        async for message in client:
            await client.send(message)

    async def client(url: str, message: str) -> None:
        async with connect(url, extensions=[]) as conn:
            for _ in range(args.messages):
                await conn.send(message)
                await asyncio.wait_for(conn.recv(), 30)

    async with serve(echo, "127.0.0.1", 0, extensions=[], ping_interval=None) as server:
        url = "ws://127.0.0.1:%d" % server.port
        message = "x" * args.size
        best = float("inf")
        for _ in range(5):
            t = time.process_time()
            await asyncio.wait_for(asyncio.gather(*[client(url, message) for _ in range(args.conns)]), 300)
            best = min(best, (time.process_time() - t) / (args.conns * args.messages))
        return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--root", default=ROOT, help="the twspy checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.root))
    best = asyncio.run(_measure(args))
    print("%s: %d B x %d connections: %.1f us of CPU per round trip (client + server, min of 5)" % (
        args.root, args.size, args.conns, best * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
