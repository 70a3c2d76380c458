"""``solver="auto"``: the best plan the time budget allows, with its proven gap.

* ``objective="throughput"`` goes to the pipeline solver, :func:`placement.pipeline.solve_throughput`,
  with its defaults (:func:`placement.solve` passes the pipeline's options on).
* Latency, given under a second or so: the warm-start heuristics only (one device, m-ETF, m-SCT,
  HEFT, critical path; the fastest first), the best by simulated step.
* Otherwise the whole of :func:`placement.solvers.cpsat.improve`: the heuristics, CP-SAT on the graph
  or a coarsening of it, then rounds of simulator-judged polish and large-neighbourhood search. The
  plan is never worse than the best heuristic (m-TOPO, m-ETF, m-SCT, HEFT, critical path, one
  device), since those are its first incumbents and only a shorter simulated step replaces one.
  The search stops early when the plan meets a lower bound (proven optimal).

Sizes: the model covers the whole graph up to ``nodes x devices = full_limit``; beyond, a coarsening.
The LNS window and base partition shrink with the devices so that one step stays small.

Determinism: heuristics, coarsening, windows, perturbations and the polish are seeded, and every
stage's work is fixed by the time limit, the graph's size and the search's own course (CP-SAT's
deterministic time, numbers of simulations; an LNS step costs the deterministic time its solve used),
not by the clock; so a seed reproduces the plan. The wall clock is a
safety net that keeps ``auto`` within its time limit on a slow or busy machine; when it cuts a stage
short, the plan's ``settings["stopped_by_wall_clock"]`` names the stage (and the result may then
differ between runs). Under a budget too small for the graph only the quick heuristics run.
"""

from __future__ import annotations

import time

from placement.pipeline import solve_throughput
from placement.plan import Plan
from placement.problem import Problem
from placement.solvers.cpsat import WARM_START, CpSatSettings, improve, warm_start
from placement.solvers.instance import instance
from placement.solvers.listsched import to_plan
from placement.solvers.search import Evaluator

# Heuristics in the order auto tries them when time is short (the most useful first).
QUICK_ORDER = ("heft", "m-etf", "single", "critical-path", "m-sct")
QUICK_BUDGET_S = 1.5


def auto(problem: Problem) -> Plan:
    """Pick and combine solvers by graph size and time budget (module docstring)."""
    if problem.objective == "throughput":
        return solve_throughput(problem)
    inst = instance(problem)
    D = inst.num_devices
    if problem.time_limit < QUICK_BUDGET_S or D == 1 or inst.n < 2:
        return _heuristics_only(problem)
    cfg = CpSatSettings(lns_window=max(12, 48 // max(1, D // 2)), lns_base=max(24, 480 // D))
    plan, _ = improve(problem, cfg, solver="auto")
    return plan


def _heuristics_only(problem: Problem) -> Plan:
    """The best of the quick heuristics that fit in the budget."""
    inst = instance(problem)
    evaluator = Evaluator(problem, inst)
    names = []
    per = max(0.05, problem.time_limit * 0.15)
    for name in QUICK_ORDER:
        if names and problem.time_left() < per:
            break
        names.append(name)
        if len(names) == len(WARM_START):
            break
    start = time.perf_counter()
    best, cands = warm_start(problem, inst, evaluator, names)
    settings = {
        "strategy": "heuristics",
        "tried": {c.source: c.step_ms for c in cands},
        "found_by": best.source,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return to_plan(problem, inst, best.dev, solver="auto", settings=settings, seq=best.seq)
