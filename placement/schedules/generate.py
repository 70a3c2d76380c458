"""Generating the schedule of a plan: per device, its compute in order, with the messages and collectives
that connect the devices, and the optimizer step.

Tensors are named by the node that produces them: the output of node ``u`` goes once to every other
device (or stage) that holds consumers of it, whatever the number of consumers there, as the simulator
sends it. Graph inputs (:func:`placement.graph_inputs`) run a forward (providing the microbatch) and
receive no gradient. Inference plans (``mode="inference"``) run forwards only: no backward, no gradient,
no all-reduce, no optimizer step.

``node-order`` (any plan without replicated stages; the schedule of latency plans). Each device runs
its nodes in ``Plan.order[device]`` when the plan gives one, else in the simulator's topological order
(:func:`placement.lowering.running_nodes`, the lowering's node order) restricted to the device; for each microbatch in turn,
then, in training, their backwards in the reverse order for each microbatch in turn (the simulator's
``order``). The output of a node goes out right after its forward (:class:`Send` to each consumer
device, in the order devices first appear) and is received right before its first consumer on the
receiving device. Backward runs the other way: the gradient of a node's output is received from each
consumer device right before the node's backward, and a device sends back the gradient of a received
tensor right after the backward of its first consumer there (the last of its consumers to run
backward, when all their contributions are summed). A graph with explicit backward nodes
(``NodeData.is_backward``) runs each node once as given: its backward nodes as :class:`Backward`, their
outputs sent as gradients.

``gpipe`` and ``1f1b`` (plans with stages). The stages in ``Stage.index`` order form the pipeline: data
may only flow from a stage to a later one. Stage ``s`` of ``S`` runs, on ``m`` microbatches:

* GPipe (Huang et al. 2019): ``F0 .. F(m-1)``, then in training ``B0 .. B(m-1)``;
* 1F1B (PipeDream-Flush, Narayanan et al. 2021; ``torch.distributed.pipelining.Schedule1F1B``):
  ``w = min(S - 1 - s, m)`` warm-up forwards, then ``F(w+i) B(i)`` for ``i < m - w``, then the
  remaining backwards; at most ``S - s`` microbatches hold activations at once. Forward-only, it is GPipe.

The executors run these schedules as given (:func:`runtime.schedule.device_work`). A stage replicated on
``r`` devices runs microbatch ``k`` on ``devices[k % r]`` (the simulator's round robin), so each replica
runs the stage's order restricted to its microbatches, then, in training, synchronises (below). Around
``F k`` of a stage are the receives of its inputs for ``k`` (from the replica of the producing stage
that ran ``k``) and the sends of its outputs; around ``B k`` the receives of its outputs' gradients and
the sends of its inputs' gradients. In training every device ends with an :class:`OptimizerStep`, but
for the replicas whose weights come from a parameter server.

Synchronisation (``plan.sync``, :mod:`placement.sync`). A replicated stage's gradients are cut into
buckets (:func:`placement.sync.gradient_buckets` over the stage's nodes in the order their backwards
run: the reverse of the lowering's topological order); a stage without parameters has none and does not
synchronise. The synchronisation actions follow the replica's last :class:`Backward` (and the sends of
its gradients): they are *issued* when that backward has made the bucket's gradients, as DDP's hooks do,
so the executors and the simulator may run them while that backward still computes the later buckets;
the list order is the order they are issued in. Each is named ``"stage {i} bucket {b}"`` and carries
the bucket's ``nodes`` and its index ``bucket`` (None when the stage has one bucket, so that its code is
``AR``, as :class:`placement.schedules.actions.BucketCollective` prints it):

* :class:`AllReduceSync`: every replica runs one :class:`AllReduce` per bucket, in bucket order, over the
  stage's devices with the sync's ``algorithm``; a hierarchical one carries its ``islands``
  (:func:`placement.sync.islands` on the plan's cluster, required), then its optimizer step;
* :class:`ParameterServerSync` (synchronous, ``staleness`` 0; ``staleness > 0`` is refused, by design:
  an asynchronous worker pushes and pulls on its own clock, so there is no step common to all ranks to
  list; :func:`runtime.servers.train_async` runs them and :func:`placement.simulate.async_server_step`
  prices them): the
  buckets of each stage are sharded over the servers (:func:`placement.sharding.assign_shards`, balanced
  by bytes over the servers' links from the replicas; the plan's cluster is required). Each replica runs
  a :class:`Reduce` of every bucket onto its server, then a :class:`Broadcast` of every bucket from it,
  and no optimizer step (its weights come from the server). The group of a bucket is the stage's
  replicas then its server. A server runs the reduces of its buckets (the stages from the last, whose
  backwards end first; each stage's buckets in order), its optimizer step, then its broadcasts in the same
  order. A server must be a device of the cluster that runs no node; a server holding no bucket gets no
  list of actions.

Interleaved 1F1B (several virtual stages per device) is not generated: a :class:`placement.Plan` gives
each stage its own devices, so there is no plan to interleave; a device in two stages is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, TypeVar

from placement.cost_model import graph_inputs
from placement.errors import ScheduleError
from placement.lowering import Lowered, running_nodes
from placement.schedules.actions import (
    Action,
    AllReduce,
    Backward,
    Broadcast,
    Forward,
    OptimizerStep,
    Recv,
    Reduce,
    Send,
)
from placement.schedules.schedule import Schedule
from placement.schedules.validate import validate
from placement.sharding import assign_shards
from placement.sync import AllReduceSync, Bucket, ParameterServerSync, gradient_buckets, islands

if TYPE_CHECKING:
    from graphc import Graph
    from placement import Plan
    from placement.plan import Stage

Place = TypeVar("Place", bound=Hashable)
StageOrder = Callable[[int, int, int, bool], list[tuple[bool, int]]]


def make_schedule(
    plan: Plan, name: str | None = None, graph: Graph | None = None, *, lowered: Lowered | None = None
) -> Schedule:
    """The schedule ``name`` of ``plan``, validated (:func:`validate`): ``"node-order"``, ``"gpipe"`` or
    ``"1f1b"`` (see the module docstring); by default ``gpipe`` for a plan with stages, else
    ``node-order``. ``graph`` defaults to the graph the plan carries.

    ``lowered``: the lowering of this graph in the plan's mode (:meth:`placement.problem.Problem.lowered`),
    whose nodes and graph inputs the schedule then reads; without it they are derived here the same way
    (:func:`placement.lowering.running_nodes`, :func:`placement.cost_model.graph_inputs`)."""
    graph = graph if graph is not None else plan.graph
    if graph is None:
        raise ScheduleError("the plan does not carry its graph (built by hand?): pass graph= to make_schedule")
    if lowered is not None and (lowered.graph is not graph or lowered.mode != plan.mode):
        raise ScheduleError(
            f"make_schedule: lowered= is the lowering of another graph or mode than the plan's {plan.mode} step of "
            f"{graph.name!r}: pass this graph's lowering, or none"
        )
    if lowered is not None:
        nodes = lowered.names
        inputs = {v for v, is_input in zip(lowered.names, lowered.is_input.tolist()) if is_input}
    else:
        nodes, inputs = running_nodes(graph, plan.mode), graph_inputs(graph)
    name = name or ("gpipe" if plan.stages else "node-order")
    if name == "node-order":
        schedule = _node_order(plan, graph, nodes, inputs)
    elif name in STAGE_ORDERS:
        schedule = _pipeline(plan, graph, name, nodes, inputs)
    else:
        raise ScheduleError(f"unknown schedule {name!r}; schedules: {', '.join(SCHEDULES)}")
    validate(schedule)
    return schedule


# -- shared -----------------------------------------------------------------------------------


def _consumer_places(
    graph: Graph, nodes: list[str], place: Mapping[str, Place], rank: Callable[[Place], int]
) -> dict[str, list[Place]]:
    """Producer -> the places (devices or stages) other than its own that hold consumers of its output,
    ordered by ``rank``; producers consumed only where they run are left out."""
    kept = set(nodes)
    out: dict[str, list[Place]] = {}
    for u in nodes:
        places = {place[v] for v in graph.successors(u) if v in kept} - {place[u]}
        if places:
            out[u] = sorted(places, key=rank)
    return out


# -- node order -------------------------------------------------------------------------------


def _node_order(plan: Plan, graph: Graph, nodes: list[str], inputs: set[str]) -> Schedule:
    """The ``node-order`` schedule (module docstring) of the running ``nodes`` (topological order);
    ``inputs``: the graph inputs."""
    if any(len(st.devices) > 1 for st in plan.stages):
        raise ScheduleError("node-order does not run replicated stages: use the gpipe or 1f1b schedule")
    training = plan.mode == "training"
    unassigned = [n for n in nodes if n not in plan.assignment]
    if unassigned:
        raise ScheduleError(f"the plan gives no device to node(s) {unassigned[:5]} of graph {graph.name!r}")
    device_of = {n: plan.assignment[n] for n in nodes}
    on_device: dict[str, list[str]] = {}
    for n in nodes:
        on_device.setdefault(device_of[n], []).append(n)
    devices = list(on_device)
    running = set(nodes)
    orders = {d: _device_order(plan, graph, d, on_device[d], running) for d in devices}
    rank = {d: i for i, d in enumerate(devices)}
    consumers = _consumer_places(graph, nodes, device_of, rank.__getitem__)
    topo = {n: i for i, n in enumerate(nodes)}
    firsts = {d: _first_consumers(graph, d, orders[d], device_of, topo) for d in devices}
    is_backward = {n: graph.node(n).is_backward for n in nodes}
    derive_backward = training and not any(is_backward.values())

    def forward(d: str, k: int) -> list[Action]:
        acts: list[Action] = []
        for v in orders[d]:
            acts += [Recv(d, device_of[u], u, k, is_backward[u]) for u in firsts[d][v]]
            acts.append((Backward if is_backward[v] else Forward)(d, k, node=v))
            acts += [Send(d, p, v, k, is_backward[v]) for p in consumers.get(v, [])]
        return acts

    def backward(d: str, k: int) -> list[Action]:
        acts: list[Action] = []
        for v in reversed(orders[d]):
            if v in inputs:
                continue
            acts += [Recv(d, p, v, k, True) for p in consumers.get(v, [])]
            acts.append(Backward(d, k, node=v))
            acts += [Send(d, device_of[u], u, k, True) for u in firsts[d][v] if u not in inputs]
        return acts

    actions: dict[str, list[Action]] = {d: [] for d in devices}
    for k in range(plan.microbatches):
        for d in devices:
            actions[d] += forward(d, k)
    if derive_backward:
        for k in range(plan.microbatches):
            for d in devices:
                actions[d] += backward(d, k)
    if training:
        for d in devices:
            actions[d].append(OptimizerStep(d))
    return Schedule("node-order", plan.objective, plan.microbatches, actions)


def _device_order(plan: Plan, graph: Graph, device: str, nodes: list[str], running: set[str]) -> list[str]:
    """``Plan.order[device]``, less the nodes that do not run (not in ``running``: backward nodes in
    inference), checked against ``nodes``, the device's nodes in topological order, which it defaults to."""
    if device not in plan.order:
        return nodes
    given = [n for n in plan.order[device] if n in running or n not in graph]
    if sorted(given) != sorted(nodes):
        missing, extra = sorted(set(nodes) - set(given)), sorted(set(given) - set(nodes))
        raise ScheduleError(
            f"plan.order[{device!r}] must list each node of {device} once: missing {missing[:5]}, "
            f"not on {device} {extra[:5]}, listed {len(given)} for {len(nodes)} nodes"
        )
    position = {n: i for i, n in enumerate(given)}
    for v in given:
        late = [u for u in graph.predecessors(v) if position.get(u, -1) > position[v]]
        if late:
            raise ScheduleError(
                f"plan.order[{device!r}] runs {v!r} before {late[0]!r}, which feeds it: put {late[0]!r} first"
            )
    return given


def _first_consumers(
    graph: Graph, device: str, order: list[str], device_of: Mapping[str, str], topo: Mapping[str, int]
) -> dict[str, list[str]]:
    """For each node of ``order`` (``device``'s), the tensors from other devices it is the first on the
    device to consume (in topological order): they are received right before it."""
    seen: set[str] = set()
    firsts: dict[str, list[str]] = {}
    for v in order:
        remote = [u for u in graph.predecessors(v) if u in topo and device_of[u] != device]
        remote.sort(key=topo.__getitem__)
        firsts[v] = [u for u in remote if u not in seen]
        seen.update(remote)
    return firsts


# -- pipelines --------------------------------------------------------------------------------


def _gpipe_order(stage: int, stages: int, microbatches: int, training: bool) -> list[tuple[bool, int]]:
    """(is backward, microbatch) in GPipe's order: every forward, then every backward."""
    forwards = [(False, k) for k in range(microbatches)]
    return forwards + ([(True, k) for k in range(microbatches)] if training else [])


def _one_f_one_b_order(stage: int, stages: int, microbatches: int, training: bool) -> list[tuple[bool, int]]:
    """(is backward, microbatch) in 1F1B's order: warm-up forwards, one forward one backward, cool-down."""
    if not training:
        return _gpipe_order(stage, stages, microbatches, training)
    warmup = min(stages - 1 - stage, microbatches)
    order = [(False, k) for k in range(warmup)]
    for k in range(warmup, microbatches):
        order += [(False, k), (True, k - warmup)]
    return order + [(True, k) for k in range(microbatches - warmup, microbatches)]


STAGE_ORDERS: dict[str, StageOrder] = {"gpipe": _gpipe_order, "1f1b": _one_f_one_b_order}
SCHEDULES = ("node-order", *STAGE_ORDERS)


def _pipeline(plan: Plan, graph: Graph, name: str, nodes: list[str], inputs: set[str]) -> Schedule:
    """The ``gpipe`` or ``1f1b`` schedule of a plan with stages (module docstring) of the running
    ``nodes`` (topological order); ``inputs``: the graph inputs."""
    training = plan.mode == "training"
    if not plan.stages:
        raise ScheduleError(f"{name} needs a plan with pipeline stages; this plan has none: use node-order")
    if training and any(n.is_backward for n in graph.nodes()):
        raise ScheduleError(
            f"{name} runs stages of forward nodes and derives their backward; graph {graph.name!r} has explicit "
            "backward nodes: use node-order"
        )
    stages = sorted(plan.stages, key=attrgetter("index"))
    stage_of = _stage_positions(stages, nodes, graph)
    outgoing = _consumer_places(graph, nodes, stage_of, int)
    incoming: list[list[str]] = [[] for _ in stages]
    for u, targets in outgoing.items():
        for t in targets:
            incoming[t].append(u)
    outgoing_of = [[u for u in outgoing if stage_of[u] == s] for s in range(len(stages))]
    m = plan.microbatches

    def runner(s: int, k: int) -> str:
        devices = stages[s].devices
        return devices[k % len(devices)]

    def forward(s: int, k: int) -> list[Action]:
        me = runner(s, k)
        return (
            [Recv(me, runner(stage_of[u], k), u, k) for u in incoming[s]]
            + [Forward(me, k, stage=stages[s].index)]
            + [Send(me, runner(t, k), u, k) for u in outgoing_of[s] for t in outgoing[u]]
        )

    def backward(s: int, k: int) -> list[Action]:
        me = runner(s, k)
        return (
            [Recv(me, runner(t, k), u, k, True) for u in outgoing_of[s] if u not in inputs for t in outgoing[u]]
            + [Backward(me, k, stage=stages[s].index)]
            + [Send(me, runner(stage_of[u], k), u, k, True) for u in incoming[s] if u not in inputs]
        )

    actions: dict[str, list[Action]] = {d: [] for st in stages for d in st.devices}
    for s in range(len(stages)):
        for is_backward, k in STAGE_ORDERS[name](s, len(stages), m, training):
            actions[runner(s, k)] += backward(s, k) if is_backward else forward(s, k)
    if training:
        _synchronise(plan, graph, stages, nodes, actions)
    return Schedule(name, plan.objective, m, actions)


# -- synchronisation of replicated stages -------------------------------------------------------


def _synchronise(
    plan: Plan, graph: Graph, stages: list[Stage], nodes: list[str], actions: dict[str, list[Action]]
) -> None:
    """Append to ``actions`` (each device's list, its compute done) the synchronisation of the replicated
    stages under ``plan.sync`` and the optimizer steps (module docstring); ``nodes``: the running nodes in
    topological order."""
    replicated = [st for st in stages if len(st.devices) > 1]
    buckets = {st.index: _stage_buckets(graph, st, nodes, plan.sync.bucket_bytes) for st in replicated}
    if isinstance(plan.sync, ParameterServerSync) and replicated:
        served = _parameter_servers(plan, replicated, buckets, actions)
    else:
        served = set()
        for st in replicated:
            _all_reduce(plan, st, buckets[st.index], actions)
    for d, acts in actions.items():
        if d not in served:
            acts.append(OptimizerStep(d))


def _stage_buckets(graph: Graph, stage: Stage, nodes: list[str], bucket_bytes: float | None) -> list[Bucket]:
    """The gradient buckets of ``stage``, its nodes in the order their backwards run (reverse topological)."""
    members = set(stage.nodes)
    return gradient_buckets(graph, [n for n in reversed(nodes) if n in members], bucket_bytes)


def _all_reduce(plan: Plan, stage: Stage, buckets: list[Bucket], actions: dict[str, list[Action]]) -> None:
    """Each replica of ``stage`` all-reduces its buckets in order, with ``plan.sync``'s algorithm."""
    sync = plan.sync
    assert isinstance(sync, AllReduceSync)
    group = tuple(stage.devices)
    parts: tuple[tuple[str, ...], ...] = ()
    if sync.algorithm == "hierarchical":
        if plan.cluster is None:
            raise ScheduleError(
                f"stage {stage.index}'s hierarchical all-reduce needs the plan's cluster to find the islands of "
                f"{list(group)}: set plan.cluster, or use algorithm='ring'"
            )
        parts = tuple(islands(plan.cluster, group))
    for d in group:
        actions[d] += [
            AllReduce(d, group, _bucket_name(stage, b), b.nodes, _index(b, buckets), sync.algorithm, parts)
            for b in buckets
        ]


def _bucket_name(stage: Stage, bucket: Bucket) -> str:
    return f"stage {stage.index} bucket {bucket.index}"


def _index(bucket: Bucket, buckets: list[Bucket]) -> int | None:
    """The ``bucket`` field of its actions: its index, None when it is its stage's only bucket."""
    return bucket.index if len(buckets) > 1 else None


def _parameter_servers(
    plan: Plan, replicated: list[Stage], buckets: dict[int, list[Bucket]], actions: dict[str, list[Action]]
) -> set[str]:
    """The parameter-server synchronisation (module docstring) of the ``replicated`` stages, appended to
    ``actions`` and to new lists for the servers that hold a bucket; returns the devices that take no
    optimizer step of their own: the replicas whose weights come from a server, and the servers, whose
    lists already hold theirs."""
    sync = plan.sync
    assert isinstance(sync, ParameterServerSync)
    if sync.staleness > 0:
        raise ScheduleError(
            f"parameter servers with staleness {sync.staleness}: asynchronous parameter servers are not generated "
            "yet as a step schedule, and are not meant to be (each worker pushes and pulls on its own clock): train "
            "them with runtime.servers.train_async, price them with placement.simulate.async_server_step, or use "
            "staleness=0 (synchronous)"
        )
    if plan.cluster is None:
        raise ScheduleError("parameter servers need the plan's cluster to shard the parameters: set plan.cluster")
    busy = set(actions) | set(plan.assignment.values())
    for server in sync.servers:
        if server not in plan.cluster:
            raise ScheduleError(
                f"parameter server {server!r} is not a device of cluster {plan.cluster.name!r}; devices: "
                f"{', '.join(plan.cluster.device_names)}"
            )
        if server in busy:
            raise ScheduleError(
                f"parameter server {server!r} runs nodes of the plan: a server only holds parameters; pick a device "
                "that runs no node"
            )
    reduces: dict[str, list[Action]] = {}
    broadcasts: dict[str, list[Action]] = {}
    for st in reversed(replicated):  # the last stage's backwards end first
        owner = assign_shards(buckets[st.index], sync.servers, plan.cluster, st.devices)
        for b in buckets[st.index]:
            server = owner[b.index]
            group = (*st.devices, server)
            name, index = _bucket_name(st, b), _index(b, buckets[st.index])
            for d in group:
                reduces.setdefault(d, []).append(Reduce(d, group, name, b.nodes, index, root=server))
                broadcasts.setdefault(d, []).append(Broadcast(d, group, name, b.nodes, index, root=server))
    for server in sync.servers:
        if server in reduces:
            actions[server] = [*reduces[server], OptimizerStep(server), *broadcasts[server]]
    for st in replicated:
        for d in st.devices:
            actions[d] += [*reduces.get(d, []), *broadcasts.get(d, [])]
    return set(reduces)


def _stage_positions(stages: list[Stage], nodes: list[str], graph: Graph) -> dict[str, int]:
    """Node -> position of its stage in pipeline order, after checking that every node that runs is in
    one stage, that every device serves one stage, and that data flows only to later stages."""
    stage_of: dict[str, int] = {}
    device_stage: dict[str, int] = {}
    for s, st in enumerate(stages):
        for d in st.devices:
            if device_stage.setdefault(d, st.index) != st.index:
                raise ScheduleError(
                    f"device {d} serves stages {device_stage[d]} and {st.index}; a pipeline schedule runs one "
                    "stage per device (interleaved schedules are not generated)"
                )
        for n in st.nodes:
            if n in stage_of:
                raise ScheduleError(f"node {n!r} is in stages {stages[stage_of[n]].index} and {st.index}")
            stage_of[n] = s
    missing = [n for n in nodes if n not in stage_of]
    if missing:
        raise ScheduleError(f"node(s) {missing[:5]} of graph {graph.name!r} are in no stage of the plan")
    for u in nodes:
        for v in graph.successors(u):
            if v in stage_of and stage_of[v] < stage_of[u]:
                raise ScheduleError(
                    f"node {u!r} of stage {stages[stage_of[u]].index} feeds {v!r} of the earlier stage "
                    f"{stages[stage_of[v]].index}: a pipeline's data flows from a stage to later ones; "
                    "reorder the stages, or use the node-order schedule"
                )
    return stage_of
