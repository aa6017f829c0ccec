"""Background reading (issue 17 item 2): a client from connect() that is not inside recv()
still answers pings and sees the close handshake; ``background=False`` opts out."""

from __future__ import annotations

import socket
import threading

import pytest
from test_connection import Peer, Recorder

import twspy
from twspy import Frame

from conftest import url, wait_for


class PongCounter(twspy.Server):
    """Counts the pongs each client sends back to the server's keepalive pings."""

    def __init__(self, *args, pongs=5, **kwargs):
        super().__init__(*args, **kwargs)
        self.wanted = pongs
        self.pongs = 0
        self.answered = threading.Event()
        self.opened = threading.Event()
        self.client = None

    def onopen(self, client):
        self.client = client
        self.opened.set()

    def onpong(self, client, payload):
        self.pongs += 1
        if self.pongs >= self.wanted:
            self.answered.set()


def test_idle_client_answers_pings_and_sees_the_close(serve):
    # The server pings every 50 ms and drops a client that leaves one unanswered 0.5 s.
    server = serve(PongCounter, ping_interval=0.05, ping_timeout=0.5)
    conn = twspy.connect(url(server), close_timeout=2)
    try:
        assert server.opened.wait(5)
        assert server.answered.wait(10), "pings not answered while the client was not reading"
        assert conn.state == "OPEN" and conn.background
        server.client.send("while you were out")
        server.client.start_close(1000, "bye")
        wait_for(lambda: conn.closed)  # the close handshake ran without any recv()
        assert (conn.close_code, conn.close_reason) == (1000, "bye")
        assert conn.recv(1).payload == "while you were out"  # kept, in order
        with pytest.raises(twspy.ConnectionClosedOK):
            conn.recv(1)
    finally:
        conn.close()


def test_opt_out_reads_only_in_recv(serve):
    server = serve(PongCounter, ping_interval=None, pongs=1)
    conn = twspy.connect(url(server), background=False)
    try:
        assert not conn.background
        assert server.opened.wait(5)
        server.client.send_ping(b"p")
        server.client.send("hi")
        assert not server.answered.is_set()
        assert conn.recv(5).payload == "hi"  # the ping was answered on the way
        assert server.answered.wait(5)
    finally:
        conn.close()


def test_background_reading_stops_at_the_bounds(pair):
    """The background reader queues at most max_queue messages, then leaves them to TCP."""
    ws, raw = pair(server_side=False)
    conn = Recorder(ws, close_timeout=2, max_queue=3, background=True)
    peer = Peer(raw, client=False)
    peer.parser.require_mask = True
    peer.send(*[Frame(twspy.OPCODE_TEXT, str(i)) for i in range(6)])
    wait_for(lambda: len(conn._inbox) == 3)
    peer.send(Frame(twspy.OPCODE_PING, b"late"))
    with pytest.raises(socket.timeout):  # the ping behind the full queue waits (TimeoutError from 3.10 on)
        peer.frame(timeout=0.2)
    assert [conn.recv(1).payload for _ in range(6)] == [str(i) for i in range(6)]
    pong = peer.frame()
    assert (pong.opcode, pong.payload) == (twspy.OPCODE_PONG, b"late")
    conn.abort()


def test_background_reading_does_not_steal_from_recv(pair):
    ws, raw = pair(server_side=False)
    conn = Recorder(ws, close_timeout=2, background=True)
    peer = Peer(raw, client=False)
    got = []
    reader = threading.Thread(target=lambda: got.extend(m.payload for m in conn))
    reader.start()
    for i in range(200):
        peer.send(Frame(twspy.OPCODE_TEXT, str(i)))
    peer.send(Frame(twspy.OPCODE_CLOSE, twspy.frame.encode_close(1000)))
    peer.sock.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert not reader.is_alive()
    assert got == [str(i) for i in range(200)]
    assert conn.close_code == 1000


websockets = pytest.importorskip("websockets", reason="pip install websockets (the test extra)")
from websockets.sync.server import serve as ws_serve  # noqa: E402


def test_idle_client_survives_a_pinging_websockets_server():
    """A websockets server pinging every 0.1 s (timeout 0.5 s) while the twspy client does not read."""
    done = threading.Event()
    release = threading.Event()
    result = {}

    def handler(ws):
        try:
            for _ in range(5):  # each waits for the client's pong
                assert ws.ping(b"are you there").wait(5)
            ws.send("still here")
            result["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported to the test
            result["error"] = exc
        finally:
            done.set()
        release.wait(10)  # keep the connection open until the client has looked

    server = ws_serve(handler, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=0.5)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        conn = twspy.connect("ws://127.0.0.1:%d/" % server.socket.getsockname()[1], close_timeout=2)
        try:
            assert done.wait(10)
            assert result == {"ok": True}
            assert conn.recv(5).payload == "still here"
            assert conn.state == "OPEN"
        finally:
            conn.close()
        assert conn.close_code == 1000
    finally:
        release.set()
        server.shutdown()
        thread.join(5)
