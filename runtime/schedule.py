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
* ``AR``: the :class:`~placement.schedules.AllReduce` that sums a replicated stage's gradients over
  its replicas, exactly the replicas of the partition;
* ``OPT``: the :class:`~placement.schedules.OptimizerStep`.

The schedule's :class:`~placement.schedules.Send` and :class:`~placement.schedules.Recv` are not run
as such: the device programs carry the partition's real messages (one per fx value that crosses a
cut, where a schedule names one per cost node), and :func:`device_work` checks by playing those messages in
the schedule's order of work that the schedule runs them to the end.

That check needs no simulator: it expands each device's work into the communication events of its
program (sends never block, a wait blocks until the matching send was posted; an all-reduce blocks
until every replica of the stage reaches it) and plays them until every device is done. It refuses a
schedule that deadlocks (naming each stuck device, its work and what it waits for), a send without a
receive, and, for backends whose messages carry no tags (NCCL), a pair of devices whose messages
would be received in another order than sent. Before that it refuses, saying what is wrong, a schedule
made for another plan: other devices, another number of microbatches, other nodes or another node
order on a device, stages split otherwise, a microbatch missing, run twice or run by the wrong replica,
an all-reduce over other devices or before the last backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from placement.schedules import (
    AllReduce,
    Backward,
    Compute,
    OptimizerStep,
    Schedule,
    Transfer,
    make_schedule,
)
from runtime import comm
from runtime.errors import ScheduleError
from runtime.partition import PartitionedProgram, device_sort_key

FORWARD = "F"
BACKWARD = "B"
ALLREDUCE = "AR"
OPTIMIZER = "OPT"
SHOWN = 5  # nodes quoted in one error message


@dataclass(frozen=True)
class Work:
    """One unit of a device's work: ``F``/``B`` of microbatch ``microbatch``, ``AR`` or ``OPT``."""

    kind: str
    microbatch: int | None = None

    def __str__(self) -> str:
        return self.kind if self.microbatch is None else f"{self.kind}{self.microbatch}"


@dataclass
class DeviceWork:
    """A schedule as the executors run it.

    Attributes:
        schedule: the placement schedule.
        work: device -> its work in the schedule's order.
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
    if set(schedule.actions) != set(program.devices):
        raise ScheduleError(
            f"the {schedule.name} schedule runs on devices {sorted(schedule.actions, key=device_sort_key)}, the program "
            f"on {program.devices}: it was made for another plan; make it from the plan that was partitioned"
        )
    if schedule.microbatches != program.microbatches:
        raise ScheduleError(
            f"the {schedule.name} schedule has {schedule.microbatches} microbatch(es), the program "
            f"{program.microbatches}: it was made for another plan; make it from the plan that was partitioned"
        )
    stages: dict[str, int] = {}
    work = {d: _one_device(schedule, program, d, stages) for d in program.devices}
    assigned = DeviceWork(schedule, work)
    for device in program.devices:
        _check_work(assigned, program, device)
    events = {d: [e for w in work[d] for e in _expand(program, d, w)] for d in program.devices}
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
        if isinstance(action, AllReduce):
            _check_group(program, device, action)
            work.append(Work(ALLREDUCE))
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


def _check_group(program: PartitionedProgram, device: str, action: AllReduce) -> None:
    replicas = program.replicas.get(program.stage_device(device), [])
    if sorted(action.group) != sorted(replicas):
        expected = f"its stage's replicas {replicas}" if replicas else "nothing: its stage is not replicated"
        raise ScheduleError(
            f"{device} all-reduces over {list(action.group)}, but in the program it all-reduces {expected}: the "
            "schedule was made for another plan; make it from the plan that was partitioned"
        )


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
    if [w.kind for w in work].count(OPTIMIZER) != 1 or work[-1].kind != OPTIMIZER:
        raise ScheduleError(f"{device} must end with one {OPTIMIZER} (the optimizer step); it runs {listed}")
    replicated = program.stage_device(device) in program.replicas
    reduces = [i for i, w in enumerate(work) if w.kind == ALLREDUCE]
    last_backward = max(i for i, w in enumerate(work) if w.kind == BACKWARD)
    if replicated and (len(reduces) != 1 or reduces[0] < last_backward):
        raise ScheduleError(
            f"{device} replicates the stage of {program.stage_device(device)}: it must run one {ALLREDUCE} (the "
            f"all-reduce of the stage's gradients), after its last backward; it runs {listed}"
        )


# -- playing the program's messages --------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    """One communication step of a device: ``send`` and ``post`` never block, ``wait`` does, and
    ``allreduce`` waits for every replica of the stage (``peer``: the stage device; no key)."""

    kind: str
    key: tuple[int, int, bool] | None  # (transfer tag, microbatch, is gradient)
    work: Work
    peer: str


def _expand(program: PartitionedProgram, device: str, work: Work) -> list[_Event]:
    """The communication events of one unit of ``device``'s work, in the order the device meets them.

    Forward: the program's ops in order (its receives are posted first). Backward: the receives of
    the gradients of the values the device sent are posted first, then the gradient steps run in the
    reverse of the forward order: a received value's gradient is sent back, a sent value's is waited for.
    """
    if work.kind == ALLREDUCE:
        return [_Event("allreduce", None, work, program.stage_device(device))]
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

    def at_allreduce(device: str) -> bool:
        return position[device] < len(events[device]) and events[device][position[device]].kind == "allreduce"

    while progress:
        progress = False
        for device, seq in events.items():
            while position[device] < len(seq):
                event = seq[position[device]]
                if event.kind == "allreduce":
                    group = program.replicas[event.peer]
                    if not all(at_allreduce(d) for d in group):
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
    if event.key is None:
        return f"the all-reduce with the other replicas of {event.peer} ({', '.join(program.replicas[event.peer])})"
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

