"""GoogLeNet (Inception v1) of Szegedy et al. 2015 ("Going Deeper with Convolutions"), the network the
GTC 2016 talk timed on Big Sur at batch 512.

A stem (7x7/2 convolution, max pool, local response normalisation, 1x1 and 3x3 convolutions, LRN, max
pool), nine inception modules (3a-3b, 4a-4e, 5a-5b; :data:`MODULES`, the paper's Table 1) with max pools
after 3b and 4e, global average pooling, dropout 0.4 and one linear classifier: 7.0M parameters at 1000
classes (the sum of the paper's Table 1 is 6.8M; its per-layer figures are rounded and some, such as the
first convolution's 2.7K for 7x7x3x64 = 9.4K weights, are not the layers' full weights). Every convolution is
conv + ReLU with a bias, as in the paper; the auxiliary classifiers are left out (they only train). Pools
round up (Caffe's convention, which the paper's 112 -> 56 -> 28 -> 14 -> 7 grid needs).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from graphc.frontend.zoo.common import ConvBNReLU, conv_out, require_size, scaled

#: Per inception module: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection (Table 1); None: max pool.
MODULES: tuple[tuple[int, int, int, int, int, int] | None, ...] = (
    (64, 96, 128, 16, 32, 32),  # 3a
    (128, 128, 192, 32, 96, 64),  # 3b
    None,
    (192, 96, 208, 16, 48, 64),  # 4a
    (160, 112, 224, 24, 64, 64),  # 4b
    (128, 128, 256, 24, 64, 64),  # 4c
    (112, 144, 288, 32, 64, 64),  # 4d
    (256, 160, 320, 32, 128, 128),  # 4e
    None,
    (256, 160, 320, 32, 128, 128),  # 5a
    (384, 192, 384, 48, 128, 128),  # 5b
)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> ConvBNReLU:
    return ConvBNReLU(cin, cout, kernel, stride, padding, batch_norm=False)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


def grid_sizes(image_size: int) -> list[int]:
    """Side of the feature map entering each of the four 3x3/2 max pools, then the last one's output
    (112, 56, 28, 14, 7 at 224)."""
    sizes = [conv_out(image_size, 7, 2, 3)]
    for _ in range(4):
        sizes.append(-(-(sizes[-1] - 3) // 2) + 1)  # ceil mode
    return sizes


class InceptionV1(nn.Module):
    """One inception module: 1x1, 1x1 -> 3x3, 1x1 -> 5x5 and 3x3 max pool -> 1x1 branches, concatenated."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], width: float) -> None:
        super().__init__()
        c1, r3, c3, r5, c5, cp = (scaled(c, width) for c in widths)
        self.branch1x1 = _conv(in_channels, c1, 1)
        self.branch3x3 = nn.Sequential(_conv(in_channels, r3, 1), _conv(r3, c3, 3, padding=1))
        self.branch5x5 = nn.Sequential(_conv(in_channels, r5, 1), _conv(r5, c5, 5, padding=2))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv(in_channels, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch5x5, self.branch_pool)
        return torch.cat([b(x) for b in branches], dim=1)


class GoogLeNet(nn.Module):
    """GoogLeNet for ``image_size`` x ``image_size`` RGB images (224 as published; at least 47, where
    every max pool still gets a 3x3 window).

    ``width`` scales every channel count. ``image_size`` only sets the example input and is checked
    here: the global average pool makes the weights independent of it.
    """

    def __init__(self, num_classes: int = 1000, image_size: int = 224, width: float = 1.0, dropout: float = 0.4) -> None:
        super().__init__()
        sizes = grid_sizes(image_size)
        require_size("googlenet", image_size, min(sizes[:-1]) - 2)
        c64, c192 = scaled(64, width), scaled(192, width)
        self.stem = nn.Sequential(
            _conv(3, c64, 7, stride=2, padding=3),
            _pool(),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75),
            _conv(c64, c64, 1),
            _conv(c64, c192, 3, padding=1),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75),
            _pool(),
        )
        layers: list[nn.Module] = []
        channels = c192
        for widths in MODULES:
            if widths is None:
                layers.append(_pool())
                continue
            module = InceptionV1(channels, widths, width)
            layers.append(module)
            channels = module.out_channels
        self.inception = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.inception(self.stem(images))
        return self.fc(self.dropout(self.flatten(self.avgpool(x))))
