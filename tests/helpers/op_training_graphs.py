"""Operator-level training graphs in the dnn-partitioning format, with the shapes of the NeurIPS 2020
operator files (``OperatorGraphs/*_training.json`` of the paper's repository), for tests and benchmarks.

A forward graph (:class:`ForwardGraph`: ops with a time, an output size and parameter bytes, and the
edges between them) comes from :func:`synthetic_forward` (residual blocks and attention-like parallel
branches, seeded) or :func:`forward_of_graph` (a graphc cost graph, such as a zoo model traced with
``graphc.trace(..., granularity="op")``). :func:`training_file` turns it into the JSON object
:func:`graphc.ir.importers.load_dnn_partitioning` reads, built the way the operator files are:

* forward ops get colour classes, consecutive ops of a chain often sharing one (as an operator file
  groups a layer's ops); graph inputs are forward nodes without a colour class;
* each forward op ``f`` of a class has a backward node ``f_grad`` in the same class, and an optimizer
  node ``f_adam`` when it owns parameters;
* backward edges run the way gradients flow (``w_grad -> u_grad`` for a forward edge ``u -> w``); where
  ``u`` has several consumers their gradients meet in an uncoloured backward node ``u_grad_sum``;
* forward-to-backward edges carry saved activations (``u -> w_grad`` and ``f -> f_grad``);
* the loss is a colour class of backward nodes only (``loss -> loss_grad``), fed by the graph outputs.

So the file has backward-only colour classes, uncoloured backward nodes and edges joining the forward
and backward parts, the three things that made the exact DP refuse the operator files (graphc issue 14).
The CPU is about 20 times slower than the accelerator and pays no communication, as in the paper.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from graphc.ir.graph import Graph

ACCELERATOR_MS_PER_BYTE = 1e-7  # transfer time of one byte between an accelerator and the CPU's memory
CPU_SLOWDOWN = 20.0


@dataclass
class ForwardGraph:
    """Forward ops and their edges (indices into the lists, ``u < w`` not required)."""

    names: list[str]
    ms: list[float]  # accelerator time of each op's forward
    out_bytes: list[float]
    param_bytes: list[float]
    edges: list[tuple[int, int]] = field(default_factory=list)
    inputs: set[int] = field(default_factory=set)  # graph inputs: no colour class, no backward


def synthetic_forward(blocks: int, seed: int = 0, max_branches: int = 3, max_ops: int = 4) -> ForwardGraph:
    """A chain of ``blocks`` residual or attention-like blocks after one input op.

    A residual block is 2 to ``max_ops`` ops in a chain (1 when ``max_ops`` is 1) and an ``add`` joining
    its input; an attention-like block splits into 2 to ``max_branches`` parallel branches of 1 to
    ``max_ops - 1`` ops (at least 1) that a ``join`` op merges.
    """
    rng = random.Random(seed)
    g = ForwardGraph([], [], [], [])

    def op(name: str, params: bool = True) -> int:
        g.names.append(name)
        g.ms.append(round(rng.uniform(0.02, 1.0), 4))
        g.out_bytes.append(float(rng.choice([1, 2, 4, 8]) * 2**20))
        g.param_bytes.append(float(rng.choice([0, 2**20, 4 * 2**20])) if params else 0.0)
        return len(g.names) - 1

    last = op("input", params=False)
    g.ms[last], g.inputs = 0.0, {last}
    for b in range(blocks):
        if rng.random() < 0.5:
            prev = last
            for k in range(rng.randint(min(2, max_ops), max_ops)):
                cur = op(f"b{b}_op{k}")
                g.edges.append((prev, cur))
                prev = cur
            add = op(f"b{b}_add", params=False)
            g.edges += [(prev, add), (last, add)]
            last = add
        else:
            join = []
            for branch in range(rng.randint(2, max_branches)):
                prev = last
                for k in range(rng.randint(1, max(1, max_ops - 1))):
                    cur = op(f"b{b}_br{branch}_op{k}")
                    g.edges.append((prev, cur))
                    prev = cur
                join.append(prev)
            last_join = op(f"b{b}_join", params=False)
            g.edges += [(p, last_join) for p in join]
            last = last_join
    return g


def forward_of_graph(graph: Graph, flops_per_ms: float = 1e10) -> ForwardGraph:
    """The forward ops of a graphc cost graph: time from its FLOPs at ``flops_per_ms`` (at least 1 µs
    per op), output and parameter bytes as the graph has them; ``input`` ops are graph inputs."""
    names = graph.node_names()
    index = {n: i for i, n in enumerate(names)}
    g = ForwardGraph([], [], [], [])
    for data in graph.nodes():
        g.names.append(data.name)
        g.ms.append(0.0 if data.op == "input" else max(1e-3, data.fwd_flops / flops_per_ms))
        g.out_bytes.append(float(data.output_bytes))
        g.param_bytes.append(float(data.param_bytes))
        if data.op == "input":
            g.inputs.add(index[data.name])
    g.edges = [(index[s], index[d]) for s, d, _ in graph.edges()]
    return g


def training_file(
    forward: ForwardGraph,
    *,
    seed: int = 0,
    accelerators: int = 3,
    cpus: int = 1,
    memory_slack: float = 1.5,
    share_class: float = 0.4,
) -> dict[str, Any]:
    """The dnn-partitioning JSON object of ``forward``'s training graph (module docstring).

    ``maxSizePerFPGA`` is ``memory_slack`` times an equal share of the total size per accelerator;
    ``share_class`` is the chance that an op with one consumer shares that consumer's colour class.
    """
    rng = random.Random(seed)
    n = len(forward.names)
    succs: list[list[int]] = [[] for _ in range(n)]
    for u, w in forward.edges:
        succs[u].append(w)
    nodes: list[dict[str, Any]] = []
    edges: dict[tuple[int, int], float] = {}
    cost: dict[int, float] = {}

    def node(name: str, ms: float, size: float, backward: bool, color: int | None, out_bytes: float) -> int:
        record = {"id": len(nodes), "name": name, "supportedOnFpga": 1, "fpgaLatency": round(ms, 6),
                  "cpuLatency": round(ms * CPU_SLOWDOWN, 6), "isBackwardNode": int(backward), "size": size}  # fmt: skip
        if color is not None:
            record["colorClass"] = color
        nodes.append(record)
        cost[record["id"]] = round(out_bytes * ACCELERATOR_MS_PER_BYTE, 6)
        return record["id"]

    # Colour classes: an op joins its only consumer's class with probability share_class.
    color = list(range(n))
    for u in reversed(range(n)):
        if u not in forward.inputs and len(succs[u]) == 1 and rng.random() < share_class:
            color[u] = color[succs[u][0]]
    fwd = [
        node(forward.names[v], forward.ms[v], 4 * forward.param_bytes[v] + forward.out_bytes[v], False,
             None if v in forward.inputs else color[v], forward.out_bytes[v])
        for v in range(n)
    ]  # fmt: skip
    grad: dict[int, int] = {}
    for v in range(n):
        if v in forward.inputs:
            continue
        grad[v] = node(f"{forward.names[v]}_grad", forward.ms[v] * rng.uniform(1.5, 2.5),
                       forward.out_bytes[v], True, color[v], forward.out_bytes[v])  # fmt: skip
        edges[fwd[v], grad[v]] = 0.0
        if forward.param_bytes[v] > 0:
            adam = node(f"{forward.names[v]}_adam", forward.ms[v] * 0.1, 0.0, True, color[v], 0.0)
            edges[grad[v], adam] = 0.0
    loss_class = n
    loss = node("loss", 0.01, 0.0, True, loss_class, 4.0)
    loss_grad = node("loss_grad", 0.01, 0.0, True, loss_class, 4.0)
    edges[loss, loss_grad] = 0.0
    for v in range(n):
        if not succs[v] and v not in forward.inputs:
            edges[fwd[v], loss] = 0.0
            edges[loss_grad, grad[v]] = 0.0
    for u in range(n):
        for w in succs[u]:
            edges[fwd[u], fwd[w]] = 0.0
            edges[fwd[u], grad[w]] = 0.0  # w's backward reads its input
        if u in forward.inputs:
            continue
        if len(succs[u]) == 1:
            edges[grad[succs[u][0]], grad[u]] = 0.0
        elif succs[u]:
            total = node(f"{forward.names[u]}_grad_sum", 0.01, forward.out_bytes[u], True, None, forward.out_bytes[u])
            edges[total, grad[u]] = 0.0
            for w in succs[u]:
                edges[grad[w], total] = 0.0
    size = sum(record["size"] for record in nodes)
    return {
        "maxSizePerFPGA": float(memory_slack * size / accelerators),
        "maxFPGAs": accelerators,
        "maxCPUs": cpus,
        "nodes": nodes,
        "edges": [{"sourceId": s, "destId": d, "cost": cost[s]} for s, d in sorted(edges)],
    }
