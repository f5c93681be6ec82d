"""The architecture zoo: name -> builder + parameter schema (networks in modelfactory/zoo.py)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from django.conf import settings

from claas_site.errors import InvalidInput
from claas_site.params import Param, Registry

if TYPE_CHECKING:
    from torch import nn

ARCHITECTURES = Registry("architecture")

MAX_INPUT_NUMEL = 3 * 512 * 512


def _common(input_shape: list[int], num_classes: int = 10) -> tuple[Param, ...]:
    return (
        Param("num_classes", "int", num_classes, "Number of output classes.", min=2, max=100_000),
        Param("input_shape", "int_list", input_shape,
              "Shape of one input without the batch dimension, e.g. [64] or [1, 8, 8].",
              min=1, max=100_000),
    )


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
    from modelfactory.zoo import mlp_net

    return mlp_net(input_shape, num_classes, [hidden_size] * hidden_layers, drop_rate)


@ARCHITECTURES.register(
    "mlp",
    help="Fully connected network with one size per hidden layer.",
    params=_common([64]) + (
        Param("hidden_layers", "int_list", [256, 128], "Units of each hidden layer.", min=1, max=65536),
        Param("drop_rate", "float", 0.0, "Dropout probability after each hidden layer.", min=0.0, max=0.95),
    ),
)
def mlp(*, num_classes: int, input_shape: list[int], hidden_layers: list[int], drop_rate: float) -> nn.Module:
    from modelfactory.zoo import mlp_net

    return mlp_net(input_shape, num_classes, hidden_layers, drop_rate)


def _image_shape(input_shape: list[int], name: str) -> list[int]:
    if len(input_shape) != 3:
        raise InvalidInput(f"{name} needs input_shape [channels, height, width], got {input_shape}.",
                           details={"input_shape": input_shape})
    return input_shape


@ARCHITECTURES.register(
    "simple_cnn",
    help="Two convolution blocks and a linear head; works for any image size.",
    params=_common([1, 8, 8]) + (
        Param("channels", "int", 32, "Filters in the first block (the second has twice as many).", min=1, max=1024),
    ),
)
def simple_cnn(*, num_classes: int, input_shape: list[int], channels: int) -> nn.Module:
    from modelfactory.zoo import cnn_net

    return cnn_net(_image_shape(input_shape, "simple_cnn"), num_classes, channels)


@ARCHITECTURES.register(
    "resnet18",
    help="torchvision ResNet-18, randomly initialised (no pretrained weights are downloaded).",
    params=_common([3, 32, 32]),
)
def resnet18(*, num_classes: int, input_shape: list[int]) -> nn.Module:
    from modelfactory.zoo import resnet18_net

    return resnet18_net(_image_shape(input_shape, "resnet18"), num_classes)


@ARCHITECTURES.register(
    "mobilenet_v3_small",
    help="torchvision MobileNetV3-Small, randomly initialised (no pretrained weights are downloaded).",
    params=_common([3, 32, 32]),
)
def mobilenet_v3_small(*, num_classes: int, input_shape: list[int]) -> nn.Module:
    from modelfactory.zoo import mobilenet_v3_small_net

    return mobilenet_v3_small_net(_image_shape(input_shape, "mobilenet_v3_small"), num_classes)


def architecture_params(*, architecture: Any, params: Any, where: str = "model") -> dict[str, Any]:
    """Validate an architecture's parameters; the result has every default filled."""
    entry = ARCHITECTURES.get(architecture, f"{where}.architecture")
    full = entry.validate(params, f"{where}.params")
    if math.prod(full["input_shape"]) > MAX_INPUT_NUMEL:
        raise InvalidInput(f"{where}.params.input_shape is too large (at most {MAX_INPUT_NUMEL} values).",
                           details={"input_shape": full["input_shape"]})
    # Wide layers multiply: refuse a model too big to build before any process tries to.
    limit = settings.MAX_MODEL_PARAMETERS
    count = architecture_parameter_count(architecture=entry.name, params=full) if limit else 0
    if count > limit:
        raise InvalidInput(f"{where}.params describe a model of {count:,} parameters; at most {limit:,} are allowed.",
                           details={"parameters": count, "limit": limit})
    return full


def architecture_parameter_count(*, architecture: str, params: dict[str, Any]) -> int:
    """The model's parameter count, from a build on torch's meta device (shapes only, no memory)."""
    import torch

    with torch.device("meta"):
        model = architecture_build(architecture=architecture, params=params)
    return sum(p.numel() for p in model.parameters())


def architecture_build(*, architecture: str, params: dict[str, Any]) -> nn.Module:
    """Instantiate a model; `params` must come from architecture_params()."""
    return ARCHITECTURES.get(architecture, "model.architecture").builder(**params)


def architecture_smoke_test(*, model: nn.Module, params: dict[str, Any]) -> None:
    """Run one forward pass on a dummy batch; the output must have num_classes columns."""
    from modelfactory.zoo import smoke_output

    shape = smoke_output(model, params["input_shape"])
    if len(shape) != 2 or shape[1] != params["num_classes"]:
        raise InvalidInput(
            f"The model's output has shape {shape}, expected (batch, {params['num_classes']}).",
            details={"output_shape": list(shape)},
        )
