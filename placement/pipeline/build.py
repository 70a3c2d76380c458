"""From a placement :class:`~placement.problem.Problem` to a :class:`ThroughputInstance`, and back.

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

**Memory.** ``NodeData.memory_bytes`` where given; else, as the simulator counts it, parameters,
buffers, gradients and optimizer state plus activations in training, parameters, buffers and the
output in inference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from graphc.ir.graph import EdgeData
from placement.cost_model import graph_inputs
from placement.pipeline.instance import DeviceClass, Partition, ThroughputInstance
from placement.plan import Stage
from placement.problem import Problem
from placement.simulate import send_bytes

OPTIMIZER_STATE_FACTOR = 2.0  # Adam's two moments, as placement.simulate assumes


def is_paper_model(problem: Problem) -> bool:
    """Whether the graph comes from a NeurIPS 2020 dnn-partitioning file (module docstring)."""
    return problem.graph.meta.get("source") == "dnn-partitioning"


def device_classes(problem: Problem, replication: bool) -> list[DeviceClass]:
    """The classes of interchangeable devices (module docstring), in cluster order."""
    cluster, resolved = problem.cluster, problem.resolved
    paper = is_paper_model(problem)
    allows: list[set[str]] = [set() for _ in cluster.devices]
    for rep in resolved.groups:
        for d in resolved.allowed[rep]:
            allows[d].add(rep)
    keyed: dict[tuple, list[int]] = {}
    for d, dev in enumerate(cluster.devices):
        key = (dev.speed_key(), resolved.capacity[d], frozenset(allows[d]))
        keyed.setdefault(key, []).append(d)
    names_used: dict[str, int] = {}
    classes = []
    for (_, capacity, _), members in keyed.items():
        first = cluster.devices[members[0]]
        base = first.category if paper else first.kind
        names_used[base] = names_used.get(base, 0) + 1
        name = base if names_used[base] == 1 else f"{base}#{names_used[base]}"
        devices = tuple(cluster.devices[d].name for d in members)
        classes.append(
            DeviceClass(
                name=name,
                count=len(members),
                capacity=capacity,
                pays_comm=not (paper and first.category == "cpu"),
                allreduce_ms_per_byte=_ring_ms_per_byte(problem, devices) if replication else 0.0,
                devices=devices,
            )
        )
    return classes


def _ring_ms_per_byte(problem: Problem, devices: Sequence[str]) -> float:
    """Inverse bandwidth of the slowest hop of a ring over ``devices`` (ms per byte)."""
    if len(devices) < 2:
        return 0.0
    cluster = problem.cluster
    slowest = min(cluster.route(a, b).bandwidth for a, b in itertools.pairwise([*devices, devices[0]]))
    return 1e3 / slowest


def _representative_route(problem: Problem) -> tuple[float, float]:
    """(latency s, bandwidth bytes/s) of the median route between consecutive devices."""
    devs = problem.cluster.device_names
    if len(devs) < 2:
        return 0.0, math.inf
    routes = [problem.cluster.route(a, b) for a, b in itertools.pairwise(devs)]
    routes.sort(key=lambda r: r.bandwidth)
    mid = routes[len(routes) // 2]
    return mid.latency_s, mid.bandwidth


def instance_from_problem(problem: Problem, *, replication: bool | None = None) -> ThroughputInstance:
    """The throughput instance of ``problem`` (module docstring).

    ``replication``: allow replicated stages; default: yes, except for the NeurIPS 2020 model.
    """
    graph, cm, resolved = problem.graph, problem.cost_model, problem.resolved
    paper = is_paper_model(problem)
    replicate = (not paper) if replication is None else replication
    classes = device_classes(problem, replicate)
    names = graph.node_names()
    index = {name: i for i, name in enumerate(names)}
    data = [graph.node(n) for n in names]
    explicit = any(d.is_backward for d in data)
    training = problem.mode == "training"
    implicit_bwd = training and not explicit
    dropped = [d.is_backward and not training for d in data]  # backward nodes do not run in inference
    inputs = graph_inputs(graph)

    cluster = problem.cluster
    reps = [cluster.device(c.devices[0]) for c in classes]
    load = [[0.0] * len(classes) for _ in names]
    for t, rep in enumerate(reps):
        fwd, bwd = cm.node_times(data, [rep] * len(data), implicit_bwd)
        d_index = cluster.device_index(rep.name)
        for v, name in enumerate(names):
            if d_index not in resolved.allowed[name]:
                load[v][t] = math.inf
            elif name in inputs or dropped[v]:
                load[v][t] = 0.0
            else:
                load[v][t] = fwd[v] + (bwd[v] if implicit_bwd else 0.0)

    memory = []
    for v, nd in enumerate(data):
        if dropped[v]:
            memory.append(0.0)
        elif nd.memory_bytes is not None:
            memory.append(nd.memory_bytes)
        elif training:
            memory.append((2.0 + OPTIMIZER_STATE_FACTOR) * nd.param_bytes + nd.buffer_bytes + nd.activation_bytes)
        else:
            memory.append(nd.param_bytes + nd.buffer_bytes + nd.output_bytes)

    out_edges: dict[str, list[EdgeData]] = {}
    edges = []
    for u, w, e in graph.edges():
        if dropped[index[u]] or dropped[index[w]]:
            continue
        edges.append((index[u], index[w]))
        out_edges.setdefault(u, []).append(e)
    latency, bandwidth = _representative_route(problem)
    comm = [0.0] * len(names)
    for u, es in out_edges.items():
        measured = [ms for e in es for ms in e.transfer_ms.values()]
        if measured:
            c = max(measured)
        elif bandwidth == math.inf:
            c = 0.0
        else:
            c = 1e3 * (latency + send_bytes(es) / bandwidth)
        comm[index[u]] = 2.0 * c if implicit_bwd else c

    colocate = [[index[m] for m in members] for members in resolved.groups.values() if len(members) > 1]
    return ThroughputInstance(
        names=list(names),
        load=load,
        memory=memory,
        edges=edges,
        comm=comm,
        classes=classes,
        colocate=colocate,
        backward=[d.is_backward for d in data],
        param_bytes=[d.param_bytes for d in data],
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
