"""Run a placed model for real: trace it, place it, split it per device, train it, check it.

1. trace Inception-v3 (small), calibrate the ``local`` cluster for it (``graphc.calibrate``, cached on
   disk: each op timed on this CPU and scaled to the eager step, the link between two ranks measured),
   and place it on that many CPU workers with HEFT, which runs branches side by side where that pays
   for the transfers;
2. ``runtime.partition`` splits the traced program into one program per device, with a send on the
   producing device and a receive and wait on each consuming device; we print their beginnings;
3. ``runtime.LocalExecutor`` trains it in this process (one logical device per plan device) and we
   check loss and gradients against eager PyTorch;
4. ``runtime.DistributedExecutor`` trains it on one process per device over torch.distributed (gloo),
   started here with ``runtime.launch.spawn`` (``graphc run`` starts the same through torchrun); each
   rank gets the plan as JSON and partitions the model itself, and the output prints the measured
   step and memory next to the plan's prediction.

    python examples/run_placed_model.py [--model inception_v3] [--devices 2] [--steps 5]
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console

import graphc
import runtime
from graphc import zoo
from placement.plan import Plan
from placement.solvers import solve
from runtime.launch import spawn
from runtime.measure import Measurement, measure
from runtime.rebuild import partition_model
from runtime.testing import eager_run, relative_difference

BATCH = 8


def adam(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def train_on_this_rank(plan_doc: dict, name: str, steps: int) -> dict:
    """What every rank runs: it builds the model and partitions it by the plan (sent as JSON) itself,
    then trains its own device's part; the measurement as a dict."""
    runtime.init_from_env()
    zm = zoo.build(name, batch_size=BATCH, size="small", dropout=0.0)
    plan = Plan.from_dict(plan_doc)
    parts = partition_model(zm.model, zm.example_inputs, plan, granularity="op", name=name)
    executor = runtime.DistributedExecutor(parts, loss_fn=zoo.zoo_loss(zm), optimizer=adam)
    result = measure(executor, zm.example_inputs, zm.targets, steps=steps, plan=plan)
    executor.close()
    return result.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inception_v3", choices=zoo.NAMES)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(1)

    console.rule(f"1. trace {args.model} and place it on {args.devices} CPU workers")
    zm = zoo.build(args.model, batch_size=BATCH, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name=args.model, granularity="op")
    calibration = graphc.calibrate(zm.model, zm.example_inputs, loss=zm.loss, program=program, workers=args.devices, console=console)
    plan = solve(program.graph, calibration.cluster, solver="heft", cost_model=calibration.cost_model)
    console.print(f"{len(program.graph)} nodes; HEFT uses {len(plan.devices_used())} devices, predicts {plan.predicted_step_ms:.1f} ms per step")

    console.rule("2. one program per device, communication inserted")
    parts = runtime.partition(program, plan)
    print(parts.describe(max_lines=12))

    console.rule("3. train in this process and compare with eager PyTorch")
    local = runtime.LocalExecutor(parts, loss_fn=zoo.zoo_loss(zm))
    step = local.step(zm.example_inputs, zm.targets)
    ref = zoo.build(args.model, batch_size=BATCH, size="small", dropout=0.0)
    eager = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo.zoo_loss(ref))
    worst, where = relative_difference({n: p.grad for n, p in local.named_parameters()}, eager.grads)
    console.print(f"loss {step.loss:.6f} (eager {eager.losses[0]:.6f}); largest relative gradient difference {worst:.1e} ({where})")

    console.rule(f"4. train on {len(parts.devices)} processes over torch.distributed (gloo)")
    outcomes = spawn(train_on_this_rank, len(parts.devices), (plan.to_dict(), args.model, args.steps))
    for o in outcomes:
        if not o.ok:
            raise SystemExit(f"rank {o.rank} failed: {o.error}")
    console.print(Measurement(**outcomes[0].result).table("measured on the ranks vs the plan's prediction"))


if __name__ == "__main__":
    main()
