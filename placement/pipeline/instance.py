r"""The throughput instance: the small record every pipeline algorithm works on, and its objective.

A :class:`ThroughputInstance` holds only numbers (no graph, no cluster, no cost model), so the
algorithms of this package are pure functions that tests can feed by hand.

The model (Tarnawski et al., "Efficient Algorithms for Device Placement of DNN Graph Operators",
NeurIPS 2020, throughput section; PipeDream, Narayanan et al., SOSP 2019, for replication):

* a DAG :math:`G = (V, E)`; device classes :math:`t = 1..T` with :math:`n_t` interchangeable devices of
  capacity :math:`M_t` bytes each, and a flag :math:`\kappa_t` saying whether the class pays for
  communication (in the NeurIPS 2020 model accelerators do; CPUs do not, the data is already in their
  DRAM);
* :math:`p_{v,t}` the time of node :math:`v` on a device of class :math:`t` per step (:math:`\infty`:
  :math:`v` may not run there), :math:`m_v` its memory, :math:`c_u` the time to move the output of
  :math:`u` between a device and the outside (the same for every out-edge of :math:`u`: one tensor),
  :math:`P_v` its parameter bytes (for replication).

A split gives every node one part :math:`S`; a part runs on :math:`r \ge 1` devices of one class
:math:`t`. Its load (time per step) is

.. math::

    X(S) &= \{u \in S : \exists (u,w) \in E,\ w \notin S\} \cup \{u \notin S : \exists (u,w) \in E,\ w \in S\}\\
    \mathrm{load}_t(S) &= \sum_{v \in S} p_{v,t} + \kappa_t \sum_{u \in X(S)} c_u\\
    \mathrm{load}_{t,r}(S) &= \mathrm{load}_t(S) / r + \frac{2(r-1)}{r} \, \beta_t \sum_{v \in S} P_v

:math:`X(S)` is the set of tensors that cross the part's boundary, out (computed in :math:`S`, read
outside) or in (computed outside, read in :math:`S`): each is counted once per part however many edges
carry it, as in the paper (a tensor is uploaded once and downloaded once per device). The last term is
the ring all-reduce of the part's gradients over its :math:`r` replicas (:math:`\beta_t`: ms per byte
on the ring's slowest link); each replica computes and communicates :math:`1/r` of the samples.

The objective is the *max-load* :math:`\max_S \mathrm{load}_{t(S), r(S)}(S)`, the time per step of the
slowest stage in a pipeline (the inverse of throughput), subject to: every part within its class's
memory (:math:`\sum_{v\in S} m_v \le M_t`), every node allowed on its class, colocation groups in one
part, and at most :math:`n_t` devices of class :math:`t` used.

**Contiguity.** Forward nodes and the edges between them form the *structure* of the graph (backward
nodes, :attr:`ThroughputInstance.backward`, are placed through their colocation group). Operator-level
training graphs also have backward-only units (a colour class of backward nodes only, an uncoloured
backward node) that no forward edge orders; :func:`pipeline_edges` adds, for them, the mirror of the
gradient edges (:mod:`placement.pipeline.ideals` says why). A split is *contiguous* when its quotient
graph over the pipeline edges is acyclic: the parts can be ordered so that each prefix union
is an *ideal* (a set closed under predecessors), i.e. the parts are the differences
:math:`I_1 \setminus I_0, I_2 \setminus I_1, \dots` of a chain of ideals :math:`\emptyset = I_0
\subseteq I_1 \subseteq \dots = V`, which is what a pipeline needs and what the dynamic program over
ideals enumerates. Every part of such a split is convex (no path leaves it and comes back); the
converse is false (``a->b``, ``c->d`` split as ``{a,d}, {b,c}``: both convex, quotient cyclic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from placement.errors import PlacementError


@dataclass(frozen=True)
class DeviceClass:
    """Interchangeable devices: same speed, same memory, same nodes allowed on them.

    Attributes:
        name: a label (``"accelerator"``, ``"V100x8"``).
        count: how many devices the class has.
        capacity: memory bytes of each device (``math.inf``: unlimited).
        pays_comm: whether a part on this class pays for the tensors crossing its boundary.
        allreduce_ms_per_byte: ms per byte of a ring all-reduce among devices of the class (the inverse
            bandwidth of the ring's slowest link), used for replicated parts.
        devices: the cluster's device names, when the instance comes from a cluster.
    """

    name: str
    count: int
    capacity: float = math.inf
    pays_comm: bool = True
    allreduce_ms_per_byte: float = 0.0
    devices: tuple[str, ...] = ()


@dataclass
class ThroughputInstance:
    """Node loads per device class, memory, transfer costs, device classes and colocation (module doc).

    Attributes:
        names: node names (index ``v`` is node ``names[v]``).
        load: ``load[v][t]``: ms of node ``v`` on class ``t`` per step (``math.inf``: not allowed).
        memory: bytes of node ``v`` on a device.
        edges: ``(u, w)`` index pairs.
        comm: ``comm[u]``: ms to move ``u``'s output between a device and the outside.
        classes: the device classes.
        colocate: groups of node indices that must share a part.
        backward: ``backward[v]``: ``v`` is an explicit backward node, outside the contiguity structure.
        param_bytes: parameter bytes per node (for the all-reduce of replicated parts).
        replication: whether a part may be replicated on several devices of its class.
    """

    names: list[str]
    load: list[list[float]]
    memory: list[float]
    edges: list[tuple[int, int]]
    comm: list[float]
    classes: list[DeviceClass]
    colocate: list[list[int]] = field(default_factory=list)
    backward: list[bool] = field(default_factory=list)
    param_bytes: list[float] = field(default_factory=list)
    replication: bool = False

    def __post_init__(self) -> None:
        n, k = len(self.names), len(self.classes)
        if not self.backward:
            self.backward = [False] * n
        if not self.param_bytes:
            self.param_bytes = [0.0] * n
        for what, seq in (("load", self.load), ("memory", self.memory), ("comm", self.comm),
                          ("backward", self.backward), ("param_bytes", self.param_bytes)):  # fmt: skip
            if len(seq) != n:
                raise PlacementError(f"ThroughputInstance: {what} has {len(seq)} entries for {n} nodes")
        if k == 0:
            raise PlacementError("ThroughputInstance: no device class")
        for v, row in enumerate(self.load):
            if len(row) != k:
                raise PlacementError(f"ThroughputInstance: load[{v}] has {len(row)} entries for {k} classes")
            if all(x == math.inf for x in row):
                raise PlacementError(f"ThroughputInstance: node {self.names[v]!r} is allowed on no device class")
            if any(x < 0 or math.isnan(x) for x in row):
                raise PlacementError(f"ThroughputInstance: load of {self.names[v]!r} must be >= 0, got {row}")
        for c in self.classes:
            if c.count < 1:
                raise PlacementError(f"ThroughputInstance: class {c.name!r} has {c.count} devices")
        for u, w in self.edges:
            if not (0 <= u < n and 0 <= w < n) or u == w:
                raise PlacementError(f"ThroughputInstance: bad edge ({u}, {w}) for {n} nodes")
        for group in self.colocate:
            for v in group:
                if not 0 <= v < n:
                    raise PlacementError(f"ThroughputInstance: colocation group names node {v} of {n}")

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def num_devices(self) -> int:
        return sum(c.count for c in self.classes)

    def successors(self) -> list[list[int]]:
        succ: list[list[int]] = [[] for _ in range(self.n)]
        for u, w in self.edges:
            succ[u].append(w)
        return succ

    def structure_edges(self) -> list[tuple[int, int]]:
        """The edges between forward nodes: the ones contiguity is defined on."""
        return [(u, w) for u, w in self.edges if not self.backward[u] and not self.backward[w]]

    def device_classes(self) -> list[int]:
        """The class of each concrete device, classes in order (device ``d`` of the flat list)."""
        return [t for t, c in enumerate(self.classes) for _ in range(c.count)]


@dataclass(frozen=True)
class Part:
    """One part of a split: its nodes, the class of its devices, how many replicas, and its load (ms)."""

    nodes: tuple[int, ...]
    device_class: int
    replicas: int = 1
    load: float = 0.0


@dataclass
class Partition:
    """A split found by one algorithm, with what it proves.

    Attributes:
        parts: the non-empty parts; for a contiguous split in pipeline order.
        max_load: the objective, recomputed exactly from the parts (ms per step).
        method: which algorithm found it.
        optimal: proven optimal for the problem the method solved (contiguous or not).
        bound: a proven lower bound on that problem's optimum (ms).
        contiguous: the split is contiguous (its quotient graph is acyclic).
        seconds: wall time of the algorithm.
        stats: method-specific figures (ideals, pairs, solver status, ...), JSON values.
    """

    parts: list[Part]
    max_load: float
    method: str
    optimal: bool = False
    bound: float = 0.0
    contiguous: bool = True
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def part_of(self, n: int) -> list[int]:
        """The part index of every node (``n`` nodes)."""
        where = [-1] * n
        for i, p in enumerate(self.parts):
            for v in p.nodes:
                where[v] = i
        return where

    @property
    def gap(self) -> float:
        """``(max_load - bound) / max_load``: 0 when proven optimal."""
        if self.max_load <= 0:
            return 0.0
        return max(0.0, (self.max_load - self.bound) / self.max_load)


# -- the objective -----------------------------------------------------------------------------------


def crossing(inst: ThroughputInstance, part: Iterable[int], succ: Sequence[Sequence[int]] | None = None) -> set[int]:
    """:math:`X(S)`: the nodes whose output crosses the boundary of ``part`` (module docstring)."""
    s = set(part)
    succ = succ if succ is not None else inst.successors()
    out = set()
    for u in range(inst.n):
        inside = u in s
        for w in succ[u]:
            if (w in s) != inside:
                out.add(u)
                break
    return out


def allreduce_ms(param_bytes: float, replicas: int, ms_per_byte: float) -> float:
    """Ring all-reduce of ``param_bytes`` over ``replicas`` devices: ``2 (r-1)/r * bytes * ms_per_byte``."""
    if replicas <= 1:
        return 0.0
    return 2.0 * (replicas - 1) / replicas * param_bytes * ms_per_byte


def part_load(
    inst: ThroughputInstance,
    part: Iterable[int],
    device_class: int,
    replicas: int = 1,
    succ: Sequence[Sequence[int]] | None = None,
) -> float:
    """:math:`\\mathrm{load}_{t,r}(S)` summed directly (``math.inf`` if a node may not use the class)."""
    nodes = list(part)
    if not nodes:
        return 0.0
    cls = inst.classes[device_class]
    compute = math.fsum(inst.load[v][device_class] for v in nodes)
    if compute == math.inf:
        return math.inf
    comm = math.fsum(inst.comm[u] for u in crossing(inst, nodes, succ)) if cls.pays_comm else 0.0
    params = math.fsum(inst.param_bytes[v] for v in nodes)
    return (compute + comm) / replicas + allreduce_ms(params, replicas, cls.allreduce_ms_per_byte)


def format_bytes(nbytes: float) -> str:
    """``12.34 GiB``, ``56.7 MiB`` or ``89 B``: readable sizes for error messages."""
    if abs(nbytes) >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    if abs(nbytes) >= 2**20:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{nbytes:.0f} B"


def part_memory(inst: ThroughputInstance, part: Iterable[int]) -> float:
    return math.fsum(inst.memory[v] for v in part)


def make_part(inst: ThroughputInstance, nodes: Iterable[int], device_class: int, replicas: int = 1) -> Part:
    """A :class:`Part` with its load computed."""
    ordered = tuple(sorted(nodes))
    return Part(ordered, device_class, replicas, part_load(inst, ordered, device_class, replicas))


def max_load(inst: ThroughputInstance, parts: Sequence[Part]) -> float:
    """The objective of a split, recomputed from scratch."""
    succ = inst.successors()
    return max((part_load(inst, p.nodes, p.device_class, p.replicas, succ) for p in parts), default=0.0)


# -- structure ----------------------------------------------------------------------------------------


def colocation_units(inst: ThroughputInstance) -> list[int]:
    """The unit (smallest member of its colocation group) of every node, by union-find."""
    parent = list(range(inst.n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in inst.colocate:
        for v in group[1:]:
            a, b = find(group[0]), find(v)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [find(v) for v in range(inst.n)]


def pipeline_edges(inst: ThroughputInstance) -> list[tuple[int, int]]:
    """The node pairs ``(u, w)`` contiguity is defined on: ``u``'s part comes no later than ``w``'s.

    The forward structure edges, then, for every edge ``a -> b`` between backward nodes that touches a
    backward-only unit, the mirrored pair ``(b, a)`` (module docstring)."""
    unit = colocation_units(inst)
    has_forward = {unit[v] for v in range(inst.n) if not inst.backward[v]}
    edges = inst.structure_edges()
    for a, b in inst.edges:
        both_backward = inst.backward[a] and inst.backward[b] and unit[a] != unit[b]
        if both_backward and (unit[a] not in has_forward or unit[b] not in has_forward):
            edges.append((b, a))
    return edges


def is_contiguous(
    inst: ThroughputInstance,
    parts: Sequence[Part] | Sequence[Sequence[int]],
    edges: Sequence[tuple[int, int]] | None = None,
) -> bool:
    """Whether the quotient graph of the split over :func:`pipeline_edges` (``edges``, when the caller
    has them already) is acyclic (module docstring)."""
    where: dict[int, int] = {}
    for i, p in enumerate(parts):
        for v in p.nodes if isinstance(p, Part) else p:
            where[v] = i
    quotient = nx.DiGraph()
    quotient.add_nodes_from(range(len(parts)))
    pairs = pipeline_edges(inst) if edges is None else edges
    quotient.add_edges_from((where[u], where[w]) for u, w in pairs if u in where and w in where and where[u] != where[w])
    return nx.is_directed_acyclic_graph(quotient)


def check_partition(inst: ThroughputInstance, parts: Sequence[Part], *, contiguous: bool = False) -> None:
    """Raise :class:`PlacementError` unless ``parts`` is a valid split of ``inst`` (module docstring)."""
    seen: dict[int, int] = {}
    used = [0] * len(inst.classes)
    for i, p in enumerate(parts):
        if not 0 <= p.device_class < len(inst.classes):
            raise PlacementError(f"part {i}: no device class {p.device_class}")
        if p.replicas < 1 or (p.replicas > 1 and not inst.replication):
            raise PlacementError(f"part {i}: {p.replicas} replicas (replication allowed: {inst.replication})")
        used[p.device_class] += p.replicas
        cls = inst.classes[p.device_class]
        for v in p.nodes:
            if v in seen:
                raise PlacementError(f"node {inst.names[v]!r} is in parts {seen[v]} and {i}")
            seen[v] = i
            if inst.load[v][p.device_class] == math.inf:
                raise PlacementError(f"node {inst.names[v]!r} may not run on class {cls.name!r}")
        mem = part_memory(inst, p.nodes)
        if mem > cls.capacity:
            raise PlacementError(f"part {i} needs {mem:.0f} bytes, class {cls.name!r} holds {cls.capacity:.0f}")
    if len(seen) != inst.n:
        missing = [inst.names[v] for v in range(inst.n) if v not in seen]
        raise PlacementError(f"the split leaves {len(missing)} node(s) out: {missing[:5]}")
    for t, c in enumerate(inst.classes):
        if used[t] > c.count:
            raise PlacementError(f"the split uses {used[t]} devices of class {c.name!r}, which has {c.count}")
    for group in inst.colocate:
        if len({seen[v] for v in group}) > 1:
            raise PlacementError(f"colocation group {[inst.names[v] for v in group]} is split")
    if contiguous and not is_contiguous(inst, parts):
        raise PlacementError("the split is not contiguous: its quotient graph has a cycle")


def subinstance(inst: ThroughputInstance, keep: Sequence[int], classes: Sequence[DeviceClass] | None = None) -> ThroughputInstance:
    """The instance induced by the nodes ``keep`` (edges and colocation restricted to them)."""
    index = {v: i for i, v in enumerate(keep)}
    return ThroughputInstance(
        names=[inst.names[v] for v in keep],
        load=[list(inst.load[v]) for v in keep],
        memory=[inst.memory[v] for v in keep],
        edges=[(index[u], index[w]) for u, w in inst.edges if u in index and w in index],
        comm=[inst.comm[v] for v in keep],
        classes=list(classes if classes is not None else inst.classes),
        colocate=[g for g in ([index[v] for v in grp if v in index] for grp in inst.colocate) if len(g) > 1],
        backward=[inst.backward[v] for v in keep],
        param_bytes=[inst.param_bytes[v] for v in keep],
        replication=inst.replication,
    )
