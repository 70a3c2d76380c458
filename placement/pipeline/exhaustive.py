"""Exhaustive search over every split of a small instance: the reference the other algorithms are tested on.

Units (colocation groups) are split into at most as many parts as there are devices, each set partition
once (restricted growth strings); every part then gets a device class and a replica count within the
class counts. Each candidate is checked for memory, allowed classes and, when asked, contiguity (an
acyclic quotient graph over the pipeline edges, :func:`~placement.pipeline.ideals.is_contiguous`),
and scored with the objective of :mod:`placement.pipeline.instance` summed directly. Only the definition
of contiguity (:func:`~placement.pipeline.instance.pipeline_edges`) is shared with the DP and the ILP, no
algorithm, so agreement between the three is evidence for each.

The number of candidates grows like ``devices ** units``: meant for about 10 units and 2-4 devices.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

from placement.constraints import InfeasibleError
from placement.errors import PlacementError
from placement.pipeline.instance import (
    Part,
    Partition,
    ThroughputInstance,
    colocation_units,
    is_contiguous,
    part_load,
    pipeline_edges,
)


def _set_partitions(n: int, k: int) -> Iterator[list[int]]:
    """Restricted growth strings of length ``n`` with at most ``k`` blocks."""
    labels = [0] * n

    def rec(i: int, used: int) -> Iterator[list[int]]:
        if i == n:
            yield labels
            return
        for b in range(min(used + 1, k)):
            labels[i] = b
            yield from rec(i + 1, max(used, b + 1))

    if n == 0:
        yield []
        return
    yield from rec(0, 0)


def brute_force(
    inst: ThroughputInstance,
    *,
    contiguous: bool,
    replication: bool | None = None,
    max_units: int = 12,
) -> Partition:
    """The optimal split by exhaustive search (module docstring); raises InfeasibleError when none fits."""
    started = time.perf_counter()
    replicate = inst.replication if replication is None else replication
    unit = colocation_units(inst)
    reps = sorted(set(unit))
    if len(reps) > max_units:
        raise PlacementError(f"brute_force: {len(reps)} units is more than max_units={max_units}")
    members = {r: [v for v in range(inst.n) if unit[v] == r] for r in reps}
    succ = inst.successors()
    edges = pipeline_edges(inst)
    counts = [c.count for c in inst.classes]
    options = [(t, r) for t, c in enumerate(inst.classes) for r in range(1, (c.count if replicate else 1) + 1)]
    best_value = math.inf
    best_parts: list[Part] = []
    candidates = 0
    cache: dict[tuple[tuple[int, ...], int, int], float] = {}
    for labels in _set_partitions(len(reps), inst.num_devices):
        k = max(labels) + 1 if labels else 0
        parts_nodes = [tuple(sorted(v for i, r in enumerate(reps) if labels[i] == b for v in members[r])) for b in range(k)]
        if contiguous and not is_contiguous(inst, parts_nodes, edges):
            continue
        for choice in itertools.product(options, repeat=k):
            used = [0] * len(counts)
            for t, r in choice:
                used[t] += r
            if any(u > c for u, c in zip(used, counts)):
                continue
            candidates += 1
            value = 0.0
            for nodes, (t, r) in zip(parts_nodes, choice):
                key = (nodes, t, r)
                load = cache.get(key)
                if load is None:
                    cls = inst.classes[t]
                    fits = math.fsum(inst.memory[v] for v in nodes) <= cls.capacity
                    load = part_load(inst, nodes, t, r, succ) if fits else math.inf
                    cache[key] = load
                value = max(value, load)
                if value >= best_value:
                    break
            if value < best_value:
                best_value = value
                best_parts = [Part(nodes, t, r, cache[(nodes, t, r)]) for nodes, (t, r) in zip(parts_nodes, choice)]
    if best_value == math.inf:
        raise InfeasibleError("brute_force: no split satisfies memory, allowed classes and contiguity")
    return Partition(
        parts=best_parts,
        max_load=best_value,
        method="exhaustive",
        optimal=True,
        bound=best_value,
        contiguous=is_contiguous(inst, best_parts),
        seconds=time.perf_counter() - started,
        stats={"candidates": candidates, "units": len(reps)},
    )
