"""Several plans of one zoo network, measured on CPU ranks and predicted, for benchmarks that ask how
well the simulator predicts this machine: :func:`measure_plans`, :func:`predict` and the summaries.

Measuring. Each plan runs on one process per device it uses (:func:`runtime.launch.spawn`, gloo, one
thread each, as ``graphc run`` starts them; every rank builds the network and partitions it by the
plan itself), with :class:`runtime.DistributedExecutor` and the plan's schedule, forward and backward of the zoo network's loss without an optimizer (what the calibration
times: :func:`graphc.app.calibrate.eager_step_ms`). The plans are measured in interleaved rounds: every
round runs every plan for a few steps after a warm-up, the plans that use the same number of ranks
together in one spawn (executors built one after another on the same ranks), so that the load of a
shared machine falls on all of them alike; a plan's time is the median over all its steps, a step's
time the slowest rank's. The first round also measures every rank's peak memory in a step of its own
(:class:`runtime.measure.MemoryTracker`: static bytes plus the peak of the live tensors). Every step
also records each rank's CPU time (all its threads): on a loaded machine the wall time of a step
swells with the time a rank waits for a core, its CPU time much less, so the CPU time next to the
simulator's compute per device (``busy_ms``) tells whether the work was predicted right even when the
wall time cannot be trusted.

Other load. Two ranks on a two-core machine leave no core spare, so a busy neighbour slows the plans
across ranks most (see ``benchmarks/runtime_step.py``). :class:`OtherLoad` records how many cores the
other processes of the machine used, on average, while the plans were measured (``/proc/stat`` minus
this process and its joined children).

Predicting. :func:`predict` simulates a plan on the calibrated ``local`` cluster running the
:class:`placement.schedules.Schedule` the executors run (:attr:`PlanCase.actions`: the ranks make the
same schedule from the same plan and name), with no optimizer state.

Summaries. :func:`error_summary` (median and worst absolute relative error) and :func:`kendall_tau`
(rank agreement of predicted and measured times; tau-b, which handles ties).
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from graphc.app.run import plan_granularity
from graphc.frontend import zoo
from graphc.ir.errors import ConfigurationError, GraphcError, RuntimeFault
from graphc.ir.graph import Graph
from placement import Cluster, CostModel, simulate
from placement.plan import Plan, stage_replicas
from placement.schedules import SCHEDULES, Schedule, make_schedule
from runtime import DistributedExecutor, PartitionedProgram, init_from_env
from runtime.launch import spawn
from runtime.rebuild import partition_model


@dataclass
class PlanCase:
    """One plan to measure and predict.

    Attributes:
        label: how tables name it (unique within a model).
        plan: the plan, made for the full-batch cost graph.
        program: the traced program partitioned by ``plan`` (traced on one microbatch when pipelined);
            each rank partitions the network by the plan again itself (nothing is sent to ranks but
            names and JSON), so this one gives the devices and the plan the ranks get.
        schedule: the name of the schedule the executors run and the simulator times (one of
            :data:`placement.schedules.SCHEDULES`); None: the plan's default (``gpipe`` for a plan with
            stages, else ``node-order``).
    """

    label: str
    plan: Plan
    program: PartitionedProgram
    schedule: str | None = None

    def __post_init__(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ConfigurationError(f"plan {self.label!r}: unknown schedule {self.schedule!r}; schedules: {', '.join(SCHEDULES)}")

    @cached_property
    def actions(self) -> Schedule:
        """The schedule itself (:func:`placement.schedules.make_schedule`): the one object both the
        executors run and the simulator times."""
        return make_schedule(self.plan, self.schedule)

    @property
    def ranks(self) -> int:
        """How many processes run it: one per device of the partitioned program and per parameter server."""
        return len(self.program.ranks)


@dataclass
class Measured:
    """A plan as measured: every timed step (the slowest rank's time, ms), each device's peak bytes, and
    each device's CPU time of every timed step (ms; its process's threads, sends and receives included)."""

    samples_ms: list[float] = field(default_factory=list)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    def median_cpu_ms(self) -> dict[str, float]:
        """Device -> the median CPU time of its steps."""
        return {d: statistics.median(v) for d, v in self.cpu_ms.items()}


@dataclass
class Predicted:
    """A plan as the simulator predicts it: the step (ms), each device's peak bytes and compute (ms)."""

    step_ms: float
    peak_memory_bytes: dict[str, int]
    busy_ms: dict[str, float]


@dataclass
class ErrorSummary:
    """Relative errors of predictions (predicted / measured - 1) summarised.

    Attributes:
        median_abs: the median of the absolute errors.
        worst: the error of largest magnitude (signed).
        worst_label: which prediction had it.
    """

    median_abs: float
    worst: float
    worst_label: str


class OtherLoad:
    """Cores that the machine's other processes used on average between :meth:`start` and :meth:`stop`
    (module docstring); ``cores`` is None where ``/proc/stat`` cannot be read."""

    def __init__(self) -> None:
        self.cores: float | None = None
        self._start: tuple[float | None, float, float] | None = None

    def start(self) -> None:
        self._start = (busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter())

    def stop(self) -> float | None:
        if self._start is None:
            raise GraphcError("OtherLoad.stop() before start()")
        busy_before, own_before, wall_before = self._start
        busy_after = busy_cpu_seconds()
        if busy_before is None or busy_after is None:
            return None
        other = (busy_after - busy_before) - (own_cpu_seconds() - own_before)
        self.cores = max(0.0, other) / (time.perf_counter() - wall_before)
        return self.cores


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process of this machine has used since boot (Linux ``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that ended (the ranks, once joined)."""
    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(r.ru_utime + r.ru_stime for r in usages)


# -- on the ranks ------------------------------------------------------------------------------------


def rank_run_plans(
    cases: list[tuple[str, dict[str, Any], str | None]], model: str, config: dict[str, Any], steps: int, warmup: int, memory: bool
) -> dict[str, dict[str, Any]]:
    """On one rank (started by :func:`runtime.launch.spawn`): each ``(label, plan, schedule)`` in turn (the
    plan as ``Plan.to_dict()``, the schedule's name or None), ``warmup`` then ``steps`` timed steps of the
    zoo network ``model`` built with ``config`` and partitioned by the plan on this rank; with ``memory``,
    one more step measuring this rank's peak bytes. Returns label -> ``{"device", "times", "cpu",
    "peak"}``: the rank's device, its wall and CPU time (every thread of the process) of each timed step in
    ms, its peak bytes by device."""
    init_from_env()
    zm = zoo.build(model, **config)
    loss_fn = zoo.zoo_loss(zm)
    found: dict[str, dict[str, Any]] = {}
    for label, plan_doc, schedule in cases:
        plan = Plan.from_dict(plan_doc)
        program = partition_model(zm.model, zm.example_inputs, plan, granularity=plan_granularity(None, plan), name=plan.graph_name)
        executor = DistributedExecutor(program, loss_fn=loss_fn, schedule=make_schedule(plan, schedule), timeout_s=300)
        times, cpu = [], []
        try:
            for _ in range(warmup + steps):
                start = time.process_time()
                times.append(executor.step(zm.example_inputs, zm.targets).step_ms)
                cpu.append(1e3 * (time.process_time() - start))
            peak = executor.step(zm.example_inputs, zm.targets, measure_memory=True).peak_memory_bytes if memory else {}
        finally:
            executor.close()
        found[label] = {"device": executor.device, "times": times[warmup:], "cpu": cpu[warmup:], "peak": peak}
    return found


# -- in the parent ------------------------------------------------------------------------------------


def measure_plans(
    cases: Sequence[PlanCase], model: str, config: dict[str, Any], *, rounds: int = 3, steps: int = 5, warmup: int = 2,
    memory: bool = True, timeout_s: float = 1800.0,
) -> dict[str, Measured]:  # fmt: skip
    """Measure every case on its ranks in ``rounds`` interleaved rounds (module docstring); label -> result.
    ``memory=False`` skips the step that measures peak memory (it leaves ``peak_memory_bytes`` empty).

    ``model`` and ``config`` name the zoo network the cases were partitioned from (every rank builds it
    for its inputs, targets and loss). Raises :class:`~graphc.ir.errors.RuntimeFault` when a rank fails, naming it."""
    labels = [c.label for c in cases]
    if len(set(labels)) != len(labels):
        raise ConfigurationError(f"plan labels must be unique, got {labels}")
    if rounds < 1 or steps < 1 or warmup < 0:
        raise ConfigurationError(f"rounds={rounds}, steps={steps}, warmup={warmup}: need rounds >= 1, steps >= 1, warmup >= 0")
    by_ranks: dict[int, list[PlanCase]] = {}
    for case in cases:
        by_ranks.setdefault(case.ranks, []).append(case)
    found = {c.label: Measured() for c in cases}
    previous = torch.get_num_threads()
    for round_ in range(rounds):
        for ranks, group in sorted(by_ranks.items()):
            args = ([(c.label, c.program.plan.to_dict(), c.schedule) for c in group], model, config, steps, warmup, memory and round_ == 0)
            outcomes = spawn(rank_run_plans, ranks, args, threads=1, timeout_s=timeout_s)
            failed = [o for o in outcomes if not o.ok]
            if failed:
                raise RuntimeFault(f"rank {failed[0].rank} failed measuring {[c.label for c in group]}: {failed[0].error}")
            for case in group:
                per_rank = [o.result[case.label] for o in outcomes]
                found[case.label].samples_ms += [max(step) for step in zip(*(r["times"] for r in per_rank))]
                for r in per_rank:
                    found[case.label].peak_memory_bytes.update(r["peak"])
                    found[case.label].cpu_ms.setdefault(r["device"], []).extend(r["cpu"])
    torch.set_num_threads(previous)
    return found


def predict(case: PlanCase, graph: Graph, cluster: Cluster, cost_model: CostModel) -> Predicted:
    """The simulated step, peak memory and compute of ``case`` (made for ``graph``) on ``cluster`` with
    ``cost_model`` (a :class:`~graphc.app.calibrate.Calibration`'s, to predict this machine), running the
    case's schedule, without optimizer state (the plans are measured without an optimizer)."""
    plan = case.plan
    result = simulate(
        graph, cluster, plan.assignment, cost_model, microbatches=plan.microbatches, schedule=case.actions,
        replicas=stage_replicas(plan.stages), sync=plan.sync, optimizer_state_factor=0.0,
    )  # fmt: skip
    used = case.program.devices
    return Predicted(result.step_ms, {d: int(result.peak_memory_bytes[d]) for d in used}, {d: result.busy_ms[d] for d in used})


# -- summaries ------------------------------------------------------------------------------------------


def relative_error(predicted: float, measured: float) -> float:
    """``predicted / measured - 1``: positive when the prediction is too high."""
    if measured <= 0:
        raise ConfigurationError(f"a measured value must be positive, got {measured}")
    return predicted / measured - 1


def error_summary(errors: dict[str, float]) -> ErrorSummary:
    """The median absolute error and the worst error of ``errors`` (label -> relative error)."""
    if not errors:
        raise ConfigurationError("error_summary needs at least one error")
    worst_label = max(errors, key=lambda label: abs(errors[label]))
    return ErrorSummary(statistics.median(abs(e) for e in errors.values()), errors[worst_label], worst_label)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of the pairs ``(x[i], y[i])``: +1 when both order every pair alike, -1 when
    opposite; ties count as neither (tau-b's correction). NaN when either sequence is constant."""
    if len(x) != len(y):
        raise ConfigurationError(f"kendall_tau needs sequences of equal length, got {len(x)} and {len(y)}")
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else math.nan
