"""The README's examples: from the repository root, run one as ``python3 -m examples.raw_server``.

``-m`` puts the working directory on ``sys.path`` (as ``python3 -m twspy`` does), so the examples
need no install and no path tweak of their own; after ``pip install .`` the form
``python3 examples/raw_server.py`` works too. This file keeps a stray installed package named
``examples`` from shadowing these.
"""
