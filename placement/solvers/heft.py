"""HEFT: Heterogeneous Earliest Finish Time, memory-aware.

Topcuoglu, Hariri and Wu, "Performance-effective and low-complexity task scheduling for heterogeneous
computing", IEEE TPDS 13(3), 2002. Tasks are taken in decreasing *upward rank* (the longest path to an
exit task, with every task's mean time over the processors and every edge's mean communication time),
and each goes to the processor where it finishes earliest, allowed to fill an idle gap between two
tasks already scheduled there (the insertion policy).

Memory-aware as the Baechi heuristics are (Jeon et al., SoCC 2020): a device is a candidate only while
the node fits (:class:`~placement.solvers.listsched.MemoryLedger`); colocation groups follow their
first member. Times are forward + backward (the training-folded model of
:mod:`placement.solvers.listsched`).
"""

from __future__ import annotations

from placement.plan import Plan
from placement.problem import Problem
from placement.solvers.baselines import heuristic_plan
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import (
    Schedule,
    Timeline,
    mean_work,
    memory_retries,
    order_by,
    upward_rank,
)


def heft_schedule(inst: Instance) -> Schedule:
    """The HEFT list schedule of ``inst``."""
    rank = upward_rank(inst, mean_work(inst), inst.mean_round_trip())
    order = order_by(rank)
    return memory_retries(lambda h: _heft(inst, order, h))


def _heft(inst: Instance, order: list[int], headroom: float) -> Schedule:
    sched = Schedule(inst, headroom=headroom)
    timelines = [Timeline() for _ in range(inst.num_devices)]
    for v in order:
        d, start = sched.eft(v, timelines)
        sched.place(v, d, start)
        timelines[d].add(start, sched.finish[v])
    return sched


def heft(problem: Problem) -> Plan:
    """Place with HEFT (one device where that schedule is no longer) and record the schedule's order per device."""
    inst = instance(problem)
    return heuristic_plan(problem, inst, heft_schedule(inst), "heft")
