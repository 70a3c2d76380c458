"""Shared graphs and clusters for the solver tests, and tests of the solver plumbing: the registry, the
``solve`` entry point, the problem's cached instance, and determinism."""

from __future__ import annotations

import random

import numpy as np
import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, ConfigurationError, Device, Link, Switch
from placement.solvers import HEURISTICS, SOLVERS, solve
from placement.problem import make_problem
from placement.solvers.instance import instance

MB = 1e6  # 1 ms on the 1 GB/s links of the test clusters
GB = 1e9


# -- fixtures shared by the solver tests -------------------------------------------------------------
def star(n: int = 3, memory: float = 1e12, kinds: tuple[str, ...] = ()) -> Cluster:
    """``n`` devices on their own 1 GB/s link to one switch (transfers from one device share its link)."""
    devices = [
        Device(f"d{i}", kinds[i] if i < len(kinds) else "X", "cpu" if i < len(kinds) and kinds[i] == "cpu" else "gpu",
               "h", {"float32": 1e12}, 1e11, memory)
        for i in range(n)
    ]  # fmt: skip
    links = [Link(d.name, "sw", "pcie", 1e9, 0.0) for d in devices]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def mesh(n: int = 3, memory: float = 1e12) -> Cluster:
    """``n`` devices joined pairwise by their own 1 GB/s links (no two device pairs share a link)."""
    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, memory) for i in range(n)]
    links = [Link(f"d{i}", f"d{j}", "nvlink", 1e9, 0.0) for i in range(n) for j in range(i + 1, n)]
    return Cluster("mesh", devices, links, [])


def graph(nodes: dict[str, tuple], edges: list[tuple], name: str = "g") -> Graph:
    """nodes: name -> (fwd ms, bwd ms[, activation bytes[, param bytes[, module]]]); edges: (src, dst[, bytes])."""
    g = Graph(name)
    for node, spec in nodes.items():
        f, b, act, params, module = (*spec, *(0.0, 0.0, "")[len(spec) - 2 :])
        g.add_node(NodeData(node, "op", module=module, measured_ms={"X": f, "cpu": 4 * f},
                            measured_bwd_ms={"X": b, "cpu": 4 * b}, activation_bytes=act, output_bytes=act,
                            param_bytes=params))  # fmt: skip
    for src, dst, *nbytes in edges:
        g.add_edge(src, dst, EdgeData(bytes=nbytes[0] if nbytes else MB))
    return g


def random_graph(seed: int, n: int, uniform_bytes: bool = True) -> Graph:
    """A random DAG of ``n`` nodes with 1-9 ms passes; each node's out-edges carry one tensor (as in
    traced graphs) unless ``uniform_bytes`` is False."""
    rng = random.Random(seed)
    g = Graph(f"random{seed}")
    out_bytes = {}
    for i in range(n):
        out_bytes[i] = rng.choice([1, 2, 4]) * MB
        g.add_node(NodeData(f"n{i}", "op", measured_ms={"X": rng.randint(1, 9)}, measured_bwd_ms={"X": rng.randint(1, 9)},
                            activation_bytes=MB, output_bytes=MB))  # fmt: skip
    for j in range(1, n):
        for i in rng.sample(range(j), k=min(j, rng.choice([1, 1, 2]))):
            nbytes = out_bytes[i] if uniform_bytes else rng.choice([1, 2, 4]) * MB
            g.add_edge(f"n{i}", f"n{j}", EdgeData(bytes=nbytes))
    return g


def branches() -> Graph:
    """Two heavy independent branches between a source and a sink: worth running on two devices."""
    return graph(
        {"src": (1, 1), "a1": (10, 10), "a2": (10, 10), "b1": (10, 10), "b2": (10, 10), "sink": (1, 1)},
        [("src", "a1"), ("a1", "a2"), ("src", "b1"), ("b1", "b2"), ("a2", "sink"), ("b2", "sink")],
    )


def gigabyte_chain(n: int) -> Graph:
    """A chain of ``n`` nodes, each holding 1 GB of activations, passing 1 MB along."""
    return graph({f"n{i}": (1, 1, 1e9) for i in range(n)}, [(f"n{i}", f"n{i + 1}", 1e6) for i in range(n - 1)])


def check_plan(plan, g: Graph, cluster: Cluster) -> None:
    """Every node placed on a device of the cluster; the order lists each device's nodes once."""
    assert set(plan.assignment) == set(g.node_names())
    assert set(plan.assignment.values()) <= set(cluster.device_names)
    for device, names in plan.order.items():
        assert sorted(names) == sorted(n for n, d in plan.assignment.items() if d == device)
    assert plan.predicted_step_ms >= plan.lower_bound_ms * (1 - 1e-9)
    assert plan.gap is None or 0.0 <= plan.gap <= 1.0


# -- the registry and the entry point -------------------------------------------------------------------
def test_registry_names_every_solver() -> None:
    for name in ("auto", "cp-sat", "single", "round-robin", "expert", *HEURISTICS):
        assert name in SOLVERS


def test_unknown_solver_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown solver 'magic'.*m-etf.*heft"):
        solve(branches(), star(2), solver="magic")


@pytest.mark.parametrize("name", ["single", "round-robin", "m-topo", *HEURISTICS, "cp-sat", "auto"])
def test_every_solver_returns_a_checked_plan(name: str) -> None:
    g, c = branches(), star(2)
    plan = solve(g, c, solver=name, time_limit_s=2.0)
    check_plan(plan, g, c)
    assert plan.solver == name
    assert plan.settings["seed"] == 0 and plan.settings["time_limit"] == 2.0
    assert plan.objective == "latency" and plan.microbatches == 1


def test_parallel_branches_use_two_devices() -> None:
    g, c = branches(), star(2)
    for name in ("m-etf", "heft", "critical-path", "cp-sat"):
        plan = solve(g, c, solver=name, time_limit_s=2.0)
        assert len(set(plan.assignment.values())) == 2, name
        assert plan.predicted_step_ms < 80.0  # one device: 84 ms


def test_heuristics_reject_the_throughput_objective() -> None:
    with pytest.raises(ConfigurationError, match="latency"):
        solve(branches(), star(2), objective="throughput", solver="heft")


def test_auto_sends_throughput_to_the_pipeline_solver() -> None:
    plan = solve(branches(), star(2), objective="throughput", time_limit_s=5.0)
    assert plan.objective == "throughput"


def test_pipeline_options_reach_the_pipeline_solver_and_only_it() -> None:
    plan = solve(branches(), star(2), objective="throughput", time_limit_s=5.0, method="equal-split", replication=False,
                 microbatches=2)  # fmt: skip
    assert plan.settings["method"] == "equal-split" and not plan.settings["replication"] and plan.microbatches == 2
    with pytest.raises(ConfigurationError, match="method and replication only apply to objective='throughput'"):
        solve(branches(), star(2), method="dp", replication=True)
    with pytest.raises(ConfigurationError, match="method must be one of"):
        solve(branches(), star(2), objective="throughput", method="greedy")


@pytest.mark.parametrize("name", ["m-etf", "m-sct", "heft", "critical-path", "cp-sat", "auto"])
def test_same_seed_same_plan(name: str) -> None:
    g, c = random_graph(3, 12), star(3)
    first = solve(g, c, solver=name, time_limit_s=2.0, seed=7)
    again = solve(g, c, solver=name, time_limit_s=2.0, seed=7)
    assert first.assignment == again.assignment
    assert first.order == again.order
    assert first.predicted_step_ms == again.predicted_step_ms


def test_problem_caches_its_instance() -> None:
    problem = make_problem(branches(), star(2))
    inst = instance(problem)
    assert instance(problem) is inst
    assert inst.n == 6 and inst.num_devices == 2
    assert inst.names[0] == "src" and inst.names[-1] == "sink"
    # Training folds the backward pass in: forward + backward on each device.
    assert np.allclose(inst.work[inst.index["a1"]], [20.0, 20.0])


def test_inference_mode_places_forward_only() -> None:
    g, c = branches(), star(2)
    plan = solve(g, c, solver="heft", mode="inference")
    assert plan.mode == "inference"
    assert plan.predicted_step_ms < 2 + 20 + 2  # forward only, branches in parallel, 1 ms transfers


def test_solve_passes_convergence_runs_and_target_to_the_parallel_planner() -> None:
    from placement.hybrid import solve_parallel
    from placement.sync import AllReduceSync, LocalSGDSync
    from placement.time_to_accuracy import Run

    runs = [
        Run(name, sync, n, ((steps - 20, 0.5), (steps, 0.9)))
        for name, sync, steps in (("sync SGD", AllReduceSync(), 100), ("local SGD H=10", LocalSGDSync(10), 120))
        for n in (2, 3, 4)
    ]
    g, c = branches(), star(4)
    for node in g.nodes():
        node.param_bytes = MB  # something to synchronise
    plan = solve(g, c, objective="throughput", parallel="data", sync="ring", convergence=runs, target=0.9)
    direct = solve_parallel(make_problem(g, c, objective="throughput"), parallel="data", sync="ring", convergence=runs, target=0.9)
    choice = plan.settings["parallel"]["sync_choice"]
    assert choice == direct.settings["parallel"]["sync_choice"] and "chosen" in choice
    with pytest.raises(ConfigurationError, match="convergence"):
        solve(g, c, convergence=runs)  # the latency objective has no replicas to synchronise
