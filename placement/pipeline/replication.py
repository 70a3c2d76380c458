r"""Stage replication: give a fixed split's idle devices to its stages, data-parallel (PipeDream, SOSP 2019).

A part :math:`S` on :math:`r` devices of class :math:`t` has load
:math:`\mathrm{load}_t(S)/r + \frac{2(r-1)}{r}\beta_t P(S)` (see :mod:`placement.pipeline.instance`):
each replica computes and communicates for :math:`1/r` of the samples, and the replicas all-reduce the
part's gradients with a ring every step. The load is not monotone in :math:`r` (the all-reduce grows),
so a part takes only the replicas that help.

For fixed parts and classes, :func:`replicate` is exact: for a target :math:`T` each part needs
:math:`r_S(T) = \min\{r : \mathrm{load}_{t,r}(S) \le T\}` replicas, which does not increase with
:math:`T`; :math:`T` is feasible iff :math:`\sum_{S \text{ on } t} r_S(T) \le n_t` for every class, so
a binary search over the finitely many values :math:`\mathrm{load}_{t,r}(S)` finds the least one. The
contiguous DP (:func:`~placement.pipeline.dp.contiguous_dp`) chooses replicas jointly with the split.
"""

from __future__ import annotations

import bisect
import time

from placement.errors import PlacementError
from placement.pipeline.instance import (
    Part,
    Partition,
    ThroughputInstance,
    max_load,
    part_load,
)


def replicate(inst: ThroughputInstance, partition: Partition) -> Partition:
    """``partition`` with each part given the replicas that minimise the max-load (module docstring).

    The parts keep their nodes and classes; a part's existing replica count is a starting point only.
    Raises :class:`PlacementError` when the instance does not allow replication.
    """
    if not inst.replication:
        raise PlacementError("replicate: the instance does not allow replication")
    started = time.perf_counter()
    succ = inst.successors()
    table: list[list[float]] = []  # part -> load with r = 1..n_t replicas
    for p in partition.parts:
        n_t = inst.classes[p.device_class].count
        table.append([part_load(inst, p.nodes, p.device_class, r, succ) for r in range(1, n_t + 1)])
    values = sorted({x for row in table for x in row})

    def needs(target: float) -> list[int] | None:
        reps = []
        used = [0] * len(inst.classes)
        for p, row in zip(partition.parts, table):
            r = next((i + 1 for i, x in enumerate(row) if x <= target), None)
            if r is None:
                return None
            used[p.device_class] += r
            if used[p.device_class] > inst.classes[p.device_class].count:
                return None
            reps.append(r)
        return reps

    lo = bisect.bisect_left(values, max(min(row) for row in table)) if table else 0
    hi = len(values) - 1
    best = needs(values[hi]) if table else []
    while lo < hi:
        mid = (lo + hi) // 2
        got = needs(values[mid])
        if got is None:
            lo = mid + 1
        else:
            hi, best = mid, got
    if best is None:
        raise PlacementError("replicate: the split uses more devices than the classes have")
    parts = [Part(p.nodes, p.device_class, r, row[r - 1]) for p, r, row in zip(partition.parts, best, table)]
    value = max_load(inst, parts)
    return Partition(
        parts=parts,
        max_load=value,
        method=partition.method + "+replicas",
        optimal=False,
        bound=min(partition.bound, value),
        contiguous=partition.contiguous,
        seconds=partition.seconds + time.perf_counter() - started,
        stats={**partition.stats, "replicas": best},
    )
