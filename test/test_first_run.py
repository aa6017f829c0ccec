"""A first run from a fresh checkout, as the README says, with nothing installed and no PYTHONPATH."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

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
    assert "redis-server --bind 127.0.0.1" in readme  # the hub's two-server recipe stays on loopback


def test_editable_install_is_seen_by_mypy(tmp_path):
    # Issue 17 item 6: setuptools' default editable install is an import hook that type checkers
    # cannot follow; `make dev` installs in strict mode (a link tree on sys.path), which they can.
    mypy = pytest.importorskip("mypy.api", reason="mypy is in the test extra (make test installs it)")
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "Makefile"):
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    shutil.copytree(os.path.join(ROOT, "twspy"), tmp_path / "twspy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    venv = tmp_path / "venv"
    # The system's pip and setuptools serve the venv (no ensurepip, no download); no C build.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    python = str(venv / "bin" / "python")
    env = dict(bare_env(), PIP_NO_BUILD_ISOLATION="1", PIP_NO_DEPS="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               TWSPY_NO_SPEEDUPS="1")
    done = subprocess.run(["make", "-s", "dev", "PYTHON=" + python], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "uses_twspy.py"
    script.write_text("import twspy\n\nm = twspy.TextMessage('x')\nreveal_type(m.payload)\n")
    out, err, status = mypy.run(["--strict", "--no-incremental", "--python-executable", python, str(script)])
    assert status == 0, out + err
    assert 'Revealed type is "str"' in out or 'Revealed type is "builtins.str"' in out
