"""A twspy.hub.Hub holding twspy.asyncio clients: delivery from other threads and other nodes,
through each client's loop, with the same bounded outbox (1013) as the threaded server."""

from __future__ import annotations

import asyncio
import json
import threading

import twspy
from twspy.asyncio import Server, connect
from twspy.broker import MemoryBroker
from twspy.hub import Hub, TopicBroadcast
from twspy.message import TextMessage

T = 5.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def in_thread(fn, *args):
    """Run ``fn`` in another thread (as the hub's reader or an application thread would)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    await asyncio.get_running_loop().run_in_executor(None, thread.join, T)
    return result[0]


def test_hub_broadcast_send_to_and_presence_from_another_thread():
    async def main():
        with Hub() as hub:
            async with Server(("127.0.0.1", 0), hub=hub) as server:
                async with connect("ws://127.0.0.1:%d" % server.port) as a, \
                        connect("ws://127.0.0.1:%d" % server.port) as b:
                    while len(hub.presence()) < 2:
                        await asyncio.sleep(0.01)
                    ids = sorted(hub.presence())
                    assert all(i.startswith(hub.node_id + ".") for i in ids)
                    await in_thread(hub.broadcast, "to everyone")
                    assert await asyncio.wait_for(a.recv(), T) == TextMessage("to everyone")
                    assert await asyncio.wait_for(b.recv(), T) == TextMessage("to everyone")
                    target = _server_side(server, a)
                    await in_thread(hub.send_to, target.id, b"only you")
                    assert (await asyncio.wait_for(a.recv(), T)).payload == b"only you"
                    try:
                        await b.recv(timeout=0.05)
                        raise AssertionError("b received a message sent to a")
                    except TimeoutError:
                        pass
                    await in_thread(hub.disconnect, target.id, 4000, "kicked")
                    await asyncio.wait_for(a.wait_closed(), T)
                    assert (a.close_code, a.close_reason) == (4000, "kicked")
    run(main())


def _server_side(server, conn):
    """The server's connection for a client connection (matched by the client's local port)."""
    port = conn.transport.get_extra_info("sockname")[1]
    return next(c for c in server.clients if c.address[1] == port)


def test_threaded_and_asyncio_servers_in_one_cluster_with_topics():
    broker = MemoryBroker()

    async def main():
        with Hub(broker) as hub1, Hub(broker) as hub2:
            threaded = twspy.Server(("127.0.0.1", 0), hub=hub1, filters=[TopicBroadcast()])
            thread = threaded.serve_in_thread()
            try:
                async with Server(("127.0.0.1", 0), hub=hub2, filters=[TopicBroadcast()]) as server:
                    async with connect("ws://127.0.0.1:%d" % server.port) as aio:
                        hello = json.loads((await asyncio.wait_for(aio.recv(), T)).payload)
                        assert hello["type"] == "set_conn_id" and hello["conn_id"].startswith(hub2.node_id)
                        await aio.send(json.dumps({"type": "subscribe", "topic": "news/#", "id": 1}))
                        ack = json.loads((await asyncio.wait_for(aio.recv(), T)).payload)
                        assert ack["type"] == "ack"

                        def threaded_client():
                            with twspy.connect("ws://127.0.0.1:%d" % threaded.address[1]) as conn:
                                conn.recv(timeout=T)  # set_conn_id
                                conn.send(json.dumps({"type": "publish", "topic": "news/today", "data": "hi",
                                                      "id": 2}))
                                return json.loads(conn.recv(timeout=T).payload)["type"]

                        assert await in_thread(threaded_client) == "ack"
                        message = json.loads((await asyncio.wait_for(aio.recv(), T)).payload)
                        assert message["type"] == "message" and message["data"] == "hi"
                        assert message["topic"] == "news/today"
            finally:
                threaded.shutdown()
                thread.join(T)
    run(main())


def test_hub_delivery_to_a_client_that_does_not_read_is_bounded_by_1013():
    async def main():
        closed = asyncio.Event()
        codes = []

        class Watch(Server):
            async def onclose(self, client, code, reason):
                codes.append(code)
                closed.set()

        with Hub() as hub:
            async with Watch(("127.0.0.1", 0), hub=hub, extensions=[], max_outbox=128 * 1024,
                             close_timeout=0.2) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.transport.pause_reading()  # never reads
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                while not hub.presence():
                    await asyncio.sleep(0.01)

                def flood():
                    for _ in range(2000):  # 128 MiB if nothing bounded it
                        hub.broadcast(b"x" * 65536)
                        if closed.is_set():
                            return True
                    return closed.is_set()

                await in_thread(flood)
                await asyncio.wait_for(closed.wait(), T)
                assert codes == [1013]
                writer.close()
    run(main())
