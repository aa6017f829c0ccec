#!/usr/bin/env python3
"""twspy as the client under test of the Autobahn fuzzing server (``wstest -m fuzzingserver``).

    python compliance/client_driver.py [BASE_URL] [AGENT] [--log FILE]
        defaults: $AUTOBAHN_URL or ws://127.0.0.1:9001, $AUTOBAHN_AGENT or "twspy";
        --log FILE: per-case lines go there (progress still goes to stdout)

``fuzzingserver.sh PORT OUTDIR -- python compliance/client_driver.py`` sets both
variables; ``compliance/run.py --role client`` does all of it. The protocol:

1. ``BASE/getCaseCount``: one text message, the number N of cases;
2. ``BASE/runCase?case=i&agent=AGENT`` for i in 1..N: echo every message back with
   the same type until the connection closes; an error just ends that case;
3. ``BASE/updateReports?agent=AGENT``: wait for the close; the server writes the report.

permessage-deflate is offered when twspy has it (``twspy/permessage_deflate.py``) unless
``TWSPY_NO_COMPRESSION=1``. Runs from a source checkout: no install needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import twspy  # noqa: E402
from twspy import WebSocketError  # noqa: E402

MAX_SIZE = 16 << 20   # cases 9.1.6 / 9.2.6 send 16 MiB messages; same limit as the echo server in run.py
OPEN_TIMEOUT = 30     # seconds for TCP connect + HTTP upgrade (the fuzzer is slow under 12.* / 13.*)


def compression_available() -> bool:
    if os.environ.get("TWSPY_NO_COMPRESSION", "") not in ("", "0"):
        return False
    try:
        import twspy.permessage_deflate  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", default=os.environ.get("AUTOBAHN_URL", "ws://127.0.0.1:9001"))
    parser.add_argument("agent", nargs="?", default=os.environ.get("AUTOBAHN_AGENT", "twspy"))
    parser.add_argument("--log", help="write the per-case lines to this file instead of stdout")
    args = parser.parse_args(argv)
    base, agent = args.base, args.agent
    log = open(args.log, "w", encoding="utf-8") if args.log else sys.stdout

    def say(text: str, console: bool = False) -> None:
        print(text, file=log, flush=True)
        if console and log is not sys.stdout:
            print(text, flush=True)

    # None: twspy's default offer (permessage-deflate); []: no extensions.
    extensions = None if compression_available() else []
    say("client_driver: twspy %s, permessage-deflate %s" % (
        twspy.__version__, "offered" if extensions is None else "not offered"), True)

    with twspy.connect(base + "/getCaseCount", extensions=[]) as conn:
        count = int(conn.recv(timeout=OPEN_TIMEOUT).payload)
    say("client_driver: %d cases" % count, True)

    unexpected = 0
    t0 = time.monotonic()
    for case in range(1, count + 1):
        url = "%s/runCase?case=%d&agent=%s" % (base, case, agent)
        try:
            with twspy.connect(url, extensions=extensions, max_size=MAX_SIZE, handshake_timeout=OPEN_TIMEOUT) as conn:
                for message in conn:
                    conn.send(message)
        except (WebSocketError, OSError) as exc:
            # Expected in the cases that break the protocol: the case just ends.
            say("case %d: %s: %s" % (case, type(exc).__name__, exc))
        except Exception:
            # Anything else is a bug in twspy worth reporting; keep going with the next case.
            unexpected += 1
            say("case %d: UNEXPECTED EXCEPTION\n%s" % (case, traceback.format_exc().rstrip()), True)
        if case % 50 == 0:
            say("client_driver: %d/%d (%.0fs)" % (case, count, time.monotonic() - t0), True)

    with twspy.connect("%s/updateReports?agent=%s" % (base, agent), extensions=[],
                       handshake_timeout=OPEN_TIMEOUT) as conn:
        for _ in conn:
            pass
    say("client_driver: done in %.0fs%s" % (
        time.monotonic() - t0, ", %d unexpected exceptions" % unexpected if unexpected else ""), True)
    if log is not sys.stdout:
        log.close()
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
