"""Builds the optional C accelerator, twspy._speedups; the metadata lives in pyproject.toml.

The extension is optional, as in websockets, aiohttp and tornado: without a C compiler, or
when compiling fails for any reason, the install goes on and twspy uses its pure-Python
masking (``twspy.speedups_enabled()`` then returns False). ``TWSPY_NO_SPEEDUPS=1`` at build
time skips the extension (a pure-Python wheel); at run time it makes twspy ignore a built one.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class optional_build_ext(build_ext):
    """build_ext that warns instead of failing when the extension can't be compiled."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers, a platform quirk
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc):
        sys.stderr.write("warning: twspy._speedups not built (%s); twspy will use pure-Python masking\n" % exc)


def _disabled():
    return os.environ.get("TWSPY_NO_SPEEDUPS", "") not in ("", "0")


# -O3 is CPython's default on Unix; stated for builds whose CFLAGS lower it: the masking
# loop is vectorized from -O3 on with GCC < 12.
_ARGS = [] if sys.platform == "win32" else ["-O3", "-std=c99"]

setup(
    ext_modules=[] if _disabled() else [
        Extension("twspy._speedups", ["twspy/_speedups.c"], extra_compile_args=_ARGS, optional=True)],
    cmdclass={"build_ext": optional_build_ext},
)
