"""A first run from a fresh checkout, as the README says, with nothing installed and no PYTHONPATH."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 30


def bare_env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def module(name, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", name] + list(args), cwd=ROOT, env=bare_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_examples_run_as_modules_from_the_root():
    # Issue 17 item 7: `python examples/raw_server.py` failed with ModuleNotFoundError; the README now
    # runs them as `python3 -m examples.raw_server`, which needs no install.
    server = module("examples.raw_server", "0")
    try:
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", server.stdout.readline())
        assert match, server.stderr.read() if server.poll() is not None else ""
        client = module("examples.raw_client", match.group(1))
        out, err = client.communicate(timeout=TIMEOUT)
        assert client.returncode == 0, err
        assert out.splitlines() == ["you said: Hello", "closed with (1000, '')"]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(TIMEOUT)
        server.stdout.close()
        server.stderr.close()


def test_self_contained_example_as_module():
    proc = module("examples.tls_echo")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out.strip() == "over TLS"


def test_readme_says_how_to_run_the_examples():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    assert "python3 -m examples.raw_server" in readme
    with open(os.path.join(ROOT, "docs", "howto", "hub.md"), encoding="utf-8") as file:
        hub_page = file.read()  # the hub's recipe moved from the README to docs/ (issue 19)
    assert "redis-server --bind 127.0.0.1" in hub_page  # the hub's two-server recipe stays on loopback
