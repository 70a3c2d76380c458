"""m-ETF: memory-aware Earliest Task First list scheduling.

ETF (Hwang, Chow, Anger and Lee, "Scheduling precedence graphs in systems with interprocessor
communication times", SIAM J. Comput. 18(2), 1989) repeatedly schedules, among all ready tasks and all
processors, the (task, processor) pair that can *start* earliest, ties going to the task of highest
static level. Baechi (Jeon et al., "Baechi: fast device placement of machine learning graphs", SoCC
2020) made it memory-aware as m-ETF: a device is a candidate for an operator only while the operator
still fits in the device's memory, and each backward operator is colocated with its forward one.
ETF assumes identical processors. On a cluster that mixes device kinds, a device is charged for its
slowness: the start time compared is the start plus the time the task takes beyond its fastest
allowed device (zero on identical devices, where this is ETF itself), so that a chain is not left on a
slow CPU merely because the CPU could start it a microsecond earlier.

Here the task times are forward + backward (the training-folded model of
:mod:`placement.solvers.listsched`), colocation groups are placed as a unit (the first member fixes
the device of the rest), and a pinned node only sees its devices. A task's inputs reach a device as the
simulator sends them (:class:`~placement.solvers.linkbook.LinkBook`): once per producer and device,
waiting for the links other transfers hold. Without that rule, on the zoo GNMT on four PCIe GPUs,
m-ETF cut 8.3 GB of edges and its schedule said 235 ms for a step the simulator ran in 369 ms; with it,
1.5 GB, 283 ms scheduled (296 ms timed pass by pass, :mod:`placement.solvers.steptime`) and 293 ms
simulated (Baechi's m-ETF: 1.6 GB, 286 ms).

Implementation: each device keeps the ready tasks in two heaps, those whose inputs could already be
there when the device is free (keyed by priority) and those that arrive later (keyed by arrival), so a
step costs ``O(D log n)`` instead of a scan of every ready pair: ``O(n D log n)`` in all. An offer's
arrival is priced when the task becomes ready; transfers booked later can only delay it, so the
offer taken is priced again and, when later, offered again at its new time.
"""

from __future__ import annotations

import heapq

import numpy as np

from placement.plan import Plan
from placement.problem import Problem
from placement.solvers.baselines import heuristic_plan
from placement.solvers.instance import Instance, instance
from placement.solvers.listsched import Schedule, mean_work, memory_retries, upward_rank


def etf_schedule(
    inst: Instance,
    priority: np.ndarray,
    home: np.ndarray | None = None,
    headroom: float = 1.0,
    fixed: np.ndarray | None = None,
) -> Schedule:
    """The ETF list schedule of ``inst`` with tie-breaking ``priority`` (higher first).

    ``home[v] >= 0`` names a node whose device the task should join (m-SCT's favourite child): the
    task is offered to every device, and on that node's device it comes before every other task
    (it still goes elsewhere when it would start or finish earlier there), provided that node is
    still the last task on its device when the task becomes ready. As in Baechi's m-SCT, a device
    keeps its place for the favourite child of the task it ran last, not of every task it ran: on
    the zoo GNMT on the four GPUs of ``pcie-4gpu`` the children of parents long followed by other
    tasks jumped ahead of them, and m-SCT cut 1.6 GB for 307.0 ms; with the rule, 0.14 GB for
    280.6 ms (Baechi's m-SCT: 288.6 ms).

    ``fixed`` (n,) gives every task its device: the result is then the ETF order of that placement
    (memory is not checked again: whoever made the placement did).
    """
    n, D = inst.n, inst.num_devices
    sched = Schedule(inst, headroom=headroom)
    dev, free, ledger = sched.dev, sched.free, sched.ledger
    if fixed is not None:
        ledger.unbounded = True
    fastest = np.where(inst.allowed, sched.work, np.inf).min(axis=1, keepdims=True)
    slow = (sched.work - fastest).tolist()
    # Devices of equal offers: the faster (less total work) first, then by index.
    totals = sched.work.sum(axis=0)
    rank = [0] * D
    for r, d in enumerate(sorted(range(D), key=lambda d: (totals[d], d))):
        rank[d] = r
    indeg = np.fromiter((len(p) for p in inst.preds), dtype=np.int64, count=n)
    waiting: list[list[tuple[float, float, int]]] = [[] for _ in range(D)]
    avail: list[list[tuple[float, int]]] = [[] for _ in range(D)]
    ready_at: dict[int, np.ndarray] = {}
    prio = (-np.asarray(priority, dtype=float)).tolist()
    home_dev: dict[int, int] = {}  # a favourite child -> its favourite parent's device

    def offer(v: int, d: int, at: float) -> None:
        """Offer ``v`` to ``d`` from time ``at``; a favourite child goes first on its parent's device."""
        heapq.heappush(waiting[d], (at, -np.inf if home_dev.get(v) == d else prio[v], v))

    def release(v: int) -> None:
        row = sched.ready_row(v)  # as links stand now; checked again when the offer is taken
        ready_at[v] = row
        if home is not None and home[v] >= 0:
            d = int(dev[home[v]])
            if sched.seq[d][-1] == home[v]:  # its favourite parent is still the last task there
                home_dev[v] = d
        for d in range(D) if fixed is None else (int(fixed[v]),):
            if ledger.may_use(v, d):
                offer(v, d, float(row[d]))

    for v in range(n):
        if indeg[v] == 0:
            release(v)

    def head(d: int) -> tuple | None:
        """Device ``d``'s best offer: (key..., the heap it is at the top of), None if it has none."""
        W, A, f = waiting[d], avail[d], free[d]
        while W and W[0][0] <= f:
            _, p, v = heapq.heappop(W)
            if dev[v] < 0:
                heapq.heappush(A, (p, v))
        while A and (dev[A[0][1]] >= 0 or not ledger.may_use(A[0][1], d) or not ledger.fits(A[0][1], d, dev)):
            heapq.heappop(A)
        if A:
            v = A[0][1]
            return (f + slow[v][d], A[0][0], rank[d], v, f, d, A)
        while W and (dev[W[0][2]] >= 0 or not ledger.may_use(W[0][2], d) or not ledger.fits(W[0][2], d, dev)):
            heapq.heappop(W)
        if not W:
            return None
        v = W[0][2]
        return (W[0][0] + slow[v][d], W[0][1], rank[d], v, W[0][0], d, W)

    heads: list[tuple | None] = [None] * D
    # Every device's head by its key, (key, priority, rank, version, device): the least is the best
    # offer (rank[d] differs between devices, so keys never tie); a head recomputed since is skipped.
    tops: list[tuple[float, float, int, int, int]] = []
    version = [0] * D
    everything = range(D)
    dirty = everything  # devices whose best offer may have changed
    while sched.placed < n:
        if dirty is everything:
            tops.clear()
        for d in dirty:
            h = heads[d] = head(d)
            version[d] += 1
            if h is not None:
                heapq.heappush(tops, (h[0], h[1], h[2], version[d], d))
        dirty = everything
        while tops and tops[0][3] != version[tops[0][4]]:
            heapq.heappop(tops)
        best = heads[tops[0][4]] if tops else None
        if best is None:
            # Every offer was withdrawn (memory ran out or a group went elsewhere): retry the ready
            # tasks once on every device, and give up on the first that fits nowhere.
            stuck = [v for v in ready_at if dev[v] < 0]
            for v in stuck:
                options = sched.candidates(v) if fixed is None else [int(fixed[v])]
                if not options:
                    raise ledger.infeasible(v, dev)
                for d in options:
                    offer(v, d, float(ready_at[v][d]))
            continue
        _, _, _, v, start, d, heap = best
        ready = sched.ready_on(v, d)
        if ready > start:
            # Links booked since the offer was made delay it: offer it again at its new time.
            heapq.heappop(heap)
            offer(v, d, ready)
            dirty = (d,)  # nothing else changed
            continue
        sched.place(v, d, start)
        del ready_at[v]
        home_dev.pop(v, None)
        for w, _ in inst.succs[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                release(w)
    return sched


def static_priority(inst: Instance) -> np.ndarray:
    """ETF's tie-break: the static level (longest path of mean compute to a sink, no communication)."""
    return upward_rank(inst, mean_work(inst), np.zeros(inst.num_edges))


def m_etf(problem: Problem) -> Plan:
    """Place with m-ETF (one device where that schedule is no longer) and record the schedule's order per device."""
    inst = instance(problem)
    priority = static_priority(inst)
    return heuristic_plan(problem, inst, memory_retries(lambda h: etf_schedule(inst, priority, headroom=h)), "m-etf")
