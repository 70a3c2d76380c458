"""The heuristics and baselines: what each rule does on graphs where the answer is known, their
shared machinery (memory ledger, insertion timeline, ranks), and their speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from graphc.importers import load_benchmark
from placement import Cluster, simulate
from placement.errors import PlacementError
from placement.solvers import HEURISTICS, SOLVERS, solve
from placement.solvers.common import make_problem
from placement.solvers.etf import etf_schedule, static_priority
from placement.solvers.instance import instance
from placement.solvers.listsched import MemoryLedger, Timeline, upward_rank
from placement.solvers.sct import favourite_parents
from test_solvers_common import branches, check_plan, graph, random_graph, star


def test_single_device_is_the_fastest_device() -> None:
    # d0 is a CPU, four times slower: the whole graph goes to a GPU.
    plan = solve(branches(), star(3, kinds=("cpu",)), solver="single")
    assert set(plan.assignment.values()) == {"d1"}
    assert plan.predicted_step_ms == pytest.approx(84.0)


def test_round_robin_deals_nodes_in_turn() -> None:
    g = graph({f"n{i}": (1, 1) for i in range(6)}, [(f"n{i}", f"n{i + 1}") for i in range(5)])
    plan = solve(g, star(3), solver="round-robin")
    assert [plan.assignment[f"n{i}"] for i in range(6)] == ["d0", "d1", "d2", "d0", "d1", "d2"]


def test_m_topo_packs_devices_in_topological_order() -> None:
    g = graph({f"n{i}": (1, 1, 1e9) for i in range(6)}, [(f"n{i}", f"n{i + 1}") for i in range(5)])
    plan = solve(g, star(3, memory=20e9), solver="m-topo")
    devices = [plan.assignment[f"n{i}"] for i in range(6)]
    assert devices == sorted(devices)  # contiguous blocks
    assert len(set(devices)) == 3  # an equal share each


def test_etf_prefers_the_fast_device_on_a_mixed_cluster() -> None:
    # A chain: every task could start earliest on the (slow) CPU d0 where it started; ETF charged
    # for slowness keeps it on a GPU.
    g = graph({f"n{i}": (5, 5) for i in range(4)}, [(f"n{i}", f"n{i + 1}") for i in range(3)])
    plan = solve(g, star(2, kinds=("cpu",)), solver="m-etf")
    assert set(plan.assignment.values()) == {"d1"}


def test_heft_inserts_into_idle_gaps() -> None:
    tl = Timeline()
    tl.add(0.0, 2.0)
    tl.add(5.0, 9.0)
    assert tl.earliest(0.0, 3.0) == 2.0  # fits the gap [2, 5)
    assert tl.earliest(0.0, 4.0) == 9.0  # does not
    assert tl.earliest(6.0, 1.0) == 9.0


def test_upward_rank_is_the_longest_path_to_a_sink() -> None:
    inst = instance(make_problem(branches(), star(2)))
    w = np.ones(inst.n)
    c = np.full(inst.num_edges, 0.5)
    rank = upward_rank(inst, w, c)
    # src -> a1 -> a2 -> sink: four nodes, three edges.
    assert rank[inst.index["src"]] == pytest.approx(4 + 1.5)
    assert rank[inst.index["sink"]] == pytest.approx(1.0)


def test_sct_favourite_children_are_unique_both_ways() -> None:
    inst = instance(make_problem(random_graph(5, 30), star(3)))
    fastest = inst.work.min(axis=1)
    home = favourite_parents(inst, fastest, inst.mean_round_trip())
    kids: dict[int, int] = {}
    for v, p in enumerate(home.tolist()):
        if p >= 0:
            assert any(u == p for u, _ in inst.preds[v])  # a favourite parent is a parent
            kids[p] = kids.get(p, 0) + 1
    assert all(k == 1 for k in kids.values())  # at most one favourite child per node
    # Chains keep their favourites: a node's only child, whose only parent it is.
    for e in range(inst.num_edges):
        u, v = int(inst.src[e]), int(inst.dst[e])
        if len(inst.succs[u]) == 1 and len(inst.preds[v]) == 1:
            assert home[v] == u


def test_sct_keeps_a_chain_together_when_communication_is_costly() -> None:
    g = graph({"a": (5, 5), "b": (5, 5), "c": (5, 5)}, [("a", "b", 50e6), ("b", "c", 50e6)])
    plan = solve(g, star(2), solver="m-sct")
    assert len(set(plan.assignment.values())) == 1


def test_ledger_bounds_the_simulated_peak() -> None:
    g = random_graph(11, 25)
    for node in g.nodes():
        node.param_bytes = 3e6
    problem = make_problem(g, star(3, memory=0.4e9))
    inst = instance(problem)
    sched = etf_schedule(inst, static_priority(inst))
    ledger = MemoryLedger(inst)
    assert not ledger.unbounded
    dev = np.full(inst.n, -1)
    for v in range(inst.n):
        ledger.commit(v, int(sched.dev[v]), dev)
        dev[v] = sched.dev[v]
    result = simulate(g, problem.cluster, inst.assignment_names(sched.dev))
    for d, device in enumerate(inst.devices):
        assert result.peak_memory_bytes[device.name] <= inst.capacity[d] - ledger.free[d] + 1e-6


@pytest.mark.parametrize("name", ["single", "round-robin", *HEURISTICS])
def test_pipedream_vgg_on_the_pcie_box(name: str) -> None:
    """VGG-16 does not fit one 12 GB K40 for training: the memory-aware heuristics split it (the CPU,
    with 256 GB, is the only single device it fits on)."""
    g = load_benchmark("pipedream/vgg16.txt")
    c = Cluster.preset("pcie-4gpu")
    plan = solve(g, c, solver=name)
    check_plan(plan, g, c)
    for device, peak in plan.peak_memory_bytes.items():
        assert peak <= c.device(device).memory_bytes


def test_expert_split_follows_the_file() -> None:
    g = load_benchmark("dnn-partitioning/latency/bert24_inference.json")
    c = Cluster.preset("accelerators-cpu", accelerators=6, cpus=1)
    plan = solve(g, c, solver="expert")
    assert plan.assignment["node3"] == "acc0"
    assert set(plan.assignment.values()) <= {f"acc{i}" for i in range(6)}
    with pytest.raises(PlacementError, match="uses 6 accelerator"):
        solve(g, Cluster.preset("pcie-4gpu"), solver="expert")
    with pytest.raises(PlacementError, match="not a dnn-partitioning input"):
        solve(load_benchmark("pipedream/alexnet.txt"), c, solver="expert")


def test_heuristics_are_fast_on_large_graphs() -> None:
    """A 3,000-node graph (the benchmark times 10,000): each heuristic well under a second here."""
    g = random_graph(1, 3000)
    c = Cluster.preset("dgx1-v100")
    for name in HEURISTICS:
        problem = make_problem(g, c)
        instance(problem)
        problem.bound()
        start = time.perf_counter()
        SOLVERS[name](problem)
        assert time.perf_counter() - start < 2.0, name
