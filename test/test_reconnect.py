"""twspy.reconnect: a new connection after each loss, with backoff; stops on final closes and answers."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

import twspy
from twspy.cli import EchoServer

from conftest import url


class RetryLog(logging.Handler):
    """Counts twspy.client's "retrying" lines and lets a test wait for the next one."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []
        self.cond = threading.Condition()

    def emit(self, record):
        with self.cond:
            self.lines.append(record.getMessage())
            self.cond.notify_all()

    def wait_for(self, count, timeout=10):
        with self.cond:
            assert self.cond.wait_for(lambda: len([x for x in self.lines if "retrying" in x]) >= count, timeout), \
                self.lines


@pytest.fixture
def retry_log():
    handler = RetryLog()
    logger = logging.getLogger("twspy.client")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def restartable_echo(port=0):
    server = EchoServer(("127.0.0.1", port))
    return server, server.serve_in_thread()


def stop(server, thread):
    server.shutdown()
    thread.join(5)
    assert not thread.is_alive()


def test_reconnects_across_a_server_restart_on_the_same_port(retry_log):
    servers = [restartable_echo()]
    port = servers[0][0].address[1]
    seen = []

    def restart_once_refused():
        retry_log.wait_for(2)  # "closed with 1001; retrying", then a refused try: the port is free
        servers.append(restartable_echo(port))

    restarter = threading.Thread(target=restart_once_refused)
    try:
        for n, conn in enumerate(twspy.reconnect("ws://127.0.0.1:%d/" % port, first_delay=0.01, max_delay=0.05,
                                                 handshake_timeout=5)):
            conn.send("try %d" % n)
            seen.append(conn.recv(5).payload)
            if n == 1:
                break
            stopper = threading.Thread(target=stop, args=servers[0])
            stopper.start()  # the connection is lost (1001), the port refuses for a while
            with pytest.raises(twspy.ConnectionClosed) as info:
                conn.recv(5)
            stopper.join(10)
            assert info.value.code == 1001
            restarter.start()
    finally:
        restarter.join(10)
        for server in servers[1:]:
            stop(*server)
    assert seen == ["try 0", "try 1"]
    assert "ws://127.0.0.1:%d/: closed with 1001; retrying in" % port in retry_log.lines[0]
    assert "ConnectionRefusedError" in retry_log.lines[1]


class Closer(EchoServer):
    code = 1000

    def onmessage(self, client, message):
        client.close(self.code, "bye")


@pytest.mark.parametrize("code,again", [(1000, False), (1008, False), (1011, True), (1012, True), (4001, True)])
def test_final_close_codes(serve, code, again):
    server = serve(type("C%d" % code, (Closer,), {"code": code}))
    opened = 0
    for conn in twspy.reconnect(url(server), first_delay=0.001, handshake_timeout=5):
        opened += 1
        conn.send("x")
        with pytest.raises(twspy.ConnectionClosed):
            conn.recv(5)
        assert conn.close_code == code
        if opened == 2:
            break
    assert opened == (2 if again else 1)


def test_final_codes_configurable(serve):
    server = serve(type("C", (Closer,), {"code": 1008}))
    opened = 0
    for conn in twspy.reconnect(url(server), first_delay=0.001, final_codes=(), handshake_timeout=5):
        opened += 1
        conn.send("x")
        list(conn)
        if opened == 3:
            break
    assert opened == 3


@pytest.mark.parametrize("status,retried", [(403, False), (404, False), (400, False), (401, False), (503, True)])
def test_handshake_answers(status, retried):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    requests = []

    def answer():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                requests.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 %d No\r\nContent-Length: 0\r\n\r\n" % status)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with pytest.raises(twspy.HandshakeError) as info:
            for _ in twspy.reconnect("ws://127.0.0.1:%d/" % listener.getsockname()[1], first_delay=0.001,
                                     max_tries=3, handshake_timeout=5):
                pytest.fail("no connection expected")
        assert info.value.status == status
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)
    assert len(requests) == (3 if retried else 1)


def test_break_closes_the_connection(serve):
    server = serve(EchoServer)
    gen = twspy.reconnect(url(server), handshake_timeout=5)
    conn = next(gen)
    gen.close()  # what leaving the for loop does once nothing refers to it
    assert conn.closed and conn.close_code == 1000


def test_stop_event_ends_the_wait(retry_log):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    stop_event = threading.Event()
    results = []

    def run():
        results.extend(twspy.reconnect("ws://127.0.0.1:%d/" % port, first_delay=30, stop=stop_event,
                                       handshake_timeout=5))

    thread = threading.Thread(target=run)
    thread.start()
    retry_log.wait_for(1)
    stop_event.set()
    thread.join(5)
    assert not thread.is_alive() and results == []


def test_invalid_uri_is_not_retried():
    with pytest.raises(twspy.InvalidURI):
        next(twspy.reconnect("http://example.com/"))
