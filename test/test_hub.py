"""Hub: topics, broadcast, send-to-id and presence across servers with the in-process broker, over loopback.

A *cluster* here is several hubs on one :class:`MemoryBroker`, one Server each, and real ``twspy.connect``
clients. Absence is checked with :meth:`Cluster.sync`: every hub is flushed, then a marker goes to each
client through the broker from another node; since a node reads the log in order, anything else still on
its way would arrive first.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import tracemalloc
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

import twspy
from twspy.broker import Broker, BrokerUnavailable, HubError, MemoryBroker
from twspy.errors import ConnectionClosed, PayloadTooBig
from twspy.filters import Broadcast, Filter
from twspy.handshake import make_key
from twspy.hub import Hub, TopicBroadcast
from twspy.message import BinaryMessage, TextMessage
from twspy.topics import InvalidTopic, SubscriptionLimit

from conftest import url, wait_for

TIMEOUT = 5.0


# -- helpers ---------------------------------------------------------------------------------------
class AutoSubscribe(Filter):
    """Subscribe each client to the ``sub`` query parameters of its path.

    It runs before TopicBroadcast's ``set_conn_id``, so a client that has read its id is subscribed.
    """

    def on_open(self, client: Any) -> None:
        for name, value in parse_qsl(urlsplit(client.path).query):
            if name == "sub":
                client.server.hub.subscribe(client, value)


class Recorder(twspy.Server):
    """A server that remembers how each client closed and what reached ``onmessage``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.closed: dict = {}
        self.messages: list[tuple[str, Any]] = []
        super().__init__(*args, **kwargs)

    def onmessage(self, client: Any, message: Any) -> None:
        self.messages.append((client.id, message))
        client.send("server got %r" % (message.payload,))

    def onclose(self, client: Any, code: int, reason: str) -> None:
        self.closed[client.id] = (code, reason)


class Client:
    """A ``twspy.connect`` client; ``id`` is the conn_id that TopicBroadcast announces on open."""

    def __init__(self, server: twspy.Server, subs: tuple[str, ...] = (), hello: bool = True, **options: Any):
        path = "/?" + urlencode([("sub", s) for s in subs]) if subs else "/"
        self.conn = twspy.connect(url(server, path), handshake_timeout=TIMEOUT, **options)
        self.id = None
        if hello:
            first = self.recv_json()
            assert first["type"] == "set_conn_id"
            self.id = first["conn_id"]

    def recv(self, timeout: float = TIMEOUT) -> Any:
        return self.conn.recv(timeout)

    def expect(self, *payloads: Any) -> None:
        """The next messages carry these payloads, in this order."""
        got = [self.recv().payload for _ in payloads]
        assert got == list(payloads)

    def send_json(self, **request: Any) -> None:
        self.conn.send(json.dumps(request))

    def recv_json(self) -> Any:
        message = self.recv()
        assert isinstance(message, TextMessage), message
        return json.loads(message.payload)

    def close(self) -> None:
        self.conn.close()


class GatedBroker(Broker):
    """One node's view of a shared MemoryBroker whose reads a test can hold back (a stalled reader)."""

    def __init__(self, shared: MemoryBroker) -> None:
        self.shared = shared
        self.url = shared.url
        self._open = threading.Event()
        self._open.set()
        self.parked = threading.Event()

    def hold(self) -> None:
        """Stop this node's reader before its next read (a read in progress is woken)."""
        self._open.clear()
        self.shared.wake()
        assert self.parked.wait(TIMEOUT)

    def release(self) -> None:
        self.parked.clear()
        self._open.set()

    def read(self, cursor: str, timeout: float) -> Any:
        if not self._open.is_set():
            self.parked.set()
            self._open.wait(3 * TIMEOUT)
        return self.shared.read(cursor, timeout)

    def append(self, entries: Any, generation: str) -> bool:
        return self.shared.append(entries, generation)

    def tail(self) -> str:
        return self.shared.tail()

    def generation(self) -> str:
        return self.shared.generation()

    def set_presence(self, node: str, clients: Any, ttl: float) -> None:
        self.shared.set_presence(node, clients, ttl)

    def drop_presence(self, node: str) -> None:
        self.shared.drop_presence(node)

    def presence(self) -> Any:
        return self.shared.presence()

    def wake(self) -> None:
        self.shared.wake()


def _root(broker: Broker) -> Broker:
    return getattr(broker, "shared", broker)


class Cluster:
    """Hubs, servers and clients made by a test; all closed at its end."""

    def __init__(self) -> None:
        self.hubs: list[Hub] = []
        self.servers: list[tuple[twspy.Server, threading.Thread]] = []
        self.clients: list[Client] = []
        self.sockets: list[socket.socket] = []
        self.gates: list[GatedBroker] = []
        self._markers = 0

    def hub(self, broker: Any = None, **options: Any) -> Hub:
        hub = Hub(broker, **options)
        self.hubs.append(hub)
        if isinstance(broker, GatedBroker):
            self.gates.append(broker)
        return hub

    def server(self, hub: Any = None, cls: type = twspy.Server, filters: Any = None, **options: Any) -> Any:
        if filters is None:
            filters = [AutoSubscribe(), TopicBroadcast()]
        server = cls(("127.0.0.1", 0), hub=hub, filters=filters, **options)
        self.servers.append((server, server.serve_in_thread()))
        return server

    def nodes(self, n: int = 3, broker: Any = None, **options: Any) -> tuple[list[Hub], list[Any]]:
        """``n`` hubs on one broker (a new MemoryBroker by default), a server each."""
        broker = MemoryBroker() if broker is None else broker
        hubs = [self.hub(broker, **options) for _ in range(n)]
        return hubs, [self.server(hub) for hub in hubs]

    def client(self, server: Any, *subs: str, **options: Any) -> Client:
        client = Client(server, subs, **options)
        self.clients.append(client)
        return client

    def hub_of(self, client: Client) -> Hub:
        return next(h for h in self.hubs if client.id.startswith(h.node_id + "."))

    def sync(self, *clients: Client) -> None:
        """Assert that nothing more is on its way to ``clients`` (see the module docstring)."""
        for hub in self.hubs:
            assert hub.flush(TIMEOUT)
        for client in clients:
            own = self.hub_of(client)
            sender = next(h for h in self.hubs if h is not own and _root(h.broker) is _root(own.broker))
            self._markers += 1
            marker = "sync-%d" % self._markers
            assert sender.send_to(client.id, marker)
            assert client.recv().payload == marker

    def close(self) -> None:
        for gate in self.gates:
            gate.release()
        for client in self.clients:
            try:
                client.close()
            except Exception:  # already failed: the test reports why
                pass
        for sock in self.sockets:
            sock.close()
        for server, thread in self.servers:
            server.shutdown()
            thread.join(TIMEOUT)
        for hub in self.hubs:
            hub.close(timeout=1.0)


@pytest.fixture
def cluster():
    made = Cluster()
    try:
        yield made
    finally:
        made.close()


def server_side(server: twspy.Server, cid: str) -> Any:
    return next(c for c in list(server.clients) if c.id == cid)


def frozen_client(cluster: Cluster, server: twspy.Server, *subs: str) -> tuple[socket.socket, str]:
    """A raw socket that does the handshake, reads its conn_id, and then never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cluster.sockets.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", server.address[1]))
    path = "/?" + urlencode([("sub", s) for s in subs])
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, make_key())).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
        chunk = sock.recv(4096)
        assert chunk
        rest += chunk
    assert rest[0] == 0x81 and rest[1] < 126  # one small unmasked text frame: set_conn_id
    hello = json.loads(rest[2:2 + rest[1]])
    return sock, hello["conn_id"]


# -- a cluster of three ----------------------------------------------------------------------------
class TestCluster:
    def test_publish_reaches_subscribers_on_every_server(self, cluster):
        hubs, servers = cluster.nodes(3)
        subs = [cluster.client(s, "chat/lobby") for s in servers]
        others = [cluster.client(s, "chat/other") for s in servers]
        nobody = cluster.client(servers[1])
        for i, hub in enumerate(hubs):
            assert hub.publish("chat/lobby", "hello %d" % i) is True
            for sub in subs:
                sub.expect("hello %d" % i)
        cluster.sync(*subs, *others, nobody)

    def test_named_memory_brokers_form_a_cluster(self, cluster):
        name = "memory://test-hub-%s" % uuid.uuid4().hex
        hubs = [cluster.hub(name) for _ in range(3)]
        assert hubs[0].broker is hubs[1].broker is hubs[2].broker
        assert hubs[0].broker.url == name
        private = cluster.hub("memory://")
        assert private.broker is not hubs[0].broker and cluster.hub().broker is not private.broker
        servers = [cluster.server(h) for h in hubs + [private]]
        subs = [cluster.client(s, "t") for s in servers]
        hubs[2].publish("t", "named")
        for sub in subs[:3]:
            sub.expect("named")
        private.publish("t", "private")
        subs[3].expect("private")
        cluster.sync(*subs[:3])

    def test_wildcards(self, cluster):
        hubs, servers = cluster.nodes(3)
        table = {
            "sport/+/score": [1, 7],
            "sport/#": [1, 2, 3, 7],
            "#": [1, 2, 3, 5, 6, 7],             # not $SYS/... (MQTT §4.7.2)
            "+/tennis/#": [1, 3],
            "$SYS/#": [4],
            "+/broker/load": [],                  # a first-level wildcard never matches a $ topic
            "$SYS/+/load": [4],
            "+": [2, 5],
            "+/+": [6],
            "sport/tennis/score": [1],
        }
        topics = [None, "sport/tennis/score", "sport", "sport/tennis/player1/score", "$SYS/broker/load",
                  "finance", "/finance", "sport/golf/score"]
        clients = {f: cluster.client(servers[i % 3], f) for i, f in enumerate(table)}
        for round_, hub in enumerate(hubs):   # each node publishes: matching is local and remote
            for n, topic in enumerate(topics[1:], 1):
                hub.publish(topic, "%d.%d" % (round_, n))
            for topic_filter, numbers in table.items():
                clients[topic_filter].expect(*["%d.%d" % (round_, n) for n in numbers])
        cluster.sync(*clients.values())

    def test_invalid_filters_and_topics(self, cluster):
        hubs, servers = cluster.nodes(2)
        c = cluster.client(servers[0])
        for bad in ("a/#/b", "a#", "a/b+", "", "a\x00b"):
            with pytest.raises(InvalidTopic):
                hubs[0].subscribe(c.id, bad)
        for bad in ("a/+", "a/#", "#", "", "x\x00"):
            with pytest.raises(InvalidTopic):
                hubs[0].publish(bad, "m")
            with pytest.raises(InvalidTopic):
                hubs[0].presence(bad)
        with pytest.raises(TypeError):
            hubs[0].publish("a", 42)
        assert hubs[0].subscriptions(c.id) == set()
        assert hubs[0].stats["published"] == 0

    def test_exclude_by_client_and_by_id(self, cluster):
        hubs, servers = cluster.nodes(3)
        a0, b0 = cluster.client(servers[0], "x"), cluster.client(servers[0], "x")
        a1, a2 = cluster.client(servers[1], "x"), cluster.client(servers[2], "x")
        b0_obj = server_side(servers[0], b0.id)
        steps = [(hubs[1], "m1", a2.id, [a0, b0, a1]),
                 (hubs[0], "m2", [b0_obj, a1.id], [a0, a2]),
                 (hubs[2], "m3", b0_obj, [a0, a1, a2]),          # a client of another node's server
                 (hubs[2], "m4", {a0.id, a2.id, "nobody.1"}, [b0, a1])]
        for hub, payload, exclude, receivers in steps:   # one at a time: publishers on several nodes
            hub.publish("x", payload, exclude=exclude)
            for c in receivers:
                c.expect(payload)
        cluster.sync(a0, b0, a1, a2)

    def test_broadcast(self, cluster):
        hubs, servers = cluster.nodes(3)
        clients = [cluster.client(s, *subs) for s in servers for subs in ((), ("t",))]
        done: list = []
        assert hubs[1].broadcast("all", on_done=done.append)
        for c in clients:
            c.expect("all")
        assert hubs[2].broadcast(b"\x00but", exclude=[clients[0].id, server_side(servers[2], clients[5].id)])
        for i, c in enumerate(clients):
            if i not in (0, 5):
                c.expect(b"\x00but")
        cluster.sync(*clients)
        assert done == [True]

    def test_send_to(self, cluster):
        hubs, servers = cluster.nodes(3)
        c0, c1, c2 = (cluster.client(s) for s in servers)
        done: list = []
        assert hubs[0].send_to(c2.id, "one", on_done=done.append)
        c2.expect("one")
        assert hubs[1].send_to([c0.id, c1.id, c2.id], b"several", on_done=done.append)
        for c in (c0, c1, c2):
            c.expect(b"several")
        assert hubs[2].send_to({c0.id}, "set")
        assert hubs[2].send_to(server_side(servers[0], c0.id), "object")
        c0.expect("set", "object")
        cluster.sync(c0, c1, c2)
        assert done == [True, True]

    def test_send_to_unknown_id_is_ignored(self, cluster):
        hubs, servers = cluster.nodes(3)
        c = [cluster.client(s) for s in servers]
        done: list = []
        for hub in hubs:
            assert hub.send_to(hub.node_id + ".999999", "local ghost", on_done=done.append)
            assert hub.send_to(hubs[2].node_id + ".999999", "remote ghost", on_done=done.append)
            assert hub.send_to("no-such-node.1", "nowhere", on_done=done.append)
            assert hub.send_to([], "nobody", on_done=done.append)
        cluster.sync(*c)
        assert done == [True] * 12

    def test_disconnect(self, cluster):
        hubs, servers = cluster.nodes(3)
        c0, c1, c2 = (cluster.client(s, "t") for s in servers)
        assert hubs[0].disconnect(c2.id, 4000, "moved elsewhere") is True    # remote
        with pytest.raises(ConnectionClosed) as caught:
            c2.recv()
        assert (caught.value.code, caught.value.reason) == (4000, "moved elsewhere")
        assert hubs[0].disconnect([c0.id], 4001, "local") is True              # local
        with pytest.raises(ConnectionClosed) as caught:
            c0.recv()
        assert (caught.value.code, caught.value.reason) == (4001, "local")
        assert hubs[2].disconnect(c1.id) is True                               # default: 1000
        with pytest.raises(ConnectionClosed) as caught:
            c1.recv()
        assert (caught.value.code, caught.value.reason) == (1000, "")
        for hub in hubs:
            wait_for(lambda hub=hub: hub.presence() == set())
        assert hubs[1].disconnect("no-such-node.3") is True

    def test_presence(self, cluster):
        hubs, servers = cluster.nodes(3)
        a = cluster.client(servers[0], "chat/a")
        b = cluster.client(servers[1], "chat/b", "news")
        c = cluster.client(servers[2])
        everyone = {a.id, b.id, c.id}
        for hub in hubs:
            wait_for(lambda hub=hub: hub.presence() == everyone)
            wait_for(lambda hub=hub: hub.presence("chat/a") == {a.id})
            assert hub.presence("chat/b") == {b.id} and hub.presence("nothing") == set()
        hubs[2].subscribe(c.id, "chat/+")
        for hub in hubs:
            wait_for(lambda hub=hub: hub.presence("chat/a") == {a.id, c.id})
            assert hub.presence("chat/b") == {b.id, c.id}
        assert hubs[1].unsubscribe(b.id, "chat/b")
        for hub in hubs:
            wait_for(lambda hub=hub: hub.presence("chat/b") == {c.id})
            assert hub.presence("news") == {b.id}
        c.close()
        for hub in hubs:
            wait_for(lambda hub=hub: hub.presence() == {a.id, b.id})
            assert hub.presence("chat/a") == {a.id}
        hubs[1].close()   # a node that leaves takes its clients' presence with it
        wait_for(lambda: hubs[0].presence() == {a.id})
        assert hubs[2].presence("news") == set()

    def test_unsubscribe_one_and_all(self, cluster):
        hubs, servers = cluster.nodes(2)
        c = cluster.client(servers[1], "a", "b/#")
        assert hubs[1].subscriptions(c.id) == {"a", "b/#"}
        assert hubs[1].subscribe(c.id, "a") is False
        assert hubs[1].unsubscribe(c.id, "a") is True
        assert hubs[1].unsubscribe(c.id, "a") is False
        assert hubs[1].subscriptions(c.id) == {"b/#"}
        hubs[0].publish("a", "1")
        hubs[0].publish("b/x", "2")
        c.expect("2")
        assert hubs[1].subscribe(c.id, "c") is True
        assert hubs[1].unsubscribe(c.id) is True
        assert hubs[1].unsubscribe(c.id) is False
        assert hubs[1].subscriptions(c.id) == set()
        for topic in ("a", "b/x", "c"):
            hubs[0].publish(topic, "after")
            hubs[1].publish(topic, "after")
        cluster.sync(c)

    def test_text_stays_text_and_binary_stays_binary(self, cluster):
        hubs, servers = cluster.nodes(3)
        clients = [cluster.client(s, "t") for s in servers]
        raw = cluster.client(servers[2], "t", extensions=[])   # no compression: frames shared
        sent = ["héllo ✓", b"\x00\xff", TextMessage("text"), BinaryMessage(b"bin"), bytearray(b"ba"),
                memoryview(b"mv"), "", b"", "x" * 70000, bytes(range(256)) * 300]
        expected = [TextMessage("héllo ✓"), BinaryMessage(b"\x00\xff"), TextMessage("text"),
                    BinaryMessage(b"bin"), BinaryMessage(b"ba"), BinaryMessage(b"mv"), TextMessage(""),
                    BinaryMessage(b""), TextMessage("x" * 70000), BinaryMessage(bytes(range(256)) * 300)]
        for message in sent:
            hubs[0].publish("t", message)
        for c in clients + [raw]:
            got = [c.recv() for _ in expected]
            assert [(type(m), m.payload) for m in got] == [(type(m), m.payload) for m in expected]
        hubs[1].broadcast("broadcast ✓")
        for c in clients + [raw]:
            assert c.recv() == TextMessage("broadcast ✓")
        hubs[2].send_to([c.id for c in clients], b"\x01direct")
        for c in clients:
            assert c.recv() == BinaryMessage(b"\x01direct")
        cluster.sync(*clients, raw)

    def test_client_ids(self, cluster):
        broker = MemoryBroker()
        hubs = [cluster.hub(broker), cluster.hub(broker), cluster.hub(broker, node_id="node-B_2")]
        assert len({h.node_id for h in hubs}) == 3
        assert re.fullmatch("[0-9a-f]{8}", hubs[0].node_id) and hubs[2].node_id == "node-B_2"
        servers = [cluster.server(h) for h in hubs] + [cluster.server(hubs[0])]
        clients = [cluster.client(s) for s in servers for _ in range(2)]
        ids = [c.id for c in clients]
        assert len(set(ids)) == len(ids)
        for c, server in zip(clients, [s for s in servers for _ in range(2)]):
            node, n, secret = c.id.split(".")
            assert node == server.hub.node_id == server.node_id and n.isdigit()
            assert re.fullmatch("[0-9a-f]{16}", secret)  # not guessable from another client's id
            assert server_side(server, c.id).id == c.id
        assert hubs[2].node_id in repr(hubs[2])

    def test_own_echo_is_ignored(self, cluster):
        broker = MemoryBroker()
        hub = cluster.hub(broker)
        cluster.hub(broker)                      # a witness node, for sync
        server = cluster.server(hub)
        subs = [cluster.client(server, "t"), cluster.client(server, "t/#")]
        for i in range(3):
            hub.publish("t", str(i))
        hub.broadcast("b")
        hub.send_to(subs[0].id, "direct")
        for sub in subs:
            sub.expect("0", "1", "2", "b", *(["direct"] if sub is subs[0] else []))
        cluster.sync(*subs)
        # Only the sync markers came from another node (counted just after they are sent).
        wait_for(lambda hub=hub: hub.stats["delivered"] == 2 * 4 + 1 + 2)
        assert hub.stats["received"] == 2


# -- order -----------------------------------------------------------------------------------------
class TestOrder:
    def test_one_publisher_2000_messages_in_order(self, cluster):
        hubs, servers = cluster.nodes(3)
        subs = [cluster.client(s, "seq") for s in servers] + [cluster.client(servers[1], "#")]
        errors: list = []

        def publish() -> None:
            try:
                for i in range(2000):
                    assert hubs[0].publish("seq", str(i))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=publish)
        thread.start()
        try:
            for sub in subs:
                sub.expect(*[str(i) for i in range(2000)])
        finally:
            thread.join(TIMEOUT)
        assert not errors
        cluster.sync(*subs)
        assert hubs[1].stats["duplicates"] == 0 and hubs[1].stats["gaps"] == 0

    def test_two_publishers_on_two_nodes(self, cluster):
        hubs, servers = cluster.nodes(3)
        subs = [cluster.client(s, "seq/+") for s in servers]
        n = 1000
        start = threading.Barrier(2, timeout=TIMEOUT)

        def publish(hub: Hub, name: str) -> None:
            start.wait()
            for i in range(n):
                hub.publish("seq/" + name, "%s%d" % (name, i))

        threads = [threading.Thread(target=publish, args=(hubs[0], "a")),
                   threading.Thread(target=publish, args=(hubs[1], "b"))]
        for t in threads:
            t.start()
        try:
            for sub in subs:
                got = [sub.recv().payload for _ in range(2 * n)]
                assert [p for p in got if p[0] == "a"] == ["a%d" % i for i in range(n)]
                assert [p for p in got if p[0] == "b"] == ["b%d" % i for i in range(n)]
        finally:
            for t in threads:
                t.join(TIMEOUT)
        cluster.sync(*subs)


# -- the broker fails ------------------------------------------------------------------------------
class TestOutage:
    def test_local_at_once_remote_after_recovery(self, cluster):
        broker = MemoryBroker()
        hubs, servers = cluster.nodes(2, broker)
        a, b = cluster.client(servers[0], "o"), cluster.client(servers[1], "o")
        hubs[0].publish("o", "before")
        a.expect("before")
        b.expect("before")
        assert hubs[0].connected.is_set()
        broker.down = True
        assert all(hubs[0].publish("o", str(i)) for i in range(10))     # queued
        a.expect(*[str(i) for i in range(10)])                          # local: at once
        wait_for(lambda: not hubs[0].connected.is_set())
        assert hubs[0].flush(0.05) is False
        with pytest.raises(BrokerUnavailable):
            hubs[0].presence()
        broker.down = False
        b.expect(*[str(i) for i in range(10)])                          # nothing lost, in order
        wait_for(lambda: hubs[0].connected.is_set())
        assert hubs[0].flush(TIMEOUT)
        cluster.sync(a, b)
        assert hubs[0].stats["outages"] >= 1 and hubs[0].stats["dropped"] == 0

    def test_max_pending_drops_and_reports_a_gap(self, cluster, caplog):
        broker = MemoryBroker()
        gaps: dict = {"b": [], "c": []}
        a = cluster.hub(broker, max_pending=5)
        b = cluster.hub(broker, on_gap=lambda *gap: gaps["b"].append(gap))
        c = cluster.hub(broker, on_gap=lambda *gap: gaps["c"].append(gap))
        sa, sb, sc = (cluster.client(cluster.server(h), "g") for h in (a, b, c))
        a.publish("g", "0")                      # sequence number 1
        assert a.flush(TIMEOUT)                  # and nothing waits any more
        sa.expect("0")
        sb.expect("0")
        sc.expect("0")
        broker.down = True
        done: list = []
        results = [a.publish("g", str(i), on_done=lambda ok, i=i: done.append((i, ok))) for i in range(1, 9)]
        assert results == [True] * 5 + [False] * 3                       # 6..8 are sequence numbers 7..9
        assert done == [(6, False), (7, False), (8, False)]
        sa.expect(*[str(i) for i in range(1, 9)])                        # all of them locally
        broker.down = False
        assert a.flush(TIMEOUT)
        assert sorted(done) == [(i, i <= 5) for i in range(1, 9)]
        a.publish("g", "9")                      # sequence number 10: the others see 7..9 missing
        sa.expect("9")
        sb.expect("1", "2", "3", "4", "5", "9")
        sc.expect("1", "2", "3", "4", "5", "9")
        assert gaps == {"b": [(a.node_id, 7, 9)], "c": [(a.node_id, 7, 9)]}
        assert a.stats["dropped"] == 3 and b.stats["gaps"] == 1
        assert "lost entries 7..9 from node %s" % a.node_id in caplog.text
        cluster.sync(sa, sb, sc)

    def test_flush(self, cluster):
        broker = MemoryBroker()
        hubs, servers = cluster.nodes(2, broker)
        assert hubs[0].flush(0) is True          # nothing queued
        for i in range(100):
            hubs[0].publish("t", str(i))
        assert hubs[0].flush(TIMEOUT) is True
        broker.down = True
        hubs[0].publish("t", "waits")
        start = time.monotonic()
        assert hubs[0].flush(0.2) is False
        assert 0.2 <= time.monotonic() - start < 10  # bounded by its timeout, not by the outage
        broker.down = False
        assert hubs[0].flush(TIMEOUT) is True

    def test_on_done_may_use_the_hub(self, cluster):
        """on_done runs without the hub's lock: it may publish, and its exceptions are only logged."""
        broker = MemoryBroker()
        hubs, servers = cluster.nodes(2, broker, max_pending=1)
        c = cluster.client(servers[0], "t")
        seen: list = []

        def again(ok: bool) -> None:
            seen.append((ok, hubs[0].publish("t", "from on_done"), hubs[0].subscriptions(c.id)))

        def fails(ok: bool) -> None:
            raise RuntimeError("callback bug")

        def run() -> None:
            broker.down = True
            assert hubs[0].publish("t", "queued")
            assert hubs[0].publish("t", "dropped", on_done=again) is False
            assert hubs[0].publish("t", "dropped too", on_done=fails) is False
            assert hubs[0].send_to(c.id, "local only", on_done=again) is True
            broker.down = False

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "deadlock: on_done called with the hub's lock held"
        assert seen == [(False, False, {"t"}), (True, False, {"t"})]
        c.expect("queued", "dropped", "from on_done", "dropped too", "local only", "from on_done")


# -- the broker restarts and loses its data ------------------------------------------------------
class TestRestart:
    def test_unread_entries_are_replayed(self, cluster):
        shared = MemoryBroker()
        gate = GatedBroker(shared)
        a, b = cluster.hub(shared), cluster.hub(gate)
        sa, sb = cluster.client(cluster.server(a), "r"), cluster.client(cluster.server(b), "r")
        a.publish("r", "1")
        sb.expect("1")
        gate.hold()                              # b's reader stalls...
        for i in range(2, 6):
            a.publish("r", str(i))
        assert a.flush(TIMEOUT)                  # ...while the broker accepts 2..5
        shared.restart()                         # and loses them
        for i in range(6, 9):
            a.publish("r", str(i))
        assert a.flush(TIMEOUT)                  # accepted after the replay of 1..5
        assert a.stats["replays"] == 1
        gate.release()
        sb.expect(*[str(i) for i in range(2, 9)])
        sa.expect(*[str(i) for i in range(1, 9)])
        cluster.sync(sa, sb)
        assert b.stats["duplicates"] >= 1 and b.stats["gaps"] == 0

    def test_restart_during_a_stream(self, cluster):
        broker = MemoryBroker()
        hubs, servers = cluster.nodes(3, broker, heartbeat=0.2)
        subs = [cluster.client(s, "r") for s in servers]
        n = 3000
        accepted: list = []

        def publish() -> None:
            for i in range(n):
                hubs[0].publish("r", str(i), on_done=accepted.append)

        thread = threading.Thread(target=publish)
        thread.start()
        try:
            wait_for(lambda: len(accepted) >= n // 4)
            broker.restart()
        finally:
            thread.join(TIMEOUT)
        assert hubs[0].flush(TIMEOUT)
        assert len(accepted) == n and all(accepted)
        for sub in subs:
            sub.expect(*[str(i) for i in range(n)])
        cluster.sync(*subs)
        wait_for(lambda: hubs[0].stats["replays"] >= 1)   # at the next append or heartbeat
        assert hubs[1].stats["gaps"] == hubs[2].stats["gaps"] == 0

    def test_trimmed_log_reports_a_gap(self, cluster, caplog):
        shared = MemoryBroker(maxlen=10)
        gate = GatedBroker(shared)
        gaps: list = []
        a, b = cluster.hub(shared), cluster.hub(gate, on_gap=lambda *gap: gaps.append(gap))
        sa, sb = cluster.client(cluster.server(a), "t"), cluster.client(cluster.server(b), "t")
        a.publish("t", "0")                      # sequence number 1: b knows where a is
        sa.expect("0")
        sb.expect("0")
        gate.hold()
        for i in range(1, 31):                   # sequence numbers 2..31; the log keeps 22..31
            a.publish("t", str(i))
        assert a.flush(TIMEOUT)
        sa.expect(*[str(i) for i in range(1, 31)])
        gate.release()
        sb.expect(*[str(i) for i in range(21, 31)])
        assert gaps == [(a.node_id, 2, 21)]
        assert "lost entries 2..21 from node %s" % a.node_id in caplog.text
        cluster.sync(sa, sb)

    def test_ready_when_constructed(self, cluster):
        """Hub() returns once its reader knows where the log ends (bounded by ready_timeout)."""
        shared = MemoryBroker()
        a = cluster.hub(shared)
        assert a.ready.is_set()
        shared.down = True
        start = time.monotonic()
        b = cluster.hub(shared, ready_timeout=0.2)
        assert time.monotonic() - start < 4.5 and not b.ready.is_set()  # not the default 5 s
        shared.down = False
        wait_for(b.ready.is_set)
        sb = cluster.client(cluster.server(b), "t")
        a.publish("t", "after start")
        sb.expect("after start")

    def test_restarted_node_with_the_same_id(self, cluster):
        """A node that comes back with its fixed node_id starts its sequence again: not duplicates."""
        shared = MemoryBroker()
        b = cluster.hub(shared)
        sb = cluster.client(cluster.server(b), "t")
        first = cluster.hub(shared, node_id="fixed")
        for i in range(3):
            first.publish("t", "first %d" % i)
        sb.expect("first 0", "first 1", "first 2")
        first.close()
        second = cluster.hub(shared, node_id="fixed")
        second.publish("t", "second 0")
        sb.expect("second 0")
        assert b.stats["gaps"] == 0 and b.stats["duplicates"] == 0


# -- a client that does not read -------------------------------------------------------------------
class TestSlowClient:
    def test_frozen_subscriber_is_dropped_not_waited_for(self, cluster):
        broker = MemoryBroker()
        hub = cluster.hub(broker)
        cluster.hub(broker)
        server = cluster.server(hub, cls=Recorder, max_outbox=64 * 1024)
        frozen, frozen_id = frozen_client(cluster, server, "flood")
        normal = cluster.client(server, "flood", extensions=[])
        pad = "x" * 8000
        slowest = total = 0.0
        n = 0
        while frozen_id not in server.closed:
            assert n < 4000, "the frozen client was never dropped (32 MB sent)"
            for _ in range(4):           # 32 kB at a time: the normal client keeps its outbox small
                start = time.monotonic()
                hub.publish("flood", "%06d%s" % (n, pad))
                took = time.monotonic() - start
                slowest, total = max(slowest, took), total + took
                n += 1
            for i in range(n - 4, n):
                assert normal.recv().payload == "%06d%s" % (i, pad)
        assert server.closed[frozen_id] == (1013, "outbound queue overflow")
        assert slowest < 1.0 and total < 3.0, (slowest, total, n)
        hub.publish("flood", "still here")
        normal.expect("still here")
        assert hub.presence("flood") == {normal.id}
        cluster.sync(normal)


# -- the JSON protocol -----------------------------------------------------------------------------
class Restricted(TopicBroadcast):
    def authorize_subscribe(self, client: Any, topic_filter: str) -> bool:
        return not topic_filter.startswith("private/")

    def authorize_publish(self, client: Any, topic: Any) -> bool:
        return topic is not None and not topic.startswith("ro/")


class TestTopicBroadcast:
    def test_set_conn_id_on_open(self, cluster):
        hubs, servers = cluster.nodes(2)
        c = Client(servers[1], hello=False)
        cluster.clients.append(c)
        hello = c.recv_json()
        assert hello == {"type": "set_conn_id", "conn_id": hello["conn_id"]}
        assert hello["conn_id"].startswith(hubs[1].node_id + ".")
        assert server_side(servers[1], hello["conn_id"])

    def test_requests_across_nodes(self, cluster):
        hubs, servers = cluster.nodes(3)
        a, b, c = (cluster.client(s) for s in servers)
        a.send_json(type="subscribe", topic="room/+", id=1)
        assert a.recv_json() == {"type": "ack", "id": 1}
        c.send_json(type="subscribe", topic="room/#")
        assert c.recv_json() == {"type": "ack"}
        assert hubs[2].subscriptions(c.id) == {"room/#"}

        b.send_json(type="publish", topic="room/1", data={"n": [1, "✓"]}, id="p1")
        assert b.recv_json() == {"type": "ack", "id": "p1"}
        message = {"type": "message", "topic": "room/1", "data": {"n": [1, "✓"]}, "from": b.id}
        assert a.recv_json() == message and c.recv_json() == message

        a.send_json(type="broadcast", data="hi all", id=2)
        message = {"type": "message", "data": "hi all", "from": a.id}
        assert a.recv_json() == message          # delivered here at once...
        assert a.recv_json() == {"type": "ack", "id": 2}   # ...acknowledged once the broker has it
        assert b.recv_json() == message and c.recv_json() == message

        c.send_json(type="send_by_conn_id", conn_id=a.id, data=None, id=3)
        assert c.recv_json() == {"type": "ack", "id": 3}
        assert a.recv_json() == {"type": "message", "data": None, "from": c.id}
        c.send_json(type="send_by_conn_id", conn_ids=[a.id, b.id, c.id], data=[1], id=4)
        message = {"type": "message", "data": [1], "from": c.id}
        assert c.recv_json() == message
        assert c.recv_json() == {"type": "ack", "id": 4}
        assert a.recv_json() == message and b.recv_json() == message

        a.send_json(type="unsubscribe", topic="room/+", id=5)
        assert a.recv_json() == {"type": "ack", "id": 5}
        b.send_json(type="publish", topic="room/2", data=2, id=6)
        assert b.recv_json() == {"type": "ack", "id": 6}
        assert c.recv_json() == {"type": "message", "topic": "room/2", "data": 2, "from": b.id}
        c.send_json(type="unsubscribe", id=7)     # every subscription
        assert c.recv_json() == {"type": "ack", "id": 7}
        assert hubs[2].subscriptions(c.id) == set()
        b.send_json(type="publish", topic="room/3", data=3)
        assert b.recv_json() == {"type": "ack"}
        cluster.sync(a, b, c)

    def test_errors_and_pass_through(self, cluster):
        broker = MemoryBroker()
        hub = cluster.hub(broker)
        cluster.hub(broker)
        server = cluster.server(hub, cls=Recorder)
        c = cluster.client(server)
        bad = [
            ({"type": "subscribe"}, "subscribe needs a topic"),
            ({"type": "subscribe", "topic": 5}, "subscribe needs a topic"),
            ({"type": "subscribe", "topic": "a/#/b"}, "isn't a valid topic"),
            ({"type": "unsubscribe", "topic": ["a"]}, "topic must be a string"),
            ({"type": "publish", "data": 1}, "publish needs a topic"),
            ({"type": "publish", "topic": "a/+", "data": 1}, "isn't a valid topic"),
            ({"type": "publish", "topic": "a"}, "publish needs data"),
            ({"type": "nope", "data": 1}, "unknown type 'nope'"),
            ({"type": "nope"}, "unknown type 'nope'"),
            ({"type": "send_by_conn_id", "data": 1}, "needs conn_id or conn_ids"),
            ({"type": "send_by_conn_id", "conn_ids": [], "data": 1}, "needs conn_id or conn_ids"),
            ({"type": "send_by_conn_id", "conn_ids": [1], "data": 1}, "needs conn_id or conn_ids"),
            ({"type": "send_by_conn_id", "conn_ids": 5, "data": 1}, "needs conn_id or conn_ids"),
        ]
        for n, (request, error) in enumerate(bad):
            c.send_json(id=n, **request)
            reply = c.recv_json()
            assert reply["type"] == "error" and reply["id"] == n and error in reply["error"], (request, reply)
        c.send_json(type="nope")                 # no id: none in the reply
        assert c.recv_json() == {"type": "error", "error": "unknown type 'nope'"}
        assert hub.subscriptions(c.id) == set() and hub.stats["published"] == 0
        # Not requests: on to the next filter, here the server's onmessage.
        for message in ("hello", "[1, 2]", '{"no": "type"}', "{bad json", b"\x01\x02"):
            c.conn.send(message)
            assert c.recv().payload == "server got %r" % (message,)
        assert [m.payload for _, m in server.messages] == ["hello", "[1, 2]", '{"no": "type"}', "{bad json",
                                                           b"\x01\x02"]
        c.send_json(type="subscribe", topic="ok", id="still works")
        assert c.recv_json() == {"type": "ack", "id": "still works"}

    def test_pass_unknown(self, cluster):
        """TopicBroadcast(pass_unknown=True): an application's own {"type": ...} goes on."""
        hub = cluster.hub(MemoryBroker())
        server = cluster.server(hub, cls=Recorder, filters=[AutoSubscribe(), TopicBroadcast(pass_unknown=True)])
        c = cluster.client(server)
        c.send_json(type="chat", text="hi")
        assert c.recv().payload == "server got %r" % ('{"type": "chat", "text": "hi"}',)
        c.send_json(type="subscribe", topic="ok", id=1)  # the protocol's own types still work
        assert c.recv_json() == {"type": "ack", "id": 1}

    def test_authorize(self, cluster):
        broker = MemoryBroker()
        strict = cluster.hub(broker)
        other = cluster.hub(broker)
        c = cluster.client(cluster.server(strict, filters=[Restricted()]))
        watcher = cluster.client(cluster.server(other), "#")
        for n, request in enumerate([{"type": "subscribe", "topic": "private/x"},
                                     {"type": "publish", "topic": "ro/x", "data": 1},
                                     {"type": "broadcast", "data": 1},
                                     {"type": "send_by_conn_id", "conn_id": watcher.id, "data": 1}]):
            c.send_json(id=n, **request)
            reply = c.recv_json()
            assert reply["type"] == "error" and reply["id"] == n and "not allowed" in reply["error"]
        c.send_json(type="subscribe", topic="public/x", id="s")
        assert c.recv_json() == {"type": "ack", "id": "s"}
        c.send_json(type="publish", topic="rw/x", data="fine", id="p")
        assert c.recv_json() == {"type": "ack", "id": "p"}
        assert watcher.recv_json() == {"type": "message", "topic": "rw/x", "data": "fine", "from": c.id}
        assert strict.subscriptions(c.id) == {"public/x"}
        cluster.sync(c, watcher)

    def test_echo_false_excludes_the_sender(self, cluster):
        hubs, servers = cluster.nodes(2)
        a, b = cluster.client(servers[0], "e"), cluster.client(servers[1], "e")
        a.send_json(type="publish", topic="e", data=1, echo=False, id=1)
        assert a.recv_json() == {"type": "ack", "id": 1}
        a.send_json(type="publish", topic="e", data=2, id=2)
        assert a.recv_json() == {"type": "message", "topic": "e", "data": 2, "from": a.id}
        assert a.recv_json() == {"type": "ack", "id": 2}
        assert [b.recv_json()["data"] for _ in range(2)] == [1, 2]
        b.send_json(type="publish", topic="e", data=3, echo=False)
        assert b.recv_json() == {"type": "ack"}
        assert a.recv_json()["data"] == 3
        cluster.sync(a, b)

    def test_outage_error_instead_of_ack(self, cluster):
        broker = MemoryBroker()
        hubs, servers = cluster.nodes(2, broker, max_pending=2)
        p, q = cluster.client(servers[0], "o"), cluster.client(servers[1], "o")
        broker.down = True
        for n in (1, 2, 3):
            p.send_json(type="publish", topic="o", data=n, id=n)
        got = [p.recv_json() for _ in range(4)]
        assert [m.get("data") for m in got[:3]] == [1, 2, 3]
        assert got[3] == {"type": "error", "id": 3, "error": "broker unavailable: delivered on this server only"}
        broker.down = False
        assert [p.recv_json() for _ in range(2)] == [{"type": "ack", "id": 1}, {"type": "ack", "id": 2}]
        assert [q.recv_json()["data"] for _ in range(2)] == [1, 2]
        cluster.sync(p, q)


# -- errors, attach, a server without a hub --------------------------------------------------------
class TestHubErrors:
    def test_bad_arguments(self, cluster):
        with pytest.raises(HubError):
            Hub("nope://x")
        for bad in ("a.b", "a,b"):
            with pytest.raises(ValueError):
                Hub(node_id=bad)

    def test_subscribe_needs_an_open_client(self, cluster):
        hubs, servers = cluster.nodes(2)
        c = cluster.client(servers[0])
        obj = server_side(servers[0], c.id)
        for method in (hubs[0].subscribe, hubs[0].unsubscribe):
            with pytest.raises(KeyError):
                method("nobody.1", "t")
        with pytest.raises(KeyError):
            hubs[1].subscribe(c.id, "t")          # open, but on another node
        with pytest.raises(KeyError):
            hubs[0].subscriptions("nobody.1")
        c.close()
        wait_for(lambda: c.id not in hubs[0].presence())
        with pytest.raises(KeyError):
            hubs[0].subscribe(obj, "t")
        with pytest.raises(KeyError):
            hubs[0].subscribe(c.id, "t")

    def test_unreachable_redis(self, cluster):
        start = time.monotonic()
        hub = cluster.hub("redis://127.0.0.1:1/0", ready_timeout=0.2)
        assert time.monotonic() - start < 4.5 and not hub.ready.is_set()  # not the default 5 s
        assert hub.broker.url == "redis://127.0.0.1:1/0"
        wait_for(lambda hub=hub: hub.stats["outages"] >= 1)
        assert not hub.connected.is_set()
        with pytest.raises(BrokerUnavailable):
            hub.presence()
        assert hub.flush(0.1) is True            # nothing queued
        start = time.monotonic()
        hub.close()
        assert time.monotonic() - start < 4.5

    def test_close_is_prompt_and_idempotent(self, cluster):
        broker = MemoryBroker()
        # Each reader would wait 30 s for entries: only wake() ends them promptly.
        broker.read = lambda cursor, timeout: MemoryBroker.read(broker, cursor, 30.0)
        hubs = [cluster.hub(broker) for _ in range(3)]
        for hub in hubs:
            wait_for(hub.connected.is_set)
        start = time.monotonic()
        for hub in hubs:
            hub.close()
            hub.close()
        assert time.monotonic() - start < 15      # the readers are woken, not left to time out
        assert hubs[0].publish("t", "after close") is False


class TestAttach:
    def test_attach_twice_and_two_servers_on_one_hub(self, cluster):
        broker = MemoryBroker()
        hub = cluster.hub(broker)
        cluster.hub(broker)                      # a witness, for sync
        s1, s2 = cluster.server(hub), cluster.server(hub)
        filters = list(s1.filters)
        hub.attach(s1)
        hub.attach(s1)
        assert s1.filters == filters and hub.servers == [s1, s2]
        c1, c2 = cluster.client(s1, "t"), cluster.client(s2, "t")
        assert c1.id.startswith(hub.node_id + ".") and c2.id.startswith(hub.node_id + ".")
        hub.publish("t", "both")
        c1.expect("both")
        c2.expect("both")
        hub.send_to([c1.id, c2.id], b"direct")
        hub.broadcast("not c1", exclude=c1.id)
        c1.expect(b"direct")
        c2.expect(b"direct", "not c1")
        c1.send_json(type="send_by_conn_id", conn_id=c2.id, data="json", id=1)
        assert c1.recv_json() == {"type": "ack", "id": 1}
        assert c2.recv_json() == {"type": "message", "data": "json", "from": c1.id}
        cluster.sync(c1, c2)
        assert hub.presence() == {c1.id, c2.id}
        hub.disconnect(c2.id, 4002, "other server")
        with pytest.raises(ConnectionClosed) as caught:
            c2.recv()
        assert caught.value.code == 4002

    def test_broadcast_filter_through_the_hub(self, cluster):
        broker = MemoryBroker()
        hubs = [cluster.hub(broker) for _ in range(2)]
        servers = [cluster.server(h, filters=[TopicBroadcast(), Broadcast()]) for h in hubs]
        a, b = cluster.client(servers[0]), cluster.client(servers[1])
        a.conn.send("to everyone")
        a.expect("to everyone")
        b.expect("to everyone")
        cluster.sync(a, b)

    def test_broadcast_filter_without_a_hub(self, cluster):
        server = cluster.server(filters=[Broadcast()])
        assert server.hub is None
        clients = [cluster.client(server, hello=False) for _ in range(3)]
        wait_for(lambda: len(server.clients) == 3)
        clients[0].conn.send("hi")
        clients[1].conn.send(b"\x00")
        for c in clients:
            got = [c.recv() for _ in range(2)]
            assert sorted(got, key=lambda m: m.opcode) == [TextMessage("hi"), BinaryMessage(b"\x00")]



def test_unreachable_broker_does_not_hold_up_the_constructor():
    """Refused at once: the constructor returns after the first attempt, not after ready_timeout."""
    from twspy.hub import Hub
    started = time.monotonic()
    hub = Hub("redis://127.0.0.1:1/0", ready_timeout=30)
    try:
        assert time.monotonic() - started < 10
        assert not hub.ready.is_set()
    finally:
        hub.close(timeout=1)


def test_disconnect_rejects_codes_that_cannot_be_sent():
    from twspy.hub import Hub
    with Hub() as hub:
        for code, reason in ((1005, ""), (1006, ""), (999, ""), (1000, "x" * 124)):
            with pytest.raises(ValueError):
                hub.disconnect("elsewhere.1", code, reason)


def test_missing_redis_package_says_how_to_install_it(monkeypatch):
    from twspy.hub import Hub, HubError
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    with pytest.raises(HubError, match=r"pip install 'twspy\[redis\]'"):
        Hub("redis://127.0.0.1:6379/0")


def test_a_gap_at_the_end_is_reported_by_the_heartbeat(cluster):
    """Entries dropped during an outage after which their node stays quiet: the heartbeat's
    marker ("everything up to n is settled") reports them; no later entry is needed."""
    broker = MemoryBroker()
    gaps: list = []
    a = cluster.hub(broker, max_pending=2, heartbeat=0.1)
    b = cluster.hub(broker, on_gap=lambda *gap: gaps.append(gap))
    sa, sb = cluster.client(cluster.server(a), "g"), cluster.client(cluster.server(b), "g")
    a.publish("g", "0")
    assert a.flush(TIMEOUT)
    sb.expect("0")
    broker.down = True
    assert [a.publish("g", str(i)) for i in range(1, 5)] == [True, True, False, False]  # 4, 5 dropped
    broker.down = False
    assert a.flush(TIMEOUT)
    sb.expect("1", "2")
    wait_for(lambda: gaps == [(a.node_id, 4, 5)], timeout=TIMEOUT)
    sa.expect("0", "1", "2", "3", "4")


def test_replay_after_a_restart_does_not_wait_for_the_heartbeat(cluster):
    """A node's reader sees the new log and has its writer replay at once (heartbeat is 30 s)."""
    broker = MemoryBroker()
    a = cluster.hub(broker, heartbeat=30)
    b = cluster.hub(broker, heartbeat=30)
    sb = cluster.client(cluster.server(b), "t")
    cluster.client(cluster.server(a))
    for i in range(3):
        a.publish("t", str(i))
    assert a.flush(TIMEOUT)
    sb.expect("0", "1", "2")
    broker.restart()
    wait_for(lambda: a.stats["replays"] >= 1, timeout=5)
    a.publish("t", "after")
    sb.expect("after")  # the replayed 0..2 were dropped as duplicates
    wait_for(lambda: b.stats["duplicates"] >= 3, timeout=5)


# -- hostile clients (issue 18 items 1, 2, 5; issue 20 items 4, 8, 9) ------------------------------
class Traced:
    """Bytes allocated (and still held) by the whole process between start and ``grown()``."""

    def __enter__(self) -> Traced:
        tracemalloc.start()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def grown(self) -> int:
        return tracemalloc.get_traced_memory()[0] - self.base

    def __exit__(self, *exc: Any) -> None:
        tracemalloc.stop()


def request_errors(client: Client, requests: list[dict]) -> list[str]:
    """Send each request (with an id) and return the error texts; fails on an ack."""
    errors = []
    for n, request in enumerate(requests):
        client.send_json(id=n, **request)
        reply = client.recv_json()
        assert reply["type"] == "error" and reply["id"] == n, (request, reply)
        errors.append(reply["error"])
    return errors


class TestHostileClient:
    def test_deep_filters_cost_no_memory(self, cluster):
        """The amplification attack: "kN" + 65,000 slashes made a node per level (1.2 GB for 40)."""
        hub = cluster.hub()
        c = cluster.client(cluster.server(hub))
        with Traced() as traced:
            errors = request_errors(c, [{"type": "subscribe", "topic": "k%d" % n + "/" * 20000} for n in range(10)])
            grown = traced.grown()
        assert all("longer than 1024 bytes" in e for e in errors)
        assert grown < 1 << 20, grown
        assert hub.topic_nodes == 0

    def test_one_client_at_every_limit_holds_a_few_mb_and_frees_them(self, cluster):
        hub = cluster.hub()
        server = cluster.server(hub)
        c = cluster.client(server)
        # The costliest filters: 32 levels, 1,024 bytes, none sharing a node with another.
        filters = ["/".join("%02d%04d" % (j, i) + "x" * 26 for j in range(32))[:1024] for i in range(260)]
        assert all(len(f) == 1024 and f.count("/") == 31 for f in filters)
        with Traced() as traced:
            for n, topic_filter in enumerate(filters):
                c.send_json(type="subscribe", topic=topic_filter, id=n)
            replies = [c.recv_json() for _ in filters]
            held = traced.grown()
            assert [r["type"] for r in replies] == ["ack"] * 256 + ["error"] * 4
            assert "256 subscriptions already" in replies[-1]["error"]
            assert hub.topic_nodes == 256 * 32
            c.close()
            wait_for(lambda: hub.topic_nodes == 0)
            left = traced.grown()
        assert held < 5 << 20, held           # measured: about 3.4 MB
        assert left < 256 << 10, left

    def test_the_node_budget_is_per_hub_and_comes_back(self, cluster):
        hub = cluster.hub(max_topic_nodes=40)
        server = cluster.server(hub)
        a, b = cluster.client(server), cluster.client(server)
        for n in range(4):
            a.send_json(type="subscribe", topic="a%d/x/y/z/w/v/u/t/s/r" % n, id=n)
            assert a.recv_json() == {"type": "ack", "id": n}
        assert hub.topic_nodes == 40
        assert "no room" in request_errors(b, [{"type": "subscribe", "topic": "b/c"}])[0]
        b.send_json(type="subscribe", topic="a0/x", id="shared")   # no new node: fine
        assert b.recv_json() == {"type": "ack", "id": "shared"}
        with pytest.raises(SubscriptionLimit):
            hub.subscribe(b.id, "elsewhere")
        a.send_json(type="unsubscribe", id="u")
        assert a.recv_json() == {"type": "ack", "id": "u"}
        assert hub.topic_nodes == 2
        b.send_json(type="subscribe", topic="b/c", id="again")
        assert b.recv_json() == {"type": "ack", "id": "again"}

    def test_topic_limits_on_every_request(self, cluster):
        hub = cluster.hub()
        c = cluster.client(cluster.server(hub))
        deep, long = "a/" * 32 + "a", "a" * 1025
        errors = request_errors(c, [
            {"type": "subscribe", "topic": deep}, {"type": "subscribe", "topic": long},
            {"type": "subscribe", "topic": "é" * 513},            # 1,026 bytes of UTF-8
            {"type": "publish", "topic": deep, "data": 1}, {"type": "publish", "topic": long, "data": 1},
            {"type": "subscribe", "topic": "x\nsecret/room"},    # issue 20 item 8
            {"type": "publish", "topic": "a\x7f", "data": 1},
        ])
        assert ["33 levels" in errors[0], "1024" in errors[1], "1026 bytes" in errors[2], "33 levels" in errors[3],
                "1024" in errors[4], "U+000A" in errors[5], "U+007F" in errors[6]] == [True] * 7
        with pytest.raises(InvalidTopic):
            hub.subscribe(c.id, deep)
        with pytest.raises(InvalidTopic):
            hub.publish(deep, "m")
        with pytest.raises(InvalidTopic):
            hub.presence(long)
        c.send_json(type="subscribe", topic="a/" * 31 + "#", id="ok")    # 32 levels: allowed
        assert c.recv_json() == {"type": "ack", "id": "ok"}

    def test_deep_json_is_an_error_reply_not_a_traceback(self, cluster, caplog):
        hub = cluster.hub()
        c = cluster.client(cluster.server(hub), max_size=4 << 20)
        deep_data = '{"type": "publish", "topic": "t", "id": 1, "data": %s}' % ("[" * 5000 + "]" * 5000)
        # 5,000 levels are refused by json (RecursionError) or, when another test raised the
        # recursion limit, by max_depth: either way an error reply naming the nesting.
        for text, error in ((deep_data, "nested "), ("[" * 200_000, "nested too deeply"),
                            ('{"type": "publish", "topic": "t", "id": 2, "data": %s}' % ("[" * 33 + "]" * 33),
                             "nested more than 32 deep"),
                            ('{"type": "broadcast", "data": {"a": %s}}' % ("[" * 40 + "]" * 40),
                             "nested more than 32 deep")):
            c.conn.send(text)
            reply = c.recv_json()
            assert reply["type"] == "error" and error in reply["error"], reply
        c.send_json(type="publish", topic="t", data=json.loads("[" * 31 + "]" * 31), id="fine")
        assert c.recv_json() == {"type": "ack", "id": "fine"}
        assert not [r for r in caplog.records if r.levelno >= 40]

    def test_dollar_topics_are_refused_to_clients_by_default(self, cluster):
        hub = cluster.hub()
        c = cluster.client(cluster.server(hub))
        errors = request_errors(c, [{"type": "subscribe", "topic": "$SYS/#"},
                                    {"type": "publish", "topic": "$SYS/broker/load", "data": 1},
                                    {"type": "subscribe", "topic": "$x"}])
        assert all("topics starting with $" in e for e in errors)
        c.send_json(type="subscribe", topic="#", id="all")   # "#" never matches $ topics (§4.7.2)
        assert c.recv_json() == {"type": "ack", "id": "all"}
        hub.publish("$SYS/broker/load", "server only")
        hub.publish("t", "everyone")
        c.expect("everyone")
        admin = cluster.client(cluster.server(hub, filters=[TopicBroadcast(system_topics=True)]))
        admin.send_json(type="subscribe", topic="$SYS/#", id=1)
        assert admin.recv_json() == {"type": "ack", "id": 1}
        hub.publish("$SYS/broker/load", "admins")
        admin.expect("admins")

    def test_conn_ids_are_capped_and_authorize_send_decides(self, cluster):
        class Neighbours(TopicBroadcast):
            def authorize_send(self, client: Any, conn_ids: list[str]) -> bool:
                return all(i.startswith(client.server.node_id + ".") for i in conn_ids)

        broker = MemoryBroker()
        hubs = [cluster.hub(broker), cluster.hub(broker)]
        server = cluster.server(hubs[0], filters=[Neighbours(max_conn_ids=3)])
        a, b = cluster.client(server), cluster.client(server)
        far = cluster.client(cluster.server(hubs[1]))
        errors = request_errors(a, [{"type": "send_by_conn_id", "conn_ids": [b.id] * 4, "data": 1},
                                    {"type": "send_by_conn_id", "conn_ids": [b.id, far.id], "data": 1}])
        assert "4 conn_ids, more than 3" in errors[0] and "not allowed to send" in errors[1]
        a.send_json(type="send_by_conn_id", conn_ids=[b.id] * 3, data="hi", id="ok")
        assert a.recv_json() == {"type": "ack", "id": "ok"}
        assert b.recv_json() == {"type": "message", "data": "hi", "from": a.id}
        assert len(request_errors(b, [{"type": "send_by_conn_id", "conn_id": "x" * 100, "data": 1}
                                      for _ in range(101)])) == 101  # the default cap is 100 ids
        cluster.sync(a, b, far)

    def test_default_max_conn_ids(self, cluster):
        hub = cluster.hub()
        c = cluster.client(cluster.server(hub))
        ids = ["%s.%d.%016x" % (hub.node_id, n, n) for n in range(101)]
        assert "101 conn_ids, more than 100" in request_errors(
            c, [{"type": "send_by_conn_id", "conn_ids": ids, "data": 1}])[0]
        c.send_json(type="send_by_conn_id", conn_ids=ids[:100], data=1, id="ok")  # unknown ids: ignored
        assert c.recv_json() == {"type": "ack", "id": "ok"}

    def test_a_publish_is_capped_by_max_size(self, cluster):
        hub = cluster.hub(max_size=1000)
        c = cluster.client(cluster.server(hub), "t")
        for call in (lambda: hub.publish("t", "x" * 1001), lambda: hub.broadcast(b"x" * 1001),
                     lambda: hub.send_to(c.id, "é" * 501)):
            with pytest.raises(PayloadTooBig):
                call()
        error = request_errors(c, [{"type": "publish", "topic": "t", "data": "x" * 1000}])[0]
        assert "over the hub's max_size (1000)" in error
        hub.publish("t", "x" * 1000)
        c.expect("x" * 1000)

    def test_a_single_node_hub_keeps_no_log(self, cluster):
        """Hub() alone: 30 publishes of 1 MB to nobody used to stay in memory (+30 MB)."""
        hub = cluster.hub()
        c = cluster.client(cluster.server(hub), "t")
        payload = "x" * (1 << 20)
        with Traced() as traced:
            done: list[bool] = []
            for _ in range(30):
                assert hub.publish("nobody", payload, on_done=done.append) is True
            hub.publish("t", "last")
            c.expect("last")
            grown = traced.grown()
        assert done == [True] * 30 and hub.flush(0) and hub.broker.tail() == "0"
        assert grown < 1 << 20, grown

    def test_the_log_and_the_replay_queue_are_bounded_by_bytes(self, cluster):
        broker = MemoryBroker(max_bytes=2 << 20)
        a = cluster.hub(broker, replay_size=1 << 20)
        cluster.hub(broker)                     # a reader of the log, and the witness for sync
        payload = "x" * (256 << 10)  # text: each publish encodes its own 256 KB
        with Traced() as traced:
            for _ in range(40):     # 10 MB
                a.publish("nobody", payload)
            assert a.flush(TIMEOUT)
            cluster.sync(cluster.client(cluster.server(a)))
            grown = traced.grown()
        assert grown < 5 << 20, grown         # 2 MB of log, 1 MB to replay, and some slack
        big = [len(e["d"]) for _, e in broker.read("0", 0) if len(e.get("d", b"")) == 256 << 10]
        assert 6 <= len(big) <= 7 and sum(big) <= 2 << 20   # the oldest went (heartbeats may follow)

    def test_pending_entries_are_bounded_by_bytes(self, cluster):
        broker = MemoryBroker()
        hub = cluster.hub(broker, max_pending_size=1 << 20)
        cluster.hub(broker)
        broker.down = True
        done: list[bool] = []
        results = [hub.publish("t", b"x" * (300 << 10), on_done=done.append) for _ in range(4)]
        assert results == [True, True, True, False] and done == [False]
        broker.down = False
        assert hub.flush(TIMEOUT) and done == [False, True, True, True]

    def test_a_publisher_faster_than_the_broker_waits_for_room(self, cluster):
        """With the broker up, a burst over max_pending_size slows down instead of losing."""
        slow = SlowAppend(MemoryBroker())
        hub = cluster.hub(slow, max_pending_size=1 << 20)
        wait_for(hub.connected.is_set)
        results: list[bool] = []
        publisher = threading.Thread(target=lambda: results.extend(
            hub.publish("t", b"x" * (300 << 10)) for _ in range(8)))
        publisher.start()
        assert slow.entered.wait(TIMEOUT)       # the writer holds the first batch in append()
        wait_for(lambda: hub.stats["published"] >= 3)
        slow.go.set()
        publisher.join(TIMEOUT)
        assert not publisher.is_alive() and results == [True] * 8 and hub.stats["dropped"] == 0
        assert hub.flush(TIMEOUT)

    def test_presence_is_sent_by_client_not_rebuilt(self, cluster):
        """Each subscribe used to send every client's presence again (20,000 cost 23 s of CPU)."""
        counting = CountingBroker(MemoryBroker())
        hub = cluster.hub(counting, heartbeat=30, presence_ttl=60)
        server = cluster.server(hub)
        clients = [cluster.client(server) for _ in range(20)]
        node = hub.node_id
        wait_for(lambda: set(counting.presence().get(node, {})) == {c.id for c in clients})
        counting.fields = 0
        for c in clients:
            for j in range(3):
                hub.subscribe(c.id, "t/%d" % j)
                wait_for(lambda j=j, c=c: "t/%d" % j in counting.presence()[node][c.id])
        assert counting.fields <= 60 + 20, counting.fields   # before: 20 fields for each of 60
        clients[0].close()
        wait_for(lambda: clients[0].id not in counting.presence()[node])
        assert set(counting.presence()[node]) == {c.id for c in clients[1:]}


class CountingBroker(GatedBroker):
    """A shared MemoryBroker that counts the client fields of presence written to it."""

    def __init__(self, shared: MemoryBroker) -> None:
        super().__init__(shared)
        self.fields = 0

    def set_presence(self, node: str, clients: Any, ttl: float) -> None:
        self.fields += len(clients)
        self.shared.set_presence(node, clients, ttl)

    def update_presence(self, node: str, changes: Any, ttl: float) -> bool:
        self.fields += len(changes)
        return self.shared.update_presence(node, changes, ttl)


class SlowAppend(GatedBroker):
    """A shared MemoryBroker whose appends wait for ``go`` (a broker slower than its publisher)."""

    def __init__(self, shared: MemoryBroker) -> None:
        super().__init__(shared)
        self.entered = threading.Event()
        self.go = threading.Event()

    def append(self, entries: Any, generation: str) -> bool:
        self.entered.set()
        self.go.wait(3 * TIMEOUT)
        return self.shared.append(entries, generation)
