"""Zoo models at test size, traced and run eagerly once each: the cases the runtime tests (local and
distributed) compare placed execution against."""

from __future__ import annotations

import functools

import torch
from torch import nn

import graphc
from graphc import zoo
from graphc.zoo import zoo_loss
from placement.schedules import Backward, Collective, Forward, OptimizerStep, Schedule
from runtime import PartitionedProgram, contiguous_plan, partition
from runtime.testing import EagerRun, eager_run

RTOL = 1e-4  # float32: sums of gradients in another order, magnified by batch norm over tiny batches


def build(name: str, batch: int = 2) -> zoo.ZooModel:
    """The small zoo configuration, dropout off (ResNet has none), so runs are deterministic."""
    knobs = {} if name == "resnet50" else {"dropout": 0.0}
    return zoo.build(name, batch_size=batch, size="small", **knobs)


@functools.cache
def traced(name: str) -> tuple[zoo.ZooModel, graphc.TracedProgram]:
    zm = build(name)
    return zm, graphc.trace(zm.model, zm.example_inputs, name=name, granularity="op")


@functools.cache
def eager(name: str) -> EagerRun:
    ref = build(name)
    return eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref))


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def expected_order(schedule: Schedule) -> dict[str, list[str]]:
    """Each device's compute, collectives and optimizer step as the schedule lists them (``F0``, ``B0``,
    ``AR``, ``AR1``, ``RD0``, ``BC0``, ``OPT``), a device's consecutive node-level actions of one microbatch counted once: what
    :attr:`runtime.StepResult.order` must say the device ran."""
    order: dict[str, list[str]] = {}
    for device, actions in schedule.actions.items():
        codes: list[str] = []
        for a in actions:
            if isinstance(a, Forward | Backward):
                code = f"{'B' if isinstance(a, Backward) else 'F'}{a.microbatch}"
                if a.node is None or not codes or codes[-1] != code:
                    codes.append(code)
            elif isinstance(a, Collective):
                codes.append(a.code())
            elif isinstance(a, OptimizerStep):
                codes.append("OPT")
        order[device] = codes
    return order


def deep_mlp_pipeline(width: int = 128, batch: int = 2048, microbatches: int = 8) -> tuple[PartitionedProgram, torch.Tensor, torch.Tensor]:
    """Eight tanh layers in four stages of two (cpu0..cpu3), traced on one microbatch, with an input
    and a target batch: a pipeline whose activations (256 samples of width 128 per microbatch and layer)
    outweigh its parameters, to compare the memory schedules keep."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, width), torch.randn(batch, width)

    def mlp() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(width, width), nn.Tanh())])

    full = graphc.trace(mlp(), (x,), name="mlp", granularity="op")
    micro = graphc.trace(mlp(), (x[: batch // microbatches],), name="mlp", granularity="op")
    plan = contiguous_plan(full.graph, ["cpu0", "cpu1", "cpu2", "cpu3"], microbatches=microbatches)
    return partition(micro.graph_module, plan, full.graph), x, y
