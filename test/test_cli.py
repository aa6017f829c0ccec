"""The command line: ``python -m twspy echo`` and ``connect``, mostly in process through ``main(argv)``,
with a few subprocess runs for what only a real process shows (signals, stdin that stays open)."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from test_proxies import microsocks  # noqa: F401 (a fixture)

import twspy
from twspy.cli import EchoServer, _size, main

from conftest import url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_twspy(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "twspy"] + list(args), cwd=ROOT, env=env, **kwargs)


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*argv, stdin="")``: run ``main(argv)`` in this process; returns (status, stdout, stderr)."""
    def run(*argv, stdin=""):
        monkeypatch.setattr(sys, "stdin", stdin if not isinstance(stdin, str) else io.StringIO(stdin))
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err
    return run


class Recording(EchoServer):
    """An echo server that records closes and pings, and closes with ``close_code`` after ``close_after``
    messages (None: never)."""

    close_after = None
    close_code = 1000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.closes, self.pings, self.received = [], [], []
        self.closed = threading.Event()

    def onmessage(self, client, message):
        self.received.append(message.payload)
        client.send(message)
        if self.close_after is not None and len(self.received) >= self.close_after:
            client.close(self.close_code, "done")

    def onping(self, client, payload):
        self.pings.append(payload)

    def onclose(self, client, code, reason):
        self.closes.append(code)
        self.closed.set()


def closing_after(n, code=1000):
    return type("CloseAfter%d" % n, (Recording,), {"close_after": n, "close_code": code})


# -- echo -----------------------------------------------------------------------------------------
@pytest.fixture
def echo_process(twspy_process):
    return functools.partial(twspy_process, "echo")


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


def test_echo_server_no_compression_and_sigterm(echo_process):
    proc, port = echo_process("--no-compression", "--subprotocol", "chat")
    with twspy.connect("ws://127.0.0.1:%d/" % port, protocols=["chat"]) as conn:
        assert conn.sock.extensions == [] and conn.protocol == "chat"
        conn.send("x")
        assert conn.recv(5).payload == "x"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


@pytest.mark.parametrize("command", [["echo"], ["serve"], ["proxy", "--upstream", "ws://127.0.0.1:1/"]])
def test_busy_port_is_one_line(cli, command):
    # Issue 17 item 5: echo printed a traceback on a busy port; all three print one line, exit 1.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        status, out, err = cli(*command, "--port", str(port))
    assert status == 1
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1:%d" % port in err
    assert "Traceback" not in err


def test_version(cli):
    status, out, _ = cli("--version")
    state = "on" if twspy.speedups_enabled() else "off"
    assert status == 0 and out == "twspy %s\nspeedups: %s\n" % (twspy.__version__, state)


@pytest.mark.parametrize("no_speedups", ["1", ""])
def test_version_says_whether_the_c_accelerator_is_used(no_speedups):
    # Issue 13: `python3 -m twspy --version` tells the speedups' state; TWSPY_NO_SPEEDUPS=1 turns them off.
    built = importlib.util.find_spec("twspy._speedups") is not None
    env = dict(os.environ, TWSPY_NO_SPEEDUPS=no_speedups)
    out = subprocess.run([sys.executable, "-m", "twspy", "--version"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    state = "on" if built and not no_speedups else "off"
    assert out.stdout == "twspy %s\nspeedups: %s\n" % (twspy.__version__, state)


def test_usage_errors(cli):
    assert cli("connect")[0] == 2
    assert cli("connect", "ws://x/", "--wait", "soon")[0] == 2
    status, _, err = cli("connect", "ws://x/", "--header", "no colon")
    assert status == 2 and "bad --header" in err
    status, _, err = cli("connect", "ws://x/", "--proxy", "http://p:1", "--unix", "/tmp/x")
    assert status == 2 and "not both" in err


# -- connect: stdin, -x, --wait, exit statuses ------------------------------------------------------
def test_connect_pipes_lines_and_replies(cli, serve):
    server = serve(closing_after(2))
    status, out, err = cli("connect", url(server, "/cli"), "--header", "X-A: b", "-w", "inf",
                           stdin="hello\nκόσμε\n")
    assert status == 0, err
    assert out == "hello\nκόσμε\n"  # piped: the bare replies, one a line
    assert "connected to" in err and "closed: 1000" in err


def test_connect_closes_1000_after_the_wait(cli, serve):
    server = serve(Recording)
    status, out, err = cli("connect", url(server), "-w", "0", "-q", stdin="")
    assert status == 0 and out == "" and err == ""
    assert server.closed.wait(5) and server.closes == [1000]


class EOFSignallingStdin(io.StringIO):
    """A stdin whose end sets ``ended`` as the client reads it."""

    def __init__(self, text):
        super().__init__(text)
        self.ended = threading.Event()

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                self.ended.set()
                return
            yield line


def test_connect_waits_for_replies_after_stdin_ends(cli, serve):
    # Issue 17 item 3 (c): replies sent after the client's stdin ended were lost (it closed at once).
    stdin = EOFSignallingStdin("a\nb\nc\n")

    class LateReplies(Recording):
        def onmessage(self, client, message):
            self.received.append(message.payload)
            if len(self.received) == 3:
                assert stdin.ended.wait(5)
                for text in self.received:
                    client.send("re: " + text)
                client.close(1000)  # so that the client need not wait all of -w

    serve_it = serve(LateReplies)
    status, out, err = cli("connect", url(serve_it), "-w", "5", stdin=stdin)
    assert status == 0, err
    assert out == "re: a\nre: b\nre: c\n"


@pytest.mark.parametrize("code,status", [(1000, 0), (1001, 0), (1008, 1), (1009, 1), (4001, 1)])
def test_connect_exit_status_follows_the_close_code(cli, serve, code, status):
    # Issue 17 item 3 (b): exit 0 only for 1000/1001, else 1 and one line naming the code.
    server = serve(closing_after(1, code))
    result, out, err = cli("connect", url(server), "-x", "bye", "-w", "inf", "-q")
    assert result == status
    assert out == "bye\n"
    if status:
        assert err.count("\n") == 1 and "closed the connection with %d" % code in err and "done" in err
    else:
        assert err == ""


def test_connect_lost_without_close_frame(cli, serve):
    class Dropper(Recording):
        def onmessage(self, client, message):
            client.abort()

    server = serve(Dropper)
    status, _, err = cli("connect", url(server), "-x", "x", "-w", "inf", "-q")
    assert status == 1 and "without a close frame (1006)" in err


def test_connect_exits_when_the_server_closes_while_stdin_stays_open(cli, serve):
    # Issue 17 item 3 (a): it used to run on until a key was pressed.
    class Restarting(Recording):
        def onopen(self, client):
            client.close(1001, "restart")

    server = serve(Restarting)
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "r")
    try:
        status, out, err = cli("connect", url(server), stdin=stdin)
    finally:
        os.close(write_end)  # now the stdin thread reads EOF and ends
        for thread in threading.enumerate():
            if thread.name == "twspy-connect-stdin":
                thread.join(5)
        stdin.close()
    assert status == 0 and "closed: 1001 restart" in err
    assert server.closed.wait(5) and server.closes == [1001]


def test_connect_reads_a_real_file_descriptor(cli, serve):
    # stdin read with os.read (not through sys.stdin's buffer): CRLF, UTF-8 split across reads, no final newline
    server = serve(closing_after(3))
    read_end, write_end = os.pipe()
    os.write(write_end, "one\r\nκό".encode() + "σμε\nthree".encode())
    os.close(write_end)
    with os.fdopen(read_end, "r") as stdin:
        status, out, err = cli("connect", url(server), "-w", "inf", stdin=stdin)
    assert status == 0, err
    assert out == "one\nκόσμε\nthree\n"
    assert server.received == ["one", "κόσμε", "three"]


def test_connect_failure_is_one_line(cli):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, out, err = cli("connect", "ws://user:pw@127.0.0.1:%d/?token=s3cret" % port)
    assert status == 1 and err.count("\n") == 1
    assert "could not connect to ws://***@127.0.0.1:%d/?token=***" % port in err and "pw" not in err
    status, out, err = cli("connect", "wss://user:pw@127.0.0.1:99999/")
    assert status == 1 and "pw" not in err and "isn't a valid WebSocket URI" in err


def test_connect_handshake_refused(cli, serve):
    from twspy.filters import BearerAuth
    server = serve(EchoServer, filters=[BearerAuth("s3cret")])
    status, _, err = cli("connect", url(server))
    assert status == 1 and err.count("\n") == 1 and "HTTP 401" in err
    status, out, err = cli("connect", url(server), "-H", "Authorization: Bearer s3cret", "-x", "in", "-w", "0", "-q")
    assert status == 0 and err == ""


# -- connect: binary, slash commands, pings ----------------------------------------------------------
def test_connect_binary_hex_and_file(cli, serve, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xff\x10")
    server = serve(closing_after(2))
    status, out, err = cli("connect", url(server), "-b", "-w", "inf", stdin="de ad be ef\nzz\n@%s\n@%s\n" % (
        blob, tmp_path / "missing"))
    assert status == 0, err
    assert out == "deadbeef\n00ff10\n"
    assert "not hex" in err and "cannot read" in err
    assert server.received == [b"\xde\xad\xbe\xef", b"\x00\xff\x10"]


def test_connect_terminal_output(cli, serve, monkeypatch):
    server = serve(closing_after(2))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    status, out, _ = cli("connect", url(server), "-x", "text", "-x", "", "-w", "inf")
    assert status == 0 and out == "< text\n< \n"
    server = serve(closing_after(1))
    status, out, _ = cli("connect", url(server), "-b", "-x", "0102", "-w", "inf")
    assert out == "< (binary, 2 bytes) 0102\n"


def test_connect_slash_commands(cli, serve):
    server = serve(Recording)
    status, out, err = cli("connect", url(server), "--slash", "-P", "-w", "inf",
                           stdin="/ping hi\n//not a command\n/nope\n/close 1005\n/close x\n/close 4000 bye\nlost\n")
    assert status == 0, err  # a close we asked for, answered
    assert "< pong hi\n" in out and "/not a command\n" in out
    assert "unknown command /nope" in err and "/close:" in err
    assert server.closed.wait(5) and server.closes == [4000]
    assert server.pings == [b"hi"] and server.received == ["/not a command"]


def test_connect_without_slash_sends_lines_as_they_are(cli, serve):
    server = serve(closing_after(1))
    status, out, _ = cli("connect", url(server), "-w", "inf", stdin="/close\n")
    assert status == 0 and out == "/close\n"


def test_connect_shows_server_pings(cli, serve):
    class Pinger(Recording):
        def onopen(self, client):
            client.send_ping(b"p1")

        def onpong(self, client, payload):
            client.close(1000)

    server = serve(Pinger)
    status, out, _ = cli("connect", url(server), "-P", "-w", "inf")
    assert status == 0 and out == "< ping p1\n"


def test_connect_ping_interval(cli, serve):
    class PingClose(Recording):
        def onping(self, client, payload):
            client.close(1000)

    server = serve(PingClose)
    status, _, err = cli("connect", url(server), "--ping-interval", "0.05", "-w", "inf")
    assert status == 0, err


# -- connect: --unix and --proxy ------------------------------------------------------------------
def test_connect_unix(cli, tmp_path):
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def serve_one():
        raw, _ = listener.accept()
        ws = twspy.websocket(raw)
        ws.server_handshake(5)
        with twspy.Connection(ws) as conn:
            conn.send(conn.recv(5))
            conn.close(1000)

    thread = threading.Thread(target=serve_one)
    thread.start()
    try:
        status, out, err = cli("connect", "ws://unix.local/", "--unix", path, "-x", "via unix", "-w", "inf")
    finally:
        thread.join(5)
        listener.close()
    assert status == 0 and out == "via unix\n", err


def test_connect_proxy(cli, serve, microsocks):  # noqa: F811 (the fixture imported above)
    server = serve(closing_after(1))
    status, out, err = cli("connect", url(server), "--proxy", "socks5://user:s3cret@" + microsocks, "-x", "hi",
                           "-w", "inf")
    assert status == 0 and out == "hi\n", err
    status, _, err = cli("connect", url(server), "--proxy", "socks5://user:bad@" + microsocks)
    assert status == 1 and "refused the user and password" in err and "bad" not in err.replace("bad@", "")


def test_connect_no_proxy_ignores_the_environment(cli, serve, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    server = serve(closing_after(1))
    status, _, err = cli("connect", url(server), "-x", "x")
    assert status == 1 and "could not connect" in err
    status, out, err = cli("connect", url(server), "--no-proxy", "-x", "x", "-w", "inf")
    assert status == 0 and out == "x\n", err


# -- a few real processes ------------------------------------------------------------------------
def test_connect_process_pipes_and_exits(serve):
    server = serve(closing_after(2))
    proc = run_twspy("connect", url(server, "/cli"), "-w", "inf", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate("hello\nκόσμε\n", timeout=20)
    assert proc.returncode == 0, err
    assert out == "hello\nκόσμε\n"
    assert server.closed.wait(5) and server.closes == [1000]


def test_connect_process_exits_when_the_server_closes(serve):
    # stdin stays open (as at a terminal nobody types into): the process ends with the connection.
    server = serve(closing_after(1, 1008))
    proc = run_twspy("connect", url(server), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(20) == 1
        assert "1008" in proc.stderr.read() and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def test_connect_process_ctrl_c_closes_1000(serve):
    server = serve(Recording)
    proc = run_twspy("connect", url(server), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    try:
        assert "connected to" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert server.closed.wait(5) and server.closes == [1000]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def test_connect_process_failure_exit_code():
    proc = run_twspy("connect", "ws://127.0.0.1:1/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "could not connect" in err


@pytest.mark.parametrize("text,value", [("100", 100), ("16M", 16 << 20), ("16MiB", 16 << 20), ("1k", 1024),
                                        ("1.5m", 3 << 19)])
def test_size(text, value):
    assert _size(text) == value


def test_open_timeout_is_the_former_spelling_of_handshake_timeout(cli, serve):
    """Issue 11: one name per option; --open-timeout still works, with a note on stderr."""
    server = serve(closing_after(1))
    status, out, err = cli("connect", url(server, "/cli"), "--open-timeout", "5", "-w", "inf", stdin="hi\n")
    assert status == 0, err
    assert out == "hi\n"
    assert "--open-timeout is deprecated; use --handshake-timeout" in err
    status, out, err = cli("connect", url(server, "/cli"), "--handshake-timeout", "5", "-w", "inf", stdin="hi\n")
    assert status == 0 and "deprecated" not in err
