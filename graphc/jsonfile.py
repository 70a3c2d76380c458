"""Reading and writing the JSON files graphc keeps (graphs, plans, clusters, profiled times).

One place turns the ways reading can fail (missing file, unreadable file, invalid JSON) into the
format error of the caller, naming the file (and the line of invalid JSON); validation of the content
stays with each record's ``from_dict``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
        raise error(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


def write_json(path: str | Path, doc: Any) -> None:
    """Write ``doc`` indented; ``allow_nan`` off, so every number written is finite."""
    Path(path).write_text(json.dumps(doc, indent=1, allow_nan=False))
