"""Preprocessing before a drift test: dimension reduction of the rows (a random projection, or the deployed
model's penultimate layer)."""
from __future__ import annotations

import math

from claas_site.errors import InvalidInput
from claas_site.lazy import lazy_import
from claas_site.params import Param, Registry

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")
nn = lazy_import("torch.nn")

PREPROCESSORS = Registry("preprocess")


# --- preprocessing (dimension reduction before the test) --------------------------------------
@PREPROCESSORS.register(
    "random_projection",
    help="An untrained linear projection to `dim` features (a random, fixed encoder).",
    params=(Param("dim", "int", 32, "Features after the projection.", min=1, max=4096),
            Param("seed", "int", 0, "Seed of the projection weights.", min=0, max=2**31 - 1)),
)
def random_projection(*, n_features: int, model: nn.Module | None, input_shape: list[int], dim: int,
                      seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(n_features, dim, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(dim, n_features, generator=generator) / math.sqrt(dim))
    return nn.Sequential(nn.Flatten(), linear).eval()


@PREPROCESSORS.register(
    "penultimate",
    help="The deployed model's penultimate layer (its `features`), as it was at deployment creation.",
)
def penultimate(*, n_features: int, model: nn.Module | None, input_shape: list[int]) -> nn.Module:
    import copy

    from clserver.drift.modules import Embedding, Reshape

    features = getattr(model, "features", None)
    if features is not None:
        return nn.Sequential(Reshape(input_shape), copy.deepcopy(features), nn.Flatten()).eval()
    if getattr(model, "has_features", False):
        # An uploaded program whose output is a linear layer: the graph up to that layer's input.
        return Embedding(copy.deepcopy(model)).eval()
    raise InvalidInput("detector.preprocess 'penultimate' needs a model with a penultimate layer: one from the "
                       "architecture zoo, or an uploaded program whose output comes from a final linear layer.")
