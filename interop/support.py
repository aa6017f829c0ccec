"""Process handling shared by interop/run.py and interop/browser_check.py (standard library only).

Every process is started in a session of its own, so that it and its children (Chromium's
renderers, npm's node) form one process group whose id is the PID we got: :meth:`Proc.stop`
signals exactly that group, by id, and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import IO

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CERTS = os.path.join(ROOT, "test", "certs")


class StartError(Exception):
    pass


class Proc:
    """A child process with its output in a log file; stopped by PID (its process group)."""

    def __init__(self, name: str, argv: list[str], log_path: str, cwd: str = ROOT,
                 stdin_pipe: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until the log matches ``pattern``; StartError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                raise StartError("%s exited with %s before it was ready:\n%s" % (
                    self.name, self.proc.returncode, tail(self.output())))
            if time.monotonic() > deadline:
                raise StartError("%s not ready within %ss:\n%s" % (self.name, timeout, tail(self.output())))
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group whose id is our child's PID, SIGKILL it if it lingers."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
        # The leader is gone; children left in its group (a renderer, say) get the same end.
        self._signal(signal.SIGKILL)
        if self.proc.stdin:
            self.proc.stdin.close()
        self._log.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def start_twspy_echo(log_dir: str, name: str, *options: str, timeout: float = 15) -> tuple[Proc, int]:
    """``python -m twspy echo --port 0 --max-size 16M --subprotocol chat <options>``: process, port."""
    argv = [sys.executable, "-m", "twspy", "echo", "--host", "127.0.0.1", "--port", "0", "--max-size", "16M",
            "--subprotocol", "chat"]
    proc = Proc(name, argv + list(options), os.path.join(log_dir, name + ".log"))
    try:
        match = proc.wait_for(r"twspy echo server on wss?://127\.0\.0\.1:(\d+)/", timeout)
    except StartError:
        proc.stop()
        raise
    return proc, int(match.group(1))


def start_node_echo(log_dir: str, deflate: str, max_payload: int, timeout: float = 15) -> tuple[Proc, dict]:
    """``node node_echo.js``: the process and its first line ({"port", "ws", "node"})."""
    argv = ["node", os.path.join(HERE, "node_echo.js"), "--port", "0", "--deflate", deflate,
            "--max-payload", str(max_payload)]
    # stdin is a pipe we keep open: the server also stops when it closes (if we die).
    proc = Proc("node-ws-echo-" + deflate, argv, os.path.join(log_dir, "node-ws-echo-%s.log" % deflate),
                cwd=HERE, stdin_pipe=True)
    try:
        match = proc.wait_for(r"(\{\"port\".*\})\n", timeout)
    except StartError:
        proc.stop()
        raise
    return proc, json.loads(match.group(1))


def run_json_lines(argv: list[str], timeout: float, cwd: str = ROOT) -> tuple[list, int, str]:
    """Run a check driver that prints JSON lines; return (records, exit status, stderr+junk).

    Past ``timeout`` (or on Ctrl-C) the driver's process group gets SIGTERM, which lets
    browser_check.py stop the processes it started, then SIGKILL 15 s later.
    """
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        status = proc.returncode
    except BaseException as exc:
        _end_group(proc)
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        out, err = proc.communicate()
        status = -1
        err += b"\n(stopped after %ds)" % timeout
    records, junk = [], []
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            junk.append(line)
    return records, status, (err.decode("utf-8", "replace") + "\n".join(junk)).strip()


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop what the process started."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
