"""Measured step time of placed training next to the simulator's prediction and eager PyTorch.

For a branchy network (Inception-v3) and a chain (GPT-2), at sizes whose step takes a few hundred
milliseconds on one CPU thread:

1. eager PyTorch, one process, 1 and then 2 threads (forward, loss, backward, SGD update);
2. the cost model of the ``local`` cluster of two CPU workers, calibrated on this machine: the link
   between two ranks as the runtime meets it (:func:`runtime.link.measure_link`), and every cost node
   profiled in isolation on one thread (:mod:`graphc.frontend.profile`), at the full batch and, for a pipelined
   plan, on one microbatch;
3. plans: everything on one device; for Inception the best of the HEFT, m-ETF and m-SCT list
   schedulers with that cost model on two devices (branches run side by side); for GPT-2 two
   contiguous halves (a latency plan, necessarily sequential) and the same halves as a GPipe pipeline
   of 4 microbatches;
4. every plan runs on CPU ranks of one thread each (:class:`runtime.DistributedExecutor`, gloo), and is
   simulated (:func:`placement.simulate`) with the same per-device order; the profiled times are first
   scaled by one factor per model, so that the simulated single-device step equals the measured eager
   step (ops timed in isolation miss what runs between them: the loss, the update, the framework); the
   per-microbatch times of a pipelined plan by their own factor, so that one device running the
   microbatches one after another predicts eager PyTorch accumulating the same microbatches.

Prints one table and writes ``results/runtime_step.json``. Targets: prediction within 15% of the
measurement; the single-device plan within 5% of eager on 1 thread; Inception on 2 ranks faster than
eager on 1 thread. On a shared machine other work slows some runs down: every run is repeated in
``--rounds`` interleaved rounds and every time is the median over all their steps.

Two ranks on a two-core machine leave no core spare, so the plans across ranks are the runs most hurt
by other work: a rank that wakes to compute lands on a core another process holds and shares it for a
while. ``nice`` does not prevent it where the kernel groups processes by session
(``/proc/sys/kernel/sched_autogroup_enabled`` = 1): the groups get equal shares whatever their niceness.
Measured on this machine, one other busy process took the GPT-2 halves from 375 to 530 ms and left
the single-device run as it was. So the benchmark records how many cores other processes used, on
average, while it measured (``/proc/stat`` minus its own processes), and warns when that is above
:data:`QUIET_CORES`.

    python benchmarks/runtime_step.py [--steps 8] [--rounds 3] [--models inception_v3,gpt2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from graphc import TracedProgram, trace, zoo
from graphc.app.measure_plans import busy_cpu_seconds, own_cpu_seconds
from graphc.frontend.profile import ProfileSettings, profile_program
from graphc.ir.profiled import ProfiledTimes
from placement import Cluster, CostModel, simulate
from placement.calibration import calibration_factor
from placement.plan import Plan
from placement.solvers import solve
from runtime import (
    DistributedExecutor,
    PartitionedProgram,
    contiguous_plan,
    init_from_env,
    partition,
    single_device_plan,
)
from runtime.launch import spawn
from runtime.link import local_cluster, measure_link
from runtime.rebuild import partition_model
from runtime.step import split_batch

CONFIGS: dict[str, dict[str, Any]] = {
    "inception_v3": dict(batch_size=8, size="small", width=0.5, image_size=107, dropout=0.0),
    "gpt2": dict(
        batch_size=8, size="small", n_layer=4, n_embd=256, n_head=8, seq_len=128, n_positions=128,
        vocab_size=4096, dropout=0.0,
    ),
}  # fmt: skip
MICROBATCHES = 4
LR = 0.01
# Cores other processes may use on average while the runs are measured before the result is flagged.
QUIET_CORES = 0.05


def sgd(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR)


# -- what the ranks run ---------------------------------------------------------------------------------


def eager_steps(name: str, steps: int, warmup: int, microbatches: int = 1) -> list[float]:
    """Wall time of eager training steps of the zoo model, in this process; with ``microbatches`` > 1 the
    batch is split and the gradients accumulated before the update (what a pipeline computes)."""
    zm = zoo.build(name, **CONFIGS[name])
    loss_fn = zoo.zoo_loss(zm)
    opt = sgd(list(zm.model.parameters()))
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for inputs, targets in zip(split_batch(zm.example_inputs, microbatches), split_batch(zm.targets, microbatches)):
            (loss_fn(zm.model(*inputs), targets) / microbatches).backward()
        opt.step()
        times.append(1e3 * (time.perf_counter() - start))
    return times[warmup:]


def run_plan(plan: dict[str, Any], name: str, steps: int, warmup: int) -> dict[str, Any]:
    """Train with the plan (``Plan.to_dict()``) on this rank, which partitions the model by it: per-step
    wall times, then one step measuring memory."""
    init_from_env()
    zm = zoo.build(name, **CONFIGS[name])
    program = partition_model(zm.model, zm.example_inputs, Plan.from_dict(plan), granularity="op", name=name)
    executor = DistributedExecutor(program, loss_fn=zoo.zoo_loss(zm), optimizer=sgd, timeout_s=300)
    times = [executor.step(zm.example_inputs, zm.targets).step_ms for _ in range(warmup + steps)]
    peak = executor.step(zm.example_inputs, zm.targets, measure_memory=True).peak_memory_bytes
    executor.close()
    return {"times": times[warmup:], "peak": peak}


def profile(zm: zoo.ZooModel, program: TracedProgram, repeats: int, micro: TracedProgram | None) -> tuple[ProfiledTimes, ProfiledTimes | None]:
    """Every node's times measured in isolation on one thread, at the full batch and, when ``micro`` is
    the model traced on one microbatch, on one microbatch too. The simulator divides a pipelined
    node's time by the microbatches, so that table records ``MICROBATCHES`` x the measured microbatch
    time, under the key of the full-batch node (small ops are slower than a quarter of a large one)."""
    settings = ProfileSettings(repeats=repeats)
    full = profile_program(program, zm.example_inputs, settings)
    if micro is None:
        return full, None
    measured = profile_program(micro, split_batch(zm.example_inputs, MICROBATCHES)[0], settings)
    per_microbatch = ProfiledTimes()
    for node in program.graph.nodes():
        times = measured.get_key(micro.graph.node(node.name).profile_key(), settings.device_kind)
        if times is not None:
            per_microbatch.add_key(node.profile_key(), settings.device_kind, MICROBATCHES * times[0], MICROBATCHES * times[1])
    return full, per_microbatch


def on_ranks(fn: Any, world_size: int, args: tuple, threads: int = 1) -> list[Any]:
    outcomes = spawn(fn, world_size, args, threads=threads, timeout_s=1200)
    for o in outcomes:
        if not o.ok:
            raise RuntimeError(f"rank {o.rank} of {fn.__name__} failed: {o.error}")
    return [o.result for o in outcomes]


# -- the parent ---------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One model of the benchmark: its program, its profiled times, and the plans to run."""

    program: TracedProgram
    profiled: ProfiledTimes
    profiled_per_microbatch: ProfiledTimes | None
    plans: list[tuple[str, Plan, PartitionedProgram]]


def bench(name: str, cluster: Cluster, repeats: int) -> Bench:
    """Trace and profile ``name`` and make its plans (see the module docstring)."""
    zm = zoo.build(name, **CONFIGS[name])
    program = trace(zm.model, zm.example_inputs, granularity="op", name=name)
    graph = program.graph
    pipelined = name == "gpt2"
    micro = trace(zm.model, split_batch(zm.example_inputs, MICROBATCHES)[0], granularity="op", name=name) if pipelined else None
    profiled, per_microbatch = profile(zm, program, repeats, micro)
    plans = [("1 device", single_device_plan(graph), partition(program, single_device_plan(graph)))]
    if pipelined:
        halves = contiguous_plan(graph, ["cpu0", "cpu1"])
        pipe = contiguous_plan(graph, ["cpu0", "cpu1"], microbatches=MICROBATCHES)
        plans.append(("2 devices, halves", halves, partition(program, halves)))
        plans.append((f"2 devices, GPipe x{MICROBATCHES}", pipe, partition(micro.graph_module, pipe, graph)))
    else:
        cost_model = CostModel(cluster, profiled=profiled)
        found = [solve(graph, cluster, solver=s, cost_model=cost_model) for s in ("heft", "m-etf", "m-sct")]
        best = min(found, key=lambda p: p.predicted_step_ms)
        plans.append((f"2 devices, {best.solver}", best, partition(program, best)))
    return Bench(program, profiled, per_microbatch, plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="every run is repeated, interleaved, this many times")
    parser.add_argument("--repeats", type=int, default=5, help="profiling runs per node")
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--out", default="results/runtime_step.json")
    args = parser.parse_args()
    console = Console(width=150)
    torch.set_num_threads(1)
    with console.status("measuring the link between two ranks ..."):
        link = measure_link()
    cluster = local_cluster(2, link)
    console.print(f"link between two ranks: {1e6 * link.latency_s:.0f} us per message, {link.bandwidth / 1e9:.2f} GB/s")
    runs: dict[str, Bench] = {}
    for name in args.models.split(","):
        with console.status(f"{name}: profiling and planning ..."):
            runs[name] = bench(name, cluster, args.repeats)
    # Every run of every round in turn, so that the load of a shared machine falls on all of them alike.
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    peaks: dict[tuple[str, str], dict[str, int]] = {}
    busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for round_ in range(args.rounds):
        for name, run in runs.items():
            with console.status(f"round {round_ + 1}/{args.rounds}: {name} ..."):
                for threads in (1, 2):
                    samples[name, f"eager {threads}"] += on_ranks(eager_steps, 1, (name, args.steps, args.warmup), threads)[0]
                if run.profiled_per_microbatch is not None:
                    samples[name, "eager microbatched"] += on_ranks(eager_steps, 1, (name, args.steps, args.warmup, MICROBATCHES))[0]
                for label, _, parts in run.plans:
                    ranks = on_ranks(run_plan, len(parts.ranks), (parts.plan.to_dict(), name, args.steps, args.warmup))
                    samples[name, label] += [max(step) for step in zip(*(r["times"] for r in ranks))]
                    peaks[name, label] = {d: v for r in ranks for d, v in r["peak"].items()}
    busy_after = busy_cpu_seconds()
    other_cores = None
    if busy_before is not None and busy_after is not None:
        other_busy = (busy_after - busy_before) - (own_cpu_seconds() - own_before)
        other_cores = max(0.0, other_busy) / (time.perf_counter() - wall_before)
    table = Table(title="one training step (SGD) on CPU ranks of one thread each: measured, predicted, eager")
    for column in ("model", "plan", "ranks", "measured ms", "predicted ms", "error", "eager 1t ms", "eager 2t ms", "vs eager 1t", "peak MiB meas/pred"):
        table.add_column(column, justify="left" if column in ("model", "plan") else "right")
    rows = []
    calibration: dict[str, float] = {}
    for name, run in runs.items():
        graph = run.program.graph
        eager = {t: statistics.median(samples[name, f"eager {t}"]) for t in (1, 2)}
        factor = calibration[name] = calibration_factor(run.profiled, graph, cluster, eager[1])
        console.print(f"{name}: profiled times x {factor:.3f}, so that one device predicts the eager step")
        factors = {1: (run.profiled, factor)}
        if run.profiled_per_microbatch is not None:
            eager_mb = statistics.median(samples[name, "eager microbatched"])
            micro_factor = calibration[f"{name} x{MICROBATCHES}"] = calibration_factor(
                run.profiled_per_microbatch, graph, cluster, eager_mb, microbatches=MICROBATCHES
            )
            factors[MICROBATCHES] = (run.profiled_per_microbatch, micro_factor)
            console.print(
                f"{name}: per-microbatch times x {micro_factor:.3f}, so that one device with {MICROBATCHES} microbatches "
                f"predicts eager with {MICROBATCHES} accumulated microbatches ({eager_mb:.1f} ms)"
            )
        for label, plan, parts in run.plans:
            table_of_times, plan_factor = factors[plan.microbatches]
            sim = simulate(
                graph, cluster, plan.assignment, CostModel(cluster, profiled=table_of_times.scaled(plan_factor)),
                microbatches=plan.microbatches, order=parts.node_order, optimizer_state_factor=0.0,
            )  # fmt: skip
            measured = statistics.median(samples[name, label])
            peak = peaks[name, label]
            row = dict(
                model=name, plan=label, ranks=len(parts.ranks), measured_ms=measured, predicted_ms=sim.step_ms,
                error=sim.step_ms / measured - 1, eager_1t_ms=eager[1], eager_2t_ms=eager[2],
                speedup_vs_eager_1t=eager[1] / measured, transfers=len(parts.transfers), samples_ms=samples[name, label],
                peak_memory_bytes=peak, predicted_peak_memory_bytes={d: sim.peak_memory_bytes[d] for d in peak},
            )  # fmt: skip
            rows.append(row)
            memory = ", ".join(f"{peak[d] / 2**20:.0f}/{sim.peak_memory_bytes[d] / 2**20:.0f}" for d in parts.devices)
            table.add_row(
                name, label, str(row["ranks"]), f"{measured:.1f}", f"{sim.step_ms:.1f}", f"{row['error']:+.0%}",
                f"{eager[1]:.1f}", f"{eager[2]:.1f}", f"{row['speedup_vs_eager_1t']:.2f}x", memory,
            )  # fmt: skip
    console.print(table)
    if other_cores is None:
        console.print("[yellow]could not read /proc/stat: the load of other processes during the runs is unknown[/yellow]")
    elif other_cores > QUIET_CORES:
        console.print(
            f"[yellow]other processes used {other_cores:.2f} cores on average while the runs were measured: the times "
            "across ranks are slowed down (module docstring); measure again on a quiet machine[/yellow]"
        )
    else:
        console.print(f"other processes used {other_cores:.3f} cores on average while the runs were measured (quiet)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(
        link=asdict(link), calibration=calibration, steps=args.steps, rounds=args.rounds, other_cores=other_cores, rows=rows
    )
    out.write_text(json.dumps(doc, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
