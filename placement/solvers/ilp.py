r"""Joint placement and scheduling with OR-Tools CP-SAT: the model, its solution and its proven bound.

The model places every node of an :class:`~placement.solvers.instance.Instance` (the full graph, or a
coarse one from :mod:`placement.solvers.coarsen`) and schedules its tasks, minimising the step time.

Data. Nodes :math:`v \in V` in topological order, devices :math:`d \in \mathcal{D}`, edges
:math:`e = (u, v)`. Tasks: a forward task :math:`F_v` per node and, when training a graph of forward
nodes, a backward task :math:`B_v`. Durations :math:`f_{vd}, b_{vd}` (the cost model's, on device
:math:`d`); :math:`c_e(a, b)` the time of edge :math:`e`'s tensor from device :math:`a` to :math:`b`
(:math:`c_e(a,a) = 0`). Memory: :math:`m_v` (static + held), :math:`s_u` (bytes of :math:`u`'s output
on a receiving device), capacities :math:`K_d`. All times are integers in ticks (the power of ten
nearest below ``horizon / 10^6``), rounded down, so the model never overestimates.

Variables. :math:`x_{vd} \in \{0,1\}` (node on device; one set per colocation group, fixed where a
node may use one device); start and end :math:`S_t, E_t` of every task; :math:`A_{ub}` the arrival of
:math:`u`'s output on device :math:`b`; :math:`y_{ub}` "some consumer of :math:`u` is on :math:`b`";
:math:`G_{ub}` the end of the last backward of :math:`u`'s consumers on :math:`b`; :math:`\Phi_d` the end
of the last forward on :math:`d`; the step :math:`C`.

Constraints, each added by the method named:

* ``_add_assignment``: :math:`\sum_d x_{vd} = 1`, :math:`x_{vd} = 0` where not allowed, one set of
  :math:`x` per colocation group.
* ``_add_tasks``: per task and allowed device an optional interval :math:`[S_t, E_t)` of length
  :math:`f_{vd}` (or :math:`b_{vd}`) present iff :math:`x_{vd}` (the alternatives share :math:`S_t, E_t`).
* ``_add_no_overlap``: per device, no two present intervals overlap (NoOverlap).
* ``_add_consumers``: a producer's out-edges are grouped into classes :math:`k` of equal transfer
  time :math:`c_{uk}` (one class when all its edges carry the same tensor, as in traced graphs);
  :math:`x_{vb} \Rightarrow y_{ukb}` for every consumer :math:`v` of class :math:`k`.
* ``_add_forward_precedence``: :math:`S_{F_v} \ge E_{F_u}`; :math:`A_{ub} \ge E_{F_u} + c_{uk}(a, b)` if
  :math:`x_{ua} \wedge y_{ukb}`; :math:`S_{F_v} \ge A_{ub}` if :math:`x_{vb}`: one transfer per
  (producer, receiving device), as long as its largest edge there, which every consumer there awaits.
* ``_add_backward_precedence`` (training): :math:`S_{B_v} \ge E_{F_v}`; :math:`S_{B_u} \ge E_{B_v}`;
  :math:`G_{ub} \ge E_{B_v}` if :math:`x_{vb}` for every edge :math:`(u,v)` with :math:`u` needing a
  gradient; :math:`S_{B_u} \ge G_{ub} + c_{uk}(b, a)` if :math:`x_{ua} \wedge y_{ukb}`: the gradient
  leaves each device once its last consumer there is done.
* ``_add_barrier`` (training, GPipe): :math:`\Phi_d \ge E_{F_v}` and :math:`S_{B_v} \ge \Phi_d` if
  :math:`x_{vd}`: a device starts no backward before its forwards are done.
* ``_add_memory``: :math:`\sum_v m_v x_{vd} + \sum_u s_u r_{ud} + \sum_u s_u q_{ud} \le K_d` with
  :math:`r_{ud} \ge y_{ud} - x_{ud}` (the tensor received) and, in training,
  :math:`q_{ud} \ge \sum_b r_{ub} - (|\mathcal{D}|-1)(1 - x_{ud})` (gradients received back): the
  :class:`~placement.solvers.listsched.MemoryLedger` accounting, an upper bound on the simulated peak,
  so a solution never fails the simulator's memory check. Left out when even placing everything
  everywhere could not overflow a device.
* ``_add_symmetry_breaking``: devices that are interchangeable (same times, capacity, allowed nodes
  and routes to every other device) are used in order of first use.
* ``_add_link_contention`` (optional, small instances): one optional interval per (producer, sending
  device, receiving device), present iff :math:`x_{ua} \wedge y_{ub}`, starting after :math:`E_{F_u}`
  and ending before :math:`A_{ub}` (and one back for the gradient, between :math:`G_{ub}` and
  :math:`S_{B_u}`); NoOverlap on every link resource a route crosses; one output's sends leave in
  the order of the receiving devices, as the simulator books them.
* ``_add_reverse_backward_order`` (optional, small instances): for two nodes sharing a device,
  :math:`F_u` before :math:`F_v` iff :math:`B_v` before :math:`B_u`, the order the simulator runs a
  plan's per-device order in.
* Objective: minimise :math:`C \ge E_t` for every task.

Agreement with the simulator (:mod:`placement.simulate`). With no two transfers sharing a link at the
same time, a schedule of this model and the simulator's timeline of the same assignment and order per
device agree: same durations, same transfer per (producer, device), the same gradient rule and the
same GPipe barrier (tests check it against brute force). They differ in what follows, each of which
can only make the simulator slower, so the model is a relaxation of the simulator and CP-SAT's proven
bound is a lower bound of every plan:

* link contention: the simulator serialises transfers that share a link, first come first served;
  the model ignores it, or (``contention=True``) serialises them too but in the order it likes;
* a producer sending several *indexed* outputs to one device: the simulator sends the largest edge
  per output index, summed; the model the largest edge (the same for traced and imported graphs,
  whose edges carry the whole output);
* the execution order: the simulator runs an order given per device forwards first and backwards in
  reverse, or its own priority; the model may run backwards in any order. The solver therefore
  simulates the model's order and the simulator's own, and keeps the faster;
* durations are rounded down to ticks.

With ``reverse_backward=True`` the model runs backwards in the simulator's order for a given plan
order, which makes its optimum a plan the simulator reproduces exactly (on contention-free links),
but it is then no relaxation of plans run with the simulator's own priority.

The bound is reported only when it is a bound of the *full* problem: the model is of the full graph
(not coarse), has no memory rows (which, being the conservative ledger, could cut off plans the
simulator accepts), no fixed nodes and no reverse-order rows.

Determinism: one worker, or several with ``interleave_search`` (OR-Tools' deterministic parallel
mode), under a deterministic time limit (``max_deterministic_time``, ``DETERMINISTIC_PER_SECOND``
per second of budget); the wall-clock limit is only a safety net and the result says when it, rather
than the deterministic one, ended the search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from ortools.sat.python import cp_model

from placement.errors import PlacementError
from placement.problem import deterministic_solver
from placement.solvers.instance import Instance
from placement.solvers.modeltime import ModelSchedule, model_schedule

RESOLUTION = 1_000_000  # ticks in the horizon
# CP-SAT's deterministic time per nominal second of budget. Measured on this project's models, one
# deterministic second takes 5 to 100 wall seconds (presolve and propagation are barely charged), so
# a small ratio keeps a solve within its nominal time on a busy 2-core machine.
DETERMINISTIC_PER_SECOND = 0.1


@dataclass
class IlpResult:
    """What one CP-SAT solve found.

    Attributes:
        dev: device id per node of the instance solved.
        seq: per device, its nodes by the model's forward start time.
        objective_ms: the model's step time of the solution (ticks x tick_ms).
        bound_ms: the lower bound CP-SAT proved on the model's optimum, ms.
        status: ``OPTIMAL``, ``FEASIBLE``, ``INFEASIBLE``, ``UNKNOWN``, ``MODEL_INVALID``.
        wall_s: seconds spent in CP-SAT.
        deterministic_s: CP-SAT's deterministic time spent.
        stopped_by_wall_clock: the wall-clock safety limit ended the search (the result may then
            differ between runs).
        relaxation: the model is a relaxation of the simulator on the full problem (bound valid).
        size: numbers of variables and constraints.
    """

    dev: np.ndarray
    seq: list[list[int]]
    objective_ms: float
    bound_ms: float
    status: str
    wall_s: float
    deterministic_s: float
    stopped_by_wall_clock: bool
    relaxation: bool
    size: dict[str, int] = field(default_factory=dict)

    @property
    def optimal(self) -> bool:
        return self.status == "OPTIMAL"


def horizon_ms(inst: Instance) -> float:
    """An upper bound on any sensible step: every task on its slowest device, one after another, plus
    every edge's slowest round trip."""
    work = np.where(inst.allowed, inst.fwd + inst.bwd, 0.0).max(axis=1).sum()
    comm = 0.0
    D = inst.num_devices
    for e in range(inst.num_edges):
        comm += float(max(inst.round_trip_row(e, a).max() for a in range(D))) if D > 1 else 0.0
    return max(float(work + comm), 1e-6)


def memory_binding(inst: Instance) -> bool:
    """Whether any placement could overflow a device under the ledger's accounting."""
    factor = 2.0 if inst.has_bwd else 1.0
    total = float(inst.need.sum() + factor * inst.send_bytes.sum() * max(1, inst.num_devices - 1))
    return total > float(inst.capacity.min(initial=np.inf))


def interchangeable_classes(inst: Instance) -> list[list[int]]:
    """Devices no placement can tell apart: same node times, capacity, allowed nodes and routes."""
    D = inst.num_devices
    if D < 2:
        return [[d] for d in range(D)]
    classes: list[list[int]] = []
    measured = list(inst.measured.values())
    for d in range(D):
        for cls in classes:
            r = cls[0]
            if _swappable(inst, r, d, measured):
                cls.append(d)
                break
        else:
            classes.append([d])
    return classes


def _swappable(inst: Instance, a: int, b: int, measured: list[np.ndarray]) -> bool:
    if not (
        np.array_equal(inst.fwd[:, a], inst.fwd[:, b])
        and np.array_equal(inst.bwd[:, a], inst.bwd[:, b])
        and np.array_equal(inst.allowed[:, a], inst.allowed[:, b])
        and inst.capacity[a] == inst.capacity[b]
    ):
        return False
    perm = list(range(inst.num_devices))
    perm[a], perm[b] = b, a
    for mat in [inst.lat, inst.inv_bw, *measured]:
        if not np.allclose(mat, mat[np.ix_(perm, perm)], rtol=1e-12, atol=0.0):
            return False
    return True


def canonical_devices(dev: np.ndarray, classes: list[list[int]]) -> np.ndarray:
    """Relabel interchangeable devices so that, within each class, they are first used in order."""
    dev = np.asarray(dev, dtype=np.int64).copy()
    mapping = {}
    for cls in classes:
        if len(cls) < 2:
            continue
        members = set(cls)
        first = []
        for d in dev.tolist():
            if d in members and d not in first:
                first.append(d)
        unused = [d for d in cls if d not in first]
        for old, new in zip(first + unused, cls):
            mapping[old] = new
    if mapping:
        dev = np.asarray([mapping.get(int(d), int(d)) for d in dev], dtype=np.int64)
    return dev


class LatencyModel:
    """The CP-SAT model of the module docstring for one instance.

    ``fixed`` maps node ids to the device they must use (the rest of a large-neighbourhood step);
    ``memory`` and ``symmetry`` switch those families of constraints off.
    """

    def __init__(
        self,
        inst: Instance,
        *,
        fixed: dict[int, int] | None = None,
        memory: bool | None = None,
        symmetry: bool = True,
        contention: bool = False,
        reverse_backward: bool = False,
        horizon: float | None = None,
    ) -> None:
        self.inst = inst
        self.fixed = fixed or {}
        self.model = cp_model.CpModel()
        self.horizon_ms = horizon if horizon is not None else horizon_ms(inst)
        # A power of ten, so that round times (1 ms, 0.25 ms) are whole numbers of ticks.
        self.tick_ms = 10.0 ** math.floor(math.log10(self.horizon_ms / RESOLUTION))
        self.H = int(math.ceil(self.horizon_ms / self.tick_ms))
        self.memory = memory_binding(inst) if memory is None else memory
        # Symmetry breaking is valid only when the devices' roles are not fixed by the caller.
        self.symmetry = symmetry and not self.fixed
        self.has_bwd = inst.has_bwd
        # Auxiliary variables with the rule giving their value in a hinted solution.
        self._aux: list[tuple[object, object]] = []
        self.contention = contention
        self.reverse_backward = reverse_backward and inst.has_bwd
        self._build()

    # -- data ----------------------------------------------------------------------------------
    def ticks(self, ms: float) -> int:
        """ms as whole ticks, rounded down (a hair of slack so 1.0 ms is not 0.9999 ticks)."""
        return int(math.floor(ms / self.tick_ms + 1e-7))

    def _build(self) -> None:
        inst = self.inst
        self.options = [
            [self.fixed[v]] if v in self.fixed else [int(d) for d in np.flatnonzero(inst.allowed[v])]
            for v in range(inst.n)
        ]
        for v, opts in enumerate(self.options):
            if not opts:
                raise PlacementError(f"node {inst.names[v]!r} has no device it may use")
        self._add_assignment()
        self._add_tasks()
        self._add_no_overlap()
        self._add_consumers()
        self._add_forward_precedence()
        if self.has_bwd:
            self._add_backward_precedence()
            self._add_barrier()
        if self.contention:
            self._add_link_contention()
        if self.reverse_backward:
            self._add_reverse_backward_order()
        if self.memory:
            self._add_memory()
        if self.symmetry:
            self._add_symmetry_breaking()
        self._add_objective()

    # -- families of constraints -------------------------------------------------------------
    def _add_assignment(self) -> None:
        """One device per node; one set of literals per colocation group; pins and kinds."""
        m, inst = self.model, self.inst
        self.x: list[dict[int, cp_model.IntVar | bool]] = [dict() for _ in range(inst.n)]
        by_group: dict[int, dict[int, object]] = {}
        for v in range(inst.n):
            g = int(inst.group[v])
            opts = self.options[v]
            shared = by_group.get(g)
            if shared is None:
                if len(opts) == 1:
                    shared = {opts[0]: True}
                else:
                    shared = {d: m.new_bool_var(f"x{v}_{d}") for d in opts}
                    m.add_exactly_one(list(shared.values()))
                by_group[g] = shared
            else:
                # A later member may allow fewer devices (a fixed one): forbid the others.
                for d, lit in shared.items():
                    if d not in opts and lit is not True:
                        m.add(lit == 0)
            self.x[v] = {d: lit for d, lit in shared.items() if d in opts}

    def _lit(self, v: int, d: int):
        return self.x[v].get(d, False)

    def _add_tasks(self) -> None:
        """Start and end of every task; one optional interval per allowed device."""
        m, inst, H = self.model, self.inst, self.H
        n = inst.n
        self.sF = [m.new_int_var(0, H, f"sF{v}") for v in range(n)]
        self.eF = [m.new_int_var(0, H, f"eF{v}") for v in range(n)]
        self.intervals: list[list] = [[] for _ in range(inst.num_devices)]
        self.fdur = [{d: self.ticks(inst.fwd[v, d]) for d in self.x[v]} for v in range(n)]
        for v in range(n):
            self._alternatives(v, self.sF[v], self.eF[v], self.fdur[v], "F")
        self.needs_b = [bool(self.has_bwd and (inst.needs_grad[v] or inst.bwd[v].any())) for v in range(n)]
        if self.has_bwd:
            self.bdur = [{d: self.ticks(inst.bwd[v, d]) for d in self.x[v]} for v in range(n)]
            self.sB = [m.new_int_var(0, H, f"sB{v}") if self.needs_b[v] else None for v in range(n)]
            self.eB = [m.new_int_var(0, H, f"eB{v}") if self.needs_b[v] else None for v in range(n)]
            for v in range(n):
                if self.needs_b[v]:
                    self._alternatives(v, self.sB[v], self.eB[v], self.bdur[v], "B")

    def _alternatives(self, v: int, s, e, dur: dict[int, int], tag: str) -> None:
        m = self.model
        for d, lit in self.x[v].items():
            if lit is True:
                iv = m.new_interval_var(s, dur[d], e, f"{tag}{v}_{d}")
            else:
                iv = m.new_optional_interval_var(s, dur[d], e, lit, f"{tag}{v}_{d}")
            self.intervals[d].append(iv)
        if len(self.x[v]) > 1:
            lo, hi = min(dur.values()), max(dur.values())
            m.add(e - s >= lo)
            m.add(e - s <= hi)

    def _add_no_overlap(self) -> None:
        """A device runs one task at a time."""
        for ivs in self.intervals:
            if len(ivs) > 1:
                self.model.add_no_overlap(ivs)

    def _add_consumers(self) -> None:
        """Per producer, its out-edges grouped by identical transfer times ("classes"), and per class
        and device a literal y: some consumer of the class is on that device (implied by the consumers'
        x; a solver may set it needlessly only to its own loss)."""
        m, inst = self.model, self.inst
        self.classes: list[list[tuple[list[tuple[int, int]], dict[int, object]]]] = []
        for u in range(inst.n):
            groups: dict[tuple, list[tuple[int, int]]] = {}
            for v, e in inst.succs[u]:
                key = (float(inst.nbytes[e]), id(inst.measured.get(e)))
                groups.setdefault(key, []).append((v, e))
            out = []
            for edges in groups.values():
                ys: dict[int, object] = {}
                for b in sorted({b for v, _ in edges for b in self.x[v]}):
                    lits = [self.x[v][b] for v, _ in edges if b in self.x[v]]
                    if any(lit is True for lit in lits):
                        ys[b] = True
                        continue
                    y = m.new_bool_var(f"y{u}_{len(out)}_{b}")
                    self._aux.append((y, lambda h, es=edges, b=b: int(any(h.dev[v] == b for v, _ in es))))
                    for lit in lits:
                        m.add_implication(lit, y)
                    ys[b] = y
                out.append((edges, ys))
            self.classes.append(out)

    def _delay(self, edges: list[tuple[int, int]], a: int, b: int) -> int:
        """Ticks of a class's tensor from device ``a`` to ``b`` (the class's edges cost the same)."""
        return 0 if a == b else self.ticks(self.inst.comm(edges[0][1], a, b))

    def _targets(self, u: int) -> list[int]:
        return sorted({b for edges, ys in self.classes[u] for b in ys})

    def _add_forward_precedence(self) -> None:
        """A forward waits for its inputs: on the same device at once, from another after the transfer.

        The simulator sends a producer's output once to each device holding consumers, sized for the
        largest of their edges there, and every such consumer waits for that one transfer: the arrival
        ``A_ub`` is at least the end of ``u`` plus the time of each class with a consumer on ``b``."""
        m, inst, H = self.model, self.inst, self.H
        self._arrival: list[dict[int, object]] = [dict() for _ in range(inst.n)]
        for u in range(inst.n):
            for v, _ in inst.succs[u]:
                m.add(self.sF[v] >= self.eF[u])
            for b in self._targets(u):
                if list(self.x[u]) == [b]:
                    continue  # producer fixed on b: the plain precedence above is exact there
                A = m.new_int_var(0, H, f"A{u}_{b}")
                self._arrival[u][b] = A
                self._aux.append((A, lambda h, u=u, b=b: self._hint_arrival(h, u, b)))
                for a, xa in self.x[u].items():
                    for edges, ys in self.classes[u]:
                        y = ys.get(b)
                        if y is None:
                            continue
                        ct = m.add(A >= self.eF[u] + self._delay(edges, a, b))
                        lits = [lit for lit in (xa, y) if lit is not True]
                        if len(self.classes[u]) == 1 and xa is not True:
                            lits = [xa]  # A is read only where a consumer is: y adds nothing
                        if lits:
                            ct.only_enforce_if(lits)
                for v, _ in inst.succs[u]:
                    lit = self.x[v].get(b)
                    if lit is not None:
                        ct = m.add(self.sF[v] >= A)
                        if lit is not True:
                            ct.only_enforce_if(lit)

    def _add_backward_precedence(self) -> None:
        """A backward waits for its forward and for the gradient of its output: sent back once from each
        device holding consumers, when the last of them there has finished its backward."""
        m, inst, H = self.model, self.inst, self.H
        self._gradient_done: list[dict[int, object]] = [dict() for _ in range(inst.n)]
        for v in range(inst.n):
            if self.needs_b[v]:
                m.add(self.sB[v] >= self.eF[v])
        for u in range(inst.n):
            if not (self.needs_b[u] and inst.needs_grad[u]):
                continue
            for v, _ in inst.succs[u]:
                if self.needs_b[v]:
                    m.add(self.sB[u] >= self.eB[v])
            for b in self._targets(u):
                if list(self.x[u]) == [b]:
                    continue
                consumers = [(v, self.x[v][b]) for v, _ in inst.succs[u] if b in self.x[v] and self.needs_b[v]]
                if not consumers:
                    continue
                G = m.new_int_var(0, H, f"G{u}_{b}")
                self._gradient_done[u][b] = G
                self._aux.append((G, lambda h, cs=consumers, b=b: max([h.eB[v] for v, _ in cs if h.dev[v] == b], default=0)))
                for v, lit in consumers:
                    ct = m.add(G >= self.eB[v])
                    if lit is not True:
                        ct.only_enforce_if(lit)
                for a, xa in self.x[u].items():
                    for edges, ys in self.classes[u]:
                        y = ys.get(b)
                        if y is None:
                            continue
                        ct = m.add(self.sB[u] >= G + self._delay(edges, b, a))
                        lits = [lit for lit in (xa, y) if lit is not True]
                        if lits:
                            ct.only_enforce_if(lits)

    def _add_link_contention(self) -> None:
        """Transfers that share a link do not overlap (the simulator's circuit model): one optional
        interval per (producer, sending device, receiving device), present when the producer is on the
        one and a consumer on the other, holding every link of the route; the same back for the
        gradient. Sized for the largest class with a consumer there."""
        m, inst, H = self.model, self.inst, self.H
        users: dict[int, list] = {}
        for u in range(inst.n):
            sends: dict[int, list] = {}  # sending device -> (receiving device, presence, start, end)
            for b in self._targets(u):
                ys = [(edges, ycls[b]) for edges, ycls in self.classes[u] if b in ycls]
                if any(y is True for _, y in ys):
                    yany = True
                else:
                    yany = m.new_bool_var(f"yany{u}_{b}")
                    for _, y in ys:
                        m.add_implication(y, yany)
                for a, xa in self.x[u].items():
                    if a == b:
                        continue
                    if xa is True and yany is True:
                        z = True
                    else:
                        z = m.new_bool_var(f"z{u}_{a}_{b}")
                        m.add_bool_or([lit.Not() for lit in (xa, yany) if lit is not True] + [z])
                    for direction in ("F", "B"):
                        if direction == "B" and not (self.has_bwd and self.needs_b[u] and inst.needs_grad[u]):
                            continue
                        s_, e_ = (a, b) if direction == "F" else (b, a)
                        sizes = [self._delay(edges, s_, e_) for edges, _ in ys]
                        if len(set(sizes)) == 1:
                            size = sizes[0]
                        else:
                            size = m.new_int_var(min(sizes), max(sizes), f"dur{direction}{u}_{a}_{b}")
                            for (edges, y), c in zip(ys, sizes):
                                ct = m.add(size >= c)
                                if y is not True:
                                    ct.only_enforce_if(y)
                        T = m.new_int_var(0, H, f"T{direction}{u}_{a}_{b}")
                        Te = m.new_int_var(0, H, f"Te{direction}{u}_{a}_{b}")
                        if z is True:
                            iv = m.new_interval_var(T, size, Te, f"L{direction}{u}_{a}_{b}")
                        else:
                            iv = m.new_optional_interval_var(T, size, Te, z, f"L{direction}{u}_{a}_{b}")
                        if direction == "F":
                            after, before = self.eF[u], self._arrival[u][b]
                        else:
                            after, before = self._gradient_done[u][b], self.sB[u]
                        for ct in (m.add(T >= after), m.add(before >= Te)):
                            if z is not True:
                                ct.only_enforce_if(z)
                        for r in inst.resources[s_][e_]:
                            users.setdefault(r, []).append(iv)
                        if direction == "F":
                            sends.setdefault(a, []).append((b, z, T, Te))
            # The simulator books the sends of one output at once, in the order of the receiving
            # devices: a later one that shares a link with an earlier one starts after it.
            for a, out in sends.items():
                for i, (b1, z1, _, e1) in enumerate(out):
                    for b2, z2, t2, _ in out[i + 1 :]:
                        if set(inst.resources[a][b1]) & set(inst.resources[a][b2]):
                            ct = m.add(t2 >= e1)
                            lits = [z for z in (z1, z2) if z is not True]
                            if lits:
                                ct.only_enforce_if(lits)
        for ivs in users.values():
            if len(ivs) > 1:
                m.add_no_overlap(ivs)

    def _add_reverse_backward_order(self) -> None:
        """Backwards on a device run in the reverse order of the forwards, as the simulator runs a
        plan's order: for two nodes sharing a device, F(u) before F(v) iff B(v) before B(u). Quadratic
        in the nodes: for small instances only. Not a relaxation of the simulator's own priority."""
        m, inst = self.model, self.inst
        for u in range(inst.n):
            for v in range(u + 1, inst.n):
                common = [d for d in self.x[u] if d in self.x[v]]
                if not common or not (self.needs_b[u] and self.needs_b[v]):
                    continue
                same = m.new_bool_var(f"same{u}_{v}")
                self._aux.append((same, lambda h, u=u, v=v: int(h.dev[u] == h.dev[v])))
                for d in common:
                    lits = [lit.Not() for lit in (self.x[u][d], self.x[v][d]) if lit is not True]
                    if lits:
                        m.add_bool_or(lits + [same])
                    else:
                        m.add(same == 1)
                first = m.new_bool_var(f"before{u}_{v}")
                self._aux.append((first, lambda h, u=u, v=v: int(h.sF[u] <= h.sF[v])))
                for a, b, lit in ((u, v, first), (v, u, first.Not())):
                    m.add(self.sF[b] >= self.eF[a]).only_enforce_if([same, lit])
                    m.add(self.sB[a] >= self.eB[b]).only_enforce_if([same, lit])

    def _add_barrier(self) -> None:
        """GPipe: no backward on a device before every forward there has ended."""
        m, inst = self.model, self.inst
        for d in range(inst.num_devices):
            users = [v for v in range(inst.n) if d in self.x[v]]
            if not users or not any(self.needs_b[v] for v in users):
                continue
            phi = m.new_int_var(0, self.H, f"phi{d}")
            self._aux.append((phi, lambda h, d=d: max([h.eF[v] for v in range(inst.n) if h.dev[v] == d], default=0)))
            for v in users:
                lit = self.x[v][d]
                ct = m.add(phi >= self.eF[v])
                if lit is not True:
                    ct.only_enforce_if(lit)
                if self.needs_b[v]:
                    ct = m.add(self.sB[v] >= phi)
                    if lit is not True:
                        ct.only_enforce_if(lit)

    def _add_memory(self) -> None:
        """The ledger's accounting (module docstring) within each device's capacity."""
        m, inst = self.model, self.inst
        D = inst.num_devices
        scale = max(1.0, float(inst.capacity.max()) / 1e9)  # keep coefficients moderate
        terms: list[list] = [[] for _ in range(D)]
        for v in range(inst.n):
            need = int(math.ceil(inst.need[v] / scale))
            for d, lit in self.x[v].items():
                if need:
                    terms[d].append(need if lit is True else need * lit)
        for u in range(inst.n):
            send = int(math.ceil(inst.send_bytes[u] / scale))
            if not send or not inst.succs[u]:
                continue
            recv = {}
            for b in self._targets(u):
                xb = self.x[u].get(b, False)
                if xb is True:
                    continue
                r = m.new_bool_var(f"r{u}_{b}")
                self._aux.append((r, lambda h, u=u, b=b: self._hint_received(h, u, b)))
                for _, ys in self.classes[u]:
                    y = ys.get(b)
                    if y is not None:  # r >= y - x
                        m.add(r >= (1 if y is True else y) - (0 if xb is False else xb))
                recv[b] = r
                terms[b].append(send * r)
            if self.has_bwd and inst.needs_grad[u] and recv:
                k = len(recv)
                for a, xa in self.x[u].items():
                    others = [r for b, r in recv.items() if b != a]
                    if not others:
                        continue
                    q = m.new_int_var(0, len(others), f"q{u}_{a}")
                    self._aux.append((q, lambda h, u=u, a=a, bs=[b for b in recv if b != a]: (
                        sum(self._hint_received(h, u, b) for b in bs) if h.dev[u] == a else 0)))
                    m.add(q >= sum(others) - k * (1 - (1 if xa is True else xa)))
                    terms[a].append(send * q)
        for d in range(D):
            if terms[d]:
                m.add(sum(terms[d]) <= int(math.floor(inst.capacity[d] / scale)))

    def _add_symmetry_breaking(self) -> None:
        """Interchangeable devices are first used in the order of their index."""
        m, inst = self.model, self.inst
        self.device_classes = interchangeable_classes(inst)
        for cls in self.device_classes:
            for d1, d2 in zip(cls, cls[1:]):
                used = None  # d1 used by some node before v
                for v in range(inst.n):
                    lit2 = self.x[v].get(d2)
                    if lit2 is not None and lit2 is not True:
                        if used is None:
                            m.add(lit2 == 0)
                        else:
                            m.add_implication(lit2, used)
                    lit1 = self.x[v].get(d1)
                    if lit1 is None:
                        continue
                    if lit1 is True:
                        used = True
                        break
                    nxt = m.new_bool_var(f"used{d1}_{v}")
                    self._aux.append((nxt, lambda h, d1=d1, v=v: int(any(h.dev[u] == d1 for u in range(v + 1)))))
                    if used is None:
                        m.add(nxt == lit1)
                    else:
                        m.add_bool_or([used, lit1]).only_enforce_if(nxt)
                        m.add_implication(used, nxt)
                        m.add_implication(lit1, nxt)
                    used = nxt

    def _add_objective(self) -> None:
        m = self.model
        self.C = m.new_int_var(0, self.H, "C")
        ends = self.eB if self.has_bwd else self.eF
        for v in range(self.inst.n):
            e = ends[v] if ends[v] is not None else self.eF[v]
            m.add(self.C >= e)
        if self.has_bwd:
            for v in range(self.inst.n):
                m.add(self.C >= self.eF[v])
        m.minimize(self.C)

    # -- hints ---------------------------------------------------------------------------------
    def _hint_arrival(self, h: ModelSchedule, u: int, b: int) -> int:
        """The least arrival of ``u``'s output on ``b`` the constraints allow in the hinted solution."""
        a = h.dev[u]
        if a == b:
            return h.eF[u]
        single = len(self.classes[u]) == 1
        delays = [
            self._delay(edges, a, b)
            for edges, ys in self.classes[u]
            if b in ys and (single or any(h.dev[v] == b for v, _ in edges))
        ]
        return h.eF[u] + max(delays, default=0)

    def _hint_received(self, h: ModelSchedule, u: int, b: int) -> int:
        return int(h.dev[u] != b and any(h.dev[v] == b for v, _ in self.inst.succs[u]))

    def hint(self, dev: np.ndarray, priority: np.ndarray | None = None) -> float:
        """Hint a complete solution: the assignment ``dev`` scheduled in the model's time by
        :func:`model_schedule` (with ``priority``). Returns the hinted step in ms."""
        inst = self.inst
        if self.symmetry:
            dev = canonical_devices(dev, self.device_classes)
        sched = model_schedule(inst, dev, self, priority)
        sched.dev = [int(d) for d in dev]
        m = self.model
        for v in range(inst.n):
            for d, lit in self.x[v].items():
                if lit is not True and (v == inst.members[inst.group[v]][0]):
                    m.add_hint(lit, int(dev[v]) == d)
            m.add_hint(self.sF[v], sched.sF[v])
            m.add_hint(self.eF[v], sched.eF[v])
            if self.has_bwd and self.needs_b[v]:
                m.add_hint(self.sB[v], sched.sB[v])
                m.add_hint(self.eB[v], sched.eB[v])
        m.add_hint(self.C, sched.makespan)
        for var, rule in self._aux:
            m.add_hint(var, int(rule(sched)))
        return sched.makespan * self.tick_ms

    # -- solving -------------------------------------------------------------------------------
    def solve(
        self,
        seconds: float,
        *,
        seed: int = 0,
        workers: int = 1,
        wall_limit: float | None = None,
        log: bool = False,
        presolve: bool = True,
    ) -> IlpResult:
        """Solve with a budget of ``seconds``: CP-SAT's deterministic time limit is
        ``DETERMINISTIC_PER_SECOND * seconds`` (so a seed reproduces the search), and the wall clock
        stops it at ``wall_limit`` seconds (default ``2 * seconds``) should the machine be slow."""
        solver = deterministic_solver(seconds, DETERMINISTIC_PER_SECOND, seed=seed, workers=workers, wall_limit=wall_limit)
        p = solver.parameters
        p.log_search_progress = log
        if not presolve:
            # Presolve's propagation to a fixed point is not charged to the deterministic clock and
            # can take seconds on a large model; the search does well without it.
            p.cp_model_presolve = False
        start = time.perf_counter()
        status = solver.solve(self.model)
        wall = time.perf_counter() - start
        name = solver.status_name(status)
        inst = self.inst
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            det = solver.deterministic_time
            return IlpResult(
                np.full(inst.n, -1), [], math.inf, 0.0, name, wall, det,
                name != "INFEASIBLE" and det < 0.95 * p.max_deterministic_time, self.relaxation, self.size(),
            )
        dev = np.asarray([next(d for d, lit in self.x[v].items() if lit is True or solver.value(lit)) for v in range(inst.n)])
        starts = [solver.value(s) for s in self.sF]
        seq: list[list[int]] = [[] for _ in range(inst.num_devices)]
        for v in sorted(range(inst.n), key=lambda v: (starts[v], v)):
            seq[int(dev[v])].append(v)
        det = solver.deterministic_time
        stopped = name != "OPTIMAL" and det < 0.95 * p.max_deterministic_time
        return IlpResult(
            dev=dev,
            seq=seq,
            objective_ms=solver.objective_value * self.tick_ms,
            bound_ms=solver.best_objective_bound * self.tick_ms,
            status=name,
            wall_s=wall,
            deterministic_s=det,
            stopped_by_wall_clock=bool(stopped),
            relaxation=self.relaxation,
            size=self.size(),
        )

    @property
    def relaxation(self) -> bool:
        """Whether the model relaxes the simulator's problem (so its bound bounds every plan): no
        memory rows and no fixed nodes. Whether the instance is the full graph is the caller's to say."""
        return not self.memory and not self.fixed and not self.reverse_backward

    def size(self) -> dict[str, int]:
        proto = self.model.proto
        return {"variables": len(proto.variables), "constraints": len(proto.constraints)}
