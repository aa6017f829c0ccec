"""twspy.asgi with real parts: FastAPI apps served by uvicorn (processes started here on free
loopback ports, or a server in a thread), a real ``redis-server`` (test_hub_redis.RedisProcess),
twspy nodes (``python -m twspy serve``, threaded and asyncio) and twspy clients.

FastAPI and uvicorn are test-only dependencies (the ``test`` extra; ``make test`` installs
them). Without them, or without redis-server, these tests skip, except under
``TWSPY_REQUIRE_REDIS=1`` (CI) or ``TWSPY_REQUIRE_ASGI=1``, where they fail.
"""

import json
import os
import queue
import signal
import socket
import sys
import threading
import time

import pytest
from test_hub_redis import JsonClient, Node, _require_redis, clients, redis_server  # noqa: F401

from conftest import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
T = 30.0  # seconds for anything that waits on a process (generous: the machine may be loaded)


def _require_asgi() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        why = "needs FastAPI and uvicorn (pip install fastapi uvicorn): %s" % exc
        if os.environ.get("TWSPY_REQUIRE_ASGI") or os.environ.get("TWSPY_REQUIRE_REDIS"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def nodes(redis_server):  # noqa: F811
    """``nodes("fastapi" | "threaded" | "asyncio", ...)``: server processes on one Redis, each on
    a free port it picked itself (port 0, read from its log line), ended by PID afterwards."""
    _require_asgi()
    started = []
    env = dict(os.environ, PYTHONPATH=ROOT, TWSPY_REDIS=redis_server.url, PYTHONUNBUFFERED="1")

    def start(*kinds):
        made = []
        for kind in kinds:  # all started first: they load in parallel
            if kind == "fastapi":
                args = [sys.executable, "-m", "uvicorn", "examples.fastapi_hub:app", "--host", "127.0.0.1",
                        "--port", "0"]
            else:
                args = [sys.executable, "-m", "twspy", "serve", "-f", "topics", "--redis", redis_server.url,
                        "--port", "0"] + (["--asyncio"] if kind == "asyncio" else [])
            node = Node(args, env=env)
            node.kind = kind
            started.append(node)
            made.append(node)
        for node in made:
            _wait_port(node, "http://127.0.0.1:" if node.kind == "fastapi" else "on ws://")
        return made

    yield start
    for node in started:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGINT)
        node.stop()


def _wait_port(node: Node, marker: str, timeout: float = 60.0) -> None:
    """The port from the node's log line, which comes once the app is loaded (its hub found the
    end of the log) and the port listens. Importing FastAPI takes seconds on a loaded machine."""
    deadline = time.monotonic() + timeout
    while node.port is None:
        try:
            line = node.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("no port from %s: %s" % (node.proc.args, node.log)) from None
        if marker in line:
            node.port = int(line.split(marker, 1)[1].split()[0].split("/")[0].rsplit(":", 1)[-1])


def _ws(node: Node) -> str:
    return node.url("/ws" if node.kind == "fastapi" else "/")


def test_two_fastapi_nodes_lose_nothing_acknowledged_across_a_redis_restart(redis_server, nodes, clients):  # noqa: F811
    """The issue's measure: two uvicorn processes running examples/fastapi_hub.py on one
    redis-server without persistence; a publisher and a subscriber on one, a subscriber on the
    other; Redis is SIGKILLed and restarted empty mid-stream. Every acknowledged publish arrives
    once, in order, at both subscribers."""
    a, b = nodes("fastapi", "fastapi")
    far, near, publisher = clients(_ws(b)), clients(_ws(a)), clients(_ws(a))
    assert far.id.split(".")[0] != near.id.split(".")[0]  # two hub nodes
    far.subscribe("feed")
    near.subscribe("feed")
    total, pause_at = 400, 120
    disrupted = threading.Event()
    sent = [0]

    def publish():
        for i in range(total):
            publisher.request(type="publish", topic="feed", data=i, id=i, echo=False)
            sent[0] = i + 1
            if i == pause_at:
                disrupted.wait(T)  # the rest goes out during the outage and after it
            time.sleep(0.002)  # pacing: a stream, not one burst

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        got = [far.expect("message", timeout=T)["data"] for _ in range(100)]
        redis_server.kill()
        before = sent[0]
        disrupted.set()
        time.sleep(0.5)  # the outage itself, not synchronisation
        during = sent[0] - before
        redis_server.start()
    finally:
        disrupted.set()
        thread.join(T)
    acked, failed = set(), set()
    while len(acked) + len(failed) < total:
        reply = publisher.get(timeout=30)
        (acked if reply["type"] == "ack" else failed).add(reply["id"])
    while len(got) < len(acked):
        got.append(far.expect("message", timeout=30)["data"])
    local = [near.expect("message", timeout=T)["data"] for _ in range(len(acked))]
    with pytest.raises(queue.Empty):
        far.get(timeout=0.3)  # and nothing more (no duplicate after the last)
    for seen in (got, local):
        lost = len(acked - set(seen))
        duplicated = len(seen) - len(set(seen))
        reordered = sum(1 for x, y in zip(seen, seen[1:]) if y < x)
        print("%d sent before the kill, %d during the outage; %d acknowledged of %d, %d received: "
              "%d lost, %d duplicated, %d reordered, %d refused"
              % (before, during, len(acked), total, len(seen), lost, duplicated, reordered, len(failed)))
        assert (lost, duplicated, reordered) == (0, 0, 0)
        assert seen == list(range(total))
    assert not failed and acked == set(range(total))


def test_a_threaded_an_asyncio_and_a_fastapi_node_on_one_hub(redis_server, nodes, clients):  # noqa: F811
    threaded, aio, fast = nodes("threaded", "asyncio", "fastapi")
    people = {name: clients(_ws(node)) for name, node in (("t", threaded), ("s", aio), ("f", fast))}
    assert len({c.id.split(".")[0] for c in people.values()}) == 3  # three hub nodes
    for client in people.values():
        client.subscribe("mix/#")
    from twspy.hub import Hub
    observer = Hub(redis_server.url, heartbeat=0.2)
    try:
        ids = {c.id for c in people.values()}
        wait_for(lambda: observer.presence("mix/any") == ids, timeout=T)  # presence spans the three
    finally:
        observer.close()
    for n, (name, client) in enumerate(people.items()):
        client.request(type="publish", topic="mix/" + name, data=name, id=n)
    for n, client in enumerate(people.values()):
        heard, acks = set(), []
        while len(heard) < 3 or not acks:
            item = client.get(timeout=T)
            if item["type"] == "ack":
                acks.append(item["id"])
            else:
                heard.add((item["topic"], item["data"], item["from"]))
        assert heard == {("mix/" + name, name, c.id) for name, c in people.items()} and acks == [n]
    people["f"].request(type="send_by_conn_id", conn_ids=[people["t"].id, people["s"].id], data="psst")
    for name in "ts":
        assert people[name].expect("message", timeout=T) == {"type": "message", "data": "psst", "from": people["f"].id}
    people["s"].request(type="broadcast", data="all")
    for client in people.values():
        assert client.expect("message", timeout=T) == {"type": "message", "data": "all", "from": people["s"].id}
    from twspy import connect
    with connect(fast.url("/chat/lobby"), handshake_timeout=T) as chat:  # the example's own-code endpoint
        chat.send("hello")
        sender, _, text = chat.recv(timeout=T).payload.partition(": ")
        assert text == "hello" and sender.split(".")[0] == people["f"].id.split(".")[0]


def _frozen_client(port: int) -> socket.socket:
    """A raw client with a tiny receive buffer that subscribes to "flood" and never reads."""
    from twspy.frame import Frame
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(T)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, "closed during the handshake"
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(Frame(0x1, json.dumps({"type": "subscribe", "topic": "flood"}), mask=True).pack())
    return sock


class UvicornThread:
    """A FastAPI app served by uvicorn in a thread of this process, on a socket bound here (port
    0): clients connect at once, the connection waits in the backlog until uvicorn serves."""

    def __init__(self, app) -> None:
        import uvicorn
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(T)
        self.sock.close()
        assert not self.thread.is_alive()


def test_a_fastapi_client_that_stops_reading_is_closed_1013_and_the_others_keep_up():
    """uvicorn's send() waits while a client does not read: the hub's deliveries pile up in the
    connection's outbox until max_outbox, then it is closed with 1013; a steady client on the
    same endpoint gets every message."""
    _require_asgi()
    from fastapi import FastAPI, WebSocket

    from twspy import connect
    from twspy.asgi import Endpoint
    from twspy.filters import Filter
    from twspy.hub import Hub, TopicBroadcast

    closed: queue.Queue[tuple] = queue.Queue()

    class Closes(Filter):
        def on_close(self, client, code, reason):
            closed.put((client.id, code))

    hub = Hub()
    endpoint = Endpoint(hub=hub, filters=[TopicBroadcast(), Closes()], max_outbox=256 * 1024, close_timeout=0.5)
    app = FastAPI()

    @app.websocket("/")
    async def ws(websocket: WebSocket) -> None:
        await endpoint.serve(websocket)  # the WebSocket object itself: scope, receive, send

    server = UvicornThread(app)
    frozen = steady = None
    try:
        frozen = _frozen_client(server.port)
        wait_for(lambda: hub.presence("flood"), timeout=T)  # its subscribe went through
        frozen_id = next(iter(hub.presence("flood")))
        frozen_conn = next(c for c in endpoint.clients if c.id == frozen_id)
        steady = connect("ws://127.0.0.1:%d/" % server.port, handshake_timeout=T, extensions=[])
        steady.recv(timeout=T)  # set_conn_id
        steady.send(json.dumps({"type": "subscribe", "topic": "flood", "id": 1}))
        assert json.loads(steady.recv(timeout=T).payload)["type"] == "ack"
        filler = "x" * 64 * 1024
        for i in range(2000):  # 128 MiB for the frozen client if nothing bounded it
            hub.publish("flood", "%d %s" % (i, filler))
            assert steady.recv(timeout=T).payload.startswith("%d " % i)  # steady reads each one
            if frozen_conn.close_code is not None:  # the decision (on_close comes after close_timeout)
                break
        assert closed.get(timeout=T) == (frozen_id, 1013)
        assert i < 2000 - 1
        # The kernel's buffers (a few MB on loopback) and uvicorn's 64 KiB come before the outbox.
        print("closed 1013 after %d messages of 64 KiB (max_outbox 256 KiB)" % (i + 1))
    finally:
        if frozen is not None:
            frozen.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            frozen.close()  # a reset: the server drops what it buffered for it
        if steady is not None:
            steady.close()
        server.stop()
        hub.close()
