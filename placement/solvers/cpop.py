"""Critical-path list scheduling (CPOP), memory-aware.

Critical-Path-On-a-Processor, from Topcuoglu, Hariri and Wu, "Performance-effective and low-complexity
task scheduling for heterogeneous computing", IEEE TPDS 13(3), 2002. A task's priority is its upward
rank plus its downward rank (the length of the longest path through it); the tasks of highest priority
form the critical path, which goes whole onto the one processor that runs it fastest, so none of its
edges pays communication. The other tasks are list-scheduled by priority (highest ready task first)
onto the processor where they finish earliest, idle gaps allowed.

Memory-aware (Baechi, Jeon et al., SoCC 2020): the critical-path processor must fit the critical path;
a critical-path task that no longer fits there, and every other task, takes the earliest-finish device
among those it fits on. Times are forward + backward (:mod:`placement.solvers.listsched`).
"""

from __future__ import annotations

import heapq

import numpy as np

from placement.plan import Plan
from placement.problem import Problem
from placement.solvers.baselines import heuristic_plan
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import (
    Schedule,
    Timeline,
    downward_rank,
    mean_work,
    memory_retries,
    upward_rank,
)


def critical_path(inst: Instance, priority: np.ndarray) -> list[int]:
    """The nodes of the critical path: from the entry node of highest priority, each step follows the
    successor whose priority equals the path's length (within rounding)."""
    if inst.n == 0:
        return []
    length = float(priority.max())
    tol = 1e-9 * max(1.0, length)
    v = min((u for u in range(inst.n) if not inst.preds[u]), key=lambda u: (-priority[u], u))
    path = [v]
    while True:
        nxt = [w for w, _ in inst.succs[v] if priority[w] >= length - tol]
        if not nxt:
            return path
        v = min(nxt)
        path.append(v)


def cpop_schedule(inst: Instance) -> Schedule:
    """The CPOP list schedule of ``inst``."""
    w, c = mean_work(inst), inst.mean_round_trip()
    priority = upward_rank(inst, w, c) + downward_rank(inst, w, c)
    path = critical_path(inst, priority)
    on_path = np.zeros(inst.n, dtype=bool)
    on_path[path] = True
    # The processor of the critical path: every path node allowed there, least total time.
    ok = inst.allowed[path].all(axis=0)
    totals = np.where(ok, inst.work[path].sum(axis=0), np.inf)
    cp_dev = int(np.argmin(totals)) if np.isfinite(totals).any() else -1
    return memory_retries(lambda h: _cpop(inst, priority, on_path, cp_dev, h))


def _cpop(inst: Instance, priority: np.ndarray, on_path: np.ndarray, cp_dev: int, headroom: float) -> Schedule:
    sched = Schedule(inst, headroom=headroom)
    timelines = [Timeline() for _ in range(inst.num_devices)]
    indeg = [len(p) for p in inst.preds]
    ready = [(-priority[v], v) for v in range(inst.n) if indeg[v] == 0]
    heapq.heapify(ready)
    while ready:
        _, v = heapq.heappop(ready)
        if on_path[v] and cp_dev >= 0 and sched.ledger.may_use(v, cp_dev) and sched.ledger.fits(v, cp_dev, sched.dev):
            d = cp_dev
            start = timelines[d].earliest(sched.ready_on(v, d), float(sched.work[v, d]))
        else:
            d, start = sched.eft(v, timelines)
        sched.place(v, d, start)
        timelines[d].add(start, sched.finish[v])
        for x, _ in inst.succs[v]:
            indeg[x] -= 1
            if indeg[x] == 0:
                heapq.heappush(ready, (-priority[x], x))
    return sched


def cpop(problem: Problem) -> Plan:
    """Place with CPOP (one device where that schedule is no longer) and record the schedule's order per device."""
    inst = instance(problem)
    return heuristic_plan(problem, inst, cpop_schedule(inst), "critical-path")
