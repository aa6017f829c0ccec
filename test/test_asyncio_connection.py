"""twspy.asyncio.Connection through the public API: a server and a client on 127.0.0.1 port 0.

Every await has a timeout (asyncio.wait_for); every test runs its own event loop.
"""

from __future__ import annotations

import asyncio

import pytest

from twspy.asyncio import connect, serve
from twspy.errors import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidState, PayloadTooBig
from twspy.message import BinaryMessage, TextMessage

T = 5.0  # seconds: the bound of every await


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def echo(client):
    async for message in client:
        await client.send(message)


def test_echo_text_binary_messages_and_fragments():
    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                await conn.send("héllo")
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("héllo")
                await conn.send(b"\x00\xff")
                assert await asyncio.wait_for(conn.recv(), T) == BinaryMessage(b"\x00\xff")
                await conn.send(TextMessage("m"))
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("m")
                await conn.send(bytearray(b"x" * 70000), fragment_size=1000)
                assert (await asyncio.wait_for(conn.recv(), T)).payload == b"x" * 70000
                assert conn.state == "OPEN"
            assert conn.close_code == 1000
            assert conn.closed
            with pytest.raises(ConnectionClosed):
                await conn.send("late")
    run(main())


def test_permessage_deflate_is_negotiated_by_default_and_can_be_refused():
    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                assert [c.name for c in conn.core.extensions] == ["permessage-deflate"]
                await conn.send("a" * 10000)
                assert (await asyncio.wait_for(conn.recv(), T)).payload == "a" * 10000
            async with connect("ws://127.0.0.1:%d" % server.port, extensions=[]) as conn:
                assert conn.core.extensions == []
    run(main())


def test_async_for_ends_on_1000_and_1001_and_raises_otherwise():
    async def closer(client):
        code = int((await client.recv()).payload)
        await client.close(code, "bye")

    async def main():
        async with serve(closer, "127.0.0.1", 0) as server:
            for code in (1000, 1001):
                async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                    await conn.send(str(code))
                    assert [m async for m in conn] == []
                    assert conn.close_code == code and conn.close_reason == "bye"
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                await conn.send("4000")
                with pytest.raises(ConnectionClosed) as info:
                    async for _ in conn:
                        pass
                assert info.value.code == 4000
    run(main())


def test_ping_resolves_with_latency_on_its_pong():
    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                first = await conn.ping(b"1")
                second = await conn.ping()
                latency = await asyncio.wait_for(second, T)
                assert latency >= 0
                assert first.done()  # a pong acknowledges every earlier ping too
                with pytest.raises(ValueError):
                    await conn.ping(b"x" * 126)
    run(main())


def test_recv_timeout_and_cancelled_recv_leave_the_connection_usable():
    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                with pytest.raises(TimeoutError):
                    await conn.recv(timeout=0.05)
                task = asyncio.ensure_future(conn.recv())
                await asyncio.sleep(0)  # let it start waiting
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await conn.send("still here")
                assert await asyncio.wait_for(conn.recv(), T) == TextMessage("still here")
    run(main())


def test_message_over_max_size_closes_with_1009():
    async def main():
        async with serve(echo, "127.0.0.1", 0, max_size=1000) as server:
            async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                await conn.send(b"x" * 1001)
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(conn.recv(), T)
                assert info.value.code == 1009
    run(main())


def test_invalid_utf8_closes_with_1007():
    async def main():
        async with serve(echo, "127.0.0.1", 0, extensions=[]) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            assert head.startswith(b"HTTP/1.1 101")
            writer.write(b"\x81\x82\x00\x00\x00\x00\xc3\x28")  # masked text frame, invalid UTF-8
            rest = await asyncio.wait_for(reader.read(), T)  # until the server closes TCP
            assert rest[:1] == b"\x88" and rest[2:4] == b"\x03\xef"  # close 1007
            writer.close()
    run(main())


def test_a_peer_that_does_not_read_cannot_grow_memory():
    """Reading pauses at max_queue messages: the sender's send() ends up waiting (TCP backpressure)."""
    held = []
    release = None

    async def sleeper(client):
        held.append(client)
        await release.wait()

    async def main():
        nonlocal release
        release = asyncio.Event()
        async with serve(sleeper, "127.0.0.1", 0, max_queue=2, extensions=[]) as server:
            async with connect("ws://127.0.0.1:%d" % server.port, extensions=[]) as conn:
                message = b"x" * 65536
                sent = 0
                with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                    for _ in range(2000):  # 128 MiB if nothing pushed back
                        await asyncio.wait_for(conn.send(message), 0.5)
                        sent += 1
                assert sent < 2000
                assert len(held[0]._inbox) <= 2  # the server queued no more than max_queue
                release.set()
    run(main())


def test_send_on_a_connection_closed_by_the_peer_raises_connection_closed():
    async def quitter(client):
        await client.close(1000)

    async def main():
        async with serve(quitter, "127.0.0.1", 0) as server:
            conn = await asyncio.wait_for(connect("ws://127.0.0.1:%d" % server.port), T)
            await asyncio.wait_for(conn.wait_closed(), T)
            with pytest.raises(ConnectionClosed) as info:
                await conn.send("x")
            assert info.value.code == 1000
            with pytest.raises(ConnectionClosed):
                await conn.recv()
            with pytest.raises(ConnectionClosed):
                await conn.ping()
            await conn.close()  # nothing to do
    run(main())


def test_keepalive_fails_a_peer_that_never_answers_pings():
    codes = []

    async def handler(client):
        try:
            await client.recv()
        except ConnectionClosed as exc:
            codes.append(exc.code)

    async def main():
        async with serve(handler, "127.0.0.1", 0, ping_interval=0.05, ping_timeout=0.1) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), T)  # never answers: the server drops us
            assert data.startswith(b"HTTP/1.1 101")
            assert b"\x89\x04" in data  # the keepalive ping
            writer.close()
        assert codes == [1011]
    run(main())


def test_closing_handshake_a_peer_never_finishes_is_cut_by_close_timeout():
    async def main():
        async def closer(client):
            await client.close()

        async with serve(closer, "127.0.0.1", 0, close_timeout=0.1) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), T)  # we never answer the close frame
            assert data.endswith(b"\x88\x02\x03\xe8")
            writer.close()
    run(main())


def test_send_before_open_is_an_invalid_state():
    from twspy.asyncio import Connection
    from twspy.handshake_protocol import ClientProtocol

    async def main():
        conn = Connection(ClientProtocol(host="x"))
        with pytest.raises(InvalidState):
            await conn.send("x")
    run(main())


def test_recv_raises_at_once_when_the_client_fails_the_connection():
    """A protocol error from the server: recv() raises 1002 at once, not after close_timeout."""
    import base64
    import hashlib

    async def bad_server(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key")][0]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        writer.write(b"\x81\x81\x00\x00\x00\x00x")  # a masked frame from a server: 1002 (§5.1)
        await reader.read()  # never closes TCP itself
        writer.close()

    async def main():
        server = await asyncio.start_server(bad_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await asyncio.wait_for(connect("ws://127.0.0.1:%d" % port, close_timeout=30), T)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 2)
        assert info.value.code == 1002
        conn.abort()
        await asyncio.wait_for(conn.wait_closed(), T)
        server.close()
        await server.wait_closed()
    run(main())


def test_messages_before_the_peers_close_frame_are_still_answered():
    """The client sends a message and closes at once: the server echoes it, then answers the close."""
    async def main():
        async with serve(echo, "127.0.0.1", 0) as server:
            conn = await asyncio.wait_for(connect("ws://127.0.0.1:%d" % server.port), T)
            payload = b"\x01" * (512 * 1024)
            await conn.send(payload)
            conn.start_close(4000, "bye")
            assert (await asyncio.wait_for(conn.recv(), T)).payload == payload
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(conn.recv(), T)
            assert info.value.code == 4000
            await asyncio.wait_for(conn.wait_closed(), T)
    run(main())


def test_over_tls_a_failed_client_reads_its_1009_before_tcp_ends():
    """TLS cannot half-close: closing while the peer still sends would reset it before it reads the close frame."""
    import os
    import ssl

    here = os.path.dirname(os.path.abspath(__file__))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(os.path.join(here, "certs", "localhost.pem"),
                               os.path.join(here, "certs", "localhost.key"))
    client_ctx = ssl.create_default_context(cafile=os.path.join(here, "certs", "localhost.pem"))

    async def main():
        async with serve(echo, "127.0.0.1", 0, ssl=server_ctx, max_size=1000, close_timeout=1) as server:
            async with connect("wss://localhost:%d" % server.port, ssl=client_ctx, extensions=[]) as conn:
                try:
                    await asyncio.wait_for(conn.send(os.urandom(4 << 20)), T)
                except ConnectionClosed:
                    pass
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(conn.recv(), T)
                assert info.value.code == 1009
    run(main())


def test_messages_before_a_protocol_error_are_answered_before_the_close():
    """Autobahn 3.2 / 4.1.3 / 5.15: a valid message, then an invalid frame in the same read: the
    echo of the first goes out, then the close 1002."""
    async def main():
        async with serve(echo, "127.0.0.1", 0, extensions=[]) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            # "hi" (masked with a zero key), then a frame with reserved opcode 3, in one write
            writer.write(b"\x81\x82\x00\x00\x00\x00hi" + b"\x83\x80\x00\x00\x00\x00")
            rest = await asyncio.wait_for(reader.read(), T)
            assert rest[:4] == b"\x81\x02hi"
            assert rest[4:5] == b"\x88" and rest[6:8] == b"\x03\xea"
            writer.close()
    run(main())


def test_recv_and_send_raise_closed_ok_or_closed_error_by_code():
    """ConnectionClosedOK for 1000/1001/1005, ConnectionClosedError otherwise (as the threaded layer);
    ``async for`` ends on the first and raises the second."""
    async def closer(client):
        text = (await client.recv()).payload
        await client.close(None if text == "none" else int(text), "" if text == "none" else "bye")

    async def main():
        async with serve(closer, "127.0.0.1", 0) as server:
            for text, kind in (("1000", ConnectionClosedOK), ("1001", ConnectionClosedOK),
                               ("none", ConnectionClosedOK), ("4000", ConnectionClosedError),
                               ("1011", ConnectionClosedError)):
                async with connect("ws://127.0.0.1:%d" % server.port) as conn:
                    await conn.send(text)
                    if kind is ConnectionClosedOK:
                        assert [m async for m in conn] == []
                    else:
                        with pytest.raises(kind):
                            async for _ in conn:
                                pass
                    with pytest.raises(kind) as info:
                        await asyncio.wait_for(conn.recv(), T)
                    assert info.value.code == (1005 if text == "none" else int(text))
                    await asyncio.wait_for(conn.wait_closed(), T)
                    with pytest.raises(kind):
                        await conn.send("late")
                    with pytest.raises(kind):
                        await conn.ping()
    run(main())


def test_a_failed_connection_raises_closed_error_with_its_cause():
    async def main():
        async with serve(echo, "127.0.0.1", 0, max_size=1000) as server:
            async with connect("ws://127.0.0.1:%d" % server.port, max_size=1000) as conn:
                await conn.send(b"x" * 1001)  # the server fails it with 1009
                with pytest.raises(ConnectionClosedError) as info:
                    await asyncio.wait_for(conn.recv(), T)
                assert info.value.code == 1009 and info.value.cause is None  # the peer chose the code
        async with serve(echo, "127.0.0.1", 0, extensions=[]) as server:
            async with connect("ws://127.0.0.1:%d" % server.port, max_size=10, extensions=[]) as conn:
                await conn.send(b"x" * 11)  # echoed: now we fail it with 1009
                with pytest.raises(ConnectionClosedError) as info:
                    await asyncio.wait_for(conn.recv(), T)
                assert info.value.code == 1009
                assert isinstance(info.value.cause, PayloadTooBig) and info.value.__cause__ is info.value.cause
    run(main())


def test_large_sends_never_write_a_header_alone():
    """A large payload is written with its header in front of its first 64 KiB, the rest uncopied."""
    from twspy.asyncio import Connection
    from twspy.protocol import SERVER, Protocol

    class Transport:
        def __init__(self):
            self.writes = []

        def write(self, data):
            self.writes.append(data)

        def get_extra_info(self, name, default=None):
            return default

        def set_write_buffer_limits(self, high=None):
            pass

    async def main():
        conn = Connection(Protocol(SERVER))
        transport = Transport()
        conn.connection_made(transport)
        payload = bytes(range(256)) * 1200  # 300 KiB
        await conn.send(payload)
        head, rest = transport.writes
        assert head[:2] == b"\x82\x7f" and len(head) == 10 + 65536 and type(rest) is memoryview
        assert head[10:] + bytes(rest) == payload
        transport.writes.clear()
        await conn.send("é" * 50000 + "a" * 16000, fragment_size=65536)  # 116,000 bytes: frames of 64 KiB, 50,464 B
        first, second = transport.writes  # the second frame (under 64 KiB) with nothing left to split
        assert first[:4] == b"\x01\x7f\x00\x00" and len(first) == 10 + 65536
        assert second[:4] == b"\x80\x7e\xc5\x20" and len(second) == 4 + 50464
        assert (first[10:] + second[4:]).decode() == "é" * 50000 + "a" * 16000
        transport.writes.clear()
        await conn.send(b"x" * 65536)
        assert transport.writes == [b"\x82\x7f" + (65536).to_bytes(8, "big") + b"x" * 65536]
    run(main())
