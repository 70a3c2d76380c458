"""Building blocks shared by the convolutional networks of the zoo.

Kept in one place so that the width multiplier, the output-size arithmetic and the conv-BN-ReLU unit
mean the same thing in every network.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from graphc.ir.errors import ConfigurationError

IntPair = int | tuple[int, int]


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier ``width``, rounded, and at least 1.

    The width multiplier is how the zoo shrinks a published network for tests while keeping its
    topology (the same trick as MobileNets' alpha, Howard et al. 2017).
    """
    if width <= 0:
        raise ConfigurationError(f"width multiplier must be positive, got {width}")
    return max(1, int(round(channels * width)))


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution or pooling window (floor mode, no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1


def require_size(network: str, image_size: int, final: int, minimum: int | None = None) -> None:
    """Raise ValueError when ``image_size`` leaves a spatial size below 1 (or ``minimum``) somewhere."""
    if final < 1 or (minimum is not None and image_size < minimum):
        hint = f" (at least {minimum})" if minimum is not None else ""
        raise ConfigurationError(f"{network}: image_size={image_size} is too small for the network{hint}")


class ConvBNReLU(nn.Module):
    """Convolution, batch normalisation and ReLU: the unit of Inception-v3 (its ``BasicConv2d``),
    of the ResNet stem and of VGG with batch norm (Ioffe & Szegedy 2015, "Batch Normalization").

    ``batch_norm=False`` gives conv + ReLU (plain VGG, AlexNet); ``relu=False`` gives conv + BN (the last
    convolution of a ResNet bottleneck, whose ReLU comes after the residual sum). The convolution has a
    bias only when there is no batch norm to absorb it, unless ``bias`` says otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        *,
        batch_norm: bool = True,
        relu: bool = True,
        eps: float = 1e-5,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            bias=(not batch_norm) if bias is None else bias,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=eps) if batch_norm else None
        self.relu = nn.ReLU(inplace=False) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x
