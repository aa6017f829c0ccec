"""Fail when a twspy module touches another module's ``_private`` names.

The rule (README "Development"): a module may use the ``_names`` it defines itself; what
another module needs, the lower module offers publicly. This reports
``from .x import _name``, ``module._name`` and ``obj._name`` where ``_name`` is neither
defined nor assigned in the module doing the access. Dunder names are always allowed, and so
are the private names of other packages (``zlib._Decompress``, for typing).

Usage: ``python3 tools/check_private.py [package_dir]`` (exit status 1 on findings).
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator

# Public API that merely starts with an underscore (namedtuple's methods).
_ALLOWED = {"_replace", "_asdict", "_fields", "_make"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in _ALLOWED


def _own_names(tree: ast.AST) -> set[str]:
    """Every private name the module defines: defs, classes, assignments, attribute targets."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute):
            names.add(node.target.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            names.add(node.value)  # __slots__ entries, getattr(self, "_x") defaults
    return {n for n in names if _private(n)}


def findings(path: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    own = _own_names(tree)
    # Names bound by ``import x`` of another package (the standard library): their private
    # names are typeshed's business (``zlib._Decompress`` has no public spelling), not ours.
    external = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names if not alias.name.startswith("twspy")}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name) and node.level > 0:
                    yield node.lineno, "imports %s from .%s" % (alias.name, node.module or "")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            if isinstance(node.value, ast.Name) and node.value.id in external:
                continue
            yield node.lineno, "touches %s.%s" % (ast.unparse(node.value), node.attr)


def main(argv: list[str]) -> int:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = argv[1] if len(argv) > 1 else os.path.join(repo, "twspy")
    bad = 0
    for dirpath, _dirs, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                for lineno, what in findings(path):
                    print("%s:%d: %s" % (os.path.relpath(path), lineno, what))
                    bad += 1
    if bad:
        print("%d access(es) to another module's private names" % bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
