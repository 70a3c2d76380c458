"""solve_throughput end to end: plans, stages, microbatches, replication, and the constraints every solver
honours (pins, colocation, forbidden kinds, memory budgets), with errors that say what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

from graphc.ir.importers import load_benchmark
from placement import Cluster, solve
from placement.constraints import Constraints, InfeasibleError
from placement.pipeline import (
    bubble_fraction,
    choose_microbatches,
    contiguous_dp,
    instance_from_problem,
    noncontiguous_ilp,
    solve_throughput,
)
from placement.pipeline.solve import WALL_SLACK
from placement.plan import Plan
from placement.presets import accelerators_with_cpu
from placement.problem import make_problem

BERT_OPTIMUM = 17.78990625  # tests/test_pipeline_dnn.py


def bert_problem(constraints: Constraints | None = None, time_limit_s: float = 10.0, **kw):
    graph = load_benchmark("dnn-partitioning/throughput/bert24_inference.json")
    m = graph.meta
    cluster = accelerators_with_cpu(m["max_accelerators"], m["max_cpus"], m["max_accelerator_bytes"])
    return make_problem(graph, cluster, objective="throughput", mode="inference", constraints=constraints,
                        time_limit_s=time_limit_s, **kw)  # fmt: skip


def check_stages(plan: Plan, graph_nodes: list[str]) -> None:
    staged = [n for s in plan.stages for n in s.nodes]
    assert sorted(staged) == sorted(graph_nodes)
    devices = [d for s in plan.stages for d in s.devices]
    assert len(devices) == len(set(devices))
    for s in plan.stages:
        assert all(plan.assignment[n] == s.devices[0] for n in s.nodes)


def test_dp_plan_on_bert(tmp_path) -> None:
    problem = bert_problem()
    plan = solve_throughput(problem, method="dp")
    assert plan.objective == "throughput" and plan.solver == "pipeline-dp-ideals"
    assert plan.settings["max_load_ms"] == pytest.approx(BERT_OPTIMUM)
    assert plan.settings["optimal"] and plan.settings["contiguous"]
    assert plan.settings["load_bound_ms"] <= plan.settings["max_load_ms"]
    check_stages(plan, problem.graph.node_names())
    steps = {int(k): v for k, v in plan.settings["microbatch_step_ms"].items()}
    assert plan.microbatches == min(steps, key=lambda m: (steps[m], m))
    assert plan.predicted_step_ms == pytest.approx(steps[plan.microbatches])
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan


def test_auto_is_no_worse_than_the_contiguous_optimum() -> None:
    plan = solve_throughput(bert_problem(time_limit_s=4.0), microbatches=4)
    assert plan.microbatches == 4
    assert plan.settings["max_load_ms"] <= BERT_OPTIMUM + 1e-9
    assert plan.settings["load_bound_ms"] <= plan.settings["max_load_ms"]


def test_pins_colocation_and_forbidden_kinds_are_honoured() -> None:
    constraints = Constraints(pins={"node10": "acc3"}, colocate=[["node5", "node6"]], forbid_kinds=["cpu"])
    problem = bert_problem(constraints)
    inst = instance_from_problem(problem)
    assert [(c.count, c.devices[0]) for c in inst.classes] == [(5, "acc0"), (1, "acc3"), (1, "cpu0")]  # acc3 alone
    plan = solve_throughput(problem, method="dp", microbatches=1)
    assert plan.assignment["node10"] == "acc3"
    assert plan.assignment["node5"] == plan.assignment["node6"]
    assert not any(d.startswith("cpu") for d in plan.assignment.values())
    assert plan.settings["max_load_ms"] >= BERT_OPTIMUM - 1e-9


def test_memory_budget_too_small_names_device_and_overflow() -> None:
    budget = {f"acc{i}": 0.2 * 2**30 for i in range(6)}
    problem = bert_problem(Constraints(forbid_kinds=["cpu"], memory_budget=budget))
    with pytest.raises(InfeasibleError, match=r"acc\d.*over by [\d.]+ [MG]iB"):
        solve_throughput(problem, method="dp")
    with pytest.raises(InfeasibleError, match="over by"):
        solve_throughput(problem, method="ilp")


def test_contradictory_pins_name_the_conflict() -> None:
    with pytest.raises(InfeasibleError, match="node5|node6"):
        bert_problem(Constraints(pins={"node5": "acc0", "node6": "acc1"}, colocate=[["node5", "node6"]]))


def test_replicated_stages_on_a_gpu_box() -> None:
    """Through the one public entry, placement.solve, whose pipeline options reach solve_throughput."""
    graph = load_benchmark("pipedream/vgg16.txt")
    plan = solve(graph, "pcie-4gpu", objective="throughput", time_limit_s=10, method="dp", microbatches=2)
    check_stages(plan, graph.node_names())
    assert plan.settings["replication"]
    assert max(len(s.devices) for s in plan.stages) > 1  # the convolutions are worth replicating
    single = solve(graph, "pcie-4gpu", objective="throughput", time_limit_s=10, method="dp", replication=False,
                   microbatches=2)  # fmt: skip
    assert all(len(s.devices) == 1 for s in single.stages)
    assert plan.settings["max_load_ms"] < single.settings["max_load_ms"]


def test_equal_split_and_ilp_methods() -> None:
    naive = solve_throughput(bert_problem(), method="equal-split", microbatches=1)
    assert naive.settings["max_load_ms"] > BERT_OPTIMUM
    problem = bert_problem(time_limit_s=3.0)
    start = contiguous_dp(instance_from_problem(problem), exhaustive=False).max_load
    ilp = solve_throughput(problem, method="ilp", microbatches=1)
    assert ilp.settings["max_load_ms"] <= start + 1e-9  # started from the prefix DP, never worse
    with pytest.raises(Exception, match="method"):
        solve_throughput(bert_problem(), method="magic")


def test_microbatch_choice_and_bubble() -> None:
    assert bubble_fraction(4, 12) == pytest.approx(3 / 15)
    assert bubble_fraction(1, 1) == 0
    problem = bert_problem()
    plan = solve_throughput(problem, method="dp", microbatches=1)
    choice = choose_microbatches(problem, plan.assignment, candidates=[1, 2, 8])
    assert set(choice.step_ms) == {1, 2, 8}
    assert choice.microbatches == min(choice.step_ms, key=choice.step_ms.get)
    assert choice.step_ms[8] < choice.step_ms[1]  # pipelining fills the stages


def test_pipeline_package_does_not_import_torch() -> None:
    code = "import sys, placement.pipeline; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_past_the_ideal_limit_cp_sat_still_reaches_the_contiguous_optimum() -> None:
    plan = solve_throughput(bert_problem(time_limit_s=20.0), method="dp", max_ideals=10, microbatches=1)
    stats = plan.settings["partition_stats"]
    assert "more than 10 ideals" in stats["fallback"]
    # CP-SAT proves the optimum; its split is kept only when better than the prefix DP's (a tie here).
    assert plan.settings["optimal"]
    assert plan.settings["split"] == "ilp-contiguous" or stats["proven_by"] == "ilp-contiguous"
    resolution = stats["resolution_ms"]  # CP-SAT's costs are rounded (placement/pipeline/ilp.py)
    assert BERT_OPTIMUM - 1e-12 <= plan.settings["max_load_ms"] <= BERT_OPTIMUM + resolution


def test_a_split_that_overflows_once_simulated_is_tightened_until_it_fits() -> None:
    # a -> b -> c (forward = backward = 0.5, 1, 1.5 ms), every node 4 GB, on three 8.05 GB devices. By
    # the instance's memory (own nodes only) and loads, {a, b} | {c} is the best split (cutting a -> b
    # costs 1 ms each way, more than a's work). Simulated, the device of {a, b} also holds the 0.1 GB gradient that c
    # sends back: 8.1 GB, over. The retry takes that off the capacity, so no device holds two nodes,
    # and {a} | {b} | {c} fits (b: 4 GB + 1 GB received + 0.1 GB of gradient).
    from graphc.ir.graph import EdgeData, Graph, NodeData
    from placement import Device, Link, Switch

    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, 8.05e9) for i in range(3)]
    cluster = Cluster("star", devices, [Link(d.name, "sw", "pcie", 1e12) for d in devices], [Switch("sw", "pcie_switch", "h")])
    graph = Graph("chain")
    for name, ms in (("a", 0.5), ("b", 1.0), ("c", 1.5)):
        graph.add_node(NodeData(name, "op", measured_ms={"X": ms}, measured_bwd_ms={"X": ms}, memory_bytes=4e9))
    graph.add_edge("a", "b", EdgeData(bytes=1e9))
    graph.add_edge("b", "c", EdgeData(bytes=1e8))
    problem = make_problem(graph, cluster, objective="throughput", time_limit_s=10)
    plan = solve_throughput(problem, method="dp", replication=False, microbatches=1)
    assert plan.settings["memory_retries"] == 1
    assert [s.nodes for s in plan.stages] == [["a"], ["b"], ["c"]]
    assert max(plan.peak_memory_bytes.values()) <= 8.05e9
    assert plan.settings["load_bound_ms"] == pytest.approx(3.0)  # c's load: a bound of any split


@pytest.mark.slow
def test_the_ilp_split_depends_on_the_seed_not_on_the_clock() -> None:
    # Inception-v3 on the PCIe box: CP-SAT stops at its budget, not at an optimum. The second search runs
    # while other processes keep every core busy: a search cut by the clock would get less done.
    graph = load_benchmark("pipedream/inception_v3.txt")
    inst = instance_from_problem(make_problem(graph, Cluster.preset("pcie-4gpu"), objective="throughput", seed=0))
    wall = WALL_SLACK * 2.0  # the pipeline solver's safety net for a 2 s solve
    quiet = noncontiguous_ilp(inst, time_limit_s=2.0, seed=3, wall_limit_s=wall)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        busy = noncontiguous_ilp(inst, time_limit_s=2.0, seed=3, wall_limit_s=wall)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    if busy.stats["stopped_by_wall_clock"]:
        pytest.skip("the machine was too slow: the wall-clock safety net ended the search")
    assert not quiet.optimal
    assert [sorted(p.nodes) for p in quiet.parts] == [sorted(p.nodes) for p in busy.parts]
    assert quiet.max_load == busy.max_load
