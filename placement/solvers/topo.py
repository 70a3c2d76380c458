"""m-TOPO: memory-aware topological placement (Baechi, Jeon et al., SoCC 2020).

Nodes are taken in topological order and packed onto one device after another, fastest device first
(:func:`topo_pack`): as in Baechi, a device takes the next node while what it holds plus the node stays
within ``total / count + largest`` (the graph's footprint shared over the ``count`` devices, plus the
largest node's, so that every device gets some of the graph) and the node fits; then the next device
continues. A node that may not use the current device goes to the first later device it may use and
fits on (a colocation group follows its first member). Baechi packs onto every device; here
:func:`topo_schedule` packs onto the ``count`` fastest devices for every ``count`` from one to all and
keeps the packing whose schedule is shortest, so that a slow device (a CPU beside GPUs) or a split that
only adds transfers is never taken where it makes the step longer. Each packing is timed as it is
made: a node starts on its device at the first idle gap after its inputs are there, with the link
bookings of :class:`~placement.solvers.linkbook.LinkBook` (the simulator's model: a transfer per
producer and receiving device, transfers sharing a link wait). Booked in topological order, that
time errs long (up to 1.7 times the simulated step on small random graphs); the packing kept is
scheduled again by m-ETF on its fixed devices, and that schedule is the plan's order and its recorded
step (:func:`~placement.solvers.baselines.heuristic_plan`). Baechi uses m-TOPO as the fast baseline its
m-ETF and m-SCT improve on.

:func:`balanced_split` is a variant for ``auto``'s warm start: it packs onto the ``k`` fastest devices
only, ``total / k`` of the footprint each (a colocation group counted whole where its first member
lands), and checks capacity by footprint alone, leaving the exact memory check to the simulator
instead of the memory ledger. Packing over every device, as Baechi's m-TOPO does, hands a slow device
of large memory (a CPU beside the GPUs) its share of the graph, and the ledger's allowance for transfers
can push more there: on the dnn-partitioning ResNet-50 training graph on ``pcie-4gpu``, such a packing
gave 2,727 ms and the split onto the four GPUs 393 ms. ``auto`` tries every ``k`` of :func:`split_counts`
(contiguous, memory-balanced splits: the model-parallel baseline).

:func:`layer_split` is the other kind of split ``auto`` tries: by the index of the repeated layer a
node's module belongs to (``encoder.layers.2``, ``h.11``), in ``k`` bands of layers on the ``k``
fastest devices. Where the step is unrolled in time (an RNN's cells called once per token), every
device then holds one layer for every time step, and the devices work on successive steps at once (the
wavefront), which no split in topological order gives: on the GNMT of the model zoo on ``pcie-4gpu``,
the layer split onto the four GPUs simulated at 165 ms, the best list scheduler (m-SCT) at 281 ms.
"""

from __future__ import annotations

import numpy as np

from placement.constraints import InfeasibleError
from placement.errors import PlacementError
from placement.plan import Plan
from placement.problem import Problem
from placement.solvers.baselines import heuristic_plan
from placement.solvers.etf import etf_schedule, static_priority
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import Schedule, Timeline, memory_retries


def m_topo(problem: Problem) -> Plan:
    """Place with m-TOPO (one device where that schedule is no longer) and record the schedule's order per device."""
    inst = instance(problem)
    packed = topo_schedule(inst)
    return heuristic_plan(problem, inst, etf_schedule(inst, static_priority(inst), fixed=packed.dev), "m-topo")


def fastest_first(inst: Instance) -> list[int]:
    """Device ids by mean node time on them (over the nodes allowed there), fastest first."""
    work = np.where(inst.allowed, inst.work, 0.0).sum(axis=0)
    return sorted(range(inst.num_devices), key=lambda d: (work[d] / max(1, inst.allowed[:, d].sum()), d))


def topo_schedule(inst: Instance) -> Schedule:
    """The m-TOPO placement of ``inst``: the packing onto the ``count`` fastest devices, over every
    ``count``, whose schedule is shortest (module docstring). Raises the error of packing onto every
    device when no packing fits."""
    best: Schedule | None = None
    error: InfeasibleError | None = None
    for count in range(inst.num_devices, 0, -1):
        try:
            sched = topo_pack(inst, count)
        except InfeasibleError as exc:
            error = error or exc
            continue
        if best is None or sched.makespan() < best.makespan() * (1 - 1e-9):
            best = sched
    if best is None:
        assert error is not None
        raise error
    return best


def topo_pack(inst: Instance, count: int) -> Schedule:
    """Baechi's packing onto the ``count`` fastest devices (module docstring), with growing memory
    headroom until it fits (:func:`memory_retries`)."""
    D = inst.num_devices
    if not 1 <= count <= D:
        raise PlacementError(f"topo_pack: count must be between 1 and the {D} devices, got {count}")
    need = inst.need
    limit = float(need.sum()) / count + float(need.max(initial=0.0))
    return memory_retries(lambda h: _pack(inst, fastest_first(inst), count, limit, h))


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


def _pack(inst: Instance, devices: list[int], count: int, limit: float, headroom: float) -> Schedule:
    """Pack onto ``devices[:count]`` (fastest first), each device up to ``limit`` bytes of footprint;
    a node kept off all of them by its constraints goes to the first other device it may use."""
    sched = Schedule(inst, headroom=headroom)
    timelines = [Timeline() for _ in range(inst.num_devices)]
    led = sched.ledger
    packed = devices[:count]
    held = np.zeros(inst.num_devices)
    k = 0
    dev = sched.dev
    for v in range(inst.n):
        need = float(inst.need[v])
        # Move on while the current device holds its share, or is full for this node.
        while k < count - 1 and (
            held[packed[k]] + need > limit or (led.may_use(v, packed[k]) and not led.fits(v, packed[k], dev))
        ):
            k += 1
        d = next((x for x in packed[k:] + packed[:k] + devices[count:] if led.may_use(v, x) and led.fits(v, x, dev)), -1)
        if d < 0:
            raise led.infeasible(v, dev)
        start = timelines[d].earliest(sched.ready_on(v, d), float(sched.work[v, d]))
        sched.place(v, d, start)
        timelines[d].add(start, float(sched.finish[v]))
        held[d] += need
    return sched
