"""twspy.asyncio.Server and serve(): handlers, limits, broadcast and shutdown, through the public API."""

from __future__ import annotations

import asyncio

import pytest

from twspy.asyncio import Server, connect, serve
from twspy.errors import ConnectionClosed, HandshakeError
from twspy.message import TextMessage

T = 5.0

UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class Recorder(Server):
    """Records every handler call; echoes messages; 'boom' raises."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []
        self.closed = asyncio.Event()

    async def onopen(self, client):
        self.calls.append(("open", client.path))

    async def onmessage(self, client, message):
        if message.payload == "boom":
            raise RuntimeError("boom")
        self.calls.append(("message", message.payload))
        await client.send(message)

    async def onping(self, client, payload):
        self.calls.append(("ping", payload))

    async def onpong(self, client, payload):
        self.calls.append(("pong", payload))

    async def onerror(self, client, exc):
        self.calls.append(("error", type(exc).__name__))

    async def onclose(self, client, code, reason):
        self.calls.append(("close", code))
        self.closed.set()


def test_server_class_handlers_run_in_order():
    async def main():
        async with Recorder(("127.0.0.1", 0), ping_interval=None) as server:
            async with connect("ws://127.0.0.1:%d/room" % server.port) as conn:
                await conn.send("hi")
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("hi")
                pong = await conn.ping(b"p")
                await asyncio.wait_for(pong, T)
                await conn.pong(b"q")
                await conn.send("sync")  # handlers run in order: once echoed, the pong was seen
                await asyncio.wait_for(conn.recv(), T)
            await asyncio.wait_for(server.closed.wait(), T)
            assert server.calls == [("open", "/room"), ("message", "hi"), ("ping", b"p"), ("pong", b"q"),
                                    ("message", "sync"), ("close", 1000)]
    run(main())


def test_a_handler_that_raises_closes_that_client_with_1011_only():
    async def main():
        async with Recorder(("127.0.0.1", 0)) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as other:
                async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                    await conn.send("boom")
                    with pytest.raises(ConnectionClosed) as info:
                        await asyncio.wait_for(conn.recv(), T)
                    assert info.value.code == 1011
                await other.send("fine")
                assert await asyncio.wait_for(other.recv(), T) == TextMessage("fine")
            assert ("error", "RuntimeError") in server.calls

        async def raiser(client):
            raise ValueError("bad")

        async with serve(raiser, "127.0.0.1", 0) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(conn.recv(), T)
                assert info.value.code == 1011
    run(main())


def test_protocol_error_reaches_onerror_and_onclose():
    async def main():
        async with Recorder(("127.0.0.1", 0), extensions=[]) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(UPGRADE + b"\x81\x01x")  # unmasked frame from a client: 1002
            data = await asyncio.wait_for(reader.read(), T)
            assert b"\x88" in data and b"\x03\xea" in data
            writer.close()
            await asyncio.wait_for(server.closed.wait(), T)
            assert server.calls[-2:] == [("error", "ProtocolError"), ("close", 1002)]
    run(main())


def test_broadcast_encodes_once_and_excludes():
    async def main():
        class Chat(Server):
            async def onmessage(self, client, message):
                self.broadcast(message, exclude=client)

        async with Chat(("127.0.0.1", 0), extensions=[]) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as a, \
                    connect("ws://127.0.0.1:%d" % server.port) as b, \
                    connect("ws://127.0.0.1:%d" % server.port, extensions=None) as c:
                await a.send("to all")
                assert await asyncio.wait_for(b.recv(), T) == TextMessage("to all")
                assert await asyncio.wait_for(c.recv(), T) == TextMessage("to all")
                with pytest.raises(TimeoutError):
                    await a.recv(timeout=0.05)
    run(main())


def test_broadcast_never_waits_on_a_slow_client_and_closes_it_with_1013():
    async def main():
        server = Recorder(("127.0.0.1", 0), extensions=[], max_outbox=256 * 1024, close_timeout=0.2)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1024)
            writer.transport.pause_reading()  # a client that never reads
            writer.write(UPGRADE)
            async with connect("ws://127.0.0.1:%d" % server.port) as fast:
                while len(server.clients) < 2:
                    await asyncio.sleep(0.01)
                for _ in range(200):  # 12.5 MiB: far more than the kernel buffers hold
                    server.broadcast(b"x" * 65536)
                    await asyncio.wait_for(fast.recv(), T)  # the reading client gets each at once
                    if ("close", 1013) in server.calls:
                        break
                await asyncio.wait_for(server.closed.wait(), T)
                assert ("close", 1013) in server.calls
                await fast.send("still served")
                assert await asyncio.wait_for(fast.recv(), T) == TextMessage("still served")
            writer.close()
    run(main())


def test_max_connections_answers_503():
    async def main():
        async with serve(lambda c: c.wait_closed(), "127.0.0.1", 0, max_connections=1) as server:
            async with connect("ws://127.0.0.1:%d" % server.port):
                with pytest.raises(HandshakeError) as info:
                    await asyncio.wait_for(connect("ws://127.0.0.1:%d" % server.port), T)
                assert info.value.status == 503
    run(main())


def test_process_request_takes_the_request():
    """One process_request(request) signature in both layers (issue 11); the old
    (path, headers) still works, with a DeprecationWarning, as a subclass method or a callable."""
    class Health(Server):
        def process_request(self, request):
            if request.path == "/healthz":
                return (200, "ok\n") if request.method == "GET" else 405
            return None

    with pytest.warns(DeprecationWarning, match=r"process_request\(request\)") as warned:
        class Old(Server):
            def process_request(self, path, headers):
                return (200, "old\n") if path == "/healthz" else None
    assert warned[0].filename == __file__  # it points at the class statement

    def old_hook(path, headers):
        return (200, "old hook\n") if path == "/healthz" else None

    async def handler(client):
        async for message in client:
            await client.send(message)

    async def check(server, body):
        url = "ws://127.0.0.1:%d" % server.port
        with pytest.raises(HandshakeError) as info:
            await asyncio.wait_for(connect(url + "/healthz"), T)
        assert info.value.status == 200 and info.value.body == body
        async with connect(url) as conn:
            await conn.send("hi")
            assert await asyncio.wait_for(conn.recv(), T) == TextMessage("hi")

    async def main():
        async with Health(("127.0.0.1", 0), handler=handler) as server:
            await check(server, b"ok\n")
        async with Old(("127.0.0.1", 0), handler=handler) as server:
            await check(server, b"old\n")
        with pytest.warns(DeprecationWarning, match=r"process_request\(request\)") as warned_call:
            server = Server(("127.0.0.1", 0), handler=handler, process_request=old_hook)
        assert warned_call[0].filename == __file__  # at the call that passed the hook
        async with server:
            await check(server, b"old hook\n")
    run(main())


def test_process_request_origins_and_subprotocols():
    async def main():
        def process_request(request):
            path, headers = request.path, request.headers
            if path == "/health":
                return 200, b"ok\n"
            if headers.get("X-Token") != "secret":
                return 401
            return None

        async def handler(client):
            await client.send(client.protocol or "-")
            await client.wait_closed()

        options = dict(process_request=process_request, protocols=["chat", "superchat"],
                       trusted_origins=["http://good"])
        async with serve(handler, "127.0.0.1", 0, **options) as server:
            url = "ws://127.0.0.1:%d" % server.port
            with pytest.raises(HandshakeError) as info:
                await asyncio.wait_for(connect(url + "/health"), T)
            assert info.value.status == 200 and info.value.body == b"ok\n"
            with pytest.raises(HandshakeError) as info:
                await asyncio.wait_for(connect(url), T)
            assert info.value.status == 401
            with pytest.raises(HandshakeError) as info:
                await asyncio.wait_for(connect(url, headers={"X-Token": "secret"}, origin="http://evil"), T)
            assert info.value.status == 403
            async with connect(url, headers={"X-Token": "secret"}, origin="http://good",
                               protocols=["superchat", "chat"]) as conn:
                assert conn.protocol == "superchat"
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("superchat")
    run(main())


def test_close_sends_1001_to_every_client_within_close_timeout():
    async def main():
        server = serve(lambda c: c.wait_closed(), "127.0.0.1", 0, close_timeout=0.2)
        await server
        good = await asyncio.wait_for(connect("ws://127.0.0.1:%d" % server.port), T)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(UPGRADE)  # a client that will never answer the close frame
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        stalled, _ = await asyncio.open_connection("127.0.0.1", server.port)  # never handshakes
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(server.close(), T)
        assert loop.time() - start < 2.0
        assert [m async for m in good] == []
        assert good.close_code == 1001
        data = await asyncio.wait_for(reader.read(), T)
        assert data[:1] == b"\x88" and data[2:4] == b"\x03\xe9"
        assert await asyncio.wait_for(stalled.read(), T) == b""
        writer.close()
    run(main())


def test_handshake_timeout_drops_a_stalled_handshake():
    async def main():
        async with serve(None, "127.0.0.1", 0, handshake_timeout=0.1) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(UPGRADE[:20])
            assert await asyncio.wait_for(reader.read(), T) == b""
            writer.close()
    run(main())


def test_bad_handshake_gets_http_400_and_the_server_goes_on():
    async def main():
        async with serve(lambda c: c.send("hi"), "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), T)
            assert data.startswith(b"HTTP/1.1 4")
            writer.close()
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("hi")
    run(main())


def test_serve_forever_until_close():
    async def main():
        server = serve(None, "127.0.0.1", 0)
        await server
        task = asyncio.ensure_future(server.serve_forever())
        async with connect("ws://127.0.0.1:%d" % server.port) as conn:
            await asyncio.wait_for(server.close(), T)
            assert [m async for m in conn] == []
        await asyncio.wait_for(task, T)
    run(main())


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        Server(("127.0.0.1", 0), no_such_option=1)


def test_a_refused_client_that_keeps_its_socket_open_does_not_hold_a_slot():
    async def main():
        async with serve(lambda c: c.send("hi"), "127.0.0.1", 0, max_connections=1) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # refused (400); we never close
            assert (await asyncio.wait_for(reader.read(), T)).startswith(b"HTTP/1.1 4")
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("hi")
            writer.close()
    run(main())
