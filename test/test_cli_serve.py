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
from twspy.cli import _SERVE_DEFAULTS, _parser, FILTER_ALIASES, load_filter_class, UsageError
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


def run_to_exit(*args, pythonpath=()):
    """Run a ``python -m twspy`` that should exit by itself: ``(status, stdout, stderr)``."""
    proc = subprocess.run([sys.executable, "-m", "twspy"] + list(args), cwd=ROOT, env=env_with(pythonpath),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def ws(port, path="/", **kwargs):
    return twspy.connect("ws://127.0.0.1:%d%s" % (port, path), timeout=TIMEOUT, **kwargs)


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
def test_bad_config(tmp_path, data, message):
    status, out, err = run_to_exit("serve", "-c", write_config(tmp_path, data))
    assert status == 2 and message in err, err
    assert "Traceback" not in err


def test_config_not_json_or_missing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{port: 0")
    status, _, err = run_to_exit("serve", "-c", str(bad))
    assert status == 2 and "not valid JSON" in err
    status, _, err = run_to_exit("serve", "-c", str(tmp_path / "missing.json"))
    assert status == 2 and "cannot read the config file" in err


# -- filter specs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("no_such_module:Thing", "cannot import no_such_module"),
    ("twspy.filters:Nope", "module twspy.filters has no Nope"),
    ("twspy.filters.run_open", "is not a class"),
    ("Echo", "expected package.module:Class"),
    ("auth", "needs at least one non-empty token"),
])
def test_bad_filter_spec(spec, message):
    status, _, err = run_to_exit("serve", "--port", "0", "-f", spec)
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
                                 "--quiet", "--token", "t", "--redis", "r", "--hub", "h",
                                 "--max-connections", "2", "--asyncio"])
    assert set(vars(args)) - {"command", "config"} == set(_SERVE_DEFAULTS)
    assert set(vars(_parser().parse_args(["serve"]))) == {"command"}  # unset options stay unset (config)


def test_usage_errors():
    status, _, err = run_to_exit("serve", "--keyfile", "k.pem")
    assert status == 2 and "--keyfile needs --certfile" in err
    status, _, err = run_to_exit("serve", "--redis", "redis://a", "--hub", "memory://b")
    assert status == 2 and "not both" in err
    status, _, err = run_to_exit("serve", "--port", "0", "--certfile", os.path.join(ROOT, "nonexistent.pem"))
    assert status == 2 and "cannot load the certificate" in err


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
