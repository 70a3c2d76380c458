"""Coarsening: the coarse graph is a DAG of convex sets that keeps every constraint, maps solutions
both ways, and can be refined back; and the large-neighbourhood search built on it."""

from __future__ import annotations

import random
import time

import networkx as nx
import numpy as np
import pytest

from graphc.ir.graph import Graph
from placement.solvers.coarsen import coarsen, from_partition
from placement.constraints import Constraints
from placement.problem import make_problem
from placement.solvers.cpsat import Budget, CpSatSettings, warm_start
from placement.solvers.instance import Instance, instance
from placement.solvers.lns import grow_window, lns
from placement.solvers.search import Evaluator, polish
from test_solvers_common import graph, random_graph, star


def convex(inst: Instance, members: list[int]) -> bool:
    """No path leaves the set and comes back."""
    g = nx.DiGraph((int(u), int(v)) for u, v in zip(inst.src, inst.dst))
    g.add_nodes_from(range(inst.n))
    inside = set(members)
    outside_reached = {w for v in members for w in nx.descendants(g, v)} - inside
    return not any(nx.descendants(g, w) & inside for w in outside_reached)


def layered(n_blocks: int = 6) -> Graph:
    """Blocks ``b{i}`` of a module each: a fork into two branches joined again."""
    nodes, edges, prev = {}, [], None
    for i in range(n_blocks):
        names = [f"b{i}_{k}" for k in ("in", "l", "r", "out")]
        for k, name in enumerate(names):
            nodes[name] = (1 + k, 1 + k, 1e6, 0.0, f"blocks.{i}")
        edges += [(names[0], names[1]), (names[0], names[2]), (names[1], names[3]), (names[2], names[3])]
        if prev:
            edges.append((prev, names[0]))
        prev = names[3]
    return graph(nodes, edges)


def fwd_bwd_pairs(n: int = 12) -> tuple[Graph, Constraints]:
    """A forward chain and its backward chain, each backward node colocated with its forward node and
    no edge between the two chains (as in the dnn-partitioning training graphs)."""
    nodes = {f"{p}{i}": (1 + i % 3, 0) for p in ("f", "g") for i in range(n)}
    edges = [(f"{p}{i}", f"{p}{i + 1}") for p in ("f", "g") for i in range(n - 1)]
    return graph(nodes, edges), Constraints(colocate=[[f"f{i}", f"g{i}"] for i in range(n)])


def test_lns_windows_free_whole_colocation_groups() -> None:
    # A window node whose group partner stays fixed could not move: the window takes the partner too.
    g, c = fwd_bwd_pairs()
    inst = instance(make_problem(g, star(3), constraints=c))
    co = coarsen(inst, 6, respect=np.zeros(inst.n, dtype=np.int64))
    rng = random.Random(0)
    for _ in range(20):
        window = set(grow_window(co, np.zeros(inst.n, dtype=np.int64), 6, rng))
        assert all(set(co.coarse.members[co.coarse.group[c]]) <= window for c in window)


def test_coarse_graph_is_a_dag_of_convex_sets() -> None:
    inst = instance(make_problem(random_graph(7, 120), star(4)))
    co = coarsen(inst, 20)
    assert co.size <= 20
    assert sorted(v for m in co.members for v in m) == list(range(inst.n))
    for mem in co.members:
        assert convex(inst, mem)
    # Coarse nodes are numbered topologically.
    assert all(a < b for a, b in zip(co.coarse.src, co.coarse.dst))
    # Times and memory add up.
    assert co.coarse.work.sum() == pytest.approx(inst.work.sum())
    assert co.coarse.need.sum() == pytest.approx(inst.need.sum())


def test_small_graph_is_left_alone() -> None:
    inst = instance(make_problem(random_graph(7, 10), star(2)))
    assert coarsen(inst, 50).size == 10


def test_repeated_layers_become_coarse_nodes() -> None:
    inst = instance(make_problem(layered(6), star(2)))
    co = coarsen(inst, 6)
    blocks = [{inst.modules[v] for v in mem} for mem in co.members]
    assert all(len(b) == 1 for b in blocks)  # no coarse node mixes two blocks


def test_pins_and_colocation_survive_coarsening() -> None:
    g = layered(4)
    c = Constraints(pins={"b1_l": "d1", "blocks.3": "d0"}, colocate=[["b0_in", "b2_out"]])
    problem = make_problem(g, star(3), constraints=c)
    inst = instance(problem)
    co = coarsen(inst, 4)
    for mem in co.members:  # members of a coarse node may use exactly the same devices
        assert all((inst.allowed[v] == inst.allowed[mem[0]]).all() for v in mem)
    p0, p1 = co.part[inst.index["b0_in"]], co.part[inst.index["b2_out"]]
    assert co.coarse.group[p0] == co.coarse.group[p1]
    # Any coarse solution expands to a fine one that honours every constraint.
    dev = np.zeros(co.size, dtype=int)
    for mem in co.coarse.members:
        allowed = np.flatnonzero(co.coarse.allowed[mem[0]])
        dev[mem] = allowed[-1]
    fine = co.expand(dev)
    assert all(inst.allowed[v, fine[v]] for v in range(inst.n))
    assert fine[inst.index["b0_in"]] == fine[inst.index["b2_out"]]
    assert fine[inst.index["b1_l"]] == 1


def test_respect_keeps_a_solution_expressible_and_refine_splits() -> None:
    inst = instance(make_problem(random_graph(9, 80), star(3)))
    dev = np.asarray([v % 3 for v in range(inst.n)])
    co = coarsen(inst, 10, respect=dev)
    assert (co.expand(co.project(dev)) == dev).all()
    finer = co.refine([0, 1])
    assert finer.size == co.size + len(co.members[0]) + len(co.members[1]) - 2
    assert (finer.expand(finer.project(dev)) == dev).all()


def test_partition_with_a_cycle_is_refused() -> None:
    inst = instance(make_problem(graph({"a": (1, 1), "b": (1, 1), "c": (1, 1)}, [("a", "b"), ("b", "c")]), star(2)))
    with pytest.raises(ValueError, match="convex"):
        from_partition(inst, np.asarray([0, 1, 0]))


@pytest.mark.slow
def test_lns_and_polish_never_worsen_and_keep_the_clock() -> None:
    problem = make_problem(random_graph(12, 60), star(3))
    inst = instance(problem)
    ev = Evaluator(problem, inst)
    start, _ = warm_start(problem, inst, ev)
    deadline = time.perf_counter() + 2.0
    better, stats = lns(inst, ev, start, deadline, seed=1, window=12, base_size=15, step_seconds=0.3)
    assert time.perf_counter() < deadline + 1.0
    assert better.step_ms <= start.step_ms and stats["steps"] >= 1
    best, _, _ = polish(ev, better, time.perf_counter() + 1.0, seed=1)
    assert best.step_ms <= better.step_ms
    assert ev.step(best.dev, best.seq)[0] == pytest.approx(best.step_ms)


def test_lns_steps_are_charged_the_deterministic_time_they_use() -> None:
    # A small neighbourhood is solved at once: the search is charged that, not the step's whole budget,
    # and the charge is the same on every run (deterministic time, not the clock).
    problem = make_problem(random_graph(12, 16), star(3), time_limit_s=10.0)
    inst = instance(problem)
    cfg = CpSatSettings()
    budget = Budget.of(problem, inst, cfg)
    charges = []
    for _ in range(2):
        ev = Evaluator(problem, inst)
        start, _ = warm_start(problem, inst, ev)
        _, stats = lns(inst, ev, start, time.perf_counter() + 30, seed=3, window=4, base_size=8,
                       step_seconds=cfg.lns_step_seconds, max_steps=2)  # fmt: skip
        charges.append(budget.lns_units(inst, stats))
    assert charges[0] == charges[1]
    assert 0 < charges[0] < 2 * budget.lns_step_units(inst, cfg)
