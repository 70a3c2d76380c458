"""@graphc.compile: eager-equal results on a function and a module, plan caching by shape."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphc


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_compiled_function_equals_eager_and_reuses_its_plan():
    model = _model()

    @graphc.compile(cluster="local", solver="round-robin", time_limit=5, progress=False)
    def loss_fn(net, x, y):
        return F.mse_loss(net(x), y)

    x, y = torch.randn(6, 8), torch.randn(6, 4)
    expected = F.mse_loss(model(x), y)
    expected.backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = loss_fn(model, x, y)
    got.backward()
    assert torch.allclose(got, expected)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), eager))
    assert len(loss_fn.plan.devices_used()) >= 2  # round-robin really splits it
    loss_fn(model, x, y)
    assert loss_fn.traces == 1  # same shapes: no re-trace
    loss_fn(model, torch.randn(3, 8), torch.randn(3, 4))
    assert loss_fn.traces == 2 and len(loss_fn.cache) == 2  # a new batch size re-plans


def test_compiled_module_call_equals_eager():
    model = _model()
    compiled = graphc.compile(model, cluster="local", solver="auto", time_limit=3, progress=False)
    x = torch.randn(5, 8)
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    assert compiled.plan.graph_fingerprint == compiled.last.program.graph.fingerprint()


def _deep_model() -> nn.Module:
    """Large enough that the pipeline solver splits its batch into microbatches."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.ReLU()) for _ in range(8)], nn.Linear(256, 4))


def test_throughput_objective_pipelines_a_module_and_matches_eager():
    model = _deep_model()
    reference = copy.deepcopy(model)
    compiled = graphc.compile(model, cluster="local", objective="throughput", time_limit=5, progress=False)
    x, y = torch.randn(64, 256), torch.randint(0, 4, (64,))
    out = compiled(x)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(reference(x), y).backward()
    plan = compiled.plan
    assert plan.objective == "throughput" and plan.microbatches > 1 and len(plan.stages) >= 1
    assert all(len(stage.devices) == 1 for stage in plan.stages)  # compile plans no replicas
    assert torch.allclose(out, reference(x), atol=1e-5)
    for got, want in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(got.grad, want.grad, atol=1e-5)


def test_throughput_objective_refuses_a_scalar_output_with_what_to_do():
    model = _deep_model()

    @graphc.compile(cluster="local", objective="throughput", time_limit=3, progress=False)
    def loss_fn(net, x, y):
        return F.mse_loss(net(x), y)

    with pytest.raises(graphc.GraphcError, match="returns a scalar .* compile the model"):
        loss_fn(model, torch.randn(64, 256), torch.randn(64, 4))
