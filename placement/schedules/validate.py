"""Checking a schedule before anything runs: its actions are well placed, its messages match, and it
cannot deadlock.

:func:`validate` runs three checks in turn and raises :class:`ScheduleError` at the first that fails:

1. **Structure.** Every action's ``device`` is the device whose list holds it; no device lists one action
   twice; every collective's group holds its device and only devices of the schedule; the ``root`` of a
   :class:`Reduce` or :class:`Broadcast` (a parameter server) is in its group and computes nothing (no
   forward or backward in its list).
2. **Matching.** Every :class:`Send` has exactly one :class:`Recv` with the same key (source,
   destination, tensor, microbatch, direction) and vice versa (the structure check makes "exactly one"
   the same as "one": a second copy would be the same action twice on one device).
3. **Progress.** The schedule is executed abstractly: each device runs its list in order; a send never
   waits (messages are buffered, as with ``isend``, and nothing bounds how many are in flight); a receive
   waits until its matching send has run; a collective waits until every device of its group has reached
   the same collective, and then all of them pass it at once; compute and the optimizer step never wait.
   The execution stops when no device can move. If some device still has actions left, the schedule
   deadlocks: the error names every such device, the action it is stuck at and whom it waits for (the
   peer of a receive; the members of a collective that have not reached it), and, when the waits form a
   cycle (:func:`networkx.find_cycle` on the graph "device -> device it waits for"), that cycle. With
   matched messages every receive's sender still has the send ahead of it, so a device waits either in a
   cycle or, behind a chain of waits, for a collective that a finished device never reached.

Under blocking (rendezvous) sends more schedules would deadlock; the buffered model is the one the
runtime's point-to-point communication provides.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import networkx as nx

from placement.errors import ScheduleError
from placement.schedules.actions import (
    Action,
    Broadcast,
    Collective,
    Compute,
    Recv,
    Reduce,
    Send,
    Transfer,
)
from placement.schedules.schedule import Schedule

SHOWN = 5  # problems listed in one error message


def validate(schedule: Schedule) -> None:
    """Raise :class:`ScheduleError` unless ``schedule`` is well formed, its messages match and it runs to
    the end (see the module docstring for the exact rules)."""
    _check_structure(schedule)
    _check_matching(schedule)
    _check_progress(schedule)


def _steps(schedule: Schedule) -> Iterator[tuple[str, int, Action]]:
    for device, actions in schedule.actions.items():
        for step, action in enumerate(actions):
            yield device, step, action


@functools.cache
def _kind(cls: type) -> tuple[bool, bool, bool, bool]:
    """(collective, reduce or broadcast, send, receive) for an action class, computed once per class: the
    action classes are ABCs, whose isinstance costs a call into abc for each of a schedule's actions."""
    return issubclass(cls, Collective), issubclass(cls, (Reduce, Broadcast)), issubclass(cls, Send), issubclass(cls, Recv)


def _check_structure(schedule: Schedule) -> None:
    for device, actions in schedule.actions.items():
        seen: dict[Action, int] = {}
        for step, action in enumerate(actions):
            if action.device != device:
                raise ScheduleError(f"{_where(device, step, action)}: the action is for device {action.device!r} but is in {device}'s list")
            if seen.setdefault(action, step) != step:
                raise ScheduleError(
                    f"{_where(device, step, action)}: the same action is already at step {seen[action]}; each action runs once"
                )
            collective, rooted, _, _ = _kind(type(action))
            if collective:
                strangers = [m for m in action.group if m not in schedule.actions]
                if device not in action.group or strangers:
                    raise ScheduleError(
                        f"{_where(device, step, action)}: its group {list(action.group)} must hold {device} and only "
                        f"devices of the schedule ({', '.join(schedule.actions)})"
                    )
            if rooted:
                _check_root(schedule, _where(device, step, action), action)


def _where(device: str, step: int, action: Action) -> str:
    return f"{device} step {step}, {action.code()}"


def _check_root(schedule: Schedule, where: str, action: Reduce | Broadcast) -> None:
    """The root of a reduce or broadcast is a member of its group that computes nothing (a server)."""
    if action.root not in action.group:
        raise ScheduleError(
            f"{where}: its root {action.root!r} is not in its group {list(action.group)}: the root (the parameter "
            "server) must be a member of the group"
        )
    compute = next((a for a in schedule.actions[action.root] if isinstance(a, Compute)), None)
    if compute is not None:
        raise ScheduleError(
            f"{where}: its root {action.root} is a parameter server but also computes ({compute.code()}): a server "
            "only holds parameters; pick a device that runs no node as the server"
        )


def _check_matching(schedule: Schedule) -> None:
    sends: dict[tuple, tuple[str, int, Transfer]] = {}
    recvs: dict[tuple, tuple[str, int, Transfer]] = {}
    for d, s, a in _steps(schedule):
        _, _, send, recv = _kind(type(a))
        if send or recv:
            (sends if send else recvs)[a.key] = (d, s, a)
    problems = [
        f"{d} step {s}, {a.code()}: {a.peer} never sends it; add {_counterpart(a).code()} to {a.peer}'s "
        "actions after the one that produces it, or remove the receive"
        for key, (d, s, a) in recvs.items()
        if key not in sends
    ] + [
        f"{d} step {s}, {a.code()}: {a.peer} never receives it; add {_counterpart(a).code()} to {a.peer}'s "
        "actions before the first one that uses it, or remove the send"
        for key, (d, s, a) in sends.items()
        if key not in recvs
    ]
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise ScheduleError(
            f"the schedule's messages do not match ({len(problems)} without a partner):\n  "
            + "\n  ".join(problems[:SHOWN])
            + more
        )


def _counterpart(action: Transfer) -> Transfer:
    """The action at the other end of ``action``'s message."""
    other = Recv if isinstance(action, Send) else Send
    return other(action.peer, action.device, action.tensor, action.microbatch, action.gradient)


def _check_progress(schedule: Schedule) -> None:
    position = _execute(schedule)
    stuck = {d: acts[position[d]] for d, acts in schedule.actions.items() if position[d] < len(acts)}
    if stuck:
        raise ScheduleError(_deadlock_message(schedule, position, stuck))


def _execute(schedule: Schedule) -> dict[str, int]:
    """Run the schedule abstractly (module docstring); return each device's position when nothing can
    move any more (its list's length when it finished)."""
    actions = schedule.actions
    position = dict.fromkeys(actions, 0)
    sent: set[tuple[str, str, str, int, bool]] = set()
    moved = True
    while moved:
        moved = False
        for device, seq in actions.items():
            while position[device] < len(seq):
                action = seq[position[device]]
                collective, _, send, recv = _kind(type(action))
                if recv and action.key not in sent:
                    break
                if collective:
                    if not all(_at(schedule, position, m, action) for m in action.group):
                        break
                    for member in action.group:
                        position[member] += 1
                else:
                    if send:
                        sent.add(action.key)
                    position[device] += 1
                moved = True
    return position


def _at(schedule: Schedule, position: dict[str, int], device: str, collective: Collective) -> bool:
    """Whether ``device`` is stopped at (a copy of) ``collective``."""
    seq = schedule.actions[device]
    here = seq[position[device]] if position[device] < len(seq) else None
    return isinstance(here, Collective) and here.key == collective.key


def _deadlock_message(schedule: Schedule, position: dict[str, int], stuck: dict[str, Action]) -> str:
    def state(device: str) -> str:
        if device not in stuck:
            return f"{device} (finished without reaching it)"
        return f"{device} (itself stuck at step {position[device]}, {stuck[device].code()})"

    waits = nx.DiGraph()
    lines = []
    for device, action in stuck.items():
        if isinstance(action, Recv):
            peers = [action.peer]
            send_step = schedule.actions[action.peer].index(_counterpart(action))
            why = f"waits for {state(action.peer)} to send it at its step {send_step}"
        else:  # only receives and collectives wait
            assert isinstance(action, Collective)
            peers = [m for m in action.group if not _at(schedule, position, m, action)]
            why = "waits for " + ", ".join(state(m) for m in peers) + " to reach it"
        waits.add_edges_from((device, peer) for peer in peers)
        lines.append(f"  {device} at step {position[device]}, {action.code()}: {why}")
    try:
        cycle = [u for u, _ in nx.find_cycle(waits)]
        advice = (
            f"cycle of waits: {' -> '.join(cycle + cycle[:1])}. Sends do not block: on one of these devices, "
            "move the send that its peer waits for before the receive it is stuck at."
        )
    except nx.NetworkXNoCycle:
        advice = "no cycle of waits: give every device of a collective's group that collective, in the same order."
    return f"the schedule deadlocks: {len(stuck)} device(s) cannot go on:\n" + "\n".join(lines) + "\n" + advice
