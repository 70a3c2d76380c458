"""Placement solvers behind one interface: ``solve(graph, cluster, ...) -> Plan``.

Every solver is a function ``Problem -> Plan`` registered by name in :data:`SOLVERS`:

=================  ============================================================================
``single``         every node on the one device where the step is fastest (baseline)
``round-robin``    nodes dealt to the devices in turn (baseline)
``expert``         the human-expert split published with a dnn-partitioning input (baseline)
``m-topo``         Baechi's memory-aware topological packing (Jeon et al., SoCC 2020)
``m-etf``          memory-aware Earliest Task First (Hwang et al. 1989; Baechi)
``m-sct``          memory-aware Small Communication Time, favourite-child LP (Hanen & Munier; Baechi)
``heft``           Heterogeneous Earliest Finish Time (Topcuoglu et al., IEEE TPDS 2002)
``critical-path``  CPOP, critical-path-on-a-processor list scheduling (Topcuoglu et al. 2002)
``cp-sat``         joint placement and scheduling with OR-Tools CP-SAT, coarsened, warm-started,
                   refined by large-neighbourhood search; reports CP-SAT's proven bound
``auto``           picks and combines the above by graph size and time budget; throughput requests
                   go to :func:`placement.pipeline.solve_throughput`, and one device is always a
                   candidate (never a plan slower than it)
=================  ============================================================================

:func:`solve` is the one public entry for both objectives: ``objective="throughput"`` (with ``auto``)
gives a pipelined plan, and the pipeline's options (``method``, ``replication``, ``microbatches``)
are arguments of ``solve``, so no caller needs :func:`~placement.problem.make_problem`.

All honour the resolved constraints (pins, colocation, forbidden kinds, memory budgets) and return
:func:`~placement.problem.finish_plan`'s checked, simulated, bounded Plan. Same inputs and seed
give the same plan, on a quiet or a loaded machine (:mod:`placement.solvers.auto` says how; a plan cut
short by the wall-clock safety net says so in ``settings["stopped_by_wall_clock"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from graphc.ir.deprecation import renamed_keywords
from graphc.ir.graph import Graph
from placement.cluster import ClusterLike
from placement.constraints import Constraints
from placement.cost_model import CostModel
from placement.errors import ConfigurationError
from placement.plan import Plan
from placement.problem import Problem, make_problem
from placement.solvers.auto import auto
from placement.solvers.baselines import expert, round_robin, single_device
from placement.solvers.cpop import cpop
from placement.solvers.cpsat import cp_sat
from placement.solvers.etf import m_etf
from placement.solvers.heft import heft
from placement.solvers.sct import m_sct
from placement.solvers.topo import m_topo

if TYPE_CHECKING:
    from placement.time_to_accuracy import Run

Solver = Callable[[Problem], Plan]

#: name -> solver. ``ilp`` is another name for ``cp-sat``, ``cpop`` for ``critical-path``.
SOLVERS: dict[str, Solver] = {
    "auto": auto,
    "cp-sat": cp_sat,
    "ilp": cp_sat,
    "single": single_device,
    "round-robin": round_robin,
    "expert": expert,
    "m-topo": m_topo,
    "m-etf": m_etf,
    "m-sct": m_sct,
    "heft": heft,
    "critical-path": cpop,
    "cpop": cpop,
}

#: The published heuristics (what the ILP and ``auto`` are compared with).
HEURISTICS: tuple[str, ...] = ("m-topo", "m-etf", "m-sct", "heft", "critical-path")
#: The baselines.
BASELINES: tuple[str, ...] = ("single", "round-robin", "expert")


@renamed_keywords(time_limit="time_limit_s")
def solve(
    graph: Graph,
    cluster: ClusterLike,
    objective: str = "latency",
    constraints: Constraints | None = None,
    time_limit_s: float = 30.0,
    seed: int = 0,
    solver: str = "auto",
    cost_model: CostModel | None = None,
    mode: str = "training",
    microbatches: int | None = None,
    *,
    method: str | None = None,
    replication: bool | None = None,
    parallel: str | None = None,
    sync: str | None = None,
    servers: Sequence[str] | None = None,
    convergence: Sequence[Run] | None = None,
    target: float | None = None,
) -> Plan:
    """Place ``graph`` on ``cluster`` (a :class:`Cluster`, a preset name or a cluster JSON file) with
    ``solver`` (a name of :data:`SOLVERS`).

    ``objective``: ``"latency"`` (one step as fast as possible) or ``"throughput"`` (a pipeline: stages,
    replicated stages, microbatches; only ``auto`` serves it, by
    :func:`~placement.pipeline.solve_throughput`). ``constraints`` pins, colocates, forbids kinds and
    budgets memory; ``time_limit_s`` is in seconds (``auto`` and ``cp-sat`` return within it); ``seed``
    fixes every random choice; ``microbatches`` fixes the microbatch count (default: one for latency,
    chosen by simulation for throughput).

    Pipeline options (``objective="throughput"`` only; ``None`` keeps the pipeline solver's default):
    ``method`` (``"auto"``, ``"dp"``, ``"ilp"`` or ``"equal-split"``) and ``replication`` (allow
    replicated stages; default yes, except for the NeurIPS 2020 inputs).

    Parallel layouts (``objective="throughput"`` only, :func:`placement.hybrid.solve_parallel`):
    ``parallel`` is ``"auto"`` (data parallel, pipeline, hybrid and one device, the fastest simulated
    plan that fits), ``"data"``, ``"pipeline"`` (the default: the pipeline solver and one device) or
    ``"hybrid"``; ``sync`` how replicas combine gradients (``"auto"``, ``"ring"``, ``"hierarchical"``,
    ``"parameter-server"``; default: the pipeline solver's ring, or chosen by simulation when
    ``parallel`` is given); ``servers`` the parameter-server devices (default: the cluster's CPUs).
    ``convergence``: measured convergence runs (:func:`placement.time_to_accuracy.runs_from_convergence`),
    with which a data-parallel plan also records the synchronisation strategy that reaches ``target``
    held-out accuracy soonest (default :data:`placement.hybrid.DEFAULT_TARGET`;
    ``settings["parallel"]["sync_choice"]``).

    Raises :class:`~placement.constraints.InfeasibleError` when the constraints conflict or the graph
    cannot fit, and :class:`~placement.errors.ConfigurationError` for an unknown solver name, a latency
    solver asked for throughput, or a pipeline option given with the latency objective.
    """
    if solver not in SOLVERS:
        raise ConfigurationError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    pipeline_options = {k: v for k, v in (("method", method), ("replication", replication), ("parallel", parallel),
                                          ("sync", sync), ("servers", servers), ("convergence", convergence),
                                          ("target", target)) if v is not None}  # fmt: skip
    if pipeline_options and objective != "throughput":
        raise ConfigurationError(
            f"{' and '.join(pipeline_options)} only apply to objective='throughput' (a pipeline), "
            f"not to objective={objective!r}"
        )
    problem = make_problem(
        graph,
        cluster,
        objective=objective,
        constraints=constraints,
        cost_model=cost_model,
        mode=mode,
        time_limit_s=time_limit_s,
        seed=seed,
        microbatches=microbatches,
    )
    if solver == "auto":
        return auto(problem, **pipeline_options)
    return SOLVERS[solver](problem)


__all__ = ["BASELINES", "HEURISTICS", "SOLVERS", "Problem", "Solver", "make_problem", "solve"]
