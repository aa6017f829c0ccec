"""The echo servers under test, one per process.

``python bench/servers.py KIND [--compression]`` listens on 127.0.0.1 with a free port,
prints ``PORT <n>`` on stdout once it accepts connections, then echoes every message with
the opcode it came with (text stays text, binary stays binary) until it is killed.

KIND is one of :data:`KINDS`:

- ``twspy``: a :class:`twspy.Server` subclass (a thread per client), compression off
  unless ``--compression`` (then ``twspy.DeflateMessage()`` when the module exists).
- ``websockets-sync``: websockets' threaded ``websockets.sync.server`` (a thread per client).
- ``websockets-asyncio``: websockets' asyncio server (one thread, an event loop).
- ``aiohttp``: aiohttp's ``web.WebSocketResponse`` (one thread, an event loop).
- ``twspy-base``, ``twspy-asyncio-base``: ``twspy`` and ``twspy-asyncio`` imported from the
  checkout named by ``TWSPY_BENCH_BASE`` (``run.py --base DIR``): before and after a change,
  interleaved in one run.
- ``raw-tcp``: the limit: the same thread-per-connection model without WebSocket. Messages
  are a 4-byte big-endian length and the payload; each is echoed with one ``sendall``, as a
  WebSocket server must (it cannot batch replies to messages it has not read yet).

Keepalive pings are off everywhere (they would add frames to the counts); the largest
message accepted is :data:`MAX_SIZE` everywhere.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading

from procs import raise_nofile  # bench/ is this script's directory, hence on sys.path

__all__ = ["KINDS", "BASE_KINDS", "PEERS", "MAX_SIZE", "main", "profile_to"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("twspy", "twspy-base", "twspy-asyncio", "twspy-asyncio-base", "websockets-sync", "websockets-asyncio",
         "aiohttp", "raw-tcp")
BASE_KINDS = ("twspy-base", "twspy-asyncio-base")
PEERS = ("websockets-sync", "websockets-asyncio", "aiohttp")
MAX_SIZE = 32 << 20  # the 16 MiB scenario, with room
HOST = "127.0.0.1"
BACKLOG = 1024       # the memory scenario opens 1,000 connections in a row


def _ready(port: int) -> None:
    print("PORT %d" % port, flush=True)


def _root(base: bool) -> str:
    """Where twspy is imported from: this working tree, or the baseline checkout."""
    if not base:
        return ROOT
    root = os.environ.get("TWSPY_BENCH_BASE", "")
    if not os.path.isfile(os.path.join(root, "twspy", "__init__.py")):
        print("TWSPY_BENCH_BASE=%r is not a twspy checkout" % root, file=sys.stderr, flush=True)
        sys.exit(3)
    return os.path.abspath(root)


def serve_twspy(compression: bool, base: bool = False) -> None:
    sys.path.insert(0, _root(base))  # the working tree's twspy (or the baseline's), never an installed one
    import twspy

    class EchoServer(twspy.Server):
        def onmessage(self, client: twspy.ServerConnection, message: twspy.Message) -> None:
            client.send(message)

    extensions = []
    if compression:
        if not hasattr(twspy, "DeflateMessage"):
            print("twspy has no DeflateMessage (permessage-deflate) yet", file=sys.stderr, flush=True)
            sys.exit(3)
        extensions = [twspy.DeflateMessage()]
    server = EchoServer((HOST, 0), extensions=extensions, max_size=MAX_SIZE, backlog_size=BACKLOG,
                        max_connections=1 << 20)
    _ready(server.address[1])
    server.run()


def serve_twspy_asyncio(compression: bool, base: bool = False) -> None:
    """twspy.asyncio's echo, written as websockets' asyncio server is below (one event loop)."""
    sys.path.insert(0, _root(base))
    import asyncio

    from twspy.asyncio import serve

    async def handler(client) -> None:
        async for message in client:
            await client.send(message)

    async def main() -> None:
        async with serve(handler, HOST, 0, extensions=None if compression else [], max_size=MAX_SIZE,
                         ping_interval=None, backlog_size=BACKLOG, max_connections=1 << 20) as server:
            _ready(server.port)
            await server.serve_forever()

    asyncio.run(main())


def serve_websockets_sync(compression: bool) -> None:
    from websockets.sync.server import serve

    def handler(ws) -> None:
        for message in ws:
            ws.send(message)

    with serve(handler, HOST, 0, compression="deflate" if compression else None, max_size=MAX_SIZE,
               ping_interval=None, backlog=BACKLOG) as server:
        _ready(server.socket.getsockname()[1])
        server.serve_forever()


def serve_websockets_asyncio(compression: bool) -> None:
    import asyncio

    from websockets.asyncio.server import serve

    async def handler(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(handler, HOST, 0, compression="deflate" if compression else None, max_size=MAX_SIZE,
                         ping_interval=None, backlog=BACKLOG) as server:
            _ready(server.sockets[0].getsockname()[1])
            await server.serve_forever()

    asyncio.run(main())


def serve_aiohttp(compression: bool) -> None:
    import asyncio

    from aiohttp import WSMsgType, web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=compression, max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0, backlog=BACKLOG)
        await site.start()
        _ready(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


_LARGE = 256 << 10  # payloads from this size are read straight into their own buffer


def _raw_client(conn: socket.socket) -> None:
    """Echo length-prefixed messages, one sendall per message."""
    recv, sendall = conn.recv, conn.sendall
    buf = b""
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            # recv() rather than a per-connection buffer: an idle connection holds no buffer.
            data = recv(65536)
            if not data:
                return
            buf = buf + data if buf else data
            pos, end_buf = 0, len(buf)
            while end_buf - pos >= 4:
                length = int.from_bytes(buf[pos:pos + 4], "big")
                end = pos + 4 + length
                if end <= end_buf:
                    sendall(buf[pos:end] if pos or end != end_buf else buf)
                    pos = end
                    continue
                if length >= _LARGE:
                    message = bytearray(4 + length)
                    have = end_buf - pos
                    message[:have] = buf[pos:]
                    with memoryview(message) as view:
                        while have < len(message):
                            n = conn.recv_into(view[have:])
                            if not n:
                                return
                            have += n
                    sendall(message)
                    pos = end_buf
                break
            buf = buf[pos:] if pos < end_buf else b""
    except OSError:
        pass
    finally:
        conn.close()


def serve_raw_tcp(compression: bool) -> None:
    if compression:
        sys.exit(3)
    listener = socket.create_server((HOST, 0), backlog=BACKLOG)
    _ready(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_raw_client, args=(conn,), daemon=True).start()


SERVE = {
    "twspy": serve_twspy,
    "twspy-base": lambda compression: serve_twspy(compression, base=True),
    "twspy-asyncio": serve_twspy_asyncio,
    "twspy-asyncio-base": lambda compression: serve_twspy_asyncio(compression, base=True),
    "websockets-sync": serve_websockets_sync,
    "websockets-asyncio": serve_websockets_asyncio,
    "aiohttp": serve_aiohttp,
    "raw-tcp": serve_raw_tcp,
}


def profile_to(path: str) -> None:
    """Profile every thread with cProfile; SIGTERM writes the merged stats to ``path`` and exits.

    Used by bench/profile_twspy.py. Threads still running at SIGTERM are not counted, so
    the load generator closes its connections first.
    """
    import cProfile
    import pstats
    import signal
    import time

    finished: list = []
    lock = threading.Lock()
    # CPU time of the calling thread (user + system), not wall time: a thread blocked in
    # recv() for a second has not spent a second there.
    timer = time.thread_time if sys.version_info < (3, 12) else time.process_time
    main_profile = cProfile.Profile(timer)
    if sys.version_info < (3, 12):  # one profiler per thread; 3.12+ profiles all threads from one
        original_run = threading.Thread.run

        def run(self: threading.Thread) -> None:
            profile = cProfile.Profile(timer)
            profile.enable()
            try:
                original_run(self)
            finally:
                profile.disable()
                with lock:
                    finished.append(profile)

        threading.Thread.run = run  # type: ignore[method-assign]

    def dump(signum: int, frame: object) -> None:
        main_profile.disable()
        with lock:
            profiles = [main_profile] + finished
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(path)
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    main_profile.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--compression", action="store_true", help="accept permessage-deflate")
    parser.add_argument("--profile", metavar="PATH", help="cProfile every thread; SIGTERM writes the stats")
    args = parser.parse_args()
    raise_nofile()
    if args.profile:
        profile_to(args.profile)
    SERVE[args.kind](args.compression)


if __name__ == "__main__":
    main()
