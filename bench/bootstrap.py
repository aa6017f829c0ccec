"""The bench's own virtual environment, bench/.venv, with the peers to compare against.

Bench-only dependencies, never twspy's: twspy itself is imported from the working tree.
The venv is made with the Python running the bench (and remade if that Python changed);
packages are installed on the first run only.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["VENV", "REQUIREMENTS", "ensure_venv", "in_venv", "venv_python", "pip_install"]

BENCH = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(BENCH, ".venv")
# import name -> pip requirement
REQUIREMENTS = {"websockets": "websockets", "aiohttp": "aiohttp", "websocket": "websocket-client"}


def venv_python() -> str:
    return os.path.join(VENV, "bin", "python")


def in_venv() -> bool:
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def _venv_version() -> str:
    try:
        with open(os.path.join(VENV, "pyvenv.cfg")) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() in ("version", "version_info"):
                    return ".".join(value.strip().split(".")[:2])
    except OSError:
        pass
    return ""


def pip_install(packages: list[str]) -> None:
    print("bench: installing %s into %s" % (", ".join(packages), os.path.relpath(VENV)), flush=True)
    subprocess.run([venv_python(), "-m", "pip", "install", "-q", "--disable-pip-version-check"] + packages,
                   check=True, timeout=600)


def ensure_venv(argv: list[str]) -> None:
    """Make sure the venv exists with the peers installed, then re-run ``argv`` inside it.

    Returns only when already running inside the venv.
    """
    if in_venv():
        return
    want = "%d.%d" % sys.version_info[:2]
    if os.path.isdir(VENV) and _venv_version() != want:
        print("bench: %s was made with Python %s, remaking it with %s" % (
            os.path.relpath(VENV), _venv_version() or "?", want), flush=True)
        import shutil
        shutil.rmtree(VENV)
    if not os.path.exists(venv_python()):
        print("bench: creating %s with %s" % (os.path.relpath(VENV), sys.executable), flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True, timeout=300)
    check = "import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in %r) else 1)" % (
        sorted(REQUIREMENTS),)
    if subprocess.run([venv_python(), "-c", check], timeout=60).returncode != 0:
        pip_install(sorted(REQUIREMENTS.values()))
    sys.stdout.flush()
    os.execv(venv_python(), [venv_python()] + argv)
