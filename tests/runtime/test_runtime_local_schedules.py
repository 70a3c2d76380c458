"""LocalExecutor.step runs a placement schedule: each device's work in the schedule's order, and eager
PyTorch's numbers under every schedule."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F
from runtime_cases import deep_mlp_pipeline, expected_order
from torch import nn

import graphc
from graphc import zoo
from graphc.zoo import zoo_loss
from placement.schedules import Schedule, make_schedule
from runtime import (
    LocalExecutor,
    MismatchError,
    PartitionedProgram,
    RuntimeFault,
    ScheduleError,
    contiguous_plan,
    partition,
    plan_from_assignment,
)
from runtime.testing import eager_run, relative_difference

RTOL = 1e-4
BATCH, M = 8, 4


def check_against_eager(executor: LocalExecutor, result, reference) -> None:
    assert result.loss == pytest.approx(reference.losses[0], rel=1e-5)
    assert relative_difference({"out": result.outputs}, {"out": reference.outputs.detach()})[0] < RTOL
    assert relative_difference({n: p.grad for n, p in executor.named_parameters()}, reference.grads) < (RTOL, "")


@functools.cache
def gpt2_pipeline(stages: tuple) -> tuple[zoo.ZooModel, PartitionedProgram]:
    zm = zoo.build("gpt2", batch_size=BATCH, size="small", dropout=0.0)
    full = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    micro = graphc.trace(zm.model, tuple(x[: BATCH // M] for x in zm.example_inputs), name="gpt2", granularity="op")
    devices = [list(s) if isinstance(s, tuple) else s for s in stages]
    return zm, partition(micro.graph_module, contiguous_plan(full.graph, devices, microbatches=M), full.graph)


@functools.cache
def eager_gpt2():
    ref = zoo.build("gpt2", batch_size=BATCH, size="small", dropout=0.0)
    return eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref))


@pytest.mark.parametrize(
    ("stages", "schedule"),
    [
        (("cpu0", "cpu1", "cpu2"), "node-order"),
        (("cpu0", "cpu1", "cpu2"), "gpipe"),
        (("cpu0", "cpu1", "cpu2"), "1f1b"),
        ((("cpu0", "cpu1"), "cpu2"), "gpipe"),
        (("cpu0", ("cpu1", "cpu2")), "1f1b"),
    ],
)
def test_every_schedule_runs_in_its_order_and_gives_eagers_numbers(stages, schedule):
    """GPT-2 (a tied embedding, whose gradient comes back from the last stage) in three stages, four
    microbatches, a replicated first or last stage."""
    zm, parts = gpt2_pipeline(stages)
    executor = LocalExecutor(parts, loss_fn=zoo_loss(zm), schedule=schedule)
    result = executor.step(zm.example_inputs, zm.targets)
    assert result.order == expected_order(executor.schedule)
    check_against_eager(executor, result, eager_gpt2())
    for replicas in parts.replicas.values():  # the all-reduce left every replica the batch's gradients
        for name, p in parts.programs[replicas[0]].parameters.items():
            assert all(torch.equal(p.grad, parts.programs[r].parameters[name].grad) for r in replicas[1:])


def test_a_schedule_object_runs_as_given():
    zm, parts = gpt2_pipeline(("cpu0", "cpu1", "cpu2"))
    schedule = make_schedule(parts.plan, "1f1b")
    executor = LocalExecutor(parts, loss_fn=zoo_loss(zm), schedule=schedule)
    assert executor.schedule is schedule
    assert executor.step(zm.example_inputs, zm.targets).order["cpu0"] == ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3", "OPT"]


def test_data_flowing_back_and_forth_within_a_microbatch_runs_under_node_order():
    """Two devices taking turns every two nodes: a device's backward waits for gradients that depend on
    its own later backward, so it back-propagates in parts."""
    zm = zoo.build("gpt2", batch_size=BATCH, size="small", dropout=0.0)
    full = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    micro = graphc.trace(zm.model, tuple(x[: BATCH // 2] for x in zm.example_inputs), name="gpt2", granularity="op")
    order = full.graph.topological_order()
    plan = plan_from_assignment(full.graph, {n: f"cpu{(i // 2) % 2}" for i, n in enumerate(order)}, microbatches=2)
    parts = partition(micro.graph_module, plan, full.graph)
    executor = LocalExecutor(parts, loss_fn=zoo_loss(zm))
    result = executor.step(zm.example_inputs, zm.targets)
    assert executor.schedule.name == "node-order"
    assert result.order == {d: ["F0", "F1", "B0", "B1", "OPT"] for d in ("cpu0", "cpu1")}
    check_against_eager(executor, result, eager_gpt2())


def mlp(width: int, layers: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.Tanh())])


def test_1f1b_peaks_below_gpipe_on_a_four_stage_pipeline_of_eight_microbatches():
    """GPipe keeps every microbatch's activations until the backwards start; 1F1B at most four on the
    first stage."""
    peaks, losses = {}, {}
    for schedule in ("gpipe", "1f1b"):
        parts, x, y = deep_mlp_pipeline()
        result = LocalExecutor(parts, loss_fn=F.mse_loss, schedule=schedule).step(x, y, measure_memory=True)
        peaks[schedule], losses[schedule] = result.peak_memory_bytes, result.loss
    assert losses["1f1b"] == pytest.approx(losses["gpipe"], rel=1e-6)
    assert peaks["1f1b"]["cpu0"] < 0.75 * peaks["gpipe"]["cpu0"]
    assert max(peaks["1f1b"].values()) < max(peaks["gpipe"].values())


def test_a_bad_schedule_is_refused_before_anything_runs():
    zm, parts = gpt2_pipeline(("cpu0", "cpu1", "cpu2"))
    _, replicated = gpt2_pipeline((("cpu0", "cpu1"), "cpu2"))
    with pytest.raises(ScheduleError, match=r"cpu0 all-reduces over \['cpu0', 'cpu1'\], but in the program it all-reduces nothing"):
        LocalExecutor(parts, loss_fn=zoo_loss(zm), schedule=make_schedule(replicated.plan))
    gpipe = make_schedule(parts.plan, "gpipe")
    missing = Schedule("mine", "throughput", M, {**gpipe.actions, "cpu2": [a for a in gpipe.actions["cpu2"] if a.code() != "B3"]})
    with pytest.raises(ScheduleError, match=r"cpu2 runs B for microbatches \[0, 1, 2\]; it must run each of 0..3 once"):
        LocalExecutor(parts, loss_fn=zoo_loss(zm), schedule=missing)
    with pytest.raises(ScheduleError, match="unknown schedule 'pipedream'"):
        LocalExecutor(parts, loss_fn=zoo_loss(zm), schedule="pipedream")
    inference = make_schedule(dataclasses.replace(parts.plan, mode="inference"), "gpipe")
    executor = LocalExecutor(parts, loss_fn=zoo_loss(zm), schedule=inference)
    with pytest.raises(MismatchError, match="the gpipe schedule runs forwards only"):
        executor.step(zm.example_inputs, zm.targets)


def test_a_sent_value_that_no_longer_requires_grad_is_named():
    """Freezing a stage's parameters after partitioning: its output, whose gradient the next stage
    sends back, no longer requires grad."""
    x, y = torch.randn(8, 8), torch.randn(8, 8)
    program = graphc.trace(mlp(8, 2), (x,), name="mlp", granularity="op")
    parts = partition(program, contiguous_plan(program.graph, ["cpu0", "cpu1"]))
    for p in parts.programs["cpu0"].parameters.values():
        p.requires_grad_(False)
    with pytest.raises(RuntimeFault, match=r"cpu0: '\w+' was expected to require grad \(its gradient comes back from cpu1\)"):
        LocalExecutor(parts, loss_fn=F.mse_loss).step(x, y)
