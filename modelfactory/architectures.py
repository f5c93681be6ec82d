"""The architecture zoo: name -> builder + parameter schema (torch only, no Avalanche)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from claas_site.errors import InvalidInput
from claas_site.params import Param, Registry

ARCHITECTURES = Registry("architecture")

MAX_INPUT_NUMEL = 3 * 512 * 512


def _common(input_shape: list[int], num_classes: int = 10) -> tuple[Param, ...]:
    return (
        Param("num_classes", "int", num_classes, "Number of output classes.", min=2, max=100_000),
        Param("input_shape", "int_list", input_shape,
              "Shape of one input without the batch dimension, e.g. [64] or [1, 8, 8].",
              min=1, max=100_000),
    )


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


def _mlp(input_shape: list[int], num_classes: int, hidden: list[int], drop_rate: float) -> ZooModel:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(p=drop_rate)]
        width = size
    return ZooModel(nn.Sequential(*layers), nn.Linear(width, num_classes), input_shape)


@ARCHITECTURES.register(
    "simple_mlp",
    help="Fully connected network with equal hidden layers and dropout (Avalanche's SimpleMLP).",
    params=_common([64]) + (
        Param("hidden_size", "int", 128, "Units per hidden layer.", min=1, max=65536),
        Param("hidden_layers", "int", 1, "Number of hidden layers.", min=1, max=16),
        Param("drop_rate", "float", 0.5, "Dropout probability after each hidden layer.", min=0.0, max=0.95),
    ),
)
def simple_mlp(*, num_classes: int, input_shape: list[int], hidden_size: int, hidden_layers: int,
               drop_rate: float) -> nn.Module:
    return _mlp(input_shape, num_classes, [hidden_size] * hidden_layers, drop_rate)


@ARCHITECTURES.register(
    "mlp",
    help="Fully connected network with one size per hidden layer.",
    params=_common([64]) + (
        Param("hidden_layers", "int_list", [256, 128], "Units of each hidden layer.", min=1, max=65536),
        Param("drop_rate", "float", 0.0, "Dropout probability after each hidden layer.", min=0.0, max=0.95),
    ),
)
def mlp(*, num_classes: int, input_shape: list[int], hidden_layers: list[int], drop_rate: float) -> nn.Module:
    return _mlp(input_shape, num_classes, hidden_layers, drop_rate)


def _channels(input_shape: list[int], name: str) -> int:
    if len(input_shape) != 3:
        raise InvalidInput(f"{name} needs input_shape [channels, height, width], got {input_shape}.",
                           details={"input_shape": input_shape})
    return input_shape[0]


@ARCHITECTURES.register(
    "simple_cnn",
    help="Two convolution blocks and a linear head; works for any image size.",
    params=_common([1, 8, 8]) + (
        Param("channels", "int", 32, "Filters in the first block (the second has twice as many).", min=1, max=1024),
    ),
)
def simple_cnn(*, num_classes: int, input_shape: list[int], channels: int) -> nn.Module:
    c_in = _channels(input_shape, "simple_cnn")
    features = nn.Sequential(
        nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return ZooModel(features, nn.Linear(2 * channels, num_classes), input_shape)


@ARCHITECTURES.register(
    "resnet18",
    help="torchvision ResNet-18, randomly initialised (no pretrained weights are downloaded).",
    params=_common([3, 32, 32]),
)
def resnet18(*, num_classes: int, input_shape: list[int]) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    c_in = _channels(input_shape, "resnet18")
    net = tv_resnet18(weights=None, num_classes=num_classes)
    if c_in != 3:
        net.conv1 = nn.Conv2d(c_in, 64, kernel_size=7, stride=2, padding=3, bias=False)
    classifier = net.fc
    net.fc = nn.Identity()
    return ZooModel(net, classifier, input_shape)


@ARCHITECTURES.register(
    "mobilenet_v3_small",
    help="torchvision MobileNetV3-Small, randomly initialised (no pretrained weights are downloaded).",
    params=_common([3, 32, 32]),
)
def mobilenet_v3_small(*, num_classes: int, input_shape: list[int]) -> nn.Module:
    from torchvision.models import mobilenet_v3_small as tv_mobilenet

    c_in = _channels(input_shape, "mobilenet_v3_small")
    net = tv_mobilenet(weights=None, num_classes=num_classes)
    if c_in != 3:
        first = net.features[0][0]
        net.features[0][0] = nn.Conv2d(c_in, first.out_channels, kernel_size=3, stride=2,
                                       padding=1, bias=False)
    classifier = net.classifier
    net.classifier = nn.Identity()
    return ZooModel(net, classifier, input_shape)


def architecture_params(*, architecture: Any, params: Any, where: str = "model") -> dict[str, Any]:
    """Validate an architecture's parameters; the result has every default filled."""
    entry = ARCHITECTURES.get(architecture, f"{where}.architecture")
    full = entry.validate(params, f"{where}.params")
    if math.prod(full["input_shape"]) > MAX_INPUT_NUMEL:
        raise InvalidInput(f"{where}.params.input_shape is too large (at most {MAX_INPUT_NUMEL} values).",
                           details={"input_shape": full["input_shape"]})
    return full


def architecture_build(*, architecture: str, params: dict[str, Any]) -> nn.Module:
    """Instantiate a model; `params` must come from architecture_params()."""
    return ARCHITECTURES.get(architecture, "model.architecture").builder(**params)


def architecture_smoke_test(*, model: nn.Module, params: dict[str, Any]) -> None:
    """Run one forward pass on a dummy batch; the output must have num_classes columns."""
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *params["input_shape"]))
    if out.ndim != 2 or out.shape[1] != params["num_classes"]:
        raise InvalidInput(
            f"The model's output has shape {tuple(out.shape)}, expected (batch, {params['num_classes']}).",
            details={"output_shape": list(out.shape)},
        )
