"""Keyword arguments renamed in the public API, still accepted for one release under their old names.

Public functions name the unit of a quantity in the argument (``time_limit_s``, ``timeout_s``,
``*_ms``). An argument renamed for that keeps working under its old name for one release::

    @renamed_keywords(time_limit="time_limit_s")
    def solve(graph, cluster, ..., time_limit_s: float = 30.0): ...

    solve(graph, cluster, time_limit=5)   # DeprecationWarning: use time_limit_s=; runs with time_limit_s=5

The one helper for every renamed keyword (in the ir, the layer every package may import), so that a
deprecation is a line above the function, not a copy of the mapping in each one.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from graphc.ir.errors import ArgumentTypeError

P = ParamSpec("P")
R = TypeVar("R")


def renamed_keywords(**renames: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that each old keyword of ``renames`` (old name -> new name) warns with a
    :class:`DeprecationWarning` pointing at the caller and passes its value under the new name.
    Giving both names raises :class:`~graphc.ir.errors.ArgumentTypeError`."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = fn.__qualname__.removesuffix(".__init__")

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise ArgumentTypeError(f"{name}: give {new}= only ({old}= is its deprecated name)")
                warnings.warn(
                    f"{name}: {old}= is deprecated and will be removed in the next release; use {new}=",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
