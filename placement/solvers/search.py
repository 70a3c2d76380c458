"""What the improving solvers share: judging a candidate by the simulator, and a local search.

:class:`Evaluator` is the one judge of a candidate assignment: the figure
:func:`~placement.problem.finish_plan` will report for it (:func:`~placement.problem.predict`: the
simulation of the schedule its devices run), with the device memory the constraints allow. A
candidate that comes with a per-device order is predicted both with that order and without (the
order finish_plan then fixes), and the faster counts, since a solver's model of time is never exactly
the simulator's (see :mod:`placement.solvers.ilp`); a plan made of it keeps the same choice
(:func:`~placement.solvers.listsched.to_plan`).

:func:`polish` is a first-improvement local search on the full graph, judged by the simulator (so it
sees link contention and the simulator's order, which no model here does): it moves a node (with its
colocation group) across a cut edge to the device of its neighbour, and keeps the move when the step
gets shorter. Moves are judged by the simulator's ready queues on the problem's lowering
(:meth:`Evaluator.quick`), several times cheaper than a prediction and within a few percent of it
(measured: 0.976-1.017 on Inception-v3's 326 nodes); the polished placement is then predicted and
kept only when its prediction beats the incumbent's. Candidates are visited in a seeded random order, so a seed gives one trajectory; the
search stops at a local optimum, after ``max_evals`` simulations, or at the deadline. A second
neighbourhood moves short chains whole, which single moves cannot do when each half of the move
alone makes the step longer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from placement.errors import PlacementError
from placement.problem import Prediction, Problem, predict
from placement.simulate import SimResult, simulate
from placement.solvers.coarsen import coarsen
from placement.solvers.instance import Instance


@dataclass
class Candidate:
    """A judged assignment: device per node, the order it was simulated with (None: the simulator's
    priority), its simulated step (inf if it does not fit) and where it came from; the forward start of
    every node and the :class:`~placement.problem.Prediction` it was judged by (None when it does not
    fit), which finishing its plan reuses (:func:`~placement.problem.finish_plan`)."""

    dev: np.ndarray
    seq: list[list[int]] | None
    step_ms: float
    source: str
    starts: np.ndarray | None = field(default=None, repr=False)
    prediction: Prediction | None = field(default=None, repr=False)

    def better_than(self, other: Candidate | None) -> bool:
        return other is None or self.step_ms < other.step_ms * (1 - 1e-9) - 1e-12


#: What a prediction costs in simulations of the ready queues on the lowering (:meth:`Evaluator.quick`),
#: the unit the search's work is counted in: without an order it simulates the ready queues and up to
#: two schedules, each made and validated first; with one, one schedule. Measured on Inception-v3
#: (326 nodes, 4 GPUs: 9.3 and 4.4) and ResNet-50 (177 nodes: 5.1 and 3.5).
PREDICT_UNITS = 7
PREDICT_ORDER_UNITS = 4


class Evaluator:
    """Judge candidates of one problem (module docstring); count the work in simulations (``calls``:
    a prediction counts :data:`PREDICT_UNITS` or :data:`PREDICT_ORDER_UNITS`) and its time."""

    def __init__(self, problem: Problem, inst: Instance) -> None:
        self.problem, self.inst = problem, inst
        self.capacity = {d.name: c for d, c in zip(inst.devices, inst.capacity)}
        self.microbatches = problem.microbatches or 1
        self.calls = 0
        self.seconds = 0.0

    def step(self, dev: np.ndarray, seq: list[list[int]] | None = None) -> tuple[float, np.ndarray | None]:
        """The step :func:`~placement.problem.finish_plan` would predict for ``dev`` (with order ``seq``
        when given), inf when memory overflows; and the forward start of every node."""
        step, starts, _ = self._predict(dev, seq)
        return step, starts

    def quick(self, dev: np.ndarray) -> float:
        """The step of ``dev`` simulated by the ready queues (the search's cheap estimate of :meth:`step`),
        inf when memory overflows."""
        p = self.problem
        sim = partial(simulate, p.graph, p.cluster, cost_model=p.cost_model, mode=p.mode,
                      microbatches=self.microbatches, lowered=p.lowered())  # fmt: skip
        return self._judge(1, lambda assignment: sim(assignment=assignment), dev)[0]

    def _predict(
        self, dev: np.ndarray, seq: list[list[int]] | None
    ) -> tuple[float, np.ndarray | None, Prediction | None]:
        """:meth:`step`, and the prediction itself when the plan fits."""
        p, m = self.problem, self.microbatches
        order = self.inst.order_names(seq) if seq is not None else None
        units = PREDICT_ORDER_UNITS if seq is not None else PREDICT_UNITS
        made: list[Prediction] = []

        def run(assignment: dict[str, str]) -> SimResult:
            made.append(predict(p, assignment, order=order, microbatches=m))
            return made[0].result

        step, starts = self._judge(units, run, dev)
        return step, starts, made[0] if np.isfinite(step) else None

    def _judge(
        self, units: int, run: Callable[[dict[str, str]], SimResult], dev: np.ndarray
    ) -> tuple[float, np.ndarray | None]:
        """``run``'s step of ``dev``'s assignment, inf when it fails or overflows memory; the forward starts."""
        start = time.perf_counter()
        try:
            result = run(self.inst.assignment_names(dev))
        except PlacementError:
            return float("inf"), None
        finally:
            self.calls += units
            self.seconds += time.perf_counter() - start
        for name, peak in result.peak_memory_bytes.items():
            if peak > self.capacity[name]:
                return float("inf"), None
        raw = result.raw
        starts = np.frombuffer(raw.task_start)[: self.inst.n] if raw is not None and len(raw.task_start) else None
        return result.step_ms, starts

    def __call__(self, dev: np.ndarray, seq: list[list[int]] | None, source: str) -> Candidate:
        """The better of ``dev`` predicted with the order ``seq`` and without one."""
        dev = np.asarray(dev, dtype=np.int64)
        step, starts, made = self._predict(dev, None)
        best = Candidate(dev, None, step, source, starts, made)
        if seq is not None:
            step, starts, made = self._predict(dev, seq)
            if step < best.step_ms:
                best = Candidate(dev, seq, step, source, starts, made)
        return best


def polish(
    evaluator: Evaluator,
    incumbent: Candidate,
    deadline: float,
    *,
    seed: int = 0,
    max_evals: int = 100_000,
    segment_cost: int = 0,
) -> tuple[Candidate, bool, int]:
    """Local search judged by the simulator (module docstring), in two neighbourhoods: a node (with
    its colocation group) moved across a cut edge to its neighbour's device, until no such move helps;
    then a *segment* (a coarse node of the graph coarsened to a third of its size respecting the
    current devices: a short chain) moved to any device; back to single moves after a segment move
    helps, stop when neither does. Each coarsening into segments counts as ``segment_cost`` simulations
    against ``max_evals`` (its nominal cost, so that the work done never depends on the clock).
    Moves are judged by :meth:`Evaluator.quick`; the polished placement is predicted
    (:meth:`Evaluator.step`) and returned only when that beats the incumbent's step, else the incumbent.
    Returns the result, whether the search ended by itself (local optimum or ``max_evals``) rather
    than at the wall-clock ``deadline``, and the simulations charged beyond those run (the
    coarsenings')."""
    inst = evaluator.inst
    rng = random.Random(seed)
    dev = incumbent.dev.copy()
    # Moves are judged by the ready queues (module docstring; an order would not survive them).
    best_step = evaluator.quick(dev)
    moved_any = False
    evals = charged = 0

    def attempt(nodes: list[int], d: int) -> bool:
        nonlocal best_step, evals, moved_any
        members = sorted({m for v in nodes for m in inst.members[inst.group[v]]})
        if (dev[members] == d).all() or not inst.allowed[members, d].all():
            return False
        old = dev[members].copy()
        dev[members] = d
        step = evaluator.quick(dev)
        evals += 1
        if step < best_step * (1 - 1e-9) - 1e-12:
            best_step = step
            moved_any = True
            return True
        dev[members] = old
        return False

    clock = False

    def out_of_time() -> bool:
        nonlocal clock
        if evals >= max_evals:
            return True
        if time.perf_counter() >= deadline:
            clock = True
            return True
        return False

    while not out_of_time():
        improved = True
        while improved and not out_of_time():
            improved = False
            moves = sorted(boundary_moves(inst, dev))
            rng.shuffle(moves)
            for v, d in moves:
                if out_of_time():
                    break
                improved |= attempt([v], d)
        if out_of_time() or inst.n < 3 or evals + segment_cost >= max_evals:
            break
        evals += segment_cost
        charged += segment_cost
        segments = coarsen(inst, max(2, inst.n // 3), respect=dev).members
        order = [(i, d) for i in range(len(segments)) for d in range(inst.num_devices)]
        rng.shuffle(order)
        moved = False
        for i, d in order:
            if out_of_time():
                break
            if len(segments[i]) > 1 and attempt(segments[i], d):
                moved = True
        if not moved:
            break
    if moved_any:  # the polished placement, judged as the plan will be
        polished = evaluator(dev, None, incumbent.source + "+polish")
        if polished.better_than(incumbent):
            return polished, not clock, charged
    return incumbent, not clock, charged


def boundary_moves(inst: Instance, dev: np.ndarray) -> set[tuple[int, int]]:
    """(node, device) pairs moving a node to the device of a neighbour across a cut edge."""
    src, dst = inst.src, inst.dst
    cut = np.flatnonzero(dev[src] != dev[dst])
    moves = set()
    for e in cut.tolist():
        u, v = int(src[e]), int(dst[e])
        moves.add((u, int(dev[v])))
        moves.add((v, int(dev[u])))
    return moves
