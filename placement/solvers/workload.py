"""What the phases of ``solver="auto"`` cost, estimated from an instance's size alone.

``auto`` plans its work in *nominal seconds*: the seconds a phase takes on a quiet reference machine
(this project's 2-core test machine), estimated here from the numbers of nodes, edges and devices,
never read from the clock. So which phases run, which heuristics start the search, and how many
simulations and large-neighbourhood steps the search takes are the same on a quiet and on a loaded
machine, and a seed reproduces the plan; the wall clock is only a safety net that the plan reports
(:mod:`placement.solvers.auto`).

The estimates need not be exact, only deterministic and of the right order: ``auto`` plans
:data:`NOMINAL_SHARE` of its time limit, so a machine about twice as slow as the estimates still
finishes inside the limit without the safety net. They are fits of times measured on random layered
DAGs of 1k to 100k nodes (``benchmarks/simulate_scaling.py``'s generator) and on the benchmark graphs;
``benchmarks/auto_scaling.py`` prints each estimate beside the measured time, to refit them when a
heuristic or the simulator changes speed.

Model sizes are counted in *terms* (variables plus constraints) by :func:`model_terms`, from the
instance, before any model is built: building takes about :data:`SECONDS_PER_TERM` each, and CP-SAT
on a model past :data:`MAX_MODEL_TERMS` would spend its whole budget before its first solution.
"""

from __future__ import annotations

import math

import numpy as np

from placement.solvers.instance import Instance

#: The fraction of the time limit auto plans to spend: the rest is headroom for a slow or busy machine.
NOMINAL_SHARE = 0.5
#: The fraction it plans for the heuristics when neither CP-SAT nor LNS can run (a graph too large for
#: their models): a heuristic runs to its end, its result does not depend on the clock, and nothing after
#: it needs the headroom.
HEURISTICS_ONLY_SHARE = 0.7

# Nominal seconds of each warm-start heuristic: a + e * nodes + b * nodes x devices + c * nodes^2. The
# list schedulers try every device for every node and book every link a transfer crosses, hence the
# weight of nodes x devices (past 16 devices priced all at once with NumPy, LinkBook.ready_row), and a
# per-node cost that dominates on a few devices; m-TOPO packs once per device count (its b is a pack's
# cost per node times the counts); m-SCT's favourite-child LP is quadratic in the nodes. Fitted (CPU
# seconds, with about a tenth of margin, measured under a load of 7-8 on the 2-core machine, which
# inflates CPU time) on random layered DAGs: 3,000 nodes on 8 devices (HEFT 0.21 s, m-ETF 0.25 s,
# m-SCT 2.3 s), 1,000 and 10,000 nodes on 128 (m-ETF 14.0 s, HEFT 4.4 s, critical path 5.2 s,
# m-TOPO 38 s on 10,000; m-SCT 6.0 s on 3,000).
_HEURISTIC_FIT: dict[str, tuple[float, float, float, float]] = {
    "single": (1e-3, 0.0, 5e-7, 0.0),
    "m-topo": (5e-3, 0.0, 4.5e-5, 0.0),
    "heft": (5e-3, 5e-5, 3.5e-6, 0.0),
    "critical-path": (5e-3, 4.5e-5, 4e-6, 0.0),
    "m-etf": (5e-3, 2e-5, 1.15e-5, 0.0),
    "m-sct": (5e-3, 0.0, 1.1e-5, 2.2e-7),
}

#: Building a CP-SAT model: nominal seconds per term (measured on the latency model).
SECONDS_PER_TERM = 8e-6
#: The largest model auto builds: beyond, its graph is coarsened further or left to the heuristics.
MAX_MODEL_TERMS = 150_000


def heuristic_seconds(name: str, inst: Instance) -> float:
    """Nominal seconds of the warm-start heuristic ``name`` on ``inst``."""
    a, e, b, c = _HEURISTIC_FIT[name]
    return a + e * inst.n + b * inst.n * inst.num_devices + c * inst.n * inst.n


def simulation_seconds(inst: Instance, microbatches: int, cut: int) -> float:
    """Nominal seconds of one simulation: a node's tasks and, dearer, a cut edge's transfers (routes and
    link queues), per microbatch."""
    return 3e-4 + (5e-6 * inst.n + 1.1e-5 * cut) * microbatches


def split_seconds(inst: Instance) -> float:
    """Nominal seconds of computing one device count's balanced and layer splits
    (:func:`placement.solvers.topo.balanced_split`, :func:`~placement.solvers.topo.layer_split`)."""
    return 1e-3 + 1.5e-5 * inst.n


def instance_seconds(nodes: int) -> float:
    """Nominal seconds of making the problem of ``nodes`` nodes (resolving its constraints, the limit
    counting from there), lowering it, building its instance and computing its lower bound (about 0.3,
    0.4, 0.5 and 0.5 s on 100,000 nodes x 128 devices; resolving took 1.5 s before acd8857)."""
    return 0.01 + 5e-5 * nodes


def coarsen_seconds(inst: Instance) -> float:
    """Nominal seconds of one :func:`placement.solvers.coarsen.coarsen` of ``inst`` (edge contraction with
    a heap and bounded path searches)."""
    return 1e-3 + 2e-5 * inst.num_edges * math.log2(2 + inst.num_edges)


def quotient_seconds(inst: Instance) -> float:
    """Nominal seconds of building a coarse instance from a partition of ``inst``
    (:func:`placement.solvers.coarsen.quotient`: what each LNS step does to split its window out)."""
    return 1e-3 + 1e-5 * (inst.n + inst.num_edges)


def final_seconds(inst: Instance, finalists: int) -> float:
    """Nominal seconds of finishing ``finalists`` plans and of what the wall clock cannot cut short.
    Each finalist carries the prediction it was judged by, so finishing it simulates nothing
    (:func:`~placement.problem.finish_plan` with ``prediction``): its checks and records, and the
    graph's fingerprint once. Kept too: a prediction (about seven simulations) under way when the wall
    clock stops the search, which cannot interrupt it."""
    return 0.2 + (8e-6 + 3e-6 * finalists) * inst.n + 7 * (3e-4 + 1e-5 * inst.n)


def window_terms(inst: Instance, window: int, base: int) -> int:
    """About the terms of one large-neighbourhood step's model (:mod:`placement.solvers.lns`): ``base``
    coarse nodes fixed, ``window`` fine nodes free on every device, whose device pairs dominate."""
    D = inst.num_devices
    tasks = 2 if inst.has_bwd else 1
    return 4 * (base + window) * (2 + tasks) + tasks * window * (D * D + 3 * D)


def model_terms(
    inst: Instance,
    fixed: dict[int, int] | None = None,
    *,
    contention: bool = False,
    reverse_backward: bool = False,
) -> int:
    """About how many variables and constraints :class:`~placement.solvers.ilp.LatencyModel` would have
    for these arguments, counted without building it: per node a literal and a task per allowed device;
    per producer, arrival rows for every (sending, receiving) device pair its consumers could use (the
    term that grows with the square of the devices); optional link intervals and pairwise order rows."""
    fixed = fixed or {}
    D = inst.num_devices
    options = inst.allowed.sum(axis=1).astype(np.int64)
    for v in fixed:
        options[v] = 1
    tasks = 2 if inst.has_bwd else 1
    terms = int(options.sum()) * (1 + tasks) + 4 * inst.n
    for u in range(inst.n):
        succs = inst.succs[u]
        if not succs:
            continue
        if any(options[v] > 1 for v, _ in succs):
            targets = D
        else:
            targets = len({fixed[v] if v in fixed else int(np.argmax(inst.allowed[v])) for v, _ in succs})
        classes = len({float(inst.nbytes[e]) for _, e in succs})
        pairs = int(options[u]) * targets * classes
        terms += tasks * (pairs + targets + sum(1 + int(options[v]) for v, _ in succs))
        if contention:
            terms += 8 * tasks * int(options[u]) * targets
    if reverse_backward:
        terms += 4 * inst.n * inst.n
    return terms
