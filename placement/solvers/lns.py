"""Large-neighbourhood search on the full graph with CP-SAT, judged by the simulator.

Each step frees a neighbourhood of the incumbent and re-optimises it with the model of
:mod:`placement.solvers.ilp`, everything else keeping its device:

1. The full graph is coarsened *respecting the incumbent* (:func:`placement.solvers.coarsen.coarsen` with
   ``respect`` = the incumbent's devices), so the incumbent is exactly a solution of the coarse graph.
2. A window is grown from a seed coarse node (an end of an edge cut by the incumbent, or any node),
   through coarse neighbours, each with its colocation group where that fits (a node tied to a fixed
   one could not move), until it holds ``window`` fine nodes; its coarse nodes are split back into
   fine nodes (:meth:`~placement.solvers.coarsen.Coarsening.refine`).
3. CP-SAT solves that model with the coarse nodes outside the window fixed to their devices and the
   window's fine nodes free, hinted with the incumbent scheduled in the model's time (priorities from
   the incumbent's simulated timeline).
4. The result is expanded to the full graph and simulated; it replaces the incumbent if its step is
   shorter, and the coarsening is redone around the new incumbent.

Windows are drawn from a generator seeded by the problem's seed and every solve runs under CP-SAT's
deterministic time limit, so the sequence of neighbourhoods and their solutions is reproducible; the
caller fixes the number of steps (``max_steps``), and the wall-clock ``deadline`` is only a safety net.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import numpy as np

from placement.solvers.coarsen import coarsen
from placement.solvers.ilp import LatencyModel
from placement.solvers.instance import Instance
from placement.solvers.search import Candidate, Evaluator
from placement.solvers.workload import model_terms

if TYPE_CHECKING:
    from placement.solvers.coarsen import Coarsening


def grow_window(co: Coarsening, dev: np.ndarray, size: int, rng: random.Random) -> list[int]:
    """Coarse nodes around a seed (an end of a cut edge half the time) holding about ``size`` fine nodes.
    A node comes with the rest of its coarse colocation group when that fits in ``size``: a node whose
    group partner stays fixed cannot move (a forward node and its explicit backward node, say)."""
    coarse = co.coarse
    cdev = co.project(dev)
    cut = [int(x) for e in range(coarse.num_edges) if cdev[coarse.src[e]] != cdev[coarse.dst[e]]
           for x in (coarse.src[e], coarse.dst[e])]
    seed = rng.choice(cut) if cut and rng.random() < 0.5 else rng.randrange(co.size)
    window: list[int] = []
    seen: set[int] = set()

    def add(c: int) -> list[int]:
        group = coarse.members[coarse.group[c]]
        if sum(len(co.members[y]) for y in group) > size:
            group = [c]
        new = [x for x in group if x not in seen]
        seen.update(new)
        window.extend(new)
        return new

    frontier = add(seed)
    total = sum(len(co.members[c]) for c in window)
    while frontier and total < size:
        c = frontier.pop(0)
        nbrs = [x for x, _ in coarse.preds[c]] + [x for x, _ in coarse.succs[c]]
        rng.shuffle(nbrs)
        for x in nbrs:
            if x not in seen and total < size:
                added = add(x)
                frontier += added
                total += sum(len(co.members[y]) for y in added)
    return window


def lns(
    inst: Instance,
    evaluator: Evaluator,
    incumbent: Candidate,
    deadline: float,
    *,
    seed: int = 0,
    window: int = 24,
    base_size: int = 60,
    step_seconds: float = 1.5,
    max_steps: int = 1_000_000,
    workers: int = 1,
    max_terms: int | None = None,
) -> tuple[Candidate, dict]:
    """Improve ``incumbent`` for ``max_steps`` steps of ``step_seconds`` CP-SAT budget each, or until
    the wall-clock ``deadline`` (module docstring); returns it and step statistics: steps taken,
    improvements, and what the caller charges them: CP-SAT's deterministic seconds over all steps,
    coarsenings of the whole graph, and the terms of the models built
    (:func:`placement.solvers.workload.model_terms`). A step whose model would pass ``max_terms`` is
    not built: the search stops there and ``stats["too_large"]`` holds its size.
    ``stats["stopped_by_wall_clock"]``: a solve was cut by the ``deadline`` rather than its
    deterministic limit (the search may then differ between runs)."""
    rng = random.Random(seed)
    stats: dict[str, float] = {"steps": 0, "improvements": 0, "deterministic_s": 0.0, "coarsenings": 1, "terms": 0}
    base = coarsen(inst, base_size, respect=incumbent.dev)
    while stats["steps"] < max_steps:
        left = deadline - time.perf_counter()
        if left < 0.05:
            break
        win = grow_window(base, incumbent.dev, window, rng)
        co = base.refine(win)
        in_window = np.zeros(co.size, dtype=bool)
        for fine in (v for c in win for v in base.members[c]):
            in_window[co.part[fine]] = True
        cdev = co.project(incumbent.dev)
        fixed = {c: int(cdev[c]) for c in range(co.size) if not in_window[c]}
        terms = model_terms(co.coarse, fixed)
        if max_terms is not None and terms > max_terms:
            stats["too_large"] = terms
            break
        stats["terms"] += terms
        model = LatencyModel(co.coarse, fixed=fixed, symmetry=False)
        priority = None
        if incumbent.starts is not None:
            priority = np.asarray([min(incumbent.starts[v] for v in mem) for mem in co.members])
        model.hint(cdev, priority)
        result = model.solve(step_seconds, seed=rng.randrange(2**31), workers=workers, wall_limit=left, presolve=False)
        stats["steps"] += 1
        stats["deterministic_s"] += result.deterministic_s
        if result.stopped_by_wall_clock:
            stats["stopped_by_wall_clock"] = True
        if result.status not in ("OPTIMAL", "FEASIBLE"):
            continue
        cand = evaluator(co.expand(result.dev), co.expand_seq(result.seq), incumbent.source + "+lns")
        if cand.better_than(incumbent):
            incumbent = cand
            stats["improvements"] += 1
            stats["coarsenings"] += 1
            base = coarsen(inst, base_size, respect=incumbent.dev)
    return incumbent, stats
