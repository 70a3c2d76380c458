"""The cost graph: the contract between graphc's frontend and the placement solvers.

A :class:`Graph` is a directed acyclic dataflow graph whose nodes are operations (an ATen op, a leaf
module, or a layer of an imported profile) and whose edges are tensors flowing between them. It is
backed by a ``networkx.DiGraph``; every node's data is one :class:`NodeData` record stored under the
key ``"data"`` of the networkx node, every edge's one :class:`EdgeData` under ``"data"``. This module is
the one place where those attributes are documented. Nothing here imports torch: a solver can use a
graph without it.

Units: bytes for memory and tensors, FLOPs (a multiply-add counts 2) for compute, milliseconds for
measured times.

Graphs are saved as JSON with a schema name and version and validated on load (:func:`Graph.load`);
an imported or traced graph round-trips through :meth:`Graph.save` / :meth:`Graph.load` unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import networkx as nx

from graphc.ir.errors import ConfigurationError, GraphFormatError, UnknownNameError
from graphc.ir.jsonfile import check_header, read_json, write_json

SCHEMA = "graphc.graph"
SCHEMA_VERSION = 1


@dataclass
class NodeData:
    """Everything the cost model and the solvers know about one node.

    Attributes:
        name: unique node name (the fx node name for traced graphs, ``nodeN`` for PipeDream, ...).
        op: what the node computes: an ATen op (``aten.convolution.default``), a module type
            (``Conv2d``), a layer description from a profile, or ``input`` for a graph input.
        module: qualified name of the module the node belongs to (``layer1.0.conv1``), "" if none.
        fx_nodes: names of the nodes of the traced ``torch.fx.GraphModule`` this node stands for
            (one for op granularity, several for a leaf module); empty for imported graphs.
        output_shapes: shape of each tensor the node outputs.
        output_dtypes: dtype name (``float32``) of each output, parallel to ``output_shapes``.
        fwd_flops: floating-point operations of the forward pass.
        bwd_flops: floating-point operations of the backward pass (0 where no gradient is needed).
        bytes_read: bytes of tensors read by the forward pass (inputs and parameters).
        bytes_written: bytes of tensors written by the forward pass (outputs).
        output_bytes: bytes of the node's outputs (what a consumer on another device receives at most).
        param_bytes: bytes of the trainable parameters the node owns.
        params: qualified names of those parameters (a tied parameter is owned by its first user).
        buffer_bytes: bytes of non-trainable state (batch-norm running statistics, ...).
        activation_bytes: bytes kept alive from the forward until this node's backward: the node's
            outputs that some backward saves, plus tensors saved inside the op itself.
        measured_ms: measured time of the node's own pass per device label (``"V100"``, ``"cpu"``,
            ``"accelerator"``) as given by a profile; for an explicit backward node, its backward time.
        measured_bwd_ms: measured backward time per device label, for graphs of forward nodes only.
        memory_bytes: memory the node needs on a device as given by a profile (dnn-partitioning's
            ``size``), or None when memory is computed from params and activations.
        is_backward: the node is an explicit backward node of an imported training graph.
        allowed_kinds: device kinds the node may run on (None: any).
        colocation_group: nodes sharing a group must be placed on one device (None: no constraint).
        is_output: the node produces an output of the traced program.
    """

    name: str
    op: str
    module: str = ""
    fx_nodes: list[str] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    output_dtypes: list[str] = field(default_factory=list)
    fwd_flops: float = 0.0
    bwd_flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    output_bytes: float = 0.0
    param_bytes: float = 0.0
    params: list[str] = field(default_factory=list)
    buffer_bytes: float = 0.0
    activation_bytes: float = 0.0
    measured_ms: dict[str, float] = field(default_factory=dict)
    measured_bwd_ms: dict[str, float] = field(default_factory=dict)
    memory_bytes: float | None = None
    is_backward: bool = False
    allowed_kinds: list[str] | None = None
    colocation_group: str | None = None
    is_output: bool = False


    def profile_key(self) -> str:
        """What a profiled time is keyed by: the op, output shapes and dtypes, FLOPs and bytes read.

        Two nodes with the same key compute the same thing on tensors of the same sizes (the FLOPs and
        bytes read stand in for the input and parameter shapes), so one measurement serves both.
        """
        return json.dumps(
            [self.op, self.output_shapes, self.output_dtypes, round(self.fwd_flops), round(self.bwd_flops), round(self.bytes_read)],
            separators=(",", ":"),
        )


@dataclass
class EdgeData:
    """A tensor flowing from one node to another.

    Attributes:
        bytes: size of the tensor(s) the consumer reads from the producer.
        transfer_ms: measured time to move it between devices as given by a profile (dnn-partitioning's
            ``cost``), per device-pair label; empty when the cost model derives it from ``bytes``.
        output_index: which output of the producer flows on the edge (None: all of them).
        param_bytes: the part of ``bytes`` that is a parameter the consumer uses and the producer owns
            (a parameter shared by several nodes flows from its first user): every microbatch sends it
            whole, where the rest is split with the batch.
    """

    bytes: float = 0.0
    transfer_ms: dict[str, float] = field(default_factory=dict)
    output_index: int | None = None
    param_bytes: float = 0.0


_NODE_FIELDS = {f.name: f for f in fields(NodeData)}
_EDGE_FIELDS = {f.name: f for f in fields(EdgeData)}


class Graph:
    """A cost graph: a DAG of :class:`NodeData` joined by :class:`EdgeData`.

    ``meta`` holds graph-level facts from the source: batch size, granularity, the device a profile was
    measured on, the cluster limits a benchmark file states, and so on (JSON values only).
    """

    def __init__(self, name: str = "graph", meta: dict[str, Any] | None = None) -> None:
        self.name = name
        self.meta: dict[str, Any] = dict(meta or {})
        self._g = nx.DiGraph()

    # -- building -----------------------------------------------------------------------------
    def add_node(self, data: NodeData) -> NodeData:
        """Add a node; its name must be new."""
        if data.name in self._g:
            raise ConfigurationError(f"graph {self.name!r} already has a node named {data.name!r}")
        self._g.add_node(data.name, data=data)
        return data

    def add_edge(self, src: str, dst: str, data: EdgeData | None = None) -> EdgeData:
        """Add an edge between two existing nodes (adding it twice replaces the first)."""
        for end in (src, dst):
            if end not in self._g:
                raise ConfigurationError(f"edge {src!r} -> {dst!r}: graph {self.name!r} has no node {end!r}")
        data = data or EdgeData()
        self._g.add_edge(src, dst, data=data)
        return data

    # -- reading ------------------------------------------------------------------------------
    def node(self, name: str) -> NodeData:
        if name not in self._g:
            raise UnknownNameError(f"graph {self.name!r} has no node {name!r}")
        return self._g.nodes[name]["data"]

    def edge(self, src: str, dst: str) -> EdgeData:
        if not self._g.has_edge(src, dst):
            raise UnknownNameError(f"graph {self.name!r} has no edge {src!r} -> {dst!r}")
        return self._g.edges[src, dst]["data"]

    def __contains__(self, name: object) -> bool:
        return name in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    @property
    def num_edges(self) -> int:
        return self._g.number_of_edges()

    def node_names(self) -> list[str]:
        """Node names in insertion order."""
        return list(self._g.nodes)

    def nodes(self) -> Iterator[NodeData]:
        """Node records in insertion order."""
        for _, data in self._g.nodes(data="data"):
            yield data

    def edges(self) -> Iterator[tuple[str, str, EdgeData]]:
        """``(src, dst, data)`` for every edge, in insertion order."""
        yield from self._g.edges(data="data")

    def predecessors(self, name: str) -> list[str]:
        return list(self._g.predecessors(name))

    def successors(self, name: str) -> list[str]:
        return list(self._g.successors(name))

    def topological_order(self) -> list[str]:
        """Node names in a deterministic topological order (ties broken by insertion order)."""
        index = {n: i for i, n in enumerate(self._g.nodes)}
        return list(nx.lexicographical_topological_sort(self._g, key=index.__getitem__))

    def to_networkx(self) -> nx.DiGraph:
        """The backing ``networkx.DiGraph`` (node/edge attribute ``"data"`` holds the records)."""
        return self._g

    # -- totals -------------------------------------------------------------------------------
    def total_fwd_flops(self) -> float:
        return sum(n.fwd_flops for n in self.nodes())

    def total_bwd_flops(self) -> float:
        return sum(n.bwd_flops for n in self.nodes())

    def total_param_bytes(self) -> float:
        return sum(n.param_bytes for n in self.nodes())

    def batch_size(self) -> int | None:
        """The batch size the graph was traced for (``meta["batch_size"]``), None when it does not say
        (an imported benchmark graph)."""
        recorded = self.meta.get("batch_size")
        return None if recorded is None else int(recorded)

    def num_params(self) -> int:
        """Number of trainable parameter elements, from ``meta["num_params"]`` when a trace set it."""
        if "num_params" in self.meta:
            return int(self.meta["num_params"])
        return int(self.total_param_bytes() // 4)

    def fingerprint(self) -> str:
        """A hash of the graph's structure: node names, ops, output shapes and dtypes, and edges.

        Costs are left out, so re-annotating the same model with another cost model keeps it; tracing
        other input shapes or another model changes it. Plans record it to refuse the wrong model.
        """
        digest = hashlib.sha256()
        for n in self.nodes():
            digest.update(json.dumps([n.name, n.op, n.output_shapes, n.output_dtypes]).encode())
        for src, dst, _ in self.edges():
            digest.update(json.dumps([src, dst]).encode())
        return digest.hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, nodes={len(self)}, edges={self.num_edges})"

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "name": self.name,
            "meta": self.meta,
            "nodes": [asdict(n) for n in self.nodes()],
            "edges": [{"src": s, "dst": d, **asdict(e)} for s, d, e in self.edges()],
        }

    def save(self, path: str | Path) -> None:
        """Write the graph as JSON (``allow_nan`` off: every number is finite)."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> Graph:
        """Build a graph from :meth:`to_dict` output, validating every field; errors name the field."""
        check_header(doc, SCHEMA, SCHEMA_VERSION, source, GraphFormatError)
        _check(isinstance(doc.get("name"), str), source, "name", "expected a string")
        _check(isinstance(doc.get("meta", {}), dict), source, "meta", "expected an object")
        graph = cls(doc["name"], doc.get("meta", {}))
        for i, raw in enumerate(_list_field(doc, "nodes", source)):
            where = f"nodes[{i}]"
            record = _record(raw, _NODE_FIELDS, source, where, required=("name", "op"))
            _check(record["name"] not in graph, source, f"{where}.name", f"duplicate node {record['name']!r}")
            graph.add_node(NodeData(**record))
        for i, raw in enumerate(_list_field(doc, "edges", source)):
            where = f"edges[{i}]"
            _check(isinstance(raw, dict), source, where, "expected an object")
            raw = dict(raw)
            ends = [raw.pop("src", None), raw.pop("dst", None)]
            for key, end in zip(("src", "dst"), ends):
                _check(end in graph, source, f"{where}.{key}", f"no node named {end!r}")
            _check(not graph._g.has_edge(*ends), source, where, f"duplicate edge {ends[0]!r} -> {ends[1]!r}")
            graph.add_edge(ends[0], ends[1], EdgeData(**_record(raw, _EDGE_FIELDS, source, where)))
        _check(nx.is_directed_acyclic_graph(graph._g), source, "edges", "the graph has a cycle")
        return graph

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Read a graph written by :meth:`save`."""
        return cls.from_dict(read_json(path, GraphFormatError, "graph"), str(path))


def _check(ok: bool, source: str, where: str, why: str) -> None:
    if not ok:
        raise GraphFormatError(f"{source}: {where}: {why}")


def _list_field(doc: dict, key: str, source: str) -> list:
    value = doc.get(key)
    _check(isinstance(value, list), source, key, "expected a list")
    return value


# The JSON type each annotation of a field admits; checked on load so a bad file fails on its field.
def _conforms(value: Any, annotation: str) -> bool:
    number = (int, float)
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, number) and not isinstance(value, bool) and math.isfinite(value)
    if annotation == "float | None":
        return value is None or _conforms(value, "float")
    if annotation == "int | None":
        return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    if annotation == "str | None":
        return value is None or isinstance(value, str)
    if annotation == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if annotation == "list[str] | None":
        return value is None or _conforms(value, "list[str]")
    if annotation == "list[list[int]]":
        return isinstance(value, list) and all(
            isinstance(s, list) and all(isinstance(d, int) for d in s) for s in value
        )
    if annotation == "dict[str, float]":
        return isinstance(value, dict) and all(
            isinstance(k, str) and _conforms(v, "float") for k, v in value.items()
        )
    raise AssertionError(f"no JSON check for annotation {annotation!r}")


def _record(raw: Any, known: dict, source: str, where: str, required: tuple[str, ...] = ()) -> dict:
    _check(isinstance(raw, dict), source, where, "expected an object")
    for key in required:
        _check(key in raw, source, f"{where}.{key}", "missing")
    for key, value in raw.items():
        _check(key in known, source, f"{where}.{key}", f"unknown field (known: {', '.join(known)})")
        annotation = str(known[key].type)
        _check(_conforms(value, annotation), source, f"{where}.{key}", f"expected {annotation}, got {value!r}")
    return dict(raw)
