"""runtime.LocalExecutor: placed execution on logical CPU devices gives eager PyTorch's numbers."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_cases import RTOL, adam, build, eager, traced

import graphc
from graphc import zoo
from graphc.zoo import zoo_loss
from runtime import LocalExecutor, contiguous_plan, partition, plan_from_assignment
from runtime.testing import eager_run, relative_difference

DEVICES = ["cpu0", "cpu1", "cpu2"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "inception_v3" else n for n in zoo.NAMES])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_placements_match_eager(name, data):
    zm, program = traced(name)
    names = program.graph.node_names()
    devices = data.draw(st.lists(st.sampled_from(DEVICES), min_size=len(names), max_size=len(names)))
    executor = LocalExecutor(partition(program, plan_from_assignment(program.graph, dict(zip(names, devices)))), loss_fn=zoo_loss(zm))
    result = executor.step(zm.example_inputs, zm.targets)
    reference = eager(name)
    assert result.loss == pytest.approx(reference.losses[0], rel=1e-5)
    assert relative_difference({"out": result.outputs}, {"out": reference.outputs.detach()})[0] < RTOL
    grads = {n: p.grad for n, p in executor.named_parameters()}
    assert relative_difference(grads, reference.grads) < (RTOL, "")


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


@pytest.mark.parametrize(("name", "optimizer"), [("gpt2", adam), ("resnet50", sgd)])
def test_parameters_match_eager_after_optimizer_steps(name, optimizer):
    """GPT-2 has a tied embedding, ResNet batch norm state; three steps on a random placement.

    On this placement data flows back and forth between devices within the step, so a device
    back-propagates in parts (runtime.play) and sums some gradients in another order than eager.
    ResNet's stem.bn.bias has a gradient that is zero but for float32 rounding, which Adam would scale
    up to full steps; SGD with momentum keeps it at rounding level."""
    zm = build(name)
    program = graphc.trace(zm.model, zm.example_inputs, name=name, granularity="op")
    names = program.graph.node_names()
    rng = random.Random(7)
    plan = plan_from_assignment(program.graph, {n: rng.choice(DEVICES) for n in names})
    executor = LocalExecutor(partition(program, plan), loss_fn=zoo_loss(zm), optimizer=optimizer)
    losses = [executor.step(zm.example_inputs, zm.targets).loss for _ in range(3)]
    ref = build(name)
    reference = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref), optimizer, steps=3)
    assert losses == pytest.approx(reference.losses, rel=1e-5)
    params = {n: p for n, p in executor.named_parameters()}
    assert relative_difference(params, reference.params) < (RTOL, "")
    buffers = {n: b for d in executor.program.devices for n, b in executor.program.programs[d].buffers.items()}
    assert relative_difference(buffers, dict(ref.model.named_buffers())) < (RTOL, "")


@pytest.mark.parametrize("name", ["gpt2", "alexnet", "vgg16"])
def test_microbatches_give_the_full_batch_gradients(name):
    """m = 4 microbatches through 3 stages; models without batch norm (whose statistics would be per
    microbatch)."""
    batch, m = 8, 4
    zm = build(name, batch)
    full = graphc.trace(zm.model, zm.example_inputs, name=name, granularity="op")
    micro = graphc.trace(zm.model, tuple(x[: batch // m] for x in zm.example_inputs), name=name, granularity="op")
    plan = contiguous_plan(full.graph, DEVICES, microbatches=m)
    executor = LocalExecutor(partition(micro.graph_module, plan, full.graph), loss_fn=zoo_loss(zm))
    result = executor.step(zm.example_inputs, zm.targets)
    ref = build(name, batch)
    reference = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref))
    assert result.loss == pytest.approx(reference.losses[0], rel=1e-5)
    assert result.outputs.shape == reference.outputs.shape
    assert relative_difference({n: p.grad for n, p in executor.named_parameters()}, reference.grads) < (RTOL, "")


@pytest.mark.parametrize("name", ["gpt2", "gnmt"])
def test_dropout_in_train_mode_draws_eager_masks_on_logical_cpu_devices(name):
    """One process, one CPU generator, the traced program's order: a random placement draws the masks
    eager draws from the same seed (runtime's docstring says when that holds)."""
    zm = zoo.build(name, batch_size=2, size="small", dropout=0.3)
    program = graphc.trace(zm.model, zm.example_inputs, name=name, granularity="op")
    assert any("dropout" in str(n.target) for n in program.graph_module.graph.nodes)
    names = program.graph.node_names()
    rng = random.Random(3)
    plan = plan_from_assignment(program.graph, {n: rng.choice(DEVICES) for n in names})
    executor = LocalExecutor(partition(program, plan), loss_fn=zoo_loss(zm))
    torch.manual_seed(11)
    result = executor.step(zm.example_inputs, zm.targets)
    ref = zoo.build(name, batch_size=2, size="small", dropout=0.3)
    torch.manual_seed(11)
    reference = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref))
    assert result.loss == pytest.approx(reference.losses[0], rel=1e-6)
    assert relative_difference({n: p.grad for n, p in executor.named_parameters()}, reference.grads) < (RTOL, "")
    torch.manual_seed(12)
    assert executor.step(zm.example_inputs, zm.targets).loss != pytest.approx(reference.losses[0], rel=1e-6)  # masks are drawn


def test_module_granularity_plans_run_too():
    """GPT-2's attention and MLP blocks are leaf modules: one cost node stands for many fx nodes."""
    zm = build("gpt2")
    program = graphc.trace(zm.model, zm.example_inputs, granularity="module", name="gpt2")
    names = program.graph.node_names()
    assert any(len(program.graph.node(n).fx_nodes) > 5 for n in names)
    plan = plan_from_assignment(program.graph, {n: DEVICES[i % 3] for i, n in enumerate(names)})
    executor = LocalExecutor(partition(program, plan), loss_fn=zoo_loss(zm))
    result = executor.step(zm.example_inputs, zm.targets)
    assert result.loss == pytest.approx(eager("gpt2").losses[0], rel=1e-5)
    assert relative_difference({n: p.grad for n, p in executor.named_parameters()}, eager("gpt2").grads) < (RTOL, "")


def test_forward_only_gives_the_outputs():
    zm, program = traced("gnmt")
    names = program.graph.node_names()
    plan = plan_from_assignment(program.graph, {n: DEVICES[i % 3] for i, n in enumerate(names)}, mode="inference")
    out = LocalExecutor(partition(program, plan)).forward(zm.example_inputs)
    torch.testing.assert_close(out, program(*zm.example_inputs))
    assert not out.requires_grad


def test_peak_memory_is_measured_per_device():
    zm, program = traced("vgg16")
    parts = partition(program, contiguous_plan(program.graph, ["cpu0", "cpu1"]))
    result = LocalExecutor(parts, loss_fn=zoo_loss(zm)).step(zm.example_inputs, zm.targets, measure_memory=True)
    assert set(result.peak_memory_bytes) == {"cpu0", "cpu1"}
    for device, part in parts.programs.items():
        params = sum(p.numel() * p.element_size() for p in part.parameters.values())
        # parameters, their gradients, and some activations
        assert result.peak_memory_bytes[device] > 2 * params
