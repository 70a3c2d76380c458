"""What each device runs for a placement schedule, checked against the partitioned program.

The executors run a :class:`placement.schedules.Schedule`, the object the simulator times (made by
:func:`placement.schedules.make_schedule`); :func:`resolve` turns an executor's ``schedule=`` (a
Schedule, a schedule's name, or None for the plan's default) into one. The runtime adds no schedule of
its own: :func:`device_work` turns a schedule into each device's list of :class:`Work`, the units the
executors run, in the schedule's order:

* ``F k`` / ``B k``: the forward / backward of the device's program on microbatch ``k``. A pipeline
  schedule's :class:`~placement.schedules.Forward` of a stage is one; a ``node-order`` schedule's
  forwards of the nodes of one device and one microbatch are one, and must list the device program's
  nodes together and in its order (its backwards in the reverse order, graph inputs left out): the
  executors run a device's program for one microbatch at a time;
* ``AR``: an :class:`~placement.schedules.AllReduce` that sums a replicated stage's gradients (all of
  them, or one bucket's: :mod:`runtime.buckets`) over its replicas, exactly the replicas of the partition;
* ``RD`` / ``BC``: a :class:`~placement.schedules.Reduce` of one bucket's gradients onto a parameter
  server (the ``root``, one of the program's :attr:`~runtime.partition.PartitionedProgram.servers`), and
  the :class:`~placement.schedules.Broadcast` of its fresh weights, over the stage's replicas and the
  server;
* ``OPT``: the :class:`~placement.schedules.OptimizerStep`.

A server runs no program: its work is its reduces, its optimizer step and its broadcasts, in that
order. The gradient collectives (all-reduces and reduces) come after the device's last backward, and
together carry each parameter of its stage once; each reduce has its broadcast; the optimizer step
comes after the all-reduces (a replica whose weights all come from servers may have none).

The schedule's :class:`~placement.schedules.Send` and :class:`~placement.schedules.Recv` are not run
as such: the device programs carry the partition's real messages (one per fx value that crosses a
cut, where a schedule names one per cost node), and :func:`device_work` checks by playing those messages in
the schedule's order of work that the schedule runs them to the end.

That check needs no simulator: it expands each device's work into the communication events of its
program (sends never block, a wait blocks until the matching send was posted; a collective blocks
until every device of its group reaches it) and plays them until every device is done. It refuses a
schedule that deadlocks (naming each stuck device, its work and what it waits for), a send without a
receive, and, for backends whose messages carry no tags (NCCL), a pair of devices whose messages
would be received in another order than sent. A collective blocks until every device of its group is
at it, so the check also refuses members that run a group's collectives in different orders. Before
that it refuses, saying what is wrong, a schedule made for another plan: other devices, another number
of microbatches, other nodes or another node order on a device, stages split otherwise, a microbatch
missing, run twice or run by the wrong replica, a collective over other devices or before the last
backward, a bucket that names parameters the device does not hold, a parameter in no bucket or in two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from placement.schedules import (
    AllReduce,
    Backward,
    Broadcast,
    BucketCollective,
    Compute,
    OptimizerStep,
    Reduce,
    Schedule,
    Transfer,
    make_schedule,
)
from runtime import comm
from runtime.buckets import bucket_parameters, check_cover
from runtime.errors import ScheduleError
from runtime.partition import PartitionedProgram, device_sort_key

FORWARD = "F"
BACKWARD = "B"
ALLREDUCE = "AR"
REDUCE = "RD"
BROADCAST = "BC"
OPTIMIZER = "OPT"
COLLECTIVES = (ALLREDUCE, REDUCE, BROADCAST)
GRADIENT_COLLECTIVES = (ALLREDUCE, REDUCE)  # the collectives that carry gradients (issued by the backward)
SHOWN = 5  # nodes quoted in one error message


@dataclass(frozen=True)
class Work:
    """One unit of a device's work: ``F``/``B`` of microbatch ``microbatch``, a collective (``AR``,
    ``RD``, ``BC``: ``action``, carrying the parameters ``params``) or ``OPT``. Prints as ``F0``, ``B0``,
    ``OPT`` or the collective's code (``AR``, ``AR1``, ``RD0``, ``BC0``)."""

    kind: str
    microbatch: int | None = None
    action: BucketCollective | None = None
    params: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.action is not None:
            return self.action.code()
        return self.kind if self.microbatch is None else f"{self.kind}{self.microbatch}"


@dataclass
class DeviceWork:
    """A schedule as the executors run it.

    Attributes:
        schedule: the placement schedule.
        work: device -> its work in the schedule's order (every rank of the program: its devices and its
            parameter servers, a server holding nothing with no work).
    """

    schedule: Schedule
    work: dict[str, list[Work]]

    @property
    def training(self) -> bool:
        """The schedule runs backwards (False: a forward-only schedule, of an inference plan)."""
        return any(w.kind == BACKWARD for ws in self.work.values() for w in ws)


def resolve(program: PartitionedProgram, schedule: Schedule | str | None) -> Schedule:
    """``schedule`` as a :class:`Schedule`: itself, or :func:`placement.schedules.make_schedule` of the
    plan ``program`` was partitioned from, by name (None: that function's default)."""
    if isinstance(schedule, Schedule):
        return schedule
    if program.plan is None:
        raise ScheduleError(
            f"program {program.name!r} was partitioned without a plan (split_by_device?), so no schedule can be "
            "made for it: partition it from a plan (runtime.partition), or pass schedule= a Schedule"
        )
    return make_schedule(program.plan, schedule)


def device_work(schedule: Schedule, program: PartitionedProgram, *, in_order: bool = False) -> DeviceWork:
    """Each device's :class:`Work` for ``schedule``, checked to run ``program`` (module docstring).

    ``in_order``: also require that every pair of devices receives its messages in the order they are
    sent (for NCCL, whose point-to-point messages are matched by order, not by tag).
    """
    if not set(program.devices) <= set(schedule.actions) <= set(program.ranks):
        servers = f" and parameter servers {program.servers}" if program.servers else ""
        raise ScheduleError(
            f"the {schedule.name} schedule runs on devices {sorted(schedule.actions, key=device_sort_key)}, the program "
            f"on {program.devices}{servers}: it was made for another plan; make it from the plan that was partitioned"
        )
    if schedule.microbatches != program.microbatches:
        raise ScheduleError(
            f"the {schedule.name} schedule has {schedule.microbatches} microbatch(es), the program "
            f"{program.microbatches}: it was made for another plan; make it from the plan that was partitioned"
        )
    stages: dict[str, int] = {}
    work = {d: _one_device(schedule, program, d, stages) for d in program.devices}
    work.update({s: _server_work(schedule, program, s) for s in program.servers})
    assigned = DeviceWork(schedule, work)
    for device in program.devices:
        _check_work(assigned, program, device)
    events = {d: [e for w in work[d] for e in _expand(program, d, w)] for d in program.ranks}
    _play(events, program)
    if in_order:
        _check_order(events, program)
    return assigned


# -- from actions to work ------------------------------------------------------------------------


def _one_device(schedule: Schedule, program: PartitionedProgram, device: str, stages: dict[str, int]) -> list[Work]:
    """``device``'s actions as work: node-level compute collapsed per microbatch and checked against the
    device program, stage-level compute checked to name one stage per partition stage."""
    stage_device = program.stage_device(device)
    work: list[Work] = []
    blocks: list[list[str]] = []  # the nodes of each node-level F or B, by position in work
    levels = set()
    for action in schedule.actions[device]:
        if isinstance(action, Transfer):
            continue  # carried by the program's own communication ops
        if isinstance(action, Compute):
            unit = Work(BACKWARD if isinstance(action, Backward) else FORWARD, action.microbatch)
            levels.add("stage" if action.stage is not None else "node")
            if action.stage is not None:
                _check_stage(schedule, program, device, action.stage, stages)
                work.append(unit)
                blocks.append([])
            elif work and work[-1] == unit and blocks[-1]:
                blocks[-1].append(action.node)
            else:
                work.append(unit)
                blocks.append([action.node])
            continue
        blocks.append([])
        if isinstance(action, BucketCollective):
            work.append(_collective(program, device, action))
        elif isinstance(action, OptimizerStep):
            work.append(Work(OPTIMIZER))
        else:
            raise ScheduleError(
                f"{device} runs {action.code()} ({type(action).__name__}), an action the executors do not run"
            )
    if levels == {"stage", "node"}:
        raise ScheduleError(f"{device} mixes the compute of stages and of nodes; a schedule gives one or the other")
    if "node" in levels:
        for unit, nodes in zip(work, blocks):
            if nodes:
                _check_nodes(program, device, stage_device, unit, nodes)
    return work


def _check_stage(schedule: Schedule, program: PartitionedProgram, device: str, stage: int, stages: dict[str, int]) -> None:
    """``device`` runs stage ``stage``: the same stage as its replicas, and no other device does."""
    stage_device = program.stage_device(device)
    known = stages.setdefault(stage_device, stage)
    others = [d for d, s in stages.items() if s == stage and d != stage_device]
    if known != stage or others:
        raise ScheduleError(
            f"the {schedule.name} schedule runs stage {stage} on {device}, but the program runs {device} "
            f"{'as stage ' + str(known) if known != stage else 'as a stage of its own, not with ' + others[0]}: it "
            "was made for another plan; make it from the plan that was partitioned"
        )


def _collective(program: PartitionedProgram, device: str, action: BucketCollective) -> Work:
    """The work of a worker's collective, its group checked: an all-reduce over the stage's replicas, a
    reduce or broadcast over them and a parameter server, its root."""
    stage = program.stage_device(device)
    replicas = program.replicas.get(stage, [])
    if isinstance(action, AllReduce):
        if sorted(action.group) != sorted(replicas):
            expected = f"its stage's replicas {replicas}" if replicas else "nothing: its stage is not replicated"
            raise ScheduleError(
                f"{device} all-reduces over {list(action.group)}, but in the program it all-reduces {expected}: the "
                "schedule was made for another plan; make it from the plan that was partitioned"
            )
        if action.algorithm == "hierarchical":
            _check_islands(device, action)
        return Work(ALLREDUCE, action=action, params=bucket_parameters(program, stage, action))
    kind = REDUCE if isinstance(action, Reduce) else BROADCAST
    expected_group = sorted([*(replicas or [stage]), action.root])
    if action.root not in program.servers or sorted(action.group) != expected_group:
        raise ScheduleError(
            f"{device} runs {action.code()} ({action.name}) over {list(action.group)} with root {action.root!r}, but in "
            f"the program its stage's replicas are {replicas or [stage]} and the parameter servers {program.servers}: the "
            "schedule was made for another plan; make it from the plan that was partitioned"
        )
    return Work(kind, action=action, params=bucket_parameters(program, stage, action))


def _check_islands(device: str, action: AllReduce) -> None:
    """A hierarchical all-reduce's islands split its group: each member in exactly one island."""
    members = [d for island in action.islands for d in island]
    if not action.islands or any(not island for island in action.islands) or sorted(members) != sorted(action.group):
        raise ScheduleError(
            f"{device}: the hierarchical {action.code()} ({action.name}) has islands {[list(i) for i in action.islands]}, "
            f"which do not split its group {list(action.group)} (each member in one island, leader first): make the "
            "schedule with placement.sync.islands"
        )


def _server_work(schedule: Schedule, program: PartitionedProgram, server: str) -> list[Work]:
    """A parameter server's work, checked: reduces onto it, one optimizer step, broadcasts from it, in
    that order, a broadcast for each reduce (none at all when it holds no bucket)."""
    work: list[Work] = []
    for action in schedule.actions.get(server, []):
        if isinstance(action, OptimizerStep):
            work.append(Work(OPTIMIZER))
            continue
        if not isinstance(action, Reduce | Broadcast) or action.root != server:
            raise ScheduleError(
                f"parameter server {server} runs {action.code()} ({type(action).__name__}); a server runs only the "
                "reduces onto it, its optimizer step and the broadcasts from it"
            )
        stage = program.stage_device(next(d for d in action.group if d != server))
        kind = REDUCE if isinstance(action, Reduce) else BROADCAST
        work.append(Work(kind, action=action, params=bucket_parameters(program, stage, action)))
    kinds = [w.kind for w in work]
    listed = " ".join(map(str, work))
    in_order = kinds == sorted(kinds, key=[REDUCE, OPTIMIZER, BROADCAST].index)
    if work and (kinds.count(OPTIMIZER) != 1 or not in_order or _buckets(work, REDUCE) != _buckets(work, BROADCAST)):
        raise ScheduleError(
            f"parameter server {server} must run its reduces, one {OPTIMIZER}, then a broadcast of each bucket it "
            f"reduced; it runs {listed}"
        )
    return work


def _buckets(work: list[Work], kind: str) -> list[tuple[tuple[str, ...], str]]:
    """The (group, name) of each collective of ``kind`` in ``work``, in order."""
    return [(w.action.group, w.action.name) for w in work if w.kind == kind and w.action is not None]


def _check_nodes(program: PartitionedProgram, device: str, stage_device: str, unit: Work, nodes: list[str]) -> None:
    """The nodes of one node-level forward or backward are the device program's, in its order."""
    order = program.node_order.get(stage_device)
    if not order:
        raise ScheduleError(
            f"{device}: the schedule runs nodes, but the program was partitioned without a cost graph, so its "
            "nodes are not known: partition it from a plan (runtime.partition), or use a stage schedule"
        )
    if unit.kind == FORWARD:
        expected = order
    else:
        inputs = {program.cost_nodes.get(n) for n in program.input_names}
        expected = [n for n in reversed(order) if n not in inputs]
    if nodes != expected:
        i = next(i for i, (a, b) in enumerate(zip([*nodes, None], [*expected, None])) if a != b)
        got = repr(nodes[i]) if i < len(nodes) else "nothing"
        want = repr(expected[i]) if i < len(expected) else "nothing"
        raise ScheduleError(
            f"{device}: {unit} of the schedule runs {got} as its node {i}, where {device}'s program runs {want} "
            f"(its {'forward' if unit.kind == FORWARD else 'backward'} runs {len(expected)} node(s): "
            f"{expected[:SHOWN]}{' ...' if len(expected) > SHOWN else ''}). The executors run a device's program for "
            "one microbatch at a time: list its nodes together, in the program's order (in reverse for the "
            "backward); or the schedule was made for another plan"
        )


# -- the work of each device ---------------------------------------------------------------------


def _check_work(assigned: DeviceWork, program: PartitionedProgram, device: str) -> None:
    work = assigned.work[device]
    expected = program.microbatches_of(device)
    kinds = (FORWARD, BACKWARD) if assigned.training else (FORWARD,)
    for kind in kinds:
        seen = sorted(w.microbatch for w in work if w.kind == kind)
        if seen != expected:
            whose = (
                f"its microbatches as replica of {program.stage_device(device)}, {expected},"
                if len(expected) < program.microbatches
                else f"each of 0..{program.microbatches - 1}"
            )
            raise ScheduleError(f"{device} runs {kind} for microbatches {seen}; it must run {whose} once")
    done: set[int | None] = set()
    for w in work:
        if w.kind == FORWARD:
            done.add(w.microbatch)
        elif w.kind == BACKWARD and w.microbatch not in done:
            raise ScheduleError(f"{device} runs B{w.microbatch} before F{w.microbatch}")
    listed = " ".join(map(str, work))
    if not assigned.training:
        extra = [str(w) for w in work if w.kind != FORWARD]
        if extra:
            raise ScheduleError(f"{device} has {extra} in a forward-only schedule ({listed})")
        return
    kinds = [w.kind for w in work]
    last_backward = max(i for i, kind in enumerate(kinds) if kind == BACKWARD)
    gradients = [i for i, kind in enumerate(kinds) if kind in GRADIENT_COLLECTIVES]
    served = REDUCE in kinds  # a parameter server's worker: its weights come back in broadcasts
    if kinds.count(OPTIMIZER) > 1 or (OPTIMIZER not in kinds and not served):
        raise ScheduleError(f"{device} must run one {OPTIMIZER} (the optimizer step), at the end; it runs {listed}")
    if OPTIMIZER in kinds and any(k != BROADCAST for k in kinds[kinds.index(OPTIMIZER) + 1 :]):
        raise ScheduleError(f"{device} must end with its {OPTIMIZER} (the optimizer step), or its broadcasts; it runs {listed}")
    stage = program.stage_device(device)
    replicated = stage in program.replicas and bool(program.programs[stage].parameters)  # with something to sum
    late = OPTIMIZER in kinds and any(i > kinds.index(OPTIMIZER) for i in gradients)
    collectives = [i for i, kind in enumerate(kinds) if kind in COLLECTIVES]
    if (replicated and not gradients) or any(i < last_backward for i in collectives) or late:
        raise ScheduleError(
            f"{device} replicates the stage of {stage}: it must run one {ALLREDUCE} (the "
            f"all-reduce of the stage's gradients, or one per bucket) or a parameter server's {REDUCE} per bucket, "
            f"all before its {OPTIMIZER}, after its last backward; it runs {listed}"
            if replicated
            else f"{device} runs collectives before its last backward or after its {OPTIMIZER}; it runs {listed}"
        )
    reduced, broadcast = _buckets(work, REDUCE), _buckets(work, BROADCAST)
    if reduced != broadcast or (reduced and kinds.index(BROADCAST) < max(i for i, k in enumerate(kinds) if k == REDUCE)):
        raise ScheduleError(
            f"{device} must receive the weights of each bucket it reduces onto a parameter server, after its reduces "
            f"(a {BROADCAST} of each {REDUCE}, in the same order); it runs {listed}"
        )
    check_cover(program, device, [(w.action, w.params) for w in work if w.kind in GRADIENT_COLLECTIVES and w.action])


# -- playing the program's messages --------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    """One communication step of a device: ``send`` and ``post`` never block, ``wait`` does, and
    ``collective`` waits for every device of its group (``key``: the collective's key; ``peer``: the
    device's stage device)."""

    kind: str
    key: Any  # (transfer tag, microbatch, is gradient); a collective's (kind, group, name)
    work: Work
    peer: str


def _expand(program: PartitionedProgram, device: str, work: Work) -> list[_Event]:
    """The communication events of one unit of ``device``'s work, in the order the device meets them.

    Forward: the program's ops in order (its receives are posted first). Backward: the receives of
    the gradients of the values the device sent are posted first, then the gradient steps run in the
    reverse of the forward order: a received value's gradient is sent back, a sent value's is waited for.
    """
    if work.action is not None:
        return [_Event("collective", work.action.key, work, program.stage_device(device))]
    if work.kind == OPTIMIZER:
        return []
    k = work.microbatch
    assert k is not None
    forward: list[_Event] = []
    gradient_posts: list[_Event] = []
    gradient_steps: list[_Event] = []
    for node in program.programs[device].comm_nodes():
        if node.target is comm.send:
            t = program.transfer(node.kwargs["tag"])
            dst = program.runner(t.dst, k)
            forward.append(_Event("send", (t.tag, k, False), work, dst))
            if t.grad:
                gradient_posts.append(_Event("post", (t.tag, k, True), work, dst))
                gradient_steps.append(_Event("wait", (t.tag, k, True), work, dst))
        elif node.target is comm.recv:
            t = program.transfer(node.kwargs["tag"])
            forward.append(_Event("post", (t.tag, k, False), work, program.runner(t.src, k)))
        else:
            t = program.transfer(node.args[0].kwargs["tag"])
            src = program.runner(t.src, k)
            forward.append(_Event("wait", (t.tag, k, False), work, src))
            if t.grad:
                gradient_steps.append(_Event("send", (t.tag, k, True), work, src))
    if work.kind == FORWARD:
        return forward
    return list(reversed(gradient_posts)) + list(reversed(gradient_steps))


def _play(events: dict[str, list[_Event]], program: PartitionedProgram) -> None:
    position = dict.fromkeys(events, 0)
    sent: set[tuple[int, int, bool]] = set()
    received: set[tuple[int, int, bool]] = set()
    progress = True

    def at(device: str, event: _Event) -> bool:
        return position[device] < len(events[device]) and events[device][position[device]].key == event.key

    while progress:
        progress = False
        for device, seq in events.items():
            while position[device] < len(seq):
                event = seq[position[device]]
                if event.kind == "collective":
                    group = event.work.action.group
                    if not all(at(d, event) for d in group):
                        break
                    for d in group:
                        position[d] += 1
                    progress = True
                    continue
                if event.kind == "wait":
                    if event.key not in sent:
                        break
                    received.add(event.key)
                elif event.kind == "send":
                    sent.add(event.key)
                position[device] += 1
                progress = True
    stuck = [(d, seq[position[d]]) for d, seq in events.items() if position[d] < len(seq)]
    if stuck:
        lines = [f"{d} at {event.work} waits for {_describe(program, event)}" for d, event in stuck]
        raise ScheduleError("the schedule deadlocks: " + "; ".join(lines))
    unmatched = sorted(sent - received)
    if unmatched:
        tag, k, grad = unmatched[0]
        t = program.transfer(tag)
        what = f"the gradient of {t.value!r} from {t.dst} to {t.src}" if grad else f"{t.value!r} from {t.src} to {t.dst}"
        raise ScheduleError(f"{len(unmatched)} send(s) have no receive, e.g. {what} in microbatch {k}")


def _describe(program: PartitionedProgram, event: _Event) -> str:
    action = event.work.action
    if action is not None:
        bucket = "" if action.bucket is None else f" of {action.name}"
        if isinstance(action, AllReduce):
            return f"the all-reduce{bucket} with the other replicas of {event.peer} ({', '.join(action.group)})"
        what = "reduce onto" if isinstance(action, Reduce) else "broadcast from"
        return f"the {what} server {action.root}{bucket} with {', '.join(action.group)}"
    tag, k, grad = event.key
    t = program.transfer(tag)
    what = f"the gradient of {t.value!r}" if grad else repr(t.value)
    return f"{what} (transfer {tag}, microbatch {k}) from {event.peer}"


def _check_order(events: dict[str, list[_Event]], program: PartitionedProgram) -> None:
    sends: dict[tuple[str, str], list] = {}
    recvs: dict[tuple[str, str], list] = {}
    for device, seq in events.items():
        for e in seq:
            if e.kind == "send":
                sends.setdefault((device, e.peer), []).append(e.key)
            elif e.kind == "post":
                recvs.setdefault((e.peer, device), []).append(e.key)
    for channel, sequence in sends.items():
        expected = recvs.get(channel, [])
        if sequence != expected:
            i = next(i for i, (a, b) in enumerate(zip(sequence + [None], expected + [None])) if a != b)
            raise ScheduleError(
                f"{channel[0]} -> {channel[1]}: message {i} is sent as transfer {sequence[i] if i < len(sequence) else '-'} "
                f"but received as {expected[i] if i < len(expected) else '-'}; a backend without tags (NCCL) would "
                "mix them up: use a schedule in which both devices meet their messages in the same order"
            )

