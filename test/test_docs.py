"""The documentation's code runs: every Python sample in docs/ and the README is either an examples/ file
included verbatim (run by test_examples.py and friends) or a ``{testcode}`` block run here, with its
``{testsetup}``, ``{testcleanup}`` and expected ``{testoutput}`` (the blocks sphinx.ext.doctest knows, run
without Sphinx so ``make test`` needs no docs dependency; ``make docs`` builds the site with -W)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
EXAMPLES = os.path.join(ROOT, "examples")

# A fenced block: ```lang or ```{directive} argument, its body, the closing fence of the same length.
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.S | re.M)
DOCTEST_DIRECTIVES = ("testsetup", "testcode", "testoutput", "testcleanup")


def pages():
    for folder, _, files in os.walk(DOCS):
        if "_build" in folder.split(os.sep):
            continue
        for name in sorted(files):
            if name.endswith(".md"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def blocks(path):
    """(kind, argument, body) for each fenced block of a page: kind is a language or a {directive}."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    for match in FENCE.finditer(text):
        info = match.group("info").strip()
        directive = re.fullmatch(r"\{([\w-]+)\}\s*(.*)", info)
        body = match.group("body")
        if directive:
            # MyST options (":name: value" lines) come first; the code follows.
            lines = body.splitlines(keepends=True)
            while lines and re.match(r":[\w-]+:", lines[0]):
                lines.pop(0)
            yield "{%s}" % directive.group(1), directive.group(2).strip(), "".join(lines)
        else:
            yield info.split()[0] if info else "", "", body


def groups(path):
    """The doctest groups of a page, in order: name -> {"testsetup": code, ...}."""
    found = {}
    for kind, argument, body in blocks(path):
        directive = kind.strip("{}")
        if directive in DOCTEST_DIRECTIVES:
            assert argument, "%s: give every %s block a group name" % (path, directive)
            group = found.setdefault(argument, {})
            assert directive not in group, "%s: two %s blocks in group %s" % (path, directive, argument)
            group[directive] = body
    return found


ALL_GROUPS = [(path, name, group) for path in pages() for name, group in groups(path).items()]


def test_there_are_pages_and_samples():
    assert len(list(pages())) >= 20
    assert len(ALL_GROUPS) >= 5


def test_python_samples_are_run_or_included():
    """No Python sample escapes the tests: a plain ```python block would be shown and never run."""
    for path in list(pages()) + ["README.md"]:
        for kind, _, body in blocks(path):
            assert kind not in ("python", "py", "python3", "pycon", "{code-block}", "{code}", "{eval-rst}") or (
                path == "README.md" and kind == "python"), "%s: a Python sample that no test runs:\n%s" % (path, body)


def test_literalincludes_exist_and_every_example_is_shown():
    included = set()
    for path in pages():
        for kind, argument, _ in blocks(path):
            if kind == "{literalinclude}":
                target = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), argument))
                assert os.path.isfile(target), "%s: %s does not exist" % (path, argument)
                included.add(os.path.relpath(target, ROOT))
    examples = {os.path.join("examples", name) for name in os.listdir(EXAMPLES)
                if name.endswith(".py") and not name.startswith("_")}
    assert examples <= included, "examples not shown in docs/: %s" % sorted(examples - included)


@pytest.mark.parametrize("path, name, group", ALL_GROUPS, ids=["%s:%s" % (p, n) for p, n, _ in ALL_GROUPS])
def test_sample_runs(path, name, group):
    assert "testcode" in group, "%s: group %s has no testcode" % (path, name)
    namespace = {"__name__": "__docs__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(group.get("testsetup", ""), "%s[%s setup]" % (path, name), "exec"), namespace)
        try:
            exec(compile(group["testcode"], "%s[%s]" % (path, name), "exec"), namespace)
        finally:
            exec(compile(group.get("testcleanup", ""), "%s[%s cleanup]" % (path, name), "exec"), namespace)
    if "testoutput" in group:
        assert out.getvalue().strip() == group["testoutput"].strip()


def test_readme_samples_run():
    """The README's overview code is one program (a server and a client), run as written."""
    code = [body for kind, _, body in blocks("README.md") if kind == "python"]
    assert code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for body in code:
            exec(compile(body, "README.md", "exec"), {"__name__": "__readme__"})
    assert out.getvalue().strip()


def test_command_lines_parse():
    """Every concrete ``python3 -m twspy ...`` line in a sh block is one the CLI accepts."""
    from twspy import cli

    parser = cli._parser()
    checked = 0
    for path in list(pages()) + ["README.md"]:
        for kind, _, body in blocks(path):
            if kind not in ("sh", "console", "bash"):
                continue
            for line in body.splitlines():
                line = line.split(" #")[0].strip().rstrip("&").strip()
                if not line.startswith("python3 -m twspy ") or "[" in line or "..." in line:
                    continue  # a synopsis line with [optional] parts, or not a twspy command
                argv = shlex.split(line)[3:]
                if argv == ["--version"]:
                    continue
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    pytest.fail("%s: the CLI refuses %r" % (path, line))
                checked += 1
    assert checked >= 5


def test_bench_chart_shows_the_committed_numbers():
    """docs/_static/bench-ratios.svg is what bench/chart.py draws from the JSON committed with it."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import chart
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    with open(chart.DATA, encoding="utf-8") as f:
        data = json.load(f)
    with open(chart.SVG, encoding="utf-8") as f:
        assert f.read() == chart.render(data)
    assert data["rows"] and all(row["twspy_vs_best"] > 0 for row in data["rows"])


def test_hub_picture_is_current():
    """docs/_static/hub.svg is what docs/hub_picture.py draws."""
    sys.path.insert(0, DOCS)
    try:
        import hub_picture
    finally:
        sys.path.remove(DOCS)
    with open(hub_picture.SVG, encoding="utf-8") as f:
        assert f.read() == hub_picture.render()


def test_layer_diagram_is_current():
    """docs/_static/layers.svg is what docs/layers.py draws (the picture's source is kept in the repo)."""
    sys.path.insert(0, DOCS)
    try:
        import layers
    finally:
        sys.path.remove(DOCS)
    with open(layers.SVG, encoding="utf-8") as f:
        assert f.read() == layers.render()
    for module in layers.modules():
        assert os.path.isfile(os.path.join(ROOT, module)), module


def test_limits_page_lists_every_numeric_option():
    """docs/limits.md has a row for every parameter with a number as its default, in every public signature
    that takes limits (a limit added to the code without a line in the table fails here)."""
    import inspect

    import twspy
    import twspy.asyncio
    from twspy import asgi, filters, hub, protocol, proxy

    with open(os.path.join(DOCS, "limits.md"), encoding="utf-8") as f:
        page = f.read()
    callables = [twspy.websocket, twspy.Connection, twspy.Server, twspy.connect, twspy.reconnect,
                 twspy.asyncio.connect, twspy.asyncio.serve, twspy.asyncio.Server, twspy.asyncio.Connection,
                 twspy.DeflateMessage, twspy.DeflateFrame, twspy.Multiplex, protocol.Protocol, hub.Hub,
                 hub.TopicBroadcast, hub.MemoryBroker, proxy.ProxyServer, filters.BearerAuth, asgi.Endpoint]
    missing = []
    for obj in callables:
        for name, param in inspect.signature(obj).parameters.items():
            default = param.default
            if type(default) in (int, float) and name != "port" and "`%s`" % name not in page:
                missing.append("%s(%s=%r)" % (obj.__qualname__, name, default))
    assert not missing, "not in docs/limits.md: %s" % ", ".join(missing)


# Docstring literal blocks that are pictures or tables, not Python (the API reference shows them as text).
TEXT_BLOCKS = {"twspy.hub.TopicBroadcast", "twspy.filters", "twspy.errors", "twspy.cli"}


def test_docstring_samples_compile():
    """The API reference shows the docstrings' ``::`` blocks: the Python ones are fragments (``hub``, ``proto``
    come from the text around them), so they cannot run, but they must at least be valid Python."""
    import ast
    import importlib
    import inspect
    import textwrap

    sys.path.insert(0, DOCS)
    try:
        import conf
    finally:
        sys.path.remove(DOCS)

    def docstrings(module):
        yield module.__name__, module.__doc__
        for name, obj in vars(module).items():
            public = inspect.isclass(obj) or inspect.isfunction(obj)
            if public and getattr(obj, "__module__", None) == module.__name__:
                yield "%s.%s" % (module.__name__, name), obj.__doc__
                for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                    if inspect.isfunction(member):
                        yield "%s.%s.%s" % (module.__name__, name, attr), member.__doc__

    compiled = 0
    for _, _, _, module_names in conf.API_PAGES:
        for module_name in module_names:
            for where, doc in docstrings(importlib.import_module(module_name)):
                for match in re.finditer(r"::\n\n((?:[ ]+.*\n?|\n)+)", inspect.cleandoc(doc or "") + "\n"):
                    if where in TEXT_BLOCKS:
                        continue
                    compile(textwrap.dedent(match.group(1)), where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                    compiled += 1
    assert compiled >= 5
