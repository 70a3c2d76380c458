"""Import PipeDream layer profiles (SOSP 2019) as :class:`graphc.Graph` cost graphs.

A profile has one line per layer, then one tab-indented line per edge::

    node2 -- Conv2d(3, 64, kernel_size=(11, 11), ...) -- forward_compute_time=22.316, \
backward_compute_time=6.405, activation_size=198246400.000, parameter_size=93184.000
    \tnode1 -- node2

Times are milliseconds measured on one GPU (a V100 for the published files), sizes are bytes. A layer
with several outputs (GNMT's LSTMs) gives ``activation_size=[a; b; c]``, one size per output; its
consumers are ``__getitem__(k)`` layers that pick output ``k``.

The module repr between the first and the last `` -- `` is kept verbatim, even if it contains `` -- ``
itself: the line is split at its *last* `` -- `` (the key=value list never contains one) and then at its
first (node names never contain one).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import networkx as nx

from graphc.ir.errors import ConfigurationError, GraphFormatError
from graphc.ir.graph import EdgeData, Graph, NodeData

_NODE_NAME = re.compile(r"node(\d+)")
_EDGE_LINE = re.compile(r"(node\d+) -- (node\d+)")
_INPUT_OP = re.compile(r"Input\d*")
_GETITEM_OP = re.compile(r"__getitem__\((\d+)\)")
_KEYS = ("forward_compute_time", "backward_compute_time", "activation_size", "parameter_size")
_EXPECTED_LINE = (
    "expected a layer line 'nodeN -- <module> -- forward_compute_time=<ms>, backward_compute_time=<ms>, "
    "activation_size=<bytes>, parameter_size=<bytes>' or an edge line '<tab>nodeA -- nodeB'"
)


@dataclass
class _Layer:
    """One parsed layer line."""

    line: int
    name: str
    op: str
    fwd_ms: float
    bwd_ms: float
    output_sizes: list[float]  # one entry per output
    multi_output: bool  # the file gave a list of sizes
    param_bytes: float


def load_pipedream(path: str | Path, device_label: str = "V100") -> Graph:
    """Read a PipeDream profile into a cost graph.

    Each layer ``nodeN`` becomes a node named ``nodeN`` whose ``op`` is the module repr;
    ``measured_ms`` / ``measured_bwd_ms`` hold the forward / backward time under ``device_label`` (the
    GPU the profile was taken on); ``activation_bytes`` and ``output_bytes`` are the activation size
    (summed over the outputs of a multi-output layer); ``param_bytes`` the parameter size. An edge's
    ``bytes`` is its producer's activation size, or, when the producer has several outputs and the
    consumer is ``__getitem__(k)``, the size of output ``k`` (with ``output_index=k``).

    Nodes are ordered by the integer in their name and edges by (producer, consumer) in that order, so
    the same file always gives the same graph whatever the line order. The graph is named after the
    file stem; ``meta`` holds ``source``, ``file``, ``profiled_on``, ``input_nodes`` and
    ``output_sizes`` (per-output bytes of the multi-output layers).

    Input layers (op ``Input``, ``Input0``, ...) keep their forward time as given, although in these
    files it is data loading, not compute (alexnet's ``node1`` takes 635 ms): the profile is imported
    unaltered and ``meta["input_nodes"]`` lists those nodes, so that a simulator or solver can exclude
    them from compute explicitly rather than the importer silently rewriting measured data.

    Raises:
        GraphFormatError: the file is missing or malformed; the message names the file, the line and
            what was expected (bad numbers, unknown keys, duplicate layers or edges, edges to unknown
            layers, cycles).
    """
    path = Path(path)
    if not isinstance(device_label, str) or not device_label:
        raise ConfigurationError(f"device_label must be a non-empty string, got {device_label!r}")
    layers, edges = _parse(path, _read_lines(path))
    graph = Graph(path.stem, _meta(path, device_label, layers))
    for layer in layers:
        graph.add_node(_node_data(layer, device_label))
    by_name = {layer.name: layer for layer in layers}
    for (src, dst), _line in sorted(edges.items(), key=lambda item: _edge_order(item[0])):
        graph.add_edge(src, dst, _edge_data(by_name[src], by_name[dst]))
    _check_acyclic(path, graph, edges)
    return graph


# -- reading -----------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GraphFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise GraphFormatError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise GraphFormatError(f"{path}: cannot read ({exc.strerror})") from None


def _parse(path: Path, lines: list[str]) -> tuple[list[_Layer], dict[tuple[str, str], int]]:
    """Layers sorted by node number, and edges mapped to the line that declared them."""
    layers: dict[str, _Layer] = {}
    edges: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        edge = _EDGE_LINE.fullmatch(text)
        if edge:
            _add_edge(path, number, (edge[1], edge[2]), edges)
        else:
            _add_layer(path, _parse_layer(path, number, text), layers)
    if not layers:
        raise GraphFormatError(f"{path}: no layer lines found; {_EXPECTED_LINE}")
    for (src, dst), number in edges.items():
        for end in (src, dst):
            if end not in layers:
                _fail(path, number, f"edge {src} -- {dst} names {end}, which no layer line declares")
    return sorted(layers.values(), key=lambda layer: _node_number(layer.name)), edges


def _add_edge(path: Path, number: int, edge: tuple[str, str], edges: dict[tuple[str, str], int]) -> None:
    if edge in edges:
        _fail(path, number, f"duplicate edge {edge[0]} -- {edge[1]} (first on line {edges[edge]})")
    edges[edge] = number


def _add_layer(path: Path, layer: _Layer, layers: dict[str, _Layer]) -> None:
    if layer.name in layers:
        _fail(path, layer.line, f"duplicate layer {layer.name} (first on line {layers[layer.name].line})")
    layers[layer.name] = layer


def _parse_layer(path: Path, number: int, text: str) -> _Layer:
    """Parse ``nodeN -- <module repr> -- k=v, k=v, ...``."""
    head, sep, attrs = text.rpartition(" -- ")
    name, sep2, op = head.partition(" -- ")
    if not sep or not sep2 or "=" not in attrs:
        _fail(path, number, f"{_EXPECTED_LINE}, got {text[:80]!r}")
    if not _NODE_NAME.fullmatch(name):
        _fail(path, number, f"layer name must look like 'node<integer>', got {name!r}")
    if not op.strip():
        _fail(path, number, f"layer {name} has an empty module description")
    values = _parse_attrs(path, number, attrs)
    sizes = _parse_sizes(path, number, values["activation_size"])
    return _Layer(
        line=number,
        name=name,
        op=op.strip(),
        fwd_ms=_number(path, number, "forward_compute_time", values["forward_compute_time"]),
        bwd_ms=_number(path, number, "backward_compute_time", values["backward_compute_time"]),
        output_sizes=sizes,
        multi_output=values["activation_size"].startswith("["),
        param_bytes=_number(path, number, "parameter_size", values["parameter_size"]),
    )


def _parse_attrs(path: Path, number: int, attrs: str) -> dict[str, str]:
    """The ``key=value`` list as a dict of raw strings; exactly the four known keys."""
    values: dict[str, str] = {}
    for item in re.split(r",\s*", attrs.strip()):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            _fail(path, number, f"expected 'key=value' in the attribute list, got {item!r}")
        if key not in _KEYS:
            _fail(path, number, f"unknown attribute {key!r} (known: {', '.join(_KEYS)})")
        if key in values:
            _fail(path, number, f"attribute {key!r} given twice")
        values[key] = value.strip()
    missing = [key for key in _KEYS if key not in values]
    if missing:
        _fail(path, number, f"missing attribute(s) {', '.join(missing)}")
    return values


def _parse_sizes(path: Path, number: int, text: str) -> list[float]:
    """``activation_size``: one number, or ``[a; b; ...]`` for a layer with several outputs."""
    if not text.startswith("["):
        return [_number(path, number, "activation_size", text)]
    if not text.endswith("]") or not text[1:-1].strip():
        _fail(path, number, f"activation_size: expected '[<bytes>; <bytes>; ...]', got {text!r}")
    return [_number(path, number, "activation_size", part) for part in text[1:-1].split(";")]


def _number(path: Path, number: int, key: str, text: str) -> float:
    """A finite, non-negative number."""
    try:
        value = float(text)
    except ValueError:
        _fail(path, number, f"{key}: expected a number, got {text.strip()!r}")
    if not math.isfinite(value) or value < 0:
        _fail(path, number, f"{key}: expected a finite non-negative number, got {text.strip()!r}")
    return value


def _fail(path: Path, number: int, why: str) -> NoReturn:
    raise GraphFormatError(f"{path}: line {number}: {why}")


# -- building ----------------------------------------------------------------------------------


def _node_number(name: str) -> int:
    return int(name[len("node") :])


def _edge_order(edge: tuple[str, str]) -> tuple[int, int]:
    return _node_number(edge[0]), _node_number(edge[1])


def _meta(path: Path, device_label: str, layers: list[_Layer]) -> dict:
    return {
        "source": "pipedream",
        "file": path.name,
        "profiled_on": device_label,
        "input_nodes": [layer.name for layer in layers if _INPUT_OP.fullmatch(layer.op)],
        "output_sizes": {layer.name: layer.output_sizes for layer in layers if layer.multi_output},
    }


def _node_data(layer: _Layer, device_label: str) -> NodeData:
    total = float(sum(layer.output_sizes))
    return NodeData(
        name=layer.name,
        op=layer.op,
        output_bytes=total,
        activation_bytes=total,
        param_bytes=layer.param_bytes,
        measured_ms={device_label: layer.fwd_ms},
        measured_bwd_ms={device_label: layer.bwd_ms},
    )


def _edge_data(src: _Layer, dst: _Layer) -> EdgeData:
    """Bytes of the producer's output the consumer reads (one output when it is a ``__getitem__``)."""
    pick = _GETITEM_OP.fullmatch(dst.op)
    if src.multi_output and pick and int(pick[1]) < len(src.output_sizes):
        index = int(pick[1])
        return EdgeData(bytes=src.output_sizes[index], output_index=index)
    return EdgeData(bytes=float(sum(src.output_sizes)))


def _check_acyclic(path: Path, graph: Graph, edges: dict[tuple[str, str], int]) -> None:
    try:
        cycle = nx.find_cycle(graph.to_networkx())
    except nx.NetworkXNoCycle:
        return
    described = ", ".join(f"{src} -- {dst} (line {edges[src, dst]})" for src, dst in cycle)
    raise GraphFormatError(f"{path}: the edges form a cycle: {described}")
