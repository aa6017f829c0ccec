"""``python -m twspy echo --asyncio`` and ``serve --asyncio`` (filters, hub), ``--max-connections`` on both layers."""

from __future__ import annotations

import json
import os
import signal

import pytest

import twspy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_echo_asyncio(twspy_process):
    proc, port = twspy_process("echo", "--asyncio", "--max-size", "2M")
    with twspy.connect("ws://127.0.0.1:%d/" % port, max_size=4 << 20) as conn:
        assert [c.name for c in conn.sock.extensions] == ["permessage-deflate"]
        conn.send("text")
        assert conn.recv(5) == twspy.TextMessage("text")
        conn.send(b"\x00" * ((2 << 20) + 1))
        with pytest.raises(twspy.ConnectionClosed) as info:
            conn.recv(5)
        assert info.value.code == 1009
    with twspy.connect("ws://127.0.0.1:%d/" % port) as conn:
        proc.send_signal(signal.SIGTERM)  # closes every client with 1001, then exits 0
        with pytest.raises(twspy.ConnectionClosed) as info:
            conn.recv(5)
        assert info.value.code == 1001
    assert proc.wait(10) == 0


@pytest.mark.parametrize("layer", [[], ["--asyncio"]])
def test_max_connections_on_both_layers(twspy_process, layer):
    proc, port = twspy_process("echo", "--max-connections", "1", *layer)
    with twspy.connect("ws://127.0.0.1:%d/" % port) as conn:
        conn.send("x")
        assert conn.recv(5).payload == "x"  # served: the server counts it now
        with pytest.raises(twspy.HandshakeError) as info:
            twspy.connect("ws://127.0.0.1:%d/" % port, handshake_timeout=5)
        assert info.value.status == 503
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_serve_asyncio_runs_the_filters(twspy_process):
    proc, port = twspy_process("serve", "--asyncio", "--token", "s3cret", "-f", "broadcast")
    with pytest.raises(twspy.HandshakeError) as info:
        twspy.connect("ws://127.0.0.1:%d/" % port, handshake_timeout=5)
    assert info.value.status == 401
    headers = {"Authorization": "Bearer s3cret"}
    with twspy.connect("ws://127.0.0.1:%d/" % port, headers=headers) as a, \
            twspy.connect("ws://127.0.0.1:%d/" % port, headers=headers) as b:
        a.send("hello all")
        assert a.recv(5).payload == "hello all"
        assert b.recv(5).payload == "hello all"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_serve_asyncio_with_the_topics_filter_and_a_hub(twspy_process):
    proc, port = twspy_process("serve", "--asyncio", "-f", "topics")  # a memory:// hub of its own
    with twspy.connect("ws://127.0.0.1:%d/" % port) as conn:
        hello = json.loads(conn.recv(5).payload)
        assert hello["type"] == "set_conn_id"
        conn.send(json.dumps({"type": "subscribe", "topic": "t", "id": 1}))
        assert json.loads(conn.recv(5).payload)["type"] == "ack"
        conn.send(json.dumps({"type": "publish", "topic": "t", "data": "x", "id": 2}))
        replies = sorted(json.loads(conn.recv(5).payload)["type"] for _ in range(2))
        assert replies == ["ack", "message"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
