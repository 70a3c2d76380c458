"""Argument types for the command lines (``graphc`` and the ``graphc run`` worker): a value the user
typed is converted and range-checked by argparse itself, so a bad one ends in one line and exit 2
before any work starts."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def checked(convert: Callable[[str], Any], what: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert(text)`` if that works and passes ``ok``, else a one-line error
    saying what was expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = checked(int, "a whole number of at least 1", lambda v: v >= 1)
non_negative_int = checked(int, "a whole number of at least 0", lambda v: v >= 0)
positive_number = checked(float, "a number above 0", lambda v: math.isfinite(v) and v > 0)
port_number = checked(int, "a port number (1-65535)", lambda v: 1 <= v <= 65535)


def output_file(text: str) -> str:
    """``-o``, ``--trace``, ...: a file to write, in a folder that exists (checked before the work that
    produces it, not after)."""
    if not Path(text).expanduser().parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no folder {str(Path(text).parent)!r}")
    return text
