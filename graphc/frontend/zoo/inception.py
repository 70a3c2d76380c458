"""Inception-v3 of Szegedy, Vanhoucke, Ioffe, Shlens & Wojna 2016 ("Rethinking the Inception
Architecture for Computer Vision"), of the GoogLeNet family (Szegedy et al. 2015).

A convolutional stem, then the grid modules InceptionA x3 (35x35), B (reduction to 17x17), C x4
(factorised 7x7), D (reduction to 8x8) and E x2 (expanded filter banks), global average pooling and a
classifier: 23.8M parameters without the auxiliary classifier, 27.2M with it, at 1000 classes. The
network of Mirhoseini et al. 2017 ("Device Placement Optimization with Reinforcement Learning") and of
most placement papers since, because its branches can run in parallel on different devices.

Every convolution is a :class:`BasicConv2d` (conv without bias, batch norm with eps 0.001, ReLU).
``width`` scales every channel count; block output widths are the sums of their scaled branches.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from graphc.frontend.zoo.common import ConvBNReLU, IntPair, conv_out, require_size, scaled
from graphc.ir.errors import ConfigurationError


class BasicConv2d(ConvBNReLU):
    """Inception-v3's unit: convolution without bias, batch norm with eps 0.001, ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: int = 1, padding: IntPair = 0
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, eps=1e-3)


class InceptionA(nn.Module):
    """35x35 module: 1x1, 5x5, double 3x3 and pooled 1x1 branches, concatenated."""

    def __init__(self, in_channels: int, pool_features: int, width: float) -> None:
        super().__init__()
        c64, c48, c96 = scaled(64, width), scaled(48, width), scaled(96, width)
        pool = scaled(pool_features, width)
        self.branch1x1 = BasicConv2d(in_channels, c64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, c48, 1)
        self.branch5x5_2 = BasicConv2d(c48, c64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c64, 1)
        self.branch3x3dbl_2 = BasicConv2d(c64, c96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c96, c96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool, 1)
        self.out_channels = 2 * c64 + c96 + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17: strided 3x3, strided double 3x3 and max-pool branches."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c384, c64, c96 = scaled(384, width), scaled(64, width), scaled(96, width)
        self.branch3x3 = BasicConv2d(in_channels, c384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c64, 1)
        self.branch3x3dbl_2 = BasicConv2d(c64, c96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c96, c96, 3, stride=2)
        self.out_channels = c384 + c96 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, bd, bp], dim=1)


class InceptionC(nn.Module):
    """17x17 module with 7x7 convolutions factorised into 1x7 and 7x1 (``channels_7x7`` wide)."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float) -> None:
        super().__init__()
        c7, c192 = scaled(channels_7x7, width), scaled(192, width)
        self.branch1x1 = BasicConv2d(in_channels, c192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, c192, 1)
        self.out_channels = 4 * c192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8: strided 3x3, 7x7-then-strided-3x3 and max-pool branches."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c192, c320 = scaled(192, width), scaled(320, width)
        self.branch3x3_1 = BasicConv2d(in_channels, c192, 1)
        self.branch3x3_2 = BasicConv2d(c192, c320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, c192, 1)
        self.branch7x7x3_2 = BasicConv2d(c192, c192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c192, c192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c192, c192, 3, stride=2)
        self.out_channels = c320 + c192 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class InceptionE(nn.Module):
    """8x8 module with expanded filter banks: 3x3 branches split into parallel 1x3 and 3x1."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c320, c384, c448, c192 = (scaled(c, width) for c in (320, 384, 448, 192))
        self.branch1x1 = BasicConv2d(in_channels, c320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, c384, 1)
        self.branch3x3_2a = BasicConv2d(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c384, c384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c448, 1)
        self.branch3x3dbl_2 = BasicConv2d(c448, c384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c384, c384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, c192, 1)
        self.out_channels = c320 + 4 * c384 + c192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], dim=1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid (a regulariser during training, per the paper)."""

    def __init__(self, in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        c128, c768 = scaled(128, width), scaled(768, width)
        self.conv0 = BasicConv2d(in_channels, c128, 1)
        self.conv1 = BasicConv2d(c128, c768, 5)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, stride=3)))
        return self.fc(self.flatten(self.avgpool(x)))


def grid_sizes(image_size: int) -> tuple[int, int, int]:
    """Sides of the three grids (35, 17, 8 at 299) for a square ``image_size`` input."""
    size = conv_out(image_size, 3, 2)  # Conv2d_1a_3x3
    size = conv_out(size, 3)  # Conv2d_2a_3x3 (2b keeps the size)
    size = conv_out(size, 3, 2)  # max pool
    size = conv_out(size, 3)  # Conv2d_4a_3x3 (3b is 1x1)
    grid35 = conv_out(size, 3, 2)  # max pool
    grid17 = conv_out(grid35, 3, 2)  # Mixed_6a
    return grid35, grid17, conv_out(grid17, 3, 2)  # Mixed_7a


class InceptionV3(nn.Module):
    """Inception-v3 for ``image_size`` x ``image_size`` RGB images (299 as published, 75 at least).

    Returns the logits, or the pair ``(logits, aux_logits)`` when ``aux_logits`` is on (off by
    default; it needs a 17x17 grid of at least 17, i.e. images near 299). ``image_size`` only sets the
    example input and is checked here: the global average pool makes the weights independent of it.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 299,
        width: float = 1.0,
        aux_logits: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _, grid17, grid8 = grid_sizes(image_size)
        require_size("inception_v3", image_size, grid8, minimum=75)
        if aux_logits and conv_out(grid17, 5, 3) < 5:
            raise ConfigurationError(f"inception_v3: aux_logits needs a larger image than image_size={image_size}")
        c32, c64, c80, c192 = (scaled(c, width) for c in (32, 64, 80, 192))
        self.Conv2d_1a_3x3 = BasicConv2d(3, c32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c32, c32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(c32, c64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(c64, c80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c80, c192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(c192, 32, width)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, width)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, width)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, width)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, width)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, width)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, width)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, width)
        self.AuxLogits = (
            InceptionAux(self.Mixed_6e.out_channels, num_classes, width) if aux_logits else None
        )
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, width)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, width)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, width)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(self.Mixed_7c.out_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(images)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(self.maxpool2(x))))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        aux = self.AuxLogits(x) if self.AuxLogits is not None else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        logits = self.fc(self.flatten(self.dropout(self.avgpool(x))))
        return logits if aux is None else (logits, aux)
