"""runtime.measure: step time and peak memory per device, next to the plan's prediction."""

from __future__ import annotations

import random

import torch
from rich.console import Console

import graphc
from graphc import zoo
from graphc.zoo import zoo_loss
from placement import Cluster, simulate
from runtime import LocalExecutor, partition, plan_from_assignment, single_device_plan
from runtime.measure import MemoryTracker, measure

MIB = 2**20


def test_the_tracker_follows_tensors_until_they_are_freed():
    with MemoryTracker({"cpu0": 5 * MIB}, default="cpu0") as tracker:
        x = torch.empty(MIB, dtype=torch.uint8).fill_(1)
        y = torch.empty(2 * MIB, dtype=torch.uint8).fill_(1)
        view = y[: MIB // 2]  # shares y's storage: nothing new
        del x, y
        z = torch.empty(MIB, dtype=torch.uint8).fill_(1)
        del view, z
    assert tracker.peaks() == {"cpu0": 5 * MIB + 3 * MIB}


def test_tensors_are_counted_on_the_device_whose_program_made_them():
    with MemoryTracker({"a": 0, "b": 0}) as tracker:
        tracker.current = "a"
        x = torch.zeros(MIB, dtype=torch.uint8)
        tracker.current = None
        y = x + 1  # follows its input to "a"
        tracker.current = "b"
        z = torch.zeros(2 * MIB, dtype=torch.uint8)
        del x, y, z
    assert tracker.peaks() == {"a": 2 * MIB, "b": 2 * MIB}


def test_measurement_reports_every_device_next_to_the_prediction():
    zm = zoo.build("alexnet", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="alexnet", granularity="op")
    names = program.graph.node_names()
    rng = random.Random(0)
    plan = plan_from_assignment(program.graph, {n: rng.choice(["cpu0", "cpu1"]) for n in names})
    parts = partition(program, plan)
    cluster = Cluster.preset("local", workers=2)
    predicted = simulate(program.graph, cluster, plan.assignment, order=parts.node_order)  # the runtime's order
    plan.predicted_step_ms, plan.peak_memory_bytes = predicted.step_ms, dict(predicted.peak_memory_bytes)
    executor = LocalExecutor(parts, loss_fn=zoo_loss(zm), optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3))
    result = measure(executor, zm.example_inputs, zm.targets, steps=3, warmup=1, plan=plan)
    assert len(result.steps_ms) == 3 and result.step_ms > 0
    assert set(result.peak_memory_bytes) == {"cpu0", "cpu1"}
    assert result.predicted_step_ms == predicted.step_ms
    console = Console(record=True, width=120)
    console.print(result.table())
    text = console.export_text()
    for row in ("step (ms, median)", "peak memory cpu0 (MiB)", "peak memory cpu1 (MiB)"):
        assert row in text
    assert f"{predicted.step_ms:.1f}" in text


def test_adam_state_counts_as_static_memory():
    zm = zoo.build("vgg16", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="vgg16", granularity="op")
    parts = partition(program, single_device_plan(program.graph))
    params = sum(p.numel() * p.element_size() for p in parts.programs["cpu0"].parameters.values())
    executor = LocalExecutor(parts, loss_fn=zoo_loss(zm), optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3))
    first = executor.step(zm.example_inputs, zm.targets, measure_memory=True).peak_memory_bytes["cpu0"]
    second = executor.step(zm.example_inputs, zm.targets, measure_memory=True).peak_memory_bytes["cpu0"]
    assert first >= 2 * params  # parameters and gradients
    assert second >= first + 2 * params - params // 10  # and now Adam's two moments
