"""Link bookings of a list schedule: transfers that wait for each other, a tensor sent once per device.

The simulator (:mod:`placement.simulate`) sends a producer's output once to each other device holding
consumers of it, and a transfer holds every link resource of its route (``Instance.resources``) for its
whole duration, first come, first served. A list schedule that prices every edge alone, without
either rule, believes that four GPUs under one PCIe switch exchange gigabytes for free: on the zoo GNMT
its schedule said 235 ms for a plan the simulator ran in 369 ms, and it cut five times the bytes of
Baechi's m-ETF, whose devices each have one send and one receive channel.

:class:`LinkBook` keeps, for a partial schedule, when each link resource is next free and when each
producer's output is on each device. A node's data-ready time on a device (:meth:`LinkBook.ready`)
books, in the order its producers finish, one transfer per producer not yet sent there: it starts when
the producer has finished and every link of the route is free, and holds those links for the edge's
transfer time. A later consumer on the same device reuses the arrival (a larger tensor from the same
producer, another output, sends only the missing bytes). :meth:`LinkBook.book` commits what
:meth:`LinkBook.ready` priced.

Training uses the training-folded time of :mod:`placement.solvers.listsched` (a node takes forward +
backward time): a transfer is followed, on the reverse route, by its gradient, and the data counts as
arrived once both are done. Each direction of a link is then busy exactly as long as the simulator
keeps it busy, forward and backward passes together.

A device without a copy engine (category ``cpu``, as the simulator has it) moves its tensors itself:
it is one more resource of every transfer to or from it, and its tasks hold it too (:meth:`LinkBook.run`),
so its transfers and tasks never overlap. Between hosts the simulator holds each CPU end only for the
message's CPU time; here such a transfer still holds both CPUs throughout: a list schedule's
estimate of it is more pessimistic than the simulation that judges its plan.

Bookings only move forward in time (a link is free from the end of its last booking): a transfer
requested earlier than one booked before it waits behind it, as in Baechi's channels.

:meth:`LinkBook.ready_row` prices a node on every device at once, with the same values as
:meth:`LinkBook.ready` device by device: routes are padded into a ``(D, D, K)`` array of resources, a
transfer's start on each device is the largest free time over its route's column, and the links a
node's earlier inputs would hold (the scratch overlay of one pricing) are matched by resource id. Within
one pricing a link's booked end only grows, so the overlay's value of a link is the largest end written
to it. On 128 devices the list schedulers price every device for every node, and this is most of
their work (HEFT on a 2,000-node graph: 10 s device by device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from placement.solvers.instance import Instance

#: Up to this many devices :meth:`LinkBook.ready_row` prices device by device (NumPy's overhead on short
#: rows costs more than it saves: about 15% more for the list schedulers on 8 devices).
ROW_DEVICES = 16


@dataclass
class RouteTables:
    """What every :class:`LinkBook` of an instance shares, built once per instance (``Instance.derived``).

    Attributes:
        count: link resources, the devices' copy-engine resources included.
        engine: per device, its copy-engine resource (a device without a copy engine), else -1.
        engines: (device, its resource) of those devices.
        routes: ``routes[a][b]``, the resources a transfer from ``a`` to ``b`` holds, engines included.
    """

    count: int
    engine: list[int]
    engines: list[tuple[int, int]]
    routes: list[list[tuple[int, ...]]]
    _ids: np.ndarray | None = None

    @classmethod
    def of(cls, inst: Instance) -> RouteTables:
        count = 1 + max((r for row in inst.resources for route in row for r in route), default=-1)
        # A device without a copy engine (category cpu) is one more resource of its transfers.
        engine = [-1] * inst.num_devices
        for d, device in enumerate(inst.devices):
            if device.category == "cpu":
                engine[d], count = count, count + 1
        routes = [
            [(*route, *(r for r in dict.fromkeys((engine[a], engine[b])) if r >= 0)) for b, route in enumerate(row)]
            for a, row in enumerate(inst.resources)
        ]
        return cls(count, engine, [(d, r) for d, r in enumerate(engine) if r >= 0], routes)

    def route_ids(self) -> np.ndarray:
        """(D, D, K) the routes' resources, padded with ``count`` (a resource always free at 0)."""
        if self._ids is None:
            D = len(self.routes)
            K = max((len(route) for row in self.routes for route in row), default=0)
            self._ids = np.full((D, D, max(1, K)), self.count, dtype=np.int64)
            for a, row in enumerate(self.routes):
                for b, route in enumerate(row):
                    self._ids[a, b, : len(route)] = route
        return self._ids


class LinkBook:
    """When each link resource is next free and each producer's output reaches each device (module
    docstring)."""

    def __init__(self, inst: Instance, gradients: bool = True) -> None:
        """``gradients``: in training, book each transfer's gradient after it (the folded model); False
        books forward transfers only."""
        self.inst = inst
        tables = inst.derived.get("linkbook")
        if not isinstance(tables, RouteTables):
            tables = inst.derived["linkbook"] = RouteTables.of(inst)
        self.tables = tables
        self.engine, self.engines, self.routes = tables.engine, tables.engines, tables.routes
        count = tables.count
        self.free = [0.0] * count
        self.arrival: dict[tuple[int, int], float] = {}  # (producer, device) -> when its output is there
        self.sent: dict[tuple[int, int], float] = {}  # (producer, device) -> bytes sent there so far
        # The same per producer, as (D,) rows for ready_row (sent -1: nothing sent yet).
        self._arrival_rows: dict[int, np.ndarray] = {}
        self._sent_rows: dict[int, np.ndarray] = {}
        self._grad = inst.needs_grad.tolist() if inst.has_bwd and gradients else [False] * inst.n
        self._nbytes = inst.nbytes.tolist()
        self._lat, self._inv_bw, self._measured = inst.lat.tolist(), inst.inv_bw.tolist(), inst.measured

    def engine_free(self, d: int) -> float:
        """When device ``d``, if it has no copy engine, is next free of transfers (0 otherwise)."""
        r = self.engine[d]
        return self.free[r] if r >= 0 else 0.0

    def run(self, d: int, start: float, end: float) -> float:
        """A task on device ``d`` from ``start`` to ``end``: on a device without a copy engine it waits
        for the transfers booked there and keeps later ones waiting until it ends. Returns its start."""
        r = self.engine[d]
        if r < 0:
            return start
        begin = max(start, self.free[r])
        self.free[r] = begin + (end - start)
        return begin

    def send(self, a: int, b: int, ready: float, duration: float) -> float:
        """Book one transfer from device ``a`` to ``b`` of ``duration`` ms, requested at ``ready``;
        return its end."""
        return self._hold(self.routes[a][b], ready, duration, None)

    def ready(self, v: int, d: int, dev: np.ndarray, finish: np.ndarray) -> float:
        """When all of ``v``'s inputs can be on device ``d`` (its producers placed), booking nothing."""
        return self._route(v, d, dev, finish, {})

    def book(self, v: int, d: int, dev: np.ndarray, finish: np.ndarray) -> float:
        """Book the transfers :meth:`ready` priced for ``v`` on ``d``; return the same data-ready time."""
        return self._route(v, d, dev, finish, None)

    def _route(self, v: int, d: int, dev: np.ndarray, finish: np.ndarray, probe: dict[int, float] | None) -> float:
        """Data-ready time of ``v`` on ``d``; link times go to ``probe`` (a scratch overlay) when given,
        else into the book."""
        inst = self.inst
        ready = 0.0
        preds = inst.preds[v]
        if len(preds) > 1:
            preds = sorted(preds, key=lambda p: (finish[p[0]], p[0]))
        scratch: dict[tuple[int, int], tuple[float, float]] = {}  # probe: (arrival, sent) per key
        for u, e in preds:
            a = int(dev[u])
            if a == d:
                t = float(finish[u])
            else:
                key = (u, d)
                arrived, sent = scratch.get(key) or (self.arrival.get(key, 0.0), self.sent.get(key, -1.0))
                need = self._nbytes[e]
                if need <= sent:
                    t = arrived
                else:
                    m = self._measured.get(e) if sent < 0 else None
                    if m is not None:
                        there, back = float(m[a, d]), float(m[d, a])
                    else:  # route latency + bytes / bandwidth; past a first send, only the bytes missing
                        rest = need if sent < 0 else need - sent
                        there = self._lat[a][d] + rest * self._inv_bw[a][d]
                        back = self._lat[d][a] + rest * self._inv_bw[d][a]
                    end = self._hold(self.routes[a][d], float(finish[u]), there, probe)
                    if self._grad[u]:
                        end = self._hold(self.routes[d][a], end, back, probe)
                    t = max(arrived, end)
                    if probe is None:
                        self.arrival[key], self.sent[key] = t, need
                        self._row(self._arrival_rows, u, 0.0)[d] = t
                        self._row(self._sent_rows, u, -1.0)[d] = need
                    else:
                        scratch[key] = (t, need)
            if t > ready:
                ready = t
        return ready

    def _row(self, rows: dict[int, np.ndarray], u: int, fill: float) -> np.ndarray:
        row = rows.get(u)
        if row is None:
            row = rows[u] = np.full(self.inst.num_devices, fill)
        return row

    def ready_row(self, v: int, dev: np.ndarray, finish: np.ndarray) -> np.ndarray:
        """(D,) :meth:`ready` of ``v`` on every device, priced for all devices at once (module docstring)."""
        inst = self.inst
        D = inst.num_devices
        preds = inst.preds[v]
        if D <= ROW_DEVICES or any(e in self._measured for _, e in preds):  # device by device
            return np.asarray([self.ready(v, d, dev, finish) for d in range(D)])
        if len(preds) > 1:
            preds = sorted(preds, key=lambda p: (finish[p[0]], p[0]))
        ready = np.zeros(D)
        if not preds:
            return ready
        route_ids, pad, lat, inv_bw = self.tables.route_ids(), self.tables.count, inst.lat, inst.inv_bw
        free = np.asarray(self.free + [0.0])  # the padding resource last
        rows = np.arange(D)
        writes: list[tuple[np.ndarray, np.ndarray]] = []  # (resources (D, K), -1 where none; end (D,))
        scratch: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # producer -> (arrival, sent) rows

        def hold(route: np.ndarray, at: np.ndarray, duration: np.ndarray, active: np.ndarray) -> np.ndarray:
            held = free[route]
            for ids, end in writes:
                hit = (route[:, :, None] == ids[:, None, :]).any(axis=2)
                held = np.where(hit, np.maximum(held, end[:, None]), held)
            end = np.maximum(at, held.max(axis=1)) + duration
            writes.append((np.where(active[:, None] & (route != pad), route, -1), end))
            return end

        for u, e in preds:
            a = int(dev[u])
            fu = float(finish[u])
            if u in scratch:
                arrived, sent = scratch[u]
            else:
                arrived = self._arrival_rows.get(u)
                sent = self._sent_rows.get(u)
                arrived = np.zeros(D) if arrived is None else arrived
                sent = np.full(D, -1.0) if sent is None else sent
            need = self._nbytes[e]
            go = (rows != a) & (need > sent)
            rest = np.where(sent < 0, need, need - sent)
            there = lat[a] + rest * inv_bw[a]
            end = hold(route_ids[a], np.full(D, fu), there, go)
            if self._grad[u]:
                back = lat[:, a] + rest * inv_bw[:, a]
                end = hold(route_ids[:, a], end, back, go)
            t = np.where(go, np.maximum(arrived, end), arrived)
            t[a] = fu
            scratch[u] = (np.where(go, t, arrived), np.where(go, need, sent))
            np.maximum(ready, t, out=ready)
        return ready

    def _hold(self, route: Sequence[int], ready: float, duration: float, probe: dict[int, float] | None) -> float:
        """Hold every link of ``route`` from when all are free (not before ``ready``) for ``duration``;
        return the end."""
        free = self.free
        start = ready
        for r in route:
            f = probe.get(r, free[r]) if probe is not None else free[r]
            if f > start:
                start = f
        end = start + duration
        target = free if probe is None else probe
        for r in route:
            target[r] = end
        return end
