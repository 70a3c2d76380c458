"""Every zoo network traces at both granularities and the traced program equals eager PyTorch."""

from __future__ import annotations

import resource

import pytest
import torch

from graphc import trace, zoo


def _loss_and_grads(zm: zoo.ZooModel, forward) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    zm.model.zero_grad(set_to_none=True)
    output = forward(*zm.example_inputs)
    loss = zm.loss(output)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in zm.model.named_parameters() if p.grad is not None}
    return output, grads


@pytest.mark.parametrize("granularity", ["op", "module"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "inception_v3" else n for n in zoo.NAMES])
def test_traced_zoo_model_equals_eager_outputs_and_gradients(name, granularity):
    no_dropout = {"dropout": 0.0} if "dropout" in zoo.defaults(name, "small") else {}
    zm = zoo.build(name, batch_size=2, size="small", **no_dropout)
    program = trace(zm.model, zm.example_inputs, granularity=granularity)
    graph = program.graph
    assert len(graph) > 3 and graph.num_edges >= len(graph) - len(zm.example_inputs)
    assert graph.meta["num_params"] == sum(p.numel() for p in zm.model.parameters())
    assert all(n.fwd_flops >= 0 and n.bwd_flops >= 0 for n in graph.nodes())
    assert graph.total_fwd_flops() > 0 and graph.total_bwd_flops() > graph.total_fwd_flops()
    eager_out, eager_grads = _loss_and_grads(zm, zm.model)
    traced_out, traced_grads = _loss_and_grads(zm, program)
    assert torch.allclose(traced_out, eager_out, rtol=1e-5, atol=1e-6)
    assert eager_grads.keys() == traced_grads.keys() == {n for n, _ in zm.model.named_parameters()}
    for key, grad in eager_grads.items():
        assert torch.allclose(traced_grads[key], grad, rtol=1e-4, atol=1e-6), key


def test_resnet50_forward_flops_match_the_quoted_figure():
    """ResNet-50 at batch 1, 224x224: ~4.1 G multiply-adds, i.e. ~8.2 GFLOPs."""
    zm = zoo.build("resnet50", batch_size=1, device="meta")
    graph = trace(zm.model, zm.example_inputs, granularity="module").graph
    assert graph.total_fwd_flops() == pytest.approx(8.2e9, rel=0.05)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.slow
def test_gpt2_with_1_5_billion_parameters_is_traced_without_allocating_its_weights():
    before = _peak_rss_bytes()
    zm = zoo.build("gpt2", batch_size=1, device="meta", n_layer=48, n_embd=1600, n_head=25)
    graph = trace(zm.model, zm.example_inputs, granularity="module").graph
    assert 1.5e9 < graph.num_params() < 1.6e9
    assert graph.total_param_bytes() == 4 * graph.num_params()  # the tied LM head is counted once
    assert all(p.is_meta for p in zm.model.parameters())
    # 6.2 GB of float32 weights would have to show in the process's peak memory; allow 1.5 GB of slack
    assert _peak_rss_bytes() - before < 1.5e9
    blocks = [n for n in graph.nodes() if n.op == "CausalSelfAttention"]
    assert len(blocks) == 48
    b, t, d = 1, 1024, 1600
    projections = 2 * b * t * d * 3 * d + 2 * b * t * d * d  # qkv and output projections
    attention = 4 * b * t * t * d  # QK^T and PV over all heads
    assert blocks[0].fwd_flops == pytest.approx(projections + attention, rel=0.01)
