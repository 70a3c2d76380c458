"""m-TOPO: memory-aware topological placement (Baechi, Jeon et al., SoCC 2020).

Nodes are taken in topological order and packed onto one device after another: the current device
takes nodes until it holds its share of the graph's memory (the total footprint over the number of
devices, so that every device gets some of the graph) or until the next node no longer fits, and the
next device continues. Devices are filled fastest first. A node that may not use the current device
goes to the first later device it may use and fits on (a colocation group follows its first member).
Baechi uses it as the fast baseline its m-ETF and m-SCT improve on; it ignores time altogether.
"""

from __future__ import annotations

import numpy as np

from placement.plan import Plan
from placement.solvers.common import Problem
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import Schedule, memory_retries, to_plan


def m_topo(problem: Problem) -> Plan:
    """Place with m-TOPO; the simulator orders the tasks."""
    inst = instance(problem)
    return to_plan(problem, inst, topo_schedule(inst).dev, solver="m-topo")


def topo_schedule(inst: Instance) -> Schedule:
    """The m-TOPO placement of ``inst`` (start times are not estimated)."""
    D = inst.num_devices
    work = np.where(inst.allowed, inst.work, 0.0).sum(axis=0)
    devices = sorted(range(D), key=lambda d: (work[d] / max(1, inst.allowed[:, d].sum()), d))
    share = float(inst.need.sum()) / D
    return memory_retries(lambda h: _pack(inst, devices, share, h))


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
