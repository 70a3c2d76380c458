"""AlexNet, the one-GPU variant (Krizhevsky 2014, "One weird trick for parallelizing convolutional
neural networks"), of the network of Krizhevsky, Sutskever & Hinton 2012 ("ImageNet Classification with
Deep Convolutional Neural Networks").

Five convolutions of 64/192/384/256/256 channels and three fully connected layers with dropout:
61.1M parameters at 224x224 and 1000 classes. PipeDream and the device-placement papers use it as a
network whose parameters sit almost all in the classifier while the compute sits in the convolutions.

``batch_norm=True`` gives AlexNet with batch normalisation, the network the GTC 2016 talk timed on Big
Sur (batch 1024): batch norm (eps 0.001) after each convolution and after the two hidden fully connected
layers, as Torch's ``alexnetowtbn`` of the imagenet-multiGPU.torch examples has it (from memory of that
model; the talk names only "AlexNet with batch norm"). Every convolution and linear keeps its bias, as
Torch's layers did.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from graphc.frontend.zoo.common import ConvBNReLU, conv_out, require_size, scaled


BN_EPS = 1e-3  # alexnetowtbn's batch norm epsilon


def _hidden_layer(in_features: int, out_features: int, batch_norm: bool) -> list[nn.Module]:
    """A hidden fully connected layer: linear, batch norm when asked, ReLU."""
    norm = [nn.BatchNorm1d(out_features, eps=BN_EPS)] if batch_norm else []
    return [nn.Linear(in_features, out_features), *norm, nn.ReLU(inplace=False)]


def feature_size(image_size: int) -> int:
    """Side of the last feature map of AlexNet for a square ``image_size`` input (6 at 224)."""
    size = conv_out(image_size, 11, 4, 2)
    size = conv_out(size, 3, 2)
    size = conv_out(size, 3, 2)
    return conv_out(size, 3, 2)


class AlexNet(nn.Module):
    """AlexNet (one-GPU variant) for ``image_size`` x ``image_size`` RGB images.

    ``width`` scales every convolution's channels and the 4096-wide hidden layers; ``batch_norm`` adds
    batch normalisation (module docstring). The classifier's
    input size follows the feature map that ``image_size`` produces (6x6 at 224), so small images give
    a small network of the same shape rather than an upsampled one.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        width: float = 1.0,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        side = feature_size(image_size)
        require_size("alexnet", image_size, side, minimum=63)
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 192, 384, 256, 256))
        hidden = scaled(4096, width)
        self.features = nn.Sequential(
            ConvBNReLU(3, c1, 11, stride=4, padding=2, batch_norm=batch_norm, eps=BN_EPS, bias=True),
            nn.MaxPool2d(3, stride=2),
            ConvBNReLU(c1, c2, 5, padding=2, batch_norm=batch_norm, eps=BN_EPS, bias=True),
            nn.MaxPool2d(3, stride=2),
            ConvBNReLU(c2, c3, 3, padding=1, batch_norm=batch_norm, eps=BN_EPS, bias=True),
            ConvBNReLU(c3, c4, 3, padding=1, batch_norm=batch_norm, eps=BN_EPS, bias=True),
            ConvBNReLU(c4, c5, 3, padding=1, batch_norm=batch_norm, eps=BN_EPS, bias=True),
            nn.MaxPool2d(3, stride=2),
        )
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            *_hidden_layer(c5 * side * side, hidden, batch_norm),
            nn.Dropout(dropout),
            *_hidden_layer(hidden, hidden, batch_norm),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(images)))
