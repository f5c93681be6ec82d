"""The zoo's networks (torch); imported when a model is built, never at start-up."""
from __future__ import annotations

import math

import torch
from torch import nn


class ZooModel(nn.Module):
    """A classifier split into `features` (up to the penultimate layer) and `classifier`.

    Inputs are reshaped to the declared input shape, so a model accepts either flat feature
    vectors or images with the same number of values.
    """

    def __init__(self, features: nn.Module, classifier: nn.Module, input_shape: list[int]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.features = features
        self.classifier = classifier

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def mlp_net(input_shape: list[int], num_classes: int, hidden: list[int], drop_rate: float) -> ZooModel:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(p=drop_rate)]
        width = size
    return ZooModel(nn.Sequential(*layers), nn.Linear(width, num_classes), input_shape)


def cnn_net(input_shape: list[int], num_classes: int, channels: int) -> ZooModel:
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return ZooModel(features, nn.Linear(2 * channels, num_classes), input_shape)


def resnet18_net(input_shape: list[int], num_classes: int) -> ZooModel:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    if input_shape[0] != 3:
        net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    classifier = net.fc
    net.fc = nn.Identity()
    return ZooModel(net, classifier, input_shape)


def mobilenet_v3_small_net(input_shape: list[int], num_classes: int) -> ZooModel:
    from torchvision.models import mobilenet_v3_small

    net = mobilenet_v3_small(weights=None, num_classes=num_classes)
    if input_shape[0] != 3:
        first = net.features[0][0]
        net.features[0][0] = nn.Conv2d(input_shape[0], first.out_channels, kernel_size=3, stride=2,
                                       padding=1, bias=False)
    classifier = net.classifier
    net.classifier = nn.Identity()
    return ZooModel(net, classifier, input_shape)


def smoke_output(model: nn.Module, input_shape: list[int]) -> torch.Tensor:
    """The output for a dummy batch of one (eval mode, no gradients)."""
    model.eval()
    with torch.no_grad():
        return model(torch.zeros(1, *input_shape))
