"""A placement problem as integer-indexed arrays, the form every solver computes on.

:class:`Instance` is built once per :class:`~placement.problem.Problem` (and cached on it) from
the cost graph, the cluster, the cost model and the resolved constraints. It mirrors the simulator's
model (:mod:`placement.simulate`) so that what a solver estimates is what the simulator will measure,
up to the differences listed here:

* Nodes are the simulated ones (in inference mode a graph's explicit backward nodes are left out and
  placed afterwards with their colocation group), numbered in the simulator's topological order.
* ``fwd[v, d]`` and ``bwd[v, d]`` are the cost model's times of node ``v`` on device ``d``; graph inputs
  cost nothing and need no gradient. ``bwd`` is zero unless the step is training of a graph of forward
  nodes (the simulator derives a backward task per node then).
* An edge's transfer from device ``a`` to ``b`` takes route latency + bytes / bottleneck bandwidth, or
  the edge's measured ``transfer_ms`` for the pair; the simulator sends a producer's output once per
  receiving device and makes transfers that share a link wait for each other (link contention), which
  the per-edge figure here leaves out.
* Memory (bytes, per node): ``static`` = parameters, gradients and optimizer state (or ``memory_bytes``),
  ``held`` = what the node keeps alive during the step (its activation in training, its output in
  inference), ``send_bytes`` = what its output occupies on a device that receives it (and, in
  training, what the gradient sent back occupies on the node's device). :class:`MemoryLedger`-style
  accounting that adds all of them is an upper bound on the simulated peak (every item alive at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphc.ir.graph import Graph
from placement.cluster import Cluster, Device
from placement.cost_model import CostModel, graph_inputs
from placement.errors import PlacementError
from placement.problem import Problem
from placement.simulate import topological_indices

GiB = 2**30


@dataclass
class Instance:
    """Integer-indexed arrays of one placement problem (module docstring).

    Attributes:
        names: simulated node names in the simulator's topological order; ``index`` maps them back.
        extra: graph nodes the simulation leaves out (explicit backward nodes in inference mode).
        devices: the cluster's devices (index = device id everywhere).
        fwd, bwd: (n, D) node times in ms on each device.
        has_bwd: the step derives a backward task per node (training a graph of forward nodes).
        needs_grad: (n,) the node receives a gradient (every node but the graph inputs).
        src, dst, nbytes: (E,) edge endpoints (node ids) and bytes.
        lat, inv_bw: (D, D) route latency in ms and ms per byte (zero on the diagonal).
        measured: edge id -> (D, D) transfer ms from a measured ``transfer_ms`` (diagonal zero).
        static, held, send_bytes: (n,) memory figures (module docstring).
        allowed: (n, D) the node may run on the device.
        group: (n,) colocation group id; ``members[g]`` lists the group's node ids.
        capacity: (D,) usable bytes per device.
        preds, succs: per node, (other node, edge id) pairs.
        extra_home: left-out node -> (a simulated node of its group or None, its first allowed device).
        resources: ``resources[a][b]``, the link resources a transfer from device ``a`` to ``b`` holds
            (:attr:`placement.cluster.Route.resources`).
        modules: per node, the module it belongs to ("" if none), for coarsening by layer.
    """

    names: list[str]
    index: dict[str, int]
    extra: list[str]
    devices: list[Device]
    fwd: np.ndarray
    bwd: np.ndarray
    has_bwd: bool
    needs_grad: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    lat: np.ndarray
    inv_bw: np.ndarray
    measured: dict[int, np.ndarray]
    static: np.ndarray
    held: np.ndarray
    send_bytes: np.ndarray
    allowed: np.ndarray
    group: np.ndarray
    members: list[list[int]]
    capacity: np.ndarray
    preds: list[list[tuple[int, int]]] = field(default_factory=list)
    succs: list[list[tuple[int, int]]] = field(default_factory=list)
    extra_home: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    resources: list[list[tuple[int, ...]]] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def num_edges(self) -> int:
        return len(self.src)

    @property
    def work(self) -> np.ndarray:
        """(n, D) forward + backward time of each node on each device."""
        return self.fwd + self.bwd

    @property
    def need(self) -> np.ndarray:
        """(n,) bytes a node needs on its own device: static footprint plus what it holds."""
        return self.static + self.held

    def comm_row(self, e: int, a: int) -> np.ndarray:
        """(D,) ms of edge ``e``'s tensor from device ``a`` to every device (0 to ``a`` itself)."""
        m = self.measured.get(e)
        if m is not None:
            return m[a]
        row = self.lat[a] + self.nbytes[e] * self.inv_bw[a]
        row[a] = 0.0
        return row

    def comm(self, e: int, a: int, b: int) -> float:
        """ms of edge ``e``'s tensor from device ``a`` to device ``b``."""
        if a == b:
            return 0.0
        m = self.measured.get(e)
        if m is not None:
            return float(m[a, b])
        return float(self.lat[a, b] + self.nbytes[e] * self.inv_bw[a, b])

    def round_trip_row(self, e: int, a: int) -> np.ndarray:
        """(D,) ms the edge costs when its producer is on ``a`` and its consumer on each device: the
        forward transfer plus, in training, the gradient sent back."""
        m = self.measured.get(e)
        grad = self.has_bwd and self.needs_grad[self.src[e]]
        if m is not None:
            return m[a] + m[:, a] if grad else m[a].copy()
        if grad:
            row = self.lat[a] + self.lat[:, a] + self.nbytes[e] * (self.inv_bw[a] + self.inv_bw[:, a])
        else:
            row = self.lat[a] + self.nbytes[e] * self.inv_bw[a]
        row[a] = 0.0
        return row

    def mean_round_trip(self) -> np.ndarray:
        """(E,) the round-trip cost of each edge averaged over ordered pairs of distinct devices."""
        D = self.num_devices
        if D < 2:
            return np.zeros(self.num_edges)
        off = ~np.eye(D, dtype=bool)
        lat = (self.lat + self.lat.T) if self.has_bwd else self.lat
        inv = (self.inv_bw + self.inv_bw.T) if self.has_bwd else self.inv_bw
        lat_m, inv_m = float(lat[off].mean()), float(inv[off].mean())
        out = lat_m + self.nbytes * inv_m
        if self.has_bwd:
            no_grad = ~self.needs_grad[self.src]
            out[no_grad] = self.lat[off].mean() + self.nbytes[no_grad] * self.inv_bw[off].mean()
        for e, m in self.measured.items():
            mm = (m + m.T) if (self.has_bwd and self.needs_grad[self.src[e]]) else m
            out[e] = float(mm[off].mean())
        return out

    def assignment_names(self, dev: np.ndarray | list[int]) -> dict[str, str]:
        """node name -> device name for every graph node, from device ids of the simulated nodes; a
        left-out node goes with a simulated node of its colocation group, else to its first allowed device."""
        names = [d.name for d in self.devices]
        out = {self.names[v]: names[int(d)] for v, d in enumerate(dev)}
        for name, (mate, first) in self.extra_home.items():
            out[name] = out[mate] if mate is not None else names[first]
        return out

    def order_names(self, order: list[list[int]]) -> dict[str, list[str]]:
        """device name -> node names, from per-device lists of node ids (empty devices left out)."""
        return {self.devices[d].name: [self.names[v] for v in seq] for d, seq in enumerate(order) if seq}


def instance(problem: Problem) -> Instance:
    """The :class:`Instance` of ``problem``, built on first use and cached on the problem."""
    cached = problem.cache.get("instance")
    if cached is None:
        cached = problem.cache["instance"] = build(problem)
    return cached


def _speed_classes(devices: list[Device]) -> list[list[int]]:
    """Device ids grouped by the figures the cost model reads, so each class is priced once."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(devices):
        groups.setdefault(d.speed_key(), []).append(i)
    return list(groups.values())


def _topological(nxg, names: list[str]) -> list[str]:
    """``names`` in the simulator's order (:func:`placement.simulate.topological_indices`): insertion
    order when it is topological, else the smallest insertion index first among the ready."""
    pos = {name: i for i, name in enumerate(names)}
    edges = [(pos[u], pos[v]) for u, v in nxg.edges() if u in pos and v in pos]
    if all(i < j for i, j in edges):
        return names
    order = topological_indices(len(names), [i for i, _ in edges], [j for _, j in edges])
    if order is None:
        raise PlacementError("the graph has a cycle; cannot place it")
    return [names[i] for i in order]


def build(problem: Problem, optimizer_state_factor: float = 2.0) -> Instance:
    """Build the arrays of ``problem`` (see :class:`Instance`)."""
    graph: Graph = problem.graph
    cluster: Cluster = problem.cluster
    cm: CostModel = problem.cost_model
    resolved = problem.resolved
    training = problem.mode == "training"
    nxg = graph.to_networkx()
    all_data = [d for _, d in nxg.nodes(data="data")]
    explicit = any(d.is_backward for d in all_data)
    has_bwd = training and not explicit
    keep = [d.name for d in all_data if training or not explicit or not d.is_backward]
    names = _topological(nxg, keep)
    index = {name: i for i, name in enumerate(names)}
    extra = [d.name for d in all_data if d.name not in index]
    data = [nxg.nodes[name]["data"] for name in names]
    n, devices = len(names), cluster.devices
    D = len(devices)

    # -- times ---------------------------------------------------------------------------------
    fwd = np.zeros((n, D))
    bwd = np.zeros((n, D))
    for ids in _speed_classes(devices):
        f, b = cm.node_times(data, [devices[ids[0]]] * n, has_bwd)
        fwd[:, ids] = np.asarray(f, dtype=float)[:, None]
        bwd[:, ids] = np.asarray(b, dtype=float)[:, None]
    inputs = graph_inputs(graph)
    needs_grad = np.ones(n, dtype=bool)
    for name in inputs:
        v = index.get(name)
        if v is not None:
            needs_grad[v] = False
            fwd[v] = bwd[v] = 0.0

    # -- edges and transfers -------------------------------------------------------------------
    edges = [(index[u], index[v], e) for u, v, e in nxg.edges(data="data") if u in index and v in index]
    edges.sort(key=lambda t: (t[0], t[1]))
    src = np.fromiter((t[0] for t in edges), dtype=np.int64, count=len(edges))
    dst = np.fromiter((t[1] for t in edges), dtype=np.int64, count=len(edges))
    nbytes = np.fromiter((t[2].bytes for t in edges), dtype=float, count=len(edges))
    lat = np.zeros((D, D))
    inv_bw = np.zeros((D, D))
    resources: list[list[tuple[int, ...]]] = [[() for _ in range(D)] for _ in range(D)]
    for a, da in enumerate(devices):
        for b, db in enumerate(devices):
            if a != b:
                r = cluster.route(da.name, db.name)
                lat[a, b] = 1e3 * r.latency_s
                inv_bw[a, b] = 1e3 / r.bandwidth
                resources[a][b] = r.resources
    measured: dict[int, np.ndarray] = {}
    seen: dict[tuple, np.ndarray] = {}
    for e, (_, _, ed) in enumerate(edges):
        if not ed.transfer_ms:
            continue
        key = (tuple(sorted(ed.transfer_ms.items())), ed.bytes)
        m = seen.get(key)
        if m is None:
            m = lat + ed.bytes * inv_bw
            for a, da in enumerate(devices):
                for b, db in enumerate(devices):
                    if a != b:
                        t = cm.measured_transfer_ms(ed.transfer_ms, da, db)
                        if t is not None:
                            m[a, b] = t
            np.fill_diagonal(m, 0.0)
            seen[key] = m
        measured[e] = m
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for e, (u, v, _) in enumerate(edges):
        preds[v].append((u, e))
        succs[u].append((v, e))

    # -- memory --------------------------------------------------------------------------------
    mult = (2.0 + optimizer_state_factor) if training else 1.0
    static = np.zeros(n)
    held = np.zeros(n)
    for i, nd in enumerate(data):
        if nd.memory_bytes is not None:
            static[i] = nd.memory_bytes
        else:
            static[i] = mult * nd.param_bytes + nd.buffer_bytes
            held[i] = nd.activation_bytes if has_bwd else nd.output_bytes
    # Upper bound of the simulator's group bytes: largest edge per output index, summed.
    send_bytes = np.zeros(n)
    per_node: dict[int, dict] = {}
    for u, _, ed in edges:
        d = per_node.setdefault(u, {})
        key = -1 if ed.output_index is None else ed.output_index
        d[key] = max(d.get(key, 0.0), ed.bytes)
    for u, d in per_node.items():
        whole = d.pop(-1, 0.0)
        send_bytes[u] = max(whole, sum(d.values()))

    # -- constraints ---------------------------------------------------------------------------
    allowed = np.zeros((n, D), dtype=bool)
    for i, name in enumerate(names):
        allowed[i, resolved.allowed[name]] = True
    rep_id: dict[str, int] = {}
    group = np.zeros(n, dtype=np.int64)
    members: list[list[int]] = []
    for i, name in enumerate(names):
        rep = resolved.group_of[name]
        g = rep_id.get(rep)
        if g is None:
            g = rep_id[rep] = len(members)
            members.append([])
        group[i] = g
        members[g].append(i)
    extra_home: dict[str, tuple[str | None, int]] = {}
    for name in extra:
        mates = [m for m in resolved.groups[resolved.group_of[name]] if m in index]
        extra_home[name] = (mates[0] if mates else None, resolved.allowed[name][0])
    capacity = np.asarray(resolved.capacity, dtype=float)

    return Instance(
        names=names,
        index=index,
        extra=extra,
        devices=list(devices),
        fwd=fwd,
        bwd=bwd,
        has_bwd=has_bwd,
        needs_grad=needs_grad,
        src=src,
        dst=dst,
        nbytes=nbytes,
        lat=lat,
        inv_bw=inv_bw,
        measured=measured,
        static=static,
        held=held,
        send_bytes=send_bytes,
        allowed=allowed,
        group=group,
        members=members,
        capacity=capacity,
        preds=preds,
        succs=succs,
        extra_home=extra_home,
        resources=resources,
        modules=[nd.module for nd in data],
    )
