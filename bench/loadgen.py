"""The load generator: raw sockets, precomputed masked frames, one or more processes.

It has to be clearly cheaper per message than the servers it measures, so it does as
little as a client can: every frame it sends is built (and masked, RFC 6455 §5.3) once
before the clock starts, and since an echo of a fixed message has a fixed size, it counts
replies by counting bytes instead of parsing them, and even lets the kernel drop them
without copying them out (``MSG_TRUNC``); it parses frames only when the size varies
(permessage-deflate). Every reply is checked byte for byte once per connection before the
measurement. Against ``raw-tcp`` it speaks the same payloads with a 4-byte
length prefix instead of a WebSocket header.

Each worker function runs in its own process (``multiprocessing``, fork) and talks to the
parent over a pipe: ``("ready", info)``, then waits for ``("go", t0)`` where ``t0`` is a
``time.monotonic()`` instant shared by every process, then answers ``("done", result)``
or ``("error", text)``. Every wait is bounded.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import selectors
import socket
import struct
import time
import zlib
from typing import Any, Callable

from procs import raise_nofile

__all__ = [
    "Target", "Workload", "make_payload", "json_payload", "open_connection", "checked_echo", "close_all",
    "echo_worker", "connect_worker", "idle_worker", "client_worker", "one_connection",
]

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_1000 = b"\x03\xe8"
IO_TIMEOUT = 10.0        # any single blocking socket operation
GO_TIMEOUT = 60.0        # waiting for the parent's "go" / "close"
DRAIN_TIMEOUT = 5.0      # replies still in flight when the measurement ends
MAX_LATENCIES = 500_000  # samples kept per process
MAX_ERRORS = 50          # connection failures tolerated by the connections/s loop
# Linux TCP discards MSG_TRUNC reads without copying them to user space: counting replies
# this way costs the generator one copy less than the servers it measures.
DISCARD = getattr(socket, "MSG_TRUNC", 0) if os.uname().sysname == "Linux" else 0


# -- payloads and frames ---------------------------------------------------------------------
def make_payload(size: int, opcode: int) -> bytes:
    """Deterministic payload bytes: printable ASCII for text, all byte values for binary."""
    if opcode == OP_TEXT:
        pattern = b"The quick brown fox jumps over the lazy dog 0123456789. "
    else:
        pattern = bytes(range(256))
    return (pattern * (size // len(pattern) + 1))[:size]


def json_payload(size: int = 1024) -> bytes:
    """A JSON document of exactly ``size`` bytes that looks like an API response."""
    records: list[dict[str, Any]] = []
    i = 0
    while True:
        record = {"id": 1000 + i, "user": "user%03d" % i, "active": i % 3 != 0, "score": round(i * 13.37, 2),
                  "tags": ["alpha", "beta"] if i % 2 else ["gamma"]}
        if len(json.dumps({"items": records + [record], "note": ""})) > size:
            break
        records.append(record)
        i += 1
    doc = {"items": records, "note": ""}
    doc["note"] = "x" * (size - len(json.dumps(doc)))
    data = json.dumps(doc).encode()
    assert len(data) == size, len(data)
    return data


def mask_bytes(key: bytes, data: bytes) -> bytes:
    """XOR with the repeated 4-byte key, as one big integer (runs once, before the clock)."""
    n = len(data)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(opcode: int, payload: bytes, masked: bool, rsv: int = 0) -> bytes:
    """One final frame; masked with a random key when ``masked`` (client to server, §5.3)."""
    b0 = 0x80 | rsv | opcode
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", b0, bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, bit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + mask_bytes(key, payload)


def deflate(payload: bytes) -> bytes:
    """A permessage-deflate message body with a fresh context (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


class Target:
    """Where the generator connects: ``proto`` is ``"ws"`` or ``"raw"`` (length-prefixed TCP)."""

    def __init__(self, port: int, proto: str = "ws", deflate: bool = False, host: str = "127.0.0.1") -> None:
        self.host, self.port, self.proto, self.deflate = host, port, proto, deflate
        lines = ["GET / HTTP/1.1", "Host: %s:%d" % (host, port), "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: " + KEY.decode(), "Sec-WebSocket-Version: 13"]
        if deflate:
            # No client context takeover: every request frame is the same precomputed bytes.
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover")
        self.request_head = ("\r\n".join(lines) + "\r\n\r\n").encode()

    @property
    def url(self) -> str:
        return "ws://%s:%d/" % (self.host, self.port)


class Workload:
    """One message: the bytes a connection sends, and the bytes it expects back.

    ``response`` is None when its size varies (compressed replies); then replies are parsed.
    """

    def __init__(self, target: Target, payload: bytes, opcode: int = OP_TEXT) -> None:
        self.payload, self.opcode = payload, opcode
        if target.proto == "raw":
            self.request = struct.pack("!I", len(payload)) + payload
            self.response: bytes | None = self.request
        elif target.deflate:
            self.request = ws_frame(opcode, deflate(payload), True, rsv=0x40)
            self.response = None
        else:
            self.request = ws_frame(opcode, payload, True)
            self.response = ws_frame(opcode, payload, False)


# -- blocking helpers ------------------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int, rest: bytes = b"") -> tuple[bytes, bytes]:
    data = bytearray(rest)
    while len(data) < n:
        chunk = sock.recv(max(65536, min(n - len(data), 4 << 20)))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return bytes(data[:n]), bytes(data[n:])


def open_connection(target: Target, timeout: float = IO_TIMEOUT) -> tuple[socket.socket, bytes]:
    """Connect and, for WebSocket, run the opening handshake; returns the socket and any extra bytes."""
    sock = socket.create_connection((target.host, target.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.proto != "ws":
            return sock, b""
        sock.sendall(target.request_head)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the connection during the handshake")
            head += chunk
            if len(head) > 65536:
                raise ConnectionError("handshake response too long")
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            raise ConnectionError("handshake refused: %r" % lines[0])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != ACCEPT:
            raise ConnectionError("bad Sec-WebSocket-Accept")
        extensions = headers.get(b"sec-websocket-extensions", b"")
        if target.deflate and b"permessage-deflate" not in extensions:
            raise ConnectionError("the server did not accept permessage-deflate")
        if not target.deflate and extensions:
            raise ConnectionError("unexpected extensions %r" % extensions)
        return sock, rest
    except BaseException:
        sock.close()
        raise


def _read_message(sock: socket.socket, rest: bytes) -> tuple[int, int, bytes, bytes]:
    """Read one whole server frame: ``(opcode, rsv, payload, rest)`` (replies are never fragmented here)."""
    header, rest = _recv_exact(sock, 2, rest)
    b0, b1 = header
    if b1 & 0x80:
        raise ConnectionError("masked frame from the server")
    n = b1 & 0x7F
    if n == 126:
        ext, rest = _recv_exact(sock, 2, rest)
        n = struct.unpack("!H", ext)[0]
    elif n == 127:
        ext, rest = _recv_exact(sock, 8, rest)
        n = struct.unpack("!Q", ext)[0]
    payload, rest = _recv_exact(sock, n, rest)
    if not b0 & 0x80:
        raise ConnectionError("fragmented reply")
    return b0 & 0x0F, b0 & 0x70, payload, rest


def checked_echo(sock: socket.socket, rest: bytes, workload: Workload) -> bytes:
    """Send the message once and check the reply byte for byte (same opcode, same payload)."""
    sock.sendall(workload.request)
    if workload.response is not None:
        reply, rest = _recv_exact(sock, len(workload.response), rest)
        if reply != workload.response:
            raise ConnectionError("wrong echo: %r... instead of %r..." % (reply[:24], workload.response[:24]))
        return rest
    opcode, rsv, payload, rest = _read_message(sock, rest)
    if rsv & 0x40:
        payload = inflate(payload)
    if opcode != workload.opcode or payload != workload.payload:
        raise ConnectionError("wrong echo: opcode %d, %r..." % (opcode, payload[:24]))
    return rest


def close_all(socks: list[socket.socket], proto: str, timeout: float = 2.0) -> int:
    """Close politely: a close frame (or a TCP half-close), then wait for the server to close TCP.

    Sends to every socket first so that the servers close them in parallel. Returns how
    many did not end with the server closing the TCP connection within ``timeout``.
    """
    unclean = 0
    started = []
    for sock in socks:
        try:
            sock.setblocking(True)
            sock.settimeout(timeout)
            if proto == "ws":
                sock.sendall(ws_frame(OP_CLOSE, CLOSE_1000, True))
            else:
                sock.shutdown(socket.SHUT_WR)
            started.append(sock)
        except OSError:
            unclean += 1
            sock.close()
    deadline = time.monotonic() + timeout
    for sock in started:
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    unclean += 1
                    break
                sock.settimeout(left)
                if not sock.recv(65536):  # replies in flight, the close frame, then EOF
                    break
        except OSError:
            unclean += 1
        finally:
            sock.close()
    return unclean


def one_connection(target: Target, workload: Workload) -> None:
    """Open, echo once, close: a warm-up or a probe."""
    sock, rest = open_connection(target)
    try:
        checked_echo(sock, rest, workload)
    finally:
        close_all([sock], target.proto)


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def _wait_go(pipe: Any) -> Any:
    if not pipe.poll(GO_TIMEOUT):
        raise TimeoutError("no word from the parent")
    command, value = pipe.recv()
    if command == "stop":
        raise SystemExit(0)
    return value


def _worker(body: Callable[[Any, dict[str, Any]], Any]) -> Callable[[Any, dict[str, Any]], None]:
    """Run ``body(pipe, cfg)`` and report its result or error through the pipe."""
    def run(pipe: Any, cfg: dict[str, Any]) -> None:
        from procs import die_with_parent
        die_with_parent()
        raise_nofile()
        try:
            result = body(pipe, cfg)
            pipe.send(("done", result))
        except SystemExit:
            pass
        except BaseException as exc:  # report everything: the parent prints it
            try:
                pipe.send(("error", "%s: %s" % (type(exc).__name__, exc)))
            except OSError:
                pass
        finally:
            pipe.close()
    run.__name__ = body.__name__
    return run


# -- echo: messages/s, throughput and latency --------------------------------------------------
class _Conn:
    __slots__ = ("sock", "rx", "out", "sent", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rx = 0                          # bytes of the reply being received
        self.out: collections.deque[memoryview] = collections.deque()  # what the socket did not take yet
        self.sent = 0.0                      # when the message in flight left (depth 1)
        self.buf = bytearray()               # unparsed bytes (variable-size replies only)


def _count_frames(conn: _Conn, data: memoryview) -> int:
    """Count the whole messages in ``data`` for replies of varying size (server frames, unmasked)."""
    buf = conn.buf
    buf += data
    pos, n, done = 0, len(buf), 0
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1] & 0x7F
        if b1 == 126:
            if n - pos < 4:
                break
            length, hlen = (buf[pos + 2] << 8) | buf[pos + 3], 4
        elif b1 == 127:
            if n - pos < 10:
                break
            length, hlen = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        else:
            length, hlen = b1, 2
        end = pos + hlen + length
        if end > n:
            break
        opcode = b0 & 0x0F
        if opcode >= 0x8:
            if opcode == OP_CLOSE:
                raise ConnectionError("the server closed the connection")
        elif b0 & 0x80:
            done += 1
        pos = end
    del buf[:pos]
    return done


def _echo(pipe: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg["conns"]`` connections, each keeping ``cfg["depth"]`` messages in flight."""
    target: Target = cfg["target"]
    workload: Workload = cfg["workload"]
    depth: int = cfg["depth"]
    socks: list[socket.socket] = []
    try:
        for _ in range(cfg["conns"]):
            sock, rest = open_connection(target)
            socks.append(sock)
            if checked_echo(sock, rest, workload):
                raise ConnectionError("unexpected bytes after the echo")
        pipe.send(("ready", len(socks)))
        t0 = _wait_go(pipe)
        run = _echo_one if _can_block(socks, workload, depth) else _echo_loop
        result = run(socks, workload, depth, t0, cfg["warmup"], cfg["duration"], cfg.get("latency", False))
    finally:
        result_unclean = close_all(socks, target.proto)
    result["unclean"] = result_unclean
    return result


def _can_block(socks: list[socket.socket], workload: Workload, depth: int) -> bool:
    # One connection whose requests in flight fit in the socket buffers: a blocking send
    # can never wait on a server that is itself blocked sending to us.
    return len(socks) == 1 and workload.response is not None and len(workload.request) * depth <= 65536


def _echo_one(socks: list[socket.socket], workload: Workload, depth: int, t0: float, warmup: float,
              duration: float, want_latency: bool) -> dict[str, Any]:
    """The single-connection loop: blocking send and recv, no selector (one syscall fewer per reply)."""
    sock = socks[0]
    # Blocking without a timeout: with one, CPython polls before every recv (a syscall more).
    # A server that stops answering is dealt with by the parent, which kills this process.
    sock.settimeout(None)
    request, reply_size = workload.request, len(workload.response or b"")
    batches = [request * k for k in range(depth + 1)]
    rbuf = bytearray(1 << 16)
    size = len(rbuf)
    recv_into, sendall = sock.recv_into, sock.sendall
    perf = time.perf_counter
    latencies: list[float] | None = [] if want_latency and depth == 1 else None
    _sleep_until(t0)
    t_start, t_end = t0 + warmup, t0 + warmup + duration
    completed = count0 = rx = 0
    cpu0 = ts = 0.0
    measuring = False
    sent = perf()
    sendall(batches[depth])
    while True:
        n = recv_into(rbuf, size, DISCARD)
        if not n:
            raise ConnectionError("the server closed the connection")
        rx += n
        if rx < reply_size:
            continue
        done = rx // reply_size
        rx -= done * reply_size
        completed += done
        now = perf()
        if latencies is not None and measuring:
            latencies.append(now - sent)
        if not measuring and now >= t_start:
            count0, cpu0, ts, measuring = completed, time.process_time(), now, True
        if now >= t_end:
            break
        sent = now
        sendall(batches[done] if done <= depth else request * done)
    count1, cpu1, te = completed, time.process_time(), now
    inflight = depth - done  # the replies still to come for what was sent
    deadline = perf() + DRAIN_TIMEOUT
    sock.settimeout(DRAIN_TIMEOUT)
    while inflight > 0 and perf() < deadline:
        n = recv_into(rbuf, size, DISCARD)
        if not n:
            break
        rx += n
        done = rx // reply_size
        rx -= done * reply_size
        inflight -= done
    result: dict[str, Any] = {"count": count1 - count0, "elapsed": te - ts, "cpu": cpu1 - cpu0,
                              "left_in_flight": max(inflight, 0)}
    if latencies is not None:
        result["latencies"] = latencies[:MAX_LATENCIES]
    return result


def _echo_loop(socks: list[socket.socket], workload: Workload, depth: int, t0: float, warmup: float,
               duration: float, want_latency: bool) -> dict[str, Any]:
    """Many connections (or large messages): non-blocking sockets and a selector."""
    request = workload.request
    reply_size = len(workload.response) if workload.response is not None else 0
    large = len(request) > 65536
    # The bytes of k requests, built once: a reply that completes k messages is answered in one send().
    batches = None if large else [request * k for k in range(depth + 1)]
    selector = selectors.DefaultSelector()
    conns = []
    for sock in socks:
        sock.setblocking(False)
        conn = _Conn(sock)
        selector.register(sock, selectors.EVENT_READ, conn)
        conns.append(conn)
    rbuf = bytearray(1 << 20 if large or reply_size > 16384 else 1 << 16)
    rview = memoryview(rbuf)
    rsize, rflags = len(rbuf), DISCARD if reply_size else 0
    perf = time.perf_counter
    latencies: list[float] | None = [] if want_latency and depth == 1 else None
    READ, BOTH = selectors.EVENT_READ, selectors.EVENT_READ | selectors.EVENT_WRITE

    def send(conn: _Conn, k: int) -> None:
        if latencies is not None:
            conn.sent = perf()
        if batches is not None:
            data = memoryview(batches[k] if k <= depth else request * k)
            if not conn.out:
                try:
                    n = conn.sock.send(data)
                except BlockingIOError:
                    n = 0
                if n == len(data):
                    return
                data = data[n:]
                selector.modify(conn.sock, BOTH, conn)
            conn.out.append(data)
            return
        if not conn.out:
            selector.modify(conn.sock, BOTH, conn)
        for _ in range(k):
            conn.out.append(memoryview(request))
        flush(conn)

    def flush(conn: _Conn) -> None:
        out = conn.out
        while out:
            data = out[0]
            try:
                n = conn.sock.send(data)
            except BlockingIOError:
                return
            if n < len(data):
                out[0] = data[n:]
                return
            out.popleft()
        selector.modify(conn.sock, READ, conn)

    _sleep_until(t0)
    for conn in conns:
        send(conn, depth)
    inflight = depth * len(conns)
    t_start, t_end = t0 + warmup, t0 + warmup + duration
    completed = count0 = count1 = 0
    cpu0 = cpu1 = ts = te = 0.0
    phase, sending, drain_until = 0, True, 0.0
    select = selector.select
    while True:
        now = perf()
        if phase == 0:
            if now >= t_start:
                count0, cpu0, ts, phase = completed, time.process_time(), now, 1
        elif phase == 1:
            if now >= t_end:
                count1, cpu1, te, phase = completed, time.process_time(), now, 2
                sending, drain_until = False, now + DRAIN_TIMEOUT
        elif inflight <= 0 or now >= drain_until:
            break
        for key, events in select(0.02):
            conn = key.data
            if events & READ:
                try:
                    n = conn.sock.recv_into(rbuf, rsize, rflags)
                except BlockingIOError:
                    n = -1
                if n == 0:
                    raise ConnectionError("the server closed the connection")
                if n > 0:
                    if reply_size:
                        total = conn.rx + n
                        done = total // reply_size
                        conn.rx = total - done * reply_size
                    else:
                        done = _count_frames(conn, rview[:n])
                    if done:
                        completed += done
                        if latencies is not None and phase == 1:
                            latencies.append(perf() - conn.sent)
                        if sending:
                            send(conn, done)
                        else:
                            inflight -= done
            if events & selectors.EVENT_WRITE and conn.out:
                flush(conn)
    selector.close()
    result: dict[str, Any] = {"count": count1 - count0, "elapsed": te - ts, "cpu": cpu1 - cpu0,
                              "left_in_flight": max(inflight, 0)}
    if latencies is not None:
        result["latencies"] = latencies[:MAX_LATENCIES]
    return result


echo_worker = _worker(_echo)


# -- connections per second ----------------------------------------------------------------------
def _connect(pipe: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Open, handshake, echo once, close (waiting for the server to close TCP), in a loop."""
    target: Target = cfg["target"]
    workload: Workload = cfg["workload"]
    pipe.send(("ready", 0))
    t0 = _wait_go(pipe)
    _sleep_until(t0)
    t_start, t_end = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
    count = errors = unclean = 0
    cpu0 = cpu1 = 0.0
    first_error = ""
    measuring = False
    while True:
        now = time.monotonic()
        if not measuring and now >= t_start:
            measuring, cpu0, count = True, time.process_time(), 0
        if now >= t_end:
            cpu1 = time.process_time()
            break
        try:
            sock, rest = open_connection(target)
            try:
                checked_echo(sock, rest, workload)
            finally:
                unclean += close_all([sock], target.proto)
        except (OSError, ConnectionError) as exc:
            errors += 1
            first_error = first_error or "%s: %s" % (type(exc).__name__, exc)
            if errors > MAX_ERRORS:
                raise ConnectionError("%d failed connections, first: %s" % (errors, first_error)) from exc
            time.sleep(0.01)
            continue
        if measuring and time.monotonic() <= t_end:
            count += 1
    return {"count": count, "elapsed": t_end - t_start, "cpu": cpu1 - cpu0, "errors": errors,
            "first_error": first_error, "unclean": unclean}


connect_worker = _worker(_connect)


# -- idle connections (memory) -------------------------------------------------------------------
def _idle(pipe: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Open ``cfg["conns"]`` connections, echo once on each, hold them until told to close."""
    target: Target = cfg["target"]
    workload: Workload = cfg["workload"]
    socks: list[socket.socket] = []
    try:
        for _ in range(cfg["conns"]):
            sock, rest = open_connection(target)
            socks.append(sock)
            checked_echo(sock, rest, workload)
        pipe.send(("ready", len(socks)))
        _wait_go(pipe)
    finally:
        unclean = close_all(socks, target.proto, timeout=5.0)
    return {"count": len(socks), "unclean": unclean}


idle_worker = _worker(_idle)


# -- the client side: a client library against a fast server ---------------------------------------
def _client(pipe: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """One connection of the client library ``cfg["lib"]``; send, receive, repeat."""
    lib, target, workload = cfg["lib"], cfg["target"], cfg["workload"]
    text = workload.payload.decode() if workload.opcode == OP_TEXT else workload.payload
    close: Callable[[], Any]
    if lib == "twspy":
        import sys
        sys.path.insert(0, cfg["root"])
        import twspy
        conn = twspy.connect(target.url, extensions=[], max_size=None)  # as websockets' max_size=None
        send, close = conn.send, conn.close

        def recv() -> Any:
            return conn.recv().payload
    elif lib == "websockets-sync":
        from websockets.sync.client import connect
        ws = connect(target.url, compression=None, ping_interval=None, max_size=None, proxy=None)
        send, recv, close = ws.send, ws.recv, ws.close
    elif lib == "websocket-client":
        import websocket
        wsc = websocket.create_connection(target.url)
        send = wsc.send_binary if isinstance(text, bytes) else wsc.send
        recv, close = wsc.recv, wsc.close
    elif lib == "raw":
        sock, rest = open_connection(target)
        request, reply = workload.request, workload.response
        assert reply is not None and not rest

        def send(message: Any) -> None:
            sock.sendall(request)

        def recv() -> Any:
            data, more = _recv_exact(sock, len(reply))
            assert not more
            return text if data == reply else data

        def close() -> None:
            close_all([sock], "ws")
    else:
        raise ValueError("unknown client %r" % lib)
    try:
        send(text)
        if recv() != text:
            raise ConnectionError("wrong echo")
        pipe.send(("ready", 1))
        t0 = _wait_go(pipe)
        _sleep_until(t0)
        t_start, t_end = t0 + cfg["warmup"], t0 + cfg["warmup"] + cfg["duration"]
        perf = time.perf_counter
        while perf() < t_start:
            send(text)
            recv()
        ts, cpu0, count = perf(), time.process_time(), 0
        while True:
            send(text)
            recv()
            count += 1
            if not count & 15 and perf() >= t_end:
                break
        te, cpu1 = perf(), time.process_time()
        return {"count": count, "elapsed": te - ts, "cpu": cpu1 - cpu0}
    finally:
        close()


client_worker = _worker(_client)
