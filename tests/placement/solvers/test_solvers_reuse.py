"""Reusing a plan's placement at another batch size (:func:`placement.solvers.reuse.reuse_placement`):
the synchronisation is kept, and a batch that cannot give every replica a microbatch is refused."""

from __future__ import annotations

import pytest
from test_solvers_common import MB, branches, star

from placement.errors import PlacementNotReusable
from placement.plan import Stage
from placement.problem import finish_plan, make_problem
from placement.solvers.reuse import reuse_placement
from placement.sync import ParameterServerSync


def traced(batch: int):
    """branches() with 1 MB of parameters per node, as traced at ``batch``."""
    g = branches()
    for node in g.nodes():
        node.param_bytes = MB
    g.meta["batch_size"] = batch
    return g


def replicated_plan():
    """traced(8) as one stage replicated on d0 and d1, 2 microbatches, gradients through a parameter
    server on d2."""
    g = traced(8)
    problem = make_problem(g, star(3), objective="throughput")
    stages = [Stage(index=0, nodes=list(g.node_names()), devices=["d0", "d1"])]
    plan = finish_plan(
        problem, {n: "d0" for n in g.node_names()}, solver="test", stages=stages, microbatches=2,
        sync=ParameterServerSync(("d2",)),
    )  # fmt: skip
    return plan


def test_a_reused_plan_keeps_its_parameter_servers() -> None:
    reused = reuse_placement(replicated_plan(), make_problem(traced(16), star(3), objective="throughput"))
    assert reused.sync == ParameterServerSync(("d2",))
    assert reused.microbatches == 2 and reused.settings["reused_from"]["batch_size"] == 8


def test_a_batch_that_leaves_a_replica_without_a_microbatch_is_not_reused() -> None:
    with pytest.raises(PlacementNotReusable, match="fewer than the 2 replicas"):  # 7: one microbatch only
        reuse_placement(replicated_plan(), make_problem(traced(7), star(3), objective="throughput"))
