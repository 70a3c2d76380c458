"""``solver="auto"``: the best plan the time budget allows, reproducibly, never slower than one device.

* **Latency**: :func:`placement.solvers.cpsat.improve` with settings scaled to the devices: the
  warm-start heuristics (one device first), CP-SAT on the graph or a coarsening of it, then rounds of
  polish and large-neighbourhood search, every candidate judged by the step its finished plan will
  predict (:class:`~placement.solvers.search.Evaluator`). Only a shorter predicted step replaces the
  incumbent, and the finished finalists are compared again, so the plan is never worse than any
  heuristic the budget ran, one device included. The search stops early when the plan meets a lower
  bound (proven optimal).
* **Throughput**: the pipeline solver, :func:`placement.pipeline.solve_throughput` (its options passed
  on), and the whole graph on one device as a one-stage plan (:func:`single_device_pipeline`, its
  microbatches chosen by simulation as the pipeline's are); the shorter simulated step wins, the
  pipeline on a tie. With ``parallel`` other than ``"pipeline"`` (or a ``sync`` asked for), the layouts
  of :func:`placement.hybrid.solve_parallel` (data parallel, hybrid, pipeline; the one-device plan
  among them under ``"auto"`` and ``"pipeline"``) and their synchronisation are chosen by simulation
  instead.

Sizes: the model covers the whole graph up to ``nodes x devices = full_limit``; beyond, a coarsening.
The LNS window and base partition shrink with the devices so that one step stays small.

**Determinism and time.** Every phase's work is planned from the time limit and the graph's size alone
(:mod:`placement.solvers.workload`: nominal seconds for the heuristics, the lowering, a simulation, a
coarsening, a model of a given size; CP-SAT's deterministic time; numbers of simulations and of LNS
steps), never from the clock, so the same inputs and seed give the same plan on a quiet or a loaded
machine. Model building is inside the plan: a coarsening or model estimated too large for its share
is not built, its share going to the search, and graphs too large for any model are left to the
heuristics and the polish. The plan spends about :data:`~placement.solvers.workload.NOMINAL_SHARE` of
the time limit; the wall clock is only a safety net for a machine much slower than the estimates, and
when it cuts a stage short, or skips one whose nominal cost would end past the limit (a coarsening, a
model's building, a heuristic or a prediction cannot be stopped once started), the plan's
``settings["stopped_by_wall_clock"]`` names the stage (the result may then differ between runs);
throughput plans pass on the pipeline solver's list. The final plans are finished from the
predictions the search judged them by, without simulating again, so the last stage's cost is known
(:func:`~placement.solvers.workload.final_seconds`). On 100,000 nodes and 128 devices only the lowering,
the split onto every device and its prediction fit (about 15 s of CPU, two thirds of it that
prediction); no list scheduler does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from placement.constraints import InfeasibleError
from placement.hybrid import DEFAULT_TARGET, solve_parallel
from placement.pipeline import solve_throughput
from placement.pipeline.microbatches import choose_microbatches
from placement.plan import Plan, Stage
from placement.problem import Problem, finish_plan
from placement.solvers.baselines import single_schedule
from placement.solvers.cpsat import CpSatSettings, improve
from placement.solvers.instance import instance

if TYPE_CHECKING:
    from placement.time_to_accuracy import Run


def auto(
    problem: Problem,
    *,
    parallel: str = "pipeline",
    sync: str | None = None,
    servers: Sequence[str] | None = None,
    convergence: Sequence[Run] | None = None,
    target: float = DEFAULT_TARGET,
    **pipeline_options: object,
) -> Plan:
    """Pick and combine solvers by graph size and time budget (module docstring). ``pipeline_options``
    (``method``, ``replication``) go to :func:`~placement.pipeline.solve_throughput`; ``parallel``,
    ``sync``, ``servers``, ``convergence`` and ``target`` (throughput only) to
    :func:`~placement.hybrid.solve_parallel`."""
    if problem.objective == "throughput":
        if parallel == "pipeline" and sync is None and servers is None and convergence is None:
            return _throughput(problem, **pipeline_options)
        extra = [("single", single_device_pipeline(problem))] if parallel in ("auto", "pipeline") else []
        return solve_parallel(
            problem, parallel=parallel, sync=sync or "auto", servers=servers, extra=extra,
            convergence=convergence, target=target, **pipeline_options,
        )  # fmt: skip
    D = instance(problem).num_devices
    cfg = CpSatSettings(lns_window=max(12, 48 // max(1, D // 2)), lns_base=max(24, 480 // D))
    plan, _ = improve(problem, cfg, solver="auto")
    return plan


def _throughput(problem: Problem, **pipeline_options: object) -> Plan:
    """The pipeline solver's plan, or the one-device plan where that simulates faster."""
    pipeline = solve_throughput(problem, **pipeline_options)  # type: ignore[arg-type]
    single = single_device_pipeline(problem)
    chosen = pipeline
    if single is not None and single.predicted_step_ms < pipeline.predicted_step_ms * (1 - 1e-9):
        chosen = single
    chosen.settings["auto"] = {
        "pipeline_ms": pipeline.predicted_step_ms,
        "single_device_ms": single.predicted_step_ms if single is not None else None,
        "chosen": "single" if chosen is single else "pipeline",
    }
    chosen.settings["stopped_by_wall_clock"] = list(pipeline.settings["stopped_by_wall_clock"])
    return chosen


def single_device_pipeline(problem: Problem) -> Plan | None:
    """The whole graph as one stage on the device of the ``single`` baseline
    (:func:`~placement.solvers.baselines.single_schedule`), with the problem's microbatch count or the
    fastest that fits (:func:`~placement.pipeline.microbatches.choose_microbatches`); None when the
    graph fits on no single device."""
    inst = instance(problem)
    try:
        dev = single_schedule(inst, problem.graph.name).dev
    except InfeasibleError:
        return None
    assignment = inst.assignment_names(dev)
    devices = sorted(set(assignment.values()), key=list(problem.cluster.device_names).index)
    if len(devices) != 1:  # a pin or a forbidden kind keeps part of the graph elsewhere: no one stage
        return None
    m = problem.microbatches or choose_microbatches(problem, assignment).microbatches
    stages = [Stage(index=0, nodes=list(problem.graph.node_names()), devices=devices)]
    try:
        return finish_plan(problem, assignment, solver="single", stages=stages, microbatches=m)
    except InfeasibleError:
        return None
