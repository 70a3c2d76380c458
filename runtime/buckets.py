"""Which parameters each bucket collective of a schedule carries, and the rules a device's buckets obey.

A :class:`~placement.schedules.BucketCollective` (an :class:`~placement.schedules.AllReduce`,
:class:`~placement.schedules.Reduce` or :class:`~placement.schedules.Broadcast`) names cost-graph
``nodes``; the parameters it carries are theirs (``graph.node(n).params``, qualified names, which are
the keys of :attr:`~runtime.partition.DeviceProgram.parameters`, or aliases of them:
:attr:`~runtime.partition.PartitionedProgram.aliases`), in the order the nodes are listed
and, within a node, as the graph lists them. An empty ``nodes`` carries every parameter of the device's
stage (the one all-reduce of a stage that is not bucketed).

The gradient collectives of a device (its all-reduces and reduces) must carry each of its stage's
parameters exactly once: a parameter in no bucket would keep one replica's gradient, one in two would be
summed twice. Torch-free but for reading the parameters' names.
"""

from __future__ import annotations

from collections.abc import Sequence

from placement.schedules import BucketCollective
from runtime.errors import ScheduleError
from runtime.partition import PartitionedProgram

SHOWN = 5  # names quoted in one error message


def bucket_parameters(program: PartitionedProgram, stage: str, action: BucketCollective) -> tuple[str, ...]:
    """The names of the parameters of stage device ``stage`` that ``action`` carries (module docstring).

    Raises :class:`ScheduleError` when the bucket names a node the plan's graph lacks, or a parameter
    that the stage does not hold (the schedule was made for another partition)."""
    held = program.programs[stage].parameters
    if not action.nodes:
        return tuple(held)
    graph = program.plan.graph if program.plan is not None else None
    if graph is None:
        raise ScheduleError(
            f"{action.device}: {action.code()} names nodes {list(action.nodes[:SHOWN])}, but the program was partitioned "
            "without a cost graph, so their parameters are not known: partition it from a plan (runtime.partition)"
        )
    names: list[str] = []
    for node in action.nodes:
        if node not in graph:
            raise ScheduleError(
                f"{action.device}: {action.code()} ({action.name}) names node {node!r}, which the plan's graph lacks: "
                "the schedule was made for another plan; make it from the plan that was partitioned"
            )
        names.extend(program.aliases.get(p, p) for p in graph.node(node).params)
    foreign = [n for n in names if n not in held]
    if foreign:
        raise ScheduleError(
            f"{action.device}: {action.code()} ({action.name}) carries parameter(s) {foreign[:SHOWN]}, which the stage of "
            f"{stage} does not hold: the schedule was made for another plan; make it from the plan that was partitioned"
        )
    return tuple(dict.fromkeys(names))


def check_cover(program: PartitionedProgram, device: str, buckets: Sequence[tuple[BucketCollective, tuple[str, ...]]]) -> None:
    """The gradient collectives ``buckets`` (each with its parameters) of ``device`` carry each parameter
    of its stage exactly once (module docstring); nothing to check when the device has none."""
    if not buckets:
        return
    seen: dict[str, str] = {}
    for action, names in buckets:
        for name in names:
            if name in seen:
                raise ScheduleError(
                    f"{device}: parameter {name!r} is carried by both {seen[name]} and {action.code()} ({action.name}); "
                    "each parameter belongs to one bucket: the schedule was made for another plan"
                )
            seen[name] = f"{action.code()} ({action.name})"
    stage = program.stage_device(device)
    missing = [n for n in program.programs[stage].parameters if n not in seen]
    if missing:
        raise ScheduleError(
            f"{device}: parameter(s) {missing[:SHOWN]}{' ...' if len(missing) > SHOWN else ''} of the stage of {stage} are "
            "in none of its buckets, so the replicas would keep different gradients: the schedule was made for "
            "another plan; make it from the plan that was partitioned"
        )
