#!/usr/bin/env python3
"""Run the Autobahn|Testsuite against twspy, as a server and as a client, then check the reports.

    python compliance/run.py [--quick] [--role server|client|both] [--cases PATTERN]
                             [--strict] [--no-compression] [--no-setup] [--asyncio]

``--asyncio`` tests the asyncio layer instead: ``echo --asyncio`` as the server and
``client_driver_asyncio.py`` as the client (reports in ``reports/asyncio-server`` and
``reports/asyncio-client``).

- server role: starts ``python -m twspy echo --port <free port> --max-size 16M`` on
  127.0.0.1 (log: ``reports/server/echo.log``) and runs ``fuzzingclient.sh`` against it;
- client role: runs ``fuzzingserver.sh`` with ``client_driver.py`` as the client under
  test (log: ``reports/client/client_driver.log``);
- then :mod:`check` on each report (``reports/<role>/check.txt``).

``--quick`` runs every case except 9.* (performance), 12.* and 13.* (permessage-deflate):
247 cases per role, well under a minute. ``--cases`` takes comma-separated patterns
(``"1.*,7.9.*"``); with ``--quick`` the quick exclusions still apply.

The Autobahn tooling is not part of twspy: it is looked up in ``$AUTOBAHN_TOOLS``, else
``../shared/tools/autobahn`` next to the repository. Its ``setup.sh`` (run first, idempotent,
~20 s the first time) builds the wstest venv in ``$AUTOBAHN_VENV`` (default
``/tmp/autobahn-venv``). ``AUTOBAHN_EXCLUDE`` and ``AUTOBAHN_TIMEOUT`` are passed through.

Exit status: 0 every report passes the check, 1 a check failed, 2 a run could not complete
(tooling missing, server did not start, cases missing from a report).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REPORTS = os.path.join(HERE, "reports")
AGENT = "twspy"
QUICK_EXCLUDE = ["9.*", "12.*", "13.*"]
MAX_SIZE = "16M"   # cases 9.1.6 / 9.2.6 send 16 MiB messages

sys.path.insert(0, HERE)
from check import check_report  # noqa: E402


def find_tools() -> str | None:
    """The shared Autobahn tooling: $AUTOBAHN_TOOLS or ../shared/tools/autobahn from the repo root."""
    tools = os.environ.get("AUTOBAHN_TOOLS") or os.path.join(os.path.dirname(ROOT), "shared", "tools", "autobahn")
    tools = os.path.abspath(tools)
    for script in ("setup.sh", "fuzzingclient.sh", "fuzzingserver.sh"):
        if not os.path.isfile(os.path.join(tools, script)):
            print("run.py: ERROR: no Autobahn tooling in %s (missing %s); set AUTOBAHN_TOOLS" % (tools, script),
                  file=sys.stderr)
            return None
    return tools


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started, by its PID: Ctrl-C first (clean shutdown), then kill."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 5), (signal.SIGKILL, 5)):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: str, n: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def fresh_dir(role: str) -> str:
    outdir = os.path.join(REPORTS, role)
    if os.path.isdir(outdir):
        shutil.rmtree(outdir)   # no stale per-case files from an earlier run
    os.makedirs(outdir)
    return outdir


ASYNCIO = False  # --asyncio: the asyncio server and client instead of the threaded ones


def run_server_role(tools: str, cases: str, env: dict[str, str], no_compression: bool) -> int:
    """twspy's echo server against wstest's fuzzing client; returns the script's exit status."""
    outdir = fresh_dir("asyncio-server" if ASYNCIO else "server")
    port = free_port()
    cmd = [sys.executable, "-m", "twspy", "echo", "--port", str(port), "--max-size", MAX_SIZE]
    if ASYNCIO:
        cmd.append("--asyncio")
    if no_compression:
        cmd.append("--no-compression")
    log_path = os.path.join(outdir, "echo.log")
    print("run.py: server role: %s (cwd %s, log %s)" % (" ".join(cmd[1:]), ROOT, os.path.relpath(log_path)),
          flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_listening(port, proc, 15):
            print("run.py: ERROR: the twspy echo server did not start (exit %s):\n%s" % (
                proc.poll(), tail(log_path)), file=sys.stderr)
            return 2
        rc = subprocess.call([os.path.join(tools, "fuzzingclient.sh"), "ws://127.0.0.1:%d" % port, outdir, cases],
                             env=env)
        if proc.poll() is not None:
            print("run.py: ERROR: the twspy echo server died during the run (exit %s):\n%s" % (
                proc.returncode, tail(log_path)), file=sys.stderr)
            rc = rc or 2
        return rc
    finally:
        stop(proc)


def run_client_role(tools: str, cases: str, env: dict[str, str], no_compression: bool) -> int:
    """client_driver.py against wstest's fuzzing server; returns the script's exit status."""
    outdir = fresh_dir("asyncio-client" if ASYNCIO else "client")
    env = dict(env, AUTOBAHN_CASES=cases)
    if no_compression:
        env["TWSPY_NO_COMPRESSION"] = "1"
    log_path = os.path.join(outdir, "client_driver.log")
    print("run.py: client role: client_driver.py (log %s)" % os.path.relpath(log_path), flush=True)
    driver = "client_driver_asyncio.py" if ASYNCIO else "client_driver.py"
    cmd = [os.path.join(tools, "fuzzingserver.sh"), str(free_port()), outdir, "--",
           sys.executable, os.path.join(HERE, driver), "--log", log_path]
    return subprocess.call(cmd, env=env, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip 9.*, 12.*, 13.* (under a minute)")
    parser.add_argument("--role", choices=("server", "client", "both"), default="both")
    parser.add_argument("--cases", default="*", help='comma-separated case patterns, e.g. "1.*,7.9.*"')
    parser.add_argument("--strict", action="store_true", help="NON-STRICT and INFORMATIONAL fail the check too")
    parser.add_argument("--no-compression", action="store_true", help="run without permessage-deflate")
    parser.add_argument("--no-setup", action="store_true", help="do not run setup.sh first")
    parser.add_argument("--asyncio", action="store_true", help="test twspy.asyncio's server and client")
    args = parser.parse_args(argv)
    global ASYNCIO
    ASYNCIO = args.asyncio

    tools = find_tools()
    if tools is None:
        return 2
    if not args.no_setup:
        setup = subprocess.run([os.path.join(tools, "setup.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        if setup.returncode:
            print(setup.stdout, end="", file=sys.stderr)
            print("run.py: ERROR: setup.sh failed (exit %d)" % setup.returncode, file=sys.stderr)
            return 2
    exclude = [x for x in os.environ.get("AUTOBAHN_EXCLUDE", "").split(",") if x.strip()]
    if args.quick:
        exclude += QUICK_EXCLUDE
    env = dict(os.environ, AUTOBAHN_AGENT=AGENT, AUTOBAHN_EXCLUDE=",".join(exclude))

    roles = ["server", "client"] if args.role == "both" else [args.role]
    runs = {"server": run_server_role, "client": run_client_role}
    status = 0
    results = []
    t0 = time.monotonic()
    for role in roles:
        start = time.monotonic()
        try:
            rc = runs[role](tools, args.cases, env, args.no_compression)
        except KeyboardInterrupt:
            print("run.py: interrupted", file=sys.stderr)
            return 130
        elapsed = time.monotonic() - start
        if rc not in (0, 1):   # 1 = the shared scripts' AUTOBAHN_STRICT verdict; the check decides below
            print("run.py: %s role: the run did not complete (exit %d)" % (role, rc), file=sys.stderr)
            status = 2
        results.append((role, rc, elapsed))

    lines = []
    for role, rc, elapsed in results:
        role = "asyncio-" + role if ASYNCIO else role
        outdir = os.path.join(REPORTS, role)
        if not os.path.isfile(os.path.join(outdir, "index.json")):
            lines.append("%s: no report (exit %d)" % (role, rc))
            status = 2
            continue
        out = io.StringIO()
        verdict = check_report(outdir, strict=args.strict, out=out)
        with open(os.path.join(outdir, "check.txt"), "w", encoding="utf-8") as f:
            f.write(out.getvalue())
        print("\n== %s role (%s, %.0fs): compliance/reports/%s/check.txt" % (
            role, "quick" if args.quick else "cases %s" % args.cases, elapsed, role))
        print(out.getvalue(), end="")
        score = out.getvalue().rstrip("\n").rsplit("\n", 1)[-1]
        lines.append("%-6s %s%s" % (role, score, "" if rc in (0, 1) else "  [run incomplete, exit %d]" % rc))
        if verdict and status == 0:
            status = 1
        elif verdict == 2:
            status = 2
    print("\n== twspy Autobahn results (%.0fs)" % (time.monotonic() - t0))
    for line in lines:
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
