"""Reading and writing the JSON files graphc keeps (graphs, plans, clusters, profiled times).

One place turns the ways reading can fail (missing file, unreadable file, invalid JSON) into the
format error of the caller, naming the file (and the line of invalid JSON), and checks the header every
file starts with (:func:`check_header`: its schema name and version); validation of the rest of the
content stays with each record's ``from_dict``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_json(path: str | Path, error: type[Exception], what: str) -> Any:
    """The parsed content of ``path``; failures raise ``error`` saying which ``what`` (a plan, a cluster)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: cannot read the {what}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); "
            f"the file is cut short, damaged or not a {what}: write the {what} again"
        ) from None


def write_json(path: str | Path, doc: Any) -> None:
    """Write ``doc`` indented; ``allow_nan`` off, so every number written is finite.

    NumPy scalars (a solver's ``np.bool_`` flag, an ``np.int64`` count) are written as the Python
    values they hold: records are computed with NumPy, and reading them back gives plain JSON values."""
    Path(path).write_text(json.dumps(doc, indent=1, allow_nan=False, default=_numpy_scalar))


def _numpy_scalar(value: Any) -> Any:
    """``json.dumps``'s fallback: the Python value of a NumPy scalar; anything else is refused as before."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def check_header(doc: Any, schema: str, version: int, source: str, error: type[Exception]) -> None:
    """Refuse ``doc`` unless it is a JSON object whose ``schema`` and ``version`` fields are these;
    ``error`` says which file (``source``) and which field, and what was expected."""
    if not isinstance(doc, dict):
        raise error(f"{source}: top level: expected a JSON object")
    if doc.get("schema") != schema:
        raise error(f"{source}: schema: expected {schema!r}, got {doc.get('schema')!r}")
    if doc.get("version") != version:
        raise error(f"{source}: version: this graphc reads version {version}, the file has {doc.get('version')!r}")
