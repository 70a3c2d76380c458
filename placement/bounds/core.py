"""Lower bounds on the step time of a graph on a cluster, so a plan can be reported as a ratio to them.

Every bound ignores communication and holds for any assignment and order the simulator accepts
(:func:`placement.simulate`), with times from the same :class:`CostModel`:

- **Critical path.** Each node at its fastest allowed device, no transfers: the longest chain of
  dependent tasks. In training (graphs of forward nodes) a chain runs forward to some node ``x`` and then
  backward from ``x`` through its predecessors, so the bound is ``max_x Lf(x) + Lb(x)`` where ``Lf(x)``
  is the longest forward path ending at ``x`` and ``Lb(x)`` the longest backward path starting at it.
  With ``m`` microbatches one microbatch's chain takes ``1/m`` of it.
- **Work.** No device is busier than the step is long, so the step is at least the best fractional
  spread of all node times over the devices. For one speed class of devices that is total work /
  devices. Devices of different speeds are grouped into classes (same kind and figures) and the bound is
  the linear relaxation of makespan on unrelated machines: ``min T`` such that each node's work is split
  over classes with ``sum_v x_vc t_vc <= n_c T`` for each class ``c`` of ``n_c`` devices. Two classes are
  solved exactly by ordering nodes by their time ratio; three or more with OR-Tools GLOP.
- **Memory.** The memory the step needs at some instant summed over devices: the static footprint of
  every node (parameters, buffers, in training gradients and optimizer state; or ``memory_bytes``) plus,
  in training, the activations alive when the first backward ends (at least those on the heaviest path
  to a sink, minimised over sinks), in inference the largest output. ``min_devices`` is the fewest
  devices whose capacities add up to it; ``fits`` says whether the cluster has that many and every
  node's static footprint fits some device.

- **Series.** For one microbatch of a graph without explicit backward nodes: the graph cut into blocks at
  the nodes every path crosses, each block's forward and backward span bounded with the transfers its
  placement needs, summed over the series and minimised over the cut nodes' devices
  (:mod:`placement.bounds.series`, :mod:`placement.bounds.forkjoin`). Unlike the two above it counts
  communication; it is 0 when it does not apply.

``step_ms = max(critical_path_ms, work_ms, series_ms)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from graphc.ir.graph import Graph
from placement.bounds.series import series_bound, timed_graph
from placement.cluster import Cluster, ClusterLike
from placement.cost_model import CostModel
from placement.errors import ConfigurationError, PlacementError
from placement.lowering import Lowered, gc_paused, lower


@dataclass(frozen=True)
class Bound:
    """Lower bounds for one graph on one cluster (times in ms, memory in bytes); see the module docstring."""

    critical_path_ms: float
    work_ms: float
    memory_bytes: float
    min_devices: int
    num_devices: int
    fits: bool
    mode: str
    microbatches: int
    series_ms: float = 0.0

    @property
    def step_ms(self) -> float:
        """The strongest time bound: the largest of the critical path, work and series bounds."""
        return max(self.critical_path_ms, self.work_ms, self.series_ms)

    def ratio(self, step_ms: float) -> float:
        """How far a plan's step time is above the bound (1.0 = optimal as far as the bound can tell)."""
        return step_ms / self.step_ms if self.step_ms > 0 else math.inf if step_ms > 0 else 1.0

    def summary(self) -> str:
        return (
            f"lower bound ({self.mode}, {self.microbatches} microbatch(es)): {self.step_ms:.3f} ms "
            f"[critical path {self.critical_path_ms:.3f} ms, work {self.work_ms:.3f} ms, "
            f"series {self.series_ms:.3f} ms]; memory "
            f"{self.memory_bytes / 1e9:.2f} GB needs >= {self.min_devices} of {self.num_devices} devices"
            + ("" if self.fits else " (DOES NOT FIT)")
        )


def lower_bound(
    graph: Graph,
    cluster: ClusterLike,
    cost_model: CostModel | None = None,
    mode: str = "training",
    *,
    microbatches: int = 1,
    optimizer_state_factor: float = 2.0,
) -> Bound:
    """Critical-path, work, series and memory bounds for ``graph`` on ``cluster`` (see the module docstring)."""
    if mode not in ("training", "inference"):
        raise ConfigurationError(f"lower_bound: mode must be 'training' or 'inference', got {mode!r}")
    cluster = Cluster.resolve(cluster)
    lowered = lower(graph, cluster, cost_model or CostModel(cluster), mode, optimizer_state_factor)
    return lowered_bound(lowered, microbatches)


def lowered_bound(lowered: Lowered, microbatches: int = 1) -> Bound:
    """:func:`lower_bound` of a problem already lowered (:mod:`placement.lowering`)."""
    if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
        raise ConfigurationError(f"lower_bound: microbatches must be an integer >= 1, got {microbatches!r}")
    with gc_paused():
        return _bound(lowered, microbatches)


def _bound(lw: Lowered, m: int) -> Bound:
    n = lw.n
    # Per class, per node: forward and backward of one microbatch (inf where the node may not run).
    fwd_class = np.where(lw.kinds_ok, lw.class_fwd / m, np.inf)
    bwd_class = np.where(lw.kinds_ok, lw.class_bwd / m, np.inf)
    allowed_nowhere = np.flatnonzero(~lw.kinds_ok.any(axis=1))
    if len(allowed_nowhere):
        nd = lw.data[int(allowed_nowhere[0])]
        raise PlacementError(f"node {nd.name!r} may run on {nd.allowed_kinds}, which no device of {lw.cluster.name!r} is")
    fwd_min = fwd_class.min(axis=1).tolist()
    bwd_min = bwd_class.min(axis=1).tolist()
    preds = [[u for u, _ in ps] for ps in lw.preds]
    is_input = lw.is_input.tolist()

    lf = [0.0] * n
    lb = [0.0] * n
    for v in range(n):
        lf[v] = fwd_min[v] + max((lf[p] for p in preds[v]), default=0.0)
        if lw.has_bwd:
            lb[v] = bwd_min[v] + max((lb[p] for p in preds[v] if not is_input[p]), default=0.0)
    critical = max((lf[v] + lb[v] for v in range(n)), default=0.0)

    times = [tuple(row) for row in (m * (fwd_class + bwd_class)).tolist()]
    work = work_bound(times, [len(c) for c in lw.classes])
    series = 0.0
    if m == 1 and not lw.explicit_backward and n:
        tg = timed_graph(lw, fwd_class[:, lw.device_class], bwd_class[:, lw.device_class])
        series = series_bound(tg) or 0.0

    static = lw.static.tolist()
    own = (lw.held / m).tolist()  # activations in training of forward nodes, else outputs (0 with memory_bytes)
    if lw.has_bwd:
        heavy = [0.0] * n  # heaviest activation path ending at v
        sinks = [True] * n
        for v in range(n):
            heavy[v] = own[v] + max((heavy[p] for p in preds[v]), default=0.0)
            for p in preds[v]:
                sinks[p] = False
        dynamic = min((heavy[v] for v in range(n) if sinks[v]), default=0.0)
    else:
        dynamic = max(own, default=0.0)
    memory = sum(static) + dynamic
    capacities = sorted((d.memory_bytes for d in lw.devices), reverse=True)
    # The fewest devices whose capacities add up to the memory (largest first; at least one).
    running = list(itertools.accumulate(capacities))
    need = next((k + 1 for k, total in enumerate(running) if total >= memory), None)
    if need is None:
        need = len(capacities) + math.ceil((memory - running[-1]) / capacities[0])
    fits = need <= len(capacities) and max(static, default=0.0) <= capacities[0]
    return Bound(critical, work, memory, need, len(capacities), fits, lw.mode, m, series)


def work_bound(times: list[tuple[float, ...]], counts: list[int]) -> float:
    """``min T`` of the fractional assignment of node times to device classes (module docstring):
    ``times[v][c]`` is node ``v``'s time on class ``c`` (``inf``: not allowed), ``counts[c]`` the class's
    devices. Exact for one and two classes, GLOP's optimum less its tolerance for more."""
    if not times:
        return 0.0
    if len(counts) == 1:
        return sum(t[0] for t in times) / counts[0]
    if len(counts) == 2:
        return _two_class_bound([t[0] for t in times], [t[1] for t in times], counts[0], counts[1])
    return _lp_bound(times, counts)


def _two_class_bound(a: list[float], b: list[float], na: int, nb: int) -> float:
    """Exact fractional makespan on two classes: nodes move from B to A in order of a/b (smallest first)."""
    inf = math.inf
    load_a = sum(x for x, y in zip(a, b) if y == inf)
    load_b = sum(y for x, y in zip(a, b) if x == inf)
    flexible = [(x, y) for x, y in zip(a, b) if x != inf and y != inf]
    load_b += sum(y for _, y in flexible)
    flexible.sort(key=lambda xy: xy[0] / xy[1] if xy[1] > 0 else (inf if xy[0] > 0 else 0.0))
    if load_a / na >= load_b / nb:
        return load_a / na
    for x, y in flexible:
        if (load_a + x) / na >= (load_b - y) / nb:
            # Split this node so that both classes end together.
            frac = (na * load_b - nb * load_a) / (nb * x + na * y) if (nb * x + na * y) > 0 else 0.0
            return (load_a + frac * x) / na
        load_a += x
        load_b -= y
    return max(load_a / na, load_b / nb)


def _lp_bound(times: list[tuple[float, ...]], counts: list[int]) -> float:
    # OR-Tools' LP wrapper loads on first use, on purpose: only this rarely needed bound uses it
    from ortools.linear_solver import pywraplp

    merged: dict[tuple[float, ...], int] = {}
    for t in times:
        merged[t] = merged.get(t, 0) + 1
    solver = pywraplp.Solver.CreateSolver("GLOP")
    big = solver.infinity()
    makespan = solver.NumVar(0, big, "T")
    load_terms: list[list] = [[] for _ in counts]
    for r, (t, mult) in enumerate(merged.items()):
        share = []
        for c, tc in enumerate(t):
            if tc == math.inf:
                continue
            x = solver.NumVar(0, mult, f"x{r}_{c}")
            share.append(x)
            load_terms[c].append(tc * x)
        solver.Add(solver.Sum(share) == mult)
    for c, terms in enumerate(load_terms):
        if terms:
            solver.Add(solver.Sum(terms) <= counts[c] * makespan)
    solver.Minimize(makespan)
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        raise PlacementError("lower_bound: the work LP found no optimum")
    # GLOP's tolerances are about 1e-7 relative; shave that off so the bound stays a bound.
    return makespan.solution_value() * (1 - 1e-6)
