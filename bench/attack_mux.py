"""What a hostile mux or proxy client costs a twspy server (issues 18 and 20): the numbers in the README.

    python3 bench/attack_mux.py refusals [SECONDS]     # refused AddChannelRequests, never reading: server RSS
    python3 bench/attack_mux.py channels CONNS CHANS [MAX_CONNECTIONS]   # server threads and RSS
    python3 bench/attack_mux.py proxy [SECONDS]        # a flood through a proxy: its threads/fds afterwards

Each server runs in a process of its own (its RSS, threads and fds are read from /proc: Linux only).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import twspy  # noqa: E402
from twspy.handshake import build_request, make_key, read_head  # noqa: E402
from twspy.multiplex import AddChannelRequest, Multiplex, connect_multiplexed, encode_control_blocks  # noqa: E402


def start(code: str) -> tuple[subprocess.Popen[str], int]:
    """Run ``code`` (which prints its port) in a new interpreter; the process and the port."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, %r)\n%s" % (ROOT, code)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def stat(proc: subprocess.Popen[str]) -> tuple[int, int, int]:
    """Threads, RSS in MiB and open fds of ``proc``."""
    fields = dict(line.split(":", 1) for line in open("/proc/%d/status" % proc.pid))
    return (int(fields["Threads"]), int(fields["VmRSS"].split()[0]) // 1024,
            len(os.listdir("/proc/%d/fd" % proc.pid)))


def echo_server(options: str = "", mux: str = "") -> tuple[subprocess.Popen[str], int]:
    return start("from twspy.cli import EchoServer\nfrom twspy.multiplex import Multiplex\n"
                 "s = EchoServer(('127.0.0.1', 0), extensions=[Multiplex(%s)], %s)\n"
                 "print(s.address[1], flush=True)\ns.run()" % (mux, options))


def refusals(seconds: float) -> None:
    """A client that never reads sends AddChannelRequests that get refused (issue 20 item 5)."""
    server, port = echo_server()
    print("server before: threads %d, rss %d MiB, fds %d" % stat(server))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(build_request("127.0.0.1", "/", make_key(), None, (), [Multiplex()], ()))
    read_head(sock.recv)
    burst = twspy.Frame(2, encode_control_blocks(*[AddChannelRequest(2, b"x")] * 1000), masking_key=b"abcd").pack()
    sock.settimeout(seconds + 5)
    sent, end = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            sock.sendall(burst)
            sent += 1000
    except OSError as exc:
        print("the server stopped taking requests: %s" % exc)
    print("%d requests in %.0f s; server after: threads %d, rss %d MiB, fds %d" % ((sent, seconds) + stat(server)))
    sock.close()
    server.terminate()
    server.wait(10)


def channels(conns: int, chans: int, max_connections: int = 1024) -> None:
    """``conns`` TCP connections opening ``chans`` channels each (issue 18 item 7)."""
    server, port = echo_server("max_connections=%d" % max_connections)
    print("server before: threads %d, rss %d MiB, fds %d" % stat(server))
    muxes, opened, refused = [], 0, 0
    for _ in range(conns):
        try:
            mux = connect_multiplexed("ws://127.0.0.1:%d/" % port, timeout=10)
        except (OSError, twspy.WebSocketError):
            refused += 1
            continue
        muxes.append(mux)
        opened += 1
        for j in range(chans - 1):
            try:
                mux.open_channel("/c%d" % j, timeout=10)
                opened += 1
            except (OSError, twspy.WebSocketError):
                refused += 1
    print("%d connections x %d channels, max_connections %d: %d channels open, %d refused; "
          "server threads %d, rss %d MiB, fds %d" % ((conns, chans, max_connections, opened, refused) + stat(server)))
    for mux in muxes:
        mux.abort()
    server.terminate()
    server.wait(10)


def proxy(seconds: float) -> None:
    """Clients coming and going every way through a proxy (issue 18 item 6): does it drain?"""
    upstream, up_port = echo_server()
    relay, port = start("from twspy.proxy import ProxyServer\n"
                        "s = ProxyServer('ws://127.0.0.1:%d/', ('127.0.0.1', 0))\n"
                        "print(s.address[1], flush=True)\ns.run()" % up_port)
    print("proxy before: threads %d, rss %d MiB, fds %d" % stat(relay))
    end = time.monotonic() + seconds
    done = [0]
    target = "ws://127.0.0.1:%d/x" % port
    upgrade = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def client(i: int) -> None:
        kind = i % 7
        if kind in (2, 3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(upgrade if kind == 2 else b"GET / HTTP/1.1\r\n")
            return
        conn = twspy.connect(target, handshake_timeout=5)
        if kind == 0:
            conn.send("hi")
            conn.recv(5)
            conn.close()
        elif kind == 4:
            conn.sock.sock.shutdown(socket.SHUT_WR)
        elif kind == 5:
            conn.sock.sock.sendall(b"\x81\xfe\x10\x00abcd" + b"x" * 100)
        elif kind == 6:
            conn.start_close(1000)
        else:
            conn.send("hi")
        conn.abort()

    def worker() -> None:
        i = 0
        while time.monotonic() < end:
            try:
                client(i)
                done[0] += 1
            except (OSError, twspy.WebSocketError):
                pass
            i += 1

    workers = [threading.Thread(target=worker) for _ in range(8)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    print("%d clients in %.0f s" % (done[0], seconds))
    start_wait = time.monotonic()
    for after in (0.0, 1.0, 3.0, 7.0):
        time.sleep(max(0.0, start_wait + after - time.monotonic()))
        print("proxy %.0f s after: threads %d, rss %d MiB, fds %d" % ((after,) + stat(relay)))
    relay.terminate()
    upstream.terminate()
    relay.wait(10)
    upstream.wait(10)


if __name__ == "__main__":
    what, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if what == "refusals":
        refusals(float(args[0]) if args else 25)
    elif what == "channels":
        channels(*(int(a) for a in args)) if args else channels(20, 64)
    elif what == "proxy":
        proxy(float(args[0]) if args else 20)
    else:
        sys.exit(__doc__)
