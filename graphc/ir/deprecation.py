"""Names deprecated in the public API, still accepted for one release: renamed keyword arguments
(:func:`renamed_keywords`) and names a package no longer exports (:func:`moved_names`).

Public functions name the unit of a quantity in the argument (``time_limit_s``, ``timeout_s``,
``*_ms``). An argument renamed for that keeps working under its old name for one release::

    @renamed_keywords(time_limit="time_limit_s")
    def solve(graph, cluster, ..., time_limit_s: float = 30.0): ...

    solve(graph, cluster, time_limit=5)   # DeprecationWarning: use time_limit_s=; runs with time_limit_s=5

A name a package stopped exporting (a test helper moved to ``runtime.testing``, an internal) stays
reachable from the package for one release through the package's module ``__getattr__``::

    __getattr__ = moved_names("runtime", {"eager_run": runtime.testing, ...})

    from runtime import eager_run   # DeprecationWarning: import it from runtime.testing

One helper for each kind (in the ir, the layer every package may import), so that a deprecation is a
line, not a copy of the mapping in each function or package.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

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


def moved_names(package: str, homes: Mapping[str, ModuleType]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name of ``homes`` (name -> the module that holds it
    now) warns with a :class:`DeprecationWarning` pointing at the importer and returns the module's
    object; any other name raises :class:`AttributeError` as usual."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warnings.warn(
            f"{package}.{name} is deprecated and will be removed in the next release; "
            f"import it from {home.__name__}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(home, name)

    return __getattr__
