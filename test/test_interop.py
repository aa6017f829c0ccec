"""Interoperability with another implementation: python-websockets, in both roles.

websockets is a test dependency (the `test` extra; `make test` installs it), never a runtime one.
"""

from __future__ import annotations

import threading

import pytest

import twspy
from twspy.cli import EchoServer

from conftest import url

websockets = pytest.importorskip("websockets", reason="pip install websockets (the test extra)")
from websockets.sync.client import connect as ws_connect  # noqa: E402
from websockets.sync.server import serve as ws_serve  # noqa: E402

SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20]


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websockets_client_to_twspy_server(serve, compression):
    server = serve(EchoServer, max_size=2 << 20, protocols=["chat"])
    with ws_connect(url(server, "/x?y=z"), compression=compression, subprotocols=["chat"],
                    max_size=2 << 20) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.headers.get("Sec-WebSocket-Extensions", "").startswith(
            "permessage-deflate") == (compression == "deflate")
        for size in SIZES:
            text = ("κόσμε" * size)[:size]
            ws.send(text)
            assert ws.recv(timeout=10) == text
            data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            ws.send(data)
            assert ws.recv(timeout=10) == data
        ws.send(["frag", "mented", " text"])  # a fragmented message
        assert ws.recv(timeout=5) == "fragmented text"
        ws.ping(b"hey").wait(5)
        ws.close(4000, "done")
    assert ws.close_code == 4000


def test_websockets_client_sees_close_codes(serve):
    server = serve(EchoServer, max_size=100)
    with ws_connect(url(server)) as ws:
        ws.send("x" * 101)
        with pytest.raises(websockets.ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd.code == 1009


@pytest.fixture
def websockets_echo():
    def handler(ws):
        for message in ws:
            ws.send(message)

    server = ws_serve(handler, "127.0.0.1", 0, max_size=2 << 20, subprotocols=["chat"])
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield "ws://127.0.0.1:%d/" % server.socket.getsockname()[1]
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize("extensions", [None, []])
def test_twspy_client_to_websockets_server(websockets_echo, extensions):
    with twspy.connect(websockets_echo, extensions=extensions, protocols=["chat"], max_size=2 << 20) as conn:
        assert conn.protocol == "chat"
        assert [c.name for c in conn.sock.extensions] == (["permessage-deflate"] if extensions is None else [])
        for size in SIZES:
            text = ("κόσμε" * size)[:size]
            conn.send(text, fragment_size=50000)
            assert conn.recv(10).payload == text
            data = bytes(range(256)) * (size // 256)
            conn.send(data)
            assert conn.recv(10).payload == data
            conn.send_ping(b"ping")
        conn.close(4001, "bye")
    assert conn.close_code == 4001
