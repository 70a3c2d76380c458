"""From a placement :class:`~placement.problem.Problem` to a :class:`ThroughputInstance`, and back.

The instance is read from the problem's lowering (:mod:`placement.lowering`), the arrays the solver
instances and the bounds share: its nodes in the simulator's topological order (then, in inference,
the explicit backward nodes, which do not run), their times per device class, memory and edges.

**Device classes.** Devices are interchangeable when the cost model sees them alike (kind, category,
peak FLOP/s, memory bandwidth, op overhead), they have the same usable memory (capacity after the
memory budget), and the resolved constraints allow the same nodes on them (a pin makes its device a
class of its own). Classes keep the cluster's order of devices.

**Node loads.** ``load[v][t]`` is the cost model's time of ``v`` on a device of class ``t`` per step: in
training of a graph of forward nodes its forward plus backward time, otherwise its own pass (explicit
backward nodes of the dnn-partitioning training files are nodes like any other). Graph inputs cost 0.
A node the constraints keep off a class gets ``inf``. In inference, explicit backward nodes do not run:
load 0 and no edges.

**Transfers.** ``comm[u]`` is the time of ``u``'s output tensor: the edge's measured ``transfer_ms``
where the graph gives one (the largest over ``u``'s out-edges; the dnn-partitioning files give the same
for all), else the cost model's time for the tensor's bytes on a representative route (the median, by
bandwidth, of the routes between consecutive devices of the cluster, where a pipeline's neighbouring
stages are placed). In training of a graph of forward nodes the gradient comes back the same way, so
``comm`` is doubled.

**The NeurIPS 2020 model.** For graphs imported from its files (``graph.meta["source"] ==
"dnn-partitioning"``) the instance is the paper's: CPUs pay no communication (the data is in their
DRAM), each accelerator pays ``cost`` for every tensor it sends or receives, memory is the files'
``size``, and there is no replication.

**Memory.** The lowering's ``static + held``, as the simulator counts it: ``NodeData.memory_bytes``
where given; else parameters and buffers, in training also gradients and optimizer state, plus the
activations in training of a graph of forward nodes, the output otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from placement.constraints import Resolved
from placement.lowering import Lowered, gc_paused
from placement.pipeline.instance import DeviceClass, Partition, ThroughputInstance
from placement.plan import Stage
from placement.problem import Problem


def is_paper_model(problem: Problem) -> bool:
    """Whether the graph comes from a NeurIPS 2020 dnn-partitioning file (module docstring)."""
    return problem.graph.meta.get("source") == "dnn-partitioning"


def device_classes(problem: Problem, replication: bool) -> list[DeviceClass]:
    """The classes of interchangeable devices (module docstring), in cluster order."""
    lw, resolved = problem.lowered(), problem.resolved
    paper = is_paper_model(problem)
    D = lw.num_devices
    forbids: list[set[str]] = [set() for _ in lw.devices]  # the groups kept off each device
    for rep in resolved.groups:
        allowed = resolved.allowed[rep]
        if len(allowed) < D:
            for d in set(range(D)).difference(allowed):
                forbids[d].add(rep)
    keyed: dict[tuple, list[int]] = {}
    for d in range(D):
        key = (int(lw.device_class[d]), resolved.capacity[d], frozenset(forbids[d]))
        keyed.setdefault(key, []).append(d)
    names_used: dict[str, int] = {}
    classes = []
    for (_, capacity, _), members in keyed.items():
        first = lw.devices[members[0]]
        base = first.category if paper else first.kind
        names_used[base] = names_used.get(base, 0) + 1
        name = base if names_used[base] == 1 else f"{base}#{names_used[base]}"
        classes.append(
            DeviceClass(
                name=name,
                count=len(members),
                capacity=capacity,
                pays_comm=not (paper and first.category == "cpu"),
                allreduce_ms_per_byte=_ring_ms_per_byte(lw, members) if replication else 0.0,
                devices=tuple(lw.devices[d].name for d in members),
            )
        )
    return classes


def _ring_ms_per_byte(lw: Lowered, devices: Sequence[int]) -> float:
    """Inverse bandwidth of the slowest hop of a ring over the device ids ``devices`` (ms per byte)."""
    if len(devices) < 2:
        return 0.0
    slowest = min(lw.bandwidth[a, b] for a, b in itertools.pairwise([*devices, devices[0]]))
    return 1e3 / float(slowest)


def _representative_route(lw: Lowered) -> tuple[float, float]:
    """(latency s, bandwidth bytes/s) of the median route between consecutive devices."""
    if lw.num_devices < 2:
        return 0.0, math.inf
    hops = sorted(range(lw.num_devices - 1), key=lambda a: lw.bandwidth[a, a + 1])
    mid = hops[len(hops) // 2]
    return float(lw.latency_s[mid, mid + 1]), float(lw.bandwidth[mid, mid + 1])


def instance_from_problem(problem: Problem, *, replication: bool | None = None) -> ThroughputInstance:
    """The throughput instance of ``problem`` (module docstring), read from its lowering
    (:meth:`Problem.lowered <placement.problem.Problem.lowered>`).

    ``replication``: allow replicated stages; default: yes, except for the NeurIPS 2020 model.
    """
    lw, resolved = problem.lowered(), problem.resolved
    paper = is_paper_model(problem)
    replicate = (not paper) if replication is None else replication
    classes = device_classes(problem, replicate)
    with gc_paused():
        return _instance(lw, resolved, classes, replicate)


def _instance(lw: Lowered, resolved: Resolved, classes: list[DeviceClass], replicate: bool) -> ThroughputInstance:
    # The lowering's nodes (topological order), then the nodes that do not run (backward in inference).
    names = [*lw.names, *lw.dropped]
    index = dict(lw.index)
    index.update((name, lw.n + i) for i, name in enumerate(lw.dropped))
    n, D = len(names), lw.num_devices

    reps = [lw.cluster.device_index(c.devices[0]) for c in classes]
    work = (lw.class_fwd + lw.class_bwd)[:, lw.device_class[reps]]  # (kept, classes); inputs 0
    load = np.vstack([work, np.zeros((len(lw.dropped), len(classes)))])
    for v, name in enumerate(names):
        allowed = resolved.allowed[name]
        if len(allowed) < D:
            load[v, [rep not in allowed for rep in reps]] = math.inf

    memory = (lw.static + lw.held).tolist() + [0.0] * len(lw.dropped)

    latency, bandwidth = _representative_route(lw)
    any_measured = any(ed.transfer_ms for ed in lw.edge_data)
    comm = [0.0] * n
    for u, outs in enumerate(lw.succs):
        if not outs:
            continue
        measured = [ms for _, e in outs for ms in lw.edge_data[e].transfer_ms.values()] if any_measured else None
        if measured:
            c = max(measured)
        elif bandwidth == math.inf:
            c = 0.0
        else:
            c = 1e3 * (latency + float(lw.send_bytes[u]) / bandwidth)
        comm[u] = 2.0 * c if lw.has_bwd else c

    colocate = [[index[m] for m in members] for members in resolved.groups.values() if len(members) > 1]
    return ThroughputInstance(
        names=names,
        load=load.tolist(),
        memory=memory,
        edges=list(zip(lw.src.tolist(), lw.dst.tolist())),
        comm=comm,
        classes=classes,
        colocate=colocate,
        backward=[d.is_backward for d in lw.data] + [True] * len(lw.dropped),
        param_bytes=lw.param_bytes.tolist() + [lw.graph.node(name).param_bytes for name in lw.dropped],
        replication=replicate and any(c.count > 1 for c in classes),
    )


def stages_of(inst: ThroughputInstance, partition: Partition) -> tuple[dict[str, str], list[Stage]]:
    """Concrete devices for a split: each part takes the next unused devices of its class, in order.

    Returns the node -> device assignment (a replicated part's nodes go on its first replica; the
    others are in its :class:`~placement.plan.Stage`) and the stages in the partition's order.
    """
    used = [0] * len(inst.classes)
    assignment: dict[str, str] = {}
    stages = []
    for i, part in enumerate(partition.parts):
        cls = inst.classes[part.device_class]
        devices = list(cls.devices[used[part.device_class] : used[part.device_class] + part.replicas])
        used[part.device_class] += part.replicas
        for v in part.nodes:
            assignment[inst.names[v]] = devices[0]
        stages.append(Stage(index=i, nodes=[inst.names[v] for v in part.nodes], devices=devices))
    return assignment, stages
