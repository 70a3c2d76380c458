"""graphc: trace a PyTorch model into a cost graph, place it across devices, and run it.

The cost-graph types import without torch (a solver never needs it); ``trace``, ``compile`` and the
other torch-facing names load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from graphc.errors import GraphcError, GraphFormatError, TraceError
from graphc.graph import EdgeData, Graph, NodeData

_LAZY = {
    "trace": "graphc.tracing",
    "TracedProgram": "graphc.tracing",
    "leaf_module": "graphc.leaf",
    "compile": "graphc.compiler",
    "CompiledModel": "graphc.compiler",
}

__all__ = [
    "CompiledModel",
    "EdgeData",
    "Graph",
    "GraphFormatError",
    "GraphcError",
    "NodeData",
    "TraceError",
    "TracedProgram",
    "compile",
    "leaf_module",
    "trace",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'graphc' has no attribute {name!r}")
