"""List-scheduling machinery shared by the heuristics: memory ledger, schedule state, priorities.

Every heuristic here places the nodes of an :class:`~placement.solvers.instance.Instance` one at a time
in some priority order, each on a device chosen by some rule, and keeps a schedule of estimated start
and finish times. They share:

* :class:`MemoryLedger`: bytes reserved on each device by the nodes placed so far. A node charges its
  own device its static footprint, what it holds and, for a graph output, its loss tensors (a
  colocation group charges its whole footprint, and all its members could receive, when its first
  member is placed); a device is also charged the largest backward temporary of the graph outputs
  on it; an edge whose ends are on two devices charges the receiver the producer's ``send_bytes``
  once, and in training twice on each side (the receiver keeps the gradient it sends back, the
  producer the tensor it sent and the gradient it receives). The total (everything alive at once)
  is an estimate, and the plan's simulation (:func:`~placement.problem.finish_plan`) is the memory
  check. A graph output's loss and backward temporary are counted because the backward starts
  there, while every activation is still held: without them an output that owns no parameter looked
  free (the zoo GPT-2's ``lm_head``, its weight tied to ``wte``, holds 18.4 GiB of loss tensors and
  a 6.4 GiB backward temporary; every list scheduler put it on a 12 GiB GPU of ``pcie-4gpu`` and the
  simulator refused the plan, "gpu3 needs 32.4 GiB of 12"). An inner node's temporary is not: by its
  backward the activations of the nodes after it are freed, so adding it to their sum (as
  :meth:`~placement.lowering.Lowered.memory_upper_bound` does) refused plans that fit (PipeDream's
  VGG-16 on ``pcie-4gpu``: m-ETF 2,529.8 -> 2,872.3 ms).
* :class:`Schedule`: device of each node, estimated start and finish, the order on each device, and the
  data-ready time of a node on every device. Times use the *training-folded* model: a node takes
  forward + backward time and an edge across devices costs its forward transfer plus the gradient sent
  back, so a forward-only list schedule prices the whole step (the backward pass mirrors the forward
  one: Baechi, Jeon et al., SoCC 2020, colocates each backward op with its forward op in the same way).
  Transfers are booked as the simulator makes them (:class:`~placement.solvers.linkbook.LinkBook`):
  once per producer and receiving device, waiting for the links that other transfers hold, so that a
  heuristic's own schedule predicts the simulated step (timed pass by pass by
  :func:`~placement.solvers.steptime.step_ms`, it is what a plan records as ``settings["schedule_ms"]``;
  ``benchmarks/list_schedulers.py`` compares the two).
* :class:`Timeline`: a device's busy intervals, for insertion-based policies (HEFT's).
* Priorities: upward rank (bottom level with communication), downward rank, static level.
* :func:`to_plan`: the assignment and per-device order turned into a checked, simulated Plan.

Everything is array-based and near linear (``O(n D log n)`` plus the link bookings of each node's
inputs), so a 10,000-node graph schedules in seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from placement.constraints import InfeasibleError
from placement.errors import ConfigurationError
from placement.lowering import LOSS_SCALAR_BYTES
from placement.plan import Plan
from placement.problem import Problem, finish_plan
from placement.solvers.instance import GiB, Instance
from placement.solvers.linkbook import LinkBook
from placement.solvers.search import Evaluator


class MemoryLedger:
    """Bytes reserved per device by a partial placement (module docstring).

    ``unbounded`` is True when everything the graph could ever charge fits on the smallest device; the
    ledger then accepts every placement without arithmetic. Beyond what its producers owe (below), a
    device keeps ``headroom - 1`` times the largest tensor free (``reserve``, training only; see
    :meth:`fits`; :func:`memory_retries` raises the headroom when a greedy fill still fails, spreading
    the nodes wider).

    In training a producer's device is charged ``2 s`` (the tensor kept until its gradient is back,
    and that gradient) when a consumer of its ``s``-byte output goes to another device. So that a full
    device can always send on, a placed producer keeps that much *owed* on its device for each of its
    consumers not yet placed, at most one per other device (a tensor goes once to each device that
    consumes it): ``pending[d] = sum over producers u on d of 2 s_u x min(u's consumers left, D - 1)``,
    which no other placement may use. Placing a consumer releases one share when that lowers the
    minimum, which pays the cut when the consumer goes elsewhere. A node whose producer's device is full then goes to another device
    (its producer paid for the transfer in advance) instead of finding every device refused, as a
    greedy fill of one device left HEFT and m-ETF on a 10,000-node graph on 128 GPUs.
    """

    def __init__(self, inst: Instance, headroom: float = 1.0) -> None:
        self.inst = inst
        self.free = inst.capacity.astype(float).copy()
        loss, temp = loss_and_temp(inst)
        need = inst.need + loss
        # Bytes a node could receive at most (every input from elsewhere).
        self.in_upper = np.zeros(inst.n)
        if inst.num_edges:
            np.add.at(self.in_upper, inst.dst, inst.send_bytes[inst.src])
        # A colocation group of several nodes reserves, when its first member is placed, its whole
        # footprint and everything its members could receive: members placed much later (the backward
        # nodes of a training graph) then never find their device full.
        self.prepaid = np.asarray([len(m) > 1 for m in inst.members])
        self.group_need = np.asarray(
            [float(need[m].sum() + (self.in_upper[m].sum() if len(m) > 1 else 0.0)) for m in inst.members]
        )
        self.group_dev = np.full(len(inst.members), -1, dtype=np.int64)
        # The largest backward temporary of a group's outputs, and of the groups on each device: a
        # device runs one backward at a time, so it is charged its largest temporary, not their sum.
        self.group_temp = np.asarray([float(temp[m].max(initial=0.0)) for m in inst.members])
        self.temp_top = np.zeros(inst.num_devices)
        self.received: set[tuple[int, int]] = set()
        factor = 4.0 if inst.has_bwd else 1.0
        total = float(need.sum() + temp.max(initial=0.0) + factor * inst.send_bytes.sum() * max(1, inst.num_devices - 1))
        self.unbounded = total <= float(inst.capacity.min(initial=np.inf))
        # Extra room past the owed shares (training): none at the first attempt, where the shares alone
        # keep a device able to send on (the old reserve of one largest tensor on top of them changed
        # memory-tight plans, VGG-16 on pcie-4gpu's K40s by +2.7%, for nothing).
        self.reserve = (headroom - 1.0) * float(inst.send_bytes.max(initial=0.0)) if inst.has_bwd else 0.0
        self.grad_back = inst.has_bwd
        # What a producer keeps owed on its device per consumer left to place (training), and those left.
        self.share = 2.0 * inst.send_bytes * inst.needs_grad if inst.has_bwd else np.zeros(inst.n)
        self.open = np.fromiter((len(s) for s in inst.succs), dtype=np.int64, count=inst.n)
        self.cap = max(1, inst.num_devices - 1)  # shares owed at most: one per other device
        self.pending = np.zeros(inst.num_devices)
        self.usable = self.free.copy()  # free less pending
        self.free_floor = float(self.usable.min(initial=0.0))
        self._in_factor = 2.0 if inst.has_bwd else 1.0

    def charges(self, v: int, d: int, dev: np.ndarray) -> list[tuple[int, float]]:
        """(device, bytes) that placing node ``v`` on device ``d`` adds, given the devices so far."""
        inst = self.inst
        out: list[tuple[int, float]] = []
        g = inst.group[v]
        if self.group_dev[g] < 0:
            out.append((d, self.group_need[g] + max(0.0, self.group_temp[g] - self.temp_top[d])))
        prepaid = self.prepaid[g]
        for u, _ in inst.preds[v]:
            a = dev[u]
            if a != d and a >= 0 and (u, d) not in self.received:
                b = inst.send_bytes[u]
                if b:
                    back = 2 if inst.has_bwd and inst.needs_grad[u] else 1  # and the gradient sent / kept
                    if not prepaid:
                        out.append((d, back * b))
                    if back == 2:
                        out.append((int(a), back * b))
        return out

    def _owed(self, v: int) -> float:
        """What producer ``v`` keeps owed on its device: a share per consumer left, one per other device at most."""
        return float(self.share[v] * min(int(self.open[v]), self.cap))

    def _released(self, v: int, dev: np.ndarray) -> dict[int, float]:
        """Device -> the shares that placing ``v`` releases there (one per input edge from a placed
        producer whose owed count it lowers: they pay the cuts it makes)."""
        out: dict[int, float] = {}
        left = {u: int(self.open[u]) for u, _ in self.inst.preds[v]}
        for u, _ in self.inst.preds[v]:
            a = int(dev[u])
            if a >= 0 and self.share[u] and left[u] <= self.cap:
                out[a] = out.get(a, 0.0) + float(self.share[u])
            left[u] -= 1
        return out

    def fits(self, v: int, d: int, dev: np.ndarray) -> bool:
        """Whether node ``v`` fits on device ``d`` (its group not yet placed elsewhere is checked by the
        caller). A device keeps what its open producers owe (class docstring), so that filling a device
        never leaves it unable to send on, and ``reserve`` bytes more."""
        if self.unbounded:
            return True
        # Fast path: even every input arriving from elsewhere fits here; a sender's charge is the share
        # it releases, so it fits while no device's usable bytes are negative (free_floor, a lower bound).
        g = self.inst.group[v]
        upper = self._in_factor * self.in_upper[v]
        first = self.group_need[g] + max(0.0, self.group_temp[g] - self.temp_top[d]) if self.group_dev[g] < 0 else 0.0
        own = first + upper + self._owed(v)
        if own <= self.usable[d] - self.reserve and self.free_floor >= 0:
            return True
        return self._overflow(v, d, dev) is None

    def fitting(self, v: int, dev: np.ndarray) -> list[int]:
        """The devices ``v`` may use and fits on (:meth:`may_use` and :meth:`fits` of every device at once)."""
        inst = self.inst
        gd = self.group_dev[inst.group[v]]
        if gd >= 0:
            return [int(gd)] if inst.allowed[v, gd] and self.fits(v, int(gd), dev) else []
        ok = inst.allowed[v]
        if self.unbounded:
            return np.flatnonzero(ok).tolist()
        g = inst.group[v]
        upper = self._in_factor * self.in_upper[v]
        own = self.group_need[g] + np.maximum(0.0, self.group_temp[g] - self.temp_top) + upper + self._owed(v)
        fast = ok & (own <= self.usable - self.reserve) if self.free_floor >= 0 else np.zeros_like(ok)
        return [d for d in np.flatnonzero(ok).tolist() if fast[d] or self._overflow(v, d, dev) is None]

    def _overflow(self, v: int, d: int, dev: np.ndarray) -> tuple[int, float, float] | None:
        """(device, bytes charged, bytes usable) of the first device placing ``v`` on ``d`` overflows."""
        total: dict[int, float] = {d: self._owed(v)}
        for x, b in self.charges(v, d, dev):
            total[x] = total.get(x, 0.0) + b
        released = self._released(v, dev)
        for x, b in total.items():
            usable = self.usable[x] + released.get(x, 0.0) - (self.reserve if x == d else 0.0)
            if b > usable:
                return x, b, usable
        return None

    def commit(self, v: int, d: int, dev: np.ndarray) -> None:
        """Record node ``v`` on device ``d`` (call before ``dev[v]`` is set)."""
        inst = self.inst
        g = inst.group[v]
        if not self.unbounded:
            touched = {d}
            for x, b in self.charges(v, d, dev):
                self.free[x] -= b
                touched.add(x)
            for a, b in self._released(v, dev).items():
                self.pending[a] -= b
                touched.add(a)
            for u, _ in inst.preds[v]:
                self.open[u] -= 1
            self.pending[d] += self._owed(v)
            for x in touched:  # free_floor: a lower bound of usable (released shares do not raise it)
                self.usable[x] = self.free[x] - self.pending[x]
                self.free_floor = min(self.free_floor, float(self.usable[x]))
        if self.group_dev[g] < 0:
            self.group_dev[g] = d
            self.temp_top[d] = max(self.temp_top[d], self.group_temp[g])
        for u, _ in inst.preds[v]:
            if dev[u] != d:
                self.received.add((u, d))

    def may_use(self, v: int, d: int) -> bool:
        """Allowed by the constraints and by where the node's colocation group already is."""
        gd = self.group_dev[self.inst.group[v]]
        return bool(self.inst.allowed[v, d]) and (gd < 0 or gd == d)

    def infeasible(self, v: int, dev: np.ndarray) -> InfeasibleError:
        """The error for node ``v`` fitting on no device it may use: which device overflows, by how much."""
        inst = self.inst
        name = inst.names[v]
        g = inst.group[v]
        options = [d for d in range(inst.num_devices) if self.may_use(v, d)]
        if not options:
            return InfeasibleError(f"node {name!r} has no device left that its constraints allow")
        subject = f"node {name!r}"
        if len(inst.members[g]) > 1 and self.group_dev[g] < 0:
            subject += f" (with its colocation group of {len(inst.members[g])} nodes)"
        worst = []
        for d in options:
            x, b, usable = self._overflow(v, d, dev) or (d, 0.0, self.free[d])
            worst.append((b - usable, d, x, b, usable))
        over, d, x, b, usable = min(worst)
        where = "" if x == d else f" (placing it on {inst.devices[d].name} charges {inst.devices[x].name} the gradient it sends back)"
        largest = max(options, key=lambda k: self.free[k])
        return InfeasibleError(
            f"{subject} does not fit: it needs {b / GiB:.3f} GiB on {inst.devices[x].name}{where}, which has "
            f"{max(usable, 0.0) / GiB:.3f} GiB left of {inst.capacity[x] / GiB:.2f} GiB (over by {over / GiB:.3f} GiB); "
            f"the largest free capacity of a device it may use is {self.free[largest] / GiB:.3f} GiB on "
            f"{inst.devices[largest].name}. Use more devices, a smaller batch, or raise the memory budget."
        )


def loss_and_temp(inst: Instance) -> tuple[np.ndarray, np.ndarray]:
    """(n,) bytes a graph output adds past ``need`` in the simulator (module docstring): its loss
    tensors with the loss and its gradient (one microbatch), and its backward temporary at its
    largest (:mod:`placement.lowering`, "Memory"); zero for every other node. Zeros for an instance
    built without a lowering (a coarsened one: :mod:`placement.solvers.coarsen` sums its nodes'
    figures)."""
    lw = inst.lowered
    if lw is None:
        return np.zeros(inst.n), np.zeros(inst.n)
    output = lw.loss_bytes > 0
    return lw.loss_bytes + 2 * LOSS_SCALAR_BYTES * output, np.where(output, lw.backward_temp, 0.0)


class Timeline:
    """A device's busy intervals, sorted and disjoint, for insertion-based scheduling."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def earliest(self, ready: float, duration: float, scan: int = 64) -> float:
        """The earliest start >= ``ready`` of an idle gap at least ``duration`` long, looking at no more
        than ``scan`` busy intervals (past them, the end of the last one: a bounded insertion policy,
        so a device with thousands of small gaps costs no more than one with a few)."""
        starts, ends = self.starts, self.ends
        count = len(starts)
        t = ready
        j = bisect.bisect_right(ends, t)
        stop = min(count, j + scan)
        while j < stop:
            if starts[j] >= t + duration:
                return t
            e = ends[j]
            if e > t:
                t = e
            j += 1
        if j < count:
            return max(t, ends[-1])
        return t

    def add(self, start: float, end: float) -> None:
        j = bisect.bisect_right(self.starts, start)
        self.starts.insert(j, start)
        self.ends.insert(j, end)

    @property
    def end(self) -> float:
        return self.ends[-1] if self.ends else 0.0


class Schedule:
    """A partial list schedule of an instance (module docstring).

    ``work`` is the (n, D) node time used (forward + backward by default); ``gradients`` books each
    transfer's gradient with it (:class:`~placement.solvers.linkbook.LinkBook`).
    """

    def __init__(
        self, inst: Instance, work: np.ndarray | None = None, headroom: float = 1.0, gradients: bool = True
    ) -> None:
        self.inst = inst
        n, D = inst.n, inst.num_devices
        self.work = inst.work if work is None else work
        self.dev = np.full(n, -1, dtype=np.int64)
        self.start = np.zeros(n)
        self.finish = np.zeros(n)
        self.free = np.zeros(D)  # when each device is next idle (non-insertion policies)
        self.seq: list[list[int]] = [[] for _ in range(D)]
        self._seq_start: list[list[float]] = [[] for _ in range(D)]
        self.ledger = MemoryLedger(inst, headroom)
        self.links = LinkBook(inst, gradients)
        self.placed = 0

    def ready_row(self, v: int) -> np.ndarray:
        """(D,) when all of ``v``'s inputs can be on each device (its predecessors must be placed),
        after the transfers already booked (:class:`~placement.solvers.linkbook.LinkBook`)."""
        return self.links.ready_row(v, self.dev, self.finish)

    def ready_on(self, v: int, d: int) -> float:
        """When all of ``v``'s inputs can be on device ``d``, after the transfers already booked."""
        return self.links.ready(v, d, self.dev, self.finish)

    def candidates(self, v: int) -> list[int]:
        """Devices ``v`` may use and fits on now."""
        return self.ledger.fitting(v, self.dev)

    def place(self, v: int, d: int, start: float) -> None:
        """Put ``v`` on ``d`` from ``start`` (not before its inputs can be there) for its work time,
        booking the transfers of its inputs; the device order is by start time."""
        links = self.links
        ready = links.book(v, d, self.dev, self.finish)
        if ready > start:
            start = ready
        start = links.run(d, start, start + float(self.work[v, d]))
        self.ledger.commit(v, d, self.dev)
        self.dev[v] = d
        self.start[v] = start
        end = start + self.work[v, d]
        self.finish[v] = end
        if end > self.free[d]:
            self.free[d] = end
        for x, r in links.engines:  # transfers keep a device without a copy engine busy
            if links.free[r] > self.free[x]:
                self.free[x] = links.free[r]
        seq, keys = self.seq[d], self._seq_start[d]
        if keys and keys[-1] > start:  # inserted into a gap
            j = bisect.bisect_right(keys, start)
            seq.insert(j, v)
            keys.insert(j, start)
        else:
            seq.append(v)
            keys.append(start)
        self.placed += 1

    def append(self, v: int, d: int) -> None:
        """Put ``v`` on ``d`` after everything there, once its inputs can be there (a fixed placement
        scheduled in the order of the calls)."""
        ready = self.ready_on(v, d)
        self.place(v, d, ready if ready > self.free[d] else float(self.free[d]))

    def eft(self, v: int, timelines: list[Timeline] | None = None) -> tuple[int, float]:
        """(device, start) giving ``v`` its earliest finish among the devices it fits on; with
        ``timelines``, a start may fall into an idle gap (insertion policy). Raises when none fits."""
        options = self.candidates(v)
        if not options:
            raise self.ledger.infeasible(v, self.dev)
        ready = self.ready_row(v)[options]
        work = self.work[v, options]
        start = np.maximum(ready, self.free[options])
        if timelines is not None:
            for i, d in enumerate(options):
                if ready[i] < timelines[d].end:
                    start[i] = timelines[d].earliest(float(ready[i]), float(work[i]))
        best = int(np.argmin(start + work))  # the first of equal finishes
        return options[best], float(start[best])

    def makespan(self) -> float:
        return float(self.finish.max(initial=0.0))


HEADROOMS = (1.0, 4.0, 16.0, 64.0)


def memory_retries(build: Callable[[float], Schedule]) -> Schedule:
    """``build(headroom)`` with more and more headroom (:data:`HEADROOMS`) until a placement fits:
    a greedy fill can leave a device too full to accept the gradients of a later cut. Raises the
    first attempt's error when none fits."""
    first: InfeasibleError | None = None
    for headroom in HEADROOMS:
        try:
            return build(headroom)
        except InfeasibleError as exc:
            first = first or exc
    assert first is not None
    raise first


# -- priorities ------------------------------------------------------------------------------------
def mean_work(inst: Instance) -> np.ndarray:
    """(n,) a node's forward + backward time averaged over the devices it may use."""
    w = np.where(inst.allowed, inst.work, 0.0).sum(axis=1)
    return w / np.maximum(1, inst.allowed.sum(axis=1))


def upward_rank(inst: Instance, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Bottom level: ``rank(u) = w(u) + max over successors v of (c(u,v) + rank(v))`` (HEFT's rank_u)."""
    rank = np.asarray(w, dtype=float).copy()
    succs = inst.succs
    for u in range(inst.n - 1, -1, -1):
        best = 0.0
        for v, e in succs[u]:
            x = c[e] + rank[v]
            if x > best:
                best = x
        rank[u] += best
    return rank


def downward_rank(inst: Instance, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Top level: ``rank(v) = max over predecessors u of (rank(u) + w(u) + c(u,v))`` (HEFT's rank_d)."""
    rank = np.zeros(inst.n)
    preds = inst.preds
    for v in range(inst.n):
        best = 0.0
        for u, e in preds[v]:
            x = rank[u] + w[u] + c[e]
            if x > best:
                best = x
        rank[v] = best
    return rank


def order_by(priority: np.ndarray) -> list[int]:
    """Node ids by decreasing priority, ties by topological position (a topological order whenever
    the priority does not increase along edges)."""
    return sorted(range(len(priority)), key=lambda v: (-priority[v], v))


# -- plans -----------------------------------------------------------------------------------------
def to_plan(
    problem: Problem,
    inst: Instance,
    dev: Iterable[int],
    *,
    solver: str,
    settings: dict[str, Any] | None = None,
    seq: list[list[int]] | None = None,
    gap: float | None = None,
    bound_ms: float | None = None,
) -> Plan:
    """Simulate and record device ids ``dev``. With a per-device order ``seq``, the plan keeps it only
    if the simulator runs the step faster with it than with its own priority (a heuristic's estimate
    of time is not the simulator's, and either order is a valid plan); the prediction that choice was
    made by is the plan's (:func:`~placement.problem.finish_plan`'s ``prediction``), not made again."""
    if problem.objective != "latency":
        raise ConfigurationError(
            f"solver {solver!r} minimises the latency of one step; for objective={problem.objective!r} "
            "use solver='auto' (it calls the pipeline solver)"
        )
    dev = [int(d) for d in dev]
    prediction = None
    if seq is not None:
        cand = Evaluator(problem, inst)(np.asarray(dev), seq, solver)
        if np.isfinite(cand.step_ms):
            seq, prediction = cand.seq, cand.prediction
    order = inst.order_names(seq) if seq is not None else None
    return finish_plan(
        problem,
        inst.assignment_names(dev),
        solver=solver,
        settings=settings,
        order=order,
        microbatches=problem.microbatches or 1,
        gap=gap,
        bound_ms=bound_ms,
        prediction=prediction,
    )


def check_complete(sched: Schedule) -> None:
    """Raise for the first node left unplaced (every heuristic ends with it)."""
    if sched.placed < sched.inst.n:
        v = int(np.flatnonzero(sched.dev < 0)[0])
        raise sched.ledger.infeasible(v, sched.dev)
