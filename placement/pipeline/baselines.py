"""The naive baseline the solvers are compared with: an equal split of a topological order.

:func:`equal_split` is what one does by hand (and what GPipe's ``balance`` by layer count approximates):
take the blocks (colocation groups, see :mod:`placement.pipeline.ideals`) in topological order and cut
the sequence into as many consecutive pieces as the largest device class has devices, each holding
about the same compute on that class. A block the class may not run goes, with the other such blocks,
on the first class that allows it. Memory and communication are ignored when cutting; the result is
scored with the real objective and ``stats["fits"]`` says whether it fits in memory.
"""

from __future__ import annotations

import math
import time

from placement.pipeline.ideals import structure_blocks
from placement.pipeline.instance import (
    Partition,
    ThroughputInstance,
    is_contiguous,
    make_part,
    max_load,
    part_memory,
)


def equal_split(inst: ThroughputInstance) -> Partition:
    """Cut the topological order into equal-compute pieces on the largest class (module docstring)."""
    started = time.perf_counter()
    blocks = structure_blocks(inst)
    main = max(range(len(inst.classes)), key=lambda t: (inst.classes[t].count, -t))
    k = inst.classes[main].count
    weight = []
    elsewhere: dict[int, list[int]] = {}
    order = []
    for b, nodes in enumerate(blocks.members):
        w = math.fsum(inst.load[v][main] for v in nodes)
        if w == math.inf:
            t = next(t for t in range(len(inst.classes)) if all(inst.load[v][t] != math.inf for v in nodes))
            elsewhere.setdefault(t, []).extend(nodes)
        else:
            order.append(b)
            weight.append(w)
    total = math.fsum(weight)
    pieces: list[list[int]] = [[] for _ in range(k)]
    acc = 0.0
    for pos, (b, w) in enumerate(zip(order, weight)):
        i = min(k - 1, int((acc + w / 2) / total * k)) if total > 0 else pos * k // len(order)
        pieces[i].extend(blocks.members[b])
        acc += w
    parts = [make_part(inst, nodes, main) for nodes in pieces if nodes]
    parts += [make_part(inst, nodes, t) for t, nodes in sorted(elsewhere.items())]
    fits = all(part_memory(inst, p.nodes) <= inst.classes[p.device_class].capacity for p in parts)
    return Partition(
        parts=parts,
        max_load=max_load(inst, parts),
        method="equal-split",
        optimal=False,
        bound=0.0,
        contiguous=is_contiguous(inst, parts),
        seconds=time.perf_counter() - started,
        stats={"fits": fits, "class": inst.classes[main].name},
    )
