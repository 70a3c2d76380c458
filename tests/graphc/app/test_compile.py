"""@graphc.compile: eager-equal results on a function and a module, plan caching by shape."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphc
from graphc.app.compiler import CompiledModel
from hf_style_models import TinyBert, TinyResNet, bert_call, resnet_call


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_compiled_function_equals_eager_and_reuses_its_plan():
    model = _model()

    @graphc.compile(cluster="local", solver="round-robin", time_limit_s=5, progress=False)
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
    compiled = graphc.compile(model, cluster="local", solver="auto", time_limit_s=3, progress=False)
    x = torch.randn(5, 8)
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    assert compiled.plan.graph_fingerprint == compiled.last.program.graph.fingerprint()


PIPELINED_BATCH = 256


def _deep_model() -> nn.Module:
    """Large enough, at a batch of ``PIPELINED_BATCH``, that the pipeline solver splits the batch into
    microbatches on the ``local`` preset (at 64 one device wins: each microbatch's gradients are added
    into ``.grad``)."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.ReLU()) for _ in range(8)], nn.Linear(256, 4))


def test_throughput_objective_pipelines_a_module_and_matches_eager():
    model = _deep_model()
    reference = copy.deepcopy(model)
    compiled = graphc.compile(model, cluster="local", objective="throughput", time_limit_s=5, progress=False)
    x, y = torch.randn(PIPELINED_BATCH, 256), torch.randint(0, 4, (PIPELINED_BATCH,))
    out = compiled(x)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(reference(x), y).backward()
    plan = compiled.plan
    assert plan.objective == "throughput" and plan.microbatches > 1 and len(plan.stages) >= 1
    assert torch.allclose(out, reference(x), atol=1e-5)
    for got, want in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(got.grad, want.grad, atol=1e-5)


def test_throughput_objective_refuses_a_scalar_output_with_what_to_do():
    model = _deep_model()

    @graphc.compile(cluster="local", objective="throughput", time_limit_s=3, progress=False)
    def loss_fn(net, x, y):
        return F.mse_loss(net(x), y)

    with pytest.raises(graphc.GraphcError, match="returns a scalar .* compile the model"):
        loss_fn(model, torch.randn(PIPELINED_BATCH, 256), torch.randn(PIPELINED_BATCH, 4))


class _BatchNormNet(nn.Module):
    """Batch norm and dropout: the two layers whose behaviour train() and eval() switch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_compiled_module_follows_train_and_eval_like_eager():
    torch.manual_seed(0)
    model = _BatchNormNet()
    reference = copy.deepcopy(model)
    compiled = graphc.compile(model, cluster="local", solver="round-robin", time_limit_s=3, progress=False)
    x = torch.randn(32, 8)
    for _ in range(2):  # training calls update the running statistics, as in eager
        compiled(x).sum().backward()
        reference(x).sum().backward()
    bn, bn_ref = model.body[1], reference.body[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)
    assert int(bn.num_batches_tracked) == 2

    model.eval()
    reference.eval()
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    got = compiled(x)
    torch.testing.assert_close(got, reference(x))  # no dropout, batch norm on its running statistics
    compiled(x)
    for now, before in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), stats):
        torch.testing.assert_close(now, before)  # eval calls leave the statistics alone
    assert compiled.traces == 2 and compiled.last.plan.mode == "inference"  # eval: the forward is planned

    model.train()
    compiled(x)
    assert compiled.traces == 2  # back in training mode: the first program again, not a third trace
    assert int(bn.num_batches_tracked) == 3


def test_new_batch_sizes_reuse_the_placement_without_a_search():
    torch.manual_seed(0)
    model = _model()
    compiled = graphc.compile(model, cluster="local", solver="m-etf", time_limit_s=3, progress=False)
    first = compiled(torch.randn(256, 8))
    assert first.shape == (256, 4)
    placement = compiled.plan.assignment
    for batch in (100, 37):
        x = torch.randn(batch, 8)
        torch.testing.assert_close(compiled(x), model(x))
        plan = compiled.plan
        assert compiled.last.how == "reused" and plan.assignment == placement
        assert plan.settings["reused_from"]["batch_size"] == 256
        assert plan.graph.meta["batch_size"] == batch and plan.predicted_step_ms > 0
    assert compiled.traces == 3 and compiled.searches == 1


def test_a_pipelined_plan_reused_at_an_indivisible_batch_takes_fewer_microbatches():
    model = _deep_model()
    compiled = graphc.compile(model, cluster="local", objective="throughput", time_limit_s=5, progress=False)
    compiled(torch.randn(PIPELINED_BATCH, 256))
    m = compiled.plan.microbatches
    assert m > 1
    x = torch.randn(37, 256)  # prime: only one microbatch divides it
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    assert compiled.last.how == "reused" and compiled.plan.microbatches == 1 and compiled.searches == 1


@pytest.mark.parametrize("inplace_residual", [False, True])
def test_compiled_hf_style_model_called_with_keywords_equals_eager(inplace_residual):
    torch.manual_seed(0)
    model = TinyBert(inplace_residual=inplace_residual)
    reference = copy.deepcopy(model)
    compiled = graphc.compile(model, cluster="local", solver="round-robin", time_limit_s=3, progress=False)
    kwargs = bert_call()
    hidden, pooled = compiled(**kwargs, return_dict=False)
    want_hidden, want_pooled = reference(**kwargs, return_dict=False)
    torch.testing.assert_close(hidden, want_hidden)
    torch.testing.assert_close(pooled, want_pooled)
    (hidden.square().mean() + pooled.sum()).backward()
    (want_hidden.square().mean() + want_pooled.sum()).backward()
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, msg=name)
    assert len(compiled.plan.devices_used()) >= 2
    compiled(kwargs["input_ids"], attention_mask=kwargs["attention_mask"], token_type_ids=kwargs["token_type_ids"],
             return_dict=False)  # fmt: skip
    assert compiled.traces == 1  # positional or keyword, the same call
    out = compiled(**kwargs)  # another constant (return_dict=True) is another program
    torch.testing.assert_close(out["pooler_output"], reference(**kwargs)["pooler_output"])
    assert compiled.traces == 2


def test_compiled_torchvision_style_cnn_trains_and_evaluates_like_eager():
    torch.manual_seed(0)
    model = TinyResNet()
    reference = copy.deepcopy(model)
    compiled = graphc.compile(model, cluster="local", solver="m-etf", time_limit_s=3, progress=False)
    pixels = resnet_call()["pixel_values"]
    compiled(pixel_values=pixels).sum().backward()
    reference(pixel_values=pixels).sum().backward()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad)
    model.eval()
    reference.eval()
    torch.testing.assert_close(compiled(pixels), reference(pixels))
    for got, want in zip(model.buffers(), reference.buffers()):
        torch.testing.assert_close(got, want)


def test_a_function_of_star_args_reuses_its_program_for_new_values():
    model = _model()

    @graphc.compile(cluster="local", solver="round-robin", time_limit_s=3, progress=False)
    def forward(*inputs):
        return model(inputs[0]) * inputs[1]

    for _ in range(2):
        x, scale = torch.randn(4, 8), torch.randn(4, 4)
        torch.testing.assert_close(forward(x, scale), model(x) * scale)
    assert forward.traces == 1


def test_trace_and_compile_trace_at_the_same_granularity_by_default():
    """Module granularity, the unit of the CLI and of the placement papers, unless told otherwise."""
    model = _model()
    compiled = graphc.compile(model, cluster="local", solver="single", time_limit_s=1, progress=False)
    compiled(torch.randn(2, 8))
    traced = graphc.trace(model, torch.randn(2, 8))
    assert traced.granularity == compiled.last.program.granularity == "module"
    assert traced.graph.node_names() == compiled.last.program.graph.node_names()
    assert traced.graph.node_names() == ["input_1", "0", "1", "2", "3", "4"]  # the modules of the Sequential
    assert "linear" in graphc.trace(model, torch.randn(2, 8), granularity="op").graph.node_names()


def test_old_time_limit_names_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"compile: (reshape_)?time_limit= is deprecated") as record:
        compiled = graphc.compile(_model(), cluster="local", time_limit=2, reshape_time_limit=0.5, progress=False)
    assert len(record) == 2 and {w.filename for w in record} == {__file__}
    assert (compiled.time_limit_s, compiled.reshape_time_limit_s) == (2, 0.5)
    with pytest.warns(DeprecationWarning, match="CompiledModel: reshape_time_limit= is deprecated"):
        direct = CompiledModel(_model(), reshape_time_limit=0.5, progress=False)
    assert direct.reshape_time_limit_s == 0.5
