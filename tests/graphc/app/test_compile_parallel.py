"""``graphc.compile(objective="throughput", parallel=, sync=)``: data-parallel, hybrid and parameter-server
plans behind a differentiable call that trains like eager PyTorch.

The caller trains the compiled module the ordinary way (``loss.backward()``, an optimizer over the
model's parameters) for three steps of SGD with momentum and of Adam; every replica runs its
microbatches on the model's own parameters, so the losses, outputs, gradients and parameters must
equal eager's full batch. The hybrid case runs on CPU workers of 400 kB each: the MLP's four linear
layers (about 1 MB to train) fit on no device, two of them on one, so only replicas of a 2-stage
pipeline fit.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import graphc
from placement import Cluster, presets
from placement.sync import AllReduceSync, ParameterServerSync

BATCH = 12
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


def mlp(width: int = 16, layers: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    sizes = [8] + [width] * (layers - 1) + [4]
    blocks: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        blocks += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*blocks[:-1])


def small_workers(memory_bytes: float, workers: int = 4) -> Cluster:
    """The ``local`` cluster's CPU workers with ``memory_bytes`` each."""
    base = presets.local(workers=workers)
    devices = [dataclasses.replace(d, memory_bytes=memory_bytes) for d in base.devices]
    return Cluster("small-workers", devices, base.links, base.switches, base.hosts)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 8, generator=generator), torch.randint(0, 4, (BATCH,), generator=generator)


# layout -> (model, compile options)
LAYOUTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "data, ring": (mlp, {"cluster": presets.local(workers=2), "parallel": "data", "sync": "ring"}),
    "hybrid 2 x 2 stages": (
        lambda: mlp(width=128, layers=4),
        {"cluster": small_workers(4e5), "parallel": "hybrid"},
    ),
    "data, 1 parameter server": (
        mlp,
        {"cluster": presets.local(workers=3), "parallel": "data", "sync": "parameter-server", "servers": ["cpu2"]},
    ),
}
# the replicated stages each layout must plan
STAGES = {
    "data, ring": [["cpu0", "cpu1"]],
    "hybrid 2 x 2 stages": [["cpu0", "cpu2"], ["cpu1", "cpu3"]],
    "data, 1 parameter server": [["cpu0", "cpu1"]],
}


def train(step: Any, model: nn.Module, name: str) -> tuple[list[float], torch.Tensor, dict[str, torch.Tensor]]:
    """Three steps of ``name`` on ``model``'s parameters, each ``loss = cross_entropy(step(x), y)``: the
    losses, the last outputs and the last gradients."""
    x, y = batch()
    optimizer = OPTIMIZERS[name](list(model.parameters()))
    losses = []
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        outputs = step(x)
        loss = F.cross_entropy(outputs, y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses, outputs.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_replicated_plans_train_like_eager(layout, name):
    make, options = LAYOUTS[layout]
    model = make()
    reference = copy.deepcopy(model)
    compiled = graphc.compile(model, objective="throughput", time_limit_s=3, progress=False, **options)
    losses, outputs, grads = train(compiled, model, name)
    assert [st.devices for st in compiled.plan.stages] == STAGES[layout]
    assert compiled.searches == 1
    want_losses, want_outputs, want_grads = train(reference, reference, name)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs, want_outputs, rtol=1e-5, atol=1e-6)
    for (n, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"grad {n}: {m}")
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_the_plan_shows_its_replicas_and_parameter_server():
    make, options = LAYOUTS["data, 1 parameter server"]
    compiled = graphc.compile(make(), objective="throughput", time_limit_s=3, progress=False, **options)
    compiled(batch()[0])
    plan = compiled.plan
    assert plan.sync == ParameterServerSync(("cpu2",), bucket_bytes=plan.sync.bucket_bytes)
    assert plan.microbatches % 2 == 0
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(plan.summary())
    text = console.export_text()
    assert "replicas and synchronisation (parameter servers cpu2 (synchronous)" in text
    assert "cpu0, cpu1" in text


def test_sync_auto_plans_an_all_reduce_for_data_parallel_replicas():
    compiled = graphc.compile(mlp(), cluster=presets.local(workers=2), objective="throughput", parallel="data",
                              time_limit_s=3, progress=False)  # fmt: skip
    compiled(batch()[0])
    assert isinstance(compiled.plan.sync, AllReduceSync)
    assert compiled.plan.stages[0].devices == ["cpu0", "cpu1"]


def test_a_replicated_plan_is_searched_again_at_a_new_batch_size():
    make, options = LAYOUTS["data, ring"]
    model = make()
    compiled = graphc.compile(model, objective="throughput", time_limit_s=3, progress=False, **options)
    compiled(batch()[0])
    x = torch.randn(6, 8)
    out = compiled(x)
    assert compiled.searches == 2 and compiled.last.how == "searched"
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"objective": "throughput", "parallel": "model"}, r"parallel='model'.*auto, data, pipeline, hybrid"),
        ({"objective": "throughput", "sync": "gossip"}, r"sync='gossip'.*ring, hierarchical, parameter-server"),
        ({"parallel": "data"}, r"parallel='data'.*objective='throughput'"),
        ({"sync": "ring"}, r"sync='ring'.*objective='throughput'"),
    ],
)
def test_bad_layouts_are_refused_before_tracing_with_the_choices(options, message):
    with pytest.raises(graphc.ConfigurationError, match=message):
        graphc.compile(nn.Linear(4, 2), progress=False, **options)


def test_pipeline_is_the_default_layout():
    compiled = graphc.compile(nn.Linear(4, 2), objective="throughput", progress=False)
    assert (compiled.parallel, compiled.sync, compiled.servers) == ("pipeline", None, None)
