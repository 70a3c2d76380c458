"""``solver="auto"``: the same plan on a quiet and on a loaded machine, work planned from the graph's size
(heuristics, model sizes) rather than the clock, and never a plan slower than one device."""

from __future__ import annotations

import itertools
import multiprocessing

import numpy as np
import pytest
from cpu_burners import cpu_burners
from test_solvers_common import branches, graph, random_graph, star

from placement import Cluster, simulate
from placement.plan import Plan
from placement.problem import make_problem
from placement.solvers import HEURISTICS, solve
from placement.solvers import cpsat as cpsat_module
from placement.solvers import lns as lns_module
from placement.solvers.auto import single_device_pipeline
from placement.solvers.cpsat import WARM_START, Budget, CpSatSettings, warm_cost, warm_start
from placement.solvers.ilp import LatencyModel
from placement.solvers.instance import instance
from placement.solvers.listsched import to_plan
from placement.solvers.search import Evaluator, polish
from placement.solvers.topo import split_counts
from placement.solvers.workload import (
    HEURISTICS_ONLY_SHARE,
    NOMINAL_SHARE,
    final_seconds,
    heuristic_seconds,
    instance_seconds,
    model_terms,
)

GB = 1e9


def _fingerprint(plan: Plan) -> tuple:
    return (
        plan.assignment, plan.order, plan.predicted_step_ms, plan.microbatches,
        [(s.nodes, s.devices) for s in plan.stages],
    )  # fmt: skip


# -- determinism ---------------------------------------------------------------------------------------
CASES = [
    (random_graph(3, 14), star(3), "latency"),
    (random_graph(8, 40), star(4), "latency"),
    (branches(), star(2), "throughput"),
]


@pytest.mark.slow
def test_auto_gives_the_same_plan_beside_cpu_burners() -> None:
    """Each input solved on a quiet machine and again beside two CPU-burning processes: the same plan,
    and no stage cut short by the wall clock (auto plans half its time limit: this holds while the
    burners at most double its time, on a machine otherwise idle)."""
    quiet = [solve(g, c, objective=o, solver="auto", time_limit_s=3.0, seed=5) for g, c, o in CASES]
    with cpu_burners(2):
        loaded = [solve(g, c, objective=o, solver="auto", time_limit_s=3.0, seed=5) for g, c, o in CASES]
    for a, b in zip(quiet, loaded):
        assert _fingerprint(a) == _fingerprint(b)
        assert a.settings.get("stopped_by_wall_clock", []) == []
        assert b.settings.get("stopped_by_wall_clock", []) == []


def test_budget_is_planned_from_the_size_not_the_clock() -> None:
    """A tiny time limit runs one device and the splits onto every device only; a generous one
    every heuristic and every split; one in between the heuristics that fit in order; the same inputs
    plan the same work."""
    problem = make_problem(random_graph(3, 30), star(4), time_limit_s=0.2)
    inst = instance(problem)
    cfg = CpSatSettings()
    tight = Budget.of(problem, inst, cfg)
    assert tight.heuristics == ["single"] and tight.splits == split_counts(inst)[-1:]
    assert tight.ilp_seconds == 0.0 and tight.search_evals == 0
    roomy = Budget.of(make_problem(random_graph(3, 30), star(4), time_limit_s=30.0), inst, cfg)
    assert sorted(roomy.heuristics) == sorted(WARM_START) and roomy.splits == split_counts(inst)
    assert roomy.heuristics[0] == "single"
    sim = roomy.sim_seconds
    costs = [warm_cost(n, inst, sim) for n in roomy.heuristics[1:]]
    assert costs == sorted(costs)
    # Room for one device, m-ETF and half of HEFT (each run and its plan predicted): m-ETF but not HEFT.
    room = warm_cost("single", inst, sim) + warm_cost("m-etf", inst, sim) + 0.5 * warm_cost("heft", inst, sim)
    limit = (room / cfg.warm_share + instance_seconds(inst.n) + final_seconds(inst, 2)) / NOMINAL_SHARE
    middle = Budget.of(make_problem(random_graph(3, 30), star(4), time_limit_s=limit), inst, cfg)
    assert middle.heuristics[0] == "single" and "m-etf" in middle.heuristics and "heft" not in middle.heuristics
    assert Budget.of(problem, inst, cfg) == tight


# -- bounded model building ----------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "n", "devices", "fixed_share", "exact"), [
    (1, 10, 3, 0.0, True), (2, 30, 4, 0.0, False), (3, 40, 3, 0.7, False), (4, 25, 8, 0.5, False),
])  # fmt: skip
def test_model_terms_estimate_the_built_model(seed: int, n: int, devices: int, fixed_share: float, exact: bool) -> None:
    inst = instance(make_problem(random_graph(seed, n), star(devices)))
    rng = np.random.default_rng(seed)
    fixed = {v: int(rng.integers(devices)) for v in range(n) if rng.random() < fixed_share}
    estimate = model_terms(inst, fixed, contention=exact, reverse_backward=exact)
    size = LatencyModel(inst, fixed=fixed, contention=exact, reverse_backward=exact, symmetry=False).size()
    built = size["variables"] + size["constraints"]
    assert 0.5 * built <= estimate <= 2.0 * built


def test_models_past_the_limit_are_never_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a limit below every model's size, auto builds none (CP-SAT and LNS are skipped, saying why)
    and still returns a plan no slower than any heuristic's."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model past MAX_MODEL_TERMS was built")

    monkeypatch.setattr(cpsat_module, "MAX_MODEL_TERMS", 10)
    monkeypatch.setattr(cpsat_module, "LatencyModel", refuse)
    monkeypatch.setattr(lns_module, "LatencyModel", refuse)
    g, c = random_graph(8, 40), star(4)
    plan = solve(g, c, solver="auto", time_limit_s=4.0)
    assert "too large" in plan.settings["ilp"]["skipped"]
    assert "too large" in plan.settings["search"]["lns_skipped"]
    best_heuristic = min(solve(g, c, solver=name).predicted_step_ms for name in HEURISTICS)
    assert plan.predicted_step_ms <= best_heuristic + 1e-9


# -- never slower than one device ----------------------------------------------------------------------
def _heavy_edges_chain() -> tuple:
    """Four 5 ms nodes passing 1 GB tensors (1 s on a link): every split is far slower than one device."""
    g = graph({f"n{i}": (5, 5, 1e6) for i in range(4)}, [(f"n{i}", f"n{i + 1}", GB) for i in range(3)])
    return g, star(2)


@pytest.mark.parametrize("microbatches", [1, 2])
@pytest.mark.parametrize("mode", ["training", "inference"])
def test_the_search_judges_a_candidate_by_the_step_its_finished_plan_predicts(mode: str, microbatches: int) -> None:
    problem = make_problem(random_graph(4, 24), star(3), mode=mode, microbatches=microbatches)
    inst = instance(problem)
    evaluator = Evaluator(problem, inst)
    rng = np.random.default_rng(0)
    heft = WARM_START["heft"](inst)
    candidates = [(heft.dev, heft.seq)] + [(rng.integers(0, inst.num_devices, inst.n), None) for _ in range(6)]
    for dev, seq in candidates:
        cand = evaluator(dev, seq, "x")
        assert np.isfinite(cand.step_ms)
        assert to_plan(problem, inst, dev, solver="x", seq=seq).predicted_step_ms == cand.step_ms
    polished, _, _ = polish(evaluator, evaluator(candidates[1][0], None, "random"), deadline=float("inf"), seed=1)
    assert polished.source == "random+polish"  # a random placement is improved, and judged as its plan:
    assert to_plan(problem, inst, polished.dev, solver="x").predicted_step_ms == polished.step_ms


def test_auto_keeps_one_device_when_every_split_is_worse() -> None:
    g, c = _heavy_edges_chain()
    names = g.node_names()
    steps = {a: simulate(g, c, dict(zip(names, a))).step_ms for a in itertools.product(c.device_names, repeat=len(names))}
    one_device = min(s for a, s in steps.items() if len(set(a)) == 1)
    assert all(s > one_device for a, s in steps.items() if len(set(a)) > 1)  # the premise
    plan = solve(g, c, solver="auto", time_limit_s=2.0)
    assert len(set(plan.assignment.values())) == 1
    assert plan.predicted_step_ms == pytest.approx(one_device)


def test_auto_throughput_keeps_one_device_when_the_pipeline_is_slower() -> None:
    g, c = _heavy_edges_chain()
    problem = make_problem(g, c, objective="throughput", time_limit_s=2.0)
    single = single_device_pipeline(problem)
    assert single is not None and len(single.stages) == 1
    plan = solve(g, c, objective="throughput", solver="auto", time_limit_s=2.0, method="equal-split")
    assert plan.settings["auto"]["pipeline_ms"] > single.predicted_step_ms  # the premise
    assert plan.settings["auto"]["chosen"] == "single"
    assert plan.predicted_step_ms == pytest.approx(single.predicted_step_ms)
    assert plan.objective == "throughput" and len(plan.stages) == 1


def test_auto_throughput_keeps_a_faster_pipeline() -> None:
    plan = solve(branches(), star(2), objective="throughput", solver="auto", time_limit_s=2.0)
    assert plan.predicted_step_ms <= plan.settings["auto"]["single_device_ms"]


def test_no_one_device_plan_when_the_graph_fits_on_none() -> None:
    g = graph({f"n{i}": (1, 1, GB) for i in range(4)}, [(f"n{i}", f"n{i + 1}", 1e6) for i in range(3)])
    problem = make_problem(g, star(2, memory=3 * GB), objective="throughput")
    assert single_device_pipeline(problem) is None


def test_burners_are_cleaned_up() -> None:
    before = set(multiprocessing.active_children())
    with cpu_burners(2):
        assert len(set(multiprocessing.active_children()) - before) == 2
    assert set(multiprocessing.active_children()) - before == set()


def test_warm_start_past_its_deadline_keeps_the_first_candidate_and_names_the_rest() -> None:
    problem = make_problem(random_graph(3, 14), star(3))
    inst = instance(problem)
    cut: list[str] = []
    best, cands = warm_start(problem, inst, Evaluator(problem, inst), ["single", "heft", "m-etf"], splits=[2, 3],
                             deadline=0.0, cut=cut)  # fmt: skip
    assert [c.source for c in cands] == ["single"] and best is cands[0]
    assert cut == ["heft", "m-etf", "splits/2", "splits/3"]


def test_graphs_too_large_for_any_model_give_their_budget_to_the_heuristics() -> None:
    """On 128 devices no CP-SAT or LNS model of a 200-node graph fits MAX_MODEL_TERMS: nothing is planned
    for CP-SAT, and the heuristics may use HEURISTICS_ONLY_SHARE of the limit, more than the usual share."""
    wide = make_problem(random_graph(3, 200), Cluster.preset("16x8-v100-ib"), time_limit_s=10.0)
    inst = instance(wide)
    cfg = CpSatSettings()
    budget = Budget.of(wide, inst, cfg)
    assert budget.heuristics_only and budget.ilp_seconds == 0.0
    usual = cfg.warm_share * (NOMINAL_SHARE * 10.0 - instance_seconds(inst.n) - final_seconds(inst, 2))
    assert usual < budget.warm_seconds <= HEURISTICS_ONLY_SHARE * 10.0
    narrow = make_problem(random_graph(3, 200), star(4), time_limit_s=10.0)
    assert not Budget.of(narrow, instance(narrow), cfg).heuristics_only


# -- estimates on many devices -------------------------------------------------------------------------
def _layered_dag(nodes: int):
    """benchmarks/simulate_scaling.py's random layered DAG (seed 0), the scale benchmark's input."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[3] / "benchmarks"))
    from simulate_scaling import random_layered_dag

    return random_layered_dag(nodes, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["heft", "m-etf"])
def test_list_scheduler_estimates_are_of_the_right_order_on_many_devices(name: str) -> None:
    """On 1,500 nodes x 128 devices a list scheduler's CPU time is within a factor of its estimate: under
    it by at most 2.5x (auto plans half its limit, so more would let the wall clock decide), and not
    ten times over (which would leave a heuristic out that fits)."""
    import time

    inst = instance(make_problem(_layered_dag(1500), Cluster.preset("16x8-v100-ib")))
    start = time.process_time()
    WARM_START[name](inst)
    spent = time.process_time() - start
    assert 0.1 * heuristic_seconds(name, inst) <= spent <= 2.5 * heuristic_seconds(name, inst)


@pytest.mark.slow
def test_auto_plans_m_etf_on_ten_thousand_nodes_and_128_devices() -> None:
    """random_layered_dag(10000) on 16x8-v100-ib with 30 s: too large for any model, so the heuristics
    get HEURISTICS_ONLY_SHARE; m-ETF (the best list schedule there) fits it, and the work planned with the
    lowering and the final plans (a little more than the two finalists reserved) stays inside 80% of the
    limit."""
    problem = make_problem(_layered_dag(10000), Cluster.preset("16x8-v100-ib"), time_limit_s=30.0)
    inst = instance(problem)
    D = inst.num_devices
    budget = Budget.of(problem, inst, CpSatSettings(lns_window=max(12, 48 // (D // 2)), lns_base=max(24, 480 // D)))
    assert budget.heuristics_only and "m-etf" in budget.heuristics and budget.splits
    assert instance_seconds(inst.n) + budget.warm_seconds + budget.final_seconds <= 0.8 * 30.0
