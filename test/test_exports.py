"""What twspy exports: ``__all__`` lists, the docs' API reference and the README agree."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re

import twspy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIVATE_MODULES = {"twspy.__main__"}  # the command line's entry point: nothing to import from it


def public_modules():
    names = ["twspy"] + [m.name for m in pkgutil.walk_packages(twspy.__path__, "twspy.")]
    return [n for n in names if not n.rsplit(".", 1)[-1].startswith("_") and n not in PRIVATE_MODULES]


def api_reference_modules():
    """The modules docs/conf.py's API_PAGES document (a literal list in its source)."""
    with open(os.path.join(ROOT, "docs", "conf.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "API_PAGES" for t in node.targets):
            return {m for _, _, _, modules in ast.literal_eval(node.value) for m in modules}
    raise AssertionError("docs/conf.py has no API_PAGES")


def test_star_import_is_all():
    namespace: dict = {}
    exec("from twspy import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(twspy.__all__)
    assert len(twspy.__all__) == len(set(twspy.__all__))


def test_every_public_module_has_all_and_is_in_the_api_reference():
    documented = api_reference_modules()
    for name in public_modules():
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), (list, tuple)), name
        assert module.__doc__, name
        assert name in documented, "%s is missing from docs/conf.py API_PAGES" % name


def test_every_exported_name_exists_and_says_what_it_is():
    for name in public_modules():
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)  # AttributeError names a stale __all__ entry
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), "%s.%s has no docstring" % (name, attr)


def test_readme_names_only_what_twspy_exports():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    used = set(re.findall(r"\btwspy\.([A-Za-z_]\w*)\b", readme))
    for group in re.findall(r"^from twspy import ([\w, ]+)$", readme, re.M):
        used.update(n.strip() for n in group.split(","))
    modules = {n.split(".")[1] for n in public_modules() if "." in n}
    assert used, "the README shows twspy in use"
    unknown = {n for n in used if n not in twspy.__all__ and n not in modules}
    assert not unknown, unknown
