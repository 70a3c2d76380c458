"""The model's time for a fixed assignment: a feasible schedule of :mod:`placement.solvers.ilp`'s model.

:func:`model_schedule` runs the assignment under the model's rules (one task at a time per device, a
transfer per producer and receiving device sized for its largest edge, gradients sent back once the
last consumer on a device is done, no backward before its device's forwards, no link contention), the
way the simulator picks tasks with its own priority. The result is a complete solution of the model,
which :meth:`~placement.solvers.ilp.LatencyModel.hint` gives CP-SAT as its starting point, and, on
links without contention, the simulator's own timeline of that assignment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from placement.errors import PlacementError
from placement.solvers.instance import Instance

if TYPE_CHECKING:
    from placement.solvers.ilp import LatencyModel


@dataclass
class ModelSchedule:
    """A schedule in the model's time (ticks) of a fixed assignment: what :meth:`LatencyModel.hint` hints."""

    sF: list[int]
    eF: list[int]
    sB: list[int]
    eB: list[int]
    makespan: int
    dev: list[int] = field(default_factory=list)


def model_schedule(
    inst: Instance,
    dev: np.ndarray,
    model: LatencyModel,
    priority: np.ndarray | None = None,
) -> ModelSchedule:
    """Schedule the assignment ``dev`` under the model's rules (no link contention), as the simulator
    does with its own priority: each device, when free, runs among the tasks whose inputs are there the
    one of least ``priority`` (forwards by ``priority``, default topological, backwards in reverse),
    and no backward before its device's forwards are done. A feasible solution of the model.
    """
    n, D = inst.n, inst.num_devices
    dev = [int(d) for d in dev]
    pr = list(range(n)) if priority is None else [float(x) for x in priority]
    tick = model.ticks
    fd = [model.fdur[v].get(dev[v], tick(inst.fwd[v, dev[v]])) for v in range(n)]
    has_b = model.has_bwd
    needs_b = model.needs_b
    bd = [model.bdur[v].get(dev[v], tick(inst.bwd[v, dev[v]])) if has_b and needs_b[v] else 0 for v in range(n)]
    # Task t < n is F(t), t >= n is B(t - n).
    start = [0] * (2 * n)
    end = [0] * (2 * n)
    arrival = [0] * (2 * n)
    need = [len(inst.preds[v]) for v in range(n)] + [0] * n
    if has_b:
        for u in range(n):
            if needs_b[u]:
                # F(u), then the backward of every consumer (gradient only where u needs one).
                need[n + u] = 1 + (sum(1 for w, _ in inst.succs[u] if needs_b[w]) if inst.needs_grad[u] else 0)
    pending: list[list[tuple[float, int]]] = [[] for _ in range(D)]  # (arrival, task) released
    free = [0] * D
    f_left = [0] * D
    for v in range(n):
        f_left[dev[v]] += 1
    phi = [0] * D
    grad_last: dict[tuple[int, int], int] = {}
    total = n + (sum(needs_b) if has_b else 0)

    def release(t: int, at: int) -> None:
        arrival[t] = at
        pending[dev[t % n]].append((at, t))

    for v in range(n):
        if need[v] == 0:
            release(v, 0)
    done = 0
    while done < total:
        best = None
        for d in range(D):
            cands = pending[d]
            if not cands:
                continue
            eligible = [(a, t) for a, t in cands if t < n or f_left[d] == 0]
            if not eligible:
                continue
            first = min(a if t < n else max(a, phi[d]) for a, t in eligible)
            when = max(free[d], first)
            if best is None or (when, d) < best[:2]:
                best = (when, d, eligible)
        if best is None:
            raise PlacementError("model_schedule: no task can run (the order deadlocks)")
        when, d, eligible = best
        ready = [t for a, t in eligible if (a if t < n else max(a, phi[d])) <= when]
        t = min(ready, key=lambda t: (0, pr[t], t) if t < n else (1, -pr[t - n], -t))
        pending[d].remove((arrival[t], t))
        v = t % n
        start[t] = when
        end[t] = when + (fd[v] if t < n else bd[v])
        free[d] = end[t]
        done += 1
        if t < n:
            f_left[d] -= 1
            phi[d] = max(phi[d], end[t])
            group: dict[int, int] = {}  # one send per receiving device, sized for its largest edge
            for w, e in inst.succs[v]:
                if dev[w] != d:
                    group[dev[w]] = max(group.get(dev[w], 0), tick(inst.comm(e, d, dev[w])))
            for w, e in inst.succs[v]:
                arrival[w] = max(arrival[w], end[t] + group.get(dev[w], 0))
                need[w] -= 1
                if need[w] == 0:
                    release(w, arrival[w])
            if has_b and needs_b[v]:
                arrival[n + v] = max(arrival[n + v], end[t])
                need[n + v] -= 1
                if need[n + v] == 0:
                    release(n + v, arrival[n + v])
        else:
            for u, e in inst.preds[v]:
                if not (needs_b[u] and inst.needs_grad[u]):
                    continue
                key = (u, d)
                grad_last[key] = max(grad_last.get(key, 0), end[t])
                need[n + u] -= 1
                if need[n + u] == 0:
                    at = arrival[n + u]
                    for b in {dev[w] for w, _ in inst.succs[u] if needs_b[w]}:
                        delay = 0 if b == dev[u] else max(
                            tick(inst.comm(e2, b, dev[u])) for w, e2 in inst.succs[u] if dev[w] == b
                        )
                        at = max(at, grad_last[(u, b)] + delay)
                    release(n + u, at)
    return ModelSchedule(start[:n], end[:n], start[n:], end[n:], max(end, default=0))
