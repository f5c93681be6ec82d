"""The architecture zoo: name -> builder + parameter schema (networks in modelfactory/zoo.py)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from django.conf import settings

from claas_site.errors import InvalidInput
from claas_site.params import Param, Registry
from modelfactory.costs import ModelCost, cost_check

if TYPE_CHECKING:
    import torch
    from torch import nn

ARCHITECTURES = Registry("architecture")
# An uploaded torch.export program: registered only by uploading one (never named in options), so
# a tenant can never point at another tenant's program.
PROGRAM = "program"

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
    """Validate an architecture's parameters; the result has every default filled.

    Wide layers multiply and large inputs multiply again: a model whose parameters, per-sample
    activations or per-sample FLOPs exceed the limits is refused before any process builds it.
    """
    entry = ARCHITECTURES.get(architecture, f"{where}.architecture")
    full = entry.validate(params, f"{where}.params")
    if math.prod(full["input_shape"]) > MAX_INPUT_NUMEL:
        raise InvalidInput(f"{where}.params.input_shape is too large (at most {MAX_INPUT_NUMEL} values).",
                           details={"input_shape": full["input_shape"]})
    cost_check(cost=architecture_cost(architecture=entry.name, params=full, where=where), where=f"{where}.params")
    return full


def architecture_cost(*, architecture: str, params: dict[str, Any], where: str = "model") -> ModelCost:
    """Parameters, per-sample activation bytes and FLOPs, from a build and a forward pass on the meta device.

    Activations are the outputs of every leaf module for a batch of one; FLOPs are torch's count of the
    matrix products and convolutions. Nothing is allocated and nothing is computed.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = architecture_build(architecture=architecture, params=params)
    parameters = sum(p.numel() for p in model.parameters())
    if settings.MAX_MODEL_PARAMETERS and parameters > settings.MAX_MODEL_PARAMETERS:
        # Refused on its parameters alone: no need to trace it.
        return ModelCost(parameters, 0, 0)
    activations = 0

    def count(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if next(m.children(), None) is None]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model.eval()(torch.zeros(1, *params["input_shape"], device="meta"))
    except (RuntimeError, ValueError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{where}.params describe a model that cannot run on inputs of shape "
                           f"{params['input_shape']}: {reason}", details={"input_shape": params["input_shape"]})
    finally:
        for hook in hooks:
            hook.remove()
    return ModelCost(parameters, activations, counter.get_total_flops())


def architecture_build(*, architecture: str, params: dict[str, Any]) -> nn.Module:
    """Instantiate a model; `params` must come from architecture_params() or a program's registration."""
    if architecture == PROGRAM:
        from modelfactory.program_module import program_build

        return program_build(**params)
    return ARCHITECTURES.get(architecture, "model.architecture").builder(**params)


def architecture_smoke_test(*, model: nn.Module, params: dict[str, Any]) -> torch.Tensor:
    """Run one forward pass on a dummy batch of one; the output must have num_classes columns.

    architecture_params() has bounded its activations and FLOPs before this runs. Returns the output.
    """
    from modelfactory.zoo import smoke_output

    output = smoke_output(model, params["input_shape"])
    shape = tuple(output.shape)
    if len(shape) != 2 or shape[1] != params["num_classes"]:
        raise InvalidInput(
            f"The model's output has shape {shape}, expected (batch, {params['num_classes']}).",
            details={"output_shape": list(shape)},
        )
    return output


# --- architectures from installed packages ------------------------------------------------------
ENTRY_POINT_GROUP = "claas.architectures"


def architectures_from_packages() -> list[str]:
    """Register the architectures that installed packages declare in the `claas.architectures` group.

    Each entry point names a builder, `builder(*, num_classes, input_shape, **params) -> nn.Module`, and may
    carry `claas_params` (a list of Param fields as dicts: name, type, default, help, min, max),
    `claas_input_shape` (default [64]) and `claas_num_classes` (default 10); its docstring's first line is
    the help. This is operator code, trusted like CLaaS's own; tenants' own models come as uploaded programs.
    Returns the names registered; an entry point that fails to load is logged and left out.
    """
    import logging
    from importlib.metadata import entry_points

    logger = logging.getLogger(__name__)
    added = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in ARCHITECTURES or point.name == PROGRAM:
            logger.warning("architecture %s from %s is already defined; left out", point.name, point.value)
            continue
        try:
            builder = point.load()
            extra = tuple(Param(**fields) for fields in getattr(builder, "claas_params", ()))
            common = _common(list(getattr(builder, "claas_input_shape", [64])),
                             int(getattr(builder, "claas_num_classes", 10)))
        except Exception:
            logger.exception("architecture %s (%s) could not be loaded; left out", point.name, point.value)
            continue
        help_text = ((builder.__doc__ or "").strip().splitlines() or [f"From {point.value}."])[0]
        package = point.dist.name if point.dist is not None else point.value.split(":")[0]
        ARCHITECTURES.register(point.name, params=common + extra, help=help_text, package=package)(builder)
        added.append(point.name)
    return added
