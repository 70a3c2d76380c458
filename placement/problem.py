"""What every solver shares: the problem it is given, and turning an assignment into a checked Plan.

A solver is a function ``Problem -> Plan``. It decides the assignment (and optionally the order per
device, the stages and the microbatch count); :func:`finish_plan` then checks it against the resolved
constraints, fixes the schedule the executors will run, simulates that schedule, checks memory,
computes the lower bound and records everything in the :class:`~placement.plan.Plan`, so that all
solvers report the same quantities the same way, and a plan's prediction is what
:meth:`Plan.simulate <placement.plan.Plan.simulate>` gives.
:func:`deterministic_solver` is the CP-SAT solver that the latency and the pipeline models share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from graphc.ir.deprecation import renamed_keywords
from graphc.ir.graph import Graph
from placement.bounds import Bound, lowered_bound
from placement.cluster import Cluster, ClusterLike
from placement.constraints import (
    Constraints,
    InfeasibleError,
    Resolved,
    check_memory,
    resolve,
)
from placement.cost_model import CostModel
from placement.errors import ConfigurationError, PlacementError, ScheduleError
from placement.lowering import MODES, Lowered, lower
from placement.plan import OBJECTIVES, Plan, Stage, stage_replicas
from placement.schedules import Schedule, make_schedule
from placement.simulate import simulate
from placement.sync import AllReduceSync, Sync
from placement.timeline import SimResult


@dataclass
class Problem:
    """One placement request: the graph, the cluster, how to price it, and what is required.

    ``started`` is the ``time.perf_counter()`` at which solving began (solve time is measured from it;
    :func:`make_problem` sets it before resolving the constraints, which is solving time too);
    ``deadline`` the perf_counter value by which a solver must return. ``cache`` holds what solvers
    derive from the problem once and share (the :class:`~placement.lowering.Lowered` arrays, the
    integer-indexed :class:`~placement.solvers.instance.Instance`, the lower bounds per microbatch
    count, the graph's fingerprint, the best plan found so far under ``auto``); it is not part of the request. The problem owns its graph: edit a graph and make a new
    problem, as what was derived from the old graph stays cached here.
    """

    graph: Graph
    cluster: Cluster
    cost_model: CostModel
    resolved: Resolved
    objective: str = "latency"
    mode: str = "training"
    time_limit: float = 30.0
    seed: int = 0
    microbatches: int | None = None
    started: float = field(default_factory=time.perf_counter)
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def deadline(self) -> float:
        return self.started + self.time_limit

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def lowered(self) -> Lowered:
        """The graph, cluster and cost model of this problem as arrays (:mod:`placement.lowering`), built
        on first use and shared by the solver instance, the pipeline instance and the bounds."""
        cached = self.cache.get("lowered")
        if cached is None:
            cached = self.cache["lowered"] = lower(self.graph, self.cluster, self.cost_model, self.mode)
        return cached

    def fingerprint(self) -> str:
        """The graph's fingerprint (:meth:`graphc.ir.graph.Graph.fingerprint`), computed once: the problem
        owns its graph, and each finished plan records it (half a second on 100,000 nodes)."""
        cached = self.cache.get("fingerprint")
        if cached is None:
            cached = self.cache["fingerprint"] = self.graph.fingerprint()
        return cached

    def bound(self, microbatches: int = 1) -> Bound:
        """The lower bound of this graph on this cluster for ``microbatches`` (cached per count in
        ``cache``, which a copy of the problem with another start time shares)."""
        bounds = self.cache.setdefault("bounds", {})
        if microbatches not in bounds:
            bounds[microbatches] = lowered_bound(self.lowered(), microbatches)
        return bounds[microbatches]


@renamed_keywords(time_limit="time_limit_s")
def make_problem(
    graph: Graph,
    cluster: ClusterLike,
    *,
    objective: str = "latency",
    constraints: Constraints | None = None,
    cost_model: CostModel | None = None,
    mode: str = "training",
    time_limit_s: float = 30.0,
    seed: int = 0,
    microbatches: int | None = None,
) -> Problem:
    """Validate the request and resolve its constraints (conflicts raise :class:`InfeasibleError`).

    ``time_limit_s``: the seconds the solvers may take (the problem's ``time_limit``)."""
    if objective not in OBJECTIVES:
        raise ConfigurationError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) or not time_limit_s > 0:
        raise ConfigurationError(f"time_limit_s must be > 0 seconds, got {time_limit_s!r}")
    if microbatches is not None and (not isinstance(microbatches, int) or microbatches < 1):
        raise ConfigurationError(f"microbatches must be an integer >= 1 or None (solver chooses), got {microbatches!r}")
    started = time.perf_counter()  # the limit counts from the request: resolving is solving time too
    cluster = Cluster.resolve(cluster)
    return Problem(
        graph=graph,
        cluster=cluster,
        cost_model=cost_model or CostModel(cluster),
        resolved=resolve(graph, cluster, constraints),
        objective=objective,
        mode=mode,
        time_limit=float(time_limit_s),
        seed=seed,
        microbatches=microbatches,
        started=started,
    )


def check_assignment(problem: Problem, assignment: Mapping[str, str]) -> None:
    """Every node on an allowed device, every colocation group on one device."""
    graph, cluster, resolved = problem.graph, problem.cluster, problem.resolved
    missing = [n for n in graph.node_names() if n not in assignment]
    if missing:
        raise PlacementError(f"the assignment leaves {len(missing)} node(s) without a device: {missing[:5]}")
    for name in graph.node_names():
        index = cluster.device_index(assignment[name])
        if not resolved.is_allowed(name, index):
            raise PlacementError(f"node {name!r} is placed on {assignment[name]!r}, which its constraints forbid")
    for rep, members in resolved.groups.items():
        placed = {assignment[m] for m in members}
        if len(placed) > 1:
            raise PlacementError(f"colocation group of {rep!r} is split over {sorted(placed)}")


def finish_plan(
    problem: Problem,
    assignment: Mapping[str, str],
    *,
    solver: str,
    settings: dict[str, Any] | None = None,
    order: Mapping[str, Sequence[str]] | None = None,
    stages: Sequence[Stage] = (),
    microbatches: int = 1,
    gap: float | None = None,
    bound_ms: float | None = None,
    sync: Sync | None = None,
    prediction: Prediction | None = None,
) -> Plan:
    """Check, schedule, simulate and bound an assignment; return the Plan every solver reports.

    The plan's ``predicted_step_ms`` and ``peak_memory_bytes`` are the simulation of the schedule its
    devices run (:func:`placement.schedules.make_schedule`), exactly what :meth:`Plan.simulate` gives:

    * without stages, ``node-order``. A solver's ``order`` is kept. Without one, the order is fixed
      here: each device's forwards in the order the simulator's ready queues started them (microbatch
      0), kept when its schedule simulates no slower than the topological order (and fits when that
      does), else the topological order; either is recorded in ``Plan.order``;
    * with stages, ``gpipe`` or ``1f1b``, whichever simulates faster among those that fit (the
      smaller overflow when neither fits; gpipe on a tie), recorded in ``Plan.schedule``;
    * when no such schedule can be made (:class:`ScheduleError`: stages feeding earlier ones, stages
      of a graph with explicit backward nodes, an ``order`` against the dependencies), the simulator's
      ready queues run the plan's order and stages, as :meth:`Plan.simulate` then does: no executor
      runs such a plan.

    ``sync``: how the replicas of replicated stages combine their gradients (:mod:`placement.sync`;
    default :class:`~placement.sync.AllReduceSync`), recorded in ``Plan.sync`` and simulated.
    ``bound_ms``: a bound the solver proved itself (CP-SAT's), used when stronger than the generic one.
    ``gap``: the solver's proven gap; when None it is derived from the bound.
    ``prediction``: what :func:`predict` returned for this same assignment, order, stages, microbatches
    and sync (a solver that judged its candidates by it): its schedule and simulation are recorded
    instead of being made again (on 100,000 nodes a prediction is most of a plan's cost).
    Raises :class:`InfeasibleError` when a device's simulated peak memory exceeds its capacity.
    """
    check_assignment(problem, assignment)
    plan = _draft(problem, assignment, order, stages, microbatches, sync)
    if prediction is None:
        result = _predict(problem, plan)
    else:
        result = prediction.result
        plan.order = {d: list(ns) for d, ns in prediction.order.items()}
        plan.schedule = prediction.schedule
    check_memory(result.peak_memory_bytes, problem.cluster, problem.resolved)
    bound = max(problem.bound(microbatches).step_ms, bound_ms or 0.0)
    if gap is None and result.step_ms > 0:
        gap = max(0.0, (result.step_ms - bound) / result.step_ms)
    plan.graph_fingerprint = problem.fingerprint()
    plan.predicted_step_ms = result.step_ms
    plan.peak_memory_bytes = dict(result.peak_memory_bytes)
    plan.lower_bound_ms = bound
    plan.gap = gap
    plan.solver = solver
    plan.settings = {"time_limit": problem.time_limit, "seed": problem.seed, **(settings or {})}
    plan.solve_seconds = time.perf_counter() - problem.started
    return plan


@dataclass
class Prediction:
    """What :func:`finish_plan` would record of an assignment: the simulation of the schedule its
    devices run, that schedule's node order per device and its name (``""``: the plan's default)."""

    result: SimResult
    order: dict[str, list[str]]
    schedule: str


def predict(
    problem: Problem,
    assignment: Mapping[str, str],
    *,
    order: Mapping[str, Sequence[str]] | None = None,
    stages: Sequence[Stage] = (),
    microbatches: int = 1,
    sync: Sync | None = None,
) -> Prediction:
    """The schedule :func:`finish_plan` fixes for this assignment and its simulation, without the
    checks and the bound: for a solver that compares candidates (the microbatch count) by the figure
    the plan will report (``sync``: as :func:`finish_plan`'s)."""
    plan = _draft(problem, assignment, order, stages, microbatches, sync)
    result = _predict(problem, plan)
    return Prediction(result, plan.order, plan.schedule)


def _draft(
    problem: Problem,
    assignment: Mapping[str, str],
    order: Mapping[str, Sequence[str]] | None,
    stages: Sequence[Stage],
    microbatches: int,
    sync: Sync | None = None,
) -> Plan:
    """A plan of the assignment with nothing predicted yet (no fingerprint either: a schedule needs none)."""
    return Plan(
        graph_name=problem.graph.name,
        graph_fingerprint="",
        cluster_name=problem.cluster.name,
        objective=problem.objective,
        mode=problem.mode,
        assignment=dict(assignment),
        order={d: list(ns) for d, ns in (order or {}).items()},
        stages=list(stages),
        microbatches=microbatches,
        sync=sync or AllReduceSync(),
        graph=problem.graph,
        cluster=problem.cluster,
        cost_model=problem.cost_model,
    )


Simulate = Callable[..., SimResult]


def _predict(problem: Problem, plan: Plan) -> SimResult:
    """Fix ``plan``'s schedule (its ``order`` or ``schedule``) and return its simulation (:func:`finish_plan`)."""
    lw = problem.lowered()
    sim = partial(simulate, problem.graph, problem.cluster, plan.assignment, problem.cost_model, mode=problem.mode,
                  microbatches=plan.microbatches, replicas=stage_replicas(plan.stages), lowered=lw, sync=plan.sync)  # fmt: skip
    capacity = dict(zip(problem.cluster.device_names, problem.resolved.capacity))

    def overflow(result: SimResult) -> float:
        return sum(max(0.0, peak - capacity[d]) for d, peak in result.peak_memory_bytes.items())

    if plan.stages:
        return _pipeline_schedule(plan, lw, sim, overflow)
    return _node_order(plan, lw, sim, overflow)


def _node_order(plan: Plan, lw: Lowered, sim: Simulate, overflow: Callable[[SimResult], float]) -> SimResult:
    """The node-order schedule's simulation; a plan without an order gets the better of the ready
    queues' and the topological one (:func:`finish_plan`)."""
    if plan.order:
        candidates = [plan.order]
    else:
        ready = _ready_queue_order(lw, plan.assignment, sim())
        topological = _topological_order(lw, plan.assignment)
        candidates = [ready] if ready == topological else [ready, topological]
    best: tuple[tuple[bool, float], dict[str, list[str]], SimResult] | None = None
    for order in candidates:
        plan.order = order
        schedule = _made(plan, "node-order", lw)
        if schedule is None:  # a solver's order against the dependencies: the ready queues report it
            return sim(order=plan.order or None)
        result = sim(schedule=schedule)
        key = (overflow(result) > 0, result.step_ms)
        if best is None or key < best[0]:
            best = (key, order, result)
    assert best is not None
    plan.order = best[1]
    return best[2]


def _pipeline_schedule(plan: Plan, lw: Lowered, sim: Simulate, overflow: Callable[[SimResult], float]) -> SimResult:
    """The better of the gpipe and 1f1b schedules' simulations (:func:`finish_plan`)."""
    names = ("gpipe", "1f1b") if lw.has_bwd else ("gpipe",)  # forward-only, 1f1b is gpipe
    best: tuple[tuple[bool, float, float, int], str, SimResult] | None = None
    for rank, name in enumerate(names):
        schedule = _made(plan, name, lw)
        if schedule is None:  # no pipeline schedule of these stages exists: the ready queues
            plan.schedule = ""
            return sim(order=plan.order or None)
        result = sim(schedule=schedule)
        over = overflow(result)
        key = (over > 0, over, result.step_ms, rank)
        if best is None or key < best[0]:
            best = (key, name, result)
    assert best is not None
    plan.schedule = best[1]
    return best[2]


def _made(plan: Plan, name: str, lw: Lowered) -> Schedule | None:
    """``make_schedule(plan, name)``, or None when the plan has no such schedule."""
    try:
        return make_schedule(plan, name, lw.graph, lowered=lw)
    except ScheduleError:
        return None


def _ready_queue_order(lw: Lowered, assignment: Mapping[str, str], result: SimResult) -> dict[str, list[str]]:
    """Each device's nodes in the order the simulation started their forwards in microbatch 0 (ties:
    topological order, which a zero-time node and its successor on one device may need)."""
    assert result.raw is not None
    start = np.frombuffer(result.raw.task_start)[: lw.n] if len(result.raw.task_start) else np.zeros(0)
    return _by_device((lw.names[v] for v in np.lexsort((np.arange(lw.n), start)).tolist()), assignment)


def _topological_order(lw: Lowered, assignment: Mapping[str, str]) -> dict[str, list[str]]:
    """Each device's nodes in the lowering's topological order, devices in the order of first use."""
    return _by_device(lw.names, assignment)


def _by_device(names: Iterable[str], assignment: Mapping[str, str]) -> dict[str, list[str]]:
    """``names`` split by their device, each device's in the given order (devices by first use)."""
    order: dict[str, list[str]] = {}
    for name in names:
        order.setdefault(assignment[name], []).append(name)
    return order


__all__ = ["InfeasibleError", "Prediction", "Problem", "check_assignment", "finish_plan", "make_problem", "predict"]


def deterministic_solver(
    seconds: float, per_second: float, *, seed: int = 0, workers: int = 1, wall_limit: float | None = None
) -> cp_model.CpSolver:
    """A CP-SAT solver for a budget of ``seconds``, spent as deterministic time (``per_second`` of it per
    second, so that a seed reproduces the search), several ``workers`` interleaved (OR-Tools'
    deterministic parallel mode); the wall clock stops it at ``wall_limit`` seconds (default
    ``2 * seconds``) should the machine be slow."""
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.random_seed = int(seed)
    p.num_workers = max(1, int(workers))
    if p.num_workers > 1:
        p.interleave_search = True
    p.max_deterministic_time = max(0.005, per_second * float(seconds))
    p.max_time_in_seconds = max(0.05, float(wall_limit if wall_limit is not None else 2.0 * seconds))
    return solver
