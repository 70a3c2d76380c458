"""The benchmark network zoo: shapes, training, published parameter counts, meta builds, the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.fx

from graphc import zoo
from graphc.frontend.leaf import is_marked_leaf
from graphc.frontend.zoo.gnmt import Attention
from graphc.frontend.zoo.gpt2 import MLP, CausalSelfAttention


def small(name: str, batch_size: int = 2, **knobs: object) -> zoo.ZooModel:
    """A small zoo model with dropout off (where the network has dropout)."""
    if "dropout" in zoo.defaults(name, "small"):
        knobs.setdefault("dropout", 0.0)
    return zoo.build(name, batch_size=batch_size, size="small", **knobs)


def expected_output_shape(zm: zoo.ZooModel) -> tuple[int, ...]:
    c = zm.config
    if zm.name == "gnmt":
        return (zm.batch_size, c["target_len"], c["vocab_size"])
    if zm.name == "gpt2":
        return (zm.batch_size, c["seq_len"], c["vocab_size"])
    return (zm.batch_size, c["num_classes"])


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_trains(zm: zoo.ZooModel) -> None:
    """The loss is finite and backward reaches every parameter with a finite gradient."""
    loss = zm.loss(zm.model(*zm.example_inputs))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, param in zm.model.named_parameters():
        assert param.grad is not None, f"{zm.name}: no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), f"{zm.name}: non-finite gradient for {pname}"


# -- small configurations train ----------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.NAMES)
def test_small_model_output_shape_loss_and_gradients(name: str) -> None:
    zm = small(name)
    assert zm.model.training
    output = zm.model(*zm.example_inputs)
    assert tuple(output.shape) == expected_output_shape(zm)
    assert_trains(zm)


@pytest.mark.parametrize("name", zoo.NAMES)
def test_small_model_runs_at_batch_size_one(name: str) -> None:
    zm = small(name, batch_size=1)
    assert tuple(zm.model(*zm.example_inputs).shape) == expected_output_shape(zm)


def test_inception_runs_at_image_size_75() -> None:
    zm = small("inception_v3", image_size=75)
    assert tuple(zm.example_inputs[0].shape) == (2, 3, 75, 75)
    assert_trains(zm)


def test_inception_aux_classifier_adds_an_output_and_a_loss_term() -> None:
    zm = small("inception_v3", image_size=299, aux_logits=True)
    logits, aux = zm.model(*zm.example_inputs)
    assert logits.shape == aux.shape == (2, 10)
    aux_loss = torch.nn.functional.cross_entropy(aux, zm.targets)
    assert torch.allclose(zm.loss((logits, aux)), zm.loss(logits) + 0.3 * aux_loss)
    assert_trains(zm)


@pytest.mark.parametrize("attention", ["additive", "dot"])
def test_gnmt_attention_kinds_train(attention: str) -> None:
    assert_trains(small("gnmt", attention=attention))


def test_gnmt_decoder_is_unrolled_over_target_steps() -> None:
    class LeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, module: torch.nn.Module, qualname: str) -> bool:
            return is_marked_leaf(type(module)) or super().is_leaf_module(module, qualname)

    zm = small("gnmt", target_len=4, num_layers=3)
    gm = torch.fx.GraphModule(zm.model, LeafTracer().trace(zm.model))
    cells = [n for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("decoder.cells.")]
    assert len(cells) == 4 * 3
    attention = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "decoder.attention"]
    assert len(attention) == 4


def test_blocks_are_marked_leaves() -> None:
    assert is_marked_leaf(Attention) and is_marked_leaf(CausalSelfAttention) and is_marked_leaf(MLP)


def test_gpt2_lm_head_is_tied_and_causal() -> None:
    zm = small("gpt2", batch_size=1)
    assert zm.model.lm_head.weight is zm.model.wte.weight
    tokens = zm.example_inputs[0]
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % zm.config["vocab_size"]
    zm.model.eval()
    with torch.no_grad():
        before, after = zm.model(tokens), zm.model(changed)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-6)  # no position sees the future
    assert not torch.allclose(before[:, -1], after[:, -1])


@pytest.mark.parametrize("name", zoo.NAMES)
def test_small_model_traces_with_export_and_fx(name: str) -> None:
    zm = small(name)
    exported = torch.export.export(zm.model, zm.example_inputs, strict=False)
    assert tuple(exported.module()(*zm.example_inputs).shape) == expected_output_shape(zm)
    traced = torch.fx.symbolic_trace(zm.model)
    assert tuple(traced(*zm.example_inputs).shape) == expected_output_shape(zm)


# -- full configurations match the published parameter counts ----------------------------------------


def _conv(cin: int, cout: int, kh: int, kw: int | None = None, bias: bool = True) -> int:
    return cin * cout * kh * (kh if kw is None else kw) + (cout if bias else 0)


def _fc(cin: int, cout: int) -> int:
    return cin * cout + cout


def alexnet_count() -> int:
    """Krizhevsky 2014, one-GPU AlexNet, 224x224 -> 6x6x256 features."""
    convs = _conv(3, 64, 11) + _conv(64, 192, 5) + _conv(192, 384, 3)
    convs += _conv(384, 256, 3) + _conv(256, 256, 3)
    return convs + _fc(256 * 6 * 6, 4096) + _fc(4096, 4096) + _fc(4096, 1000)


def vgg16_count() -> int:
    """Simonyan & Zisserman 2015, configuration D, 224x224 -> 7x7x512 features."""
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(_conv(a, b, 3) for a, b in zip(widths, widths[1:]))
    return convs + _fc(512 * 7 * 7, 4096) + _fc(4096, 4096) + _fc(4096, 1000)


def resnet50_count() -> int:
    """He et al. 2016: convolutions without bias, each followed by batch norm (2 parameters a channel)."""

    def cbn(cin: int, cout: int, k: int) -> int:
        return _conv(cin, cout, k, bias=False) + 2 * cout

    total, cin = cbn(3, 64, 7), 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(blocks):
            total += cbn(cin, planes, 1) + cbn(planes, planes, 3) + cbn(planes, 4 * planes, 1)
            if block == 0:
                total += cbn(cin, 4 * planes, 1)
            cin = 4 * planes
    return total + _fc(2048, 1000)


def inception_v3_count(aux: bool = False) -> int:
    """Szegedy et al. 2016, with BasicConv2d = conv without bias + batch norm."""

    def b(cin: int, cout: int, kh: int, kw: int | None = None) -> int:
        return _conv(cin, cout, kh, kw, bias=False) + 2 * cout

    stem = b(3, 32, 3) + b(32, 32, 3) + b(32, 64, 3) + b(64, 80, 1) + b(80, 192, 3)

    def block_a(cin: int, pool: int) -> int:
        five = b(cin, 48, 1) + b(48, 64, 5)
        double = b(cin, 64, 1) + b(64, 96, 3) + b(96, 96, 3)
        return b(cin, 64, 1) + five + double + b(cin, pool, 1)

    def block_c(c7: int) -> int:
        seven = b(768, c7, 1) + b(c7, c7, 1, 7) + b(c7, 192, 7, 1)
        double = b(768, c7, 1) + 3 * b(c7, c7, 7, 1) + b(c7, 192, 1, 7)
        return b(768, 192, 1) + seven + double + b(768, 192, 1)

    def block_e(cin: int) -> int:
        return (
            b(cin, 320, 1)
            + b(cin, 384, 1) + 2 * b(384, 384, 1, 3)
            + b(cin, 448, 1) + b(448, 384, 3) + 2 * b(384, 384, 1, 3)
            + b(cin, 192, 1)
        )  # fmt: skip

    a = block_a(192, 32) + block_a(256, 64) + block_a(288, 64)
    b6 = b(288, 384, 3) + b(288, 64, 1) + b(64, 96, 3) + b(96, 96, 3)
    c = block_c(128) + 2 * block_c(160) + block_c(192)
    d = b(768, 192, 1) + b(192, 320, 3)
    d += b(768, 192, 1) + b(192, 192, 1, 7) + b(192, 192, 7, 1) + b(192, 192, 3)
    e = block_e(1280) + block_e(2048)
    total = stem + a + b6 + c + d + e + _fc(2048, 1000)
    return total + (b(768, 128, 1) + b(128, 768, 5) + _fc(768, 1000) if aux else 0)


def gpt2_count(n_layer: int, d: int, vocab: int = 50257, n_ctx: int = 1024) -> int:
    """Radford et al. 2019: per block 2 LayerNorms (4d), QKV and output projections (4d^2 + 4d), MLP
    (8d^2 + 5d); plus token and position embeddings and the final LayerNorm; the head is tied."""
    return n_layer * (12 * d * d + 13 * d) + vocab * d + n_ctx * d + 2 * d


FULL_COUNTS = [
    # name, knobs, formula, published figure
    ("alexnet", {}, alexnet_count(), 61.1e6),
    ("vgg16", {}, vgg16_count(), 138.4e6),
    ("resnet50", {}, resnet50_count(), 25.6e6),
    ("inception_v3", {}, inception_v3_count(), 23.8e6),
    ("inception_v3", {"aux_logits": True}, inception_v3_count(aux=True), 27.2e6),
    ("gpt2", {}, gpt2_count(12, 768), 124e6),
    ("gpt2", {"n_layer": 48, "n_embd": 1600, "n_head": 25}, gpt2_count(48, 1600), 1.56e9),
]


@pytest.mark.parametrize(("name", "knobs", "formula", "published"), FULL_COUNTS)
def test_full_size_parameter_count_matches_published(
    name: str, knobs: dict[str, object], formula: int, published: float
) -> None:
    assert math.isclose(formula, published, rel_tol=0.01)  # the formula is the paper's network
    count = n_params(zoo.build(name, device="meta", **knobs).model)
    assert math.isclose(count, formula, rel_tol=0.01), (name, count, formula)


# -- meta builds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.NAMES)
def test_meta_build_puts_everything_on_meta(name: str) -> None:
    zm = zoo.build(name, batch_size=4, device="meta")
    tensors = [*zm.model.parameters(), *zm.model.buffers(), *zm.example_inputs, zm.targets]
    assert tensors and all(t.is_meta for t in tensors)
    assert zm.example_inputs[0].shape[0] == 4


def _resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_meta_build_of_gpt2_xl_allocates_no_parameter_memory() -> None:
    before = _resident_bytes()
    zm = zoo.build("gpt2", device="meta", n_layer=48, n_embd=1600, n_head=25)
    grown = _resident_bytes() - before
    assert n_params(zm.model) > 1.5e9  # 6 GB in float32 if it were allocated
    assert grown < 200 * 2**20


# -- the registry --------------------------------------------------------------------------------------


def test_names() -> None:
    assert zoo.NAMES == ("alexnet", "vgg16", "googlenet", "inception_v3", "resnet50", "gnmt", "gpt2")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        zoo.build("resnet18")


def test_unknown_knob_lists_valid_knobs() -> None:
    with pytest.raises(ValueError, match="n_embd") as info:
        zoo.build("gpt2", size="small", hidden=3)
    assert "hidden" in str(info.value)


def test_unknown_size_and_bad_batch_raise() -> None:
    with pytest.raises(ValueError, match="small"):
        zoo.build("vgg16", size="medium")
    with pytest.raises(ValueError, match="batch_size"):
        zoo.build("vgg16", size="small", batch_size=0)


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("alexnet", {"image_size": 32}),
        ("vgg16", {"image_size": 16}),
        ("inception_v3", {"image_size": 64}),
        ("inception_v3", {"image_size": 107, "aux_logits": True}),
        ("gpt2", {"seq_len": 64}),
        ("gnmt", {"attention": "multiplicative"}),
    ],
)
def test_impossible_knob_values_raise(name: str, knobs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        zoo.build(name, size="small", device="meta", **knobs)


def test_knobs_override_the_size_defaults() -> None:
    zm = zoo.build("resnet50", batch_size=3, size="small", num_classes=7, layers=(2, 1, 1, 1))
    assert zm.config["num_classes"] == 7 and len(zm.model.layer1) == 2
    assert tuple(zm.model(*zm.example_inputs).shape) == (3, 7)
    assert zm.targets.shape == (3,) and int(zm.targets.max()) < 7


def test_width_multiplier_keeps_at_least_one_channel() -> None:
    zm = zoo.build("vgg16", size="small", device="meta", width=1e-4)
    convs = [m for m in zm.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and all(c.out_channels == 1 for c in convs)


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = small("gpt2", seed=5), small("gpt2", seed=5)
    other = small("gpt2", seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.example_inputs[0], second.example_inputs[0])
    assert torch.equal(first.targets, second.targets)
    for (_, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b)
    assert not torch.equal(first.model.wte.weight, other.model.wte.weight)


def test_sequence_targets_are_the_next_tokens() -> None:
    zm = small("gpt2", batch_size=1)
    assert torch.equal(zm.example_inputs[0][:, 1:], zm.targets[:, :-1])
    zm = small("gnmt", batch_size=1)
    assert torch.equal(zm.example_inputs[1][:, 1:], zm.targets[:, :-1])
