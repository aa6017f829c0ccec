"""twspy/hub.py edges beside test_hub.py: a log holding entries the hub cannot read (a node of
another version, a corrupted write) does not stop its reader, and what the broker never accepted
is reported failed when the hub closes."""

from __future__ import annotations

import json
import logging
import threading

import twspy
from twspy.broker import MemoryBroker
from twspy.hub import Hub, TopicBroadcast

from conftest import url

TIMEOUT = 5


def test_unreadable_entries_are_logged_and_the_reader_goes_on(caplog):
    broker = MemoryBroker()
    reader, sender = Hub(broker), Hub(broker)
    server = twspy.Server(("127.0.0.1", 0), hub=reader)
    thread = server.serve_in_thread()
    try:
        with caplog.at_level(logging.WARNING, logger="twspy.hub"):
            with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
                generation = broker.generation()
                assert broker.append([
                    {"o": b"ghost", "k": b"b", "d": b"no sequence number"},  # KeyError inside the reader
                    {"o": b"ghost", "s": b"1", "k": b"?", "d": b"a kind from the future"},
                ], generation)
                assert sender.broadcast("after")  # appended after them: read after them
                assert conn.recv(TIMEOUT) == twspy.TextMessage("after")
        messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "twspy.hub"]
        assert any(level == "ERROR" and "cannot handle entry" in text for level, text in messages), messages
        assert any(level == "WARNING" and "unknown entry kind b'?' from ghost" in text for level, text in messages)
        assert reader.stats["received"] >= 2  # the unknown kind was counted, then "after"
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        reader.close(timeout=1.0)
        sender.close(timeout=1.0)


def test_close_fails_what_the_broker_never_accepted(caplog):
    broker = MemoryBroker()
    hub = Hub(broker)
    assert hub.connected.wait(TIMEOUT)
    broker.down = True  # an outage: nothing more is accepted
    results = []
    done = threading.Event()

    def on_done(accepted):
        results.append(accepted)
        done.set()

    with caplog.at_level(logging.WARNING, logger="twspy.hub"):
        assert hub.broadcast("lost", on_done=on_done) is True  # queued: the broker may come back
        hub.close(timeout=0.2)
    assert done.wait(TIMEOUT) and results == [False]
    assert any("closed with 1 entries the broker never accepted" in r.getMessage() for r in caplog.records)
    broker.down = False
    assert broker.read("0", 0) == []  # it never reached the log


def test_topic_protocol_without_a_hub(serve):
    # TopicBroadcast needs a hub: each request gets an error reply (with its id), and the
    # connection stays usable.
    server = serve(twspy.Server, filters=[TopicBroadcast()])
    with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
        hello = json.loads(conn.recv(TIMEOUT).payload)
        assert hello["type"] == "set_conn_id"
        conn.send(json.dumps({"type": "publish", "topic": "a", "data": 1, "id": 7}))
        assert json.loads(conn.recv(TIMEOUT).payload) == {"type": "error", "id": 7,
                                                          "error": "this server has no hub"}
        conn.send(json.dumps({"type": "subscribe", "topic": "a"}))  # any request: the hub is checked first
        assert json.loads(conn.recv(TIMEOUT).payload) == {"type": "error", "error": "this server has no hub"}
    assert conn.close_code == 1000


def test_unknown_types_with_a_hub(serve):
    with Hub() as hub:
        server = serve(twspy.Server, hub=hub, filters=[TopicBroadcast()])
        with twspy.connect(url(server), handshake_timeout=TIMEOUT) as conn:
            conn.recv(TIMEOUT)  # set_conn_id
            conn.send(json.dumps({"type": "teleport", "id": "x"}))
            assert json.loads(conn.recv(TIMEOUT).payload) == {"type": "error", "id": "x",
                                                              "error": "unknown type 'teleport'"}
            conn.send(json.dumps({"type": ["publish"], "id": 1}))  # not even a string
            assert json.loads(conn.recv(TIMEOUT).payload) == {"type": "error", "id": 1,
                                                              "error": "unknown type ['publish']"}
            conn.send(json.dumps({"type": "subscribe", "topic": "t", "id": 2}))
            assert json.loads(conn.recv(TIMEOUT).payload) == {"type": "ack", "id": 2}
