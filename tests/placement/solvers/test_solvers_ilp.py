"""The CP-SAT solver against brute force on graphs small enough to enumerate, its model of time against
the simulator's, its proven bound, and the pipeline around it (coarsening, LNS, auto's time limit).

Brute force: every assignment of the graph's nodes to the devices is simulated with the simulator's
own priority; the best step is the optimum the ILP must reach. On clusters where no two device pairs
share a link (:func:`mesh`), the model's time is the simulator's (module docstring of
:mod:`placement.solvers.ilp`) and the ILP must match brute force. Where transfers contend for shared
links (:func:`star`), the simulator serves them first come first served while the model may order
them as it likes; there the tests compare the model's own optimum with brute force over the model's
own objective, and check that CP-SAT's bound stays below the simulated optimum.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from graphc.ir.importers import load_benchmark
from placement import Cluster, simulate
from placement.solvers import solve
from placement.problem import make_problem
from placement.solvers.ilp import LatencyModel, canonical_devices, interchangeable_classes
from placement.solvers.modeltime import model_schedule
from placement.solvers.instance import instance
from placement.solvers.search import Evaluator
from test_solvers_common import gigabyte_chain, graph, mesh, random_graph, star

CASES = [(101, 6, 3, "training"), (102, 7, 2, "training"), (103, 7, 3, "inference"), (104, 8, 2, "training")]


def brute_force(g, cluster, mode: str) -> float:
    names, devices = g.node_names(), cluster.device_names
    return min(
        simulate(g, cluster, dict(zip(names, a)), mode=mode).step_ms for a in itertools.product(devices, repeat=len(names))
    )


@pytest.mark.parametrize(("seed", "n", "devices", "mode"), CASES)
def test_ilp_reaches_the_brute_force_optimum(seed: int, n: int, devices: int, mode: str) -> None:
    g, c = random_graph(seed, n), mesh(devices)
    best = brute_force(g, c, mode)
    plan = solve(g, c, mode=mode, solver="cp-sat", time_limit_s=2.0)
    assert plan.predicted_step_ms <= best + 1e-6
    assert plan.lower_bound_ms <= best + 1e-6  # the bound is a bound
    # The model alone (no heuristics, no local search), simulated with its order or the simulator's.
    problem = make_problem(g, c, mode=mode)
    inst = instance(problem)
    r = LatencyModel(inst, contention=True, reverse_backward=True).solve(10.0)
    assert r.optimal
    assert Evaluator(problem, inst)(r.dev, r.seq, "cp-sat").step_ms <= best + 1e-6


@pytest.mark.parametrize("seed", [201, 202, 203])
def test_ilp_bound_holds_under_link_contention(seed: int) -> None:
    g, c = random_graph(seed, 7, uniform_bytes=False), star(3)
    best = brute_force(g, c, "training")
    plan = solve(g, c, solver="cp-sat", time_limit_s=2.0)
    assert plan.lower_bound_ms <= best + 1e-6
    assert plan.predicted_step_ms <= 1.05 * best  # FCFS links: within a few per cent of brute force


def test_model_optimum_is_brute_force_of_its_own_objective() -> None:
    """The model solved freely equals the best, over every assignment, of the model solved with the
    assignment fixed: CP-SAT optimises its own objective exactly."""
    g, c = random_graph(301, 6, uniform_bytes=False), star(2)
    inst = instance(make_problem(g, c))
    free = LatencyModel(inst, contention=True).solve(10.0)
    assert free.optimal
    fixed_best = min(
        LatencyModel(inst, contention=True, fixed=dict(enumerate(a))).solve(10.0).objective_ms
        for a in itertools.product(range(2), repeat=inst.n)
    )
    assert free.objective_ms == pytest.approx(fixed_best, abs=1e-9)


def test_model_time_equals_simulated_time_without_contention() -> None:
    """A fixed assignment on a mesh: the model's optimal schedule (with the simulator's reverse
    backward order) is the simulated step with that schedule's order."""
    g, c = random_graph(401, 7), mesh(3)
    inst = instance(make_problem(g, c))
    dev = np.asarray([0, 0, 1, 2, 1, 0, 2])
    r = LatencyModel(inst, fixed=dict(enumerate(dev.tolist())), reverse_backward=True, contention=True).solve(10.0)
    sim = simulate(g, c, inst.assignment_names(r.dev), order=inst.order_names(r.seq))
    assert r.optimal
    assert sim.step_ms == pytest.approx(r.objective_ms, abs=1e-3)


def test_model_schedule_is_a_feasible_hint_and_matches_the_simulator() -> None:
    g, c = random_graph(402, 9), mesh(2)
    inst = instance(make_problem(g, c))
    dev = np.asarray([0, 1] * 4 + [0])
    model = LatencyModel(inst, fixed=dict(enumerate(dev.tolist())))
    hinted = model.hint(dev)
    sim = simulate(g, c, inst.assignment_names(dev)).step_ms
    assert hinted == pytest.approx(sim, abs=1e-3)  # same rules as the simulator's own priority
    r = model.solve(5.0)
    assert r.objective_ms <= hinted + 1e-9


def test_ilp_respects_memory() -> None:
    """Four 1 GB activations on 3 GiB devices: no device may hold them all."""
    g = gigabyte_chain(4)
    c = star(2, memory=3 * 2**30)
    plan = solve(g, c, solver="cp-sat", time_limit_s=2.0)
    assert len(set(plan.assignment.values())) == 2
    assert all(p <= 3 * 2**30 for p in plan.peak_memory_bytes.values())


def test_interchangeable_devices_and_canonical_labels() -> None:
    inst = instance(make_problem(random_graph(5, 5), star(3)))
    assert interchangeable_classes(inst) == [[0, 1, 2]]
    assert canonical_devices(np.asarray([2, 2, 0, 1, 0]), [[0, 1, 2]]).tolist() == [0, 0, 1, 2, 1]
    pcie = instance(make_problem(random_graph(5, 5), Cluster.preset("pcie-4gpu")))
    assert interchangeable_classes(pcie) == [[0], [1, 2, 3, 4]]  # the CPU, then four GPUs


@pytest.mark.slow
def test_coarse_model_on_a_large_graph_and_auto_keeps_its_time_limit() -> None:
    g = load_benchmark("pipedream/inception_v3.txt")
    c = Cluster.preset("dgx1-v100")
    heuristic = min(solve(g, c, solver=s).predicted_step_ms for s in ("m-etf", "heft", "critical-path", "m-sct"))
    start = time.perf_counter()
    plan = solve(g, c, solver="auto", time_limit_s=6.0)
    assert time.perf_counter() - start < 6.5
    assert plan.predicted_step_ms <= heuristic + 1e-9
    assert plan.settings["ilp"]["graph"].startswith("coarse")


def test_model_schedule_runs_backwards_after_the_barrier() -> None:
    g = graph({"a": (1, 4), "b": (2, 1)}, [("a", "b", 0.0)])
    inst = instance(make_problem(g, star(2)))
    model = LatencyModel(inst, fixed={0: 0, 1: 0})
    s = model_schedule(inst, np.asarray([0, 0]), model)
    tick = model.tick_ms
    assert [x * tick for x in (s.sF[0], s.sF[1], s.sB[1], s.sB[0])] == pytest.approx([0, 1, 3, 4], abs=1e-3)
    assert s.makespan * tick == pytest.approx(8.0, abs=1e-3)
