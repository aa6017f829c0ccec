#!/usr/bin/env python3
"""Interoperability checks with real peers: Node's ``ws`` in both roles and headless Chromium.

    python3 interop/run.py [--only node|browser] [--tls spki|ignore] [--verbose] [--keep-logs]

1. Node ``ws`` client (node_client.js) -> ``python -m twspy echo --max-size 16M``:
   permessage-deflate with ws's defaults, with tuned parameters (no context takeover, 9-bit
   windows), with 8-bit windows, off (``--no-compression``), and over wss:// with the test
   certificate.
2. ``twspy.connect`` (twspy_client.py) -> a Node ``ws`` server (node_echo.js, maxPayload 16 MiB):
   permessage-deflate off, ws's defaults, tuned.
3. Headless Chromium (browser_check.py + browser.html) -> twspy echo over ws:// (with and
   without compression) and wss://; plus twspy.connect -> Chromium's DevTools WebSocket.

Prerequisites: node and npm (``npm install`` of ws into interop/node_modules runs here when
``ws`` is missing), and ``chromium`` on PATH for the browser part (not installed here: the
command to install it is printed and the exit status is 2).

Everything binds 127.0.0.1 with ports picked by the kernel; every process started here is
stopped by PID (its process group); each step has a time limit and the whole run stays
under ``--timeout`` (300 s by default). Results go to interop/results/latest.json.
Exit status: 0 everything passed, 1 a check failed, 2 a prerequisite is missing or a peer
could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from support import CERTS, ROOT, StartError, exit_on_sigterm, run_json_lines, start_node_echo, start_twspy_echo, tail  # noqa: E402

MAX_SIZE = 16 << 20
NODE_HINT = """node and npm are needed for the Node checks. On Debian/Ubuntu:

    sudo apt-get install -y nodejs npm

(or --only browser to skip them)."""


class Run:
    def __init__(self, verbose: bool, deadline: float) -> None:
        self.verbose = verbose
        self.deadline = deadline
        self.scenarios: list[dict[str, Any]] = []
        self.versions: dict[str, str] = {"python": platform.python_version()}

    def left(self, limit: float) -> float:
        """A step's time limit: ``limit`` or what is left of the run, at least 5 s."""
        return max(5.0, min(limit, self.deadline - time.monotonic()))

    def scenario(self, peer: str, name: str, argv: list[str], limit: float) -> None:
        start = time.monotonic()
        print("- %s: %s ..." % (peer, name), end=" ", flush=True)
        records, status, errors = run_json_lines(argv, timeout=self.left(limit))
        checks = [r for r in records if "name" in r]
        summary = next((r["summary"] for r in records if "summary" in r), None)
        for r in records:
            if "userAgent" in r:
                self.versions["chromium user agent"] = r["userAgent"]
        passed = sum(bool(c["ok"]) for c in checks)
        failed = [c for c in checks if not c["ok"]]
        ok = status == 0 and not failed and summary is not None and bool(checks)
        print("%d/%d passed in %.1fs%s" % (passed, len(checks), time.monotonic() - start,
                                          "" if ok else " -- FAILED (exit status %s)" % status), flush=True)
        for c in checks:
            if self.verbose or not c["ok"]:
                print("    %s %s%s" % ("ok  " if c["ok"] else "FAIL", c["name"],
                                       (": " + c["detail"]) if c["detail"] and (self.verbose or not c["ok"])
                                       else ""))
        if not ok and errors:
            print("    " + tail(errors).replace("\n", "\n    "))
        self.scenarios.append({"peer": peer, "scenario": name, "ok": ok, "status": status, "passed": passed,
                               "failed": len(failed), "checks": checks, "errors": errors if not ok else "",
                               "seconds": round(time.monotonic() - start, 1)})

    def broken(self, peer: str, name: str, why: str) -> None:
        print("- %s: %s ... could not run:\n    %s" % (peer, name, why.replace("\n", "\n    ")), flush=True)
        self.scenarios.append({"peer": peer, "scenario": name, "ok": False, "status": 2, "passed": 0,
                               "failed": 0, "checks": [], "errors": why})


def command_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unknown (%s)" % exc
    return out.splitlines()[-1] if out else "unknown"


def ensure_ws(run: Run) -> bool:
    """``npm install`` ws into interop/node_modules (package.json pins the range) unless it is there."""
    if os.path.isfile(os.path.join(HERE, "node_modules", "ws", "package.json")):
        return True
    print("- npm install (ws into interop/node_modules) ...", flush=True)
    try:
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True,
                              text=True, timeout=run.left(180))
    except subprocess.TimeoutExpired:
        print("    npm install did not finish in time", file=sys.stderr)
        return False
    if done.returncode != 0 or not os.path.isfile(os.path.join(HERE, "node_modules", "ws", "package.json")):
        print("    npm install failed:\n" + tail(done.stdout + done.stderr), file=sys.stderr)
        return False
    return True


def node_part(run: Run, log_dir: str) -> None:
    node_client = ["node", os.path.join(HERE, "node_client.js")]
    servers = []
    try:
        try:
            for name, options in (("deflate", ()), ("plain", ("--no-compression",)),
                                  ("tls", ("--certfile", os.path.join(CERTS, "localhost.pem"),
                                           "--keyfile", os.path.join(CERTS, "localhost.key")))):
                servers.append(start_twspy_echo(log_dir, "twspy-echo-" + name, *options))
        except StartError as exc:
            run.broken("Node ws client -> twspy echo", "start twspy echo", str(exc))
            return
        (_, deflate_port), (_, plain_port), (_, tls_port) = servers
        peer = "Node ws client -> twspy echo"
        size = ["--max-size", str(MAX_SIZE)]
        run.scenario(peer, "permessage-deflate, ws defaults (+ 22 s idle: twspy keepalive pings)",
                     node_client + ["ws://127.0.0.1:%d/" % deflate_port, "--deflate", "default",
                                    "--keepalive", "22"] + size, 150)
        run.scenario(peer, "permessage-deflate, no context takeover, 9-bit windows",
                     node_client + ["ws://127.0.0.1:%d/" % deflate_port, "--deflate", "tuned"] + size, 150)
        run.scenario(peer, "permessage-deflate, 8-bit windows, context takeover",
                     node_client + ["ws://127.0.0.1:%d/" % deflate_port, "--deflate", "window8"] + size, 150)
        run.scenario(peer, "no compression (twspy echo --no-compression)",
                     node_client + ["ws://127.0.0.1:%d/" % plain_port, "--deflate", "off"] + size, 150)
        run.scenario(peer, "wss:// + permessage-deflate (test certificate as CA)",
                     node_client + ["wss://127.0.0.1:%d/" % tls_port, "--deflate", "default",
                                    "--ca", os.path.join(CERTS, "localhost.pem")] + size, 150)
    finally:
        for proc, _ in servers:
            proc.stop()

    asyncio_node_part(run, log_dir, node_client)

    peer = "twspy.connect -> Node ws server"
    for deflate, label in (("off", "no compression (perMessageDeflate: false)"),
                           ("default", "permessage-deflate, ws defaults"),
                           ("tuned", "permessage-deflate, no context takeover, 9-bit windows, threshold 0")):
        try:
            proc, info = start_node_echo(log_dir, deflate, MAX_SIZE)
        except StartError as exc:
            run.broken(peer, label, str(exc))
            continue
        try:
            run.scenario(peer, label, [sys.executable, os.path.join(HERE, "twspy_client.py"),
                                       "ws://127.0.0.1:%d" % info["port"], "--deflate", deflate,
                                       "--max-size", str(MAX_SIZE)], 150)
        finally:
            proc.stop()


def asyncio_node_part(run: Run, log_dir: str, node_client: list[str]) -> None:
    """The asyncio layer both ways: Node ws -> ``twspy echo --asyncio``, twspy.asyncio.connect -> Node ws."""
    servers = []
    size = ["--max-size", str(MAX_SIZE)]
    try:
        try:
            for name, options in (("deflate", ("--asyncio",)), ("plain", ("--asyncio", "--no-compression")),
                                  ("tls", ("--asyncio", "--certfile", os.path.join(CERTS, "localhost.pem"),
                                           "--keyfile", os.path.join(CERTS, "localhost.key")))):
                servers.append(start_twspy_echo(log_dir, "twspy-asyncio-echo-" + name, *options))
        except StartError as exc:
            run.broken("Node ws client -> twspy echo --asyncio", "start twspy echo --asyncio", str(exc))
            return
        (_, deflate_port), (_, plain_port), (_, tls_port) = servers
        peer = "Node ws client -> twspy echo --asyncio"
        run.scenario(peer, "permessage-deflate, ws defaults (+ 22 s idle: twspy keepalive pings)",
                     node_client + ["ws://127.0.0.1:%d/" % deflate_port, "--deflate", "default",
                                    "--keepalive", "22"] + size, 150)
        run.scenario(peer, "permessage-deflate, no context takeover, 9-bit windows",
                     node_client + ["ws://127.0.0.1:%d/" % deflate_port, "--deflate", "tuned"] + size, 150)
        run.scenario(peer, "no compression (--no-compression)",
                     node_client + ["ws://127.0.0.1:%d/" % plain_port, "--deflate", "off"] + size, 150)
        run.scenario(peer, "wss:// + permessage-deflate (test certificate as CA)",
                     node_client + ["wss://127.0.0.1:%d/" % tls_port, "--deflate", "default",
                                    "--ca", os.path.join(CERTS, "localhost.pem")] + size, 150)
    finally:
        for proc, _ in servers:
            proc.stop()

    peer = "twspy.asyncio.connect -> Node ws server"
    for deflate, label in (("off", "no compression (perMessageDeflate: false)"),
                           ("default", "permessage-deflate, ws defaults"),
                           ("tuned", "permessage-deflate, no context takeover, 9-bit windows, threshold 0")):
        try:
            proc, info = start_node_echo(log_dir, deflate, MAX_SIZE)
        except StartError as exc:
            run.broken(peer, label, str(exc))
            continue
        try:
            run.scenario(peer, label, [sys.executable, os.path.join(HERE, "twspy_asyncio_client.py"),
                                       "ws://127.0.0.1:%d" % info["port"], "--deflate", deflate,
                                       "--max-size", str(MAX_SIZE)], 150)
        finally:
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["node", "browser"], help="run one part only")
    parser.add_argument("--tls", choices=["spki", "ignore"], default="spki",
                        help="how Chromium trusts the test certificate (see browser_check.py)")
    parser.add_argument("--timeout", type=float, default=300, help="limit for the whole run (seconds)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every check, not only failures")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (temp dir)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    run = Run(args.verbose, time.monotonic() + args.timeout)
    do_node = args.only in (None, "node")
    do_browser = args.only in (None, "browser")

    # Prerequisites first: nothing starts unless every peer asked for is there.
    from browser_check import INSTALL_HINT, find_chromium
    chromium = find_chromium() if do_browser else None
    if do_browser and chromium is None:
        print(INSTALL_HINT + "\n(or --only node to skip the browser)", file=sys.stderr)
        return 2
    if do_node and not (shutil.which("node") and shutil.which("npm")):
        print(NODE_HINT, file=sys.stderr)
        return 2
    if do_node and not ensure_ws(run):
        return 2

    sys.path.insert(0, ROOT)
    import twspy
    run.versions["twspy"] = getattr(twspy, "__version__", "?")
    if do_node:
        run.versions["node"] = command_version(["node", "--version"])
        with open(os.path.join(HERE, "node_modules", "ws", "package.json")) as f:
            run.versions["ws"] = json.load(f)["version"]
    if chromium:
        run.versions["chromium"] = command_version([chromium, "--version"])
    print("versions: " + ", ".join("%s %s" % kv for kv in run.versions.items()), flush=True)

    log_dir = tempfile.mkdtemp(prefix="twspy-interop-")
    try:
        if do_node:
            node_part(run, log_dir)
        if do_browser:
            browser = [sys.executable, os.path.join(HERE, "browser_check.py"), "--tls", args.tls,
                       "--timeout", str(int(min(180, run.left(180))))]
            run.scenario("Chromium (headless) -> twspy echo", "ws://, ws:// --no-compression, wss://; "
                         "twspy -> DevTools", browser, 240)
    finally:
        if args.keep_logs:
            print("logs kept in %s" % log_dir)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)

    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
        json.dump({"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": run.versions,
                   "scenarios": run.scenarios}, f, indent=1, ensure_ascii=False)
    checks = sum(s["passed"] + s["failed"] for s in run.scenarios)
    passed = sum(s["passed"] for s in run.scenarios)
    bad = [s for s in run.scenarios if not s["ok"]]
    print("\n%d/%d checks passed in %d scenarios; %s" % (
        passed, checks, len(run.scenarios), "all scenarios OK" if not bad else
        "FAILED: " + "; ".join("%s: %s" % (s["peer"], s["scenario"]) for s in bad)))
    print("details: %s" % os.path.relpath(os.path.join(HERE, "results", "latest.json")))
    if any(s["status"] == 2 for s in bad):
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
