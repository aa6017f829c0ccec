"""Every program in examples/ runs as written, and the docs show them (included verbatim)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def python(script, *args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(EXAMPLES, script)] + list(args), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture
def server_example():
    procs = []

    def start(script):
        proc = python(script, "0")
        procs.append(proc)
        line = proc.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        return int(match.group(1))

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


def run(script, *args):
    proc = python(script, *args)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def test_raw_frames(server_example):
    port = server_example("raw_server.py")
    out = run("raw_client.py", str(port))
    assert out.splitlines() == ["you said: Hello", "closed with (1000, '')"]


def test_connection_subclass(server_example):
    port = server_example("connection_echo.py")
    out = run("client.py", "ws://127.0.0.1:%d/" % port)
    assert out.splitlines() == ["Hello", "BinaryMessage(b'\\x00\\x01\\x02')", "closed with 1000"]


def test_server_subclass(server_example):
    port = server_example("chat_server.py")
    out = run("client.py", "ws://127.0.0.1:%d/" % port).splitlines()
    assert re.fullmatch(r"\d+ joined \(1 here\)", out[0])
    assert re.fullmatch(r"\d+: Hello", out[1])


def test_tls():
    assert run("tls_echo.py").splitlines() == ["over TLS"]


def test_docs_show_the_examples():
    # The examples moved from the README to docs/ (issue 19), included verbatim with literalinclude.
    shown = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "docs")):
        for name in files:
            if name.endswith(".md"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    for target in re.findall(r"^```\{literalinclude\} (\S+)$", f.read(), re.M):
                        shown.add(os.path.normpath(os.path.join(folder, target)))
    examples = {os.path.join(EXAMPLES, n) for n in os.listdir(EXAMPLES)
                if n.endswith(".py") and not n.startswith("_")}
    assert examples <= shown, sorted(examples - shown)


def test_compression():
    lines = run("compression.py").splitlines()
    assert lines[0] == "['permessage-deflate']" and int(lines[1]) == 760
    assert lines[2] == "a secret next to attacker-chosen text"


def test_multiplex():
    assert run("multiplex.py").splitlines() == ["/main says hi", "/chat says hello", "/news says hey"]


def test_hub_chat_one_process(server_example):
    port = server_example("hub_chat.py")
    out = run("client.py", "ws://127.0.0.1:%d/" % port).splitlines()
    assert re.fullmatch(r"[0-9a-f]{8}\.\d+\.[0-9a-f]{16}: Hello", out[0])
    assert re.fullmatch(r"[0-9a-f]{8}\.\d+\.[0-9a-f]{16}: b'\\x00\\x01\\x02'", out[1])


def test_filters_server(server_example):
    port = server_example("filters_server.py")
    out = run("client.py", "ws://127.0.0.1:%d/?token=s3cret" % port).splitlines()
    assert out == ["HELLO", "BinaryMessage(b'\\x00\\x01\\x02')", "closed with 1000"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.makefile("rb").read().startswith(b"HTTP/1.1 200 OK\r\n")
    proc = python("client.py", "ws://127.0.0.1:%d/" % port)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "401" in err
