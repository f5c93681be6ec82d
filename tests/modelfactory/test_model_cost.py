"""Issue 13, finding 3: model validation is bounded by construction (activations and FLOPs per sample,
worked out on the meta device before any real forward pass)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from claas_site.errors import InvalidInput
from modelfactory.architectures import ARCHITECTURES, architecture_params
from modelfactory.models import RegisteredModel

# simple_cnn with 256 channels on 3x256x256 images: 14 s of web CPU and ~0.9 GB for its dummy batch.
WIDE_CNN = {"architecture": "simple_cnn", "params": {"channels": 256, "input_shape": [3, 256, 256]}}


@pytest.fixture
def real_activations():
    """Bytes of every real (not meta-device) module output while the fixture is active: what a forward costs."""
    seen = {"bytes": 0}

    def count(module: nn.Module, args, output) -> None:
        if isinstance(output, torch.Tensor) and output.device.type != "meta":
            seen["bytes"] += output.numel() * output.element_size()

    handle = nn.modules.module.register_module_forward_hook(count)
    yield seen
    handle.remove()


def test_a_model_with_huge_activations_is_refused_before_any_forward_pass(api, data_dir, real_activations):
    response = api.post("/api/models/", {"name": "wide", **WIDE_CNN}, format="json")
    assert response.status_code == 400, response.content[:200]
    body = response.json()
    assert body["error"] == ("model.params describe a model whose activations take 436,211,752 bytes per sample; "
                             "at most 268,435,456 are allowed (CLAAS_MAX_ACTIVATION_BYTES).")
    assert body["details"] == {"activation_bytes": 436_211_752, "limit": 268_435_456}
    assert real_activations["bytes"] == 0
    assert not RegisteredModel.objects.exists()


def test_a_model_over_the_flop_limit_is_refused_naming_it(api, settings, real_activations):
    settings.MAX_ACTIVATION_BYTES = 0  # lifted: the FLOP limit alone refuses it
    response = api.post("/api/models/", {"name": "wide", **WIDE_CNN}, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == ("model.params describe a model of 155,524,802,560 FLOPs per sample; "
                                        "at most 20,000,000,000 are allowed (CLAAS_MAX_MODEL_FLOPS).")
    assert real_activations["bytes"] == 0


def test_the_limits_also_bound_experiment_models(settings):
    # Experiments validate their model through the same function, so workers are bounded alike.
    with pytest.raises(InvalidInput) as caught:
        architecture_params(where="model", **WIDE_CNN)
    assert "(CLAAS_MAX_ACTIVATION_BYTES)" in caught.value.message


@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v3_small", "simple_cnn"])
def test_zoo_models_at_imagenet_size_stay_within_the_limits(architecture: str):
    from modelfactory.architectures import architecture_cost

    params = architecture_params(architecture=architecture, params={"input_shape": [3, 224, 224]})
    cost = architecture_cost(architecture=architecture, params=params)
    assert 0 < cost.activation_bytes < 256 * 1024 * 1024
    assert 0 < cost.flops < 20_000_000_000


@pytest.mark.parametrize("architecture", [entry["name"] for entry in ARCHITECTURES.describe()])
def test_every_zoo_architecture_registers_with_its_defaults(api, architecture: str):
    response = api.post("/api/models/", {"name": f"default-{architecture}", "architecture": architecture},
                        format="json")
    assert response.status_code == 201, response.content[:200]
