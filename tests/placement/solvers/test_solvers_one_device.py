"""Every heuristic on the published latency inputs and on an op-level graph: never slower than the
single-device plan, and its own schedule within 10% of the simulated step (graphc issue 14)."""

from __future__ import annotations

import functools

import pytest

from graphc.ir.graph import Graph
from graphc.ir.importers import load_benchmark
from placement import Cluster
from placement.constraints import InfeasibleError
from placement.problem import make_problem
from placement.solvers import HEURISTICS, SOLVERS

LATENCY_INPUTS = ("dnn-partitioning/latency/bert24_inference.json", "dnn-partitioning/latency/resnet50_inference.json")
CLUSTERS = ("pcie-4gpu", "dgx1-v100")


@functools.cache
def op_level_resnet() -> Graph:
    """The zoo ResNet-50 (small configuration, batch 32) traced op by op on the meta device."""
    import graphc
    from graphc import zoo

    zm = zoo.build("resnet50", batch_size=32, size="small", device="meta")
    return graphc.trace(zm.model, zm.example_inputs, name="resnet50-op", granularity="op").graph


def check_heuristics(graph: Graph, cluster: str) -> None:
    problem = make_problem(graph, Cluster.preset(cluster))
    try:
        single = SOLVERS["single"](problem).predicted_step_ms
    except InfeasibleError:  # fits no single device (ResNet-50's inputs on a 16 GB V100)
        single = float("inf")
    for name in HEURISTICS:
        plan = SOLVERS[name](problem)
        assert plan.predicted_step_ms <= single * (1 + 1e-9), name
        assert plan.settings["schedule_ms"] >= 0.9 * plan.predicted_step_ms, name


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("spec", LATENCY_INPUTS)
def test_published_latency_inputs(spec: str, cluster: str) -> None:
    check_heuristics(load_benchmark(spec), cluster)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_op_level_resnet(cluster: str) -> None:
    check_heuristics(op_level_resnet(), cluster)
