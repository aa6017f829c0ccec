"""The command line: ``python -m twspy echo`` and ``python -m twspy connect``, as subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

import twspy
from twspy.cli import EchoServer, _size

from conftest import url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_twspy(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "twspy"] + list(args), cwd=ROOT, env=env, **kwargs)


@pytest.fixture
def echo_process():
    procs = []

    def start(*args):
        proc = run_twspy("echo", "--port", "0", *args, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stderr.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        return proc, int(match.group(1))

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()


def test_echo_server(echo_process):
    proc, port = echo_process("--max-size", "2M")
    with twspy.connect("ws://127.0.0.1:%d/any/path" % port, max_size=4 << 20) as conn:
        assert [c.name for c in conn.sock.extensions] == ["permessage-deflate"]
        conn.send("text")
        assert conn.recv(5) == twspy.TextMessage("text")
        conn.send(b"\x00" * (2 << 20))
        assert conn.recv(5) == twspy.BinaryMessage(b"\x00" * (2 << 20))
        conn.send(b"\x00" * ((2 << 20) + 1))
        with pytest.raises(twspy.ConnectionClosed) as info:
            conn.recv(5)
        assert info.value.code == 1009
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert "open" in proc.stderr.read()  # connections are logged to stderr


def test_echo_server_no_compression(echo_process):
    proc, port = echo_process("--no-compression", "--subprotocol", "chat")
    with twspy.connect("ws://127.0.0.1:%d/" % port, protocols=["chat"]) as conn:
        assert conn.sock.extensions == [] and conn.protocol == "chat"
        conn.send("x")
        assert conn.recv(5).payload == "x"


def test_connect_interactive(serve):
    closes = []

    class Recording(EchoServer):
        def onclose(self, client, code, reason):
            closes.append(code)

    server = serve(Recording)
    proc = run_twspy("connect", url(server, "/cli"), "--header", "X-A: b", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate("hello\nκόσμε\n", timeout=20)
    assert proc.returncode == 0, err
    assert "< hello" in out and "< κόσμε" in out
    assert "connected" in err
    assert closes == [1000]


def test_connect_failure_exit_code():
    proc = run_twspy("connect", "ws://127.0.0.1:1/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "could not connect" in err


@pytest.mark.parametrize("text,value", [("100", 100), ("16M", 16 << 20), ("16MiB", 16 << 20), ("1k", 1024),
                                        ("1.5m", 3 << 19)])
def test_size(text, value):
    assert _size(text) == value
