"""tools/check_private.py, the lint check that no twspy module touches another's private names."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "check_private.py")


def check(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return subprocess.run([sys.executable, TOOL, str(tmp_path)], capture_output=True, text=True, timeout=60)


def test_reports_each_kind_of_access(tmp_path):
    done = check(tmp_path, {
        "low.py": "_table = {}\n\nclass Low:\n    def __init__(self):\n        self._state = 1\n",
        "high.py": "import zlib\nfrom . import low\nfrom .low import _table\n\n"
                   "def f(x: low.Low) -> 'zlib._Decompress':\n    print(low._table, x._state)\n"
                   "    z: zlib._Decompress = zlib.decompressobj()\n    return z\n",
    })
    assert done.returncode == 1
    found = sorted(line.split(": ", 1)[1] for line in done.stdout.splitlines() if ".py:" in line)
    assert found == ["imports _table from .low", "touches low._table", "touches x._state"]
    assert done.stdout.splitlines()[-1] == "3 access(es) to another module's private names"


def test_own_names_and_dunders_pass(tmp_path):
    done = check(tmp_path, {
        "one.py": "class A:\n    __slots__ = ('_b',)\n\n    def __init__(self):\n        self._b = 1\n\n"
                  "    def same(self, other: 'A') -> int:\n        return other._b + len(self.__dict__)\n",
    })
    assert done.returncode == 0 and done.stdout == ""


def test_twspy_itself_is_clean():
    done = subprocess.run([sys.executable, TOOL], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
