r"""The max-load split as an integer program, solved by CP-SAT: non-contiguous, or contiguous to cross-check the DP.

Data: units :math:`a` (colocation groups) with loads :math:`p_{a,t}` and memory :math:`m_a`; devices
:math:`d` of class :math:`t(d)`; nodes :math:`u` with a transfer cost :math:`c_u > 0` and successors in
other units (:math:`W_u`: those units, :math:`a(u)`: the unit of :math:`u`). Times are scaled to integers
(:math:`\lfloor \sigma x \rceil`, :math:`\sigma` chosen so the largest possible load is about
:math:`10^9`); memory in bytes is kept exact when integral, else scaled conservatively.

Variables (:meth:`_Model.variables`): :math:`x_{a,d} \in \{0,1\}` unit :math:`a` on device :math:`d`
(only where allowed); :math:`z_{u,d} \in \{0,1\}` tensor :math:`u` crosses the boundary of :math:`d`
(only for classes that pay communication); :math:`T` the max-load.

Constraints:

* assignment (:meth:`_Model.assignment`): :math:`\sum_d x_{a,d} = 1`;
* memory (:meth:`_Model.memory`): :math:`\sum_a m_a x_{a,d} \le M_{t(d)}`;
* crossing (:meth:`_Model.crossing`): for :math:`w \in W_u`,
  :math:`x_{w,d} \wedge \neg x_{a(u),d} \Rightarrow z_{u,d}` (received) and
  :math:`x_{a(u),d} \wedge \neg x_{w,d} \Rightarrow z_{u,d}` (sent); one :math:`z` per tensor and device,
  so a tensor is paid once per device (the NeurIPS 2020 accounting);
* load (:meth:`_Model.load`): :math:`\sum_a p_{a,t(d)} x_{a,d} + \sum_u c_u z_{u,d} \le T`;
* symmetry (:meth:`_Model.symmetry`): devices of one class are interchangeable, so their loads are
  non-increasing in device order (non-contiguous) or their pipeline positions increasing (contiguous);
* contiguity, only when asked (:meth:`_Model.contiguity`): a position :math:`o_d \in [0, D)` per device,
  all different, and :math:`q_a \in [0, D)` per unit with :math:`x_{a,d} \Rightarrow q_a = o_d` and
  :math:`q_a \le q_b` for every pipeline edge between units (:func:`~placement.pipeline.instance.pipeline_edges`:
  the forward structure, plus mirrored gradient edges of backward-only units): the quotient graph follows
  the order of positions, so it is acyclic, which is exactly the contiguity the DP optimises over.

Objective: minimise :math:`T`. The split found is re-scored exactly in floating point. The proven bound is
:math:`(B - \tfrac{K}{2}) / \sigma` with :math:`B` CP-SAT's bound and :math:`K` the most terms a device's
load can have, since rounding moves any load by at most :math:`K/2` units; for the same reason an
"optimal" split is optimal up to :math:`K/\sigma` ms (``stats["resolution_ms"]``): splits closer than
that in max-load are not told apart. No replication: a replicated
stage is PipeDream's idea for pipelines, which the DP covers; :func:`placement.pipeline.replicate` adds
replicas to any fixed split.

Determinism: one worker (the default) under a deterministic time limit of
:data:`DETERMINISTIC_PER_SECOND` per nominal second of budget, so that a seed reproduces the split
whatever the load of the machine; the wall clock (``wall_limit``, default twice the budget) is only a
safety net, and ``stats["stopped_by_wall_clock"]`` says when it, rather than the deterministic limit,
ended the search. Several workers run interleaved (OR-Tools' deterministic parallel mode), but they
overshoot the deterministic limit (3.2 deterministic seconds for a limit of 1 on Inception-v3), so the
wall clock often ends their search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from graphc.ir.deprecation import renamed_keywords
from placement.constraints import InfeasibleError
from placement.errors import PlacementError
from placement.pipeline.instance import (
    Partition,
    ThroughputInstance,
    colocation_units,
    format_bytes,
    is_contiguous,
    make_part,
    max_load,
    pipeline_edges,
)
from placement.problem import deterministic_solver

TARGET_SCALE = 1e9  # the largest possible load, in integer units
# CP-SAT's deterministic seconds per nominal second of budget. Measured on the benchmark inputs: 0.25
# (presolve, barely charged) to 1.5 deterministic seconds per wall second; so a solve stays near its
# nominal time on a quiet machine.
DETERMINISTIC_PER_SECOND = 0.5


@dataclass
class _Data:
    inst: ThroughputInstance
    units: list[int]  # unit representatives
    unit_nodes: list[list[int]]
    unit_of: list[int]  # node -> unit index
    devices: list[int]  # device -> class
    scale: float
    load: list[list[int | None]]  # unit x class, None = not allowed
    memory: list[int]
    capacity: list[int | None]  # per class, None = unlimited
    tensors: list[tuple[int, int, list[int]]]  # (cost, unit of u, successor units)
    terms: int


def _data(inst: ThroughputInstance) -> _Data:
    unit = colocation_units(inst)
    reps = sorted(set(unit))
    index = {r: i for i, r in enumerate(reps)}
    unit_of = [index[unit[v]] for v in range(inst.n)]
    unit_nodes: list[list[int]] = [[] for _ in reps]
    for v, a in enumerate(unit_of):
        unit_nodes[a].append(v)
    k = len(inst.classes)
    raw = [[math.fsum(inst.load[v][t] for v in nodes) for t in range(k)] for nodes in unit_nodes]
    succ_units: dict[int, set[int]] = {}
    for u, w in inst.edges:
        if unit_of[u] != unit_of[w] and inst.comm[u] > 0:
            succ_units.setdefault(u, set()).add(unit_of[w])
    biggest = math.fsum(max((x for x in row if x != math.inf), default=0.0) for row in raw)
    biggest += math.fsum(inst.comm[u] for u in succ_units)
    scale = TARGET_SCALE / biggest if biggest > 0 else 1.0
    load = [[None if x == math.inf else round(x * scale) for x in row] for row in raw]
    mem_raw = [math.fsum(inst.memory[v] for v in nodes) for nodes in unit_nodes]
    caps = [c.capacity for c in inst.classes]
    if all(float(m).is_integer() for m in mem_raw) and sum(mem_raw) < 2**62:
        memory = [int(m) for m in mem_raw]
        capacity = [None if c == math.inf else math.floor(c) for c in caps]
    else:  # scale so the total is about 1e15; round memory up and capacity down (conservative)
        mscale = 1e15 / max(1.0, sum(mem_raw))
        memory = [math.ceil(m * mscale) for m in mem_raw]
        capacity = [None if c == math.inf else math.floor(c * mscale) for c in caps]
    tensors = [(round(inst.comm[u] * scale), unit_of[u], sorted(ws)) for u, ws in sorted(succ_units.items())]
    return _Data(inst, reps, unit_nodes, unit_of, inst.device_classes(), scale, load, memory, capacity, tensors,
                 terms=len(reps) + len(tensors))  # fmt: skip


class _Model:
    """The CP-SAT model of the module docstring, one method per family of constraints."""

    def __init__(self, data: _Data, contiguous: bool) -> None:
        self.d = data
        self.contiguous = contiguous
        self.m = cp_model.CpModel()
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        self.z: dict[tuple[int, int], cp_model.IntVar] = {}
        self.loads: list = []

    def variables(self) -> None:
        d = self.d
        for a in range(len(d.units)):
            for dev, t in enumerate(d.devices):
                if d.load[a][t] is not None:
                    self.x[a, dev] = self.m.new_bool_var(f"x_{a}_{dev}")
        upper = sum(max((x for x in row if x is not None), default=0) for row in d.load) + sum(c for c, _, _ in d.tensors)
        self.T = self.m.new_int_var(0, upper, "T")
        self.upper = upper

    def assignment(self) -> None:
        for a in range(len(self.d.units)):
            choices = [self.x[a, dev] for dev in range(len(self.d.devices)) if (a, dev) in self.x]
            if not choices:
                raise InfeasibleError(f"node(s) {[self.d.inst.names[v] for v in self.d.unit_nodes[a]]} may use no device")
            self.m.add_exactly_one(choices)

    def memory(self) -> None:
        d = self.d
        for dev, t in enumerate(d.devices):
            cap = d.capacity[t]
            if cap is None:
                continue
            terms = [d.memory[a] * self.x[a, dev] for a in range(len(d.units)) if (a, dev) in self.x and d.memory[a]]
            if terms:
                self.m.add(sum(terms) <= cap)

    def crossing(self) -> None:
        d = self.d
        for dev, t in enumerate(d.devices):
            if not d.inst.classes[t].pays_comm:
                continue
            for i, (cost, a, ws) in enumerate(d.tensors):
                if cost == 0:
                    continue
                xa = self.x.get((a, dev))
                xws = [self.x[w, dev] for w in ws if (w, dev) in self.x]
                if xa is None and not xws:
                    continue
                z = self.m.new_bool_var(f"z_{i}_{dev}")
                self.z[i, dev] = z
                for xw in xws:
                    self.m.add_bool_or([xw.Not(), z] + ([xa] if xa is not None else []))  # received
                if xa is not None:
                    if len(xws) < len(ws):  # some successor unit may not use this device: always sent
                        self.m.add_implication(xa, z)
                    for xw in xws:
                        self.m.add_bool_or([xa.Not(), xw, z])  # sent

    def load(self) -> None:
        d = self.d
        for dev, t in enumerate(d.devices):
            terms = [d.load[a][t] * self.x[a, dev] for a in range(len(d.units)) if (a, dev) in self.x and d.load[a][t]]
            terms += [d.tensors[i][0] * z for (i, dd), z in self.z.items() if dd == dev]
            expr = sum(terms) if terms else 0
            load = self.m.new_int_var(0, self.upper, f"load_{dev}")
            self.m.add(load == expr)
            self.m.add(load <= self.T)
            self.loads.append(load)

    def contiguity(self) -> None:
        d = self.d
        nd = len(d.devices)
        self.order = [self.m.new_int_var(0, nd - 1, f"o_{dev}") for dev in range(nd)]
        self.m.add_all_different(self.order)
        self.pos = [self.m.new_int_var(0, nd - 1, f"q_{a}") for a in range(len(d.units))]
        for (a, dev), x in self.x.items():
            self.m.add(self.pos[a] == self.order[dev]).only_enforce_if(x)
        seen = set()
        for u, w in pipeline_edges(d.inst):
            a, b = d.unit_of[u], d.unit_of[w]
            if a != b and (a, b) not in seen:
                seen.add((a, b))
                self.m.add(self.pos[a] <= self.pos[b])

    def symmetry(self) -> None:
        devs = self.d.devices
        for dev in range(len(devs) - 1):
            if devs[dev] == devs[dev + 1]:
                if self.contiguous:
                    self.m.add(self.order[dev] < self.order[dev + 1])
                else:
                    self.m.add(self.loads[dev] >= self.loads[dev + 1])

    def hint(self, partition: Partition) -> None:
        """Start from ``partition``: its parts on devices of their class, ordered to satisfy the symmetry."""
        d = self.d
        by_class: dict[int, list[int]] = {}
        for i, p in enumerate(partition.parts):
            by_class.setdefault(p.device_class, []).append(i)
        device_of_part: dict[int, int] = {}
        for t, parts in by_class.items():
            devs = [dev for dev, c in enumerate(d.devices) if c == t]
            if not self.contiguous:
                parts = sorted(parts, key=lambda i: -partition.parts[i].load)
            for i, dev in zip(parts, devs):
                device_of_part[i] = dev
        if len(device_of_part) != len(partition.parts) or any(p.replicas > 1 for p in partition.parts):
            return
        unit_dev = {}
        for i, p in enumerate(partition.parts):
            for v in p.nodes:
                unit_dev[d.unit_of[v]] = device_of_part[i]
        for (a, dev), x in self.x.items():
            self.m.add_hint(x, unit_dev.get(a) == dev)
        if self.contiguous:
            pos_of_dev = {device_of_part[i]: i for i in range(len(partition.parts))}
            # Used devices in pipeline order, then the unused ones in device order (positions of one
            # class then increase with the device index, as the symmetry constraints want).
            order = sorted(range(len(d.devices)), key=lambda dev: (dev not in pos_of_dev, pos_of_dev.get(dev, dev)))
            rank = {dev: r for r, dev in enumerate(order)}
            for dev, var in enumerate(self.order):
                self.m.add_hint(var, rank[dev])
            for a, var in enumerate(self.pos):
                self.m.add_hint(var, rank[unit_dev[a]])

    def build(self) -> None:
        self.variables()
        self.assignment()
        self.memory()
        self.crossing()
        self.load()
        if self.contiguous:
            self.contiguity()
        self.symmetry()
        self.m.minimize(self.T)


@renamed_keywords(time_limit="time_limit_s", wall_limit="wall_limit_s")
def noncontiguous_ilp(
    inst: ThroughputInstance,
    *,
    time_limit_s: float = 10.0,
    seed: int = 0,
    contiguous: bool = False,
    hint: Partition | None = None,
    workers: int = 1,
    wall_limit_s: float | None = None,
) -> Partition:
    """Minimise the max-load with CP-SAT (module docstring); ``contiguous=True`` adds the contiguity constraints.

    ``time_limit_s`` is the nominal budget in seconds, spent as CP-SAT's deterministic time (module
    docstring); ``wall_limit_s`` (default ``2 * time_limit_s``) stops a search the machine makes slow.

    Returns the best split found with its exact max-load, ``optimal`` when CP-SAT proved it, and the
    proven lower bound. Raises :class:`InfeasibleError` when CP-SAT proves no split fits, and
    :class:`PlacementError` when it finds none in the time limit.
    """
    started = time.perf_counter()
    data = _data(inst)
    model = _Model(data, contiguous)
    model.build()
    if hint is not None:
        model.hint(hint)
    solver = deterministic_solver(time_limit_s, DETERMINISTIC_PER_SECOND, seed=seed, workers=workers, wall_limit=wall_limit_s)
    status = solver.solve(model.m)
    name = solver.status_name(status)
    if status == cp_model.INFEASIBLE:
        raise _infeasible(inst, data, contiguous)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise PlacementError(f"CP-SAT found no split within {time_limit_s:.1f} s (status {name})")
    parts = []
    for dev, t in enumerate(data.devices):
        nodes = [v for a in range(len(data.units)) if (a, dev) in model.x and solver.value(model.x[a, dev]) for v in data.unit_nodes[a]]
        if nodes:
            parts.append((solver.value(model.order[dev]) if contiguous else dev, make_part(inst, nodes, t)))
    parts.sort(key=lambda item: item[0])
    split = [p for _, p in parts]
    value = max_load(inst, split)
    bound = max(0.0, (solver.best_objective_bound - data.terms / 2) / data.scale)
    optimal = status == cp_model.OPTIMAL
    return Partition(
        parts=split,
        max_load=value,
        method="ilp-contiguous" if contiguous else "ilp",
        optimal=optimal,
        bound=min(bound, value),
        contiguous=is_contiguous(inst, split),
        seconds=time.perf_counter() - started,
        stats={
            "status": name,
            "objective_int": solver.objective_value,
            "bound_int": solver.best_objective_bound,
            "scale": data.scale,
            "resolution_ms": data.terms / data.scale,
            "units": len(data.units),
            "devices": len(data.devices),
            "conflicts": solver.num_conflicts,
            "seed": seed,
            "time_limit": time_limit_s,
            "deterministic_s": solver.deterministic_time,
            "stopped_by_wall_clock": not optimal and (
                solver.deterministic_time < 0.95 * solver.parameters.max_deterministic_time
                or solver.wall_time >= 0.99 * solver.parameters.max_time_in_seconds
            ),
        },
    )


def _infeasible(inst: ThroughputInstance, data: _Data, contiguous: bool) -> InfeasibleError:
    """Explain infeasibility: total memory against total capacity, or a unit larger than any device."""
    for a, nodes in enumerate(data.unit_nodes):
        mem = math.fsum(inst.memory[v] for v in nodes)
        caps = [c.capacity for t, c in enumerate(inst.classes) if data.load[a][t] is not None]
        if caps and mem > max(caps):
            names = [inst.names[v] for v in nodes]
            return InfeasibleError(
                f"{names[:4]} need {format_bytes(mem)} on one device, but the largest device they may use holds "
                f"{format_bytes(max(caps))} (over by {format_bytes(mem - max(caps))})"
            )
    total = math.fsum(inst.memory)
    room = math.fsum(c.capacity * c.count for c in inst.classes)
    what = "contiguous split" if contiguous else "split"
    if total > room:
        return InfeasibleError(
            f"the graph needs {format_bytes(total)} but all devices together hold {format_bytes(room)} "
            f"(over by {format_bytes(total - room)})"
        )
    least = _least_overflow(data, contiguous)
    if least is None:
        return InfeasibleError(f"no {what} satisfies the allowed kinds and colocation (CP-SAT proved it)")
    device, need, cap, proven = least
    return InfeasibleError(
        f"no {what} fits in memory: the best one {'still' if proven else 'found'} needs {format_bytes(need)} on "
        f"{device} ({format_bytes(cap)}; over by {format_bytes(need - cap)}). Use more devices or a larger "
        "memory budget."
    )


def _least_overflow(data: _Data, contiguous: bool, time_limit: float = 5.0):
    """(device, bytes, capacity, proven) of the split whose worst memory overflow is least, or None."""
    model = _Model(data, contiguous)
    model.variables()
    model.assignment()
    if contiguous:
        model.contiguity()
    m = model.m
    caps = [c for c in data.capacity if c is not None]
    worst = m.new_int_var(-max(caps, default=0), sum(data.memory), "overflow")
    uses: list[tuple[int, object]] = []
    for dev, t in enumerate(data.devices):
        if data.capacity[t] is None:
            continue
        terms = [data.memory[a] * model.x[a, dev] for a in range(len(data.units)) if (a, dev) in model.x]
        used = sum(terms) if terms else 0
        m.add(worst >= used - data.capacity[t])
        uses.append((dev, used))
    if not uses:
        return None
    m.minimize(worst)
    solver = deterministic_solver(time_limit, DETERMINISTIC_PER_SECOND)
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    inst = data.inst
    best = None
    for dev, _ in uses:
        t = data.devices[dev]
        nodes = [v for a in range(len(data.units)) if (a, dev) in model.x and solver.value(model.x[a, dev]) for v in data.unit_nodes[a]]
        need = math.fsum(inst.memory[v] for v in nodes)
        cls = inst.classes[t]
        over = need - cls.capacity
        if best is None or over > best[0]:
            index = sum(1 for d in range(dev) if data.devices[d] == t)
            name = cls.devices[index] if index < len(cls.devices) else f"{cls.name}[{index}]"
            best = (over, name, need, cls.capacity)
    if best is None or best[0] <= 0:
        return None
    return best[1], best[2], best[3], status == cp_model.OPTIMAL
