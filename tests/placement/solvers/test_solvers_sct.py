"""m-SCT's favourite-child LP: the reduced form it solves has the optimum of the LP as published
(Hanen and Munier), and its rounding keeps the "at most one favourite" rules."""

from __future__ import annotations

import numpy as np
import pytest
from ortools.linear_solver import pywraplp
from test_solvers_common import graph, random_graph, star

from placement.problem import make_problem
from placement.solvers.instance import Instance, instance
from placement.solvers.sct import chain_tasks, favourite_lp


def published_lp_optimum(inst: Instance, p: np.ndarray, c: np.ndarray) -> float:
    """The LP exactly as in the module docstring: a start per node, a makespan row per node, an ``x``
    per edge and both "at most one" rows for every node (GLOP's defaults)."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    inf = solver.infinity()
    t = [solver.NumVar(0.0, inf, f"t{v}") for v in range(inst.n)]
    x = [solver.NumVar(0.0, 1.0, f"x{e}") for e in range(inst.num_edges)]
    makespan = solver.NumVar(0.0, inf, "C")
    for e in range(inst.num_edges):
        u, v = int(inst.src[e]), int(inst.dst[e])
        solver.Add(t[v] >= t[u] + float(p[u]) + float(c[e]) * x[e])
    for v in range(inst.n):
        solver.Add(makespan >= t[v] + float(p[v]))
        for side in (inst.succs[v], inst.preds[v]):
            if side:
                solver.Add(solver.Sum(x[e] for _, e in side) >= len(side) - 1)
    solver.Minimize(makespan)
    assert solver.Solve() == pywraplp.Solver.OPTIMAL
    return makespan.solution_value()


def lp_inputs(seed: int, n: int) -> tuple[Instance, np.ndarray, np.ndarray]:
    """A random graph's instance on three devices, with varied edge bytes (so varied costs)."""
    inst = instance(make_problem(random_graph(seed, n, uniform_bytes=False), star(3)))
    return inst, inst.work.min(axis=1), inst.mean_round_trip()


@pytest.mark.parametrize("seed", range(12))
def test_reduced_lp_has_the_published_optimum(seed: int) -> None:
    inst, p, c = lp_inputs(seed, 6 + 3 * seed)
    reduced = favourite_lp(inst, p, c)
    assert reduced.makespan == pytest.approx(published_lp_optimum(inst, p, c), rel=1e-9, abs=1e-9)


def test_reduced_lp_optimum_when_communication_dominates() -> None:
    # 50 ms edges against 1-9 ms nodes: the LP saves as much communication as the rules allow.
    inst, p, _ = lp_inputs(3, 30)
    c = np.full(inst.num_edges, 50.0)
    assert favourite_lp(inst, p, c).makespan == pytest.approx(published_lp_optimum(inst, p, c), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_rounding_gives_at_most_one_favourite_each_way(seed: int) -> None:
    inst, p, c = lp_inputs(seed, 40)
    home = favourite_lp(inst, p, c).home
    children: dict[int, int] = {}
    for v, parent in enumerate(home.tolist()):
        if parent >= 0:
            assert any(u == parent for u, _ in inst.preds[v])  # a favourite parent is a parent
            children[parent] = children.get(parent, 0) + 1
    assert all(k == 1 for k in children.values())


def test_chains_become_single_tasks() -> None:
    # a -> b -> c is a chain (c then forks); d and e join at f, so neither d->f nor e->f is a chain edge.
    g = graph(
        {name: (1, 1) for name in "abcdef"},
        [("a", "b"), ("b", "c"), ("c", "d"), ("c", "e"), ("d", "f"), ("e", "f")],
    )
    inst = instance(make_problem(g, star(2)))
    home, task, chain = chain_tasks(inst)
    idx = inst.index
    assert task[idx["a"]] == task[idx["b"]] == task[idx["c"]]
    assert len({int(task[idx[k]]) for k in "cdef"}) == 4
    assert home[idx["b"]] == idx["a"] and home[idx["c"]] == idx["b"]
    assert home[idx["d"]] == home[idx["e"]] == home[idx["f"]] == -1
    assert int(chain.sum()) == 2


def test_lp_of_a_chain_alone_is_its_length() -> None:
    g = graph({f"n{i}": (2, 3) for i in range(4)}, [(f"n{i}", f"n{i + 1}") for i in range(3)])
    inst = instance(make_problem(g, star(2)))
    lp = favourite_lp(inst, inst.work.min(axis=1), inst.mean_round_trip())
    assert lp.makespan == pytest.approx(20.0)  # four nodes of 5 ms, no communication
    assert lp.home.tolist() == [-1, 0, 1, 2]
