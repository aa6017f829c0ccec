#!/usr/bin/env python3
"""Two ``python -m twspy serve --redis`` processes form one chat, seen from headless Chromium,
with Redis killed and restarted mid-chat.

    python3 interop/hub_chat.py [--count 60] [--interval 20] [--down 1.0] [--keep-logs]

Starts a ``redis-server`` of its own (127.0.0.1, a free port, ``--save '' --appendonly no``), two
``python3 -m twspy serve --redis redis://127.0.0.1:PORT/0 --port 0`` (the default filter chain is
a chat: every text message goes to every client on every server, the sender included), a static
HTTP server for hub_chat.html, and two Chromium processes (each with a profile of its own), one
page each: page "a" connects to the first server, page "b" to the second.

Both pages connect, then start together (``GET /go`` is answered when both are connected) and
send "a:0".."a:N-1" / "b:0".."b:N-1", ``--interval`` ms apart. When both pages have received the
first third of both senders' messages (each POSTs ``/progress``), Redis gets SIGKILL, and
``--down`` seconds later it starts again on the same port (empty: no persistence). Each page
stops when it has received all 2N messages (and 1 s more, to catch duplicates) or after 30 s,
and POSTs what it sent and received to ``/result``.

Passes when each page received all 2N messages, each sender's in order, none twice, nothing
else. Everything binds 127.0.0.1; every process started here is stopped by PID (its process
group) at the end, also on failure; the whole run is bounded (``--timeout``, 85 s).
Exit status: 0 passed, 1 failed, 2 a prerequisite is missing (what to install is printed).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from support import ROOT, Proc, StartError, exit_on_sigterm, tail  # noqa: E402

NAMES = ("a", "b")
PAGE_TIMEOUT_MS = 30000
INSTALL = {
    "chromium": "sudo apt-get update && sudo apt-get install -y chromium",
    "redis-server": "sudo apt-get update && sudo apt-get install -y redis-server",
    "redis (Python package, for twspy serve --redis)": "pip install 'twspy[redis]'  (or: pip install redis)",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "? (%s)" % exc
    return out.decode("utf-8", "replace").strip()


def redis_py_version() -> str | None:
    try:
        out = subprocess.run([sys.executable, "-c", "import redis; print(redis.__version__)"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode().strip() if out.returncode == 0 else None


# -- redis-server ----------------------------------------------------------------------------------

class Redis:
    """Our redis-server: start, SIGKILL, start again on the same port."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self.procs: list[Proc] = []

    @property
    def proc(self) -> Proc:
        return self.procs[-1]

    def start(self, timeout: float = 10) -> None:
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--daemonize", "no", "--dir", self.workdir]
        proc = Proc("redis-server", argv, os.path.join(self.workdir, "redis-%d.log" % (len(self.procs) + 1)))
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if proc.proc.poll() is not None:
                raise StartError("redis-server exited with %s:\n%s" % (proc.proc.returncode, tail(proc.output())))
            if time.monotonic() > deadline:
                raise StartError("redis-server did not answer PING within %ss" % timeout)
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown, no save."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


# -- the page server: hub_chat.html, /go, /progress, /result ---------------------------------------

class PageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__(("127.0.0.1", 0), PageHandler)
        with open(os.path.join(HERE, "hub_chat.html"), "rb") as f:
            self.page = f.read()
        self.names = names
        self.lock = threading.Lock()
        self.ready: dict[str, int] = {}
        self.progress: dict[str, dict[str, Any]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.all_ready = threading.Event()
        self.all_progress = threading.Event()
        self.all_results = threading.Event()
        self.closing = threading.Event()

    def note(self, table: dict[str, Any], name: str, value: Any, event: threading.Event) -> None:
        with self.lock:
            table.setdefault(name, value)
            if all(n in table for n in self.names):
                event.set()


class PageHandler(http.server.BaseHTTPRequestHandler):
    server: PageServer

    def _answer(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._answer(200, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/go":
            name = urllib.parse.parse_qs(url.query).get("name", ["?"])[0]
            self.server.note(self.server.ready, name, now_ms(), self.server.all_ready)
            # Long poll: answered when every page is connected (or never, if one does not come).
            while not self.server.all_ready.wait(0.2):
                if self.server.closing.is_set():
                    self._answer(503)
                    return
            self._answer(200, b"{}")
        else:
            self._answer(404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            data = json.loads(body)
        except ValueError:
            data = {"name": "?", "error": "unparsable: %r" % body[:200]}
        name = data.get("name", "?")
        if self.path == "/progress":
            data["server_at"] = now_ms()
            self.server.note(self.server.progress, name, data, self.server.all_progress)
        elif self.path == "/result":
            self.server.note(self.server.results, name, data, self.server.all_results)
        else:
            self._answer(404)
            return
        self._answer(204)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- checking what the pages received --------------------------------------------------------------

def check_page(name: str, result: dict[str, Any], count: int) -> list[str]:
    """Problems with one page's result (empty: it saw every message once, each sender's in order)."""
    problems = []
    if result.get("errors"):
        problems.append("errors: %s" % result["errors"])
    sent = [text for text, _ in result.get("sent", [])]
    if sent != ["%s:%d" % (name, i) for i in range(count)]:
        problems.append("sent %d of %d messages" % (len(sent), count))
    received = [text for text, _ in result.get("received", [])]
    for sender in NAMES:
        expected = ["%s:%d" % (sender, i) for i in range(count)]
        got = [t for t in received if t.split(":", 1)[0] == sender]
        if got == expected:
            continue
        got_set = set(got)
        missing = [t for t in expected if t not in got_set]
        dupes = sorted({t for t in got if got.count(t) > 1}, key=lambda t: int(t.split(":")[1]))
        indexes = [int(t.split(":")[1]) for t in got if t.split(":")[1].isdigit()]
        out_of_order = [(x, y) for x, y in zip(indexes, indexes[1:]) if y < x and got.count("%s:%d" % (sender, y)) == 1]
        detail = "from %s: received %d of %d" % (sender, len(got), count)
        if missing:
            detail += "; missing %s" % compact(missing)
        if dupes:
            detail += "; twice or more %s" % compact(dupes)
        if out_of_order:
            detail += "; out of order at %s" % out_of_order[:5]
        problems.append(detail)
    strangers = [t for t in received if t.split(":", 1)[0] not in NAMES]
    if strangers:
        problems.append("unexpected messages: %r" % strangers[:5])
    if result.get("reason") not in ("all received",):
        problems.append("page stopped: %s%s" % (result.get("reason"), "; close %s" % result["close"]
                                                 if result.get("close") else ""))
    return problems


def compact(texts: list[str]) -> str:
    """"a:3, a:4, a:5" as "a:3..5"."""
    if not texts:
        return ""
    sender = texts[0].split(":")[0]
    nums = [int(t.split(":")[1]) for t in texts]
    runs, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append("%d" % start if start == prev else "%d..%d" % (start, prev))
        if n is not None:
            start = prev = n
    return "%s:%s" % (sender, ",".join(runs))


def phases(result: dict[str, Any], killed_at: int | None, back_at: int | None) -> str:
    """How many of the page's messages it sent before the kill, while Redis was down, after it was back."""
    before = during = after = 0
    for _, at in result.get("sent", []):
        if killed_at is None or at < killed_at:
            before += 1
        elif back_at is None or at < back_at:
            during += 1
        else:
            after += 1
    return "sent %d before the kill, %d while Redis was down, %d after the restart" % (before, during, after)


def latency(result: dict[str, Any], others: dict[str, dict[str, Any]], killed_at: int | None) -> str:
    """Worst delay between a message's send (in any page) and its arrival here: for messages that
    arrived before the kill (the normal latency), and for all of them."""
    sent_at = {text: at for r in others.values() for text, at in r.get("sent", [])}
    delays = [(at - sent_at[text], at) for text, at in result.get("received", []) if text in sent_at]
    if not delays:
        return "no delay data"
    before = [d for d, at in delays if killed_at is None or at < killed_at]
    return "max delay %s ms until the kill, %d ms overall" % (max(before) if before else "-", max(delays)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60, help="messages per page (default 60)")
    parser.add_argument("--interval", type=float, default=20, help="ms between a page's messages (default 20)")
    parser.add_argument("--down", type=float, default=1.0, help="seconds Redis stays down (default 1.0)")
    parser.add_argument("--timeout", type=float, default=85, help="seconds for the whole run (default 85)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the logs")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    started = time.monotonic()
    deadline = started + args.timeout

    def say(text: str) -> None:
        print("[%5.1f s] %s" % (time.monotonic() - started, text), flush=True)

    def left(limit: float) -> float:
        return max(1.0, min(limit, deadline - time.monotonic()))

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    redis_server = shutil.which("redis-server")
    redis_py = redis_py_version()
    missing = [what for what, ok in (("chromium", chromium), ("redis-server", redis_server),
                                     ("redis (Python package, for twspy serve --redis)", redis_py)) if not ok]
    if missing:
        print("hub_chat: missing prerequisites; install them with:", file=sys.stderr)
        for what in missing:
            print("  %s:  %s" % (what, INSTALL[what]), file=sys.stderr)
        return 2
    assert chromium and redis_server
    print("versions: python %s; %s; %s; redis-py %s" % (
        platform.python_version(), version_of([chromium, "--version"]),
        version_of([redis_server, "--version"]).split(" sha=")[0], redis_py), flush=True)

    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    workdir = tempfile.mkdtemp(prefix="twspy-hub-chat-")
    procs: list[Proc] = []
    redis: Redis | None = None
    page_server: PageServer | None = None
    problems: list[str] = []
    killed_at = back_at = None
    status = 1
    try:
        try:
            redis = Redis(redis_server, workdir)
            redis.start()
            servers = []
            for _i, name in enumerate(NAMES):
                proc = Proc("twspy-serve-%s" % name,
                            [sys.executable, "-m", "twspy", "serve", "--redis", redis.url, "--port", "0"],
                            os.path.join(workdir, "serve-%s.log" % name))
                procs.append(proc)
                servers.append(proc)
            ports = [int(p.wait_for(r"twspy serve on ws://127\.0\.0\.1:(\d+)/", left(20)).group(1)) for p in servers]
        except StartError as exc:
            print("FAIL: could not start: %s" % exc, flush=True)
            return 1
        say("redis-server on port %d; twspy serve --redis on ports %s" % (redis.port, ports))

        page_server = PageServer(NAMES)
        threading.Thread(target=page_server.serve_forever, daemon=True).start()
        http_port = page_server.server_address[1]
        for name, port in zip(NAMES, ports):
            query = urllib.parse.urlencode({"name": name, "port": port, "n": args.count, "interval": args.interval,
                                            "timeout": PAGE_TIMEOUT_MS, "senders": ",".join(NAMES)})
            profile = os.path.join(workdir, "chromium-profile-%s" % name)
            os.mkdir(profile)
            argv_chromium = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--disable-background-timer-throttling",
                             "--disable-renderer-backgrounding", "--user-data-dir=" + profile,
                             "--remote-debugging-port=0", "http://127.0.0.1:%d/?%s" % (http_port, query)]
            procs.append(Proc("chromium-%s" % name, argv_chromium, os.path.join(workdir, "chromium-%s.log" % name)))
        browsers = procs[len(NAMES):]

        def browser_died() -> str | None:
            for b in browsers:
                if b.proc.poll() is not None:
                    return "%s exited with %s:\n%s" % (b.name, b.proc.returncode, tail(b.output()))
            return None

        def wait(event: threading.Event, limit: float, what: str) -> bool:
            end = time.monotonic() + left(limit)
            while not event.wait(0.1):
                died = browser_died()
                if died:
                    problems.append(died)
                    return False
                if time.monotonic() > end:
                    problems.append("%s within %.0f s" % (what, limit))
                    return False
            return True

        if not wait(page_server.all_ready, 30, "both pages connected and ready"):
            return 1
        say("both pages connected; sending %d messages each, %g ms apart" % (args.count, args.interval))
        if wait(page_server.all_progress, 20, "both pages received the first third of both senders' messages"):
            redis.kill()
            killed_at = now_ms()
            say("both pages received the first third (a:0..%d and b:0..%d): redis-server SIGKILLed (pid %d)" % (
                -(-args.count // 3) - 1, -(-args.count // 3) - 1, redis.proc.pid))
            time.sleep(max(0.0, min(args.down, deadline - time.monotonic() - 10)))
            try:
                redis.start()
            except StartError as exc:
                problems.append("redis-server did not restart: %s" % exc)
            back_at = now_ms()
            say("redis-server restarted on port %d after %.2f s (pid %d)" % (
                redis.port, (back_at - killed_at) / 1000, redis.proc.pid))
        wait(page_server.all_results, PAGE_TIMEOUT_MS / 1000 + 10, "both pages' results")

        results = page_server.results
        for name, port in zip(NAMES, ports):
            result = results.get(name)
            if result is None:
                problems.append("page %s: no result" % name)
                continue
            page_problems = check_page(name, result, args.count)
            received = len(result.get("received", []))
            print("page %s (server :%d): %s; received %d/%d (%s), %s%s" % (
                name, port, phases(result, killed_at, back_at), received, 2 * args.count, result.get("reason"),
                latency(result, results, killed_at), "" if page_problems else "; every message once, in order"),
                flush=True)
            problems.extend("page %s: %s" % (name, p) for p in page_problems)
        if results:
            print("user agent: %s" % next(iter(results.values())).get("userAgent"), flush=True)

        # What the servers said (the hub logs broker outages, replays and gaps).
        for proc in servers:
            notable = [line for line in proc.output().splitlines()
                       if " WARNING " in line or " ERROR " in line or "Traceback" in line]
            for line in notable:
                print("  %s: %s" % (proc.name, line.split(" twspy.", 1)[-1][:200]), flush=True)
            if any("lost entries" in line or "never accepted" in line or "Traceback" in line for line in notable):
                problems.append("%s logged a loss or a traceback" % proc.name)
        if killed_at is None:
            problems.append("Redis was never killed")
        status = 1 if problems else 0
        return status
    finally:
        if page_server is not None:
            page_server.closing.set()
            page_server.shutdown()
            page_server.server_close()
        for proc in reversed(procs):
            proc.stop()
        if redis is not None:
            redis.stop_all()
        for p in problems:
            print("FAIL: %s" % p, flush=True)
        print("%s in %.1f s%s" % ("PASS" if status == 0 else "FAIL", time.monotonic() - started,
                                  "; logs in %s" % workdir if args.keep_logs or status else ""), flush=True)
        if not args.keep_logs and status == 0:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
