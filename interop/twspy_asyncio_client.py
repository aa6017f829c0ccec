#!/usr/bin/env python3
"""twspy.asyncio.connect against a Node ``ws`` server (node_echo.js; ``interop/run.py`` starts both).

    python3 interop/twspy_asyncio_client.py ws://127.0.0.1:PORT --deflate off|default|tuned --max-size BYTES

The same protocol as twspy_client.py (one JSON line per check, then ``{"summary": ...}``; exit
status 0 all passed, 1 a check failed), with the checks that exercise the asyncio layer: the
negotiated extension, round trips of every size class, fragmented sends, pings with their
latency, pings and fragments from the server, closes, and the limits (1009, 1007).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twspy.asyncio import connect  # noqa: E402
from twspy.errors import ConnectionClosed  # noqa: E402
from twspy.message import TextMessage  # noqa: E402

MiB = 1 << 20
T = 60.0


def make_text(size: int) -> str:
    text = "aé€😀" * (size // 10)
    return text + "x" * (size - len(text.encode("utf-8")))


class Failed(Exception):
    pass


def check(cond: bool, message: str) -> None:
    if not cond:
        raise Failed(message)


def build(base: str, deflate: str, max_size: int) -> list[tuple[str, Callable[[], Awaitable[str | None]]]]:
    checks: list[tuple[str, Callable[[], Awaitable[str | None]]]] = []

    def t(name: str) -> Callable[[Any], Any]:
        def register(fn: Any) -> Any:
            checks.append((name, fn))
            return fn
        return register

    def open_(path: str = "/echo", **options: Any) -> connect:
        options.setdefault("max_size", max_size)
        if deflate == "off":
            options.setdefault("extensions", [])
        return connect(base.rstrip("/") + path, handshake_timeout=10, close_timeout=10, **options)

    async def round_trip(conn: Any, message: Any, **options: Any) -> None:
        await conn.send(message, **options)
        got = await conn.recv(timeout=T)
        check(isinstance(got, TextMessage) == isinstance(message, str), "type differs")
        check(got.payload == message, "payload differs: sent %d, got %d" % (len(message), len(got.payload)))

    @t("handshake: extensions")
    async def _() -> str:
        async with open_() as conn:
            names = [c.name for c in conn.core.extensions]
            check(names == ([] if deflate == "off" else ["permessage-deflate"]), "extensions %r" % names)
            header = conn.response.headers.get("Sec-WebSocket-Extensions", "") or ""
        check(conn.close_code == 1000, "close %s" % conn.close_code)
        return "Sec-WebSocket-Extensions: %r" % header

    @t("round trips: text and binary, 0 B to 16 MiB")
    async def _() -> str:
        sizes = [n for n in (0, 1, 125, 126, 65535, 65536, 65537, MiB, 4 * MiB, 16 * MiB) if n <= max_size]
        async with open_() as conn:
            for n in sizes:
                await round_trip(conn, make_text(n))
                await round_trip(conn, os.urandom(min(n, 15 * MiB)))
        return "%d sizes" % len(sizes)

    @t("100 messages back to back, then 100 echoes")
    async def _() -> None:
        async with open_() as conn:
            sent = [make_text(i * 20) if i % 2 else os.urandom(i * 20) for i in range(100)]
            for message in sent:
                await conn.send(message)
            for message in sent:
                check((await conn.recv(timeout=T)).payload == message, "out of order or corrupted")

    @t("fragmented send: 4 MiB in 64 KiB frames")
    async def _() -> None:
        async with open_() as conn:
            await round_trip(conn, os.urandom(min(4 * MiB, max_size)), fragment_size=65536)

    @t("ping: future resolved with the latency")
    async def _() -> str:
        async with open_() as conn:
            pong = await conn.ping(b"\x00" * 125)
            latency = await asyncio.wait_for(pong, T)
        return "%.1f ms" % (latency * 1000)

    @t("server ping: answered, then a text 'pong:<hex>'")
    async def _() -> None:
        async with open_("/ping?payload=cafe") as conn:
            check((await conn.recv(timeout=T)).payload == "pong:cafe", "no pong seen by the server")

    @t("server fragments: reassembled")
    async def _() -> None:
        async with open_("/fragments") as conn:
            while True:
                message = await conn.recv(timeout=T)
                if message.payload == "done":
                    return

    @t("close codes from the server: 1000 ends iteration, 4000 raises")
    async def _() -> None:
        async with open_("/close?code=1000&reason=ok") as conn:
            check([m async for m in conn] == [], "messages before the close")
        check((conn.close_code, conn.close_reason) == (1000, "ok"), "close %s" % conn.close_code)
        async with open_("/close?code=4000&reason=bye") as conn:
            try:
                async for _ in conn:
                    pass
                raise Failed("no exception for 4000")
            except ConnectionClosed as exc:
                check((exc.code, exc.reason) == (4000, "bye"), "got %s" % exc)

    @t("close from twspy: 4000 'bye' reaches ws")
    async def _() -> None:
        async with open_() as conn:
            await conn.close(4000, "bye")
        check(conn.close_code == 4000, "close %s" % conn.close_code)

    @t("limits: a message over max_size closes with 1009, invalid UTF-8 with 1007")
    async def _() -> None:
        async with open_("/send?size=%d&type=binary" % (max_size + 1)) as conn:
            try:
                await conn.recv(timeout=T)
                raise Failed("over max_size accepted")
            except ConnectionClosed as exc:
                check(exc.code == 1009, "got %s" % exc)
        async with open_("/badutf8") as conn:
            try:
                await conn.recv(timeout=T)
                raise Failed("invalid UTF-8 accepted")
            except ConnectionClosed as exc:
                check(exc.code == 1007, "got %s" % exc)

    return checks


async def run(args: argparse.Namespace) -> int:
    passed = failed = 0
    for name, fn in build(args.url, args.deflate, args.max_size):
        start = time.monotonic()
        try:
            detail, ok = await asyncio.wait_for(fn(), 120) or "", True
        except Exception as exc:  # every failure is reported, not raised
            detail, ok = "%s: %s" % (type(exc).__name__, exc), False
        passed += ok
        failed += not ok
        print(json.dumps({"name": name, "ok": ok, "detail": detail,
                          "ms": round((time.monotonic() - start) * 1000)}), flush=True)
    print(json.dumps({"summary": {"passed": passed, "failed": failed, "python": sys.version.split()[0]}}),
          flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--deflate", choices=["off", "default", "tuned"], default="default")
    parser.add_argument("--max-size", type=int, default=16 * MiB)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
