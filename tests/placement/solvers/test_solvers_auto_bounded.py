"""``solver="auto"`` bounded by construction: the time limit counts from the request, the finalists are
finished from the predictions they were judged by (no simulation after the search), and a stage whose
nominal cost would end past its wall-clock deadline is not started."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_solvers_common import random_graph, star

import placement.problem as problem_module
from placement.problem import finish_plan, make_problem, predict
from placement.solvers import cpsat as cpsat_module
from placement.solvers import solve
from placement.solvers.cpsat import warm_start
from placement.solvers.instance import instance
from placement.solvers.search import Evaluator


def test_finish_plan_from_a_prediction_records_what_it_would_compute() -> None:
    """finish_plan given predict()'s result for the same assignment records the same step, order and
    memory as finish_plan simulating it itself, with or without a solver's order."""
    g, c = random_graph(4, 30), star(3)
    problem = make_problem(g, c)
    names = g.node_names()
    rng = np.random.default_rng(4)
    assignment = {n: c.device_names[int(rng.integers(3))] for n in names}
    by_device: dict[str, list[str]] = {}
    for n in reversed(problem.lowered().names):  # a valid order only if the simulator accepts it
        by_device.setdefault(assignment[n], []).append(n)
    topological = {d: list(reversed(ns)) for d, ns in by_device.items()}
    for order in (None, topological):
        fresh = finish_plan(problem, assignment, solver="by-hand", order=order)
        reused = finish_plan(problem, assignment, solver="by-hand", order=order,
                             prediction=predict(problem, assignment, order=order))  # fmt: skip
        assert reused.predicted_step_ms == fresh.predicted_step_ms
        assert reused.order == fresh.order and reused.schedule == fresh.schedule
        assert reused.peak_memory_bytes == fresh.peak_memory_bytes
        assert reused.simulate().step_ms == pytest.approx(reused.predicted_step_ms)


def test_auto_finishes_its_finalists_without_simulating_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """No simulation runs while auto finishes its finalists, and the plan's prediction is what the plan
    simulates to."""
    final = {"running": False, "simulations": 0}
    real_final, real_simulate = cpsat_module._final_plan, problem_module.simulate

    def counted_final(*args, **kwargs):
        final["running"] = True
        try:
            return real_final(*args, **kwargs)
        finally:
            final["running"] = False

    def counted_simulate(*args, **kwargs):
        final["simulations"] += final["running"]
        return real_simulate(*args, **kwargs)

    monkeypatch.setattr(cpsat_module, "_final_plan", counted_final)
    monkeypatch.setattr(problem_module, "simulate", counted_simulate)
    g, c = random_graph(8, 40), star(4)
    plan = solve(g, c, solver="auto", time_limit_s=1.0)
    assert final["simulations"] == 0
    assert len(plan.settings["finalists"]) >= 2  # several finished, none simulated
    assert plan.simulate().step_ms == pytest.approx(plan.predicted_step_ms)


def test_warm_start_skips_what_would_end_past_its_deadline() -> None:
    """With a deadline a minute away but every simulation estimated at 1,000 s, the first candidate (one
    device) still runs and every later heuristic and split is skipped, by name, before it starts."""
    problem = make_problem(random_graph(3, 14), star(3))
    inst = instance(problem)
    cut: list[str] = []
    best, cands = warm_start(problem, inst, Evaluator(problem, inst), ["single", "m-etf", "heft"], splits=[2, 3],
                             deadline=time.perf_counter() + 60.0, cut=cut, sim_seconds=1e3)  # fmt: skip
    assert [c.source for c in cands] == ["single"] and best is cands[0]
    assert cut == ["m-etf", "heft", "splits/2", "splits/3"]
    # the same call with simulations estimated as cheap runs everything: the skip is the estimate's
    cut.clear()
    _, cands = warm_start(problem, inst, Evaluator(problem, inst), ["single", "m-etf", "heft"], splits=[2, 3],
                          deadline=time.perf_counter() + 60.0, cut=cut, sim_seconds=1e-6)  # fmt: skip
    assert cut == [] and {"single", "m-etf", "heft"} <= {c.source for c in cands}


def test_the_time_limit_counts_from_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving the constraints (0.2-0.3 s on 100,000 nodes x 128 devices) is inside the limit: the problem starts before it."""
    seen: list[float] = []
    real = problem_module.resolve

    def timed(*args, **kwargs):
        seen.append(time.perf_counter())
        return real(*args, **kwargs)

    monkeypatch.setattr(problem_module, "resolve", timed)
    problem = make_problem(random_graph(3, 14), star(3))
    assert len(seen) == 1 and problem.started <= seen[0]


def test_cp_sat_is_not_started_when_it_would_end_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget (as a far slower machine would need) giving CP-SAT 1,000 nominal seconds of a 30 s limit:
    its coarsening and model are not started, the record says the wall clock cut it, and the plan of
    the warm start is returned, valid."""
    real_of = cpsat_module.Budget.of

    def slow_budget(*args, **kwargs):
        budget = real_of(*args, **kwargs)
        budget.heuristics, budget.splits = ["single", "m-etf"], []
        budget.ilp_seconds, budget.search_seconds = 1000.0, 0.0
        return budget

    monkeypatch.setattr(cpsat_module.Budget, "of", slow_budget)
    problem = make_problem(random_graph(8, 40), star(4), time_limit_s=30.0)
    plan, record = cpsat_module.improve(problem, cpsat_module.CpSatSettings(), solver="auto")
    assert record["stopped_by_wall_clock"] == ["cp-sat"]
    assert "past the time limit" in record["ilp"]["skipped"] and "status" not in record["ilp"]
    assert plan.settings["found_by"] in ("single", "m-etf")
    assert plan.simulate().step_ms == pytest.approx(plan.predicted_step_ms)


def test_a_tiny_limit_plans_one_device_and_the_split_onto_every_device_only() -> None:
    """With 50 ms, auto plans no model and no search: the one-device plan and the splits onto every
    device, and returns a plan that simulates to what it predicts."""
    g, c = random_graph(8, 40), star(4)
    plan = solve(g, c, solver="auto", time_limit_s=0.05)
    budget = plan.settings["budget"]
    assert budget["heuristics"] == ["single"] and budget["splits"] == [4]
    assert budget["ilp_seconds"] == 0.0 and budget["search_seconds"] == 0.0
    assert "status" not in plan.settings.get("ilp", {})  # CP-SAT never solved
    assert plan.settings.get("search", {}).get("lns_steps", 0) == 0
    assert plan.simulate().step_ms == pytest.approx(plan.predicted_step_ms)


@pytest.mark.slow
def test_auto_on_100k_nodes_spends_less_cpu_than_its_limit() -> None:
    """benchmarks/simulate_scaling.py's random layered DAG of 100,000 nodes on 16x8-v100-ib, 30 s: no
    model and no list scheduler fits, so auto plans the one-device attempt and the split onto every
    device, predicts it once and finishes it from that prediction, in well under its limit of CPU time
    (about 13 s on the 2-core test machine; a load of 2 leaves it inside 30 s of wall clock)."""
    import sys
    from pathlib import Path

    from placement import Cluster

    sys.path.insert(0, str(Path(__file__).parents[3] / "benchmarks"))
    from simulate_scaling import random_layered_dag

    graph = random_layered_dag(100_000, seed=0)
    start = time.process_time()
    plan = solve(graph, Cluster.preset("16x8-v100-ib"), solver="auto", time_limit_s=30.0)
    spent = time.process_time() - start
    assert plan.settings["budget"]["heuristics"] == ["single"] and plan.settings["budget"]["splits"] == [128]
    assert plan.settings["found_by"] == "split/128"
    assert spent < 20.0
