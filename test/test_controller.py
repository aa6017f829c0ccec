"""Queue controller: driving a Connection from another thread (``queue_messages``).

``pop_in_message``, ``push_out_message`` and ``should_stop`` over socket pairs whose two ends
are twspy connections, with ``receive_forever`` in a thread or without one (direct mode).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import twspy
from twspy.errors import ConnectionClosed, InvalidState
from twspy.server import ServerConnection

from conftest import opened_websocket, wait_for

TIMEOUT = 5


@pytest.fixture
def twins():
    """``twins(**server_options)``: (server Connection, client Connection) over a socket pair."""
    made = []

    def make(server_class=twspy.Connection, client_class=twspy.Connection, **options):
        a, b = socket.socketpair()
        server = server_class(opened_websocket(a, True, timeout=TIMEOUT), close_timeout=TIMEOUT, **options)
        client = client_class(opened_websocket(b, False, timeout=TIMEOUT), close_timeout=TIMEOUT)
        made.append((server, client))
        return server, client

    yield make
    for server, client in made:
        server.abort()
        client.abort()


def start(target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def start_reader(conn):
    """receive_forever in a thread, once it is running: pops take from the queue, not the socket."""
    thread = start(conn.receive_forever)
    wait_for(lambda: conn._in_queue.feeders)
    return thread


def join(*threads):
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def drain(conn):
    """Read ``conn`` until it closes (a peer that answers the closing handshake)."""
    for _ in conn:
        pass


def echo_controller(conn):
    while True:
        message = conn.pop_in_message(timeout=TIMEOUT)
        if message is None:
            return
        try:
            conn.push_out_message(message)
        except ConnectionClosed:
            return


class TestQueuedMode:
    """receive_forever runs in one thread, a controller thread pops and pushes."""

    def test_echo_keeps_order_and_types(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        controller = start(echo_controller, server)
        sent = [("text %d" % i) if i % 2 else ("binary %d" % i).encode() for i in range(1000)]
        got = []
        receiver = start(lambda: got.extend(client.recv(TIMEOUT) for _ in sent))
        for message in sent:
            client.send(message)
        join(receiver)
        assert [m.payload for m in got] == sent
        assert all(isinstance(m, twspy.TextMessage) == isinstance(p, str) for m, p in zip(got, sent))
        client.close()
        join(reader, controller)
        assert server.closed and server.close_code == 1000

    def test_message_objects(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        server.push_out_message(twspy.TextMessage("t"))
        server.push_out_message(twspy.BinaryMessage(b"b"))
        server.push_out_message(bytearray(b"ba"))
        server.push_out_message(memoryview(b"mv"))
        received = [client.recv(TIMEOUT) for _ in range(4)]
        assert [(type(m), m.payload) for m in received] == [
            (twspy.TextMessage, "t"), (twspy.BinaryMessage, b"b"),
            (twspy.BinaryMessage, b"ba"), (twspy.BinaryMessage, b"mv")]
        with pytest.raises(TypeError):
            server.push_out_message(42)
        client.close()
        join(reader)

    def test_onmessage_runs_before_the_queue(self, twins):
        seen = []

        class Recorder(twspy.Connection):
            def onmessage(self, message):
                seen.append(message.payload)

        server, client = twins(server_class=Recorder, queue_messages=True)
        reader = start_reader(server)
        client.send("one")
        assert server.pop_in_message(TIMEOUT).payload == "one"
        assert seen == ["one"]
        client.close()
        join(reader)

    def test_none_after_peer_closes(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        client.send("a")
        client.send(b"b")
        client.close()
        assert server.pop_in_message(TIMEOUT).payload == "a"
        assert server.pop_in_message(TIMEOUT).payload == b"b"
        assert server.pop_in_message(TIMEOUT) is None
        assert server.pop_in_message(TIMEOUT) is None  # and stays so
        join(reader)
        assert server.close_code == 1000 and server.should_stop()

    def test_none_after_local_close(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        peer = start(drain, client)
        server.close(1001, "bye")
        assert server.pop_in_message(TIMEOUT) is None
        join(reader, peer)
        assert client.close_code == 1001 and client.close_reason == "bye"

    def test_none_after_abort(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        popped = []
        waiter = start(lambda: popped.append(server.pop_in_message(TIMEOUT)))
        server.abort()
        join(waiter, reader)
        assert popped == [None]

    def test_timeout(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            server.pop_in_message(timeout=0.05)
        assert time.monotonic() - started < TIMEOUT
        with pytest.raises(TimeoutError):
            server.pop_in_message(timeout=0)
        client.send("late")
        assert server.pop_in_message(TIMEOUT).payload == "late"  # nothing lost by the timeouts
        client.close()
        join(reader)

    def test_pop_from_the_reading_thread_is_refused(self, twins):
        errors = []

        class Confused(twspy.Connection):
            def onmessage(self, message):
                try:
                    self.pop_in_message(TIMEOUT)
                except InvalidState as exc:
                    errors.append(exc)

        server, client = twins(server_class=Confused, queue_messages=True)
        reader = start_reader(server)
        client.send("x")  # the queue is empty when onmessage runs: it would wait for itself
        assert server.pop_in_message(TIMEOUT).payload == "x"
        assert len(errors) == 1
        client.close()
        join(reader)

    def test_push_after_close_raises(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        client.close()
        join(reader)
        with pytest.raises(ConnectionClosed) as info:
            server.push_out_message("too late")
        assert info.value.code == 1000

    def test_push_while_closing_raises(self, twins):
        server, client = twins(queue_messages=True)
        server.start_close()
        assert server.should_stop() and not server.closed
        with pytest.raises(ConnectionClosed):
            server.push_out_message("too late")
        server.abort()


class TestBackpressure:
    """A full in-queue makes the reading thread wait: TCP slows the peer, nothing is dropped."""

    def make(self, twins):
        handled = []
        fourth = threading.Event()

        class Counting(twspy.Connection):
            def onmessage(self, message):
                handled.append(message.payload)
                if len(handled) == 4:
                    fourth.set()

        server, client = twins(server_class=Counting, queue_messages=True, max_queue=2)
        return server, client, handled, fourth

    def test_reader_waits_and_nothing_is_lost(self, twins):
        server, client, handled, fourth = self.make(twins)
        reader = start_reader(server)
        for i in range(10):
            client.send("m%d" % i)
        # Two messages queued, a third in the reader's hands: it waits for room.
        wait_for(lambda: len(handled) == 3 and len(server._in_queue) == 2)
        assert not fourth.wait(0.2)  # bounded check that the reader does not go on reading
        assert len(server._in_queue) == 2
        assert [server.pop_in_message(TIMEOUT).payload for _ in range(10)] == ["m%d" % i for i in range(10)]
        client.close()
        assert server.pop_in_message(TIMEOUT) is None
        join(reader)

    def test_close_while_the_reader_waits(self, twins):
        server, client, handled, _ = self.make(twins)
        reader = start_reader(server)
        for i in range(3):
            client.send("m%d" % i)
        wait_for(lambda: len(handled) == 3 and len(server._in_queue) == 2)
        peer = start(drain, client)
        started = time.monotonic()
        server.close()
        join(reader, peer)
        assert time.monotonic() - started < 2
        assert server.close_code == 1000
        # what was received before the close is still there, then the end
        assert [server.pop_in_message(TIMEOUT).payload for _ in range(3)] == ["m0", "m1", "m2"]
        assert server.pop_in_message(TIMEOUT) is None

    def test_peer_close_while_the_reader_waits(self, twins):
        server, client, handled, _ = self.make(twins)
        reader = start_reader(server)
        for i in range(5):
            client.send("m%d" % i)
        wait_for(lambda: len(handled) == 3)
        closer = start(client.close)
        # The peer's close frame waits behind the unread messages: popping lets it through.
        assert [server.pop_in_message(TIMEOUT).payload for _ in range(5)] == ["m%d" % i for i in range(5)]
        assert server.pop_in_message(TIMEOUT) is None
        join(closer, reader)
        assert client.close_code == 1000

    def test_abort_while_the_reader_waits(self, twins):
        server, client, handled, _ = self.make(twins)
        reader = start_reader(server)
        for i in range(3):
            client.send("m%d" % i)
        wait_for(lambda: len(handled) == 3 and len(server._in_queue) == 2)
        server.abort()
        join(reader)
        assert [server.pop_in_message(TIMEOUT).payload for _ in range(3)] == ["m0", "m1", "m2"]
        assert server.pop_in_message(TIMEOUT) is None


class TestShouldStop:
    def test_local_close(self, twins):
        server, client = twins(queue_messages=True)
        assert not client.should_stop()
        client.start_close()  # the client: the server closes TCP first, so nobody waits for an EOF
        assert client.should_stop() and not client.closed
        assert server.pop_in_message(TIMEOUT) is None  # reads the close frame, answers it
        assert server.should_stop() and server.closed
        client.close()  # reads the answer
        assert client.closed and client.should_stop()

    def test_peer_close(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        assert not server.should_stop()
        client.close()
        join(reader)
        assert server.should_stop() and client.should_stop()

    def test_producer_loop_ends(self, twins):
        server, client = twins(queue_messages=True)
        reader = start_reader(server)
        pushed = []

        def produce():
            while not server.should_stop():
                try:
                    server.push_out_message("tick %d" % len(pushed))
                except ConnectionClosed:
                    break  # the close may land between the check and the push
                pushed.append(1)

        producer = start(produce)
        assert client.recv(TIMEOUT).payload == "tick 0"
        client.start_close()
        drain(client)
        join(producer, reader)
        assert server.should_stop() and pushed

    def test_abort(self, twins):
        server, client = twins()
        server.abort()
        assert server.should_stop()


class TestDirectMode:
    """No thread runs receive_forever: pop_in_message reads the socket itself."""

    def test_pop_reads_the_socket(self, twins):
        server, client = twins(queue_messages=True)
        client.send("hello")
        client.send(b"\x00\x01")
        first = server.pop_in_message(TIMEOUT)
        second = server.pop_in_message(TIMEOUT)
        assert (type(first), first.payload) == (twspy.TextMessage, "hello")
        assert (type(second), second.payload) == (twspy.BinaryMessage, b"\x00\x01")
        with pytest.raises(TimeoutError):
            server.pop_in_message(timeout=0.05)
        server.push_out_message("back")
        assert client.recv(TIMEOUT).payload == "back"
        client.start_close()
        assert server.pop_in_message(TIMEOUT) is None  # answers the close on the way
        client.close()
        assert server.pop_in_message(TIMEOUT) is None

    def test_reader_starting_during_a_direct_pop(self, twins):
        seen = []

        class Recorder(twspy.Connection):
            def onmessage(self, message):
                seen.append(message.payload)

        server, client = twins(server_class=Recorder, queue_messages=True)
        popped = []
        popper = start(lambda: popped.append(server.pop_in_message(TIMEOUT)))
        wait_for(lambda: server._readers == 1)  # the pop is reading the socket
        reader = start(server.receive_forever)  # and waits for the read lock
        wait_for(lambda: server._in_queue.feeders)
        client.send("first")
        join(popper)
        assert [m.payload for m in popped] == ["first"]
        assert seen == ["first"]  # handed to receive_forever: onmessage saw it too
        client.close()
        join(reader)

    def test_switch_to_queued_mode(self, twins):
        server, client = twins(queue_messages=True)
        client.send("direct")
        assert server.pop_in_message(TIMEOUT).payload == "direct"
        reader = start_reader(server)
        for i in range(20):
            client.send("q%d" % i)
        assert [server.pop_in_message(TIMEOUT).payload for _ in range(20)] == ["q%d" % i for i in range(20)]
        client.close()
        assert server.pop_in_message(TIMEOUT) is None
        join(reader)

    def test_client_from_connect(self, serve):
        class Echo(twspy.Server):
            def onmessage(self, client, message):
                client.send(message)

        server = serve(Echo)
        conn = twspy.connect("ws://127.0.0.1:%d/" % server.address[1], queue_messages=True, handshake_timeout=TIMEOUT)
        try:
            for i in range(5):
                conn.push_out_message("m%d" % i)
            assert [conn.pop_in_message(TIMEOUT).payload for _ in range(5)] == ["m%d" % i for i in range(5)]
        finally:
            conn.close()
        assert conn.pop_in_message(TIMEOUT) is None


def test_invalid_state_without_queue_messages(twins):
    server, client = twins()
    with pytest.raises(InvalidState):
        server.pop_in_message(timeout=0)
    server.push_out_message("push works without it")
    assert client.recv(TIMEOUT).payload == "push works without it"


def test_server_connection_option(serve):
    """A Server's client made with queue_messages: the server thread reads, a controller answers."""
    ready = threading.Event()
    clients = []

    class Queued(ServerConnection):
        def __init__(self, server, sock, **options):
            super().__init__(server, sock, **{**options, "queue_messages": True})

    class Controlled(twspy.Server):
        connection_class = Queued

        def onopen(self, client):
            clients.append(client)
            ready.set()

    server = serve(Controlled)
    conn = twspy.connect("ws://127.0.0.1:%d/" % server.address[1], handshake_timeout=TIMEOUT)
    try:
        assert ready.wait(TIMEOUT)
        controller = start(echo_controller, clients[0])
        conn.send("via the controller")
        assert conn.recv(TIMEOUT).payload == "via the controller"
    finally:
        conn.close()
    join(controller)


def test_server_option_queue_messages(serve):
    """Server(queue_messages=True): a controller thread per client answers through the queues."""
    controllers = []

    class Controlled(twspy.Server):
        def onopen(self, client):
            def control():
                while (message := client.pop_in_message(TIMEOUT)) is not None:
                    client.push_out_message("got " + message.payload)
            thread = threading.Thread(target=control)
            controllers.append(thread)
            thread.start()

    server = serve(Controlled, queue_messages=True)
    with twspy.connect("ws://127.0.0.1:%d/" % server.address[1], handshake_timeout=TIMEOUT) as conn:
        for i in range(3):
            conn.send("m%d" % i)
        assert [conn.recv(TIMEOUT).payload for _ in range(3)] == ["got m0", "got m1", "got m2"]
    for thread in controllers:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
