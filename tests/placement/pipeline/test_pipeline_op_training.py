"""The exact contiguous DP on operator-level training graphs (graphc issue 14): backward-only units are
ordered by their gradients instead of multiplying the ideals, and the DP's optimum is the one exhaustive
search and CP-SAT find for the same contiguity. Inputs come from tests/helpers/op_training_graphs.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from op_training_graphs import (
    ForwardGraph,
    forward_of_graph,
    synthetic_forward,
    training_file,
)

from graphc.ir.importers import load_benchmark, load_dnn_partitioning
from placement.pipeline import (
    DeviceClass,
    ThroughputInstance,
    brute_force,
    check_partition,
    choose_partition,
    contiguous_dp,
    enumerate_ideals,
    instance_from_problem,
    is_contiguous,
    load_lower_bound,
    noncontiguous_ilp,
    pipeline_edges,
    structure_blocks,
)
from placement.pipeline.instance import colocation_units, subinstance
from placement.presets import accelerators_with_cpu
from placement.problem import Problem, make_problem


def training_problem(doc: dict, folder: Path, time_limit_s: float = 10.0) -> Problem:
    path = folder / "ops_training.json"
    path.write_text(json.dumps(doc))
    graph = load_dnn_partitioning(path)
    meta = graph.meta
    cluster = accelerators_with_cpu(meta["max_accelerators"], meta["max_cpus"], meta["max_accelerator_bytes"])
    return make_problem(graph, cluster, objective="throughput", mode="training", time_limit_s=time_limit_s)


def training_instance(doc: dict, folder: Path) -> ThroughputInstance:
    return instance_from_problem(training_problem(doc, folder))


def forward(names: list[str], edges: list[tuple[int, int]]) -> ForwardGraph:
    """Ops ``names`` (the first one the graph input) with fixed times, 1 MiB outputs, no parameters."""
    n = len(names)
    ms = [0.0] + [0.1 * (v + 1) for v in range(1, n)]
    return ForwardGraph(names, ms, [2.0**20] * n, [0.0] * n, edges, inputs={0})


def ideal_count(inst: ThroughputInstance, edges: list[tuple[int, int]] | None = None) -> int:
    return len(enumerate_ideals(structure_blocks(inst, edges), 100_000))


def test_backward_only_units_follow_their_gradients(tmp_path: Path) -> None:
    # input -> s -> {a, b} -> c: s's two gradients meet in the uncoloured node s_grad_sum, and the loss
    # is a colour class of backward nodes only. Forward ideals: {}, in, in+s, +a, +b, +ab, +abc (7).
    # Pipeline order puts s_grad_sum between s and {a, b} (one more ideal) and the loss after c (one
    # more): 9. Left free, the two backward-only units would double the count twice.
    doc = training_file(forward(["input", "s", "a", "b", "c"], [(0, 1), (1, 2), (1, 3), (2, 4), (3, 4)]), share_class=0)
    inst = training_instance(doc, tmp_path)
    assert ideal_count(inst) == 9
    assert ideal_count(inst, inst.structure_edges()) == 4 * 7
    blocks = structure_blocks(inst)
    assert all(blocks.preds[b] or blocks.succs[b] for b in range(len(blocks)))  # no block left free


def test_a_chain_gets_one_ideal_per_block(tmp_path: Path) -> None:
    n = 12
    doc = training_file(forward([f"op{v}" for v in range(n)], [(v, v + 1) for v in range(n - 1)]), share_class=0)
    inst = training_instance(doc, tmp_path)
    assert ideal_count(inst) == n + 2  # n op classes, then the loss class, in a chain
    assert ideal_count(inst, inst.structure_edges()) == 2 * (n + 1)


def test_pipeline_contiguity_orders_the_loss_after_the_forward(tmp_path: Path) -> None:
    doc = training_file(forward(["input", "a", "b"], [(0, 1), (1, 2)]), share_class=0)
    inst = training_instance(doc, tmp_path)
    unit = colocation_units(inst)
    index = {name: v for v, name in enumerate(inst.names)}
    loss = {index["loss"], index["loss_grad"]}
    first = {v for v in range(inst.n) if unit[v] in {unit[index["input"]], unit[index["a"]]}}
    second = set(range(inst.n)) - first - loss
    # The forward-only structure accepts the loss's backward in the first stage; a pipeline cannot run
    # the loss's gradient before b's forward in the second stage.
    assert is_contiguous(inst, [sorted(first | loss), sorted(second)], inst.structure_edges())
    assert not is_contiguous(inst, [sorted(first | loss), sorted(second)])
    assert is_contiguous(inst, [sorted(first), sorted(second | loss)])


def test_layer_level_training_files_keep_the_forward_structure() -> None:
    graph = load_benchmark("dnn-partitioning/throughput/bert24_training.json")
    cluster = accelerators_with_cpu(6, 1, graph.meta["max_accelerator_bytes"])
    inst = instance_from_problem(make_problem(graph, cluster, objective="throughput", mode="training"))
    assert pipeline_edges(inst) == inst.structure_edges()


def small_instance(seed: int, folder: Path) -> ThroughputInstance:
    """A generated training graph of 5-8 units on 2 accelerators holding about half of it each, 1 CPU."""
    inst = training_instance(training_file(synthetic_forward(2, seed, max_branches=2, max_ops=1), seed=seed), folder)
    classes = [DeviceClass("accelerator", 2, 0.55 * sum(inst.memory), True), DeviceClass("cpu", 1, math.inf, False)]
    return subinstance(inst, list(range(inst.n)), classes)


@pytest.mark.parametrize("seed", range(6))
def test_dp_matches_exhaustive_search_and_cp_sat(seed: int, tmp_path: Path) -> None:
    inst = small_instance(seed, tmp_path)
    assert any(inst.backward[v] for v in range(inst.n))
    dp = contiguous_dp(inst)
    exact = brute_force(inst, contiguous=True)
    assert dp.optimal and dp.max_load == pytest.approx(exact.max_load, rel=1e-12)
    check_partition(inst, dp.parts, contiguous=True)
    assert is_contiguous(inst, dp.parts)
    # CP-SAT works on costs rounded to integers: optimal up to its resolution (ilp.py docstring).
    ilp = noncontiguous_ilp(inst, contiguous=True, time_limit_s=30)
    assert ilp.optimal and is_contiguous(inst, ilp.parts)
    assert exact.max_load - 1e-12 <= ilp.max_load <= exact.max_load + ilp.stats["resolution_ms"]


@pytest.mark.slow
def test_dp_matches_cp_sat_on_a_mid_size_training_graph(tmp_path: Path) -> None:
    inst = training_instance(training_file(synthetic_forward(20, seed=3), seed=3), tmp_path)
    assert inst.n > 250
    dp = contiguous_dp(inst)
    ilp = noncontiguous_ilp(inst, contiguous=True, time_limit_s=120)
    assert ilp.optimal, ilp.stats
    assert dp.max_load - 1e-12 <= ilp.max_load <= dp.max_load + ilp.stats["resolution_ms"]
    assert ilp.bound <= dp.max_load


@pytest.mark.slow
def test_dp_is_exact_on_a_2000_node_training_graph(tmp_path: Path) -> None:
    inst = training_instance(training_file(synthetic_forward(150, seed=1), seed=1), tmp_path)
    assert inst.n > 2000
    dp = contiguous_dp(inst)
    prefix = contiguous_dp(inst, exhaustive=False)
    assert dp.method == "dp-ideals" and dp.optimal
    assert dp.stats["ideals"] < 5_000  # forward-only, its 30 backward-only units would multiply it by 2**30
    check_partition(inst, dp.parts, contiguous=True)
    assert is_contiguous(inst, dp.parts)
    assert load_lower_bound(inst) <= dp.max_load <= prefix.max_load


@pytest.mark.parametrize("method", ["dp", pytest.param("auto", marks=pytest.mark.slow)])
def test_the_fallback_never_returns_a_worse_split_than_the_prefix_dp(method: str, tmp_path: Path) -> None:
    # Past the ideal limit the prefix DP's split comes first; CP-SAT (contiguous for "dp", then not for
    # "auto") may only improve on it.
    problem = training_problem(training_file(synthetic_forward(5, seed=4), seed=4), tmp_path, time_limit_s=4.0)
    inst = instance_from_problem(problem)
    prefix = contiguous_dp(inst, exhaustive=False)
    part, bound = choose_partition(problem, inst, method, max_ideals=5)
    assert bound <= part.max_load <= prefix.max_load
    if method == "dp":
        assert "more than 5 ideals" in part.stats["fallback"]
        assert part.max_load >= contiguous_dp(inst).max_load * (1 - 1e-12)  # the exact DP's optimum


@pytest.mark.slow
def test_dp_matches_cp_sat_on_a_traced_zoo_network(tmp_path: Path) -> None:
    # GPT-2 (small config, 4 layers) traced at op granularity, written as a training file.
    from graphc import trace
    from graphc.frontend.zoo import build

    zm = build("gpt2", size="small", n_layer=4)
    graph = trace(zm.model, zm.example_inputs, granularity="op").graph
    inst = training_instance(training_file(forward_of_graph(graph, flops_per_ms=1e7), accelerators=4), tmp_path)
    assert sum(inst.backward) > len(graph.node_names()) // 2
    dp = contiguous_dp(inst)
    ilp = noncontiguous_ilp(inst, contiguous=True, hint=dp, time_limit_s=120)
    assert dp.optimal and ilp.optimal, ilp.stats
    assert dp.max_load - 1e-12 <= ilp.max_load <= dp.max_load + ilp.stats["resolution_ms"]
