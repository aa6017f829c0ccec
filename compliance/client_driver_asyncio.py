#!/usr/bin/env python3
"""twspy.asyncio as the client under test of the Autobahn fuzzing server: the protocol of
``client_driver.py`` (getCaseCount, runCase i = echo every message, updateReports), on an event loop.

    python compliance/client_driver_asyncio.py [BASE_URL] [AGENT] [--log FILE]

``compliance/run.py --asyncio --role client`` runs it under ``fuzzingserver.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twspy import WebSocketError  # noqa: E402
from twspy.asyncio import connect  # noqa: E402

MAX_SIZE = 16 << 20
OPEN_TIMEOUT = 30


async def run(base: str, agent: str, say, extensions) -> int:  # type: ignore[no-untyped-def]
    async with connect(base + "/getCaseCount", extensions=[]) as conn:
        count = int((await conn.recv(timeout=OPEN_TIMEOUT)).payload)
    say("client_driver_asyncio: %d cases" % count, True)
    unexpected = 0
    t0 = time.monotonic()
    for case in range(1, count + 1):
        url = "%s/runCase?case=%d&agent=%s" % (base, case, agent)
        try:
            async with connect(url, extensions=extensions, max_size=MAX_SIZE, handshake_timeout=OPEN_TIMEOUT,
                               ping_interval=None) as conn:
                async for message in conn:
                    await conn.send(message)
        except (WebSocketError, OSError) as exc:
            say("case %d: %s: %s" % (case, type(exc).__name__, exc))
        except Exception:
            unexpected += 1
            say("case %d: UNEXPECTED EXCEPTION\n%s" % (case, traceback.format_exc().rstrip()), True)
        if case % 50 == 0:
            say("client_driver_asyncio: %d/%d (%.0fs)" % (case, count, time.monotonic() - t0), True)
    async with connect("%s/updateReports?agent=%s" % (base, agent), extensions=[],
                       handshake_timeout=OPEN_TIMEOUT) as conn:
        async for _ in conn:
            pass
    say("client_driver_asyncio: done in %.0fs%s" % (
        time.monotonic() - t0, ", %d unexpected exceptions" % unexpected if unexpected else ""), True)
    return 1 if unexpected else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", default=os.environ.get("AUTOBAHN_URL", "ws://127.0.0.1:9001"))
    parser.add_argument("agent", nargs="?", default=os.environ.get("AUTOBAHN_AGENT", "twspy"))
    parser.add_argument("--log", help="write the per-case lines to this file instead of stdout")
    args = parser.parse_args(argv)
    log = open(args.log, "w", encoding="utf-8") if args.log else sys.stdout

    def say(text: str, console: bool = False) -> None:
        print(text, file=log, flush=True)
        if console and log is not sys.stdout:
            print(text, flush=True)

    extensions = [] if os.environ.get("TWSPY_NO_COMPRESSION", "") not in ("", "0") else None
    try:
        return asyncio.run(run(args.base, args.agent, say, extensions))
    finally:
        if log is not sys.stdout:
            log.close()


if __name__ == "__main__":
    sys.exit(main())
