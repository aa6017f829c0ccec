"""Old spellings that keep working, with a DeprecationWarning.

:func:`keyword_only` turns options that used to be positional into keyword-only ones
without breaking callers: the signature (what type checkers and ``help()`` see) has them
after ``*``, and a call that still passes them by position is mapped onto their names,
in their order, with a warning.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, TypeVar

__all__ = ["keyword_only"]

F = TypeVar("F", bound=Callable[..., Any])


def keyword_only(positional: int) -> Callable[[F], F]:
    """Decorate a function whose parameters after the first ``positional`` (``self``
    counted) became keyword-only: extra positional arguments still bind to them, in order,
    with a DeprecationWarning naming the keywords to use."""
    def decorate(func: F) -> F:
        names = [p.name for p in inspect.signature(func).parameters.values()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY]
        qualname = func.__qualname__.replace(".__init__", "")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > positional:
                extra = args[positional:]
                if len(extra) > len(names):
                    raise TypeError("%s() takes at most %d positional arguments" % (qualname, positional + len(names)))
                given = names[:len(extra)]
                for name, value in zip(given, extra):
                    if name in kwargs:
                        raise TypeError("%s() got multiple values for argument %r" % (qualname, name))
                    kwargs[name] = value
                warnings.warn("%s(): passing %s by position is deprecated; use keywords (%s=...)"
                              % (qualname, ", ".join(given), given[0]), DeprecationWarning, stacklevel=2)
                args = args[:positional]
            return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate
