"""The heuristics and baselines: what each rule does on graphs where the answer is known, their
shared machinery (memory ledger, insertion timeline, ranks), and their speed."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from test_solvers_common import (
    branches,
    check_plan,
    gigabyte_chain,
    graph,
    random_graph,
    star,
)

from graphc.ir.graph import Graph
from graphc.ir.importers import load_benchmark
from placement import Cluster, simulate
from placement.constraints import Constraints
from placement.errors import PlacementError
from placement.solvers import HEURISTICS, SOLVERS, solve
from placement.problem import make_problem
from placement.solvers.cpsat import warm_start
from placement.solvers.etf import etf_schedule, static_priority
from placement.solvers.instance import instance
from placement.solvers.listsched import MemoryLedger, Timeline, upward_rank
from placement.solvers.sct import favourite_parents
from placement.solvers.search import Evaluator
from placement.solvers.topo import balanced_split, layer_index, layer_split, split_counts, topo_pack


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
    # Six nodes of 1 GB: each device takes nodes while it holds at most 6 / 3 + 1 = 3 GB.
    g = graph({f"n{i}": (1, 1, 1e9) for i in range(6)}, [(f"n{i}", f"n{i + 1}") for i in range(5)])
    inst = instance(make_problem(g, star(3, memory=20e9)))
    sched = topo_pack(inst, 3)
    assert [inst.devices[d].name for d in sched.dev] == ["d0"] * 3 + ["d1"] * 3
    assert [inst.devices[d].name for d in topo_pack(inst, 2).dev] == ["d0"] * 4 + ["d1"] * 2  # 6 / 2 + 1
    # A chain gains nothing from a split: m-TOPO keeps the packing onto one device, the shortest.
    plan = solve(g, star(3, memory=20e9), solver="m-topo")
    assert set(plan.assignment.values()) == {"d0"}
    assert plan.settings["schedule_ms"] == pytest.approx(plan.predicted_step_ms) == pytest.approx(12.0)


def test_m_topo_leaves_out_a_slow_cpu() -> None:
    # Two heavy branches of 1 GB nodes, on a CPU d0 (four times slower) and two GPUs. Packed onto the
    # two GPUs (4 GB each), b1 joins the a branch; onto all three (3 GB each), each branch has a GPU
    # and the CPU gets nothing, the shortest step.
    g = graph(
        {"src": (1, 1, 1e9), "a1": (10, 10, 1e9), "a2": (10, 10, 1e9), "b1": (10, 10, 1e9), "b2": (10, 10, 1e9),
         "sink": (1, 1, 1e9)},
        [("src", "a1"), ("a1", "a2"), ("src", "b1"), ("b1", "b2"), ("a2", "sink"), ("b2", "sink")],
    )  # fmt: skip
    c = star(3, kinds=("cpu",))
    plan = solve(g, c, solver="m-topo")
    assert plan.assignment == {"src": "d1", "a1": "d1", "a2": "d1", "b1": "d2", "b2": "d2", "sink": "d2"}
    assert plan.predicted_step_ms < solve(g, c, solver="single").predicted_step_ms


def cpu_beside_gpus(gpu_memory: float) -> Cluster:
    """star(4) with d0 a slow CPU of 1 TB and d1-d3 GPUs of ``gpu_memory`` bytes."""
    c = star(4, kinds=("cpu",))
    devices = [dataclasses.replace(d, memory_bytes=1e12 if d.category == "cpu" else gpu_memory) for d in c.devices]
    return Cluster(c.name, devices, c.links, c.switches)


def test_balanced_split_packs_contiguous_blocks_on_the_fastest_devices() -> None:
    # Nine nodes of 1 GB on GPUs of 3.5 GB: three GPUs are the fewest that hold them, the CPU is left out.
    problem = make_problem(gigabyte_chain(9), cpu_beside_gpus(3.5e9))
    inst = instance(problem)
    assert split_counts(inst) == [3, 4]
    dev = balanced_split(inst, 3)
    assert [inst.devices[d].name for d in dev] == ["d1"] * 3 + ["d2"] * 3 + ["d3"] * 3
    assert np.isfinite(Evaluator(problem, inst).step(dev)[0])  # fits by the simulator's accounting
    with pytest.raises(PlacementError, match="count must be between 1 and the 4 devices"):
        balanced_split(inst, 5)


def test_balanced_split_keeps_colocation_groups_whole() -> None:
    cons = Constraints(colocate=[["n0", "n8"]])
    inst = instance(make_problem(gigabyte_chain(9), cpu_beside_gpus(3.5e9), constraints=cons))
    dev = balanced_split(inst, 3)
    assert dev[inst.index["n0"]] == dev[inst.index["n8"]]
    assert all(inst.devices[d].category == "gpu" for d in dev)


def test_warm_start_tries_the_balanced_splits() -> None:
    # The ledger of the list schedulers keeps room for transfers; the splits are judged by the simulator.
    problem = make_problem(gigabyte_chain(9), cpu_beside_gpus(3.5e9))
    inst = instance(problem)
    best, cands = warm_start(problem, inst, Evaluator(problem, inst))
    assert "split/3" in {c.source for c in cands}
    assert best.step_ms == min(c.step_ms for c in cands)


def unrolled_rnn(steps: int) -> Graph:
    """Two RNN cells (modules ``cells.0``, ``cells.1``) called once per step, each step's output read
    by an unindexed ``attn`` node over the first cell's output and a ``head`` after the second."""
    nodes, edges = {}, []
    for t in range(steps):
        nodes |= {f"c0_{t}": (4, 4, 0.0, 0.0, "cells.0"), f"c1_{t}": (4, 4, 0.0, 0.0, "cells.1"),
                  f"attn_{t}": (1, 1), f"head_{t}": (1, 1)}  # fmt: skip
        edges += [(f"c0_{t}", f"attn_{t}"), (f"attn_{t}", f"c1_{t}"), (f"c1_{t}", f"head_{t}")]
        if t:
            edges += [(f"c0_{t - 1}", f"c0_{t}"), (f"c1_{t - 1}", f"c1_{t}")]
    return graph(nodes, edges)


def test_layer_split_puts_each_layer_of_an_unrolled_rnn_on_its_own_device() -> None:
    problem = make_problem(unrolled_rnn(6), star(2))
    inst = instance(problem)
    layer = layer_index(inst)
    assert layer is not None
    assert {int(layer[inst.index[f"{k}_3"]]) for k in ("c0", "attn")} == {0}  # attention joins its feeder
    assert {int(layer[inst.index[f"{k}_3"]]) for k in ("c1", "head")} == {1}
    dev = layer_split(inst, 2)
    assert dev[inst.index["c0_5"]] != dev[inst.index["c1_0"]]
    assert len({int(dev[inst.index[f"c0_{t}"]]) for t in range(6)}) == 1
    # The wavefront: the devices work on successive steps at once; a split in topological order cannot.
    ev = Evaluator(problem, inst)
    assert ev.step(dev)[0] < ev.step(balanced_split(inst, 2))[0]
    best, cands = warm_start(problem, inst, ev)
    assert "layers/2" in {c.source for c in cands}
    assert best.step_ms <= ev.step(dev)[0]


def test_layer_split_needs_indexed_modules() -> None:
    assert layer_split(instance(make_problem(gigabyte_chain(4), star(2))), 2) is None


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


@pytest.mark.slow
def test_heuristics_scale_to_large_graphs_far_below_quadratically() -> None:
    """Ten times the nodes (300 -> 3,000) costs each heuristic well under the hundred times a quadratic
    step would (about 15-26 times here): timed against itself on the same machine, so a slow or busy
    machine does not fail it. Absolute times are the benchmark's (benchmarks/compare_solvers.py)."""
    c = Cluster.preset("dgx1-v100")

    def fastest(n: int, name: str, repeats: int) -> float:
        g = random_graph(1, n)
        times = []
        for _ in range(repeats):
            problem = make_problem(g, c)
            instance(problem)
            problem.bound()
            start = time.perf_counter()
            SOLVERS[name](problem)
            times.append(time.perf_counter() - start)
        return min(times)

    for name in HEURISTICS:
        small, large = fastest(300, name, 3), fastest(3000, name, 1)
        assert large < 60 * small, (name, large, small)
