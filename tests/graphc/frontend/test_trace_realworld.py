"""graphc.trace on models as users write them: HuggingFace-style keyword calls, in-place ops (``+=``,
``nn.ReLU(inplace=True)``, ``relu_``), batch norm in training, and data-dependent ops it must refuse
clearly. Placed runs (partition + LocalExecutor) must give eager's outputs, gradients and buffers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphc import TraceError, TracedProgram, trace
from placement import Cluster
from placement.constraints import Constraints
from placement.solvers import solve
from runtime import LocalExecutor, contiguous_plan, partition, plan_from_assignment

from hf_style_models import TinyBert, TinyResNet, bert_call, resnet_call

# -- helpers --------------------------------------------------------------------------------------------------


def _loss(out: Any) -> torch.Tensor:
    tensors = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, tuple) else [out]
    return sum((t.float() ** 2).mean() for t in tensors)


def _model(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory()


def _eager(model: nn.Module, kwargs: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs, parameter gradients and buffers after one eager forward and backward of a copy of ``model``."""
    ref = copy.deepcopy(model)
    out = ref(**kwargs)
    _loss(out).backward()
    return out, {n: p.grad for n, p in ref.named_parameters()}, dict(ref.named_buffers())


def _assert_matches_eager(out: Any, grads: dict, buffers: dict, expected: tuple) -> None:
    want_out, want_grads, want_buffers = expected
    torch.testing.assert_close(out, want_out)
    assert grads.keys() == want_grads.keys()
    torch.testing.assert_close(grads, want_grads, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(buffers, want_buffers)


def _placed_run(program: TracedProgram, plan: Any, kwargs: dict[str, Any]) -> tuple[Any, dict, dict]:
    executor = LocalExecutor(partition(program, plan))
    out = executor(*program.flat_inputs((), kwargs))
    _loss(out).backward()
    buffers = {n: b for part in executor.program.programs.values() for n, b in part.buffers.items()}
    return out, {n: p.grad for n, p in executor.named_parameters()}, buffers


MODELS = {
    "bert": (TinyBert, bert_call),
    "bert-inplace-residual": (lambda: TinyBert(inplace_residual=True), bert_call),
    "resnet": (TinyResNet, resnet_call),
}


# -- tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["op", "module"])
@pytest.mark.parametrize("name", list(MODELS))
def test_traced_program_called_with_keywords_gives_eager_outputs_gradients_and_buffers(name, granularity):
    factory, call = MODELS[name]
    model, kwargs = _model(factory), call()
    expected = _eager(model, kwargs)
    program = trace(model, (), granularity=granularity, example_kwargs=kwargs)
    assert program.graph.meta["input_names"] == list(kwargs)
    assert len(program.graph) > 10
    out = program(**kwargs)
    _loss(out).backward()
    _assert_matches_eager(out, {n: p.grad for n, p in model.named_parameters()}, dict(model.named_buffers()), expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_placed_run_on_two_devices_gives_eager_outputs_gradients_and_buffers(name):
    factory, call = MODELS[name]
    model, kwargs = _model(factory), call()
    expected = _eager(model, kwargs)
    program = trace(model, (), granularity="module", example_kwargs=kwargs)
    plan = contiguous_plan(program.graph, ["cpu0", "cpu1"])
    assert len(plan.devices_used()) == 2
    _assert_matches_eager(*_placed_run(program, plan, kwargs), expected)


def _alternating_plan(program: TracedProgram) -> Any:
    """Every op on another of three devices than the one before: a cut at nearly every edge."""
    names = program.graph.node_names()
    return plan_from_assignment(program.graph, {n: f"cpu{i % 3}" for i, n in enumerate(names)})


def _m_etf_plan(program: TracedProgram) -> Any:
    """m-ETF's plan with the middle op and the last pinned to two workers (on its own, m-ETF keeps so
    small a model on one worker: a split would only add transfers)."""
    names = program.graph.node_names()
    pins = Constraints(pins={names[len(names) // 2]: "cpu1", names[-1]: "cpu0"})
    return solve(program.graph, Cluster.preset("local"), solver="m-etf", time_limit_s=5, constraints=pins)


@pytest.mark.parametrize(
    "name,planner", [("bert-inplace-residual", _m_etf_plan), ("resnet", _alternating_plan), ("bert", _alternating_plan)]
)
def test_op_level_placed_run_gives_eager_outputs_gradients_and_buffers(name, planner):
    factory, call = MODELS[name]
    model, kwargs = _model(factory), call()
    expected = _eager(model, kwargs)
    program = trace(model, (), example_kwargs=kwargs, granularity="op")
    plan = planner(program)
    assert len(plan.devices_used()) >= 2
    _assert_matches_eager(*_placed_run(program, plan, kwargs), expected)


def test_inplace_ops_become_out_of_place_and_batch_norm_state_stays_in_place():
    program = trace(TinyResNet(), (), example_kwargs=resnet_call(), granularity="op")
    ops = [str(n.target) for n in program.graph_module.graph.nodes if n.op == "call_function"]
    assert "aten.relu_.default" not in ops and "aten.relu.default" in ops
    assert "aten.batch_norm.default" in ops  # the ops around the in-place ones are untouched
    writes = [op for op in ops if op.endswith("_.Tensor") or op.endswith("_.default")]
    assert writes and all(op == "aten.add_.Tensor" for op in writes)  # num_batches_tracked += 1 only


INPLACE = {
    "relu_": lambda h: h.relu_(),
    "mul_": lambda h: h.mul_(2.0),
    "add_": lambda h: h.add_(h.detach().sin()),
    "sub_ scalar": lambda h: h.sub_(0.5),
    "clamp_": lambda h: h.clamp_(-0.2, 0.3),
    "sigmoid_": lambda h: h.sigmoid_(),
    "masked_fill_": lambda h: h.masked_fill_(h.detach() > 0.4, 0.0),
    "iadd": lambda h: h.__iadd__(1.0),
    "F.relu(inplace)": lambda h: F.relu(h, inplace=True),
    "dropout(inplace, p=0)": lambda h: F.dropout(h, 0.0, training=True, inplace=True),
}


@pytest.mark.parametrize("op", list(INPLACE))
def test_each_inplace_op_traces_and_gives_eager_gradients(op):
    def fn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = layer(x)
        return INPLACE[op](h) * 3

    torch.manual_seed(0)
    layer, x = nn.Linear(4, 5), torch.randn(3, 4, requires_grad=True)
    ref = copy.deepcopy(layer)
    ref_x = x.detach().clone().requires_grad_()
    expected = fn(ref, ref_x)
    expected.sum().backward()
    program = trace(fn, (layer, x), granularity="op")
    flat = program.flat_inputs((layer, x), {})
    assert len(flat) == 1 and flat[0] is x  # the module is part of the program
    assert not any(str(n.target).endswith(("_.default", "_.Tensor", "_.Scalar")) for n in program.graph_module.graph.nodes)
    got = program(layer, x)
    got.sum().backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    assert program.graph.total_fwd_flops() > 2 * 3 * 4 * 5  # the op's own FLOPs count on top of the linear


class _WriteIntoView(nn.Module):
    """``hidden[:, 0] = 0`` writes through a view whose base is read afterwards: torch functionalises it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.linear(x))
        hidden[:, 0] = 0.0
        return self.head(hidden)


@pytest.mark.parametrize("planner", [_alternating_plan, lambda p: contiguous_plan(p.graph, ["cpu0", "cpu1", "cpu2"])])
def test_write_into_a_view_runs_placed_with_eager_gradients_and_running_statistics(planner):
    model, kwargs = _model(_WriteIntoView), {"x": torch.randn(5, 4)}
    expected = _eager(model, kwargs)
    program = trace(model, (), example_kwargs=kwargs, granularity="op")
    assert "aten.select_scatter.default" in {str(n.target) for n in program.graph_module.graph.nodes}
    plan = planner(program)
    assert len(plan.devices_used()) == 3
    _assert_matches_eager(*_placed_run(program, plan, kwargs), expected)


def test_keywords_bind_as_the_model_takes_them_and_constants_are_baked_in():
    model, call = _model(TinyBert), bert_call()
    ids, mask = call["input_ids"], call["attention_mask"]
    program = trace(model, (ids,), example_kwargs={"attention_mask": mask, "return_dict": False}, granularity="op")
    assert program.graph.meta["input_names"] == ["input_ids", "attention_mask"]
    assert [n.op for n in program.graph_module.graph.nodes].count("placeholder") == 2  # no input for return_dict
    flat = program.flat_inputs((), {"attention_mask": mask, "input_ids": ids})
    assert len(flat) == 2 and flat[0] is ids and flat[1] is mask
    expected = model(ids, attention_mask=mask, return_dict=False)
    for args, kwargs in [
        ((ids,), {"attention_mask": mask}),
        ((), {"attention_mask": mask, "input_ids": ids}),
        ((ids, mask), {}),
        ((ids,), {"attention_mask": mask, "return_dict": False}),
    ]:
        torch.testing.assert_close(program(*args, **kwargs), expected)


def test_a_call_that_does_not_bind_as_traced_gets_a_one_line_error():
    model, call = _model(TinyBert), bert_call()
    ids, mask = call["input_ids"], call["attention_mask"]
    kwargs = {"input_ids": ids, "attention_mask": mask, "return_dict": False}
    program = trace(model, (), example_kwargs=kwargs, granularity="op")
    cases = [
        ((), {"input_ids": ids, "attn_mask": mask}, "lacks attention_mask and adds attn_mask"),
        ((), {"input_ids": ids}, "this call lacks attention_mask: "),
        ((), {"input_ids": ids, "attention_mask": mask, "return_dict": True}, "'return_dict' was traced as False"),
        ((ids,), {"input_ids": ids, "attention_mask": mask}, "input_ids given both by position and by keyword"),
        ((ids, mask, None, False, ids), {}, "at most 4 positional argument(s)"),
        ((), {"input_ids": ids, "attention_mask": [1, 0]}, "'attention_mask' was traced as a tensor"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(TraceError) as info:
            program.flat_inputs(args, kwargs)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_a_container_of_tensors_as_keyword_is_refused():
    ids = bert_call()["input_ids"]
    with pytest.raises(TypeError, match="example keyword 'past' is a tuple"):
        trace(TinyBert(), (ids,), example_kwargs={"past": (ids, ids)}, granularity="op")


class _Nonzero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        picked = h[torch.nonzero(h > 0, as_tuple=True)]  # the line the error must name
        return picked.sum()


class _BooleanMask(_Nonzero):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return h[h > 0].sum()  # the line the error must name


class _Item(_Nonzero):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        top = h.abs().max().item()  # the line the error must name
        return h / top


@pytest.mark.parametrize(
    "model,marker,advice",
    [
        (_Nonzero(), "picked = h[torch.nonzero(h > 0, as_tuple=True)]", "torch.where(mask, x, 0)"),
        (_BooleanMask(), "return h[h > 0].sum()", "multiply by the mask"),
        (_Item(), "top = h.abs().max().item()", "keep the value a tensor"),
    ],
)
def test_data_dependent_ops_name_their_line_and_the_remedy(model, marker, advice):
    with pytest.raises(TraceError) as info:
        trace(model, torch.randn(3, 4), granularity="op")
    message = str(info.value)
    assert "data-dependent" in message and f"{__file__}:" in message and marker in message
    assert "what to do: " in message and advice in message


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None, scale: float = 1.0):
        out = self.linear(x) * scale
        return out * mask if mask is not None else out


@pytest.mark.parametrize("tracer", ["export", "fx"])
def test_keyword_call_traces_with_either_tracer(tracer, monkeypatch):
    """The fx fallback orders inputs as the signature does (x, mask), export as the call does (mask, x):
    ``flat_inputs`` follows whichever made the program."""
    if tracer == "fx":
        monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("off")))
    model, x, mask = _model(_Masked), torch.randn(2, 4), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    kwargs = {"mask": mask, "x": x, "scale": 2.0}
    program = trace(model, (), example_kwargs=kwargs, granularity="op")
    assert program.method == tracer
    placeholders = [str(n.target) for n in program.graph_module.graph.nodes if n.op == "placeholder"]
    assert placeholders == list(program.convention.input_names) == (["x", "mask"] if tracer == "fx" else ["mask", "x"])
    torch.testing.assert_close(program(x, mask=mask), model(**kwargs))
    torch.testing.assert_close(program.graph_module(*program.flat_inputs((), kwargs)), model(**kwargs))


def test_inplace_dropout_in_training_draws_eager_masks():
    """``Dropout(inplace=True)`` becomes ``aten.dropout``, which draws the same mask from the same seed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3, inplace=True), nn.ReLU(inplace=True), nn.Linear(16, 2))
    x = torch.randn(4, 8)
    program = trace(model, x, granularity="op")
    torch.manual_seed(5)
    got = program(x)
    torch.manual_seed(5)
    assert torch.equal(got, model(x))
    torch.manual_seed(6)
    assert not torch.equal(program(x), got)  # a mask is really drawn
