"""Pipeline schedules as data: per device, the order in which it runs the forward and backward of each
microbatch; checked before anything runs, and printable.

An :class:`Action` is ``F k`` (the device's program on microbatch ``k``, with the sends and receives it
contains) or ``B k`` (the backward of that microbatch on the device: it posts the receives of the
gradients of the values it sent, then, in the reverse order of the forward, sends back the gradients
of the values it received and waits for those of the values it sent), or ``AR`` on a replica of a
data-parallel stage (the all-reduce that sums the stage's parameter gradients over its replicas, after
its last backward). A :class:`Schedule` gives every device its list of actions:

* :func:`gpipe` (Huang et al. 2019): all forwards, then all backwards. Valid for any partition.
* :func:`one_f_one_b` (PipeDream-flush, Narayanan et al. 2021): stage ``s`` of ``S`` runs ``S - 1 - s``
  warm-up forwards, then alternates one forward and one backward, then drains the backwards, so at most
  ``S - s`` microbatches keep activations alive at once. It needs the devices to form a pipeline (data
  flows one way between them): :func:`pipeline_stages` orders them or says why not.

A stage replicated on ``r`` devices (:mod:`runtime.partition`) gets the stage's actions restricted to the
microbatches of each replica (replica ``j`` runs ``j, j + r, ...``), in the same order, then ``AR``
(:func:`replicate`). Restricting a valid schedule keeps it free of deadlock: every replica meets its
messages in the order the stage did, and the all-reduce comes last.

:func:`validate` is the checker that needs no simulator: it expands each device's actions into the
communication events of its program (sends never block, a wait blocks until the matching send was
posted; an all-reduce blocks until every replica of the stage reaches it) and plays them until every
device is done. It refuses a schedule that deadlocks (naming each stuck device, its action and what it
waits for), a send without a receive, a microbatch missing, run twice or run by the wrong replica, an
all-reduce missing or not last, and, for backends whose messages carry no tags (NCCL), a pair of
devices whose messages would be received in another order than sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from placement.schedules.generate import STAGE_ORDERS
from runtime import comm
from runtime.errors import ScheduleError
from runtime.partition import PartitionedProgram, device_sort_key

FORWARD = "F"
BACKWARD = "B"
ALLREDUCE = "AR"
SCHEDULES = ("gpipe", "1f1b")


@dataclass(frozen=True)
class Action:
    """One step of a device: the forward (``F``) or backward (``B``) of one microbatch, or the all-reduce
    of a replicated stage's gradients (``AR``, no microbatch)."""

    kind: str
    microbatch: int | None = None

    def __str__(self) -> str:
        return self.kind if self.microbatch is None else f"{self.kind}{self.microbatch}"


@dataclass
class Schedule:
    """Which actions every device runs, in order.

    Attributes:
        name: ``gpipe``, ``1f1b`` or a user's name.
        microbatches: microbatches per step.
        actions: device -> its actions in order.
        training: backward actions are expected (False: forwards only, inference).
    """

    name: str
    microbatches: int
    actions: dict[str, list[Action]] = field(default_factory=dict)
    training: bool = True

    def __str__(self) -> str:
        width = max((len(d) for d in self.actions), default=0)
        lines = [f"{self.name} schedule: {self.microbatches} microbatch(es) on {len(self.actions)} device(s)"]
        for device, actions in self.actions.items():
            lines.append(f"  {device:<{width}} | {' '.join(str(a) for a in actions)}")
        return "\n".join(lines)


def gpipe(devices: list[str], microbatches: int, training: bool = True) -> Schedule:
    """All forwards in microbatch order, then (training) all backwards in microbatch order."""
    return _stage_schedule("gpipe", devices, microbatches, training)


def one_f_one_b(stages: list[str], microbatches: int) -> Schedule:
    """1F1B for devices in pipeline order (``stages[0]`` first; see the module docstring)."""
    return _stage_schedule("1f1b", stages, microbatches, True)


def _stage_schedule(name: str, stages: list[str], microbatches: int, training: bool) -> Schedule:
    """Schedule ``name`` with each device's forwards and backwards in the order that
    :data:`placement.schedules.generate.STAGE_ORDERS` gives its stage (one definition of each
    schedule's order, for the schedules as data and for the executors)."""
    order = STAGE_ORDERS[name]
    actions = {
        device: [Action(BACKWARD if backward else FORWARD, k) for backward, k in order(s, len(stages), microbatches, training)]
        for s, device in enumerate(stages)
    }
    return Schedule(name, microbatches, actions, training)


def pipeline_stages(program: PartitionedProgram) -> list[str]:
    """The stage devices in pipeline order (a topological order of who sends to whom), or a ScheduleError
    naming a cycle when data flows both ways between devices."""
    flow = nx.DiGraph()
    flow.add_nodes_from(program.stage_devices)
    flow.add_edges_from((t.src, t.dst) for t in program.transfers)
    rank = {d: i for i, d in enumerate(program.stage_devices)}
    try:
        return list(nx.lexicographical_topological_sort(flow, key=rank.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = [u for u, _ in nx.find_cycle(flow)]
        raise ScheduleError(
            f"the devices do not form a pipeline: data flows {' -> '.join(cycle + cycle[:1])}; 1F1B needs stages "
            "that only send forward: use schedule='gpipe', or a plan whose stages form a chain"
        ) from None


def make_schedule(program: PartitionedProgram, name: str, training: bool = True) -> Schedule:
    """The schedule ``name`` (``gpipe`` or ``1f1b``) for ``program``'s devices and microbatches, its
    replicated stages expanded to their replicas (:func:`replicate`)."""
    if name == "gpipe" or (name == "1f1b" and not training):
        schedule = gpipe(program.stage_devices, program.microbatches, training)
    elif name == "1f1b":
        schedule = one_f_one_b(pipeline_stages(program), program.microbatches)
    else:
        raise ScheduleError(f"unknown schedule {name!r}; schedules: {', '.join(SCHEDULES)}")
    return replicate(schedule, program)


def replicate(schedule: Schedule, program: PartitionedProgram) -> Schedule:
    """``schedule``, made for ``program``'s stage devices, with every replicated stage's actions given to
    its replicas: each runs the stage's actions of its own microbatches, in order, then (training) ``AR``."""
    actions: dict[str, list[Action]] = {}
    for device in program.devices:
        stage = program.stage_device(device)
        if stage not in schedule.actions:
            raise ScheduleError(f"the schedule has no actions for {stage}, a device of the program")
        if stage not in program.replicas:
            actions[device] = list(schedule.actions[stage])
            continue
        mine = set(program.microbatches_of(device))
        actions[device] = [a for a in schedule.actions[stage] if a.microbatch in mine]
        if schedule.training:
            actions[device].append(Action(ALLREDUCE))
    return Schedule(schedule.name, schedule.microbatches, actions, schedule.training)


# -- validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    """One communication step of a device: ``send`` and ``post`` never block, ``wait`` does, and
    ``allreduce`` waits for every replica of the stage (``peer``: the stage device; no key)."""

    kind: str
    key: tuple[int, int, bool] | None  # (transfer tag, microbatch, is gradient)
    action: Action
    peer: str


def validate(schedule: Schedule, program: PartitionedProgram, *, in_order: bool = False) -> None:
    """Raise :class:`ScheduleError` unless ``schedule`` runs ``program`` to the end (module docstring).

    ``in_order``: also require that every pair of devices receives its messages in the order they are
    sent (for NCCL, whose point-to-point messages are matched by order, not by tag).
    """
    _check_actions(schedule, program)
    events = {d: [e for a in schedule.actions[d] for e in _expand(program, d, a)] for d in program.devices}
    _play(events, program)
    if in_order:
        _check_order(events, program)


def _check_actions(schedule: Schedule, program: PartitionedProgram) -> None:
    if set(schedule.actions) != set(program.devices):
        raise ScheduleError(
            f"the schedule covers devices {sorted(schedule.actions, key=device_sort_key)}, the program runs on {program.devices}"
        )
    if schedule.microbatches != program.microbatches:
        raise ScheduleError(f"the schedule has {schedule.microbatches} microbatches, the program {program.microbatches}")
    kinds = (FORWARD, BACKWARD) if schedule.training else (FORWARD,)
    for device, actions in schedule.actions.items():
        malformed = [str(a) for a in actions if (a.microbatch is None) != (a.kind == ALLREDUCE)]
        if malformed:
            raise ScheduleError(f"{device} has actions {malformed}: F and B take a microbatch, {ALLREDUCE} none")
        expected = program.microbatches_of(device)
        for kind in kinds:
            seen = sorted(a.microbatch for a in actions if a.kind == kind)
            if seen != expected:
                whose = (
                    f"its microbatches as replica of {program.stage_device(device)}, {expected},"
                    if len(expected) < schedule.microbatches
                    else f"each of 0..{schedule.microbatches - 1}"
                )
                raise ScheduleError(f"{device} runs {kind} for microbatches {seen}; it must run {whose} once")
        replicated = schedule.training and program.stage_device(device) in program.replicas
        reduces = [i for i, a in enumerate(actions) if a.kind == ALLREDUCE]
        if replicated and reduces != [len(actions) - 1]:
            raise ScheduleError(
                f"{device} replicates the stage of {program.stage_device(device)}: its last action, and only that, "
                f"must be {ALLREDUCE} (the all-reduce of the stage's gradients); it has {' '.join(map(str, actions))}"
            )
        extra = [str(a) for a in actions if a.kind not in kinds and not (replicated and a.kind == ALLREDUCE)]
        if extra:
            what = "training" if schedule.training else "forward-only"
            raise ScheduleError(f"{device} has actions {extra} that a {what} schedule cannot run on it")
        done: set[int] = set()
        for a in actions:
            if a.kind == FORWARD:
                done.add(a.microbatch)
            elif a.kind == BACKWARD and a.microbatch not in done:
                raise ScheduleError(f"{device} runs B{a.microbatch} before F{a.microbatch}")


def _expand(program: PartitionedProgram, device: str, action: Action) -> list[_Event]:
    """The communication events of one action of ``device``, in the order the device meets them.

    Forward: the program's ops in order (its receives are posted first). Backward: the receives of
    the gradients of the values the device sent are posted first, then the gradient steps run in the
    reverse of the forward order: a received value's gradient is sent back, a sent value's is waited for.
    """
    if action.kind == ALLREDUCE:
        return [_Event("allreduce", None, action, program.stage_device(device))]
    k = action.microbatch
    assert k is not None
    forward: list[_Event] = []
    gradient_posts: list[_Event] = []
    gradient_steps: list[_Event] = []
    for node in program.programs[device].comm_nodes():
        if node.target is comm.send:
            t = program.transfer(node.kwargs["tag"])
            dst = program.runner(t.dst, k)
            forward.append(_Event("send", (t.tag, k, False), action, dst))
            if t.grad:
                gradient_posts.append(_Event("post", (t.tag, k, True), action, dst))
                gradient_steps.append(_Event("wait", (t.tag, k, True), action, dst))
        elif node.target is comm.recv:
            t = program.transfer(node.kwargs["tag"])
            forward.append(_Event("post", (t.tag, k, False), action, program.runner(t.src, k)))
        else:
            t = program.transfer(node.args[0].kwargs["tag"])
            src = program.runner(t.src, k)
            forward.append(_Event("wait", (t.tag, k, False), action, src))
            if t.grad:
                gradient_steps.append(_Event("send", (t.tag, k, True), action, src))
    if action.kind == FORWARD:
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
        lines = [f"{d} at {event.action} waits for {_describe(program, event)}" for d, event in stuck]
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
