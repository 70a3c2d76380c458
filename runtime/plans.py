"""Simple plans for running a model without a solver: one device, contiguous stages, or a given mapping.

The solvers of :mod:`placement` make real plans; these make the plans a runtime test, a benchmark
baseline or a first ``graphc run`` needs, in the same :class:`~placement.plan.Plan` format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from graphc.ir.graph import Graph
from placement.plan import Plan, Stage
from runtime.errors import MismatchError


def plan_from_assignment(
    graph: Graph,
    assignment: Mapping[str, str],
    *,
    objective: str = "latency",
    mode: str = "training",
    microbatches: int = 1,
    cluster_name: str = "local",
) -> Plan:
    """A plan placing every node of ``graph`` as ``assignment`` says (every node must be given)."""
    missing = [n for n in graph.node_names() if n not in assignment]
    if missing:
        raise MismatchError(f"the assignment gives no device to node(s) {missing[:5]} of graph {graph.name!r}")
    return Plan(
        graph_name=graph.name,
        graph_fingerprint=graph.fingerprint(),
        cluster_name=cluster_name,
        objective=objective,
        mode=mode,
        assignment={n: assignment[n] for n in graph.node_names()},
        microbatches=microbatches,
        solver="given",
        graph=graph,
    )


def single_device_plan(graph: Graph, device: str = "cpu0", *, mode: str = "training") -> Plan:
    """Every node on ``device``."""
    return plan_from_assignment(graph, {n: device for n in graph.node_names()}, mode=mode)


def contiguous_plan(
    graph: Graph,
    devices: Sequence[str | Sequence[str]],
    *,
    microbatches: int = 1,
    mode: str = "training",
) -> Plan:
    """Cut the topological order into ``len(devices)`` contiguous runs of about equal forward and backward
    FLOPs, one per device: stages of a pipeline when ``microbatches > 1`` (objective ``throughput``),
    a sequential split otherwise. A list of devices in place of one replicates that stage data-parallel
    on them (pipelined plans only): ``contiguous_plan(g, [["cpu0", "cpu1"], "cpu2"], microbatches=4)``."""
    groups = [[d] if isinstance(d, str) else list(d) for d in devices]
    if any(not g for g in groups) or (microbatches == 1 and any(len(g) > 1 for g in groups)):
        raise MismatchError(f"devices={list(devices)}: every stage needs a device, and only a pipelined plan replicates one")
    order = graph.topological_order()
    work = [graph.node(n).fwd_flops + graph.node(n).bwd_flops for n in order]
    total = sum(work) or 1.0
    assignment: dict[str, str] = {}
    stages: list[list[str]] = [[] for _ in devices]
    done = 0.0
    for name, w in zip(order, work):
        index = min(int(len(devices) * (done + w / 2) / total), len(devices) - 1)
        assignment[name] = groups[index][0]
        stages[index].append(name)
        done += w
    plan = plan_from_assignment(
        graph,
        assignment,
        objective="throughput" if microbatches > 1 else "latency",
        mode=mode,
        microbatches=microbatches,
    )
    if microbatches > 1:
        plan.stages = [Stage(i, nodes, g) for i, (nodes, g) in enumerate(zip(stages, groups)) if nodes]
    return plan
