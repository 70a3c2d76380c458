"""The networks of the talk's Big Sur table in the zoo: AlexNet with batch norm, the link-stressing VGG
("vggstress": VGG-16 with 8192-wide hidden layers) and GoogLeNet; parameter counts from the papers'
layer tables, and each traces at size "small" into a program equal to eager PyTorch."""

from __future__ import annotations

import itertools

import pytest
import torch

from graphc import trace, zoo
from graphc.frontend.zoo.googlenet import grid_sizes

BIGSUR = [("alexnet", {"batch_norm": True}), ("vgg16", {"hidden_size": 8192}), ("googlenet", {})]


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _fc(cin: int, cout: int) -> int:
    return cin * cout + cout


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_alexnet_batch_norm_adds_two_parameters_per_normalised_channel() -> None:
    plain = n_params(zoo.build("alexnet", device="meta").model)
    bn = zoo.build("alexnet", device="meta", batch_norm=True).model
    normalised = 64 + 192 + 384 + 256 + 256 + 4096 + 4096  # five convolutions, two hidden linears
    assert n_params(bn) == plain + 2 * normalised
    norms = [m for m in bn.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert [type(m).__name__ for m in norms] == ["BatchNorm2d"] * 5 + ["BatchNorm1d"] * 2
    assert all(m.eps == 1e-3 for m in norms)


def test_alexnet_batch_norm_normalises_over_the_batch_in_training() -> None:
    zm = zoo.build("alexnet", batch_size=4, size="small", batch_norm=True, dropout=0.0)
    first = zm.model(*zm.example_inputs)[:2]
    alone = zm.model(zm.example_inputs[0][:2])  # the same two images in a batch of their own
    assert not torch.allclose(first, alone, atol=1e-4)


def test_vggstress_has_the_wider_classifier_and_almost_the_same_flops() -> None:
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(_conv(a, b, 3) for a, b in itertools.pairwise(widths))
    expected = convs + _fc(512 * 7 * 7, 8192) + _fc(8192, 8192) + _fc(8192, 1000)
    stress = zoo.build("vgg16", device="meta", hidden_size=8192)
    assert n_params(stress.model) == expected == 295_553_832
    plain = zoo.build("vgg16", device="meta")
    assert n_params(stress.model) / n_params(plain.model) > 2.1

    def flops(zm: zoo.ZooModel) -> float:
        return trace(zm.model, zm.example_inputs, granularity="module").graph.total_fwd_flops()

    assert 1.0 < flops(stress) / flops(plain) < 1.02


def googlenet_count() -> int:
    """Szegedy et al. 2015, Table 1, with a bias on every convolution and on the classifier."""
    modules = [  # in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection
        (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64),
        (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64),
        (512, 112, 144, 288, 32, 64, 64), (528, 256, 160, 320, 32, 128, 128),
        (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128),
    ]  # fmt: skip
    total = _conv(3, 64, 7) + _conv(64, 64, 1) + _conv(64, 192, 3)
    for cin, c1, r3, c3, r5, c5, cp in modules:
        total += _conv(cin, c1, 1) + _conv(cin, r3, 1) + _conv(r3, c3, 3) + _conv(cin, r5, 1) + _conv(r5, c5, 5)
        total += _conv(cin, cp, 1)
    return total + _fc(1024, 1000)


def test_googlenet_is_the_papers_table() -> None:
    model = zoo.build("googlenet", device="meta").model
    assert n_params(model) == googlenet_count()
    assert abs(googlenet_count() / 6.8e6 - 1) < 0.035  # the table's own (rounded) total
    assert grid_sizes(224) == [112, 56, 28, 14, 7]
    assert [m.out_channels for m in model.inception if hasattr(m, "out_channels")] == [
        256, 480, 512, 512, 512, 528, 832, 832, 1024,
    ]  # fmt: skip


def test_googlenet_refuses_an_image_too_small_for_its_pools() -> None:
    zoo.build("googlenet", size="small", device="meta", image_size=47)
    with pytest.raises(ValueError, match="googlenet: image_size=46"):
        zoo.build("googlenet", size="small", device="meta", image_size=46)


@pytest.mark.parametrize(("name", "knobs"), BIGSUR)
def test_small_bigsur_network_traces_equal_to_eager(name: str, knobs: dict[str, object]) -> None:
    zm = zoo.build(name, batch_size=2, size="small", dropout=0.0, **knobs)
    program = trace(zm.model, zm.example_inputs, granularity="module")
    assert program.graph.meta["num_params"] == n_params(zm.model)
    eager = zm.model(*zm.example_inputs)
    traced = program(*zm.example_inputs)
    assert eager.shape == (2, 10)
    assert torch.allclose(traced, eager, rtol=1e-5, atol=1e-6)
    zm.loss(traced).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in zm.model.parameters())
