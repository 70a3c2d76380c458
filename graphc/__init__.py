"""graphc: trace a PyTorch model into a cost graph, place it across devices, and run it."""

from graphc.errors import GraphcError, GraphFormatError, TraceError
from graphc.graph import EdgeData, Graph, NodeData

__all__ = ["EdgeData", "Graph", "GraphFormatError", "GraphcError", "NodeData", "TraceError"]
