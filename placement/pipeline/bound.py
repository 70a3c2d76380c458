r"""A lower bound on the max-load of any split (contiguous or not), cheap enough for every graph.

* **Work.** Every node runs somewhere and no device is busier than the max-load :math:`T`, so
  :math:`T` is at least the optimum of the fractional assignment
  :math:`\min T` s.t. :math:`\sum_t y_{v,t} = 1`, :math:`\sum_v p_{v,t}\, y_{v,t} \le n_t T`,
  :math:`y \ge 0` (communication and memory left out; replication splits work, it does not remove it).
  The same LP as the step-time work bound, :func:`placement.bounds.work_bound`.
* **Unit.** A colocation group runs on one part, so :math:`T \ge \min_t p_{a,t} / r_t` with
  :math:`r_t = n_t` when replication is allowed, else 1.
"""

from __future__ import annotations

from placement.bounds import work_bound
from placement.pipeline.instance import ThroughputInstance, colocation_units


def load_lower_bound(inst: ThroughputInstance) -> float:
    """``max(work bound, unit bound)`` of the module docstring, in ms."""
    unit = colocation_units(inst)
    k = len(inst.classes)
    per_unit: dict[int, list[float]] = {}
    for v, a in enumerate(unit):
        row = per_unit.setdefault(a, [0.0] * k)
        for t in range(k):
            row[t] += inst.load[v][t]
    div = [c.count if inst.replication else 1 for c in inst.classes]
    unit_bound = max((min(x / d for x, d in zip(row, div)) for row in per_unit.values()), default=0.0)
    return max(unit_bound, work_bound([tuple(row) for row in per_unit.values()], [c.count for c in inst.classes]))
