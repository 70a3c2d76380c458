"""Import the inputs of "Efficient Algorithms for Device Placement of DNN Graph Operators" (NeurIPS 2020).

An input file is one JSON object::

    {"maxSizePerFPGA": <bytes>, "maxFPGAs": <int>, "maxCPUs": <int>,
     "nodes": [{"id": 3, "name": "node3", "supportedOnFpga": 1, "cpuLatency": 6.96, "fpgaLatency": 0.696,
                "isBackwardNode": 0, "colorClass": 3, "size": 131325952.0, "layerId": 3}, ...],
     "edges": [{"sourceId": 1, "destId": 3, "cost": 0.0, "size": 0.0}, ...]}

"FPGA" means any accelerator (the layer graphs carry GPU-profiled latencies, in ms). ``colorClass``,
``size``, ``layerId``, ``name`` (nodes) and ``size`` (edges) are optional; every other field above is
required. A field this module does not know is an error rather than silently dropped, because an
unknown field in a placement input may change what the problem means. An expert split
(``experts/*.json``) lists, per accelerator and per CPU, the ids of the nodes placed there.

``_training`` files are imported as they are; they come in two shapes. In the *layer-level* files
(``LayerGraphs``, as in ``shared/benchmarks/dnn-partitioning/throughput``) backward node ``nodeNgrad``
shares ``nodeN``'s colour class, the edges among backward nodes run in the *forward* direction
(``node1grad -> node3grad`` mirrors ``node1 -> node3``) and no edge joins the forward and the backward
part. In the *operator-level* files (``OperatorGraphs`` of the paper's repository, hundreds to 2,000
nodes) edges among backward nodes run the way gradients flow (from the loss towards the inputs), edges
from forward to backward nodes carry the activations a backward node reads, some colour classes hold
backward nodes only and some backward nodes have no colour class. No file has an edge from a backward
to a forward node. How the pipeline partitioners read these shapes (a backward node follows its colour
class; backward-only classes are ordered by their gradient edges) is in
:mod:`placement.pipeline.ideals`. The files suit the paper's throughput objective (the maximum load of a
device); a latency simulation of the layer-level ones would not see the forward-before-backward
dependency.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, NoReturn

from graphc.ir.errors import ConfigurationError, GraphFormatError
from graphc.ir.graph import EdgeData, Graph, NodeData

OBJECTIVES = ("latency", "throughput")
TRANSFER_LABEL = "accelerator-cpu"
_TOP_FIELDS = ("maxSizePerFPGA", "maxFPGAs", "maxCPUs", "nodes", "edges")
_NODE_FIELDS = (
    "id", "name", "supportedOnFpga", "cpuLatency", "fpgaLatency", "isBackwardNode", "colorClass", "size",
    "layerId",
)  # fmt: skip
_EDGE_FIELDS = ("sourceId", "destId", "cost", "size")
_EXPERT_FIELDS = ("fpgas", "cpus", "maxLoad")
_EXPERT_DEVICE_FIELDS = ("nodes", "load")
_MISSING: Any = object()

_Nodes = list[tuple[int, NodeData, int | None]]  # (id, node, layerId), sorted by id
_Edges = dict[tuple[int, int], tuple[EdgeData, str]]  # (source id, dest id) -> (edge, field path)


class _Record:
    """Typed reads of one JSON object's fields; every error names the file and the field path."""

    def __init__(self, raw: Any, source: str, where: str, known: tuple[str, ...]) -> None:
        self.source, self.where = source, where
        if not isinstance(raw, dict):
            self.fail(None, f"expected a JSON object, got {_kind(raw)}")
        unknown = [key for key in raw if key not in known]
        if unknown:
            self.fail(unknown[0], f"unknown field (known: {', '.join(known)})")
        self.raw: dict[str, Any] = raw

    def fail(self, key: str | None, why: str) -> NoReturn:
        path = self.where if key is None else f"{self.where}.{key}" if self.where else key
        raise GraphFormatError(f"{self.source}: {path or 'top level'}: {why}")

    def absent(self, key: str, default: Any) -> bool:
        """True when an optional field is left out; a left-out required field is an error."""
        if key in self.raw:
            return False
        if default is _MISSING:
            self.fail(key, "missing")
        return True

    def number(self, key: str, default: Any = _MISSING) -> float:
        """A finite non-negative number (``NaN``, ``Infinity`` and booleans are refused)."""
        if self.absent(key, default):
            return default
        value = self.raw[key]
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            self.fail(key, f"expected a finite non-negative number, got {value!r}")
        return float(value)

    def integer(self, key: str, default: Any = _MISSING) -> int:
        """A non-negative integer (``3.0`` and booleans are refused)."""
        if self.absent(key, default):
            return default
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(key, f"expected a non-negative integer, got {value!r}")
        return value

    def flag(self, key: str) -> bool:
        """A boolean written as ``true``/``false`` or ``1``/``0``."""
        self.absent(key, _MISSING)
        value = self.raw[key]
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            self.fail(key, f"expected true/false or 1/0, got {value!r}")
        return bool(value)

    def text(self, key: str, default: Any = _MISSING) -> str:
        """A non-empty string."""
        if self.absent(key, default):
            return default
        value = self.raw[key]
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def items(self, key: str, default: Any = _MISSING) -> list:
        """A JSON list."""
        if self.absent(key, default):
            return default
        value = self.raw[key]
        if not isinstance(value, list):
            self.fail(key, f"expected a list, got {_kind(value)}")
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), repr(value))


# -- the input graph ---------------------------------------------------------------------------


def load_dnn_partitioning(path: str | Path, objective: str | None = None) -> Graph:
    """Read a dnn-partitioning input file into a cost graph.

    Nodes keep the file's ``name`` (``node3``, ``node3grad``; ``node<id>`` when a node has no name):
    these names match the PipeDream profiles the graphs come from and read better than ids. The ids,
    which expert splits refer to, are kept in ``meta["node_ids"]`` (name -> id) and used by
    :func:`load_expert_split`. Per node: ``op`` is the name too (the file has no other description),
    ``measured_ms = {"cpu": cpuLatency, "accelerator": fpgaLatency}``, ``allowed_kinds`` is None when
    ``supportedOnFpga`` else ``["cpu"]``, ``is_backward`` from ``isBackwardNode``, ``colocation_group``
    is ``str(colorClass)`` (None without one) and ``memory_bytes`` is ``size`` (None without one). Per
    edge: ``bytes`` is ``size`` (0 without one) and ``transfer_ms = {"accelerator-cpu": cost}``.

    Nodes are ordered by id and edges by (source id, destination id). The graph is named after the
    file stem; ``meta`` holds ``source``, ``file``, ``objective`` (``objective`` if given, else the
    name of the folder, ``latency`` or ``throughput``, else None), ``max_accelerator_bytes``,
    ``max_accelerators``, ``max_cpus``, ``training`` (the graph has backward nodes), ``node_ids`` and
    ``layer_ids`` (name -> ``layerId`` for the nodes that have one).

    Raises:
        GraphFormatError: the file is missing, not JSON, or malformed; the message names the file and
            the field (``nodes[3].cpuLatency``) and what was expected. Unknown fields, duplicate ids or
            names, duplicate edges, edges to unknown ids and cycles (the message lists the edges of
            one) are errors.
    """
    path = Path(path)
    source = str(path)
    objective = _objective(path, objective)
    doc = _read_json(path)
    if isinstance(doc, dict) and "nodes" not in doc and ("fpgas" in doc or "cpus" in doc):
        raise GraphFormatError(f"{source}: this is an expert split, not a graph: use load_expert_split")
    top = _Record(doc, source, "", _TOP_FIELDS)
    nodes = _read_nodes(top, source)
    ids = {node_id: data.name for node_id, data, _ in nodes}
    edges = _read_edges(top, source, ids)
    graph = Graph(path.stem, _meta(path, objective, top, nodes))
    for _, data, _ in nodes:
        graph.add_node(data)
    for (src, dst), (data, _) in sorted(edges.items(), key=lambda item: item[0]):
        graph.add_edge(ids[src], ids[dst], data)
    _check_acyclic(source, edges)
    return graph


def _objective(path: Path, objective: str | None) -> str | None:
    if objective is None:
        return path.parent.name if path.parent.name in OBJECTIVES else None
    if objective not in OBJECTIVES:
        raise ConfigurationError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return objective


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GraphFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise GraphFormatError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise GraphFormatError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except OSError as exc:
        raise GraphFormatError(f"{path}: cannot read ({exc.strerror})") from None


def _read_nodes(top: _Record, source: str) -> _Nodes:
    """``(id, node, layerId)`` per node, sorted by id; ids and names are unique."""
    nodes, where_id, where_name = [], {}, {}
    for i, raw in enumerate(top.items("nodes")):
        record = _Record(raw, source, f"nodes[{i}]", _NODE_FIELDS)
        node_id, data, layer = _node(record)
        if node_id in where_id:
            record.fail("id", f"duplicate id {node_id} (also at {where_id[node_id]})")
        if data.name in where_name:
            record.fail("name", f"duplicate name {data.name!r} (also at {where_name[data.name]})")
        where_id[node_id], where_name[data.name] = record.where, record.where
        nodes.append((node_id, data, layer))
    if not nodes:
        top.fail("nodes", "expected at least one node")
    return sorted(nodes, key=lambda entry: entry[0])


def _node(record: _Record) -> tuple[int, NodeData, int | None]:
    node_id = record.integer("id")
    name = record.text("name", f"node{node_id}")
    color = record.integer("colorClass", None)
    data = NodeData(
        name=name,
        op=name,
        measured_ms={"cpu": record.number("cpuLatency"), "accelerator": record.number("fpgaLatency")},
        memory_bytes=record.number("size", None),
        is_backward=record.flag("isBackwardNode"),
        allowed_kinds=None if record.flag("supportedOnFpga") else ["cpu"],
        colocation_group=None if color is None else str(color),
    )
    return node_id, data, record.integer("layerId", None)


def _read_edges(top: _Record, source: str, ids: dict[int, str]) -> _Edges:
    """``(source id, dest id) -> (edge, field path)``; both ends exist, no edge is given twice."""
    edges: _Edges = {}
    for i, raw in enumerate(top.items("edges")):
        record = _Record(raw, source, f"edges[{i}]", _EDGE_FIELDS)
        ends = record.integer("sourceId"), record.integer("destId")
        for key, end in zip(("sourceId", "destId"), ends):
            if end not in ids:
                record.fail(key, f"no node has id {end}")
        if ends in edges:
            record.fail(None, f"duplicate edge {ends[0]} -> {ends[1]} (also at {edges[ends][1]})")
        data = EdgeData(bytes=record.number("size", 0.0), transfer_ms={TRANSFER_LABEL: record.number("cost")})
        edges[ends] = (data, record.where)
    return edges


def _meta(path: Path, objective: str | None, top: _Record, nodes: _Nodes) -> dict:
    return {
        "source": "dnn-partitioning",
        "file": path.name,
        "objective": objective,
        "max_accelerator_bytes": top.number("maxSizePerFPGA"),
        "max_accelerators": top.integer("maxFPGAs"),
        "max_cpus": top.integer("maxCPUs"),
        "training": any(data.is_backward for _, data, _ in nodes),
        "node_ids": {data.name: node_id for node_id, data, _ in nodes},
        "layer_ids": {data.name: layer for _, data, layer in nodes if layer is not None},
    }


def _check_acyclic(source: str, edges: _Edges) -> None:
    """Raise :class:`GraphFormatError` naming the edges of one cycle, if the graph has any.

    Kahn's algorithm on the ids (linear: a 2,000-node file in milliseconds, where networkx's
    ``find_cycle`` took over a second); nodes it cannot order each keep a predecessor it cannot order,
    so walking those predecessors back from any of them closes a cycle."""
    preds: dict[int, list[int]] = {}
    succs: dict[int, list[int]] = {}
    indegree: dict[int, int] = {}
    for src, dst in edges:
        succs.setdefault(src, []).append(dst)
        preds.setdefault(dst, []).append(src)
        indegree[dst] = indegree.get(dst, 0) + 1
    ready = [node for node in succs if node not in indegree]
    while ready:
        for dst in succs.get(ready.pop(), ()):
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
    stuck = {node for node, count in indegree.items() if count > 0}
    if not stuck:
        return
    walk, seen = [min(stuck)], set()
    while walk[-1] not in seen:
        seen.add(walk[-1])
        walk.append(next(src for src in preds[walk[-1]] if src in stuck))
    loop = walk[walk.index(walk[-1]) :][::-1]  # the cycle in edge direction, first node repeated last
    described = ", ".join(f"{edges[src, dst][1]} ({src} -> {dst})" for src, dst in itertools.pairwise(loop))
    raise GraphFormatError(f"{source}: edges: the graph has a cycle: {described}")


# -- expert splits -----------------------------------------------------------------------------


def load_expert_split(path: str | Path, graph: Graph) -> dict[str, str]:
    """Read a human-expert split and return node name -> device label for ``graph``.

    ``fpgas[i].nodes`` lists the ids of the nodes on accelerator ``i`` (label ``"accelerator:i"``),
    ``cpus[j].nodes`` those on CPU ``j`` (``"cpu:j"``); ``load`` and ``maxLoad`` (``-1``: not computed)
    are ignored. Ids are resolved through ``graph.meta["node_ids"]``, so ``graph`` must come from
    :func:`load_dnn_partitioning`.

    The published splits list every node of the *inference* graphs. A node the file does not mention
    is placed with the nodes of its ``colocation_group`` when those are mentioned and all on one device:
    the graph requires it (a training graph's backward node ``node7grad`` shares ``node7``'s colour
    class), so an inference split applies to the training graph of the same network. Any other
    unmentioned node is an error: filling it in with a guess would change the baseline being compared.
    The device counts are not checked against ``graph.meta`` limits; judging a placement is the
    planner's job, not the reader's.

    Raises:
        GraphFormatError: the file is malformed, names an id the graph lacks or an id twice, or leaves
            nodes unplaced; the message names the file and the field (``fpgas[2].nodes[5]``).
    """
    path = Path(path)
    source = str(path)
    id_to_name = _graph_ids(source, graph)
    top = _Record(_read_json(path), source, "", _EXPERT_FIELDS)
    if "fpgas" not in top.raw and "cpus" not in top.raw:
        top.fail(None, "expected 'fpgas' and/or 'cpus' lists of devices")
    placed: dict[str, str] = {}
    where: dict[str, str] = {}
    for key, kind in (("fpgas", "accelerator"), ("cpus", "cpu")):
        for i, raw in enumerate(top.items(key, [])):
            device = _Record(raw, source, f"{key}[{i}]", _EXPERT_DEVICE_FIELDS)
            for j, node_id in enumerate(device.items("nodes")):
                name = _expert_node(device, j, node_id, id_to_name, graph.name)
                if name in placed:
                    device.fail(f"nodes[{j}]", f"node id {node_id} is already placed at {where[name]}")
                placed[name], where[name] = f"{kind}:{i}", f"{device.where}.nodes[{j}]"
    _fill_colocated(source, graph, placed)
    return {name: placed[name] for name in graph.node_names()}


def _graph_ids(source: str, graph: Graph) -> dict[int, str]:
    ids = graph.meta.get("node_ids")
    if not isinstance(ids, dict):
        raise GraphFormatError(
            f"{source}: graph {graph.name!r} has no meta['node_ids']; expert splits refer to node ids, "
            "so apply them to a graph read by load_dnn_partitioning"
        )
    return {node_id: name for name, node_id in ids.items()}


def _expert_node(device: _Record, j: int, node_id: Any, id_to_name: dict[int, str], graph_name: str) -> str:
    if isinstance(node_id, bool) or not isinstance(node_id, int):
        device.fail(f"nodes[{j}]", f"expected a node id (integer), got {node_id!r}")
    if node_id not in id_to_name:
        device.fail(f"nodes[{j}]", f"node id {node_id} is not in graph {graph_name!r}")
    return id_to_name[node_id]


def _fill_colocated(source: str, graph: Graph, placed: dict[str, str]) -> None:
    """Place each unmentioned node with its colocation group; fail on the nodes that remain."""
    group_devices: dict[str, set[str]] = {}
    for name, device in placed.items():
        group = graph.node(name).colocation_group
        if group is not None:
            group_devices.setdefault(group, set()).add(device)
    unplaced = []
    for data in graph.nodes():
        if data.name in placed:
            continue
        devices = group_devices.get(data.colocation_group, set()) if data.colocation_group else set()
        if len(devices) == 1:
            placed[data.name] = next(iter(devices))
        else:
            unplaced.append(data.name)
    if unplaced:
        shown = ", ".join(unplaced[:5]) + (f" and {len(unplaced) - 5} more" if len(unplaced) > 5 else "")
        raise GraphFormatError(
            f"{source}: the split does not place {len(unplaced)} node(s) of graph {graph.name!r}: {shown} "
            "(neither listed nor colocated with listed nodes on a single device)"
        )
