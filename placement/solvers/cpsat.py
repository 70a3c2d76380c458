"""The ILP solver: CP-SAT on the graph (or a coarsening of it), warm-started, refined, bounded.

Stages, each given a share of the work planned (:class:`Budget`, in nominal seconds estimated from
the instance's size by :mod:`placement.solvers.workload`, never read from the clock):

1. **Warm start.** The heuristics that fit ``warm_share`` of the work, in the order of
   :data:`WARM_START` (one device where the graph fits, always; m-ETF, HEFT, critical path, m-SCT,
   m-TOPO; at least the cheapest of them), and, when they fit too, the memory-balanced split and the
   split by layer onto the ``k`` fastest devices for each useful ``k``
   (:func:`placement.solvers.topo.balanced_split` and :func:`~placement.solvers.topo.layer_split`),
   are run and simulated; the best is the incumbent.
2. **CP-SAT.** If ``nodes x devices <= full_limit`` the model of :mod:`placement.solvers.ilp` is built
   for the whole graph, else for a coarsening of it (:func:`placement.solvers.coarsen.coarsen`, about
   ``coarse_limit / devices`` nodes). The coarsening and the model are charged their estimated cost
   and not started when that passes half of CP-SAT's share, or when the model would pass
   :data:`~placement.solvers.workload.MAX_MODEL_TERMS` (a graph of 10,000 nodes on 128 devices, say):
   the share then goes to stages 3-4. The model is hinted with the incumbent scheduled in the model's
   time. On a coarsening it is skipped, its share going to stages 3-4, when the model's time of the
   incumbent is off the incumbent's simulated step by more than ``MODEL_TRUST``.
   On tiny instances (``nodes x devices^2 <= exact_limit``) the model also books transfers on the
   links they cross and runs backwards in the reverse order of forwards, as the simulator does with a
   plan's order, and a second, relaxed solve proves the bound.
3. **Polish**: moves across cut edges and of short chains, judged by the simulator
   (:func:`placement.solvers.search.polish`).
4. **Large-neighbourhood search** on the full graph (:mod:`placement.solvers.lns`), in rounds with
   the polish, perturbing the best plan when a round finds nothing, until the work budget is spent;
   left out when coarsening the graph costs more than a round or its models would be too large.

The plan is the best candidate seen (by simulated step). Its lower bound is the larger of the generic
bound (:func:`placement.bounds.lower_bound`) and CP-SAT's proven bound when that is a bound of the full
problem (whole graph, no memory rows: see :mod:`placement.solvers.ilp`); the gap is
``(step - bound) / step``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from placement.constraints import InfeasibleError
from placement.errors import ConfigurationError
from placement.plan import Plan
from placement.problem import Problem, finish_plan
from placement.solvers.baselines import single_schedule
from placement.solvers.coarsen import coarsen
from placement.solvers.cpop import cpop_schedule
from placement.solvers.etf import etf_schedule, static_priority
from placement.solvers.heft import heft_schedule
from placement.solvers.ilp import DETERMINISTIC_PER_SECOND, LatencyModel
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import Schedule, memory_retries
from placement.solvers.lns import lns
from placement.solvers.sct import sct_schedule
from placement.solvers.search import (
    PREDICT_ORDER_UNITS,
    PREDICT_UNITS,
    Candidate,
    Evaluator,
    boundary_moves,
    polish,
)
from placement.solvers.topo import (
    balanced_split,
    layer_split,
    split_counts,
    topo_schedule,
)
from placement.solvers.workload import (
    HEURISTICS_ONLY_SHARE,
    MAX_MODEL_TERMS,
    NOMINAL_SHARE,
    SECONDS_PER_TERM,
    coarsen_seconds,
    final_seconds,
    heuristic_seconds,
    instance_seconds,
    model_terms,
    quotient_seconds,
    simulation_seconds,
    split_seconds,
    window_terms,
)

# The warm-start heuristics, name -> Instance -> Schedule, in the order the budget takes them (one
# device first, so that no plan slower than it is ever returned where the graph fits on one device).
WARM_START: dict[str, Callable[[Instance], Schedule]] = {
    "single": single_schedule,
    "m-etf": lambda inst: memory_retries(lambda h: etf_schedule(inst, static_priority(inst), headroom=h)),
    "heft": heft_schedule,
    "critical-path": cpop_schedule,
    "m-sct": sct_schedule,
    "m-topo": topo_schedule,
}

# Warm-start heuristics whose own order is not worth keeping (one device: the simulator's is as good;
# m-TOPO: a packing, not a schedule): their plans are predicted with the simulator's order only.
UNORDERED = ("single", "m-topo")


def warm_cost(name: str, inst: Instance, sim: float) -> float:
    """Nominal seconds of the warm-start heuristic ``name``: its run and the predictions of its plan
    (:class:`~placement.solvers.search.Evaluator`: without an order, and with its own unless
    :data:`UNORDERED`), in simulations of ``sim`` seconds."""
    if name == "single" and float(inst.need.sum()) > float(inst.capacity.max(initial=0.0)):
        return 1e-3  # no device holds the whole graph: single_schedule refuses at once, nothing to predict
    units = PREDICT_UNITS + (0 if name in UNORDERED else PREDICT_ORDER_UNITS)
    return heuristic_seconds(name, inst) + units * sim


def split_cost(inst: Instance, sim: float) -> float:
    """Nominal seconds of one device count's balanced and layer splits, computed and predicted."""
    return 2 * PREDICT_UNITS * sim + split_seconds(inst)


# CP-SAT on a coarsening is skipped when its model's time of the warm start's best plan is off that
# plan's simulated step by more than this fraction (a coarsening that serialises an unrolled RNN's
# wavefront, say): then the model's optimum says little about the simulator's, and the search makes
# better use of the time.
MODEL_TRUST = 0.25
# A stage whose wall-clock time passes this multiple of its nominal seconds (plus a second) is stopped.
WALL_SLACK = 3.0


@dataclass
class CpSatSettings:
    """Knobs of :func:`cp_sat` (recorded in the plan's settings).

    Attributes:
        full_limit: model the whole graph when nodes x devices is at most this.
        coarse_limit: else coarsen to about this many (coarse nodes x devices).
        exact_limit: also model link contention and the reverse backward order when nodes x
            devices^2 is at most this.
        warm_share: fraction of the planned work the warm-start heuristics may take (one device and
            the cheapest other heuristic always run).
        ilp_share: fraction of the work left after the warm start for CP-SAT (its coarsening and model
            included); the rest goes to rounds of polish and LNS.
        lns_window: fine nodes freed per LNS step; ``lns_base``: coarse nodes of the LNS's partition.
        lns_step_seconds: CP-SAT budget per LNS step; ``lns_round``: LNS steps per round.
        perturb_fraction: share of the cut-edge nodes moved when a round finds nothing.
        workers: CP-SAT workers (with more than one, OR-Tools' deterministic interleaved search).
    """

    full_limit: int = 480
    coarse_limit: int = 400
    exact_limit: int = 160
    warm_share: float = 0.5
    ilp_share: float = 0.35
    lns_window: int = 24
    lns_base: int = 60
    lns_step_seconds: float = 1.0
    lns_round: int = 3
    perturb_fraction: float = 0.1
    workers: int = 1


def warm_start(
    problem: Problem,
    inst: Instance,
    evaluator: Evaluator,
    names: list[str] | None = None,
    *,
    splits: list[int] | None = None,
    deadline: float | None = None,
    cut: list[str] | None = None,
    sim_seconds: float | None = None,
) -> tuple[Candidate, list[Candidate]]:
    """Run the warm-start heuristics (``names`` of :data:`WARM_START`, by default all of them) and the
    balanced split and the layer split onto the ``k`` fastest devices for each ``k`` of ``splits``
    (default: every ``k`` of :func:`~placement.solvers.topo.split_counts`; named ``split/k`` and
    ``layers/k``, each distinct placement simulated once); the best candidate and all of them. Raises
    the first heuristic's infeasibility when none finds a placement.

    ``deadline``: the wall-clock safety net; once a candidate exists, a heuristic or split not yet
    started is skipped, its name appended to ``cut``, when the clock is past it or, given the nominal
    seconds of a simulation (``sim_seconds``), when its nominal cost (:func:`warm_cost`,
    :func:`split_cost`) would end past it: a heuristic or a prediction cannot be stopped once started.
    On a machine as fast as the estimates neither happens (the deadline allows the planned work
    several times over), so the plan does not depend on the clock there."""
    candidates: list[Candidate] = []
    first_error: Exception | None = None

    def late(name: str, cost: Callable[[float], float]) -> bool:
        if not candidates or deadline is None:
            return False
        nominal = 0.0 if sim_seconds is None else cost(sim_seconds)
        if time.perf_counter() + nominal > deadline:
            if cut is not None:
                cut.append(name)
            return True
        return False

    for name in list(WARM_START) if names is None else names:
        if late(name, lambda sim, name=name: warm_cost(name, inst, sim)):
            continue
        try:
            sched = WARM_START[name](inst)
        except InfeasibleError as exc:
            if name != "single":  # "does not fit on one device" says little to a multi-device solver
                first_error = first_error or exc
            continue
        seq = None if name in UNORDERED else sched.seq
        cand = evaluator(sched.dev, seq, name)
        if np.isfinite(cand.step_ms):
            candidates.append(cand)
    tried: set[bytes] = set()
    for k in split_counts(inst) if splits is None else splits:
        if late(f"splits/{k}", lambda sim: split_cost(inst, sim)):
            continue
        for name, dev in ((f"split/{k}", balanced_split(inst, k)), (f"layers/{k}", layer_split(inst, k))):
            if dev is None or dev.tobytes() in tried:
                continue
            tried.add(dev.tobytes())
            cand = evaluator(dev, None, name)
            if np.isfinite(cand.step_ms):  # the simulator's memory check (the splits have no ledger)
                candidates.append(cand)
    if not candidates:
        raise first_error or InfeasibleError("no warm-start heuristic found a placement that fits in memory")
    best = min(candidates, key=lambda c: c.step_ms)
    return best, candidates


def cp_sat(problem: Problem, settings: CpSatSettings | None = None) -> Plan:
    """The ILP solver (module docstring)."""
    _check_latency(problem, "cp-sat")
    cfg = settings or CpSatSettings()
    plan, _ = improve(problem, cfg, solver="cp-sat")
    return plan


def improve(
    problem: Problem,
    cfg: CpSatSettings,
    *,
    solver: str,
    incumbent: Candidate | None = None,
) -> tuple[Plan, dict[str, Any]]:
    """Stages 1-4 of the module docstring; the plan and a record of what each stage did.

    The work of every stage is planned in nominal seconds (:class:`Budget`, from the time limit and the
    instance's size: which heuristics run, CP-SAT's deterministic time, its coarsening and model
    building, simulations, LNS steps charged what they build and the deterministic time their solves
    used), so a seed reproduces the plan on a quiet or a loaded machine; the wall clock only stops a
    stage that overruns, or skips one whose nominal cost would end past the limit (a warm-start
    heuristic once a candidate exists, CP-SAT), and ``stopped_by_wall_clock`` in the record says which.
    The finalists' plans reuse their predictions, so the final step simulates nothing. After the first
    polish, rounds of LNS steps and polish alternate until the work is spent; a round that finds
    nothing perturbs the best plan (random moves across cut edges) and polishes that instead (iterated
    local search).
    """
    inst = instance(problem)
    evaluator = Evaluator(problem, inst)
    budget = Budget.of(problem, inst, cfg)
    record: dict[str, Any] = {"cp_sat": asdict(cfg), "budget": asdict(budget)}
    D = inst.num_devices
    hard = problem.deadline - budget.final_seconds
    cut_by_clock: list[str] = []
    cands: list[Candidate] = []
    if incumbent is None:
        skipped: list[str] = []
        try:
            incumbent, cands = warm_start(
                problem, inst, evaluator, budget.heuristics, splits=budget.splits,
                deadline=min(hard, time.perf_counter() + WALL_SLACK * budget.warm_seconds + 1.0), cut=skipped,
                sim_seconds=budget.sim_seconds,
            )  # fmt: skip
        except InfeasibleError:
            # Nothing planned fits in memory: the splits not tried yet, onto the most devices first (the
            # loosest), before giving up. Decided by the result, not the clock (still reproducible), but
            # once one fits, those that would end past the limit are skipped as cut by the clock.
            rest = [k for k in reversed(split_counts(inst)) if k not in budget.splits]
            if not rest:
                raise
            incumbent, cands = warm_start(
                problem, inst, evaluator, [], splits=rest, deadline=hard, cut=skipped, sim_seconds=budget.sim_seconds
            )
            tried = len(rest) - len(skipped)
            record["warm_start_fallback"] = f"nothing planned fitted in memory; {tried} more split counts tried"
        record["warm_start"] = {c.source: c.step_ms for c in cands}
        if skipped or time.perf_counter() >= hard:
            cut_by_clock.append("warm start")
            record["warm_start_skipped"] = skipped
    best = incumbent
    bound_ms = 0.0
    generic = problem.bound(problem.microbatches or 1).step_ms
    rng = random.Random(problem.seed)

    def proven() -> bool:  # the incumbent meets a lower bound: nothing left to find
        # bool(): the bounds may be NumPy floats, and the result goes into the plan's settings as is
        return bool(best.step_ms <= max(generic, bound_ms) * (1 + 1e-9) + 1e-12)

    def clock(nominal: float) -> float:  # the wall-clock safety net of a stage planned to take ``nominal`` s
        return min(hard, time.perf_counter() + WALL_SLACK * nominal + 1.0)

    if D > 1 and inst.n > 1 and not cut_by_clock:
        # -- CP-SAT on the graph or a coarsening --------------------------------------------
        if budget.ilp_seconds > 0.05 and not proven() and time.perf_counter() + budget.ilp_seconds > hard:
            # a coarsening or a model half built cannot be stopped: not started when it would end late
            record["ilp"] = {"skipped": "it would end past the time limit by the wall clock", "charged_s": 0.0}
            cut_by_clock.append("cp-sat")
        elif budget.ilp_seconds > 0.05 and not proven():
            wall = clock(budget.ilp_seconds)
            cand, info = _ilp_stage(inst, evaluator, best, cfg, budget.ilp_seconds, wall, problem.seed)
            record["ilp"] = info
            if info.get("skipped"):  # what CP-SAT's share did not spend goes to the search
                budget.search_seconds += max(0.0, budget.ilp_seconds - info["charged_s"])
            if info.get("stopped_by_wall_clock"):
                cut_by_clock.append("cp-sat")
            if cand is not None and cand.better_than(best):
                best = cand
            if info.get("bound_valid"):
                bound_ms = info["bound_ms"]
        # -- rounds of polish and LNS until the work is spent --------------------------------
        budget.price(inst, best.dev)
        record["budget"]["search_sim_seconds"] = budget.sim_seconds
        record["search"] = _search(inst, evaluator, budget, cfg, best, rng, clock(budget.search_seconds), proven)
        best = record["search"].pop("best")
        cut_by_clock += record["search"].pop("cut_by_clock")

    record["proven_optimal"] = proven()
    record["stopped_by_wall_clock"] = sorted(set(cut_by_clock))
    record["simulations"] = evaluator.calls
    # Every heuristic's plan as it would finish it (its order or the simulator's, whichever the
    # Evaluator kept, as finish_plan records it), the best split, and the search's best.
    splits = [c for c in cands if c.source.startswith(("split/", "layers/"))]
    heuristics = [c for c in cands if c.source in WARM_START]
    finalists = [best, *heuristics, *([min(splits, key=lambda c: c.step_ms)] if splits else [])]
    plan = _final_plan(problem, inst, finalists, solver, record, bound_ms or None)
    return plan, record


def _final_plan(
    problem: Problem,
    inst: Instance,
    finalists: list[Candidate],
    solver: str,
    record: dict[str, Any],
    bound_ms: float | None,
) -> Plan:
    """The finished plan (:func:`~placement.problem.finish_plan`) of each distinct finalist (the search's
    best, each warm-start heuristic's plan with its own order, one device included, the best split),
    the one predicted fastest (the first on a tie). The search judges candidates by the figure their
    plans will predict (:class:`~placement.solvers.search.Evaluator`) and each finalist carries that
    prediction, so finishing it simulates nothing again (on 100,000 nodes a prediction is 8 s of CPU);
    comparing the finished plans keeps ``auto`` no slower than the heuristics it ran and than one device
    by what the plans predict. A finalist
    whose finished schedule overflows memory is passed over; when every one does, the first's
    infeasibility is raised."""
    plans: list[tuple[float, Candidate, Plan]] = []
    seen: set[tuple[bytes, str]] = set()
    first_error: InfeasibleError | None = None
    for cand in finalists:
        key = (cand.dev.tobytes(), repr(cand.seq))
        if key in seen:
            continue
        seen.add(key)
        try:
            plan = finish_plan(
                problem, inst.assignment_names(cand.dev), solver=solver, settings=record,
                order=inst.order_names(cand.seq) if cand.seq is not None and cand.prediction is None else None,
                microbatches=problem.microbatches or 1, bound_ms=bound_ms, prediction=cand.prediction,
            )  # fmt: skip
        except InfeasibleError as exc:
            first_error = first_error or exc
            continue
        plans.append((plan.predicted_step_ms, cand, plan))
    if not plans:
        assert first_error is not None
        raise first_error
    _, chosen, plan = min(plans, key=lambda p: p[0])
    for settings in (record, plan.settings):
        settings["finalists"] = {c.source: s for s, c, _ in plans}
        settings["found_by"] = chosen.source
    return plan


def _search(
    inst: Instance,
    evaluator: Evaluator,
    budget: Budget,
    cfg: CpSatSettings,
    best: Candidate,
    rng: random.Random,
    hard: float,
    proven: Callable[[], bool],
) -> dict[str, Any]:
    """Rounds of polish and LNS from ``best`` until ``budget.search_evals`` simulations' worth of work
    is spent (an LNS step charged :meth:`Budget.lns_units`, a polish's segment coarsening
    :meth:`Budget.coarsen_units`); a record with the best candidate (``best``) and the stages the wall
    clock cut (``cut_by_clock``)."""
    start_calls = evaluator.calls
    charged = 0  # simulations' worth of work done besides simulating: LNS steps, coarsenings
    skipped = _lns_obstacle(inst, cfg)
    lns_ok = skipped is None
    step_units = budget.lns_step_units(inst, cfg)  # what one LNS step may cost
    lns_steps = 0
    rounds: list[dict[str, Any]] = []
    cut: list[str] = []
    current = best

    def left() -> int:
        return budget.search_evals - (evaluator.calls - start_calls) - charged

    while not proven() and left() > 0:
        if time.perf_counter() >= hard:
            cut.append("search")
            break
        before = best.step_ms
        current, done, segments = polish(
            evaluator, current, hard, seed=rng.randrange(2**31), max_evals=left(),
            segment_cost=budget.coarsen_units(inst),
        )  # fmt: skip
        charged += segments
        if not done:
            cut.append("polish")
        if current.better_than(best):
            best = current
        steps = min(cfg.lns_round, left() // step_units) if lns_ok else 0
        if steps > 0 and not proven() and time.perf_counter() < hard:
            current, stats = lns(
                inst, evaluator, best, hard, seed=rng.randrange(2**31), window=cfg.lns_window,
                base_size=cfg.lns_base, step_seconds=cfg.lns_step_seconds, max_steps=steps, workers=cfg.workers,
                max_terms=MAX_MODEL_TERMS,
            )  # fmt: skip
            lns_steps += stats["steps"]
            charged += budget.lns_units(inst, stats)
            if stats.get("too_large"):
                lns_ok, skipped = False, f"its models are too large (~{stats['too_large']} terms)"
            elif stats["steps"] < steps or stats.get("stopped_by_wall_clock"):
                cut.append("lns")
            if current.better_than(best):
                best = current
        rounds.append({"before_ms": before, "after_ms": best.step_ms})
        if best.step_ms >= before * (1 - 1e-9):
            if steps <= 0 and left() < 2:
                break
            current = _perturb(inst, best, evaluator, rng, cfg.perturb_fraction)  # diversify
        else:
            current = best
    out: dict[str, Any] = {
        "rounds": rounds, "lns_steps": lns_steps, "simulations": evaluator.calls - start_calls,
        "charged_simulations": evaluator.calls - start_calls + charged, "best": best, "cut_by_clock": cut,
    }  # fmt: skip
    if skipped:
        out["lns_skipped"] = skipped
    return out


def _perturb(inst: Instance, cand: Candidate, evaluator: Evaluator, rng: random.Random, fraction: float) -> Candidate:
    """``cand`` with a random ``fraction`` of its cut-edge nodes moved to their neighbour's device
    (colocation groups whole, allowed devices only), simulated."""
    dev = cand.dev.copy()
    moves = sorted(boundary_moves(inst, dev))
    rng.shuffle(moves)
    for v, d in moves[: max(1, int(fraction * len(moves)))]:
        members = inst.members[inst.group[v]]
        if inst.allowed[members, d].all():
            dev[members] = d
    return evaluator(dev, None, cand.source + "+kick")


@dataclass
class Budget:
    """Work planned, in nominal seconds (:mod:`placement.solvers.workload`), from the time limit and the
    instance's size only (deterministic): :data:`~placement.solvers.workload.NOMINAL_SHARE` of the time
    limit, less the lowering and the final plan.

    Attributes:
        heuristics: the warm-start heuristics to run: one device, then those of :data:`WARM_START` whose
            estimated cost fits ``warm_share`` of the work (taken in that order), run cheapest first.
        splits: the device counts whose balanced and layer splits are predicted too (each costing its
            computation and a prediction of :data:`~placement.solvers.search.PREDICT_UNITS`
            simulations; a heuristic costs :func:`warm_cost`): as many of
            :func:`~placement.solvers.topo.split_counts` as fit what the heuristics left, spread
            evenly from the fewest devices to all (all of them when only one fits). When neither a
            heuristic nor a split fits, the splits onto every device are the one multi-device
            candidate (two predictions and a pass over the nodes: cheaper than any heuristic on a
            large graph, and the loosest in memory).
        warm_seconds: nominal seconds of the warm start so planned.
        ilp_seconds: CP-SAT's nominal seconds, its coarsening and model building included (its
            deterministic limit is a fraction of what is left for the solve).
        search_seconds: nominal seconds of the polish and LNS rounds, spent as simulations
            (:attr:`search_evals`; an LNS step is charged as simulations: :meth:`lns_units`).
        sim_seconds: the nominal seconds of one simulation.
        microbatches: simulated per step.
        heuristics_only: neither CP-SAT nor LNS could build a model of this graph (too large for
            :data:`~placement.solvers.workload.MAX_MODEL_TERMS`): the heuristics may plan
            :data:`~placement.solvers.workload.HEURISTICS_ONLY_SHARE` of the time limit, the polish
            gets what the planned work leaves.
        final_seconds: kept for finishing the finalists' plans (:func:`_final_plan`).
    """

    heuristics: list[str]
    splits: list[int]
    warm_seconds: float
    ilp_seconds: float
    search_seconds: float
    sim_seconds: float
    microbatches: int
    heuristics_only: bool = False
    final_seconds: float = 0.0

    @property
    def search_evals(self) -> int:
        """Simulations the search may run."""
        return int(self.search_seconds / self.sim_seconds)

    def price(self, inst: Instance, dev: np.ndarray) -> None:
        """Re-estimate a simulation's seconds from the plan the search starts from (its cut edges, which
        before the warm start are a guess): on an RNN unrolled over its tokens, transfers make up half
        the simulation."""
        cut = int(np.count_nonzero(dev[inst.src] != dev[inst.dst]))
        self.sim_seconds = simulation_seconds(inst, self.microbatches, cut)

    def coarsen_units(self, inst: Instance) -> int:
        """Simulations one coarsening of the whole graph is charged (a polish's segments)."""
        return int(coarsen_seconds(inst) / self.sim_seconds) + 1

    def lns_units(self, inst: Instance, stats: dict[str, float]) -> int:
        """Simulations that LNS steps are charged (beyond their own simulations): the nominal seconds of
        their coarsenings, of splitting each window out and building its model (by its size), and of the
        deterministic time their CP-SAT solves used. The deterministic time, not the clock, so that a
        seed reproduces the search; not the step's whole budget, since a small neighbourhood is often
        solved to optimality at once."""
        nominal = (
            stats["deterministic_s"] / DETERMINISTIC_PER_SECOND
            + stats["coarsenings"] * coarsen_seconds(inst)
            + stats["steps"] * quotient_seconds(inst)
            + stats["terms"] * SECONDS_PER_TERM
        )
        return int(nominal / self.sim_seconds)

    def lns_step_units(self, inst: Instance, cfg: CpSatSettings) -> int:
        """What one LNS step may cost, in simulations: its solve, a coarsening, its window and a model of
        the usual size (:func:`~placement.solvers.workload.window_terms`)."""
        terms = min(MAX_MODEL_TERMS, window_terms(inst, cfg.lns_window, cfg.lns_base))
        nominal = cfg.lns_step_seconds + coarsen_seconds(inst) + quotient_seconds(inst) + terms * SECONDS_PER_TERM
        return int(nominal / self.sim_seconds) + 2

    @classmethod
    def of(cls, problem: Problem, inst: Instance, cfg: CpSatSettings) -> Budget:
        mb = max(1, problem.microbatches or 1)
        sim = simulation_seconds(inst, mb, inst.n // 10)  # a cut edge per ten nodes, until a plan is known
        reserve = final_seconds(inst, 2)  # the search's best and one heuristic's plan, known before choosing
        total = max(0.0, NOMINAL_SHARE * problem.time_limit - instance_seconds(inst.n) - reserve)
        cost = {name: warm_cost(name, inst, sim) for name in WARM_START}
        heuristics_only = inst.num_devices > 1 and not _models_fit(inst, cfg)
        if heuristics_only:  # no CP-SAT nor LNS to come: the heuristics are the search
            cap = max(0.0, HEURISTICS_ONLY_SHARE * problem.time_limit - instance_seconds(inst.n) - reserve)
        else:
            cap = cfg.warm_share * total
        names = ["single"]
        warm = cost["single"]
        for name in WARM_START:
            if name != "single" and warm + cost[name] <= cap:
                names.append(name)
                warm += cost[name]
        names.sort(key=lambda name: (name != "single", cost[name]))  # the cheapest first, should the clock cut
        counts = split_counts(inst)
        per_split = split_cost(inst, sim)
        fit = min(len(counts), max(0, int((cap - warm) / per_split)))
        # Spread from the fewest devices to all; one count alone is all of them, the loosest in memory.
        splits = [counts[round(i * (len(counts) - 1) / max(1, fit - 1))] for i in range(fit)] if fit > 1 else counts[len(counts) - fit :]
        if len(names) == 1 and not splits:  # always a candidate that may use several devices
            splits = counts[-1:]
        warm += len(splits) * per_split
        final = final_seconds(inst, len(names) + 2)  # every heuristic's plan, the best split, the search's best
        avail = max(0.0, total - warm - (final - reserve))
        ilp = 0.0 if heuristics_only else cfg.ilp_share * avail
        return cls(
            heuristics=names, splits=splits, warm_seconds=warm, ilp_seconds=ilp, search_seconds=avail - ilp,
            sim_seconds=sim, microbatches=mb, heuristics_only=heuristics_only, final_seconds=final,
        )  # fmt: skip


def _lns_obstacle(inst: Instance, cfg: CpSatSettings) -> str | None:
    """Why LNS cannot run on ``inst``, judged from sizes alone: a coarsening of the whole graph (one per
    new incumbent) costing more than a round of steps, or models too large to build (free nodes times
    device pairs); None when it can."""
    if coarsen_seconds(inst) > cfg.lns_round * cfg.lns_step_seconds:
        return "coarsening the graph costs more than a round of LNS"
    terms = window_terms(inst, cfg.lns_window, cfg.lns_base)
    if terms > MAX_MODEL_TERMS:
        return f"its models would be too large (~{terms} terms)"
    return None


def _models_fit(inst: Instance, cfg: CpSatSettings) -> bool:
    """Whether CP-SAT (on the whole graph, or on a coarsening with every coarse node free) or LNS could
    build a model of at most :data:`~placement.solvers.workload.MAX_MODEL_TERMS`, from sizes alone."""
    D = inst.num_devices
    if inst.n * D <= cfg.full_limit:
        return True
    if window_terms(inst, max(8, cfg.coarse_limit // D), 0) <= MAX_MODEL_TERMS:
        return True
    return _lns_obstacle(inst, cfg) is None


def _ilp_stage(
    inst: Instance,
    evaluator: Evaluator,
    incumbent: Candidate,
    cfg: CpSatSettings,
    seconds: float,
    deadline: float,
    seed: int,
) -> tuple[Candidate | None, dict[str, Any]]:
    """Solve the model of the whole graph or of a coarsening; judge its solution by the simulator.

    The coarsening and the model's building are charged their estimated nominal seconds out of
    ``seconds`` and skipped, before they start, when they would take more than half of it or the model
    would pass :data:`~placement.solvers.workload.MAX_MODEL_TERMS` (``info["skipped"]`` says why,
    ``info["charged_s"]`` what was spent)."""
    D = inst.num_devices
    whole = inst.n * D <= cfg.full_limit
    exact = whole and inst.n * D * D <= cfg.exact_limit
    info: dict[str, Any] = {"exact": exact, "charged_s": 0.0}
    co = None
    target = inst
    if not whole:
        cost = coarsen_seconds(inst)
        if cost > 0.5 * seconds:
            info["skipped"] = f"coarsening {inst.n} nodes (~{cost:.1f} s) would take most of CP-SAT's {seconds:.1f} s"
            return None, info
        info["charged_s"] += cost
        co = coarsen(inst, max(8, cfg.coarse_limit // D))
        target = co.coarse
    info["graph"] = "full" if co is None else f"coarse ({co.size} nodes)"
    terms = model_terms(target, contention=exact, reverse_backward=exact)
    info["terms"] = terms
    if terms > MAX_MODEL_TERMS or info["charged_s"] + terms * SECONDS_PER_TERM > 0.5 * seconds:
        info["skipped"] = f"its model (~{terms} terms) is too large for CP-SAT's {seconds:.1f} s"
        return None, info
    info["charged_s"] += terms * SECONDS_PER_TERM
    priority = incumbent.starts
    hint_dev = incumbent.dev
    if co is not None:
        hint_dev = co.project(incumbent.dev)
        if priority is not None:
            priority = np.asarray([min(priority[v] for v in mem) for mem in co.members])
    model = LatencyModel(target, contention=exact, reverse_backward=exact)
    info["hint_ms"] = model.hint(hint_dev, priority)
    if co is not None and abs(info["hint_ms"] - incumbent.step_ms) > MODEL_TRUST * incumbent.step_ms:
        info["skipped"] = "the model's time of the incumbent is too far from its simulated step"
        return None, info
    solve_seconds = seconds - info["charged_s"]
    share = 0.6 if exact else 1.0
    result = model.solve(
        share * solve_seconds, seed=seed, workers=cfg.workers,
        wall_limit=max(0.05, deadline - time.perf_counter()),
        presolve=target.n * D <= cfg.full_limit // 2,
    )  # fmt: skip
    info.update(
        status=result.status, objective_ms=result.objective_ms, model_bound_ms=result.bound_ms,
        seconds=round(result.wall_s, 3), size=result.size, stopped_by_wall_clock=result.stopped_by_wall_clock,
    )  # fmt: skip
    bound_ms, valid = result.bound_ms, co is None and result.relaxation
    if exact:
        # The exact model is not a relaxation of the simulator's own order; a relaxed solve proves the bound.
        relaxed = LatencyModel(target, contention=True, reverse_backward=False)
        if result.status in ("OPTIMAL", "FEASIBLE"):
            relaxed.hint(result.dev, None)
        rb = relaxed.solve(
            (1 - share) * solve_seconds, seed=seed, workers=cfg.workers,
            wall_limit=max(0.05, deadline - time.perf_counter()),
        )  # fmt: skip
        bound_ms, valid = rb.bound_ms, rb.relaxation
        info["relaxed_status"] = rb.status
        info["stopped_by_wall_clock"] = info["stopped_by_wall_clock"] or rb.stopped_by_wall_clock
    info["bound_ms"] = bound_ms
    info["bound_valid"] = bool(valid) and bool(np.isfinite(bound_ms)) and bound_ms > 0
    if result.status not in ("OPTIMAL", "FEASIBLE"):
        return None, info
    if co is None:
        return evaluator(result.dev, result.seq, "cp-sat"), info
    return evaluator(co.expand(result.dev), co.expand_seq(result.seq), "cp-sat (coarse)"), info


def _check_latency(problem: Problem, name: str) -> None:
    if problem.objective != "latency":
        raise ConfigurationError(
            f"solver {name!r} minimises the latency of one step; for objective={problem.objective!r} "
            "use solver='auto' (it calls the pipeline solver)"
        )


__all__ = ["WARM_START", "CpSatSettings", "cp_sat", "improve", "warm_cost", "warm_start"]
