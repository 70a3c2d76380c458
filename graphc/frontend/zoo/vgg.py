"""VGG-16, configuration D of Simonyan & Zisserman 2015 ("Very Deep Convolutional Networks for
Large-Scale Image Recognition").

Thirteen 3x3 convolutions in five stages separated by 2x2 max pooling, then three fully connected
layers: 138.4M parameters at 224x224 and 1000 classes. A staple of PipeDream and of the placement
papers because its activations are large early and its parameters large late.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from graphc.frontend.zoo.common import ConvBNReLU, require_size, scaled

#: Configuration D: output channels of each 3x3 convolution, "M" for a 2x2 max pool.
CONFIG_D: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def feature_size(image_size: int, config: tuple[int | str, ...] = CONFIG_D) -> int:
    """Side of the last feature map for a square ``image_size`` input (7 at 224)."""
    size = image_size
    for item in config:
        if item == "M":
            size //= 2
    return size


class VGG16(nn.Module):
    """VGG-16 (configuration D) for ``image_size`` x ``image_size`` RGB images.

    ``width`` scales the channels of every convolution (at least 1) and the hidden layers, which are
    ``hidden_size`` wide (4096 as published); ``batch_norm=True`` inserts batch normalisation after each
    convolution (the later "vgg16_bn" variant). The classifier's input size follows the feature map that
    ``image_size`` produces.

    A wider ``hidden_size`` adds parameters, and so gradient bytes to synchronise, at almost no compute:
    ``hidden_size=8192`` is the zoo's "vggstress" (the talk's VGG "stressing the links", which it does not
    describe): 2.1x VGG-16's parameters (295.6M against 138.4M) for 1.01x its FLOPs (the fully connected
    layers do 0.8% of VGG-16's multiply-adds, 1.8% at 8192).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        width: float = 1.0,
        batch_norm: bool = False,
        dropout: float = 0.5,
        hidden_size: int = 4096,
    ) -> None:
        super().__init__()
        side = feature_size(image_size)
        require_size("vgg16", image_size, side, minimum=32)
        layers: list[nn.Module] = []
        channels = 3
        for item in CONFIG_D:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                out = scaled(int(item), width)
                layers.append(ConvBNReLU(channels, out, 3, padding=1, batch_norm=batch_norm, bias=True))
                channels = out
        hidden = scaled(hidden_size, width)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(images)))
