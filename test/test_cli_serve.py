"""The command line's ``serve``: ``python -m twspy serve`` as a subprocess, driven by twspy clients."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

import twspy
import twspy.server
from twspy.cli import _SERVE_DEFAULTS, FILTER_ALIASES, UsageError, _parser, load_filter_class, main
from twspy.handshake import build_request, make_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10
BANNER = r"twspy serve on ws://127\.0\.0\.1:(\d+)/ \(filters: ([^;)]*)"


def env_with(pythonpath=()):
    return dict(os.environ, PYTHONPATH=os.pathsep.join((ROOT,) + tuple(pythonpath)), PYTHONUNBUFFERED="1")


class Process:
    """A ``python -m twspy`` child whose stdout and stderr lines are read by two threads."""

    def __init__(self, args, pythonpath=()):
        self.proc = subprocess.Popen([sys.executable, "-m", "twspy"] + list(args), cwd=ROOT, env=env_with(pythonpath),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = {"out": [], "err": []}
        self.queues = {"out": queue.Queue(), "err": queue.Queue()}
        self.readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for reader in self.readers:
            reader.start()

    def _read(self, name, stream):
        for line in stream:
            self.queues[name].put(line)
        self.queues[name].put(None)

    def expect(self, pattern, stream="err", timeout=TIMEOUT):
        """The match of the first new line of ``stream`` that matches ``pattern``."""
        while True:
            try:
                line = self.queues[stream].get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("no line matching %r within %ss; got %r" % (pattern, timeout,
                                                                                 self.lines[stream])) from None
            if line is None:
                self.queues[stream].put(None)
                raise AssertionError("no line matching %r before EOF; got %r" % (pattern, self.lines[stream]))
            self.lines[stream].append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def started(self):
        """``(port, filter names)`` from the banner on stderr."""
        match = self.expect(BANNER)
        return int(match.group(1)), match.group(2).split(", ")

    def stop(self):
        """SIGTERM by pid (a clean shutdown, like Ctrl-C), then the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            self.close()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for reader in self.readers:
            reader.join(TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def twspy_process():
    started = []

    def start(*args, pythonpath=()):
        process = Process(args, pythonpath)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def cli(capsys):
    """``cli(*argv)``: ``main(argv)`` in this process, for commands that exit by themselves."""
    def run(*argv):
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err
    return run


@pytest.fixture
def running(monkeypatch):
    """``running(*argv)``: ``main(argv)`` serving in a thread of this process; returns the Server it runs.

    Stopped (server.shutdown(), as Ctrl-C would) at the end; ``running.statuses`` holds main's results.
    """
    servers, threads, statuses = [], [], []
    ready = threading.Event()
    original_run = twspy.server.Server.run

    def recording_run(self):
        servers.append(self)
        ready.set()
        original_run(self)

    monkeypatch.setattr(twspy.server.Server, "run", recording_run)

    def start(*argv):
        ready.clear()
        thread = threading.Thread(target=lambda: statuses.append(main(list(argv))))
        thread.start()
        threads.append(thread)
        assert ready.wait(TIMEOUT), statuses
        return servers[-1]

    start.statuses = statuses
    yield start
    for server in servers:
        server.shutdown()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def run_to_exit(*args, pythonpath=()):
    """Run a ``python -m twspy`` that should exit by itself: ``(status, stdout, stderr)``."""
    proc = subprocess.run([sys.executable, "-m", "twspy"] + list(args), cwd=ROOT, env=env_with(pythonpath),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def ws(port, path="/", **kwargs):
    return twspy.connect("ws://127.0.0.1:%d%s" % (port, path), handshake_timeout=TIMEOUT, **kwargs)


def upgrade_status(port, path="/", headers=()):
    """The status line the server answers to an upgrade request sent on a raw socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(build_request("127.0.0.1:%d" % port, path, make_key(), headers=headers))
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def write_config(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


# -- the default chain and bundled filters ---------------------------------------------------------

def test_default_chain_is_a_chat(twspy_process):
    process = twspy_process("serve", "--port", "0")
    port, filters = process.started()
    assert filters == ["Broadcast"]
    with ws(port, "/room") as a:
        a.send("a here")
        assert a.recv(TIMEOUT).payload == "a here"  # the sender gets it too: a is a member now
        with ws(port, "/room") as b:
            b.send("b here")
            assert b.recv(TIMEOUT).payload == "b here"
            assert a.recv(TIMEOUT).payload == "b here"
            a.send("κόσμε")
            assert a.recv(TIMEOUT).payload == "κόσμε"
            assert b.recv(TIMEOUT).payload == "κόσμε"
            b.send(b"\x00\xff")
            assert a.recv(TIMEOUT).payload == b"\x00\xff"
    assert process.stop() == 0  # SIGTERM stops it like Ctrl-C
    process.expect("stopped")


def test_echo_filter(twspy_process):
    process = twspy_process("serve", "--port", "0", "-f", "echo", "--no-compression", "--max-size", "1k")
    port, filters = process.started()
    assert filters == ["Echo"]
    with ws(port) as conn:
        assert conn.sock.extensions == []
        conn.send("text")
        assert conn.recv(TIMEOUT) == twspy.TextMessage("text")
        conn.send(b"\x01" * 1024)
        assert conn.recv(TIMEOUT) == twspy.BinaryMessage(b"\x01" * 1024)
        conn.send(b"\x01" * 1025)
        with pytest.raises(twspy.ConnectionClosed) as info:
            conn.recv(TIMEOUT)
        assert info.value.code == 1009


def test_log_filter_prints_to_stdout(twspy_process):
    process = twspy_process("serve", "--port", "0", "-f", "twspy.filters:Log", "-f", "twspy.filters.Echo")
    port, filters = process.started()
    assert filters == ["Log", "Echo"]
    with ws(port, "/logged?token=hidden") as conn:
        conn.send("hello")
        assert conn.recv(TIMEOUT).payload == "hello"
    open_line = process.expect(r"^\d\d:\d\d:\d\d (\S+) open (\S+)$", "out")
    cid = open_line.group(1)
    assert open_line.group(2) == "/logged?token=***"
    process.expect(r"^\d\d:\d\d:\d\d %s message 'hello'$" % re.escape(cid), "out")
    process.expect(r"^\d\d:\d\d:\d\d %s close 1000$" % re.escape(cid), "out")
    assert process.stop() == 0
    assert "hidden" not in "".join(process.lines["out"] + process.lines["err"])  # nor in the server's log


# -- --token ----------------------------------------------------------------------------------------

def test_token_401_without_101_with(twspy_process):
    process = twspy_process("serve", "--port", "0", "--token", "abc", "--token", "def", "-f", "echo")
    port, filters = process.started()
    assert filters == ["BearerAuth", "Echo"]  # auth first
    assert upgrade_status(port) == "HTTP/1.1 401 Unauthorized"
    assert upgrade_status(port, headers=[("Authorization", "Bearer nope")]) == "HTTP/1.1 401 Unauthorized"
    assert upgrade_status(port, headers=[("Authorization", "Bearer abc")]) == "HTTP/1.1 101 Switching Protocols"
    assert upgrade_status(port, "/?token=def") == "HTTP/1.1 101 Switching Protocols"
    with pytest.raises(twspy.HandshakeError) as info:
        ws(port)
    assert info.value.status == 401 and info.value.headers["WWW-Authenticate"] == 'Bearer realm="twspy"'
    with ws(port, headers={"Authorization": "Bearer def"}) as conn:
        conn.send("in")
        assert conn.recv(TIMEOUT).payload == "in"
    assert "abc" not in process.lines["err"][0]  # the banner names the filters, not the tokens


# -- config file -------------------------------------------------------------------------------------

def test_config_file(twspy_process, tmp_path):
    config = write_config(tmp_path, {"port": 0, "filters": ["log", "echo"], "token": "s3cret", "max-size": "1k",
                                     "no_compression": True, "quiet": False})
    process = twspy_process("serve", "-c", config)
    port, filters = process.started()
    assert filters == ["BearerAuth", "Log", "Echo"]
    assert upgrade_status(port) == "HTTP/1.1 401 Unauthorized"
    with ws(port, "/?token=s3cret") as conn:
        assert conn.sock.extensions == []
        conn.send("configured")
        assert conn.recv(TIMEOUT).payload == "configured"
        conn.send("x" * 1025)
        with pytest.raises(twspy.ConnectionClosed) as info:
            conn.recv(TIMEOUT)
        assert info.value.code == 1009
    process.expect(r" message 'configured'$", "out")


def test_command_line_wins_over_config(twspy_process, tmp_path):
    config = write_config(tmp_path, {"host": "192.0.2.1", "port": 1, "filters": ["broadcast"],
                                     "token": ["from-config"], "max_size": 10})
    process = twspy_process("serve", "--config", config, "--host", "127.0.0.1", "--port", "0", "-f", "echo",
                            "--token", "from-cli", "--max-size", "1M")
    port, filters = process.started()
    assert filters == ["BearerAuth", "Echo"]
    assert upgrade_status(port, "/?token=from-config") == "HTTP/1.1 401 Unauthorized"
    with ws(port, "/?token=from-cli") as conn:
        conn.send("x" * 1000)  # beyond the config's max_size
        assert conn.recv(TIMEOUT).payload == "x" * 1000


@pytest.mark.parametrize("data, message", [
    ({"port": 0, "colour": "blue"}, "unknown key 'colour'"),
    ({"port": "eighty"}, "bad value for 'port'"),
    ({"quiet": "yes"}, "bad value for 'quiet'"),
    ({"filters": [1]}, "bad value for 'filters'"),
    (["port", 0], "expected a JSON object"),
])
def test_bad_config(cli, tmp_path, data, message):
    status, out, err = cli("serve", "-c", write_config(tmp_path, data))
    assert status == 2 and message in err, err
    assert "Traceback" not in err


def test_config_not_json_or_missing(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{port: 0")
    status, _, err = cli("serve", "-c", str(bad))
    assert status == 2 and "not valid JSON" in err
    status, _, err = cli("serve", "-c", str(tmp_path / "missing.json"))
    assert status == 2 and "cannot read the config file" in err


# -- filter specs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("no_such_module:Thing", "cannot import no_such_module"),
    ("twspy.filters:Nope", "module twspy.filters has no Nope"),
    ("twspy.filters.run_open", "is not a class"),
    ("Echo", "expected package.module:Class"),
    ("auth", "needs at least one non-empty token"),
])
def test_bad_filter_spec(cli, spec, message):
    status, _, err = cli("serve", "--port", "0", "-f", spec)
    assert status == 2 and message in err and "Traceback" not in err, err


CUSTOM = '''
from twspy.filters import Filter


class Shout(Filter):
    """Answers in capitals, with a suffix that the config file may set."""

    config_keys = ("suffix",)

    def __init__(self, suffix="!"):
        self.suffix = suffix

    @classmethod
    def from_options(cls, options):
        return cls(options.get("suffix", "!"))

    def on_message(self, client, message):
        client.send(message.payload.upper() + self.suffix)
        return None


class Hello:
    """Not a Filter subclass: any class with the hooks will do (built with Hello())."""

    def on_open(self, client):
        client.send("hello %s" % client.path)
'''


def test_custom_filter_module(twspy_process, tmp_path):
    (tmp_path / "my_filters.py").write_text(CUSTOM)
    config = write_config(tmp_path, {"port": 0, "suffix": "?"})
    process = twspy_process("serve", "-c", config, "-f", "my_filters.Hello", "-f", "my_filters:Shout",
                            pythonpath=[str(tmp_path)])
    port, filters = process.started()
    assert filters == ["Hello", "Shout"]
    with ws(port, "/custom") as conn:
        assert conn.recv(TIMEOUT).payload == "hello /custom"
        conn.send("hi")
        assert conn.recv(TIMEOUT).payload == "HI?"
    # the key is known to Shout only
    status, _, err = run_to_exit("serve", "-c", config, "-f", "echo", pythonpath=[str(tmp_path)])
    assert status == 2 and "unknown key 'suffix'" in err


def test_filter_module_failing_on_import(tmp_path):
    (tmp_path / "broken_filters.py").write_text("raise RuntimeError('half written')\n")
    status, _, err = run_to_exit("serve", "-f", "broken_filters:X", pythonpath=[str(tmp_path)])
    assert status == 2 and "RuntimeError: half written" in err and "Traceback" not in err


def test_aliases():
    for alias in ("echo", "broadcast", "log", "auth"):
        cls = load_filter_class(alias)
        assert "%s:%s" % (cls.__module__, cls.__name__) == FILTER_ALIASES[alias]
    assert FILTER_ALIASES["topics"] == "twspy.hub:TopicBroadcast"  # imported only when used
    with pytest.raises(UsageError):
        load_filter_class("")


def test_every_serve_option_is_a_config_key():
    args = _parser().parse_args(["serve", "-f", "x", "-c", "c.json", "--host", "h", "--port", "1", "--max-size", "1k",
                                 "--certfile", "c", "--keyfile", "k", "--subprotocol", "p", "--no-compression",
                                 "--quiet", "--token", "t", "--redis", "r", "--hub", "h", "--unix", "u",
                                 "--max-connections", "2", "--asyncio"])
    assert set(vars(args)) - {"command", "config"} == set(_SERVE_DEFAULTS)
    assert set(vars(_parser().parse_args(["serve"]))) == {"command"}  # unset options stay unset (config)


def test_usage_errors(cli):
    status, _, err = cli("serve", "--keyfile", "k.pem")
    assert status == 2 and "--keyfile needs --certfile" in err
    status, _, err = cli("serve", "--redis", "redis://a", "--hub", "memory://b")
    assert status == 2 and "not both" in err
    status, _, err = cli("serve", "--port", "0", "--certfile", os.path.join(ROOT, "nonexistent.pem"))
    assert status == 2 and "cannot load the certificate" in err
    status, _, err = cli("serve", "--port", "0", "--hub", "bogus://nowhere")
    assert status == 1 and "cannot attach the hub bogus://nowhere" in err
    status, _, err = cli("proxy", "--upstream", "http://not-ws/", "--port", "0")
    assert status == 2 and "isn't a valid WebSocket URI" in err


# -- hub --------------------------------------------------------------------------------------------

def test_hub_option_chat(twspy_process):
    process = twspy_process("serve", "--port", "0", "--hub", "memory://")
    port, filters = process.started()
    assert filters == ["Broadcast"] and "hub: memory://" in process.lines["err"][0]
    with ws(port) as a:
        a.send("a here")
        assert a.recv(TIMEOUT).payload == "a here"
        with ws(port) as b:
            b.send("b here")
            assert b.recv(TIMEOUT).payload == "b here"
            assert a.recv(TIMEOUT).payload == "b here"
    assert process.stop() == 0  # the hub closed too: its threads did not keep the process alive


def test_topics_alias_gets_a_hub(twspy_process):
    process = twspy_process("serve", "--port", "0", "-f", "topics")
    port, filters = process.started()
    assert filters == ["TopicBroadcast"] and "hub: memory://" in process.lines["err"][0]
    with ws(port) as conn:
        assert json.loads(conn.recv(TIMEOUT).payload)["type"] == "set_conn_id"
        conn.send(json.dumps({"type": "subscribe", "topic": "room/+", "id": 1}))
        assert json.loads(conn.recv(TIMEOUT).payload) == {"type": "ack", "id": 1}
        conn.send(json.dumps({"type": "publish", "topic": "room/a", "data": "hi", "id": 2}))
        got = [json.loads(conn.recv(TIMEOUT).payload) for _ in range(2)]
        assert sorted(m["type"] for m in got) == ["ack", "message"]
        assert [m["data"] for m in got if m["type"] == "message"] == ["hi"]
    assert process.stop() == 0


def test_filters_are_not_imported_from_the_working_directory(tmp_path, monkeypatch):
    # Issue 20 item 14: ``python -m twspy serve -f planted:Evil`` run in a directory holding planted.py
    # imported and ran it. Only sys.path as installed (and PYTHONPATH on purpose) may provide filters.
    (tmp_path / "planted_cwd_filter.py").write_text("class Evil:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [""] + [p for p in sys.path if p])  # as `python -m` starts
    monkeypatch.setenv("PYTHONPATH", "")
    with pytest.raises(UsageError, match="cannot import planted_cwd_filter"):
        load_filter_class("planted_cwd_filter:Evil")
    assert "planted_cwd_filter" not in sys.modules and sys.path[0] == ""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # named on purpose: allowed
    monkeypatch.setattr(sys, "path", [""] + [p for p in sys.path if p] + [str(tmp_path)])
    try:
        assert load_filter_class("planted_cwd_filter:Evil").__name__ == "Evil"
    finally:
        sys.modules.pop("planted_cwd_filter", None)


def test_filters_from_the_working_directory_process(tmp_path):
    (tmp_path / "planted_cwd_filter2.py").write_text("import sys\nsys.exit('planted code ran')\n")
    proc = subprocess.run([sys.executable, "-m", "twspy", "serve", "-f", "planted_cwd_filter2:X", "--port", "0"],
                          cwd=str(tmp_path), env=env_with(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2 and "cannot import planted_cwd_filter2" in proc.stderr
    assert "planted code ran" not in proc.stderr



# -- in process (what a coverage run sees) ----------------------------------------------------------

def test_serve_in_process_config_tokens_and_hub(running, tmp_path, capsys):
    config = write_config(tmp_path, {"port": 0, "filters": ["log", "echo"], "token": "s3cret", "quiet": True})
    server = running("serve", "-c", config, "--hub", "memory://")
    port = server.address[1]
    assert upgrade_status(port) == "HTTP/1.1 401 Unauthorized"
    with ws(port, "/?token=s3cret") as conn:
        conn.send("in process")
        assert conn.recv(TIMEOUT).payload == "in process"
    server.shutdown()
    _, err = capsys.readouterr()
    assert "filters: BearerAuth, Log, Echo; hub: memory://" in err and "s3cret" not in err


def test_echo_in_process_with_tls(running, capsys):
    import ssl

    from conftest import CERT, KEY
    server = running("echo", "--port", "0", "--certfile", CERT, "--keyfile", KEY, "--quiet")
    context = ssl.create_default_context(cafile=CERT)
    with twspy.connect("wss://localhost:%d/" % server.address[1], ssl=context, handshake_timeout=TIMEOUT) as conn:
        conn.send(b"\x00secure")
        assert conn.recv(TIMEOUT).payload == b"\x00secure"
    server.shutdown()
    assert "wss://127.0.0.1:%d/" % server.address[1] in capsys.readouterr().err


def test_proxy_in_process(running, serve, capsys):
    from twspy.cli import EchoServer
    upstream = serve(EchoServer)
    relay = running("proxy", "--upstream", "ws://user:pw@127.0.0.1:%d/base" % upstream.address[1], "--port", "0",
                    "--quiet")
    with ws(relay.address[1], "/x") as conn:
        conn.send("relayed")
        assert conn.recv(TIMEOUT).payload == "relayed"
    relay.shutdown()
    err = capsys.readouterr().err
    assert "-> ws://***@127.0.0.1:%d/base" % upstream.address[1] in err and "pw" not in err


@pytest.mark.parametrize("command", [["echo"], ["serve", "-f", "echo"]])
def test_servers_on_a_unix_socket(running, cli, tmp_path, command):
    # --unix needs Server(unix_path=...) (the server's side of issue 14): with it, the server listens there;
    # without it (a twspy before that change), a usage error in one line rather than a traceback.
    import inspect
    path = str(tmp_path / "ws.sock")
    if "unix_path" not in inspect.signature(twspy.Server.__init__).parameters:
        status, _, err = cli(*command, "--unix", path)
        assert status == 2 and err.count("\n") == 1 and "--unix" in err
        return
    server = running(*command, "--unix", path, "--quiet")
    with twspy.connect("ws://localhost/sock", unix_path=path, handshake_timeout=TIMEOUT) as conn:
        conn.send("over a Unix socket")
        assert conn.recv(TIMEOUT).payload == "over a Unix socket"
    server.shutdown()
