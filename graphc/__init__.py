"""graphc: trace a PyTorch model into a cost graph, place it across devices, and run it.

Three layers, one sub-package each (ARCHITECTURE.md): :mod:`graphc.ir` (the cost graph, errors),
:mod:`graphc.frontend` (tracing, annotation, profiling, the zoo) and :mod:`graphc.app` (``compile``,
``calibrate``, the CLI). ``graphc.zoo`` and ``graphc.importers`` are the public names of the zoo and the importers.

The cost-graph types import without torch (a solver never needs it); ``trace``, ``compile`` and the
other torch-facing names load torch on first use. ``ElasticAveragingSync`` and ``LocalSGDSync`` (the
averaging strategies' records, :mod:`placement.sync`) are what ``graphc.compile(sync=...)`` also takes.

Every error graphc raises on purpose is a :class:`GraphcError`; the kinds a caller catches (a bad file,
a plan for another model, a bad argument, no placement, a failed run) are exported here, and the whole
tree is in :mod:`graphc.ir.errors`.
"""

from __future__ import annotations

import importlib
from typing import Any

from graphc.ir.errors import (
    ConfigurationError,
    FormatError,
    GraphcError,
    GraphFormatError,
    MismatchError,
    MissingFileError,
    PlacementError,
    RuntimeFault,
    TraceError,
)
from graphc.ir.graph import EdgeData, Graph, NodeData

_LAZY = {
    "trace": "graphc.frontend.tracing",
    "TracedProgram": "graphc.frontend.tracing",
    "leaf_module": "graphc.frontend.leaf",
    "compile": "graphc.app.compiler",
    "calibrate": "graphc.app.calibrate",
    "Calibration": "graphc.app.calibrate",
    "CompiledModel": "graphc.app.compiler",
    "ElasticAveragingSync": "placement.sync",
    "LocalSGDSync": "placement.sync",
}

__all__ = [
    "Calibration",
    "CompiledModel",
    "ConfigurationError",
    "EdgeData",
    "ElasticAveragingSync",
    "FormatError",
    "Graph",
    "GraphFormatError",
    "GraphcError",
    "LocalSGDSync",
    "MismatchError",
    "MissingFileError",
    "NodeData",
    "PlacementError",
    "RuntimeFault",
    "TraceError",
    "TracedProgram",
    "calibrate",
    "compile",
    "leaf_module",
    "trace",
]


# Loaded on first use on purpose: ``placement`` imports graphc.ir.*, which runs this file, and must not
# load torch (nor the application layer above it).
def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'graphc' has no attribute {name!r}")
