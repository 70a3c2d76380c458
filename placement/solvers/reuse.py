"""Reusing a plan's placement for the same model at another input shape, without a search.

A compiled model called with a new batch size traces a new cost graph: same nodes and edges, other
tensor sizes. Searching again costs the solver's whole time budget (tens of seconds by default) for a
placement that is usually the same, so :func:`reuse_placement` keeps the plan's assignment, per-device
order and stages, and only re-simulates and re-bounds them on the new graph. It applies when:

* the new graph has exactly the plan's nodes (a new shape of the same program; a different program,
  such as the model traced in eval mode without its dropout nodes, needs a new plan);
* every device still holds its nodes (the simulated peak memory fits, as :func:`finish_plan` checks);
* a pipelined plan's microbatch count divides the new batch; otherwise the largest count that does
  (at least 1) is taken, since microbatches must be equal; it must still give every replica of a
  replicated stage a microbatch (microbatch ``k`` runs on replica ``k mod r``);
* the plan's synchronisation (:attr:`Plan.sync`: all-reduce or parameter servers) is kept.

The reused plan records where it came from in ``settings["reused_from"]`` (the graph fingerprint and
batch size of the searched plan at the start of a chain of reuses), so a summary or a saved plan says
that nobody searched for it.
"""

from __future__ import annotations

from placement.constraints import InfeasibleError
from placement.errors import PlacementNotReusable
from placement.pipeline.microbatches import microbatch_candidates
from placement.plan import Plan
from placement.problem import Problem, finish_plan


def reuse_placement(plan: Plan, problem: Problem) -> Plan:
    """``plan``'s placement checked, simulated and bounded on ``problem``'s graph (module docstring).

    Raises :class:`PlacementNotReusable` when the graph has other nodes than the plan, when the new
    batch leaves a replicated stage's replica without a microbatch, or when the placement no longer
    fits the devices' memory at the new shape.
    """
    graph = problem.graph
    nodes = set(graph.node_names())
    if nodes != set(plan.assignment):
        added, removed = sorted(nodes - set(plan.assignment)), sorted(set(plan.assignment) - nodes)
        raise PlacementNotReusable(
            f"graph {graph.name!r} has other nodes than the plan (new: {added[:3]}, gone: {removed[:3]})"
        )
    batch = graph.batch_size() or 1
    microbatches = largest_divisor_at_most(batch, plan.microbatches)
    replicas = max((len(stage.devices) for stage in plan.stages), default=1)
    if microbatches < replicas:
        raise PlacementNotReusable(
            f"a batch of {batch} splits into at most {microbatches} equal microbatch(es) of the plan's "
            f"{plan.microbatches}, fewer than the {replicas} replicas of a replicated stage: each needs one"
        )
    origin = plan.settings.get("reused_from") or {
        "graph_fingerprint": plan.graph_fingerprint,
        "batch_size": plan.graph.batch_size() if plan.graph is not None else None,
    }
    try:
        reused = finish_plan(
            problem,
            plan.assignment,
            solver=plan.solver,
            order=plan.order or None,
            stages=plan.stages,
            microbatches=microbatches,
            settings={**plan.settings, "reused_from": origin},
            sync=plan.sync,
        )
    except InfeasibleError as exc:
        raise PlacementNotReusable(f"the placement does not fit at the new shape: {exc}") from exc
    return reused


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (1 when ``n`` or ``limit`` is below 2): the
    largest of the pipeline's microbatch candidates for a batch of ``n``."""
    return microbatch_candidates(n, limit)[-1] if n >= 1 and limit >= 1 else 1
