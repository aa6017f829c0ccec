"""Sphinx configuration for the twspy documentation (``make docs``; warnings are errors there)."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # document the checkout, not an installed copy

import twspy  # noqa: E402

project = "twspy"
author = "the twspy authors"
copyright = "the twspy authors, BSD 3-Clause"
release = version = twspy.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.doctest", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# Pages are MyST Markdown; ``{testcode}`` blocks run in test/test_docs.py, examples are included verbatim.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
templates_path: list = []
exclude_patterns = ["_build"]
root_doc = "index"
# Every reference to a twspy name must resolve (a renamed or removed name fails the build); the
# standard library's and typing's names have no inventory here.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!twspy\b).*"),
                        (r"py:class", r"twspy\.watchdog\.Watched"),  # a typing.Protocol in signatures, not public
                        (r"py:class", r"twspy\.deprecation\.F")]  # the TypeVar of a decorator's signature

# Google-style docstrings (STYLE.md); signatures keep the source's type hints as written.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = "twspy %s" % release
html_theme_options = {
    "description": "WebSocket (RFC 6455) for Python, standard library only",
    "fixed_sidebar": True,
}

# The API reference: one page per group of modules, written here at each build from the modules'
# ``__all__`` so that a public name added to the code appears without editing the docs. A name a
# module re-exports (``twspy.hub.HubError`` is ``twspy.broker.HubError``) is documented once, on the
# first page that lists it.
API_PAGES = [
    ("twspy", "twspy", "What ``import twspy`` gives: the threaded layer, frames, messages, errors.",
     ["twspy"]),
    ("asyncio", "twspy.asyncio", "The same connections on an asyncio event loop.",
     ["twspy.asyncio", "twspy.asyncio.client", "twspy.asyncio.connection", "twspy.asyncio.server"]),
    ("asgi", "twspy.asgi", "FastAPI, Starlette and any ASGI app on the hub.", ["twspy.asgi"]),
    ("protocol", "The sans-I/O core", "Every rule of a live connection and of the opening handshake; no I/O.",
     ["twspy.protocol", "twspy.handshake_protocol", "twspy.handshake"]),
    ("client", "Clients: URLs, proxies, auth", "What :func:`twspy.connect` builds on.",
     ["twspy.client", "twspy.uri", "twspy.redirects", "twspy.proxies"]),
    ("server", "Connections and servers", "Defaults and helpers of the threaded layer.",
     ["twspy.websocket", "twspy.connection", "twspy.watchdog", "twspy.outbox", "twspy.inqueue", "twspy.server"]),
    ("hub", "The hub", "Topics, broadcast and send-to-id across servers.",
     ["twspy.hub", "twspy.broker", "twspy.topics"]),
    ("filters", "Filters", "Servers composed from filter objects; bearer auth.", ["twspy.filters"]),
    ("proxy", "The proxy relay", "Relay clients to an upstream server.", ["twspy.proxy"]),
    ("frames", "Frames and messages", "The codec under every layer.",
     ["twspy.frame", "twspy.message", "twspy.errors", "twspy.deprecation"]),
    ("extensions", "Extensions", "Negotiation and the compression codecs.",
     ["twspy.extension", "twspy.permessage_deflate", "twspy.deflate_frame"]),
    ("multiplex", "Multiplexing", "Channels over one connection (twspy to twspy).",
     ["twspy.multiplex", "twspy.mux_frames", "twspy.mux_channel", "twspy.mux_session", "twspy.mux_client",
      "twspy.mux_server"]),
    ("cli", "Command line", "``python3 -m twspy`` (see :doc:`/howto/cli`).", ["twspy.cli"]),
]


COLLIDING_MODULES = {"twspy.websocket"}


def api_members(pages=API_PAGES):
    """Yield (page, title, intro, [(module, [names])]): each public (name, object) once."""
    import importlib

    def assigned(module_name: str) -> set:
        """The names a module's source assigns at its top level (where a constant is defined)."""
        import ast

        path = importlib.import_module(module_name).__file__
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = set()
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        return names

    all_modules = [m for _, _, _, modules in pages for m in modules]
    definitions = {m: assigned(m) for m in all_modules}

    def owner(module, name: str) -> str:
        """Where (name, object) is defined: a class's or function's module; for a constant (an int
        may be one shared object), the module that assigns it."""
        obj = getattr(module, name)
        if getattr(obj, "__module__", None) and getattr(obj, "__qualname__", None):
            return obj.__module__
        if name in definitions[module.__name__]:
            return module.__name__
        for m in all_modules:
            if name in definitions[m] and getattr(importlib.import_module(m), name, None) is obj:
                return m
        return module.__name__

    seen: set = set()
    for page, title, intro, modules in pages:
        sections = []
        for module_name in modules:
            module = importlib.import_module(module_name)
            names = []
            for name in getattr(module, "__all__", ()):
                key = (name, id(getattr(module, name)), owner(module, name))
                if key not in seen:
                    seen.add(key)
                    names.append(name)
            sections.append((module_name, names))
        yield page, title, intro, sections


def directive_for(obj, name: str) -> str:
    """The autodoc directive for one public name: each is written out, so constants without a
    docstring of their own are listed too (with their value)."""
    import inspect

    if inspect.isclass(obj):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        return ".. %s:: %s\n   :members:\n   :show-inheritance:" % (kind, name)
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return ".. autofunction:: %s" % name
    return ".. autodata:: %s" % name


def write_api_pages(app) -> None:
    """Write docs/api/<page>.rst (git-ignored) before Sphinx reads the sources."""
    import importlib

    for page, title, intro, sections in api_members():
        lines = [title, "=" * len(title), "", intro, ""]
        for module_name, names in sections:
            if module_name in COLLIDING_MODULES:
                # ``twspy.websocket`` is both a module and the class ``twspy`` exports: name the
                # module's members without a module target, or the two would collide.
                lines += [module_name, "-" * len(module_name), "", ".. currentmodule:: %s" % module_name, ""]
            else:
                lines += [".. automodule:: %s" % module_name, "   :no-members:", ""]
            module = importlib.import_module(module_name)
            for name in names:
                lines += [directive_for(getattr(module, name), name), ""]
        text = "\n".join(lines)
        path = os.path.join(app.srcdir, "api", page + ".rst")
        old = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
        if old != text:  # leave the file alone when nothing changed, so Sphinx rereads nothing
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)


def check_api_complete(app, env) -> None:
    """Warn (an error under -W) about a public name the reference does not document."""
    from sphinx.util import logging as sphinx_logging

    documented = set(env.get_domain("py").objects)
    for _, _, _, sections in api_members():
        for module_name, names in sections:
            for name in names:
                if "%s.%s" % (module_name, name) not in documented:
                    sphinx_logging.getLogger(__name__).warning("the API reference misses %s.%s", module_name, name)


def drop_type_docstrings(app, what, name, obj, options, lines) -> None:
    """A constant without a ``#:`` comment of its own would show its type's docstring (an int's,
    a dict's, a type alias's origin's): show its value alone."""
    import inspect

    if what in ("data", "attribute") and not inspect.isclass(obj) and lines:
        for source in (type(obj), getattr(obj, "__origin__", None)):  # a type alias shows its origin's
            type_doc = inspect.getdoc(source) or "" if source is not None else ""
            if type_doc and lines[0].strip() == type_doc.splitlines()[0].strip():
                lines.clear()
                return


def resolve_reexported(app, env, node, contnode):
    """A reference to ``twspy.client.connect`` finds ``twspy.connect``: each object is documented once,
    under the first public name that exports it (see :func:`api_members`)."""
    import importlib

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("twspy."):
        return None
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module prefix
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        attrs = parts[cut:]
        break
    else:
        return None
    if not attrs:  # a module named with the wrong role (:class:`twspy.server`)
        return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, "mod", target, node, contnode)
    try:
        obj = getattr(obj, attrs[0])
    except AttributeError:
        return None
    for module_name, name in documented_names():
        if getattr(importlib.import_module(module_name), name, None) is obj:
            new_target = ".".join([module_name, name] + attrs[1:])
            if new_target != target:
                domain = env.get_domain("py")
                return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], new_target, node,
                                           contnode)
    return None


_DOCUMENTED: list = []


def documented_names() -> list:
    """(module, name) of every name the reference documents (computed once)."""
    if not _DOCUMENTED:
        _DOCUMENTED.extend((module_name, name) for _, _, _, sections in api_members()
                           for module_name, names in sections for name in names)
    return _DOCUMENTED


def setup(app):
    app.connect("missing-reference", resolve_reexported)
    app.connect("autodoc-process-docstring", drop_type_docstrings)
    app.connect("builder-inited", write_api_pages)
    app.connect("env-check-consistency", check_api_complete)
