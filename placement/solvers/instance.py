"""A placement problem as integer-indexed arrays, the form every solver computes on.

:class:`Instance` is built once per :class:`~placement.problem.Problem` (and cached on it): the
problem's lowering (:mod:`placement.lowering`: nodes, topological order, times, memory, edges and
routes, shared with the pipeline instances and the bounds) plus what the solvers add to it, the
resolved constraints (allowed devices, colocation groups, capacities, where the left-out nodes go),
edges sorted by producer then consumer, and measured transfer matrices. It mirrors the simulator's
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
  accounting that adds all of them estimates the simulated peak; it leaves out a device's largest
  backward temporary and a graph output's loss tensors (:meth:`placement.lowering.Lowered.memory_upper_bound`
  adds them), which :func:`placement.problem.finish_plan` checks by simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from graphc.ir.graph import EdgeData
from placement.cluster import Device
from placement.lowering import IndexedSizes, Lowered, gc_paused
from placement.problem import Problem

GiB = 2**30


@dataclass
class Instance(IndexedSizes):
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
        lowered: the :class:`~placement.lowering.Lowered` problem the instance was built from, whose
            arrays it shares (read-only); None for an instance made otherwise (coarsening).
        derived: tables the solvers derive from the instance once and share (read-only), by name
            (the list schedules' padded routes: :class:`~placement.solvers.linkbook.LinkBook`).
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
    lowered: Lowered | None = None
    derived: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def work(self) -> np.ndarray:
        """(n, D) forward + backward time of each node on each device (computed once: the arrays are
        read-only)."""
        return self.fwd + self.bwd

    @cached_property
    def need(self) -> np.ndarray:
        """(n,) bytes a node needs on its own device: static footprint plus what it holds (computed once:
        ``inst.need[v]`` in a loop over the nodes made the balanced split quadratic, 10 s on 100,000
        nodes)."""
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


def build(problem: Problem) -> Instance:
    """Build the arrays of ``problem`` (see :class:`Instance`) from its lowering and its constraints."""
    lw = problem.lowered()
    with gc_paused():
        return _build(problem, lw)


def _build(problem: Problem, lw: Lowered) -> Instance:
    resolved = problem.resolved
    names, index, devices = lw.names, lw.index, lw.devices
    n, D = lw.n, lw.num_devices

    # -- edges, sorted by (producer, consumer) -------------------------------------------------
    order = np.lexsort((lw.dst, lw.src))
    src, dst = lw.src[order], lw.dst[order]
    edge_data = [lw.edge_data[e] for e in order.tolist()]
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for e, (u, v) in enumerate(zip(src.tolist(), dst.tolist())):
        preds[v].append((u, e))
        succs[u].append((v, e))

    # -- constraints ---------------------------------------------------------------------------
    allowed = np.zeros((n, D), dtype=bool)
    rows_of: dict[tuple[int, ...], list[int]] = {}  # nodes by their allowed devices, set in one go each
    for i, name in enumerate(names):
        rows_of.setdefault(tuple(resolved.allowed[name]), []).append(i)
    for devs, rows in rows_of.items():
        allowed[np.ix_(rows, devs)] = True
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
    for name in lw.dropped:
        mates = [m for m in resolved.groups[resolved.group_of[name]] if m in index]
        extra_home[name] = (mates[0] if mates else None, resolved.allowed[name][0])

    return Instance(
        names=names,
        index=index,
        extra=list(lw.dropped),
        devices=devices,
        fwd=lw.fwd,
        bwd=lw.bwd,
        has_bwd=lw.has_bwd,
        needs_grad=lw.needs_grad,
        src=src,
        dst=dst,
        nbytes=lw.nbytes[order],
        lat=lw.lat,
        inv_bw=lw.inv_bw,
        measured=_measured(lw, edge_data),
        static=lw.static,
        held=lw.held,
        send_bytes=lw.send_bytes,
        allowed=allowed,
        group=group,
        members=members,
        capacity=np.asarray(resolved.capacity, dtype=float),
        preds=preds,
        succs=succs,
        extra_home=extra_home,
        resources=lw.resources,
        modules=lw.modules,
        lowered=lw,
    )


def _measured(lw: Lowered, edge_data: list[EdgeData]) -> dict[int, np.ndarray]:
    """Edge id -> (D, D) transfer ms, for the edges with a measured ``transfer_ms`` (pairs it does not
    price go by the route; one matrix per distinct measurement)."""
    measured: dict[int, np.ndarray] = {}
    seen: dict[tuple, np.ndarray] = {}
    devices, cm = lw.devices, lw.cost_model
    for e, ed in enumerate(edge_data):
        if not ed.transfer_ms:
            continue
        key = (tuple(sorted(ed.transfer_ms.items())), ed.bytes)
        m = seen.get(key)
        if m is None:
            m = lw.lat + ed.bytes * lw.inv_bw
            for a, da in enumerate(devices):
                for b, db in enumerate(devices):
                    if a != b:
                        t = cm.measured_transfer_ms(ed.transfer_ms, da, db)
                        if t is not None:
                            m[a, b] = t
            np.fill_diagonal(m, 0.0)
            seen[key] = m
        measured[e] = m
    return measured
