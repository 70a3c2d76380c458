"""``solve_throughput``: a pipelined plan for a placement problem, the public entry of this package.

Steps, each a module of its own:

1. the problem becomes a :class:`~placement.pipeline.instance.ThroughputInstance`
   (:mod:`~placement.pipeline.build`);
2. a split is chosen (``method``):

   * ``"dp"``: the exact contiguous DP over ideals (:mod:`~placement.pipeline.dp`), with replicated stages
     when the instance allows them; when the graph has too many ideals for the time budget, the DP over
     prefixes of a topological order (an upper bound), then the contiguous CP-SAT model started from it
     for :data:`ILP_SHARES` ``["dp"]`` of the budget (it proves the contiguous optimum of Inception-v3 in
     about a minute), keeping the prefix split unless CP-SAT's is better (a CP-SAT proof of optimality
     then covers the kept split too: it is no worse). Operator-level training graphs of 2,000 nodes
     stay within the exact DP (:mod:`~placement.pipeline.ideals`, :mod:`~placement.pipeline.dp`);
   * ``"ilp"``: the non-contiguous CP-SAT model (:mod:`~placement.pipeline.ilp`), started from the
     prefix DP's split;
   * ``"equal-split"``: the naive baseline (:mod:`~placement.pipeline.baselines`);
   * ``"auto"`` (default): ``"dp"`` within the work of half the time budget, then, when the model is
     small enough (at most :data:`ILP_MAX_VARIABLES` unit-device pairs), the non-contiguous ILP started
     from the DP's split for :data:`ILP_SHARES` ``["auto"]`` of the budget, unless the DP's split
     replicates a stage (the ILP has no replicas); the split of smaller max-load wins (the contiguous
     one on a tie), the ILP's after its idle devices are given to its parts as replicas when the
     instance allows it (:mod:`~placement.pipeline.replication`). Every step keeps the better of its
     split and the split found before it, so ``"auto"`` never returns a split worse than a cheaper
     method already found;
3. the parts get concrete devices, in pipeline order, as :class:`~placement.plan.Stage` records;
4. the microbatch count is the problem's, the caller's, or the fastest simulated one that fits
   (:mod:`~placement.pipeline.microbatches`);
5. :func:`~placement.problem.finish_plan` checks, simulates and bounds the plan.

**Budget and determinism.** Every CP-SAT solve gets a fixed share of the problem's time limit, spent as
deterministic time (:mod:`~placement.pipeline.ilp`), never a share of the time left on the clock, so a
seed reproduces the plan on a busy machine as on a quiet one. The first split gets
:data:`FIRST_ATTEMPT_BUDGET` of the time limit, every memory retry :data:`RETRY_BUDGET`; a solve whose
share is under :data:`MIN_ILP_SECONDS` is skipped. The exact DP gets :data:`DP_SHARE` of the time limit
as counted work (:data:`~placement.pipeline.dp.WORK_PER_SECOND` per second: pairs of ideals examined).
The clock is only a safety net, at :data:`WALL_SLACK` times a stage's nominal seconds (a CP-SAT solve
at least until the time limit): when it cuts the DP, a solve, the microbatch choice or the memory
retries short, ``settings["stopped_by_wall_clock"]`` names the stage, and the plan may then differ
between runs.

The plan's ``settings`` record the max-load of the split (``max_load_ms``: the time per step of the
slowest stage with its transfers, the objective here), a lower bound on it over all splits
(``load_bound_ms``), whether the split is contiguous and proven optimal, and the microbatch candidates.
The plan is simulated with its replicated stages (:func:`placement.plan.stage_replicas`).

**Memory.** The instance counts each node's own memory (:mod:`~placement.pipeline.build`); the simulator
also counts, per stage, the activations it receives and keeps for the backward and the gradients in
flight. When the simulated plan overflows a device, steps 2-4 run again with that device class's
capacity lowered by the stage's memory outside the instance's model (at most :data:`MEMORY_RETRIES`
times; ``settings["memory_retries"]`` says how many), so a tight memory budget gives a split that fits
rather than an error. The reported ``load_bound_ms`` is the least over the attempts: a bound of a
tightened instance is not a bound of the problem.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from placement.constraints import InfeasibleError
from placement.errors import ConfigurationError, PlacementError
from placement.pipeline.baselines import equal_split
from placement.pipeline.bound import load_lower_bound
from placement.pipeline.build import instance_from_problem, stages_of
from placement.pipeline.dp import (
    PASSED_DEADLINE,
    WORK_PER_SECOND,
    DPTimeout,
    contiguous_dp,
)
from placement.pipeline.ideals import TooManyIdeals
from placement.pipeline.ilp import noncontiguous_ilp
from placement.pipeline.instance import (
    Partition,
    ThroughputInstance,
    colocation_units,
    part_memory,
)
from placement.pipeline.microbatches import choose_microbatches
from placement.pipeline.replication import replicate
from placement.plan import Plan, Stage, stage_replicas
from placement.problem import Problem, finish_plan
from placement.simulate import simulate

METHODS = ("auto", "dp", "ilp", "equal-split")
ILP_MAX_VARIABLES = 5_000
MEMORY_RETRIES = 3  # splits tried again with tightened capacities when the simulated plan overflows
PREFIX_CHUNKS = 256
# Fractions of the time limit the split of the first attempt, and of each memory retry, may spend in CP-SAT.
FIRST_ATTEMPT_BUDGET = 0.7
RETRY_BUDGET = 0.1
# Fractions of an attempt's budget per CP-SAT solve: the contiguous model after the prefix DP ("dp"),
# the non-contiguous model after the DP ("auto"), the non-contiguous model of method "ilp" ("ilp").
ILP_SHARES = {"dp": 0.4, "auto": 0.5, "ilp": 0.8}
MIN_ILP_SECONDS = 0.5
#: The fraction of the time limit the exact DP's counted work stands for.
DP_SHARE = 0.5
#: The wall-clock safety net of a stage: this many times its nominal seconds (CP-SAT's deterministic time
#: runs at 0.25-1.5 per wall second on a quiet machine, and a loaded one is slower still).
WALL_SLACK = 6.0


def _ilp(
    problem: Problem, inst: ThroughputInstance, seconds: float, stops: list[str], **options: object
) -> Partition:
    """:func:`noncontiguous_ilp` for ``seconds`` nominal seconds (deterministic time, the problem's seed),
    stopped by the wall clock only after ``WALL_SLACK`` times those seconds and not before the time limit;
    such a stop is appended to ``stops``."""
    wall = max(WALL_SLACK * seconds, problem.time_left())
    part = noncontiguous_ilp(inst, time_limit_s=seconds, wall_limit_s=wall, seed=problem.seed, **options)  # type: ignore[arg-type]
    if part.stats.get("stopped_by_wall_clock"):
        stops.append("pipeline cp-sat")
    return part


def _dp(problem: Problem, inst: ThroughputInstance, max_ideals: int, budget: float, stops: list[str]) -> Partition:
    """The exact DP, for the work of ``DP_SHARE`` of the time limit; past its limits, the prefix DP
    improved (and often proven optimal) by the contiguous CP-SAT model started from it, for
    ``ILP_SHARES["dp"]`` of ``budget`` seconds. When the prefix DP finds no split fitting in memory
    (prefixes of one order are fewer splits), the contiguous CP-SAT model alone."""
    seconds = DP_SHARE * problem.time_limit
    try:
        return contiguous_dp(inst, max_ideals=max_ideals, max_work=WORK_PER_SECOND * seconds,
                             deadline=time.perf_counter() + WALL_SLACK * seconds)  # fmt: skip
    except (TooManyIdeals, DPTimeout) as why:
        reason = str(why)
        if PASSED_DEADLINE in reason:
            stops.append("pipeline dp")
    small = _ilp_size(inst) <= ILP_MAX_VARIABLES
    try:
        part = contiguous_dp(inst, exhaustive=False, chunks=PREFIX_CHUNKS)
    except InfeasibleError:
        if not small:
            raise
        part = _ilp(problem, inst, max(MIN_ILP_SECONDS, ILP_SHARES["dp"] * budget), stops, contiguous=True)
    else:
        seconds = ILP_SHARES["dp"] * budget
        if small and seconds >= MIN_ILP_SECONDS and all(p.replicas == 1 for p in part.parts):
            try:
                ilp = _ilp(problem, inst, seconds, stops, contiguous=True, hint=part)
                if inst.replication:  # the ILP has no replicas: it proves nothing about replicated splits
                    part = _best(inst, part, replicate(inst, ilp))
                else:
                    part = _proven(_best(inst, part, ilp), ilp)
            except PlacementError as failed:  # nothing found in time: keep the prefix DP's split
                part.stats["ilp"] = str(failed)
    part.stats["fallback"] = reason
    return part


def _ilp_size(inst: ThroughputInstance) -> int:
    return len(set(colocation_units(inst))) * inst.num_devices


def _best(inst: ThroughputInstance, a: Partition, b: Partition) -> Partition:
    """The smaller max-load; ``a`` on a tie (within float noise). Every fallback step picks with it, so
    a later, costlier method never returns a split worse than one an earlier method found."""
    return b if b.max_load < a.max_load * (1 - 1e-9) else a


def _proven(best: Partition, ilp: Partition) -> Partition:
    """``best`` (a split no worse than ``ilp``'s), marked optimal with ``ilp``'s bound when ``ilp`` proved
    its problem's optimum: CP-SAT's optimum is exact up to its rounding (``stats["resolution_ms"]``), so
    a split at most as costly is optimal up to the same rounding."""
    if not ilp.optimal or best is ilp:
        return best
    proof = {"proven_by": ilp.method, "resolution_ms": ilp.stats["resolution_ms"]}
    return replace(best, optimal=True, bound=max(best.bound, ilp.bound), stats={**best.stats, **proof})


def choose_partition(
    problem: Problem,
    inst: ThroughputInstance,
    method: str = "auto",
    max_ideals: int = 50_000,
    budget: float | None = None,
    stops: list[str] | None = None,
) -> tuple[Partition, float]:
    """The split of step 2 of the module docstring and a lower bound on the max-load of any split.

    ``budget``: the nominal seconds its CP-SAT solves may spend (default: ``FIRST_ATTEMPT_BUDGET`` of the
    problem's time limit). ``stops``: where the stages the wall clock cut short are appended."""
    stops = [] if stops is None else stops
    if budget is None:
        budget = FIRST_ATTEMPT_BUDGET * problem.time_limit
    if method not in METHODS:
        raise ConfigurationError(f"solve_throughput: method must be one of {METHODS}, got {method!r}")
    bound = load_lower_bound(inst)
    if method == "equal-split":
        return equal_split(inst), bound
    if method == "ilp":
        try:
            start: Partition | None = contiguous_dp(inst, exhaustive=False, chunks=PREFIX_CHUNKS, replication=False)
        except InfeasibleError:
            start = None
        ilp = _ilp(problem, inst, max(MIN_ILP_SECONDS, ILP_SHARES["ilp"] * budget), stops, hint=start)
        best = ilp if start is None else _best(inst, ilp, start)
        if not inst.replication:
            return best, max(bound, ilp.bound)
        return replicate(inst, best), bound
    part = _dp(problem, inst, max_ideals, budget, stops)
    replicated = any(p.replicas > 1 for p in part.parts)
    seconds = ILP_SHARES["auto"] * budget
    if method == "auto" and not replicated and _ilp_size(inst) <= ILP_MAX_VARIABLES and seconds >= MIN_ILP_SECONDS:
        # The ILP has no replicas: worth running only when the DP's best split did not use them.
        try:
            ilp = _ilp(problem, inst, seconds, stops, hint=part)
        except InfeasibleError:
            raise
        except PlacementError as why:  # no split within the time: keep the DP's
            part.stats["ilp"] = str(why)
            return part, bound
        if not inst.replication:
            bound = max(bound, ilp.bound)
        if ilp.optimal:
            part.stats["noncontiguous_optimum_ms"] = ilp.max_load
        part = _best(inst, part, replicate(inst, ilp) if inst.replication else ilp)
    return part, bound


def solve_throughput(
    problem: Problem,
    *,
    method: str = "auto",
    replication: bool | None = None,
    microbatches: int | None = None,
    max_ideals: int = 50_000,
) -> Plan:
    """A pipelined plan minimising the time of the slowest stage including its transfers (module docstring).

    Args:
        problem: from :func:`placement.problem.make_problem` (its time limit is the budget).
        method: ``"auto"``, ``"dp"``, ``"ilp"`` or ``"equal-split"``.
        replication: allow replicated stages (default: yes, except for the NeurIPS 2020 inputs).
        microbatches: fix the microbatch count (default: ``problem.microbatches``, else chosen).
        max_ideals: the most ideals the exact DP enumerates before it falls back to prefixes.

    Raises:
        InfeasibleError: no split fits in memory (the message names the device and the overflow) or the
            constraints conflict.
    """
    started = time.perf_counter()
    inst = instance_from_problem(problem, replication=replication)
    bound = math.inf
    stops: list[str] = []
    wall = started + WALL_SLACK * problem.time_limit  # the safety net of the microbatch choice and the retries
    for attempt in range(MEMORY_RETRIES + 1):
        budget = (FIRST_ATTEMPT_BUDGET if attempt == 0 else RETRY_BUDGET) * problem.time_limit
        part, attempt_bound = choose_partition(problem, inst, method, max_ideals, budget, stops)
        bound = min(bound, attempt_bound)  # a tightened instance's bound is not one of the problem's
        assignment, stages = stages_of(inst, part)
        m = microbatches or problem.microbatches
        candidates: dict[str, float] = {}
        fits = False  # known to fit: the microbatch choice simulated this plan already
        if m is None:
            choice = choose_microbatches(problem, assignment, deadline=wall, stages=stages)
            m = choice.microbatches
            candidates = {str(k): v for k, v in choice.step_ms.items()}
            fits = choice.fits[m]
            if choice.stopped_by_wall_clock:
                stops.append("pipeline microbatches")
        if fits or attempt == MEMORY_RETRIES:
            break
        if time.perf_counter() > wall:
            stops.append("pipeline memory retries")
            break
        tightened = _tightened(problem, inst, part, assignment, stages, m)
        if tightened is None:
            break
        inst = tightened
    settings = {
        "method": method,
        "split": part.method,
        "max_load_ms": part.max_load,
        "load_bound_ms": min(bound, part.max_load),
        "load_gap": max(0.0, (part.max_load - bound) / part.max_load) if part.max_load > 0 else 0.0,
        "contiguous": part.contiguous,
        "optimal": part.optimal,
        "replication": inst.replication,
        "replicas": [p.replicas for p in part.parts],
        "stage_loads_ms": [p.load for p in part.parts],
        "microbatch_step_ms": candidates,
        "split_seconds": part.seconds,
        "partition_stats": {k: v for k, v in part.stats.items() if _json_ok(v)},
        "memory_retries": attempt,
        "pipeline_seconds": time.perf_counter() - started,
        "stopped_by_wall_clock": sorted(set(stops)),
    }
    return finish_plan(problem, assignment, solver=f"pipeline-{part.method}", settings=settings, stages=stages, microbatches=m)


def _tightened(
    problem: Problem, inst: ThroughputInstance, part: Partition, assignment: dict[str, str], stages: list[Stage], m: int
) -> ThroughputInstance | None:
    """``inst`` with smaller capacities when the simulated plan overflows a device, else None.

    The instance counts a part's own nodes only; the simulator also counts the tensors a stage receives
    and the gradients it sends back (module docstring). For a device that overflows, the difference
    between the two (the part's memory outside the model) is taken off its class's capacity, so the
    next split leaves that room.
    """
    result = simulate(problem.graph, problem.cluster, assignment, problem.cost_model, mode=problem.mode,
                      microbatches=m, replicas=stage_replicas(stages))  # fmt: skip
    capacity = dict(zip(problem.cluster.device_names, problem.resolved.capacity))
    extra = [0.0] * len(inst.classes)
    for p, stage in zip(part.parts, stages):
        for device in stage.devices:
            peak = result.peak_memory_bytes.get(device, 0.0)
            if peak > capacity[device]:
                extra[p.device_class] = max(extra[p.device_class], peak - part_memory(inst, p.nodes))
    if not any(extra):
        return None
    classes = [replace(c, capacity=c.capacity - e) if e > 0 else c for c, e in zip(inst.classes, extra)]
    return replace(inst, classes=classes)


def _json_ok(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_json_ok(v) for v in value)
    return isinstance(value, (int, str, bool)) or value is None
