"""The hub across processes through a real Redis: each test starts its own ``redis-server``
(127.0.0.1, a free port, persistence off) and server processes (tools/hubnode.py, or
``python -m twspy serve --redis``), kills and restarts them, and checks what clients see.

Without redis-server these tests skip, except under ``TWSPY_REQUIRE_REDIS=1`` (CI), where
they fail.
"""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from twspy import connect
from twspy.connection import Connection
from twspy.websocket import websocket

from conftest import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REDIS_SERVER = shutil.which("redis-server")


def _require_redis() -> None:
    missing = []
    if REDIS_SERVER is None:
        missing.append("redis-server (Debian: apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("the redis package (pip install 'twspy[redis]')")
    if missing:
        why = "needs " + " and ".join(missing)
        if os.environ.get("TWSPY_REQUIRE_REDIS"):
            pytest.fail(why)
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A redis-server of our own: start, kill -9, start again on the same port."""

    def __init__(self, persist_dir=None) -> None:
        self.port = _free_port()
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self.persist_dir = persist_dir  # None: persistence off (a restart loses everything)
        self.proc = None
        self.start()

    def start(self) -> None:
        persistence = ["--appendonly", "no"] if self.persist_dir is None else \
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.persist_dir)]
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", *persistence,
             "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, "redis-server exited with %s" % self.proc.returncode
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.02)

    def command(self, line: str) -> bytes:
        """One inline command (e.g. ``CLIENT KILL TYPE normal``); the first line of the reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(line.encode() + b"\r\n")
            return s.makefile("rb").readline()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def redis_server(request, tmp_path):
    """A redis-server of the test's own; ``@pytest.mark.parametrize("redis_server", ["aof"],
    indirect=True)`` turns persistence on (append-only file, fsync always)."""
    _require_redis()
    server = RedisProcess(tmp_path if getattr(request, "param", None) == "aof" else None)
    yield server
    server.stop()


class Node:
    """A server process with a Redis hub (tools/hubnode.py or ``twspy serve``)."""

    def __init__(self, args, env=None) -> None:
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log = []
        self.port = None
        self._errs = []
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.log), daemon=True),
                       threading.Thread(target=self._pump, args=(self.proc.stderr, self._errs), daemon=True)]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream, sink) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            self.lines.put(line)

    def wait_port(self, marker: str) -> int:
        # Bounds a hang only: a node prints its port as soon as it listens, which takes seconds
        # when other test suites load the machine (15 s was too short with two suites beside it).
        deadline = time.monotonic() + 60
        while self.port is None:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no port from %s: %s" % (self.proc.args, self._errs)) from None
            if marker in line:
                self.port = int(line.split(marker, 1)[1].split()[0].split("/")[0].rsplit(":", 1)[-1])
        return self.port

    def url(self, path: str = "/") -> str:
        return "ws://127.0.0.1:%d%s" % (self.port, path)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pump in self._pumps:  # the process is gone: both pipes are at EOF
            pump.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def crash(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def nodes(redis_server):
    started = []

    def start(*extra):
        node = Node([sys.executable, os.path.join(ROOT, "tools", "hubnode.py"), "--redis", redis_server.url, *extra])
        started.append(node)  # stopped at teardown even if it never says its port
        node.wait_port("port ")
        return node

    yield start
    for node in started:
        node.stop()


class JsonClient:
    """A client of the hub's JSON protocol that collects what it receives in a thread."""

    def __init__(self, url: str, reader: bool = True) -> None:
        self.conn = connect(url, handshake_timeout=10, extensions=[])
        hello = json.loads(self.conn.recv(timeout=10).payload)
        assert hello["type"] == "set_conn_id"
        self.id = hello["conn_id"]
        self.inbox: queue.Queue[dict] = queue.Queue()
        self.thread = None
        if reader:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        for message in self.conn:
            self.inbox.put(json.loads(message.payload))

    def request(self, **fields) -> None:
        self.conn.send(json.dumps(fields))

    def get(self, timeout: float = 10.0) -> dict:
        return self.inbox.get(timeout=timeout)

    def expect(self, kind: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            item = self.get(max(0.01, deadline - time.monotonic()))
            if item["type"] == kind:
                return item

    def subscribe(self, topic: str) -> None:
        self.request(type="subscribe", topic=topic, id="sub " + topic)
        assert self.expect("ack") == {"type": "ack", "id": "sub " + topic}

    def close(self) -> None:
        self.conn.close()
        if self.thread is not None:
            self.thread.join(10)


@pytest.fixture
def clients():
    made = []

    def make(url, reader=True):
        client = JsonClient(url, reader)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_topics_and_send_to_id_cross_servers(nodes, clients):
    a, b = nodes(), nodes()
    alice, bob, carol = clients(a.url()), clients(b.url()), clients(b.url())
    assert alice.id.split(".")[0] != bob.id.split(".")[0]  # ids name their node
    alice.subscribe("chat/#")
    bob.subscribe("chat/+")

    alice.request(type="publish", topic="chat/lobby", data={"text": "hello"}, id=1)
    want = {"type": "message", "topic": "chat/lobby", "data": {"text": "hello"}, "from": alice.id}
    assert bob.expect("message") == want
    assert alice.expect("message") == want
    assert alice.expect("ack") == {"type": "ack", "id": 1}

    bob.request(type="send_by_conn_id", conn_id=alice.id, data="psst", id=2)
    assert alice.expect("message") == {"type": "message", "data": "psst", "from": bob.id}
    assert bob.expect("ack")["id"] == 2

    alice.request(type="send_by_conn_id", conn_ids=[bob.id, carol.id], data=[1, 2])
    assert bob.expect("message")["data"] == [1, 2]
    # carol never subscribed: the direct message is the first thing she gets.
    assert carol.get() == {"type": "message", "data": [1, 2], "from": alice.id}

    carol.request(type="broadcast", data="all")
    for who in (alice, bob, carol):
        assert who.expect("message") == {"type": "message", "data": "all", "from": carol.id}


def _publish_through(disrupt, nodes, clients, total=400):
    """A publisher on one server, subscribers on both; ``disrupt()`` runs once 100 messages have
    crossed, while the publisher goes on. Every acknowledged message must arrive once, in order."""
    a, b = nodes(), nodes()
    far, near, publisher = clients(b.url()), clients(a.url()), clients(a.url())
    far.subscribe("feed")
    near.subscribe("feed")
    disrupted = threading.Event()

    def publish():
        for i in range(total):
            publisher.request(type="publish", topic="feed", data=i, id=i, echo=False)
            if i == 120:
                disrupted.wait(20)  # the rest goes out during the disruption and after it
            time.sleep(0.002)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        got = []
        while len(got) < 100:
            got.append(far.expect("message")["data"])
        disrupt()
    finally:
        disrupted.set()
        thread.join(30)
    acked, failed = set(), set()
    while len(acked) + len(failed) < total:
        reply = publisher.get(timeout=30)
        (acked if reply["type"] == "ack" else failed).add(reply["id"])
    while len(got) < len(acked):
        got.append(far.expect("message", timeout=30)["data"])
    assert not failed
    assert acked == set(range(total))
    assert got == list(range(total))  # every acknowledged message, once, in order
    local = [near.expect("message")["data"] for _ in range(total)]
    assert local == list(range(total))
    with pytest.raises(queue.Empty):
        far.get(timeout=0.3)  # and nothing twice


def test_redis_restart_loses_no_acknowledged_message(redis_server, nodes, clients):
    """Redis without persistence is SIGKILLed and restarted empty: the nodes replay."""
    def restart():
        redis_server.kill()
        time.sleep(0.5)  # the outage itself, not synchronisation
        redis_server.start()
    _publish_through(restart, nodes, clients)


@pytest.mark.parametrize("redis_server", ["aof"], indirect=True)
def test_persistent_redis_restart_loses_nothing(redis_server, nodes, clients):
    """With an append-only file the stream survives: readers go on from the last id they saw."""
    def restart():
        redis_server.kill()
        redis_server.start()
    _publish_through(restart, nodes, clients)


def test_network_blip_loses_nothing(redis_server, nodes, clients):
    """Every connection to Redis is cut (CLIENT KILL) a few times: reconnect, read on from the
    last id; no loss, no duplicates."""
    def blips():
        for _ in range(3):
            assert redis_server.command("CLIENT KILL TYPE normal").startswith(b":")
            time.sleep(0.1)  # let some traffic through between the cuts
    _publish_through(blips, nodes, clients)


def _frozen_client(url_port: int) -> Connection:
    """A client whose receive buffer is tiny and which never reads after subscribing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = websocket(sock, extensions=[])
    ws.settimeout(10)
    ws.connect(("127.0.0.1", url_port))
    conn = Connection(ws)
    assert json.loads(conn.recv(timeout=10).payload)["type"] == "set_conn_id"
    conn.send(json.dumps({"type": "subscribe", "topic": "flood", "id": 0}))
    assert json.loads(conn.recv(timeout=10).payload)["type"] == "ack"
    return conn


def test_frozen_slow_client_is_closed_1013_and_others_keep_up(nodes, clients):
    a = nodes()
    b = nodes("--max-outbox", str(64 * 1024))
    frozen = _frozen_client(b.port)
    try:
        steady = clients(b.url())
        steady.subscribe("flood")
        publisher = clients(a.url())
        total, filler = 1500, "x" * 8000
        for i in range(total):
            publisher.request(type="publish", topic="flood", data=[i, filler], echo=False)
        got = [steady.expect("message", timeout=30)["data"][0] for _ in range(total)]
        assert got == list(range(total))
        closed = "%s close 1013" % frozen_id(b)
        wait_for(lambda: any(closed in line for line in b.log), timeout=20)
    finally:
        frozen.abort()


def frozen_id(node: Node) -> str:
    # The first client to open on the node is the frozen one (Log prints "<time> <id> open <path>").
    return next(line.split()[1] for line in node.log if " open " in line)


def test_crashed_server_presence_disappears(redis_server, nodes, clients):
    from twspy.hub import Hub
    a, b = nodes(), nodes()
    here, there = clients(a.url()), clients(b.url())
    here.subscribe("room/1")
    there.subscribe("room/+")
    observer = Hub(redis_server.url, heartbeat=0.2)
    try:
        wait_for(lambda: observer.presence("room/1") == {here.id, there.id}, timeout=10)
        assert observer.presence("room/2") == {there.id}
        b.crash()
        wait_for(lambda: observer.presence("room/1") == {here.id}, timeout=10)
        assert observer.presence() == {here.id}
    finally:
        observer.close()


def test_two_twspy_serve_processes_form_one_chat(redis_server):
    """The README's demo: two ``python -m twspy serve --redis`` processes, a client on each;
    Redis restarts mid-chat and nothing is lost."""
    _require_redis()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    servers = [Node([sys.executable, "-m", "twspy", "serve", "--redis", redis_server.url, "--port", "0"], env=env)
               for _ in range(2)]
    conns = []
    try:
        ports = [node.wait_port("on ws://") for node in servers]
        conns = [connect("ws://127.0.0.1:%d/" % port, handshake_timeout=10) for port in ports]
        inbox: queue.Queue[str] = queue.Queue()

        def read():
            for message in conns[1]:
                inbox.put(message.payload)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # The hub is ready when a message crosses.
        deadline = time.monotonic() + 15
        while True:
            conns[0].send("ping?")
            try:
                if inbox.get(timeout=0.5) == "ping?":
                    break
            except queue.Empty:
                assert time.monotonic() < deadline, "no message crossed the servers"
        for i in range(150):
            if i == 50:
                redis_server.kill()
            if i == 100:
                redis_server.start()
            conns[0].send("line %d" % i)
        seen = []
        while len(seen) < 150:
            text = inbox.get(timeout=30)
            if text.startswith("line "):
                seen.append(text)
        assert seen == ["line %d" % i for i in range(150)]
    finally:
        for conn in conns:
            conn.close()
        for node in servers:
            node.proc.send_signal(signal.SIGINT)
            node.stop()


def test_hub_chat_example_across_two_processes(redis_server):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    script = os.path.join(ROOT, "examples", "hub_chat.py")
    rooms = [Node([sys.executable, script, "0", redis_server.url], env=env) for _ in range(2)]
    conns = []
    try:
        ports = [room.wait_port("ws://127.0.0.1:") for room in rooms]
        conns = [connect("ws://127.0.0.1:%d/" % port, handshake_timeout=10) for port in ports]
        ids = []
        for n, conn in enumerate(conns):
            # Each hears itself once its subscription is in place. The second may hear the
            # first's "here" before its own (it came through Redis after it subscribed): each
            # says its own words and reads until it hears them.
            conn.send("here %d" % n)
            while True:
                sender, _, text = conn.recv(timeout=10).payload.partition(": ")
                if text == "here %d" % n:
                    ids.append(sender)
                    break
                assert text.startswith("here "), text
        assert ids[0].split(".")[0] != ids[1].split(".")[0]  # two nodes
        conns[0].send("Hello")
        for conn in conns:
            while True:  # skip the other's "here", if it came after the subscription
                text = conn.recv(timeout=10).payload
                if ": here " not in text:
                    break
            assert text == "%s: Hello" % ids[0]
    finally:
        for conn in conns:
            conn.close()
        for room in rooms:
            room.proc.send_signal(signal.SIGINT)
            room.stop()


def test_closing_a_redis_hub_is_prompt(redis_server):
    """close() does not wait out the reader's blocking XREAD: wake() ends a read at once."""
    from twspy.broker import BrokerUnavailable, RedisBroker
    from twspy.hub import Hub
    broker = RedisBroker(redis_server.url)
    outcome = []

    def read():
        try:
            outcome.append(broker.read(broker.tail(), 30.0))  # would block for 30 s
        except Exception as exc:  # anything but BrokerUnavailable fails below, named
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    import redis
    observer = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: any(c.get("cmd") == "xread" for c in observer.client_list()), timeout=10)
    observer.close()
    broker.wake()
    reader.join(10)  # far less than the 30 s block
    assert not reader.is_alive() and len(outcome) == 1 and isinstance(outcome[0], BrokerUnavailable), outcome
    broker.close()
    hub = Hub(redis_server.url)
    assert hub.ready.is_set()
    hub.close()
    assert not hub._reader.is_alive() and not hub._writer.is_alive()


def test_presence_is_stored_structurally_and_updated_by_client(redis_server):
    """A filter "x\nsecret/room" once made another node list its client under "secret/room"
    (filters were joined by newlines); now control characters are refused and each client's
    filters are a JSON list, changed client by client."""
    import redis

    from twspy.broker import RedisBroker
    from twspy.topics import InvalidTopic
    broker = RedisBroker(redis_server.url, prefix="p")
    observer = redis.Redis.from_url(redis_server.url)
    try:
        assert broker.update_presence("n1", {"n1.1.x": ["a"]}, 10) is False   # nothing yet: all first
        assert observer.exists("p:presence:n1") == 0
        broker.set_presence("n1", {"n1.1.x": ["a/+", "b"], "n1.2.y": []}, 10)
        assert json.loads(observer.hget("p:presence:n1", "n1.1.x")) == ["a/+", "b"]
        assert broker.update_presence("n1", {"n1.2.y": ["weird,\"name\""], "n1.1.x": None, "n1.3.z": []}, 10)
        assert broker.presence() == {"n1": {"n1.2.y": ['weird,"name"'], "n1.3.z": []}}
        observer.hset("p:presence:n2", mapping={"": "", "n2.1.q": "old\nformat"})   # an older node
        assert broker.presence()["n2"] == {"n2.1.q": ["old", "format"]}
        assert 9000 < observer.pttl("p:presence:n1") <= 10000
        from twspy.hub import Hub
        hub = Hub(redis_server.url, prefix="h")
        try:
            with pytest.raises(InvalidTopic):
                hub.presence("x\nsecret/room")
        finally:
            hub.close()
    finally:
        observer.close()
        broker.close()


def test_the_stream_is_trimmed_by_bytes(redis_server):
    """200 publishes of 1 MB kept 200 MB in Redis (trimmed at 100,000 entries only)."""
    import redis

    from twspy.broker import RedisBroker
    broker = RedisBroker(redis_server.url, prefix="t", max_bytes=4 << 20)
    observer = redis.Redis.from_url(redis_server.url)
    try:
        generation = broker.generation()
        big = {"o": b"n", "s": b"1", "k": b"p", "d": b"x" * (256 << 10)}
        for _ in range(60):     # 15 MB
            assert broker.append([big], generation)
        kept = observer.xlen("t:log")
        assert 16 <= kept <= 20, kept       # 4 MB / 256 KB = 16, and Redis trims approximately
        small = {"o": b"n", "s": b"1", "k": b"p", "d": b"x" * 100}
        for _ in range(300):    # the average follows: more small entries are kept
            assert broker.append([small] * 10, generation)
        assert observer.xlen("t:log") > 2000
        assert broker.append([small], generation)
    finally:
        observer.close()
        broker.close()
