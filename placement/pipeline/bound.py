r"""A lower bound on the max-load of any split (contiguous or not), cheap enough for every graph.

* **Work.** Every node runs somewhere and no device is busier than the max-load :math:`T`, so
  :math:`T` is at least the optimum of the fractional assignment
  :math:`\min T` s.t. :math:`\sum_t y_{v,t} = 1`, :math:`\sum_v p_{v,t}\, y_{v,t} \le n_t T`,
  :math:`y \ge 0` (communication and memory left out; replication splits work, it does not remove it).
  One class: total work over devices; more: OR-Tools GLOP.
* **Unit.** A colocation group runs on one part, so :math:`T \ge \min_t p_{a,t} / r_t` with
  :math:`r_t = n_t` when replication is allowed, else 1.
"""

from __future__ import annotations

import math

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
    return max(unit_bound, _work_bound(list(per_unit.values()), [c.count for c in inst.classes]))


def _work_bound(rows: list[list[float]], counts: list[int]) -> float:
    if not rows:
        return 0.0
    if len(counts) == 1:
        return math.fsum(r[0] for r in rows) / counts[0]
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("GLOP")
    big = solver.infinity()
    T = solver.NumVar(0, big, "T")
    loads: list[list] = [[] for _ in counts]
    merged: dict[tuple[float, ...], int] = {}
    for r in rows:
        merged[tuple(r)] = merged.get(tuple(r), 0) + 1
    for i, (r, mult) in enumerate(merged.items()):
        share = []
        for t, x in enumerate(r):
            if x == math.inf:
                continue
            y = solver.NumVar(0, mult, f"y{i}_{t}")
            share.append(y)
            loads[t].append(x * y)
        solver.Add(solver.Sum(share) == mult)
    for t, terms in enumerate(loads):
        if terms:
            solver.Add(solver.Sum(terms) <= counts[t] * T)
    solver.Minimize(T)
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return 0.0
    return T.solution_value() * (1 - 1e-6)  # GLOP's tolerance: keep it a bound
