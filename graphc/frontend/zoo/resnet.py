"""ResNet-50 of He, Zhang, Ren & Sun 2016 ("Deep Residual Learning for Image Recognition").

A 7x7 stem, then four stages of bottleneck blocks ([3, 4, 6, 3] by default, expansion 4) and a global
average pool: 25.6M parameters at 1000 classes. The stride of a downsampling block sits on its 3x3
convolution (the common "v1.5" form); the parameter count is the paper's either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from graphc.frontend.zoo.common import ConvBNReLU, scaled
from graphc.ir.errors import ConfigurationError

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (each with batch norm), added to the shortcut, then ReLU.

    The shortcut is a 1x1 convolution with batch norm when the block changes resolution or width
    (projection shortcut, option B of the paper), the identity otherwise.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1 = ConvBNReLU(in_channels, planes, 1)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride=stride, padding=1)
        self.conv3 = ConvBNReLU(planes, out_channels, 1, relu=False)
        self.downsample = (
            ConvBNReLU(in_channels, out_channels, 1, stride=stride, relu=False)
            if stride != 1 or in_channels != out_channels
            else None
        )
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class ResNet50(nn.Module):
    """ResNet-50 for ``image_size`` x ``image_size`` RGB images.

    ``layers`` gives the number of bottleneck blocks of the four stages (``(1, 1, 1, 1)`` for a tiny
    network of the same shape); ``width`` scales every channel count. ``image_size`` only sets the
    example input: the global average pool makes the network itself independent of it.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        width: float = 1.0,
        layers: Sequence[int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ConfigurationError(f"resnet50: layers must be four positive block counts, got {tuple(layers)}")
        if image_size < 1:
            raise ConfigurationError(f"resnet50: image_size must be positive, got {image_size}")
        stem = scaled(64, width)
        self.stem = ConvBNReLU(3, stem, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem
        stages: list[nn.Sequential] = []
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            planes = scaled(planes, width)
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(int(blocks)):
                stage.append(Bottleneck(channels, planes, stride if block == 0 else 1))
                channels = planes * EXPANSION
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(images))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))
