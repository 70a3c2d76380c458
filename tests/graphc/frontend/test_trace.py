"""graphc.trace on small hand-written models: FLOP formulas, memory accounting, granularity, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphc
from graphc import TraceError, trace


def _only(graph: graphc.Graph, op_prefix: str) -> graphc.NodeData:
    matches = [n for n in graph.nodes() if n.op.startswith(op_prefix)]
    assert len(matches) == 1, [n.op for n in graph.nodes()]
    return matches[0]


def test_linear_flops_match_textbook_and_first_layer_backward_skips_input_gradient():
    batch, d_in, d_hidden, d_out = 8, 32, 64, 16
    model = nn.Sequential(nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out))
    graph = trace(model, torch.randn(batch, d_in), granularity="module").graph
    first, second = graph.node("0"), graph.node("1")
    assert first.fwd_flops == 2 * batch * d_in * d_hidden
    assert second.fwd_flops == 2 * batch * d_hidden * d_out
    # the input needs no gradient: the first layer computes only its weight gradient (and bias sum)
    assert first.bwd_flops == pytest.approx(2 * batch * d_in * d_hidden, rel=0.02)
    assert second.bwd_flops == pytest.approx(2 * 2 * batch * d_hidden * d_out, rel=0.02)
    assert first.param_bytes == 4 * (d_in * d_hidden + d_hidden)
    assert first.params == ["0.weight", "0.bias"]


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2)])
def test_conv2d_flops_match_textbook(groups, stride):
    c_in, c_out, k, hw, batch = 4, 6, 3, 10, 2
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=1, groups=groups)
    graph = trace(conv, torch.randn(batch, c_in, hw, hw), granularity="module").graph
    node = graph.node("root")
    out_hw = (hw + 2 - k) // stride + 1
    assert node.output_shapes == [[batch, c_out, out_hw, out_hw]]
    assert node.fwd_flops == 2 * batch * c_out * out_hw * out_hw * (c_in // groups) * k * k
    # the image needs no gradient: backward computes the weight gradient only (plus the bias sum)
    assert node.bwd_flops == node.fwd_flops
    model = nn.Sequential(nn.Conv2d(c_in, c_in, 1), conv)  # now the input of ``conv`` needs a gradient too
    second = trace(model, torch.randn(batch, c_in, hw, hw), granularity="module").graph.node("1")
    assert second.bwd_flops == 2 * second.fwd_flops


def test_matmul_and_attention_flops_match_textbook():
    b, h, length, d = 2, 3, 16, 8

    def attention(q, k, v):
        scores = torch.matmul(q, k.transpose(-1, -2))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True) + scores.sum()

    q, k, v = (torch.randn(b, h, length, d) for _ in range(3))
    graph = trace(attention, (q, k, v), granularity="op").graph
    matmul_flops = sum(n.fwd_flops for n in graph.nodes() if n.op.startswith(("aten.matmul", "aten.bmm")))
    assert matmul_flops == 2 * b * h * length * length * d
    sdpa = _only(graph, "aten.scaled_dot_product_attention")
    assert sdpa.fwd_flops == 4 * b * h * length * length * d


def test_activation_bytes_charge_saved_outputs_to_their_producer():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    graph = trace(model, torch.randn(7, 4), granularity="module").graph
    # ReLU saves its own output for backward, the second Linear saves its input (the same tensor):
    # counted once, on the ReLU; the first Linear's output is needed by nobody's backward.
    assert graph.node("1").activation_bytes == 7 * 5 * 4
    assert graph.node("0").activation_bytes == 0
    assert graph.edge("0", "1").bytes == 7 * 5 * 4
    (graph_input,) = graph.predecessors("0")
    assert graph.node(graph_input).op == "input"
    assert graph.edge(graph_input, "0").bytes == 7 * 4 * 4


class _SplitHeads(nn.Module):
    """One projection split into three views, as attention's q, k, v: two of them saved by a product."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.proj(x).chunk(3, dim=-1)
        return a * b + c.exp()


def _eager_saved_bytes(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves in an eager forward, parameters left out."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage()._cdata not in params:
            saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return sum(saved.values())


def test_a_saved_view_keeps_its_whole_storage_charged_once():
    x = torch.randn(7, 4)
    graph = trace(_SplitHeads(), x, granularity="op").graph
    # mul saves the views a and b of the projection's output: its whole storage (7 x 12 floats), once;
    # exp saves its own output (7 x 4)
    assert _only(graph, "aten.linear").activation_bytes == 7 * 12 * 4
    assert _only(graph, "aten.exp").activation_bytes == 7 * 4 * 4
    assert sum(n.activation_bytes for n in graph.nodes()) == _eager_saved_bytes(_SplitHeads(), x)


def test_activation_bytes_add_up_to_what_autograd_saves_in_a_transformer_block():
    block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    x = torch.randn(3, 5, 16)
    graph = trace(block, x, granularity="module").graph
    assert sum(n.activation_bytes for n in graph.nodes()) == _eager_saved_bytes(block, x)


class _Recurrent(nn.Module):
    """A (bidirectional) LSTM or GRU layer, batch first, as GNMT's encoder layers."""

    def __init__(self, kind: type[nn.Module], bidirectional: bool) -> None:
        super().__init__()
        self.rnn = kind(8, 16, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("steps", [5, 40])
def test_a_recurrent_layer_keeps_the_workspace_its_cpu_kernel_makes(kind, bidirectional, steps):
    """On the CPU, oneDNN's RNN kernel saves a workspace that its fake kernel makes empty: it is measured
    on the real kernel, at the sequence's length or, for a long one, extrapolated from two shorter."""
    model, x = _Recurrent(kind, bidirectional), torch.randn(3, steps, 8)
    graph = trace(model, x, granularity="module").graph
    eager = _eager_saved_bytes(model, x)
    traced = sum(n.activation_bytes for n in graph.nodes())
    if steps <= 16:
        assert traced == eager
    else:  # the workspace's parts are page-aligned: the extrapolation may be off by a few pages
        assert traced == pytest.approx(eager, rel=0.03)


class _Tied(nn.Module):
    """Two linear layers sharing one weight (as GPT-2's embedding and head, GNMT's unrolled cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_a_shared_parameter_flows_from_its_first_user_as_the_edges_param_bytes():
    graph = trace(_Tied(), torch.randn(3, 4), granularity="module").graph
    assert graph.node("a").param_bytes == (16 + 4) * 4  # the weight and a's bias
    assert graph.node("b").param_bytes == 4 * 4  # its own bias only
    shared = graph.edge("a", "b")
    assert shared.bytes == shared.param_bytes == 16 * 4
    assert all(e.param_bytes == 0 for s, d, e in graph.edges() if (s, d) != ("a", "b"))


class _Cell(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.norm(self.fc(x)))


class _Unrolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = _Cell()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.cell(x) + x
        return x


def test_module_granularity_gives_one_node_per_call_and_marked_blocks_stay_whole():
    x = torch.randn(2, 6)
    per_layer = trace(_Unrolled(), x, granularity="module").graph
    layer_nodes = [n.name for n in per_layer.nodes() if n.op in ("Linear", "LayerNorm")]
    assert layer_nodes == ["cell.fc", "cell.norm", "cell.fc@1", "cell.norm@1", "cell.fc@2", "cell.norm@2"]
    whole = trace(_Unrolled(), x, granularity="module", leaf_modules=[_Cell]).graph
    cells = [n for n in whole.nodes() if n.op == "_Cell"]
    assert [c.name for c in cells] == ["cell", "cell@1", "cell@2"]
    assert len(cells[0].fx_nodes) >= 3  # linear, layer_norm, tanh
    assert cells[0].fwd_flops == sum(
        n.fwd_flops for n in per_layer.nodes() if n.name in ("cell.fc", "cell.norm", "tanh")
    )
    # the tied parameters are owned by the first call; later calls receive them along an edge
    assert cells[0].param_bytes > 0 and cells[1].param_bytes == 0
    assert whole.edge("cell", "cell@1").bytes >= cells[0].param_bytes
    op_level = trace(_Unrolled(), x, granularity="op").graph
    assert len(op_level) >= len(per_layer) > len(whole)  # training-IR linear and layer_norm are single ops
    assert op_level.total_fwd_flops() == per_layer.total_fwd_flops() == whole.total_fwd_flops()


def test_traced_function_of_module_and_tensors_equals_eager_with_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 2))

    def loss_fn(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(net(x), target)

    x, target = torch.randn(4, 5), torch.randn(4, 2)
    program = trace(loss_fn, (model, x, target), granularity="op")
    assert program.module_positions == (0,)
    assert [n.op for n in program.graph.nodes()][:2] == ["input", "input"]
    expected = loss_fn(model, x, target)
    expected.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = program(model, x, target)
    got.backward()
    assert torch.allclose(got, expected)
    for g_eager, p in zip(eager_grads, model.parameters()):  # the program holds the model's parameters
        assert torch.allclose(p.grad, g_eager)


def test_model_on_meta_device_is_annotated_without_memory():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4096, 16384), nn.ReLU(), nn.Linear(16384, 4096))
    graph = trace(model, torch.empty(2, 4096, device="meta"), granularity="module").graph
    assert graph.total_param_bytes() == 4 * (2 * 4096 * 16384 + 16384 + 4096)
    assert graph.node("0").fwd_flops == 2 * 2 * 4096 * 16384
    assert graph.meta["num_params"] == 2 * 4096 * 16384 + 16384 + 4096


def test_fx_fallback_is_used_when_export_fails(monkeypatch):
    def failing_export(*args, **kwargs):
        raise RuntimeError("export unavailable")

    monkeypatch.setattr(torch.export, "export", failing_export)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    x = torch.randn(2, 3)
    program = trace(model, x, granularity="op")
    assert program.method == "fx"
    assert [n.op for n in program.graph.nodes()] == ["input", "Linear", "ReLU"]
    assert program.graph.node("_0").fwd_flops == 2 * 2 * 3 * 4
    assert torch.allclose(program(x), model(x))


class _OptionalMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(x) if mask is None else self.linear(x) * mask


def test_fx_fallback_bakes_in_the_defaults_of_arguments_left_out(monkeypatch):
    monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("off")))
    model, x = _OptionalMask(), torch.randn(2, 3)
    program = trace(model, x, granularity="op")
    assert program.method == "fx"
    assert [n.target for n in program.graph_module.graph.nodes if n.op == "placeholder"] == ["x"]
    assert torch.allclose(program(x), model(x))


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # the line the error must name
            return x * 2
        return x


class _Unsupported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(x.numpy().mean())  # the line the error must name
        return x * scale


@pytest.mark.parametrize(
    "model,marker,reason",
    [
        (_DataDependent(), "if x.sum() > 0:", "data-dependent control flow"),
        (_Unsupported(), "scale = float(x.numpy().mean())", "an operation tracing does not support"),
    ],
)
def test_untraceable_model_names_its_source_line_and_the_reason(model, marker, reason):
    with pytest.raises(TraceError) as info:
        trace(model, torch.randn(3), granularity="op")
    message = str(info.value)
    assert reason in message
    assert f"{__file__}:" in message and marker in message
    assert "what to do:" in message


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="granularity must be one of"):
        trace(nn.Linear(2, 2), torch.randn(1, 2), granularity="layer")
    with pytest.raises(TypeError, match="example input 0 is a list"):
        trace(nn.Linear(2, 2), ([1.0, 2.0],), granularity="op")


def test_traced_graph_round_trips_through_json(tmp_path):
    graph = trace(_Unrolled(), torch.randn(2, 6), granularity="module").graph
    graph.save(tmp_path / "g.json")
    assert graphc.Graph.load(tmp_path / "g.json") == graph
    assert math.isclose(graph.total_fwd_flops(), graphc.Graph.load(tmp_path / "g.json").total_fwd_flops())
