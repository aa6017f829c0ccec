#!/usr/bin/env python3
"""Headless Chromium against ``python -m twspy echo`` (ws://, ws:// without compression, wss://).

    python3 interop/browser_check.py [--tls spki|ignore|none] [--timeout SECONDS] [--keep-logs]

Starts three twspy echo servers (``--max-size 16M --subprotocol chat``; one ``--no-compression``;
one with TLS and the test certificate in test/certs), a static HTTP server for browser.html, and
Chromium::

    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
             --disable-background-networking --disable-component-update --disable-sync
             --user-data-dir=<fresh temp dir> --remote-debugging-port=0
             --ignore-certificate-errors-spki-list=<SPKI hash of test/certs/localhost.pem>
             http://127.0.0.1:<port>/?target=...

The page runs its checks and POSTs the results back. Meanwhile twspy.connect talks to Chromium's
DevTools WebSocket (Browser.getVersion, Target.getTargets, and a Runtime.evaluate in a new tab
whose ~2 MB answer is checked): twspy as a client of Chromium's own WebSocket server.
Finally each echo server's log must show the close frame the page sent (``closed 4000 bye``).

``--tls spki`` (default) trusts exactly the test certificate's key; ``--tls ignore`` uses
``--ignore-certificate-errors`` instead; ``--tls none`` neither (a negative control: the wss
checks must then fail). Everything binds 127.0.0.1, ports are chosen by the
kernel, every process is stopped by PID. Prints one JSON line per check (``{"name", "ok",
"detail", "ms"}``) and a summary line. Exit status: 0 all passed, 1 a check failed, 2 Chromium
is missing or could not start.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from support import CERTS, Proc, StartError, exit_on_sigterm, start_twspy_echo, tail  # noqa: E402

import twspy  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser")
INSTALL_HINT = """Chromium is not on PATH. On Debian/Ubuntu install it with:

    sudo apt-get update && sudo apt-get install -y chromium

(then re-run; only Debian's package is needed, no other browser download)."""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


# -- the SPKI hash Chromium's --ignore-certificate-errors-spki-list wants ---------------------------

def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    return tag, pos, pos + length


def spki_sha256(pem_path: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate, with a minimal DER walk."""
    with open(pem_path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    _, cert_start, _ = _der_element(der, 0)           # Certificate ::= SEQUENCE
    _, pos, _ = _der_element(der, cert_start)         # tbsCertificate ::= SEQUENCE
    fields = []
    while len(fields) < 7:
        tag, start, end = _der_element(der, pos)
        fields.append((tag, pos, end))
        pos = end
    if fields[0][0] != 0xA0:                          # no [0] version: v1 certificate
        fields.insert(0, (0xA0, 0, 0))
    _, spki_start, spki_end = fields[6]               # version, serial, sig, issuer, validity, subject, SPKI
    return base64.b64encode(hashlib.sha256(der[spki_start:spki_end]).digest()).decode("ascii")


# -- the static page and the results it posts ----------------------------------------------------

class PageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PageHandler)
        with open(os.path.join(HERE, "browser.html"), "rb") as f:
            self.page = f.read()
        self.result: dict[str, Any] | None = None
        self.got_result = threading.Event()


class PageHandler(http.server.BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path not in ("/", "/index.html"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(self.server.page)))
        self.end_headers()
        self.wfile.write(self.server.page)

    def do_POST(self) -> None:
        if self.path != "/result":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            self.server.result = json.loads(body)
        except ValueError:
            self.server.result = {"error": "unparsable result: %r" % body[:200]}
        self.send_response(204)
        self.end_headers()
        self.server.got_result.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- twspy as a client of Chromium's DevTools WebSocket server -------------------------------------

def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits


def devtools_check(user_data_dir: str, timeout: float, count: int = 300000) -> dict[str, Any]:
    """twspy.connect to Chromium's DevTools WebSocket (DevToolsActivePort): Browser.getVersion,
    Target.getTargets, then in a new blank tab a Runtime.evaluate whose answer is a large JSON
    message (``count`` numbers in base 36, ~7.5 bytes each), compared with the same computed here."""
    port_file = os.path.join(user_data_dir, "DevToolsActivePort")
    deadline = time.monotonic() + timeout
    while not os.path.exists(port_file) or len(open(port_file).read().splitlines()) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("no DevToolsActivePort file within %ss" % timeout)
        time.sleep(0.1)
    port, path = open(port_file).read().splitlines()[:2]
    url = "ws://127.0.0.1:%s%s" % (port, path)
    with twspy.connect(url, handshake_timeout=10, max_size=64 << 20) as conn:
        ids = iter(range(1, 1000))

        def call(method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
            ident = next(ids)
            request: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
            if session:
                request["sessionId"] = session
            conn.send(json.dumps(request))
            while True:
                answer = json.loads(conn.recv(timeout=30).payload)
                if answer.get("id") == ident:
                    if "error" in answer:
                        raise RuntimeError("%s: %s" % (method, answer["error"]))
                    return answer["result"]

        version = call("Browser.getVersion")
        targets = call("Target.getTargets")["targetInfos"]
        tab = call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = call("Target.attachToTarget", {"targetId": tab, "flatten": True})["sessionId"]
        expression = ("Array.from({length: %d}, (_, i) => ((i * 2654435761) %% 4294967296).toString(36))"
                      ".join(',')" % count)
        value = call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                     session)["result"]["value"]
        expected = ",".join(_base36(i * 2654435761 % 4294967296) for i in range(count))
        call("Target.closeTarget", {"targetId": tab})
        extensions = conn.sock.headers.get("Sec-WebSocket-Extensions", "")
    return {"url": url, "version": version, "targets": targets, "extensions": extensions,
            "close_code": conn.close_code, "evaluated": len(value), "evaluated_ok": value == expected}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls", choices=["spki", "ignore", "none"], default="spki",
                        help="how Chromium trusts the test certificate (default: spki; none: it does "
                             "not, a negative control where the wss checks must fail)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for the whole page run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the logs")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    chromium = find_chromium()
    if chromium is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    results: list[dict[str, Any]] = []

    def record(name: str, ok: bool, detail: str = "", ms: int = 0) -> None:
        results.append({"name": name, "ok": ok, "detail": detail, "ms": ms})
        print(json.dumps(results[-1]), flush=True)

    workdir = tempfile.mkdtemp(prefix="twspy-interop-browser-")
    user_data_dir = os.path.join(workdir, "chromium-profile")
    os.mkdir(user_data_dir)
    procs: list[Proc] = []
    page_server: PageServer | None = None
    status = 1
    try:
        try:
            echo, ws_port = start_twspy_echo(workdir, "twspy-echo-deflate")
            procs.append(echo)
            plain, plain_port = start_twspy_echo(workdir, "twspy-echo-plain", "--no-compression")
            procs.append(plain)
            tls, wss_port = start_twspy_echo(workdir, "twspy-echo-tls", "--certfile",
                                             os.path.join(CERTS, "localhost.pem"), "--keyfile",
                                             os.path.join(CERTS, "localhost.key"))
            procs.append(tls)
        except StartError as exc:
            record("start twspy echo servers", False, str(exc))
            return 1

        page_server = PageServer()
        threading.Thread(target=page_server.serve_forever, daemon=True).start()
        targets = [("ws+deflate", "ws://127.0.0.1:%d/" % ws_port, "1"),
                   ("ws, --no-compression", "ws://127.0.0.1:%d/" % plain_port, "0"),
                   ("wss+deflate", "wss://127.0.0.1:%d/" % wss_port, "1")]
        query = urllib.parse.urlencode([("target", "|".join(t)) for t in targets])
        page_url = "http://127.0.0.1:%d/?%s" % (page_server.server_address[1], query)

        tls_flags = {"spki": ["--ignore-certificate-errors-spki-list=" + spki_sha256(
                         os.path.join(CERTS, "localhost.pem"))],
                     "ignore": ["--ignore-certificate-errors"], "none": []}[args.tls]
        argv_chromium = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--user-data-dir=" + user_data_dir, "--remote-debugging-port=0",
                         *tls_flags, page_url]
        started = time.monotonic()
        browser = Proc("chromium", argv_chromium, os.path.join(workdir, "chromium.log"))
        procs.append(browser)

        # twspy as a DevTools client while the page runs.
        start = time.monotonic()
        name = "twspy.connect -> Chromium DevTools: getVersion, getTargets, a ~2 MB Runtime.evaluate answer"
        try:
            info = devtools_check(user_data_dir, 30)
            pages = [t["url"] for t in info["targets"] if t.get("type") == "page"]
            ok = bool(info["version"].get("product")) and page_url in pages and info["evaluated_ok"] \
                and info["close_code"] == 1000
            record(name, ok, "%s; page %s; evaluate answer %d B %s; Sec-WebSocket-Extensions %r; close %s" % (
                info["version"].get("product"), "found" if page_url in pages else "missing: %r" % pages,
                info["evaluated"], "identical" if info["evaluated_ok"] else "DIFFERS", info["extensions"],
                info["close_code"]), round((time.monotonic() - start) * 1000))
        except Exception as exc:
            record(name, False, "%s: %s\n%s" % (type(exc).__name__, exc, tail(browser.output())))

        deadline = started + args.timeout
        while not page_server.got_result.wait(0.2):
            if browser.proc.poll() is not None:
                record("browser page", False, "Chromium exited with %s:\n%s" % (
                    browser.proc.returncode, tail(browser.output())))
                return 2
            if time.monotonic() > deadline:
                record("browser page", False, "no result within %ss:\n%s" % (args.timeout, tail(browser.output())))
                return 1
        result = page_server.result or {}
        if "error" in result:
            record("browser page", False, result["error"])
            return 1
        print(json.dumps({"userAgent": result.get("userAgent")}), flush=True)
        for r in result.get("results", []):
            record("%s: %s" % (r["target"], r["name"]), bool(r["ok"]), r.get("detail", ""), r.get("ms", 0))

        # The close frames the page sent, as each twspy server logged them.
        time.sleep(0.3)
        for proc, (target, _, _) in zip(procs[:3], targets):
            found = "closed 4000 bye" in proc.output()
            record("%s: twspy server received close 4000 'bye'" % target, found,
                   "logged" if found else "not in the log:\n" + tail(proc.output()))
        failed = sum(not r["ok"] for r in results)
        status = 1 if failed else 0
        return status
    finally:
        if page_server is not None:
            page_server.shutdown()
            page_server.server_close()
        for proc in reversed(procs):
            proc.stop()
        print(json.dumps({"summary": {"passed": sum(r["ok"] for r in results),
                                      "failed": sum(not r["ok"] for r in results),
                                      "chromium": chromium, "logs": workdir if args.keep_logs else None}}),
              flush=True)
        if args.keep_logs:
            print("logs kept in %s" % workdir, file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
