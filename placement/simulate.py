"""An event-driven simulator of one training or inference step of a placed graph.

Tasks. Every node ``v`` placed on device ``dev(v)`` has, per microbatch ``k``, a forward task ``F(v,k)``.
In training, a graph of forward nodes gets a backward task ``B(v,k)`` per node: it runs on ``dev(v)``
after ``F(v,k)`` and after ``B(w,k)`` of every successor ``w`` (the gradient of ``v``'s output is the sum
of what its consumers send back). A graph holding explicit backward nodes (``NodeData.is_backward``,
dnn-partitioning training files) is simulated as given: each node is one task, no backward is derived;
in inference mode its backward nodes are left out. Graph inputs (:func:`placement.cost_model.graph_inputs`)
cost no compute and receive no gradient. Task durations come from the :class:`CostModel`.

Transfers. When ``F(u,k)`` ends, ``u``'s output is sent once to each other device holding consumers of
it; every consumer there waits for that one transfer (a tensor consumed twice on a device is sent once).
Its bytes: the largest edge per ``output_index`` summed over the indices sent (an edge with no index
stands for all outputs). In training the gradient goes back the reverse route with the same bytes, once
all consumers on that device finished their backward (their gradients are summed there first). A transfer
between a device and itself is free and not simulated. A transfer's duration is the cost model's:
``EdgeData.transfer_ms`` when the edge gives one for the device pair (the largest over the group's
edges), else route latency + bytes / bottleneck bandwidth. The route latency is the per-message cost:
on the ``local`` cluster calibrated by :func:`graphc.app.calibrate.calibrate`, the latency measured
between two ranks (:func:`runtime.link.local_cluster`). The sends of one output leave in the order of
the receiving devices in the cluster.

Contention. Each direction of each full-duplex link is a resource (a half-duplex link is one resource
for both directions). A transfer is requested when its data is ready and holds every link of its route
at once for its whole duration (a circuit, not store-and-forward): it starts when the last of those
links becomes free, and each link serves requests first come, first served (a link is booked when the
request is made, so a transfer waiting for one busy link also keeps the others of its route from
later requests; requests of one instant are booked in task order). So two transfers sharing a link take
twice as long as one, and transfers on disjoint links overlap.

Devices without a copy engine. A device of category ``cpu`` (the ``local`` cluster's CPU worker
processes, the CPUs of the presets) moves its tensors itself: its compute is one more resource of every
transfer that starts or ends there (and of every synchronisation phase with a flow that does, and of a
CPU parameter server's updates), booked with the links. A transfer
to or from it waits for the task it is running and holds it from the request until the transfer ends
(such a transfer lasts at least the CPU time a message costs each end, :meth:`CostModel.endpoint_cpu_ms`:
on the calibrated ``local`` cluster the copies and gloo's work take longer than the wire);
a task there starts only once the device is free of transfers, and books it until the task ends. So its
transfers inside its host and its tasks are serialised, and ``busy_ms`` still counts only its tasks. A
GPU's (or another accelerator's) transfers overlap its compute. Between devices of two hosts the network
moves the bytes: a transfer there holds each CPU end (without a copy engine) only for the CPU time of
the message, from when that end is free (on a shaped 1 Gbit/s link between two namespace hosts a message
of 1 MB takes 9 ms on the wire and under 0.4 ms of each end's CPU). Its wire starts once both ends are
free, a rendezvous (the receiving rank posts its receive between its tasks, and TCP holds the sender back
until it does), and once its links are; neither CPU is held while the transfer waits for a link. The
synchronisation phases keep holding their CPU ends throughout.

Compute. A device runs one task at a time. Among its ready tasks it starts the one first in priority:
``priority="topological"`` (default) orders forwards by microbatch then topological position and
backwards by microbatch then reverse topological position; ``"critical_path"`` orders by the longest
remaining path of compute (no communication) instead. Following GPipe, a device starts no backward until
all its forwards (of every microbatch) are done. These ready queues are the solvers' quick evaluation;
a plan's recorded prediction is the simulation of the schedule its devices run
(:func:`placement.problem.finish_plan`). ``order`` fixes the sequence on some devices instead: ``order[device]`` lists that device's nodes; it
runs them in that order for each microbatch in turn (each replica its microbatches), then (training)
their backwards in reverse order for each microbatch. A device with a fixed sequence starts a task only
when it is the next of its sequence and ready; a sequence that contradicts the dependencies is
reported as a deadlock.

Schedules. ``schedule`` (a :class:`placement.schedules.Schedule`, what the executors run) fixes the
sequence of every device it lists: its compute actions in order, a :class:`~placement.schedules.Forward`
of a node being ``F(v,k)`` (a node's action in a graph with explicit backward nodes is its one task), of
a stage the forwards of the stage's nodes on the device in topological order, a
:class:`~placement.schedules.Backward` the backwards, of a stage in reverse topological order. A graph
input's backward, which takes no time and which schedules leave out, follows the last backward of its
microbatch on its device. The schedule must run every task of the placement exactly once, each on the
device that holds its node for that microbatch. A :class:`~placement.schedules.Recv` waits for the
matching transfer: the tasks that read the tensor start once it has arrived (the executors send a tensor
when it is made and wait for it where it is first used), and the receive buffer is allocated when the
device reaches the Recv (see Memory). The :class:`~placement.schedules.AllReduce` actions a stage's
device lists give that stage's buckets (their ``nodes``, in ``bucket`` order; one action without nodes:
one bucket of the whole stage), ``algorithm`` and ``islands``, priced as in "Synchronisation" (an
all-reduce is issued as soon as the backward before it has made its bucket's gradients, as DDP's hooks
do); without them, and for parameter servers, the buckets come from ``sync``. The optimizer step takes
no time.

Microbatches. ``microbatches=m`` splits the batch: every transfer's bytes (and a measured transfer
time), every activation and every received tensor are divided by ``m`` (but for a shared parameter on
an edge, ``EdgeData.param_bytes``, which every microbatch sends and receives whole), and the ``m``
microbatches flow through the devices, so a pipeline across devices overlaps them. A task's time is
divided by ``m`` down to its launch overhead, or, where the profile fitted a fixed part, but for that part; either is paid again
by every microbatch (:meth:`CostModel.microbatch_ms`). In training, a device that runs ``k`` of the
microbatches adds each one's parameter gradients into ``.grad`` ``k - 1`` times (the first sets it):
reading two and writing one tensor of a node's parameter bytes at the device's memory bandwidth, spread
over the node's ``k`` backwards (:meth:`placement.lowering.Lowered.accumulation_ms`). Latency and static memory are not divided.

Replicated stages. ``replicas[d]`` lists the devices of a data-parallel stage whose nodes are assigned
to ``d`` (``d`` first; interchangeable devices that run no other node). Microbatch ``k`` of the stage
runs on replica ``k mod r`` (round robin); a tensor of microbatch ``k`` goes from the replica holding
``k`` in the producer's stage to the one holding ``k`` in the consumer's, and its gradient back. Every
replica holds the stage's static memory; in training the replicas synchronise their gradients
("Synchronisation"). Per replica, with one bucket and a ring, this is the load model of
:mod:`placement.pipeline.instance`: ``(compute) / r + 2 (r - 1) / r x bytes / bandwidth``.

Co-running CPU devices. The CPU devices of one host share its memory bandwidth and caches: ``k`` of
them computing at once each run ``s(k)`` times slower than one alone (:meth:`CostModel.corun_factor`,
measured by :func:`runtime.corun.measure_corun`; 1 unless calibrated). The exact, dynamic form runs a
task at rate ``1 / s(k(t))``, ``k(t)`` the group's devices computing at instant ``t``, and re-times every
running task whenever ``k`` changes; this loop cannot: it books a transfer's links and its CPU ends, and
a synchronisation step's, for a fixed interval when it is requested ("Contention", "Devices without a
copy engine"), after the task that holds the device, so a task ending later would move bookings
already made. The step is therefore simulated twice. The first pass prices every task alone; then a
task on a CPU device of host ``h`` running over ``[a, b]`` gets the factor

    f = (1 / (b - a)) * integral from a to b of s(k_h(t)) dt     (k_h(t): h's CPU tasks running at t)

and every node's forward (backward) time is multiplied by the mean of ``f`` over its microbatches' tasks
for the second pass, whose timeline is the result (the ready queues' priorities stay those of the
times alone). Devices that compute all the time (data parallelism, a full pipeline) get ``s(k)``; a
device that takes turns with the others (a latency plan's chain) keeps its time alone. It is a first
order of the dynamic form (the second pass's overlaps are not fed back). GPUs and other accelerators
are never slowed; with no figure, or ``s = 1``, the first pass is the result, as before.

Synchronisation (training, replicated stages; ``sync``, :mod:`placement.sync`). A stage's parameter
gradients travel in buckets: :func:`placement.sync.gradient_buckets` over the stage's nodes in backward
order (the reverse of the lowering's topological order) with ``sync.bucket_bytes``. Bucket ``b`` is
requested when every backward of its nodes has ended (every microbatch, so every replica's last), after
the sends those backwards make; with ``bucket_bytes=None`` (and for a graph with explicit backward
nodes) the stage's one bucket is requested when the stage's last task ends. A stage's buckets are
booked in bucket order (one requested before an earlier one waits for it) and, under all-reduce, each
starts no earlier than the previous one's end (one stream per stage, as DDP's). What a bucket runs (phases priced by :mod:`placement.collectives`, on the cluster's
routes, flows sharing a link resource sharing its bandwidth):

* :class:`~placement.sync.AllReduceSync`, ``algorithm="ring"``: a ring all-reduce over the replicas in
  the listed order, ``2 (r - 1)`` rounds of ``P / r`` bytes: ``2 (r - 1) x latency + 2 (r - 1) / r x P /
  bandwidth`` (slowest ring edge); ``"hierarchical"``: reduce onto each island's leader
  (:func:`placement.sync.islands`), ring all-reduce among the leaders, broadcast inside each island;
* :class:`~placement.sync.ParameterServerSync` (``staleness=0``; see below for ``staleness > 0``): the bucket's server
  (:func:`placement.sharding.assign_shards`; a device running no node) receives every replica's ``P``
  bytes (a reduce), applies the optimizer, ``(3 + optimizer_state_factor) x P / memory_bandwidth`` (it
  reads the summed gradient and the parameters, writes the parameters and streams the optimizer state
  once), then sends ``P`` bytes to every replica (a broadcast). The next bucket's reduce waits for this
  one's; a server's updates run one at a time.

A bucket's steps are booked when it is requested, each on its resources first come first served after
the step before it (the links of its flows' routes, held for the phase; a server's own resource for an
update): they contend with transfers and other stages' synchronisation. A GPU keeps computing while its
buckets travel; a device without a copy engine is held by them, and a phase lasts at least the CPU time
its messages cost such a device (:func:`placement.collectives.endpoint_ms` with
:meth:`CostModel.endpoint_cpu_ms`, as a transfer with a CPU end does). Such a device also copies each
bucket into one flat buffer before it sends it and back after it receives it, as the runtime does
(:mod:`runtime.collectives`): a collective's first phase is longer by a copy of the bucket's bytes at
the memory bandwidth (read and write) of the slowest such device that sends in it, and its last phase by
one on the slowest that receives (:func:`placement.collectives.bucket_copy_ms`): a ring all-reduce on CPU
replicas pays both; a reduce pays the CPU replicas' copy in and a CPU server's copy back, a broadcast a
CPU server's copy in and the CPU replicas' copy back. A GPU's copies are left out (kernels at its memory
bandwidth, a small fraction of the wire's time). The step ends when the last task or
synchronisation step does.

Asynchronous parameter servers (``staleness = s > 0``, :mod:`runtime.servers`) have no step of their
own to simulate: every worker pushes and pulls on its own clock. :func:`async_server_step` prices their
steady state instead. With ``N`` workers, ``K`` servers, server ``k`` holding ``P_k = f_k P`` bytes
(``f_k`` its link's share of all the servers' link bandwidth, :func:`placement.sharding.shard_fractions`:
``P / K`` on equal links), ``C`` one worker's compute step on its share (no synchronisation), all workers
pushing at once (the worst case):

    push, pull  = the phases of every worker sending each server its P_k bytes (collectives.reduce
                  onto every server, one phase: the servers' links are shared by the N workers), and of
                  every server answering every worker (collectives.broadcast), each lasting at least the
                  CPU time its messages cost a CPU device (collectives.endpoint_ms)
    U           = (3 + optimizer_state_factor) x P_k / memory_bandwidth   (one gradient's update,
                  as a synchronous server's; the slowest server)
    R           = push + N U + pull                        (a push's round trip: its server applies the
                                                            N gradients one at a time before answering)
    O           = max(push, pull, N U)                     (a server's time per step: its links in and
                                                            out and its updates overlap across workers)
                = push + N U + pull on a CPU server         (it moves the messages and updates itself)
    T           = max(C, (C + R) / (s + 1), O)

The middle term is the worker's cycle: step ``t + s + 1`` starts ``(s + 1) T`` after step ``t`` and
waits for the answer to push ``t``, which comes ``C + R`` after step ``t`` began; so up to ``s`` steps
of compute hide the round trip (``T = C`` once ``R <= s C``). ``s = 0``: ``T = C + R``.

Memory, per device, the terms that :class:`runtime.measure.MemoryTracker` measures (static bytes
before the step plus the live tensors made during it; the step's inputs exist before it, so a graph
input holds nothing). Static = parameters + buffers, in training also
optimizer state (``optimizer_state_factor`` x parameters; 2 = Adam's two moments), or
``NodeData.memory_bytes`` for a node that gives one (its whole footprint, nothing else is counted for
it). Then, in training:

* a node's parameter gradients (as large as its parameters) from the start of its first backward on a
  device to the end of the step (the executors set every ``.grad`` to None before a step; a replica
  makes its own); for a graph with explicit backward nodes, static for the whole step;
* ``activation_bytes`` of ``v`` (what its backward keeps) from the end of ``F(v,k)`` until the end of
  ``B(v,k)``, or, when ``v``'s output is sent to another device and is larger, the sent tensor (the
  executors keep it until its gradient is back; the activation may be that same tensor);
* backward temporaries: while ``B(v,k)`` runs, the gradient of ``v``'s output, when it is made on the
  device (``output_bytes``; by a consumer there or by the loss; a gradient from another device is a
  received tensor), plus the gradients of its inputs (the bytes of its in-edges from nodes that take
  a gradient): the backward reads the one while it makes the others; for a graph output, the larger
  of the two (the loss's backward below frees its tensors before the output's makes its inputs'
  gradients, so its four output-sized tensors and the output's two plus its inputs' gradients are
  never alive together);
* the graph's outputs (``NodeData.is_output``): each microbatch's output (``output_bytes``) from the end
  of its forward to the end of the step (the step returns it); the loss, taken to keep a tensor as large
  as the output (cross-entropy keeps the log-probabilities), from then until the output's backward
  ends; and the loss's backward, which runs as the output's backward starts, the gradient of that kept
  tensor over the output's backward (the gradient of the output itself is that backward's temporary).
  So the output's device holds four output-sized tensors there, as measured for cross-entropy. The
  loss itself, a float32 scalar, stays to the end of the step, and its gradient from the output's
  backward on (``LOSS_SCALAR_BYTES`` each, per microbatch);
* a parameter shared by several nodes (``EdgeData.param_bytes``: the owner and the users it sends the
  parameter to, as an unrolled cell's): per microbatch, the device's backward sums the gradients of
  all its uses in one buffer, from the first use's backward on, and each later use makes its gradient
  and the new sum beside the old one (on the owner's device a gradient received from users elsewhere
  is the first sum) (``_shared_gradients``);
* a received activation from its arrival until every consumer on the device finished its backward; a
  received gradient from its arrival until the producer's backward ends; a gradient sent back, on the
  consumers' device, from then (their backwards done) to the end of the step, as
  :class:`runtime.DistributedExecutor` holds its gradient sends (the local executor lets go of one
  when its producer takes it);
* on every replica of a replicated stage, each bucket's flat copy of its gradients (its bytes) from the
  bucket's request to the end of the step: the executors flatten a bucket into one tensor to all-reduce
  it (or to reduce it onto its server and receive its weights) and copy it back only before the
  optimizer step, as DDP's bucket buffers (``gradient_as_bucket_view=False``, its default) copy the
  gradients.

Under parameter servers a replica's static memory has no optimizer state for its stage's bucketed
parameters; a server's static memory is, for each bucket it holds, its parameters, a gradient buffer
(the reduce sums into it) and the optimizer state: ``(2 + optimizer_state_factor) x bytes``.

In inference (and for graphs with explicit backward nodes): ``output_bytes`` of ``v`` from the end of
``F(v,k)`` until its consumers on the device finished and its sends completed (kept to the end when
nothing consumes it), a received tensor from its arrival until every consumer on the device finished.
With a schedule, a received tensor's buffer is held from its :class:`~placement.schedules.Recv` (the end
of the device's compute before it, 0 when there is none) when that comes before the arrival. Peak = the
highest total; at one instant, memory freed is subtracted before memory allocated is added. Not modelled:
the optimizer step's temporaries, the allocator's caching and fragmentation.

Ties. All events of one instant (task completions, inputs arriving, devices freed of transfers) are
processed before any idle device picks its next task, so a device chooses among everything ready at
that instant.

Cost. Setup is linear in nodes and edges; the loop pops one event per task end and at most one per task
whose last input arrives from another device, with a heap of pending events and one ready heap per
device (``O((tasks + transfers) log)``). Memory is computed after the loop from the recorded intervals.
"""

# The hot loops compare with `if` rather than calling max(): it is faster there.
# ruff: noqa: PLR1730
from __future__ import annotations

import heapq
import itertools
import math
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from graphc.ir.graph import Graph
from placement import collectives
from placement.cluster import Cluster, ClusterLike
from placement.collectives import Flow, Phase
from placement.cost_model import CostModel
from placement.errors import ArgumentTypeError, ConfigurationError, PlacementError
from placement.lowering import (
    LOSS_SCALAR_BYTES,
    MODES,
    Lowered,
    gc_paused,
    lower,
    send_bytes,
)
from placement.schedules import AllReduce, Backward, Compute, Recv, Schedule
from placement.sharding import assign_shards, shard_fractions
from placement.sync import (
    AllReduceSync,
    Bucket,
    ParameterServerSync,
    Sync,
    gradient_buckets,
    islands,
)
from placement.timeline import UPDATE, Collective, RawTimeline, SimResult

if TYPE_CHECKING:  # placement.plan imports this module (Plan.simulate)
    from placement.plan import Plan

PRIORITIES = ("topological", "critical_path")


def simulate(
    graph: Graph | Plan,
    cluster: ClusterLike | None = None,
    assignment: Mapping[str, str] | None = None,
    cost_model: CostModel | None = None,
    *,
    mode: str | None = None,
    microbatches: int | None = None,
    order: Mapping[str, Sequence[str]] | None = None,
    priority: str = "topological",
    optimizer_state_factor: float = 2.0,
    check_allowed_kinds: bool = True,
    replicas: Mapping[str, Sequence[str]] | None = None,
    schedule: Schedule | None = None,
    lowered: Lowered | None = None,
    sync: Sync | None = None,
) -> SimResult:
    """Simulate one step of ``graph`` placed on ``cluster`` by ``assignment`` (node name -> device name),
    or of a :class:`~placement.plan.Plan`: ``simulate(plan)``.

    A plan brings its graph, cluster and cost model (as :meth:`Plan.simulate <placement.plan.Plan.simulate>`
    does), its schedule (:attr:`Plan.schedule`, generated by :func:`placement.schedules.make_schedule`),
    its stages as ``replicas``, its microbatches and its ``sync``; ``cluster``, ``cost_model``, ``mode``,
    ``microbatches``, ``schedule``, ``order``, ``replicas`` and ``sync``, when given, replace the plan's (another
    cluster with the same device names, another microbatch count; an ``order`` or ``replicas`` given
    simulate without a schedule). A plan takes no ``assignment``.

    ``schedule`` (a :class:`placement.schedules.Schedule` of this placement) makes every device run its
    schedule's compute actions in order (module docstring, "Schedules"); it takes no ``order``, and its
    microbatches are the default of ``microbatches``.

    See the module docstring for the exact semantics. ``mode`` defaults to ``"training"``,
    ``microbatches`` to 1, ``cost_model`` to ``CostModel(cluster)``.
    ``check_allowed_kinds`` rejects a node placed on a device outside its ``allowed_kinds`` (matched
    against the device's kind or category). ``replicas`` replicates stages data-parallel:
    ``replicas[d]`` lists the devices of the stage whose nodes are assigned to ``d``, ``d`` first
    (:func:`placement.plan.stage_replicas` makes it from a plan's stages). Raises :class:`PlacementError`
    for an unassigned node, an unknown node or device, bad ``replicas``, a bad ``order``, a schedule that
    does not run exactly the placement's tasks, or an order or schedule that deadlocks.

    ``sync`` (:mod:`placement.sync`; default :class:`~placement.sync.AllReduceSync`: ring, 25 MiB
    buckets) is how replicated stages combine their gradients in training (module docstring,
    "Synchronisation"); a plan's is :attr:`Plan.sync <placement.plan.Plan.sync>`. Raises
    :class:`ConfigurationError` for parameter servers with ``staleness > 0`` (:func:`async_server_step`
    prices those) and :class:`PlacementError`
    for a server that is not a device of the cluster running no node.

    ``lowered``: the :class:`~placement.lowering.Lowered` arrays of this graph, cluster, cost model, mode
    and optimizer state (:meth:`placement.problem.Problem.lowered`), for callers that simulate one
    problem many times (the solvers, the microbatch choice); without it every call lowers the graph
    itself (:func:`placement.lowering.lower`). A lowering of anything else is refused.
    """
    if not isinstance(graph, Graph):  # a Plan, which simulates itself by the dict form below
        if assignment is not None:
            raise ArgumentTypeError("simulate(plan): a plan brings its own assignment; pass none")
        return graph.simulate(cluster, cost_model, mode=mode, microbatches=microbatches, order=order, replicas=replicas,
                              priority=priority, optimizer_state_factor=optimizer_state_factor,
                              check_allowed_kinds=check_allowed_kinds, schedule=schedule, lowered=lowered,
                              sync=sync)  # fmt: skip
    if cluster is None or assignment is None:
        raise ArgumentTypeError("simulate(graph, cluster, assignment): a graph needs a cluster and an assignment")
    if schedule is not None:
        if not isinstance(schedule, Schedule):
            raise ArgumentTypeError(f"simulate: schedule must be a placement.schedules.Schedule, got {type(schedule).__name__}")
        if order:
            raise ConfigurationError("simulate: a schedule fixes every device's order; pass no order with it")
    mode = "training" if mode is None else mode
    if microbatches is None:
        microbatches = schedule.microbatches if schedule is not None else 1
    if mode not in MODES:
        raise ConfigurationError(f"simulate: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if priority not in PRIORITIES:
        raise ConfigurationError(f"simulate: priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
        raise ConfigurationError(f"simulate: microbatches must be an integer >= 1, got {microbatches!r}")
    if sync is None:
        sync = AllReduceSync()
    elif not isinstance(sync, (AllReduceSync, ParameterServerSync)):
        raise ArgumentTypeError(
            f"simulate: sync must be a placement.sync.AllReduceSync or ParameterServerSync, got {type(sync).__name__}"
        )
    cluster = Cluster.resolve(cluster)
    # The loop allocates many short-lived tuples and no cycles; the collector would rescan the graph's
    # objects again and again for nothing.
    with gc_paused():
        lw = _lowering(lowered, graph, cluster, cost_model, mode, optimizer_state_factor)
        sim = _Simulation(lw, assignment, microbatches, check_allowed_kinds, replicas or {}, sync)
        sim.prepare(order, priority, schedule)
        return sim.run()


def _lowering(
    lowered: Lowered | None, graph: Graph, cluster: Cluster, cost_model: CostModel | None, mode: str, factor: float
) -> Lowered:
    """``lowered`` after checking that it is this simulation's, or the graph lowered now."""
    if lowered is None:
        return lower(graph, cluster, cost_model or CostModel(cluster), mode, factor)
    if not isinstance(lowered, Lowered):
        raise ArgumentTypeError(f"simulate: lowered must be a placement.lowering.Lowered, got {type(lowered).__name__}")
    checks = (
        ("graph", lowered.graph is graph),
        ("cluster", lowered.cluster is cluster),
        ("cost model", cost_model is None or lowered.cost_model is cost_model),
        ("mode", lowered.mode == mode),
        ("optimizer_state_factor", lowered.optimizer_state_factor == factor),
    )
    differs = [what for what, same in checks if not same]
    if differs:
        raise ConfigurationError(
            f"simulate: lowered= was made with another {', '.join(differs)} than this simulation's: pass the "
            "lowering of this graph, cluster, cost model and mode (Problem.lowered()), or none"
        )
    return lowered


class _Simulation:
    """Integer-indexed arrays read from the lowering, the event loop over them, and the result."""

    def __init__(self, lw: Lowered, assignment, m: int, check_kinds: bool, replicas, sync: Sync):
        self.lw, self.graph, self.cluster, self.cm = lw, lw.graph, lw.cluster, lw.cost_model
        self.m, self.mode, self.training = m, lw.mode, lw.training
        self.assignment, self.check_kinds, self.replicas, self.sync = assignment, check_kinds, replicas, sync
        self.devices = lw.devices

    def prepare(self, order, priority: str, schedule: Schedule | None) -> None:
        lw = self.lw
        self.has_bwd = lw.has_bwd
        self.n, self.names, self.index, self.data = lw.n, lw.names, lw.index, lw.data
        self.T = (2 if self.has_bwd else 1) * self.m * self.n
        self._assign()
        self._replicate()
        self._costs()
        self._sync_steps(schedule)
        self._groups()
        self._copy_engines()
        self._sync_resources()
        self._memory_terms()
        self._priorities(priority)
        self.recv_posts = []
        if schedule is not None:
            self.group_of_pair = {(u, d): g for g, (u, d) in enumerate(zip(self.g_src, self.g_dst))}
            self._positions(self._schedule_sequences(schedule))
        else:
            self._positions(self._order_sequences(order or {}))

    # -- preparation ----------------------------------------------------------------------------
    def _assign(self) -> None:
        cluster, assignment = self.cluster, self.assignment
        dev_index = {d.name: i for i, d in enumerate(cluster.devices)}
        get = assignment.get
        dev = [dev_index.get(get(name, ""), -1) for name in self.names]
        if -1 in dev:
            missing = [name for name, d in zip(self.names, dev) if d == -1 and name not in assignment]
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise PlacementError(f"{len(missing)} node(s) have no device: {', '.join(missing[:5])}{more}")
            name = next(name for name, d in zip(self.names, dev) if d == -1)
            raise PlacementError(
                f"node {name!r} is assigned to {assignment[name]!r}, which cluster {cluster.name!r} lacks; "
                f"devices: {', '.join(cluster.device_names[:8])}{' ...' if len(cluster) > 8 else ''}"
            )
        if len(assignment) != self.n:
            for name in assignment:
                if name not in self.graph:
                    raise PlacementError(f"assignment names {name!r}, which graph {self.graph.name!r} lacks")
        self.dev = dev
        self.dev_np = np.asarray(dev, dtype=np.int64)
        self.dev_class = self.lw.device_class[self.dev_np]
        if self.check_kinds:
            wrong = np.flatnonzero(~self.lw.kinds_ok[np.arange(self.n), self.dev_class])
            if len(wrong):
                nd, dv = self.data[wrong[0]], self.devices[dev[wrong[0]]]
                raise PlacementError(
                    f"node {nd.name!r} may run on {nd.allowed_kinds} but is assigned to {dv.name!r} "
                    f"(kind {dv.kind!r}, category {dv.category!r})"
                )

    def _replicate(self) -> None:
        """Check ``replicas``; the device of every (microbatch, node) and the replicated stages.

        ``kdev[k][v]`` is the device running node ``v`` in microbatch ``k``: replica ``k mod r`` of its
        stage. Without replication every ``kdev[k]`` is ``dev``, one list shared."""
        devices, dev, m = self.devices, self.dev, self.m
        ndev = len(devices)
        group = [(d,) for d in range(ndev)]  # each device's stage devices, primary first
        stage_of = [-1] * ndev  # replicated stage index of a device, -1 if none
        stages: list[tuple[int, ...]] = []
        hosts_nodes = set(dev)
        for primary, members in self.replicas.items():
            where = f"replicas[{primary!r}]"
            if primary not in self.cluster:
                raise PlacementError(f"{where}: cluster {self.cluster.name!r} has no device {primary!r}")
            if isinstance(members, str) or not members or members[0] != primary:
                raise PlacementError(f"{where} must list the stage's devices, {primary!r} first; got {members!r}")
            ids = []
            for name in members:
                if name not in self.cluster:
                    raise PlacementError(f"{where}: cluster {self.cluster.name!r} has no device {name!r}")
                d = self.cluster.device_index(name)
                if d in ids or stage_of[d] >= 0:
                    raise PlacementError(f"{where}: device {name!r} is in two replicated stages (or twice in one)")
                if ids and d in hosts_nodes:
                    raise PlacementError(
                        f"{where}: replica {name!r} also runs nodes assigned to it; a device belongs to one stage"
                    )
                if ids and devices[d].speed_key() != devices[ids[0]].speed_key():
                    raise PlacementError(
                        f"{where}: replica {name!r} ({devices[d].kind}) is not interchangeable with {primary!r} "
                        f"({devices[ids[0]].kind}); data-parallel replicas need devices of one kind and speed"
                    )
                ids.append(d)
            if len(ids) > 1:
                for d in ids:
                    group[d] = tuple(ids)
                    stage_of[d] = len(stages)
                stages.append(tuple(ids))
        self.group, self.stage_of, self.stages = group, stage_of, stages
        # Phases: microbatches k and k + P run on the same devices.
        period = math.lcm(*(len(s) for s in stages)) if stages else 1
        self.P = P = min(period, m)
        if P == 1:
            self.phase_map = [list(range(ndev))]
            self.kdev = [dev] * m
        else:
            self.phase_map = [[group[d][p % len(group[d])] for d in range(ndev)] for p in range(P)]
            by_phase = [[pm[d] for d in dev] for pm in self.phase_map]
            self.kdev = [by_phase[k % P] for k in range(m)]

    def _costs(self) -> None:
        """Task times of one microbatch on each node's device, per-device static memory, and the
        activations (training) or outputs (inference) per microbatch: the lowering's figures."""
        lw, m, n, dev = self.lw, self.m, self.n, self.dev
        rows = np.arange(n)
        fwd = lw.class_fwd[rows, self.dev_class].tolist()
        bwd = lw.class_bwd[rows, self.dev_class].tolist()
        if m != 1:
            split, data, devices = self.cm.microbatch_ms, self.data, self.devices
            fwd = [split(t, nd, devices[d], m) for t, nd, d in zip(fwd, data, dev)]
            bwd = [split(t, nd, devices[d], m, True) for t, nd, d in zip(bwd, data, dev)]
            if self.has_bwd:  # a device runs m / r of the microbatches of a stage on r replicas
                runs = [m // len(self.group[d]) for d in range(len(self.devices))]
                bwd = [t + a for t, a in zip(bwd, self.lw.accumulation_ms(self.dev_np, runs).tolist())]
        self.corun_group = self._corun_groups()
        self.fwd, self.bwd, self.needs_grad = fwd, bwd, lw.needs_grad.tolist()
        before_step = lw.static - lw.grad_bytes  # gradients are made by the backward (_peak_memory)
        static = np.bincount(self.dev_np, weights=before_step, minlength=len(self.devices)).tolist()
        held = (lw.held / m).tolist() if m != 1 else lw.held.tolist()
        zeros = [0.0] * n
        act, out = (held, zeros) if self.has_bwd else (zeros, held)
        for stage in self.stages:  # every replica holds the stage's parameters and state
            for d in stage[1:]:
                static[d] = static[stage[0]]
        self.static, self.act, self.out = static, act, out

    def _corun_groups(self) -> list[int] | None:
        """Per device, its co-run group (module docstring, "Co-running CPU devices"): the index of its
        host among the hosts whose CPU devices may slow each other, -1 for a device that is never slowed
        (a GPU, an accelerator); None when no device can be slowed (no figure, or ``s = 1`` throughout)."""
        cm = self.cm
        if not any(s != 1.0 for s in cm.corun_slowdown.values()):
            return None
        hosts: dict[str, int] = {}
        return [hosts.setdefault(d.host, len(hosts)) if d.category == "cpu" else -1 for d in self.devices]

    def _overlap_factors(self) -> tuple[list[float], list[float]]:
        """Per node, the factor of its forward and of its backward time (module docstring, "Co-running
        CPU devices"): over every task of the node (each microbatch), the mean of ``s(k(t))`` across the
        task's interval in the timeline just simulated, ``k(t)`` the tasks of the device's group running
        at ``t`` (itself included); a task of no duration, or on a device never slowed, takes 1."""
        n, m, MN = self.n, self.m, self.m * self.n
        start = np.frombuffer(self.task_start)
        durations = np.concatenate((np.tile(np.asarray(self.fwd), m), np.tile(np.asarray(self.bwd), m)))[: len(start)]
        end = start + durations
        task_dev = self._task_devices()
        task_dev = np.concatenate((task_dev, task_dev))[: len(start)]
        group = np.asarray(self.corun_group, dtype=np.int64)[task_dev]
        factor = np.ones(len(start))
        corun = self.cm.corun_factor
        for g in np.unique(group[group >= 0]).tolist():
            mine = np.flatnonzero((group == g) & (durations > 0))
            if not len(mine):
                continue
            # k(t) is a step function: +1 at each start, -1 at each end (ends first at ties).
            times = np.concatenate((end[mine], start[mine]))
            steps = np.concatenate((-np.ones(len(mine)), np.ones(len(mine))))
            order = np.lexsort((steps, times))
            times, k = times[order], np.cumsum(steps[order]).astype(np.int64)
            rate = np.asarray([corun(c) for c in range(int(k.max()) + 1)])[k]
            # F(t) = integral of s(k) from the first event: piecewise linear through these points.
            integral = np.concatenate(([0.0], np.cumsum(rate[:-1] * np.diff(times))))
            a, b = start[mine], end[mine]
            factor[mine] = (np.interp(b, times, integral) - np.interp(a, times, integral)) / (b - a)
        fwd = factor[:MN].reshape(m, n).mean(axis=0).tolist()
        bwd = factor[MN:].reshape(m, n).mean(axis=0).tolist() if self.has_bwd else [1.0] * n
        return fwd, bwd

    def _sync_steps(self, schedule: Schedule | None) -> None:
        """The buckets of every replicated stage (training) and the steps that synchronise each (module
        docstring, "Synchronisation"); also the server and bucket-buffer memory ("Memory").

        Bucket ``j`` (numbered over all stages, a stage's in bucket order) runs the steps
        ``step_lo[j] .. step_hi[j] - 1`` one after another: a step is a phase of flows between devices
        (``step_flows``) or a server's optimizer update (``step_server``), ``step_ms`` long. It waits for
        the end of step ``bucket_gate[j]`` (the stage's stream; -1 for none). It is requested when the
        last backward of its nodes ends (``bucket_of[v]``, ``bucket_left[j]`` backwards to go), or, for
        ``stage_bucket[s] = j``, when the stage's last task ends."""
        n, stages = self.n, self.stages
        self.bucket_stage: list[int] = []
        self.bucket_bytes: list[float] = []
        self.bucket_gate: list[int] = []
        self.bucket_left: list[int] = []
        self.bucket_of = [-1] * n
        self.stage_bucket = [-1] * len(stages)
        self.step_lo: list[int] = []
        self.step_hi: list[int] = []
        self.step_ms: list[float] = []
        self.step_flows: list[tuple[Flow, ...]] = []
        self.step_server: list[int] = []
        self.records: list[tuple[str, str, int, int, int, str]] = []  # kind, algorithm, bucket, lo, hi, root
        self.flow_pairs: list[tuple[int, int]] = []
        if not (self.training and stages):
            return
        sync, names = self.sync, [d.name for d in self.devices]
        ps = isinstance(sync, ParameterServerSync)
        if ps:
            self._check_servers(sync)
        backward_order: list[list[str]] = [[] for _ in stages]
        for v in range(n - 1, -1, -1):
            s = self.stage_of[self.dev[v]]
            if s >= 0:
                backward_order[s].append(self.names[v])
        given = _scheduled_allreduces(schedule) if schedule is not None and not ps else {}
        for s, stage in enumerate(stages):
            members = [names[d] for d in stage]
            buckets, algorithm, groups, whole = self._stage_buckets(members, backward_order[s], given.get(members[0]))
            owner = assign_shards(buckets, sync.servers, self.cluster, members) if ps and buckets else {}
            previous = -1
            for bucket in buckets:
                j = len(self.bucket_stage)
                self.bucket_stage.append(s)
                self.bucket_bytes.append(bucket.nbytes)
                self.bucket_gate.append(previous)
                self.bucket_left.append(self.m * len(bucket.nodes))
                if whole:
                    self.stage_bucket[s] = j
                else:
                    for name in bucket.nodes:
                        self.bucket_of[self.index[name]] = j
                self.step_lo.append(len(self.step_ms))
                if ps:
                    self._server_steps(j, members, owner[bucket.index], bucket.nbytes)
                    previous = self.step_lo[j]  # the next bucket's reduce follows this one's
                else:
                    phases = (
                        collectives.hierarchical_allreduce(self.cluster, groups, bucket.nbytes)
                        if algorithm == "hierarchical"
                        else collectives.ring_allreduce(self.cluster, members, bucket.nbytes)
                    )
                    self._add_steps("allreduce", algorithm, j, phases, "")
                    previous = len(self.step_ms) - 1
                self.step_hi.append(len(self.step_ms))
            if ps and buckets:  # the servers hold the optimizer state the replicas counted in their static
                nodes = [self.data[self.index[v]] for b in buckets for v in b.nodes]
                state = self.lw.optimizer_state_factor * sum(nd.param_bytes for nd in nodes if nd.memory_bytes is None)
                for d in stage:
                    self.static[d] -= state

    def _stage_buckets(
        self, members: list[str], backward_order: list[str], actions: list[AllReduce] | None
    ) -> tuple[list[Bucket], str, list[tuple[str, ...]], bool]:
        """A replicated stage's buckets, all-reduce algorithm and islands, and whether its one bucket
        waits for the stage's last task: from the schedule's ``actions`` when it lists them, else from
        the sync."""
        sync = self.sync
        algorithm = sync.algorithm if isinstance(sync, AllReduceSync) else ""
        groups: list[tuple[str, ...]] = []
        bucket_bytes = sync.bucket_bytes if self.has_bwd else None
        buckets: list[Bucket] = []
        if actions:
            primary = self.cluster.device_index(members[0])
            for a in actions:
                wrong = [v for v in a.nodes if v not in self.index or self.dev[self.index[v]] != primary]
                if wrong:
                    raise PlacementError(
                        f"{members[0]}: the schedule's {a.code()} names node {wrong[0]!r}, which that stage does not run"
                    )
            algorithm, groups = actions[0].algorithm, list(actions[0].islands)
            if all(a.nodes for a in actions):
                sizes = (sum(self.graph.node(v).param_bytes for v in a.nodes) for a in actions)
                buckets = [Bucket(b, a.nodes, size) for b, (a, size) in enumerate(zip(actions, sizes))]
            else:  # one all-reduce of every gradient of the stage
                bucket_bytes = None
        if not buckets:
            buckets = gradient_buckets(self.graph, backward_order, bucket_bytes)
        if algorithm == "hierarchical" and not groups:
            groups = islands(self.cluster, members)
        return buckets, algorithm, groups, bucket_bytes is None

    def _server_steps(self, j: int, members: list[str], server: str, nbytes: float) -> None:
        """Bucket ``j``'s steps under a parameter server: reduce onto ``server``, its update, broadcast
        back (module docstring); the server holds the bucket's parameters, gradient buffer and state."""
        factor, s = self.lw.optimizer_state_factor, self.cluster.device_index(server)
        self._add_steps("reduce", "", j, collectives.reduce(self.cluster, members, server, nbytes), server)
        self.step_ms.append(server_update_ms(nbytes, self.devices[s].memory_bandwidth, factor))
        self.step_flows.append(())
        self.step_server.append(s)
        self.records.append(("update", "", j, len(self.step_ms) - 1, len(self.step_ms), server))
        self._add_steps("broadcast", "", j, collectives.broadcast(self.cluster, server, members, nbytes), server)
        self.static[s] += (2 + factor) * nbytes

    def _add_steps(self, kind: str, algorithm: str, j: int, phases: list[Phase], root: str) -> None:
        """Append the phases of one collective of bucket ``j`` as steps, and its timeline record. Where
        devices without a copy engine send in the first phase, it also holds them for the bucket's copy
        into one flat buffer; where they receive in the last, for its copy back (module docstring,
        "Synchronisation")."""
        lo = len(self.step_ms)
        index = self.cluster.device_index
        cpus = {d.name for d in self.devices if d.category == "cpu"}
        before, after = collectives.bucket_copy_ms(self.cluster, phases, cpus, self.bucket_bytes[j])
        for i, phase in enumerate(phases):
            copies = (before if i == 0 else 0.0) + (after if i == len(phases) - 1 else 0.0)
            self.step_ms.append(collectives.booked_ms(phase, cpus, self.cm.endpoint_cpu_ms) + copies)
            self.step_flows.append(phase.flows)
            self.step_server.append(-1)
            self.flow_pairs += [(index(f.src), index(f.dst)) for f in phase.flows]
        if phases:
            self.records.append((kind, algorithm, j, lo, len(self.step_ms), root))

    def _check_servers(self, sync: ParameterServerSync) -> None:
        """Parameter servers must be devices of the cluster that run no node (synchronous only)."""
        if sync.staleness:
            raise ConfigurationError(
                f"simulate: parameter servers with staleness={sync.staleness}: asynchronous servers have no step "
                "schedule to simulate; price their steady state with placement.simulate.async_server_step, or pass "
                "staleness=0"
            )
        used = set(self.dev) | {d for stage in self.stages for d in stage}
        for server in sync.servers:
            if server not in self.cluster:
                raise PlacementError(f"parameter server {server!r}: cluster {self.cluster.name!r} has no such device")
            if self.cluster.device_index(server) in used:
                raise PlacementError(
                    f"parameter server {server!r} runs nodes of the placement (or is a replica): a server must be a "
                    "device that runs no node"
                )

    def _sync_resources(self) -> None:
        """The resources each synchronisation step books: the link resources of its flows' routes (with
        the copy-engine-less devices at their ends), or the server's own for an update (a CPU server's
        copy-engine resource: its updates and its transfers do not overlap)."""
        res: list[tuple[int, ...]] = []
        self.step_res, self.step_routes = res, list(self.flow_routes)
        if not self.step_ms:
            return
        routes = iter(self.flow_routes)
        route_res = self.route_resources
        top = max((x for r in route_res for x in r), default=-1)
        if self.cpu_res is not None:
            top = max(top, *self.cpu_res)
        own: dict[int, int] = {}
        for flows, server in zip(self.step_flows, self.step_server):
            if server >= 0:
                if self.cpu_res is not None and self.cpu_res[server] >= 0:
                    res.append((self.cpu_res[server],))
                else:
                    res.append((own.setdefault(server, top + 1 + len(own)),))
            else:
                res.append(tuple(dict.fromkeys(x for _ in flows for x in route_res[next(routes)])))

    def _groups(self) -> None:
        """Local successor/predecessor lists, transfer groups (producer, receiving device), their routes.

        A group is one send: a producer's output to one other device, shared by its consumers there.
        Groups are numbered by (producer, receiving device)."""
        n, m, dev = self.n, self.m, self.dev
        devices, cluster = self.devices, self.cluster
        ndev = len(devices)
        e_data = self.lw.edge_data
        local_succ: list[list[int]] = [[] for _ in range(n)]
        local_pred: list[list[int]] = [[] for _ in range(n)]
        groups_of: list[list[int]] = [[] for _ in range(n)]  # groups a node sends
        in_groups: list[list[int]] = [[] for _ in range(n)]  # groups a node consumes
        src, dst, dev_np = self.lw.src, self.lw.dst, self.dev_np
        self.indeg = np.bincount(dst, minlength=n).tolist()
        d_src, d_dst = dev_np[src], dev_np[dst]
        cross = d_src != d_dst
        for u, v in zip(src[~cross].tolist(), dst[~cross].tolist()):
            local_succ[u].append(v)
            local_pred[v].append(u)
        cross_edges = np.flatnonzero(cross)
        keys, first, gid = np.unique(src[cross_edges] * ndev + d_dst[cross_edges], return_index=True, return_inverse=True)
        gid = gid.reshape(-1)
        g_src = (keys // ndev).tolist()
        g_dst = (keys % ndev).tolist()
        cons = dst[cross_edges]
        for v, g in zip(cons.tolist(), gid.tolist()):
            in_groups[v].append(g)
        for g, u in enumerate(g_src):
            groups_of[u].append(g)
        # Consumers of each group: edges sorted by group, cut at group boundaries.
        by_group = np.argsort(gid, kind="stable")
        cons_sorted = cons[by_group].tolist()
        sizes = np.bincount(gid, minlength=len(keys))
        cuts = np.concatenate(([0], np.cumsum(sizes))).tolist()
        g_cons = [cons_sorted[a:b] for a, b in itertools.pairwise(cuts)]
        edge_of = cross_edges[by_group].tolist()  # edge indices, grouped
        g_more = {g: [e_data[i] for i in edge_of[cuts[g]:cuts[g + 1]]] for g in np.flatnonzero(sizes > 1).tolist()}
        measured_groups: list[int] = []
        if any(map(attrgetter("transfer_ms"), e_data)):
            measured_groups = [g for g, i in zip(gid.tolist(), cross_edges.tolist()) if e_data[i].transfer_ms]
        G = len(g_src)
        g_bytes = self.lw.nbytes[cross_edges[first]]
        for g, edges in g_more.items():
            g_bytes[g] = send_bytes(edges)
        # Routes of the device pairs in use, per phase (replicas): forward sends go src -> dst, gradients
        # dst -> src; then the flows of the replicated stages' collectives.
        g_src_np = np.asarray(g_src, dtype=np.int64)
        dst_np = np.asarray(g_dst, dtype=np.int64)
        codes = []
        for pm in self.phase_map:
            pm_np = np.asarray(pm, dtype=np.int64)
            src_dev = pm_np[dev_np[g_src_np]] if G else np.zeros(0, np.int64)
            dst_dev = pm_np[dst_np]
            codes += [src_dev * ndev + dst_dev, dst_dev * ndev + src_dev]
        codes.append(np.asarray([a * ndev + b for a, b in self.flow_pairs], dtype=np.int64))
        pairs, route_of = np.unique(np.concatenate(codes), return_inverse=True)
        route_of = route_of.reshape(-1)
        routes = [cluster.route(devices[p // ndev].name, devices[p % ndev].name) for p in pairs.tolist()]
        latency = np.asarray([1e3 * r.latency_s for r in routes])
        per_byte = np.asarray([1e3 / r.bandwidth for r in routes])
        nbytes = g_bytes / m
        shared = np.zeros(G)  # the part of a send that is a shared parameter: whole in every microbatch
        if self.lw.shared_bytes.any():
            np.maximum.at(shared, gid, self.lw.shared_bytes[cross_edges])
            shared = np.minimum(g_bytes, shared)
            nbytes = nbytes + shared * (1 - 1 / m)
        # The CPU time a message costs an end without a copy engine, where it exceeds the wire's time.
        endpoint_cpu = self.cm.endpoint_cpu_ms(nbytes)
        cpu_ends = np.asarray([self.cluster.device(r.src).category == "cpu" or self.cluster.device(r.dst).category == "cpu" for r in routes], dtype=bool)
        # Across hosts the network moves the bytes: a CPU end is held for its CPU time only (module docstring).
        self.cross_host = [self.cluster.device(r.src).host != self.cluster.device(r.dst).host for r in routes]
        self.g_endpoint_ms = endpoint_cpu.tolist()
        measured_ms = self.cm.measured_transfer_ms
        measured: dict[int, list[float | None]] = {}  # the same on every phase: replicas are alike
        for g in dict.fromkeys(measured_groups):
            edges = g_more.get(g) or [e_data[cross_edges[first[g]]]]
            measured[g] = []
            for a, b in ((dev[g_src[g]], g_dst[g]), (g_dst[g], dev[g_src[g]])):
                times = [measured_ms(e.transfer_ms, devices[a], devices[b]) for e in edges if e.transfer_ms]
                times = [t for t in times if t is not None]
                measured[g].append(max(times) / m if times else None)
        f_route, b_route, f_dur, b_dur = [], [], [], []
        for p in range(len(self.phase_map)):
            fr, br = route_of[2 * p * G : (2 * p + 1) * G], route_of[(2 * p + 1) * G : (2 * p + 2) * G]
            fd_np, bd_np = latency[fr] + nbytes * per_byte[fr], latency[br] + nbytes * per_byte[br]
            fd = np.where(cpu_ends[fr], np.maximum(fd_np, endpoint_cpu), fd_np).tolist()
            bd = np.where(cpu_ends[br], np.maximum(bd_np, endpoint_cpu), bd_np).tolist()
            for g, (mf, mb) in measured.items():
                if mf is not None:
                    fd[g] = mf
                if mb is not None:
                    bd[g] = mb
            f_route.append(fr.tolist())
            b_route.append(br.tolist())
            f_dur.append(fd)
            b_dur.append(bd)
        self.local_succ, self.local_pred, self.groups_of, self.in_groups = local_succ, local_pred, groups_of, in_groups
        self.g_src, self.g_dst, self.g_cons = g_src, g_dst, g_cons
        self.g_bytes = nbytes.tolist()
        self.g_shared = shared
        self.f_dur, self.b_dur = f_dur, b_dur  # per phase, per group
        self.f_route, self.b_route = f_route, b_route
        self.routes = routes
        self.route_resources = _merge_resources([r.resources for r in routes])
        self.flow_routes = route_of[2 * len(self.phase_map) * G :].tolist()

    def _copy_engines(self) -> None:
        """Devices without a copy engine (category ``cpu``) take part in their transfers: each gets a
        resource of its own, added to every route that starts or ends there (so to the collectives whose
        flows take those routes; a send between hosts books its ends, :attr:`route_ends`, only for the
        message's CPU time), and held by its tasks too, so its transfers inside its host and its
        tasks never overlap. ``cpu_res[d]`` is that resource
        (-1 for a device with a copy engine); None when no device lacks one."""
        cpu = [d.category == "cpu" for d in self.devices]
        self.cpu_res: list[int] | None = None
        if not any(cpu):
            return
        first = 1 + max((x for res in self.route_resources for x in res), default=-1)
        ids = list(itertools.accumulate(cpu, initial=first))
        cpu_res = [ids[d] if on_cpu else -1 for d, on_cpu in enumerate(cpu)]
        index = self.cluster.device_index
        self.route_links = list(self.route_resources)
        self.route_ends: list[tuple[int, int]] = []  # the CPU resources of the route's source and end, -1 for none
        for q, route in enumerate(self.routes):
            ends = (cpu_res[index(route.src)], cpu_res[index(route.dst)])
            self.route_resources[q] += tuple(r for r in dict.fromkeys(ends) if r >= 0)
            self.route_ends.append(ends)
        self.cpu_res = cpu_res

    def _memory_terms(self) -> None:
        """Training memory beyond activations (module docstring, "Memory"): per node, the gradients alive
        while its backward runs (``grad_tmp``: the larger of its output's, made on the device, and its
        inputs'), and the graph outputs (``NodeData.is_output``) whose output and loss stay there."""
        n, m, data = self.n, self.m, self.data
        self.grad_tmp = [0.0] * n
        self.grad_in = np.zeros(n)  # the gradients of its inputs alone, per microbatch
        self.outputs: list[int] = []
        if not self.has_bwd:
            return
        needs_grad = np.asarray(self.needs_grad, dtype=bool)
        src = self.lw.src
        shared = self.lw.shared_bytes  # not split by microbatches (module docstring)
        per_microbatch = (self.lw.nbytes - shared) / m + shared
        in_grad = np.bincount(self.lw.dst, weights=per_microbatch * needs_grad[src], minlength=n)
        output = np.fromiter(map(attrgetter("output_bytes"), data), dtype=float, count=n) / m
        is_output = np.fromiter(map(attrgetter("is_output"), data), dtype=bool, count=n)
        # The output's gradient is made here by local consumers or the loss; one from another device
        # is a received tensor, counted as such.
        made_here = is_output | np.fromiter(map(bool, self.local_succ), dtype=bool, count=n)
        counted = self.lw.counts_temporaries
        given = np.where(made_here, output, 0.0)
        # A graph output's loss backward has freed its own tensors when the output's backward makes the
        # input gradients: there the larger of the two moments (module docstring).
        self.grad_tmp = (np.where(is_output, np.maximum(given, in_grad), given + in_grad) * counted).tolist()
        self.grad_in = in_grad * counted
        self.outputs = np.flatnonzero(is_output & counted).tolist()

    def _priorities(self, priority: str) -> None:
        """Integer key per node for forward (``fkey``) and backward (``bkey``) tasks of the ready queues."""
        if priority == "topological":
            self.fkey, self.bkey = list(range(self.n)), list(range(self.n - 1, -1, -1))
        else:
            self.fkey, self.bkey = self._critical_path_keys()

    def _order_sequences(self, order: Mapping[str, Sequence[str]]) -> dict[int, list[int]]:
        """``order`` as task sequences: each listed device (and its replicas) runs its nodes in the given
        order for each of its microbatches in turn, then (training) their backwards in reverse order."""
        n, m, MN, dev = self.n, self.m, self.m * self.n, self.dev
        on_dev: list[list[int]] = [[] for _ in self.devices]
        for v in range(n):
            on_dev[dev[v]].append(v)
        sequences: dict[int, list[int]] = {}
        for dname, seq in order.items():
            d = self.cluster.device_index(dname)
            if self.group[d][0] != d:
                raise PlacementError(
                    f"order[{dname!r}]: {dname!r} is a replica of {self.devices[self.group[d][0]].name!r}'s "
                    "stage and runs its order; give the order for that device"
                )
            pos: dict[int, int] = {}
            for p, name in enumerate(seq):
                v = self.index.get(name)
                if v is None:
                    raise PlacementError(f"order[{dname!r}][{p}]: no node {name!r} in the simulated graph")
                if dev[v] != d:
                    raise PlacementError(f"order[{dname!r}][{p}]: node {name!r} is assigned to {self.devices[dev[v]].name!r}")
                if v in pos:
                    raise PlacementError(f"order[{dname!r}][{p}]: node {name!r} is listed twice")
                pos[v] = p
            if len(pos) != len(on_dev[d]):
                absent = [self.names[v] for v in on_dev[d] if v not in pos]
                raise PlacementError(f"order[{dname!r}] leaves out node(s) placed there: {', '.join(absent[:5])}")
            nodes = list(pos)
            group = self.group[d]
            for replica in group:
                mine = range(group.index(replica), m, len(group))
                tasks = [k * n + v for k in mine for v in nodes]
                if self.has_bwd:
                    tasks += [MN + k * n + v for k in mine for v in reversed(nodes)]
                sequences[replica] = tasks
        return sequences

    def _schedule_sequences(self, schedule: Schedule) -> dict[int, list[int]]:
        """The task sequence of every device of ``schedule`` (module docstring, "Schedules"); raises
        :class:`PlacementError` for a schedule that does not run exactly this placement's tasks."""
        n, m, MN, kdev = self.n, self.m, self.m * self.n, self.kdev
        if schedule.microbatches != m:
            raise PlacementError(
                f"the {schedule.name} schedule is for {schedule.microbatches} microbatch(es), the simulation for {m}: "
                "pass the same microbatches"
            )
        stage_nodes: dict[int, list[int]] = {}  # primary device -> its nodes, topological order
        for v in range(n):
            stage_nodes.setdefault(self.dev[v], []).append(v)
        ran = bytearray(self.T)
        sequences: dict[int, list[int]] = {}
        self.recv_posts: list[tuple[int, int]] = []  # (transfer, task before the receive or -1)
        for dname, actions in schedule.actions.items():
            if dname not in self.cluster:
                raise PlacementError(f"the schedule lists device {dname!r}, which cluster {self.cluster.name!r} lacks")
            d = self.cluster.device_index(dname)
            tasks: list[int] = []
            for action in actions:
                if isinstance(action, Recv):
                    self.recv_posts.append((self._received_transfer(action), tasks[-1] if tasks else -1))
                if not isinstance(action, Compute):
                    continue
                k = action.microbatch
                if not 0 <= k < m:
                    raise PlacementError(f"{dname}: {action.code()} names microbatch {k}; the step has {m}")
                if action.node is None:
                    nodes = stage_nodes.get(self.group[d][0], [])
                else:
                    v = self.index.get(action.node)
                    if v is None:
                        raise PlacementError(f"{dname}: {action.code()} names no node of the simulated graph")
                    nodes = [v]
                if isinstance(action, Backward) and self.has_bwd:
                    new = [MN + k * n + v for v in reversed(nodes)]
                else:
                    new = [k * n + v for v in nodes]
                for t in new:
                    v = t % n
                    if kdev[k][v] != d:
                        raise PlacementError(
                            f"{dname}: {action.code()} runs {self._task_name(t)} there; the placement puts it on "
                            f"{self.devices[kdev[k][v]].name}"
                        )
                    if ran[t]:
                        raise PlacementError(f"{dname}: {action.code()} runs {self._task_name(t)} a second time")
                    ran[t] = 1
                tasks += new
            sequences[d] = tasks
        self._add_unlisted_input_backwards(sequences, ran)
        return sequences

    def _add_unlisted_input_backwards(self, sequences: dict[int, list[int]], ran: bytearray) -> None:
        """A schedule runs no backward of a graph input (it takes no time and sends no gradient): each
        goes after the last backward of its microbatch on its device. Any other task left out is an error."""
        n, MN = self.n, self.m * self.n
        missing = [t for t in range(self.T) if not ran[t]]
        wrong = [t for t in missing if t < MN or self.needs_grad[t % n]]
        if wrong:
            t = wrong[0]
            more = f" and {len(wrong) - 1} more task(s)" if len(wrong) > 1 else ""
            raise PlacementError(
                f"the schedule never runs {self._task_name(t)} on {self.devices[self.kdev[(t % MN) // n][t % n]].name}"
                f"{more}: it must run every task of the placement"
            )
        later: dict[int, list[int]] = {}
        for t in missing:
            later.setdefault(self.kdev[(t - MN) // n][t % n], []).append(t)
        for d, inputs in later.items():
            seq = sequences.setdefault(d, [])
            last = {(t - MN) // n: p for p, t in enumerate(seq) if t >= MN}  # microbatch -> its last backward
            by_position: dict[int, list[int]] = {}
            for t in inputs:
                by_position.setdefault(last.get((t - MN) // n, len(seq) - 1), []).append(t)
            sequences[d] = [x for p, t in enumerate(seq) for x in (t, *by_position.get(p, ()))]
            sequences[d][:0] = by_position.get(-1, [])

    def _received_transfer(self, recv: Recv) -> int:
        """The simulated transfer a schedule's receive waits for (its index in ``t_start``)."""
        u = self.index.get(recv.tensor)
        receiver = recv.peer if recv.gradient and self.has_bwd else recv.device
        d = self.cluster.device_index(receiver) if receiver in self.cluster else -1
        g = self.group_of_pair.get((u, self.group[d][0])) if u is not None and d >= 0 else None
        if g is None:
            raise PlacementError(
                f"{recv.device}: {recv.code()} receives a tensor that this placement does not send there"
            )
        x = recv.microbatch * len(self.g_src) + g
        return x + self.m * len(self.g_src) if recv.gradient and self.has_bwd else x

    def _task_name(self, t: int) -> str:
        n, MN = self.n, self.m * self.n
        kind = "forward" if t < MN else "backward"
        return f"the {kind} of {self.names[t % n]!r} (microbatch {(t % MN) // n})"

    def _positions(self, sequences: dict[int, list[int]]) -> None:
        """Devices with a fixed sequence run exactly it: ``pos[task]`` is the task's place there."""
        self.explicit_dev = [False] * len(self.devices)
        self.sequences = sequences
        self.pos: list[int] = []
        if sequences:
            self.pos = [0] * self.T
            for d, seq in sequences.items():
                self.explicit_dev[d] = True
                for p, t in enumerate(seq):
                    self.pos[t] = p

    def _critical_path_keys(self) -> tuple[list[int], list[int]]:
        """Ranks by longest remaining path of compute (no communication), longest first."""
        n, fwd, bwd, needs_grad = self.n, self.fwd, self.bwd, self.needs_grad
        succ: list[list[int]] = [[] for _ in range(n)]
        pred: list[list[int]] = [[] for _ in range(n)]
        for u, v in zip(self.lw.src.tolist(), self.lw.dst.tolist()):
            succ[u].append(v)
            pred[v].append(u)
        bl_b = [0.0] * n  # longest backward path starting at B(v)
        for v in range(n):
            best = 0.0
            for u in pred[v]:
                if needs_grad[u] and bl_b[u] > best:
                    best = bl_b[u]
            bl_b[v] = bwd[v] + best
        bl_f = [0.0] * n  # longest path starting at F(v)
        for v in range(n - 1, -1, -1):
            best = bl_b[v] if self.has_bwd else 0.0
            for w in succ[v]:
                if bl_f[w] > best:
                    best = bl_f[w]
            bl_f[v] = fwd[v] + best
        fkey = [0] * n
        bkey = [0] * n
        for r, v in enumerate(sorted(range(n), key=lambda v: (-bl_f[v], v))):
            fkey[v] = r
        for r, v in enumerate(sorted(range(n), key=lambda v: (-bl_b[v], -v))):
            bkey[v] = r
        return fkey, bkey

    # -- the event loop -------------------------------------------------------------------------
    def run(self) -> SimResult:
        """The step simulated; with co-running CPU devices, simulated again with every node's times
        scaled by its overlap factors (module docstring, "Co-running CPU devices")."""
        result = self._loop()
        if self.corun_group is None:
            return result
        fwd_factor, bwd_factor = self._overlap_factors()
        self.fwd = [t * f for t, f in zip(self.fwd, fwd_factor)]
        self.bwd = [t * f for t, f in zip(self.bwd, bwd_factor)]
        return self._loop()

    def _loop(self) -> SimResult:
        n, m = self.n, self.m
        has_bwd = self.has_bwd
        kdev, fwd, bwd = self.kdev, self.fwd, self.bwd
        local_succ, local_pred, groups_of, in_groups = self.local_succ, self.local_pred, self.groups_of, self.in_groups
        g_src, g_cons = self.g_src, self.g_cons
        route_res, P = self.route_resources, self.P
        # Per microbatch (the lists of its phase): durations and link resources of each group's sends.
        k_fdur = [self.f_dur[k % P] for k in range(m)]
        k_bdur = [self.b_dur[k % P] for k in range(m)]
        # A send across hosts books its route's links only, and each CPU end (without a copy engine) for
        # the message's CPU time (``held``: the sender's and the receiver's resources, -1 for none, and
        # that time; None elsewhere, where the CPU ends are among the route's resources). Module
        # docstring, "Devices without a copy engine".
        split = [self.cpu_res is not None and cross for cross in self.cross_host]
        phase_fres = [[self.route_links[r] if split[r] else route_res[r] for r in routes] for routes in self.f_route]
        phase_bres = [[self.route_links[r] if split[r] else route_res[r] for r in routes] for routes in self.b_route]
        k_fres = [phase_fres[k % P] for k in range(m)]
        k_bres = [phase_bres[k % P] for k in range(m)]

        def held_of(routes: list[int], durations: list[float]) -> list[tuple[int, int, float] | None]:
            endpoint = self.g_endpoint_ms
            return [
                (*self.route_ends[r], min(endpoint[g], durations[g])) if split[r] and max(self.route_ends[r]) >= 0 else None
                for g, r in enumerate(routes)
            ]

        phase_fheld = [held_of(routes, durations) for routes, durations in zip(self.f_route, self.f_dur)]
        phase_bheld = [held_of(routes, durations) for routes, durations in zip(self.b_route, self.b_dur)]
        k_fheld = [phase_fheld[k % P] for k in range(m)]
        k_bheld = [phase_bheld[k % P] for k in range(m)]
        stage_of = self.stage_of
        needs_grad, fkey, bkey = self.needs_grad, self.fkey, self.bkey
        ndev = len(self.devices)
        G = len(g_src)
        MN = m * n
        T = self.T
        WAKE = 2 * T  # event codes from WAKE on: a device without a copy engine is free again
        MG = m * G
        explicit_dev, pos = self.explicit_dev, self.pos
        any_explicit = any(explicit_dev)
        cpu_res = self.cpu_res
        no_copy_engine = cpu_res is not None
        inf = math.inf

        # Per (microbatch, node): inputs still missing and the latest arrival among remote ones.
        fneed = self.indeg * m
        f_at = [0.0] * MN
        # Per (microbatch, group): consumers still to finish (backward in training, forward otherwise),
        # and when they all have (the received tensor is freed then).
        gneed = [len(c) for c in g_cons] * m
        g_free = array("d", [inf]) * MG
        if has_bwd:
            # B(v) waits for F(v), the backward of each local consumer and each gradient sent back.
            bneed = [1 + len(local_succ[v]) + len(groups_of[v]) if needs_grad[v] else 1 for v in range(n)] * m
            b_at = [0.0] * MN
        else:
            # Local consumers still to finish; when they have; when the last send arrived.
            oneed = [len(local_succ[v]) for v in range(n)] * m
            local_done = [0.0] * MN
            sent_at = [0.0] * MN

        fwd_left = [0] * ndev
        for k in range(m):
            for d in kdev[k]:
                fwd_left[d] += 1
        # Replicated stages: tasks still to end on their devices, then the all-reduce's interval.
        stage_left = [0] * len(self.stages)
        for d, left in enumerate(fwd_left):
            if stage_of[d] >= 0:
                stage_left[stage_of[d]] += left * (2 if has_bwd else 1)
        # Synchronisation: backwards each bucket still waits for, the next bucket of each stage to book.
        bucket_left, bucket_of, stage_bucket = list(self.bucket_left), self.bucket_of, self.stage_bucket
        bucket_stage, bucket_gate, step_lo, step_hi = self.bucket_stage, self.bucket_gate, self.step_lo, self.step_hi
        step_ms, step_res = self.step_ms, self.step_res
        J = len(bucket_stage)
        requested = [False] * J
        bucket_req = [-1.0] * J
        next_bucket = [bucket_stage.index(s) if s in bucket_stage else J for s in range(len(self.stages))]
        step_start = [-1.0] * len(step_ms)
        step_end = [-1.0] * len(step_ms)
        cursor = [0] * ndev
        busy = [False] * ndev
        busy_until = [0.0] * ndev  # end of the task a busy device runs
        ready: list[list[int]] = [[] for _ in range(ndev)]  # heaps of key * T + task
        # Written once per entry and read back by numpy: C doubles, viewed without a copy later.
        task_start = array("d", [-1.0]) * T
        t_start = array("d", [-1.0]) * (2 * MG if has_bwd else MG)
        t_end = array("d", [-1.0]) * len(t_start)
        # Every link resource, and every copy-engine-less device's own (a device without transfers too).
        top = max(max((max(r, default=0) for r in route_res), default=0), max(cpu_res or [0]))
        free_at = [0.0] * (1 + max(top, *(x for r in step_res for x in r)) if step_res else 1 + top)
        # (time, code): code < T task ends, code < WAKE task code - T ready, else device code - WAKE free
        events: list[tuple[float, int]] = []
        heappush, heappop = heapq.heappush, heapq.heappop
        wake_at = [-1.0] * ndev

        def try_start(d: int, now: float) -> None:
            h = ready[d]
            if busy[d] or not h:
                return
            if no_copy_engine and cpu_res[d] >= 0 and free_at[cpu_res[d]] > now:
                # A transfer holds the device: try again when it ends.
                t = free_at[cpu_res[d]]
                if wake_at[d] != t:
                    wake_at[d] = t
                    heappush(events, (t, WAKE + d))
                return
            top = h[0]
            task = top % T
            if any_explicit and explicit_dev[d]:
                if top // T != cursor[d]:
                    return
                cursor[d] += 1
            elif task >= MN and fwd_left[d]:
                return  # GPipe: no backward while forwards remain on the device
            heappop(h)
            busy[d] = True
            task_start[task] = now
            end = now + (fwd[task % n] if task < MN else bwd[(task - MN) % n])
            busy_until[d] = end
            if no_copy_engine and cpu_res[d] >= 0:
                free_at[cpu_res[d]] = end
            heappush(events, (end, task))

        # Idle devices with new ready tasks; they pick a task once every event of the instant is in.
        pending: list[int] = []
        marked = [False] * ndev

        def stage_task_done(d: int, j: int, now: float) -> None:
            # A task of a replicated stage ended (after the sends it made): the stage's last task, or
            # the last backward of a bucket's nodes (``j``), requests the bucket's synchronisation.
            s = stage_of[d]
            stage_left[s] -= 1
            if stage_left[s] == 0 and stage_bucket[s] >= 0:
                request(stage_bucket[s], now)
            if j >= 0:
                bucket_left[j] -= 1
                if bucket_left[j] == 0:
                    request(j, now)

        def book_send(res: tuple[int, ...], held: tuple[int, int, float] | None, dur: float, now: float) -> tuple[float, float]:
            # A send requested at `now`: across hosts both ends' CPUs for the message's CPU time, each
            # from when it is free, then (and inside a host at once) every resource of the route, first
            # come first served, for `dur`. Returns when the send starts and when its data lands.
            st = now
            if held is not None:
                for r in held[:2]:
                    if r >= 0:
                        if free_at[r] > st:
                            st = free_at[r]
                        free_at[r] = max(now, free_at[r]) + held[2]
            for r in res:
                if free_at[r] > st:
                    st = free_at[r]
            en = st + dur
            for r in res:
                free_at[r] = en
            return st, en

        def request(j: int, now: float) -> None:
            # Book the stage's requested buckets in bucket order (one stream per stage), each step on
            # its resources first come first served, after the step before it.
            requested[j] = True
            s = bucket_stage[j]
            while next_bucket[s] < J and bucket_stage[next_bucket[s]] == s and requested[next_bucket[s]]:
                b = next_bucket[s]
                next_bucket[s] += 1
                bucket_req[b] = now
                t = now
                if bucket_gate[b] >= 0 and step_end[bucket_gate[b]] > t:
                    t = step_end[bucket_gate[b]]
                for x in range(step_lo[b], step_hi[b]):
                    for r in step_res[x]:
                        if free_at[r] > t:
                            t = free_at[r]
                    step_start[x] = t
                    t += step_ms[x]
                    for r in step_res[x]:
                        free_at[r] = t
                    step_end[x] = t

        def ready_fwd(v: int, k: int, now: float) -> None:
            d = kdev[k][v]
            key = pos[k * n + v] if explicit_dev[d] else k * n + fkey[v]
            heappush(ready[d], key * T + k * n + v)
            if not busy[d] and not marked[d]:
                marked[d] = True
                pending.append(d)

        def ready_bwd(v: int, k: int, now: float) -> None:
            d = kdev[k][v]
            key = pos[MN + k * n + v] if explicit_dev[d] else MN + k * n + bkey[v]
            heappush(ready[d], key * T + MN + k * n + v)
            if not busy[d] and not marked[d]:
                marked[d] = True
                pending.append(d)

        for k in range(m):
            for v in range(n):
                if fneed[k * n + v] == 0:
                    ready_fwd(v, k, 0.0)
        for d in pending:
            marked[d] = False
            try_start(d, 0.0)
        pending.clear()

        now = 0.0
        while events:
            now, code = heappop(events)
            if code < MN:  # F(v,k) ends
                k, v = divmod(code, n)
                dk = kdev[k]
                d = dk[v]
                busy[d] = False
                fwd_left[d] -= 1
                base = k * n
                if has_bwd:
                    i = base + v
                    bneed[i] -= 1
                    if bneed[i] == 0:
                        t = b_at[i]
                        if t <= now or (busy[d] and busy_until[d] > t):
                            ready_bwd(v, k, now)
                        else:
                            heappush(events, (t, T + MN + i))
                else:
                    if not local_succ[v]:
                        local_done[base + v] = now
                    for u in local_pred[v]:
                        i = base + u
                        oneed[i] -= 1
                        if oneed[i] == 0:
                            local_done[i] = now
                    kg = k * G
                    for g in in_groups[v]:
                        i = kg + g
                        gneed[i] -= 1
                        if gneed[i] == 0:
                            g_free[i] = now
                for w in local_succ[v]:
                    i = base + w
                    fneed[i] -= 1
                    if fneed[i] == 0:
                        t = f_at[i]
                        if t <= now or (busy[dk[w]] and busy_until[dk[w]] > t):
                            ready_fwd(w, k, now)  # due before its device can next start a task
                        else:
                            heappush(events, (t, T + i))
                last = now
                f_res, f_dur, f_held = k_fres[k], k_fdur[k], k_fheld[k]
                for g in groups_of[v]:
                    # Book every link of the route, first come first served; the data lands at `en`.
                    st, en = book_send(f_res[g], f_held[g], f_dur[g], now)
                    x = k * G + g
                    t_start[x] = st
                    t_end[x] = en
                    if en > last:
                        last = en
                    for w in g_cons[g]:
                        i = base + w
                        if en > f_at[i]:
                            f_at[i] = en
                        fneed[i] -= 1
                        if fneed[i] == 0:
                            t = f_at[i]
                            if busy[dk[w]] and busy_until[dk[w]] > t:
                                ready_fwd(w, k, now)
                            else:
                                heappush(events, (t, T + i))
                if not has_bwd:
                    sent_at[base + v] = last
                if stage_of[d] >= 0:
                    stage_task_done(d, -1, now)
                if not marked[d]:
                    marked[d] = True
                    pending.append(d)
            elif code < T:  # B(v,k) ends
                k, v = divmod(code - MN, n)
                dk = kdev[k]
                d = dk[v]
                busy[d] = False
                base = k * n
                for u in local_pred[v]:
                    if needs_grad[u]:
                        i = base + u
                        bneed[i] -= 1
                        if bneed[i] == 0:
                            t = b_at[i]
                            if t <= now or (busy[d] and busy_until[d] > t):
                                ready_bwd(u, k, now)
                            else:
                                heappush(events, (t, T + MN + i))
                kg = k * G
                for g in in_groups[v]:
                    x = kg + g
                    gneed[x] -= 1
                    if gneed[x] == 0:
                        g_free[x] = now
                        u = g_src[g]
                        if needs_grad[u]:
                            st, en = book_send(k_bres[k][g], k_bheld[k][g], k_bdur[k][g], now)
                            t_start[MG + x] = st
                            t_end[MG + x] = en
                            i = base + u
                            if en > b_at[i]:
                                b_at[i] = en
                            bneed[i] -= 1
                            if bneed[i] == 0:
                                t = b_at[i]
                                du = dk[u]
                                if busy[du] and busy_until[du] > t:
                                    ready_bwd(u, k, now)
                                else:
                                    heappush(events, (t, T + MN + i))
                if stage_of[d] >= 0:
                    stage_task_done(d, bucket_of[v], now)
                if not marked[d]:
                    marked[d] = True
                    pending.append(d)
            elif code < WAKE:  # the last input of a task arrives
                task = code - T
                k, v = divmod(task, n)
                d = kdev[k if k < m else k - m][v]
                if (
                    not busy[d]
                    and not ready[d]
                    and not explicit_dev[d]
                    and (task < MN or not fwd_left[d])
                    and (not events or events[0][0] > now)
                    and (not no_copy_engine or cpu_res[d] < 0 or free_at[cpu_res[d]] <= now)
                ):
                    # The device is idle and nothing else can be ready there at this instant: start it
                    # now (what the ready heap would do, without it).
                    busy[d] = True
                    task_start[task] = now
                    end = now + (fwd[v] if task < MN else bwd[v])
                    busy_until[d] = end
                    if no_copy_engine and cpu_res[d] >= 0:
                        free_at[cpu_res[d]] = end
                    heappush(events, (end, task))
                elif task < MN:
                    ready_fwd(v, task // n, now)
                else:
                    ready_bwd(v, (task - MN) // n, now)
            else:  # a device without a copy engine is free of its transfers
                d = code - WAKE
                if not marked[d]:
                    marked[d] = True
                    pending.append(d)
            if pending and (not events or events[0][0] > now):
                # Every event of this instant is in: each idle device starts its best ready task.
                for d in pending:
                    marked[d] = False
                    try_start(d, now)
                pending.clear()

        done = T - task_start.count(-1.0)
        if done != T:
            self._deadlock(done, T, cursor)
        self.task_start, self.t_start, self.t_end, self.g_free = task_start, t_start, t_end, g_free
        self.step_start, self.step_end, self.bucket_req = step_start, step_end, bucket_req
        if not has_bwd:
            self.local_done, self.sent_at = local_done, sent_at
        return self._result(max(now, *step_end) if step_end else now)

    def _deadlock(self, done: int, total: int, cursor: list[int]) -> None:
        stuck = [
            f"{self.devices[d].name} waits to run {self._task_name(seq[cursor[d]])}"
            for d, seq in self.sequences.items()
            if cursor[d] < len(seq)
        ]
        detail = "; ".join(stuck[:4]) or "no device can proceed"
        raise PlacementError(
            f"the execution order deadlocks: {done} of {total} tasks ran; {detail}, whose inputs need a task "
            "that the order puts later"
        )

    # -- results --------------------------------------------------------------------------------
    def _peak_memory(self) -> list[float]:
        """Peak per device from the allocation intervals the loop recorded (frees first at ties)."""
        n, m, G = self.n, self.m, len(self.g_src)
        MN = m * n
        start = np.frombuffer(self.task_start)
        f_end = start[:MN] + np.tile(np.asarray(self.fwd), m)
        node_dev = self._task_devices()
        g_src_node0 = np.asarray(self.g_src, dtype=np.int64)
        g_src_dev = node_dev[(np.arange(m)[:, None] * n + g_src_node0).reshape(-1)]
        g_dst = self._receiving_devices()
        g_bytes = np.tile(np.asarray(self.g_bytes), m)
        t_end = np.frombuffer(self.t_end)
        arrival = self._receive_times(start, t_end)
        parts_dev, parts_time, parts_delta = [], [], []

        def interval(devs, alloc, free, size) -> None:
            parts_dev.extend((devs, devs))
            parts_time.extend((alloc, free))
            parts_delta.extend((size, -size))

        if self.has_bwd:
            b_start = start[MN:]
            b_end = b_start + np.tile(np.asarray(self.bwd), m)
            interval(node_dev, f_end, b_end, np.tile(self._kept_for_backward(), m))
            interval(node_dev, b_start, b_end, np.tile(np.asarray(self.grad_tmp), m))
            self._gradients(interval, node_dev, b_start)
            self._shared_gradients(interval, node_dev, b_start, b_end)
            if self.outputs:  # each microbatch's output to the step's end; the loss (module docstring)
                out = np.asarray(self.outputs, dtype=np.int64)
                tasks = (np.arange(m)[:, None] * n + out).reshape(-1)
                size = np.tile(np.asarray([self.data[v].output_bytes / m for v in self.outputs]), m)
                interval(node_dev[tasks], f_end[tasks], np.full(len(tasks), np.inf), size)
                interval(node_dev[tasks], f_end[tasks], b_end[tasks], size)
                interval(node_dev[tasks], b_start[tasks], b_end[tasks], size)
                scalar = np.full(len(tasks), LOSS_SCALAR_BYTES)
                interval(node_dev[tasks], f_end[tasks], np.full(len(tasks), np.inf), scalar)
                interval(node_dev[tasks], b_start[tasks], np.full(len(tasks), np.inf), scalar)
            interval(g_dst, arrival[: m * G], np.frombuffer(self.g_free), g_bytes)
            # Gradients: held at the producer from arrival until its backward ends.
            g_src_node = np.tile(g_src_node0, m) + np.repeat(np.arange(m) * n, G)
            sent = t_end[m * G :] >= 0
            interval(g_src_dev[sent], arrival[m * G :][sent], b_end[g_src_node[sent]], g_bytes[sent])
            # ... and at the sender from when it is made to the step's end (the distributed executor
            # finishes its gradient sends, and lets go of their buffers, only before the optimizer step).
            made = np.frombuffer(self.g_free)[sent]
            interval(g_dst[sent], made, np.full(len(made), np.inf), g_bytes[sent])
        else:
            free = np.maximum(np.asarray(self.local_done), np.asarray(self.sent_at))
            consumers = np.asarray([len(self.local_succ[v]) + len(self.groups_of[v]) for v in range(n)])
            free[np.tile(consumers, m) == 0] = np.inf  # graph outputs stay to the end
            interval(node_dev, f_end, free, np.tile(np.asarray(self.out), m))
            interval(g_dst, arrival[: m * G], np.frombuffer(self.g_free), g_bytes)
        if self.bucket_stage:  # each replica's flat copy of a bucket, from its request to the step's end
            stages = [self.stages[s] for s in self.bucket_stage]
            where = np.asarray([d for stage in stages for d in stage], dtype=np.int64)
            counts = [len(stage) for stage in stages]
            interval(where, np.repeat(self.bucket_req, counts), np.full(len(where), np.inf),
                     np.repeat(self.bucket_bytes, counts))  # fmt: skip
        devs = np.concatenate(parts_dev).astype(np.int16 if len(self.devices) < 2**15 else np.int64)
        times = np.concatenate(parts_time)
        delta = np.concatenate(parts_delta)
        keep = delta != 0
        devs, times, delta = devs[keep], times[keep], delta[keep]
        peak = list(self.static)
        if len(delta):
            by_time = np.argsort(times)
            by_dev = by_time[np.argsort(devs[by_time], kind="stable")]  # by device, then by time
            devs, times, delta = devs[by_dev], times[by_dev], delta[by_dev]
            level = np.cumsum(delta)
            # Frees come before allocations at one instant, so the level worth reading is the one after
            # the last change at each (device, time): where either changes next.
            last = np.ones(len(devs), dtype=bool)
            last[:-1] = (devs[1:] != devs[:-1]) | (times[1:] != times[:-1])
            bounds = np.flatnonzero(devs[1:] != devs[:-1]) + 1
            starts = np.concatenate(([0], bounds))
            ends = np.concatenate((bounds, [len(devs)]))
            for s, e in zip(starts.tolist(), ends.tolist()):
                base = level[s - 1] if s > 0 else 0.0
                top = float(level[s:e][last[s:e]].max() - base)
                d = int(devs[s])
                peak[d] = self.static[d] + max(0.0, top)
        return peak

    def _kept_for_backward(self) -> np.ndarray:
        """(n,) per microbatch, what a node keeps from its forward's end to its backward's end: its
        activation, or its output when that is sent to another device and larger (the executors keep a
        sent tensor until its gradient is back; the activation may be that same tensor; a shared
        parameter sent is the parameter itself)."""
        kept = np.asarray(self.act)
        if len(self.g_src):
            sent = np.zeros(self.n)  # a shared parameter is sent from its own storage: nothing new
            np.maximum.at(sent, np.asarray(self.g_src, dtype=np.int64), np.asarray(self.g_bytes) - self.g_shared)
            kept = np.maximum(kept, sent * np.asarray(self.needs_grad, dtype=bool))
        return kept

    def _gradients(self, interval: Callable[..., None], node_dev: np.ndarray, b_start: np.ndarray) -> None:
        """A node's parameter gradients on each device that runs its backward, from the first of its
        backwards there to the step's end (the executors set every ``.grad`` to None before a step)."""
        grad = self.lw.grad_bytes
        nodes = np.flatnonzero(grad)
        if not len(nodes):
            return
        n, m, D = self.n, self.m, len(self.devices)
        tasks = (np.arange(m)[:, None] * n + nodes).reshape(-1)
        key = node_dev[tasks].astype(np.int64) * n + np.tile(nodes, m)
        first = np.full(D * n, np.inf)
        np.minimum.at(first, key, b_start[tasks])
        made = np.flatnonzero(np.isfinite(first))
        interval(made // n, first[made], np.full(len(made), np.inf), grad[made % n])

    def _shared_gradients(
        self, interval: Callable[..., None], node_dev: np.ndarray, b_start: np.ndarray, b_end: np.ndarray
    ) -> None:
        """The gradient of a parameter that its owner shares with users (edges with
        ``EdgeData.param_bytes``, as a decoder's cell called at every time step). Per microbatch, a
        device's one backward call sums the gradients of all the uses on the device in one buffer, made
        by the first of their backwards; each later use makes its gradient and the new sum while the
        old sum lives (module docstring, "Memory"). Added, per microbatch and device:

        * the buffer from the first use's backward: on the owner's device to the end of the owner's
          backward, where it is added into ``.grad`` (for the microbatch whose owner starts its backward
          first it becomes ``.grad``, which :meth:`_gradients` counts from then on, so only the time
          before); on a device that received the parameter until its users' backwards end, from where
          the gradient sent back is counted;
        * during each later use's backward, the new sum, made once the backward has used (and freed)
          its output's gradient: beside its inputs' gradients, at most ``grad_tmp``'s moment or that
          one; and the owner's new gradient (a user's is in ``grad_tmp``);
        * the first user's gradient, which is the buffer itself, taken out of its ``grad_tmp``."""
        lw, n = self.lw, self.n
        edges = np.flatnonzero(lw.shared_bytes > 0)
        if not len(edges):
            return
        uses: dict[int, list[tuple[int, float]]] = {}
        for e in edges.tolist():
            uses.setdefault(int(lw.src[e]), []).append((int(lw.dst[e]), float(lw.shared_bytes[e])))
        devs, alloc, free, size = [], [], [], []

        def add(d: int, a: float, f: float, nbytes: float) -> None:
            devs.append(d), alloc.append(a), free.append(f), size.append(nbytes)

        for u, users in uses.items():
            nbytes = float(lw.shared_owner_bytes[u])
            owner_tasks = [k * n + u for k in range(self.m)]
            grad_from = {}  # device -> the owner task whose backward starts first there
            for t in owner_tasks:
                d = int(node_dev[t])
                if d not in grad_from or b_start[t] < b_start[grad_from[d]]:
                    grad_from[d] = t
            for owner in owner_tasks:
                base, home = owner - u, int(node_dev[owner])
                by_device: dict[int, list[tuple[int, float]]] = {home: [(owner, 0.0)]}
                for v, b in users:
                    by_device.setdefault(int(node_dev[base + v]), []).append((base + v, b))
                for d, group in by_device.items():
                    # On the owner's device, a gradient received from a user elsewhere is the first
                    # sum (counted as a received tensor): every local use then adds to it.
                    received = d == home and len(by_device) > 1
                    if len(group) == 1 and not received:
                        continue
                    first = min((t for t, _ in group), key=lambda t: b_start[t])
                    if d == home:
                        end = b_start[owner] if owner == grad_from[d] else b_end[owner]
                    else:
                        end = max(b_end[t] for t, _ in group)
                    add(d, b_start[first], end, nbytes)
                    for t, b in group:
                        v = t - base
                        if t == first and not received:  # its gradient is the buffer: counted there
                            add(d, b_start[t], b_end[t], 0.0 if t == owner else -b)
                            continue
                        # The owner's new gradient is not in grad_tmp (a user's is). The new sum is
                        # made once the backward has used, and freed, its output's gradient; the first
                        # local use's sum is the buffer, counted from its start.
                        new_gradient = nbytes if t == owner else 0.0
                        temp = self.grad_tmp[v]
                        counted = temp + (nbytes if t == first else 0.0)
                        add(d, b_start[t], b_end[t], max(temp, self.grad_in[v] + nbytes) + new_gradient - counted)
        interval(np.asarray(devs, dtype=np.int64), np.asarray(alloc), np.asarray(free), np.asarray(size))

    def _receive_times(self, start: np.ndarray, t_end: np.ndarray) -> np.ndarray:
        """When each transfer's tensor starts to take memory on the receiving device: its arrival, or
        earlier when a schedule posts the receive (allocates the buffer) before: when the device finishes
        the compute before the :class:`Recv` (at 0 when nothing comes before it)."""
        if not self.recv_posts:
            return t_end
        x, before = (np.asarray(a, dtype=np.int64) for a in zip(*self.recv_posts))
        durations = np.concatenate((np.tile(np.asarray(self.fwd), self.m), np.tile(np.asarray(self.bwd), self.m)))
        ends = start + durations[: len(start)]
        posted = np.where(before >= 0, ends[before], 0.0)
        times = t_end.copy()
        times[x] = np.minimum(times[x], posted)
        return times

    def _task_devices(self) -> np.ndarray:
        """The device of forward task ``k * n + v`` (and of the backward of the same node and microbatch)."""
        if self.P == 1:
            return np.tile(np.asarray(self.dev, dtype=np.int64), self.m)
        return np.asarray(self.kdev, dtype=np.int64).reshape(-1)

    def _receiving_devices(self) -> np.ndarray:
        """The device receiving transfer ``k * G + g`` of the forward sends."""
        g_dst = np.asarray(self.g_dst, dtype=np.int64)
        phases = np.asarray(self.phase_map, dtype=np.int64)[:, g_dst]
        return phases[np.arange(self.m) % self.P].reshape(-1)

    def _result(self, step: float) -> SimResult:
        m, G, P = self.m, len(self.g_src), self.P
        devices, routes = self.devices, self.routes
        names = [d.name for d in devices]
        busy = np.bincount(self._task_devices(), weights=np.tile(np.asarray(self.fwd) + np.asarray(self.bwd), m), minlength=len(devices))
        # Traffic per route first (at most one per device pair), then per link.
        per_k = np.arange(m) % P
        f_route = np.asarray(self.f_route, dtype=np.int64).reshape(P, G)[per_k].reshape(-1)
        b_route = np.asarray(self.b_route, dtype=np.int64).reshape(P, G)[per_k].reshape(-1)
        f_dur = np.asarray(self.f_dur).reshape(P, G)[per_k].reshape(-1)
        b_dur = np.asarray(self.b_dur).reshape(P, G)[per_k].reshape(-1)
        full = np.tile(np.asarray(self.g_bytes), m)
        # float even with no transfer (bincount of nothing counts in integers); synchronisation adds to them
        route_bytes = np.bincount(f_route, weights=full, minlength=len(routes)).astype(float)
        route_busy = np.bincount(f_route, weights=f_dur, minlength=len(routes)).astype(float)
        count = m * G
        if self.has_bwd and G:
            grads = np.tile(np.asarray(self.needs_grad)[np.asarray(self.g_src, dtype=np.int64)], m)
            route_bytes += np.bincount(b_route[grads], weights=full[grads], minlength=len(routes))
            route_busy += np.bincount(b_route[grads], weights=b_dur[grads], minlength=len(routes))
            count += int(grads.sum())
        sent = float(route_bytes.sum())
        collectives = self._collectives()
        self._synchronisation_traffic(route_bytes, route_busy)
        link_bytes: dict[str, float] = {}
        link_busy: dict[str, float] = {}
        for r, route in enumerate(routes):
            if route_bytes[r] or route_busy[r]:
                for name in route.links:
                    link_bytes[name] = link_bytes.get(name, 0.0) + float(route_bytes[r])
                    link_busy[name] = link_busy.get(name, 0.0) + float(route_busy[r])
        capacity = {d.name: d.memory_bytes for d in devices}
        peak_d = dict(zip(names, self._peak_memory()))
        raw = RawTimeline(
            device_names=names,
            node_names=self.names,
            node_device=self.kdev,
            node_is_backward=[nd.is_backward for nd in self.data],
            fwd_ms=self.fwd,
            bwd_ms=self.bwd,
            task_start=self.task_start,
            microbatches=m,
            group_src=self.g_src,
            group_dst_device=[[pm[d] for d in self.g_dst] for pm in self.phase_map],
            group_bytes=self.g_bytes,
            group_fwd_route=self.f_route,
            group_bwd_route=self.b_route,
            route_links=[r.links for r in routes],
            transfer_start=self.t_start,
            transfer_end=self.t_end,
            collectives=collectives,
        )
        return SimResult(
            step_ms=step,
            mode=self.mode,
            microbatches=m,
            busy_ms=dict(zip(names, busy.tolist())),
            peak_memory_bytes=peak_d,
            static_memory_bytes=dict(zip(names, self.static)),
            memory_capacity_bytes=capacity,
            over_capacity=[d for d in names if peak_d[d] > capacity[d]],
            link_bytes=link_bytes,
            link_busy_ms=link_busy,
            transferred_bytes=sent,
            num_transfers=count,
            raw=raw,
        )


    def _synchronisation_traffic(self, route_bytes: np.ndarray, route_busy: np.ndarray) -> None:
        """Add each synchronisation step's flows to the traffic of their routes (links only: no transfer)."""
        routes = iter(self.step_routes)
        for x, flows in enumerate(self.step_flows):
            for f in flows:
                q = next(routes)
                route_bytes[q] += f.nbytes
                route_busy[q] += self.step_ms[x]

    def _collectives(self) -> list[Collective]:
        """The timeline's records of the synchronisation steps (:class:`placement.timeline.Collective`)."""
        names = [d.name for d in self.devices]
        per_stage = Counter(self.bucket_stage)
        first = {s: self.bucket_stage.index(s) for s in per_stage}
        out = []
        for kind, algorithm, j, lo, hi, root in self.records:
            s = self.bucket_stage[j]
            devices = [names[d] for d in self.stages[s]] + ([root] if root else [])
            sent = dict.fromkeys(devices, 0.0)
            links: dict[str, list[str]] = {d: [] for d in devices}
            for flows in self.step_flows[lo:hi]:
                for f in flows:
                    sent[f.src] += f.nbytes
                    links[f.src] += self.cluster.route(f.src, f.dst).links
            if kind == UPDATE:
                sent[root] = self.bucket_bytes[j]
            out.append(
                Collective(kind, algorithm, j - first[s], per_stage[s], devices, root, self.bucket_bytes[j],
                           self.step_start[lo], self.step_end[hi - 1], list(sent.values()),
                           [tuple(dict.fromkeys(links[d])) for d in devices])
            )
        return out


def _scheduled_allreduces(schedule: Schedule) -> dict[str, list[AllReduce]]:
    """The :class:`~placement.schedules.AllReduce` actions of each replicated stage in ``schedule``, as its
    first replica (the stage's device) lists them, in bucket order: stage device -> actions."""
    found: dict[str, list[AllReduce]] = {}
    for device, actions in schedule.actions.items():
        mine = [a for a in actions if isinstance(a, AllReduce) and a.group and a.group[0] == device]
        if mine:
            found[device] = sorted(mine, key=lambda a: -1 if a.bucket is None else a.bucket)
    return found


def _merge_resources(route_resources: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Renumber link resources so that resources used by exactly the same routes become one.

    Under the circuit model every transfer books all links of its route for the same interval, so two
    resources crossed by the same set of routes are always free at the same time: one suffices. This
    shortens the loop over a route's links (a NIC's PCIe link and its network port, say) and changes
    no result.
    """
    users: dict[int, list[int]] = {}
    for r, res in enumerate(route_resources):
        for x in res:
            users.setdefault(x, []).append(r)
    merged: dict[tuple[int, ...], int] = {}
    new_id = {x: merged.setdefault(tuple(rs), len(merged)) for x, rs in users.items()}
    return [tuple(dict.fromkeys(new_id[x] for x in res)) for res in route_resources]



# -- asynchronous parameter servers ---------------------------------------------------------------


def server_update_ms(nbytes: float, memory_bandwidth: float, optimizer_state_factor: float) -> float:
    """Milliseconds a server takes to apply one gradient of ``nbytes`` of parameters: it reads the
    gradient and the parameters, writes the parameters and streams the optimizer state once,
    ``(3 + optimizer_state_factor) x nbytes / memory_bandwidth`` (module docstring)."""
    return 1e3 * (3 + optimizer_state_factor) * nbytes / memory_bandwidth


@dataclass(frozen=True)
class AsyncServerStep:
    """The steady-state step of asynchronous parameter servers (:func:`async_server_step`), in ms.

    Attributes:
        step_ms: ``T``, each worker's time per step.
        compute_ms: ``C``.
        exposed_ms: ``T - C``, the wait for answers (or the servers) that compute does not hide.
        round_trip_ms: ``R``.
        server_ms: ``O``, the busiest server's time per step.
        push_ms, pull_ms: the two phases of ``R``.
        updates_ms: ``N U``, one server's updates per step.
        bound: the term that sets ``T``: ``"compute"``, ``"round trip"`` or ``"servers"``.
    """

    step_ms: float
    compute_ms: float
    exposed_ms: float
    round_trip_ms: float
    server_ms: float
    push_ms: float
    pull_ms: float
    updates_ms: float
    bound: str


def async_server_step(
    cluster: ClusterLike,
    workers: Sequence[str],
    servers: Sequence[str],
    param_bytes: float,
    compute_ms: float,
    staleness: int,
    *,
    optimizer_state_factor: float = 2.0,
    message_ms: Callable[[float], float] | None = None,
) -> AsyncServerStep:
    """Each worker's steady-state time per step under asynchronous parameter servers with staleness
    ``s`` (module docstring, "Asynchronous parameter servers"): ``T = max(C, (C + R) / (s + 1), O)``.

    ``workers`` train the whole model (``param_bytes`` of parameters) on their shares, ``compute_ms`` a
    step each; ``servers`` hold contiguous shards sized to their links
    (:func:`placement.sharding.shard_fractions`, as :func:`runtime.servers.async_layout` cuts them);
    ``message_ms``: what a message of so many bytes costs a CPU end (:meth:`CostModel.endpoint_cpu_ms`;
    None: nothing). Raises :class:`ConfigurationError` for no worker or server, a device that is both
    or not in the cluster, or a negative staleness or compute time."""
    cluster = Cluster.resolve(cluster)
    if not workers or not servers or set(workers) & set(servers):
        raise ConfigurationError(
            f"async_server_step: workers {list(workers)} and servers {list(servers)}: need one or more of each, distinct"
        )
    unknown = [d for d in (*workers, *servers) if d not in cluster]
    if unknown:
        raise ConfigurationError(f"async_server_step: {unknown[0]!r} is not a device of cluster {cluster.name!r}")
    if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0 or not compute_ms >= 0:
        raise ConfigurationError(
            f"async_server_step: staleness={staleness!r} and compute_ms={compute_ms!r}: expected an integer >= 0 and ms >= 0"
        )
    n, shares = len(workers), shard_fractions(servers, cluster, workers)
    cpus = {d.name for d in cluster.devices if d.category == "cpu"}
    cost = message_ms or (lambda _: 0.0)
    push_ms, pull_ms = (
        sum(collectives.booked_ms(ph, cpus, cost) for ph in phases)
        for phases in collectives.server_exchange(cluster, workers, servers, param_bytes, shares)
    )
    updates_ms = n * max(
        server_update_ms(param_bytes * share, cluster.device(k).memory_bandwidth, optimizer_state_factor)
        for k, share in zip(servers, shares)
    )
    round_trip = push_ms + updates_ms + pull_ms
    server_ms = round_trip if cpus.intersection(servers) else max(push_ms, pull_ms, updates_ms)
    terms = {"compute": compute_ms, "round trip": (compute_ms + round_trip) / (staleness + 1), "servers": server_ms}
    bound = max(terms, key=terms.__getitem__)
    step = terms[bound]
    return AsyncServerStep(step, compute_ms, step - compute_ms, round_trip, server_ms, push_ms, pull_ms, updates_ms, bound)


