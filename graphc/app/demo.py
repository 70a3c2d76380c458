"""The main job, what ``make demo`` and ``graphc demo`` run: the whole path on one small network.

1. trace a small Inception-v3 (branchy, so two devices can work side by side), profile its ops on
   this machine's CPU (one thread, the cost model's measured times) and calibrate them: ops timed in
   isolation miss what runs between them, so the table is scaled until one device predicts the
   measured eager step;
2. measure the link between two local ranks as the runtime meets it (:func:`runtime.link.measure_link`:
   bandwidth, and the cost of one message), place the model with ``solver="auto"`` on the ``local``
   cluster of two CPU worker devices joined by that link, and print the plan;
3. execute the plan with the local executor and check loss and every parameter gradient against eager
   PyTorch;
4. run the same plan as it would run on two devices: one process per device (gloo, one thread each,
   started like torchrun), and print the measured step time next to the simulator's prediction and
   next to eager PyTorch on one thread and on every core (the strongest plain baseline on a CPU).

:func:`run_demo` prints the four steps and returns a :class:`DemoResult` (losses, the largest gradient
difference, predicted, measured and eager step times, the plan); its exit code is 1 when the placed run
does not reproduce eager PyTorch (float32 tolerance) or a rank fails, else 0.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from rich.console import Console

from graphc.app.report import graph_totals_table
from graphc.frontend import zoo
from graphc.frontend.profile import ProfileSettings, profile_program
from graphc.frontend.tracing import TracedProgram, trace
from graphc.frontend.zoo import zoo_loss
from placement import Cluster, CostModel, Plan
from placement.calibration import calibration_factor
from placement.solvers import solve
from runtime import DistributedExecutor, LocalExecutor, init_from_env, partition
from runtime.launch import spawn
from runtime.link import LinkSpeed, local_cluster, measure_link
from runtime.measure import measure

if TYPE_CHECKING:
    from graphc.ir.profiled import ProfiledTimes

MODEL = "inception_v3"
CONFIG: dict[str, Any] = {"batch_size": 8, "size": "small", "width": 0.25, "dropout": 0.0}
TOLERANCE = 1e-3  # float32: the placed run adds gradients in another order than eager
STEPS = 5


@dataclass
class DemoResult:
    """What :func:`run_demo` found (times in ms).

    Attributes:
        plan: the plan ``solver="auto"`` made for the ``local`` cluster.
        placed_loss, eager_loss: the loss of the placed step and of eager PyTorch's.
        largest_difference: the largest absolute difference of the loss and of any parameter gradient.
        tolerance: the largest difference allowed (float32 adds in another order).
        profile_factor: the calibration of the profiled op times (measured eager step / simulated).
        link: the link measured between two ranks.
        predicted_ms: the plan's predicted step.
        measured_ms: the median measured step over ``steps`` steps, one process per device; None when
            the placed run did not match eager or a rank failed.
        steps: how many steps the ranks measured.
        eager_ms: eager PyTorch's step on one thread.
        eager_all_cores_ms: eager PyTorch's step on every core (``cores``); None when not measured.
        failure: why the demo failed (a rank's error), or empty.
    """

    plan: Plan
    placed_loss: float
    eager_loss: float
    largest_difference: float
    tolerance: float
    profile_factor: float
    link: LinkSpeed
    predicted_ms: float
    measured_ms: float | None
    steps: int
    eager_ms: float
    eager_all_cores_ms: float | None
    cores: int
    failure: str = ""

    @property
    def matches_eager(self) -> bool:
        """The placed step reproduced eager PyTorch's loss and gradients within the tolerance."""
        return self.largest_difference <= self.tolerance

    @property
    def exit_code(self) -> int:
        """0 when the placed run matched eager and every rank finished, else 1."""
        return 0 if self.matches_eager and self.measured_ms is not None and not self.failure else 1


def demo_model() -> zoo.ZooModel:
    """The network of the demo; seeded, so every process builds the same inputs and targets."""
    return zoo.build(MODEL, **CONFIG)


def eager_step_ms(model: torch.nn.Module, zm: zoo.ZooModel, steps: int = STEPS, threads: int = 1) -> float:
    """The median wall time of an eager forward and backward of ``model`` on ``zm``'s batch, ms, with
    ``threads`` intra-op threads (the caller's setting is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for _ in range(steps + 2):
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            zm.loss(model(*zm.example_inputs)).backward()
            times.append(1e3 * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times[2:])


class Calibration(NamedTuple):
    """Profiled op times on this CPU, scaled so that one ``local`` worker predicts the measured step."""

    profiled: ProfiledTimes
    eager_ms: float
    factor: float


def calibrate_on_this_cpu(program: TracedProgram, zm: zoo.ZooModel, model: torch.nn.Module) -> Calibration:
    """Profile ``program``'s ops on this CPU (one thread, as a ``local`` worker runs them) and scale the
    times so that the whole graph on one worker simulates to the measured eager step of ``model`` (an
    untouched copy of the traced model) on ``zm``'s batch: ops timed in isolation miss what runs between
    them (:func:`placement.calibration.calibration_factor`)."""
    profiled = profile_program(program, zm.example_inputs, ProfileSettings(repeats=3))
    eager_ms = eager_step_ms(model, zm)
    factor = calibration_factor(profiled, program.graph, Cluster.preset("local"), eager_ms)
    return Calibration(profiled.scaled(factor), eager_ms, factor)


def rank_step_ms(program: Any, steps: int) -> float:
    """On one rank (started by :func:`runtime.launch.spawn`): the median measured training step, in ms."""
    init_from_env()
    zm = demo_model()
    executor = DistributedExecutor(program, loss_fn=zoo_loss(zm), timeout_s=120)
    try:
        return measure(executor, zm.example_inputs, zm.targets, steps=steps, warmup=2).step_ms
    finally:
        executor.close()


def run_demo(console: Console) -> DemoResult:
    """The four steps of the module docstring, printed to ``console``; returns what they found."""
    torch.set_num_threads(1)
    console.rule("1. trace Inception-v3 (small, batch 8) and profile its ops on this CPU")
    zm = demo_model()
    reference = copy.deepcopy(zm.model)
    with console.status("tracing and profiling ..."):
        program = trace(zm.model, zm.example_inputs, granularity="module", name=MODEL)
        profiled, eager_ms, factor = calibrate_on_this_cpu(program, zm, copy.deepcopy(reference))
    console.print(graph_totals_table(program.graph))
    console.print(f"eager step {eager_ms:.1f} ms on one thread: profiled times x {factor:.3f}, so that one device predicts it")

    console.rule("2. place it on the local cluster (2 CPU worker devices) with solver=auto")
    with console.status("measuring the link between two ranks ..."):
        link = measure_link()
    cluster = local_cluster(2, link)
    console.print(f"link between two ranks: {1e6 * link.latency_s:.0f} us per message, {link.bandwidth / 1e9:.2f} GB/s")
    with console.status("solving ..."):
        plan = solve(program.graph, cluster, time_limit_s=10.0, cost_model=CostModel(cluster, profiled=profiled))
    console.print(plan.summary())

    console.rule("3. execute the plan on local devices and check it against eager PyTorch")
    partitioned = partition(program, plan)
    executor = LocalExecutor(partitioned, loss_fn=zoo_loss(zm))
    result = executor.step(zm.example_inputs, zm.targets)
    eager_loss = zm.loss(reference(*zm.example_inputs))
    eager_loss.backward()
    placed = dict(executor.named_parameters())
    worst = max(float((placed[n].grad - p.grad).abs().max()) for n, p in reference.named_parameters())
    worst = max(worst, abs(result.loss - eager_loss.item()))
    console.print(f"loss placed {result.loss:.6f}, eager {eager_loss.item():.6f}; largest gradient difference {worst:.2e}")
    cores = os.cpu_count() or 1
    found = DemoResult(
        plan=plan,
        placed_loss=float(result.loss),
        eager_loss=eager_loss.item(),
        largest_difference=worst,
        tolerance=TOLERANCE,
        profile_factor=factor,
        link=link,
        predicted_ms=plan.predicted_step_ms,
        measured_ms=None,
        steps=STEPS,
        eager_ms=eager_ms,
        eager_all_cores_ms=None,
        cores=cores,
    )
    if not found.matches_eager:
        console.print("[red]MISMATCH: the placed run does not reproduce eager PyTorch[/red]")
        return found
    console.print("[green]placed execution matches eager PyTorch[/green]")

    ranks = len(plan.devices_used())
    console.rule(f"4. predicted vs measured: {ranks} process(es), one per device (gloo, 1 thread each)")
    with console.status(f"running {STEPS} steps on {ranks} rank(s) ..."):
        outcomes = spawn(rank_step_ms, ranks, (partitioned, STEPS), threads=1, timeout_s=300)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        console.print(f"[red]rank {failed[0].rank} failed: {failed[0].error}[/red]")
        found.failure = f"rank {failed[0].rank} failed: {failed[0].error}"
        return found
    measured = found.measured_ms = outcomes[0].result
    error = (plan.predicted_step_ms - measured) / measured
    eager_all_ms = found.eager_all_cores_ms = eager_step_ms(copy.deepcopy(reference), zm, threads=cores)
    console.print(
        f"predicted step {plan.predicted_step_ms:.1f} ms, measured {measured:.1f} ms "
        f"(median of {STEPS} steps; prediction {error:+.0%}); eager PyTorch on one thread {eager_ms:.1f} ms, "
        f"on all {cores} cores {eager_all_ms:.1f} ms"
    )
    console.print(
        "CPU ranks stand in for devices here: they show that the plan runs exactly as eager and as predicted; "
        "on one CPU, eager PyTorch with every core is the baseline a placement must beat on real devices."
    )
    return found
