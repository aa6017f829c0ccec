"""twspy.asgi against an ASGI server played by hand: each test queues what the client does
(``websocket.connect``, ``receive``, ``disconnect``) and reads what the app sent."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from twspy.asgi import Endpoint
from twspy.errors import ConnectionClosed, InvalidState
from twspy.filters import BearerAuth, Filter
from twspy.hub import Hub, TopicBroadcast

T = 5.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class FakeClient:
    """The ASGI server's side of one websocket: ``receive`` gives what the test queued,
    ``send`` records what the app sent (or blocks, like a server whose client stopped reading)."""

    def __init__(self, path="/ws", subprotocols=(), headers=(), extensions=None, blocked=False):
        self.scope = {"type": "websocket", "path": path, "query_string": b"", "headers": list(headers),
                      "subprotocols": list(subprotocols), "client": ("127.0.0.1", 5000)}
        if extensions is not None:
            self.scope["extensions"] = extensions
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.unblocked = asyncio.Event()
        if not blocked:
            self.unblocked.set()

    async def receive(self):
        return await self.incoming.get()

    async def send(self, event):
        await self.unblocked.wait()
        self.outgoing.put_nowait(event)

    def text(self, text):
        self.incoming.put_nowait({"type": "websocket.receive", "text": text})

    def request(self, **fields):
        self.text(json.dumps(fields))

    def disconnect(self, code=1000, reason=""):
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})

    async def next(self):
        return await asyncio.wait_for(self.outgoing.get(), T)

    async def json(self):
        event = await self.next()
        assert event["type"] == "websocket.send", event
        return json.loads(event["text"])


class Closes(Filter):
    """Records each client's close code."""

    def __init__(self):
        self.codes = []

    def on_close(self, client, code, reason):
        self.codes.append(code)


async def in_thread(fn, *args):
    result = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    await asyncio.get_running_loop().run_in_executor(None, thread.join, T)
    assert not thread.is_alive()
    return result[0]


def test_the_json_protocol_topics_send_to_id_and_presence():
    async def main():
        closes = Closes()
        with Hub() as hub:
            endpoint = Endpoint(hub=hub, filters=[TopicBroadcast(), closes])
            a, b = FakeClient(), FakeClient()
            tasks = [asyncio.ensure_future(endpoint.serve(c.scope, c.receive, c.send)) for c in (a, b)]
            assert (await a.next())["type"] == "websocket.accept"
            assert (await b.next())["type"] == "websocket.accept"
            a_id, b_id = (await a.json())["conn_id"], (await b.json())["conn_id"]
            assert a_id.startswith(hub.node_id + ".") and len(a_id.split(".")[2]) == 16
            a.request(type="subscribe", topic="chat/+", id=1)
            assert await a.json() == {"type": "ack", "id": 1}
            assert hub.presence("chat/x") == {a_id} and hub.presence() == {a_id, b_id}
            b.request(type="publish", topic="chat/x", data={"n": 1}, id=2)
            assert await b.json() == {"type": "ack", "id": 2}
            assert await a.json() == {"type": "message", "topic": "chat/x", "data": {"n": 1}, "from": b_id}
            a.request(type="send_by_conn_id", conn_id=b_id, data="psst")
            assert await b.json() == {"type": "message", "data": "psst", "from": a_id}
            b.disconnect(1001)
            await asyncio.wait_for(tasks[1], T)
            assert hub.presence() == {a_id} and closes.codes == [1001]
            a.disconnect(1000)
            await asyncio.wait_for(tasks[0], T)
            assert hub.presence() == set() and closes.codes == [1001, 1000]
    run(main())


def test_accept_takes_a_websocket_object_and_deliveries_from_threads_keep_their_order():
    async def main():
        with Hub() as hub:
            endpoint = Endpoint(hub=hub, protocols=["chat.v2", "chat.v1"])
            client = FakeClient(subprotocols=["chat.v1", "chat.v2"])
            got = []
            subscribed = asyncio.Event()

            async def handler():
                async with endpoint.accept(client) as conn:  # any object with scope/receive/send
                    hub.subscribe(conn, "feed")
                    got.append(conn.protocol)
                    subscribed.set()
                    async for message in conn:
                        await conn.send(message if isinstance(message.payload, bytes) else "echo " + message.payload)

            task = asyncio.ensure_future(handler())
            assert await client.next() == {"type": "websocket.accept", "subprotocol": "chat.v1"}  # the client's first

            def publish():
                for i in range(500):
                    hub.publish("feed", "m%d" % i)

            await asyncio.wait_for(subscribed.wait(), T)
            await in_thread(publish)
            assert [(await client.next())["text"] for _ in range(500)] == ["m%d" % i for i in range(500)]
            client.text("hi")
            assert (await client.next())["text"] == "echo hi"
            client.incoming.put_nowait({"type": "websocket.receive", "bytes": b"\x00\xff"})
            assert await client.next() == {"type": "websocket.send", "bytes": b"\x00\xff"}
            client.disconnect(1000)
            await asyncio.wait_for(task, T)
            assert got == ["chat.v1"]
    run(main())


def test_a_client_that_stops_reading_is_closed_1013_and_the_others_keep_up():
    async def main():
        closes = Closes()
        with Hub() as hub:
            endpoint = Endpoint(hub=hub, filters=[closes], max_outbox=64 * 1024, close_timeout=0.2)
            frozen, steady = FakeClient(), FakeClient()
            tasks = [asyncio.ensure_future(endpoint.serve(c.scope, c.receive, c.send)) for c in (frozen, steady)]
            await frozen.next()
            await steady.next()
            frozen.unblocked.clear()  # its sends never complete from now on
            got = []
            for i in range(400):  # 3.2 MB for the frozen one if nothing bounded it
                hub.broadcast("%d %s" % (i, "x" * 8000))
                got.append(int((await steady.next())["text"].split()[0]))  # steady reads as it goes
            await asyncio.wait_for(tasks[0], T)  # closed, its task done, while steady is open
            assert closes.codes == [1013]
            assert got == list(range(400))
            frozen.unblocked.set()  # what the server finally took: never more than max_outbox
            sent = []
            while not frozen.outgoing.empty():
                sent.append(frozen.outgoing.get_nowait())
            assert sum(len(e.get("text", "")) for e in sent) <= 64 * 1024 + 8010
            steady.disconnect()
            await asyncio.wait_for(tasks[1], T)
            assert closes.codes == [1013, 1000]
    run(main())


def test_a_message_over_max_size_closes_1009():
    async def main():
        closes = Closes()
        endpoint = Endpoint(filters=[closes], max_size=100)
        client = FakeClient()
        task = asyncio.ensure_future(endpoint.serve(client.scope, client.receive, client.send))
        await client.next()
        client.text("x" * 101)
        assert await client.next() == {"type": "websocket.close", "code": 1009,
                                       "reason": "frame of 101 bytes exceeds the limit of 100"}
        client.disconnect(1009)  # as uvicorn reports our own close
        await asyncio.wait_for(task, T)
        assert closes.codes == [1009]
    run(main())


def test_an_exception_in_the_block_closes_1011_and_is_raised():
    async def main():
        endpoint = Endpoint(close_timeout=0.2)
        client = FakeClient()

        async def handler():
            async with endpoint.accept(client.scope, client.receive, client.send):
                raise LookupError("bug")

        task = asyncio.ensure_future(handler())
        await client.next()
        assert await client.next() == {"type": "websocket.close", "code": 1011, "reason": "internal error"}
        with pytest.raises(LookupError):
            await asyncio.wait_for(task, T)  # no disconnect came: close_timeout ended it
        assert not endpoint.clients
    run(main())


def test_disconnect_kicks_from_another_thread_and_bad_codes_raise():
    async def main():
        with Hub() as hub:
            endpoint = Endpoint(hub=hub)
            client = FakeClient()
            seen = []
            opened = asyncio.Event()

            async def handler():
                async with endpoint.accept(client.scope, client.receive, client.send) as conn:
                    seen.append(conn)
                    opened.set()
                    with pytest.raises(ValueError):
                        conn.start_close(1006)  # may not be sent (RFC 6455 §7.4)
                    with pytest.raises(ConnectionClosed):
                        await conn.recv()

            task = asyncio.ensure_future(handler())
            await client.next()
            await asyncio.wait_for(opened.wait(), T)
            await in_thread(hub.disconnect, seen[0].id, 4000, "kicked")
            assert await client.next() == {"type": "websocket.close", "code": 4000, "reason": "kicked"}
            client.disconnect(4000, "kicked")  # as uvicorn reports our own close
            await asyncio.wait_for(task, T)
            assert seen[0].close_code == 4000 and seen[0].close_reason == "kicked"
    run(main())


def test_a_filter_refuses_before_accepting():
    async def main():
        endpoint = Endpoint(filters=[BearerAuth("s3cret")])
        # A server with the websocket.http.response extension gets the filter's answer itself.
        client = FakeClient(extensions={"websocket.http.response": {}})
        await asyncio.wait_for(endpoint.serve(client.scope, client.receive, client.send), T)
        start = await client.next()
        assert start["type"] == "websocket.http.response.start" and start["status"] == 401
        assert (await client.next())["body"] == b"missing or invalid bearer token\n"
        plain = FakeClient()  # without it: a close before accepting (the server answers 403)
        await asyncio.wait_for(endpoint.serve(plain.scope, plain.receive, plain.send), T)
        assert (await plain.next())["type"] == "websocket.close"
        good = FakeClient(headers=[(b"authorization", b"Bearer s3cret")])
        task = asyncio.ensure_future(endpoint.serve(good.scope, good.receive, good.send))
        assert (await good.next())["type"] == "websocket.accept"
        good.disconnect()
        await asyncio.wait_for(task, T)
        gone = FakeClient()
        gone.incoming.get_nowait()
        gone.disconnect(1006)  # left before the app accepted
        await asyncio.wait_for(endpoint.serve(gone.scope, gone.receive, gone.send), T)
        assert gone.outgoing.empty()
    run(main())


def test_a_websocket_accepted_by_the_app_itself_is_a_clear_error():
    async def main():
        client = FakeClient()
        client.incoming.get_nowait()  # the app took websocket.connect and accepted
        client.text("hello")
        with pytest.raises(InvalidState, match="accepted already"):
            async with Endpoint().accept(client.scope, client.receive, client.send):
                pass
    run(main())


def test_the_endpoint_is_an_asgi_app():
    async def main():
        endpoint = Endpoint()
        sent = []

        async def send(event):
            sent.append(event)

        async def receive():
            return {"type": "http.request"}

        await endpoint({"type": "http", "path": "/"}, receive, send)
        assert sent[0]["status"] == 426
        client = FakeClient()
        task = asyncio.ensure_future(endpoint(client.scope, client.receive, client.send))
        await client.next()
        client.text("ignored")
        client.disconnect(1005)
        await asyncio.wait_for(task, T)
        assert not endpoint.clients
    run(main())


def test_flow_control_timeouts_and_the_end_of_sends():
    async def main():
        endpoint = Endpoint(max_queue=4, close_timeout=0.2)
        client = FakeClient(path="/room", headers=[(b"x-name", b"ann")])
        client.scope["query_string"] = b"token=s3cret&x=1"
        for i in range(10):
            client.text("m%d" % i)
        async with endpoint.accept(client.scope, client.receive, client.send) as conn:
            await client.next()
            assert conn.path == "/room?token=s3cret&x=1" and conn.headers["X-Name"] == "ann"
            assert "s3cret" not in repr(conn) and conn.state == "OPEN"
            for _ in range(20):  # loop turns, not time: the reader takes 4 and then waits
                await asyncio.sleep(0)
            assert client.incoming.qsize() == 6 and not conn.closed
            assert [(await conn.recv(timeout=T)).payload for _ in range(10)] == ["m%d" % i for i in range(10)]
            with pytest.raises(TimeoutError):
                await conn.recv(timeout=0.01)
            await conn.send(b"\x01")
            await conn.send(bytearray(b"\x02"))
            with pytest.raises(TypeError):
                await conn.send(3)
            assert [(await client.next())["bytes"] for _ in range(2)] == [b"\x01", b"\x02"]
            client.unblocked.clear()  # the client stops reading: an awaited send waits...
            pending = asyncio.ensure_future(conn.send("stuck"))
            await asyncio.sleep(0)
            conn.fail(1008, "policy")  # ...and fails when the connection does
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(pending, T)
            with pytest.raises(ConnectionClosed) as caught:
                await conn.send("late")
            assert caught.value.code == 1008
            client.unblocked.set()
            assert await client.next() == {"type": "websocket.close", "code": 1008, "reason": "policy"}
            client.disconnect(1008, "policy")
            await asyncio.wait_for(conn.wait_closed(), T)
            assert conn.closed and conn.state == "CLOSED" and conn.close_code == 1008
    run(main())


def test_a_server_whose_receive_or_send_fails_ends_the_connection_1006():
    async def main():
        endpoint = Endpoint()
        broken = FakeClient()

        async def receive():
            event = await broken.incoming.get()
            if event["type"] == "websocket.receive":
                raise OSError("gone")
            return event

        async with endpoint.accept(broken.scope, receive, broken.send) as conn:
            broken.text("x")
            with pytest.raises(ConnectionClosed) as caught:
                await conn.recv(timeout=T)
            assert caught.value.code == 1006

        failing = FakeClient()

        async def send(event):
            if event["type"] == "websocket.send":
                raise OSError("gone")
            await failing.send(event)

        async with endpoint.accept(failing.scope, failing.receive, send) as conn:
            with pytest.raises(ConnectionClosed):
                await conn.send("x")
            assert conn.close_code == 1006
    run(main())


def test_broadcast_close_and_the_refusals_a_filter_may_give():
    async def main():
        endpoint = Endpoint()
        a, b = FakeClient(), FakeClient()
        async with endpoint.accept(a.scope, a.receive, a.send) as conn_a, \
                endpoint.accept(b.scope, b.receive, b.send) as conn_b:
            await a.next()
            await b.next()
            endpoint.broadcast("all", exclude=conn_b)
            assert (await a.next())["text"] == "all"
            endpoint.broadcast(b"both")
            assert (await a.next())["bytes"] == (await b.next())["bytes"] == b"both"
            assert b.outgoing.empty() and "2 clients" in repr(endpoint)
            closing = asyncio.ensure_future(conn_a.close(4001, "done"))
            assert await a.next() == {"type": "websocket.close", "code": 4001, "reason": "done"}
            a.disconnect(4001, "done")
            await asyncio.wait_for(closing, T)
            assert conn_a.close_code == 4001
            b.disconnect()
        assert conn_b.close_code == 1000 and not endpoint.clients

        class Answer(Filter):
            def __init__(self, reply):
                self.reply = reply

            def on_connect(self, request):
                return self.reply

        for reply, status, body in ((429, 429, b""), ((404, "no such room"), 404, b"no such room")):
            client = FakeClient(extensions={"websocket.http.response": {}})
            await Endpoint(filters=[Answer(reply)]).serve(client.scope, client.receive, client.send)
            assert (await client.next())["status"] == status and (await client.next())["body"] == body
        # Not an HTTP reply (a filter's bug), or a status that is not final: 500, as the threaded
        # server answers, and the bug logged.
        for reply in (("not", "a", "reply", "!"), 101, (200, [("X-Bad", "a\r\nb")], "")):
            client = FakeClient(extensions={"websocket.http.response": {}})
            await Endpoint(filters=[Answer(reply)]).serve(client.scope, client.receive, client.send)
            assert (await client.next())["status"] == 500 and (await client.next())["body"] == b""
        with pytest.raises(ValueError):
            await endpoint({"type": "lifespan"}, None, None)
        with pytest.raises(ValueError):
            async with endpoint.accept({"type": "http"}, a.receive, a.send):
                pass
    run(main())
