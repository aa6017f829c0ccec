"""examples/sans_io_client.py (the sans-I/O core over a plain socket) runs against a twspy Server."""

from __future__ import annotations

import os
import subprocess
import sys

import twspy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EchoServer(twspy.Server):
    def onmessage(self, client, message):
        client.send(message)


def test_sans_io_client_example(serve):
    server = serve(EchoServer, extensions=[])
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "sans_io_client.py"),
                           str(server.address[1])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["Hello", "Close(code=1000, reason='')", "closed with 1000"]
