"""graphc: trace a PyTorch model into a cost graph, place it across devices, and run it."""

from graphc.errors import GraphcError, GraphFormatError, TraceError
from graphc.graph import EdgeData, Graph, NodeData
from graphc.leaf import leaf_module
from graphc.tracing import TracedProgram, trace

__all__ = [
    "EdgeData",
    "Graph",
    "GraphFormatError",
    "GraphcError",
    "NodeData",
    "TraceError",
    "TracedProgram",
    "leaf_module",
    "trace",
]
