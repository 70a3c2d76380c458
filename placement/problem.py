"""What every solver shares: the problem it is given, and turning an assignment into a checked Plan.

A solver is a function ``Problem -> Plan``. It decides the assignment (and optionally the order per
device, the stages and the microbatch count); :func:`finish_plan` then checks it against the resolved
constraints, simulates it, checks memory, computes the lower bound and records everything in the
:class:`~placement.plan.Plan`, so that all solvers report the same quantities the same way.
:func:`deterministic_solver` is the CP-SAT solver that the latency and the pipeline models share.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
from placement.errors import ConfigurationError, PlacementError
from placement.lowering import MODES, Lowered, lower
from placement.plan import OBJECTIVES, Plan, Stage, stage_replicas
from placement.simulate import simulate


@dataclass
class Problem:
    """One placement request: the graph, the cluster, how to price it, and what is required.

    ``started`` is the ``time.perf_counter()`` at which solving began (solve time is measured from it);
    ``deadline`` the perf_counter value by which a solver must return. ``cache`` holds what solvers
    derive from the problem once and share (the :class:`~placement.lowering.Lowered` arrays, the
    integer-indexed :class:`~placement.solvers.instance.Instance`, the best plan found so far under
    ``auto``); it is not part of the request. The problem owns its graph: edit a graph and make a new
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
    _bound: Bound | None = None
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

    def bound(self, microbatches: int = 1) -> Bound:
        """The lower bound of this graph on this cluster (cached for one microbatch)."""
        if microbatches != 1:
            return lowered_bound(self.lowered(), microbatches)
        if self._bound is None:
            self._bound = lowered_bound(self.lowered())
        return self._bound


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
) -> Plan:
    """Check, simulate and bound an assignment; return the Plan every solver reports.

    ``bound_ms``: a bound the solver proved itself (CP-SAT's), used when stronger than the generic one.
    ``gap``: the solver's proven gap; when None it is derived from the bound.
    Raises :class:`InfeasibleError` when a device's simulated peak memory exceeds its capacity.
    """
    check_assignment(problem, assignment)
    result = simulate(
        problem.graph,
        problem.cluster,
        assignment,
        problem.cost_model,
        mode=problem.mode,
        microbatches=microbatches,
        order=order,
        replicas=stage_replicas(list(stages)),
    )
    check_memory(result.peak_memory_bytes, problem.cluster, problem.resolved)
    bound = max(problem.bound(microbatches).step_ms, bound_ms or 0.0)
    if gap is None and result.step_ms > 0:
        gap = max(0.0, (result.step_ms - bound) / result.step_ms)
    return Plan(
        graph_name=problem.graph.name,
        graph_fingerprint=problem.graph.fingerprint(),
        cluster_name=problem.cluster.name,
        objective=problem.objective,
        mode=problem.mode,
        assignment=dict(assignment),
        order={d: list(ns) for d, ns in (order or {}).items()},
        stages=list(stages),
        microbatches=microbatches,
        predicted_step_ms=result.step_ms,
        peak_memory_bytes=dict(result.peak_memory_bytes),
        lower_bound_ms=bound,
        gap=gap,
        solver=solver,
        solve_seconds=time.perf_counter() - problem.started,
        settings={"time_limit": problem.time_limit, "seed": problem.seed, **(settings or {})},
        graph=problem.graph,
        cluster=problem.cluster,
        cost_model=problem.cost_model,
    )


__all__ = ["InfeasibleError", "Problem", "check_assignment", "finish_plan", "make_problem"]


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
