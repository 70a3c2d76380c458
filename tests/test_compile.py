"""@graphc.compile: eager-equal results on a function and a module, plan caching by shape."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
