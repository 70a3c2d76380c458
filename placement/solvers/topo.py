"""m-TOPO: memory-aware topological placement (Baechi, Jeon et al., SoCC 2020).

Nodes are taken in topological order and packed onto one device after another: the current device
takes nodes until it holds its share of the graph's memory (the total footprint over the number of
devices, so that every device gets some of the graph) or until the next node no longer fits, and the
next device continues. Devices are filled fastest first. A node that may not use the current device
goes to the first later device it may use and fits on (a colocation group follows its first member).
Baechi uses it as the fast baseline its m-ETF and m-SCT improve on; it ignores time altogether.

:func:`balanced_split` is a variant for ``auto``'s warm start: it packs onto the ``k`` fastest devices
only, ``total / k`` of the footprint each (a colocation group counted whole where its first member
lands), and checks capacity by footprint alone, leaving the exact memory check to the simulator
instead of the memory ledger. m-TOPO's share over every device hands a slow device of large memory (a
CPU beside the GPUs) its share of the graph, and the ledger's allowance for transfers can push more
there: on the dnn-partitioning ResNet-50 training graph on ``pcie-4gpu``, m-TOPO's step is 2,727 ms
and the split onto the four GPUs 393 ms. ``auto`` tries every ``k`` of :func:`split_counts`
(contiguous, memory-balanced splits: the model-parallel baseline).

:func:`layer_split` is the other kind of split ``auto`` tries: by the index of the repeated layer a
node's module belongs to (``encoder.layers.2``, ``h.11``), in ``k`` bands of layers on the ``k``
fastest devices. Where the step is unrolled in time (an RNN's cells called once per token), every
device then holds one layer for every time step, and the devices work on successive steps at once (the
wavefront), which no split in topological order gives: on the GNMT of the model zoo on ``pcie-4gpu``,
the layer split onto the four GPUs simulates at 165 ms, the best heuristic (HEFT) at 248 ms.
"""

from __future__ import annotations

import numpy as np

from placement.errors import PlacementError
from placement.plan import Plan
from placement.problem import Problem
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import Schedule, memory_retries, to_plan


def m_topo(problem: Problem) -> Plan:
    """Place with m-TOPO; the simulator orders the tasks."""
    inst = instance(problem)
    return to_plan(problem, inst, topo_schedule(inst).dev, solver="m-topo")


def fastest_first(inst: Instance) -> list[int]:
    """Device ids by mean node time on them (over the nodes allowed there), fastest first."""
    work = np.where(inst.allowed, inst.work, 0.0).sum(axis=0)
    return sorted(range(inst.num_devices), key=lambda d: (work[d] / max(1, inst.allowed[:, d].sum()), d))


def topo_schedule(inst: Instance) -> Schedule:
    """The m-TOPO placement of ``inst`` (start times are not estimated)."""
    share = float(inst.need.sum()) / inst.num_devices
    return memory_retries(lambda h: _pack(inst, fastest_first(inst), share, h))


def split_counts(inst: Instance) -> list[int]:
    """Device counts worth a :func:`balanced_split`: from the fewest fastest devices whose capacities
    hold the graph's footprint (at least two) to all of them."""
    capacity = np.cumsum(inst.capacity[fastest_first(inst)])
    fewest = int(np.searchsorted(capacity, float(inst.need.sum()))) + 1
    return list(range(max(2, fewest), inst.num_devices + 1))


def balanced_split(inst: Instance, count: int) -> np.ndarray:
    """(n,) device ids: colocation groups in topological order of their first member packed onto the
    ``count`` fastest devices, each taking groups until it holds total footprint / ``count`` (module
    docstring). A group goes to the first device from the current one (fastest first, wrapping) that
    it may use and whose capacity its footprint fits, else to the allowed device with the most room;
    the caller simulates the result to check memory."""
    D = inst.num_devices
    if not 1 <= count <= D:
        raise PlacementError(f"balanced_split: count must be between 1 and the {D} devices, got {count}")
    devices = fastest_first(inst)
    share = float(inst.need.sum()) / count
    used = np.zeros(D)
    dev = np.full(inst.n, -1, dtype=np.int64)
    k = 0
    for v in range(inst.n):
        if dev[v] >= 0:
            continue
        members = inst.members[inst.group[v]]
        need = float(inst.need[members].sum())
        allowed = inst.allowed[members].all(axis=0)
        if used[devices[k]] >= share and k < count - 1:
            k += 1
        ring = devices[k:] + devices[:k]
        d = next((x for x in ring if allowed[x] and used[x] + need <= inst.capacity[x]), -1)
        if d < 0:
            d = max((x for x in ring if allowed[x]), key=lambda x: inst.capacity[x] - used[x])
        dev[members] = d
        used[d] += need
    return dev


def layer_split(inst: Instance, count: int) -> np.ndarray | None:
    """(n,) device ids: the layers of the graph (:func:`layer_index`) in ``count`` bands of
    consecutive indices, band ``b`` on the ``b``-th fastest device (module docstring); None when fewer
    than two layers are indexed. A colocation group goes with its first member, to the first device
    from its band's (fastest first, wrapping) that it may use; the caller simulates the result to
    check memory."""
    layer = layer_index(inst)
    if layer is None:
        return None
    devices = fastest_first(inst)
    bands = layer * count // (int(layer.max()) + 1)
    dev = np.full(inst.n, -1, dtype=np.int64)
    for v in range(inst.n):
        if dev[v] < 0:
            members = inst.members[inst.group[v]]
            allowed = inst.allowed[members].all(axis=0)
            k = int(bands[v])
            dev[members] = next(d for d in devices[k:] + devices[:k] if allowed[d])
    return dev


def layer_index(inst: Instance) -> np.ndarray | None:
    """(n,) the layer of each node: the first integer component of its module's path; a node outside
    the indexed modules takes the lowest layer among its predecessors (the layer feeding it: attention
    over the first layer's output stays with it), layer 0 if none has one. None when fewer than two
    layers appear."""
    index = [_first_int(m) for m in inst.modules] if inst.modules else []
    if len({i for i in index if i is not None}) < 2:
        return None
    layer = np.zeros(inst.n, dtype=np.int64)
    for v in range(inst.n):  # topological order: predecessors first
        if index[v] is not None:
            layer[v] = index[v]
        elif inst.preds[v]:
            layer[v] = min(layer[u] for u, _ in inst.preds[v])
    return layer


def _first_int(path: str) -> int | None:
    return next((int(part) for part in path.split(".") if part.isdigit()), None)


def _pack(inst: Instance, devices: list[int], share: float, headroom: float) -> Schedule:
    D = inst.num_devices
    sched = Schedule(inst, headroom=headroom)
    used = np.zeros(D)
    k = 0
    for v in range(inst.n):
        options = set(sched.candidates(v))
        if not options:
            raise sched.ledger.infeasible(v, sched.dev)
        if used[devices[k]] >= share and k < D - 1:
            k += 1
        cur = devices[k]
        if cur not in options and sched.ledger.may_use(v, cur):
            # The current device is full for this node: move on to the next one that takes it.
            while k < D - 1 and devices[k] not in options:
                k += 1
        # A node the constraints keep off the current device goes to the next device it may use.
        d = next(x for x in devices[k:] + devices[:k] if x in options)
        sched.place(v, d, 0.0)
        used[d] += inst.need[v]
    return sched
