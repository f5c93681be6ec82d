"""What a model costs per sample (parameters, activations, FLOPs) and the limits it must stay within."""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from claas_site.errors import InvalidInput


@dataclass(frozen=True)
class ModelCost:
    """What one sample costs the model, worked out on torch's meta device (shapes only, no memory)."""

    parameters: int
    activation_bytes: int
    flops: int


def cost_check(*, cost: ModelCost, where: str) -> None:
    """Refuse a model whose parameters, per-sample activations or FLOPs exceed the limits."""
    limits = (
        ("parameters", cost.parameters, settings.MAX_MODEL_PARAMETERS,
         f"{where} describe a model of {cost.parameters:,} parameters; at most "
         f"{settings.MAX_MODEL_PARAMETERS:,} are allowed."),
        ("activation_bytes", cost.activation_bytes, settings.MAX_ACTIVATION_BYTES,
         f"{where} describe a model whose activations take {cost.activation_bytes:,} bytes per sample; "
         f"at most {settings.MAX_ACTIVATION_BYTES:,} are allowed (CLAAS_MAX_ACTIVATION_BYTES)."),
        ("flops", cost.flops, settings.MAX_MODEL_FLOPS,
         f"{where} describe a model of {cost.flops:,} FLOPs per sample; at most "
         f"{settings.MAX_MODEL_FLOPS:,} are allowed (CLAAS_MAX_MODEL_FLOPS)."),
    )
    for name, value, limit, message in limits:
        if limit and value > limit:
            raise InvalidInput(message, details={name: value, "limit": limit})
