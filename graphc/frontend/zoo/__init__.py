"""The benchmark network zoo: the networks that device-placement papers evaluate on, ready to trace.

AlexNet, VGG-16, GoogLeNet, Inception-v3 and ResNet-50 (image classification), a GNMT-style LSTM translation
model with an unrolled decoder, and a GPT-2-style Transformer, each written from its paper with knobs
for batch size and size. :func:`build` returns a :class:`ZooModel`: the module in train mode, example
inputs, and a training loss against fixed targets, so that a benchmark can trace, place and train any
of them the same way::

    zm = build("resnet50", batch_size=32)                 # the published configuration
    zm = build("gpt2", size="small", dropout=0.0)         # a tiny one of the same shape, for tests
    zm = build("gpt2", device="meta", n_layer=48, n_embd=1600, n_head=25)  # GPT-2 XL, no memory
    zm.loss(zm.model(*zm.example_inputs)).backward()

The networks the GTC 2016 talk timed on Big Sur are knobs of these: AlexNet with batch norm is
``build("alexnet", batch_norm=True)``, its link-stressing VGG ``build("vgg16", hidden_size=8192)``
(:class:`VGG16` says why), GoogLeNet ``build("googlenet")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphc.frontend.zoo.alexnet import AlexNet
from graphc.frontend.zoo.gnmt import GNMT
from graphc.frontend.zoo.googlenet import GoogLeNet
from graphc.frontend.zoo.gpt2 import GPT2
from graphc.frontend.zoo.inception import InceptionV3
from graphc.frontend.zoo.resnet import ResNet50
from graphc.frontend.zoo.vgg import VGG16
from graphc.ir.errors import ConfigurationError

Config = dict[str, Any]
Data = tuple[tuple[torch.Tensor, ...], torch.Tensor]

SIZES = ("full", "small")


@dataclass
class ZooModel:
    """A zoo network ready to trace and train.

    Attributes:
        name: the registry name (``"resnet50"``, ...).
        model: the module, in train mode.
        example_inputs: positional inputs of ``model`` for ``batch_size`` samples.
        batch_size: the batch size of ``example_inputs`` and ``targets``.
        targets: class ids (image networks, shape (B,)) or next-token ids (gnmt, gpt2, shape (B, T))
            that :meth:`loss` scores the output against; fixed by the seed.
        config: every knob the network was built with (defaults of the size, then overrides).
        aux_weight: weight of an auxiliary classifier's loss (Inception-v3 with ``aux_logits``).
    """

    name: str
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    batch_size: int
    targets: torch.Tensor
    config: Config = field(default_factory=dict)
    aux_weight: float = 0.3

    def loss(self, output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Scalar training loss: mean cross-entropy of the logits against :attr:`targets`.

        Sequence logits (B, T, V) are scored token by token. A tuple output (main logits, then auxiliary
        logits) adds each auxiliary loss times :attr:`aux_weight`, as GoogLeNet (Szegedy et al. 2015)
        trained its auxiliary classifiers.
        """
        outputs = output if isinstance(output, tuple) else (output,)
        targets = self.targets.reshape(-1)
        total = F.cross_entropy(outputs[0].reshape(-1, outputs[0].shape[-1]), targets)
        for aux in outputs[1:]:
            total = total + self.aux_weight * F.cross_entropy(aux.reshape(-1, aux.shape[-1]), targets)
        return total


@dataclass(frozen=True)
class _Spec:
    """How to build one network: its knobs per size, its constructor, and its example data."""

    sizes: dict[str, Config]
    make_model: Callable[[Config], nn.Module]
    make_data: Callable[[Config, int, Callable[..., torch.Tensor]], Data]


def _image_data(config: Config, batch: int, draw: Callable[..., torch.Tensor]) -> Data:
    side = config["image_size"]
    images = draw((batch, 3, side, side), torch.float32)
    return (images,), draw((batch,), torch.int64, high=config["num_classes"])


def _gnmt_data(config: Config, batch: int, draw: Callable[..., torch.Tensor]) -> Data:
    vocab = config["vocab_size"]
    source = draw((batch, config["source_len"]), torch.int64, high=vocab)
    sentence = draw((batch, config["target_len"] + 1), torch.int64, high=vocab)
    return (source, sentence[:, :-1]), sentence[:, 1:]


def _gpt2_data(config: Config, batch: int, draw: Callable[..., torch.Tensor]) -> Data:
    text = draw((batch, config["seq_len"] + 1), torch.int64, high=config["vocab_size"])
    return (text[:, :-1],), text[:, 1:]


def _gpt2_model(config: Config) -> nn.Module:
    model_knobs = {k: v for k, v in config.items() if k != "seq_len"}
    if config["seq_len"] > config["n_positions"]:
        raise ConfigurationError(f"gpt2: seq_len={config['seq_len']} exceeds n_positions={config['n_positions']}")
    return GPT2(**model_knobs)


# "small" keeps each architecture whole and shrinks it with the width multiplier, fewer blocks and small
# inputs; in the networks with batch norm, every feature map stays at least 2x2 so that they train at
# batch size 1.
_SPECS: dict[str, _Spec] = {
    "alexnet": _Spec(
        sizes={
            "full": dict(num_classes=1000, image_size=224, width=1.0, dropout=0.5, batch_norm=False),
            "small": dict(num_classes=10, image_size=64, width=0.125, dropout=0.5, batch_norm=False),
        },
        make_model=lambda c: AlexNet(**c),
        make_data=_image_data,
    ),
    "vgg16": _Spec(
        sizes={
            "full": dict(num_classes=1000, image_size=224, width=1.0, batch_norm=False, dropout=0.5, hidden_size=4096),
            "small": dict(num_classes=10, image_size=32, width=0.0625, batch_norm=False, dropout=0.5, hidden_size=4096),
        },
        make_model=lambda c: VGG16(**c),
        make_data=_image_data,
    ),
    "googlenet": _Spec(
        sizes={
            "full": dict(num_classes=1000, image_size=224, width=1.0, dropout=0.4),
            "small": dict(num_classes=10, image_size=64, width=0.0625, dropout=0.4),
        },
        make_model=lambda c: GoogLeNet(**c),
        make_data=_image_data,
    ),
    "inception_v3": _Spec(
        sizes={
            "full": dict(num_classes=1000, image_size=299, width=1.0, aux_logits=False, dropout=0.5),
            "small": dict(num_classes=10, image_size=107, width=0.0625, aux_logits=False, dropout=0.5),
        },
        make_model=lambda c: InceptionV3(**c),
        make_data=_image_data,
    ),
    "resnet50": _Spec(
        sizes={
            "full": dict(num_classes=1000, image_size=224, width=1.0, layers=(3, 4, 6, 3)),
            "small": dict(num_classes=10, image_size=64, width=0.125, layers=(1, 1, 1, 1)),
        },
        make_model=lambda c: ResNet50(**c),
        make_data=_image_data,
    ),
    "gnmt": _Spec(
        sizes={
            "full": dict(
                vocab_size=32000, hidden_size=1024, num_layers=4, source_len=50, target_len=50,
                attention="additive", dropout=0.2,
            ),
            "small": dict(
                vocab_size=64, hidden_size=16, num_layers=3, source_len=6, target_len=5,
                attention="additive", dropout=0.2,
            ),
        },  # fmt: skip
        make_model=lambda c: GNMT(**c),
        make_data=_gnmt_data,
    ),
    "gpt2": _Spec(
        sizes={
            "full": dict(
                vocab_size=50257, n_layer=12, n_embd=768, n_head=12, n_positions=1024, seq_len=1024,
                dropout=0.1,
            ),
            "small": dict(
                vocab_size=128, n_layer=2, n_embd=32, n_head=4, n_positions=16, seq_len=16, dropout=0.1
            ),
        },  # fmt: skip
        make_model=_gpt2_model,
        make_data=_gpt2_data,
    ),
}

#: The names :func:`build` accepts.
NAMES: tuple[str, ...] = tuple(_SPECS)


def defaults(name: str, size: str = "full") -> Config:
    """The knobs of network ``name`` at ``size`` ("full": as published, "small": tiny, for tests)."""
    if name not in _SPECS:
        raise ConfigurationError(f"unknown zoo network {name!r}; valid names: {', '.join(NAMES)}")
    if size not in SIZES:
        raise ConfigurationError(f"unknown size {size!r} for {name!r}; valid sizes: {', '.join(SIZES)}")
    return dict(_SPECS[name].sizes[size])


def build(
    name: str,
    batch_size: int = 1,
    size: str = "full",
    device: str | torch.device = "cpu",
    seed: int = 0,
    **knobs: Any,
) -> ZooModel:
    """Build zoo network ``name`` with example inputs of ``batch_size`` samples and fixed targets.

    ``size`` picks the published configuration ("full") or a tiny one of the same architecture
    ("small", forward and backward well under a second on a CPU); ``knobs`` override either (see
    :func:`defaults` for each network's knobs). Weights, inputs and targets depend only on ``seed``;
    the global random state is left as it was. ``device="meta"`` builds parameters, buffers and inputs
    on the meta device without allocating their memory (the values are then undefined).

    Raises:
        ValueError: for an unknown name, size or knob, a batch size below 1, or knob values the
            network cannot take (an image too small for its pooling, say).
    """
    config = defaults(name, size)
    unknown = sorted(set(knobs) - set(config))
    if unknown:
        raise ConfigurationError(f"unknown knob(s) {unknown} for {name!r}; valid knobs: {', '.join(config)}")
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    config.update(knobs)
    spec = _SPECS[name]
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if device.type == "meta":
            with torch.device("meta"):
                model = spec.make_model(config)
        else:
            model = spec.make_model(config).to(device)
    inputs, targets = spec.make_data(config, batch_size, _drawer(device, seed))
    return ZooModel(name, model.train(), inputs, batch_size, targets, config)


def _drawer(device: torch.device, seed: int) -> Callable[..., torch.Tensor]:
    """A function drawing seeded random tensors (normal floats, or integers below ``high``)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(shape: tuple[int, ...], dtype: torch.dtype, high: int = 0) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(shape, dtype=dtype, device=device)
        if dtype.is_floating_point:
            return torch.randn(shape, generator=generator, dtype=dtype).to(device)
        return torch.randint(high, shape, generator=generator, dtype=dtype).to(device)

    return draw


@dataclass(frozen=True)
class ZooLoss:
    """``loss_fn(outputs, targets)``: a zoo network's training loss (:meth:`ZooModel.loss`)
    against given targets, without the model: what an executor's ``loss_fn`` needs."""

    name: str
    config: dict[str, Any]
    aux_weight: float

    def __call__(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        scorer = ZooModel(self.name, nn.Identity(), (), int(targets.shape[0]), targets, self.config, self.aux_weight)
        return scorer.loss(outputs)


def zoo_loss(zoo_model: ZooModel) -> ZooLoss:
    """The :class:`ZooLoss` of ``zoo_model``."""
    return ZooLoss(zoo_model.name, dict(zoo_model.config), zoo_model.aux_weight)


__all__ = [
    "GNMT", "GPT2", "NAMES", "SIZES", "AlexNet", "GoogLeNet", "InceptionV3", "ResNet50", "VGG16", "ZooLoss", "ZooModel", "build",
    "defaults", "zoo_loss",
]  # fmt: skip
