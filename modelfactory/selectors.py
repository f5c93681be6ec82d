"""Reads of the model factory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from claas_site.errors import NotFound
from claas_site.lazy import lazy_import
from modelfactory.architectures import architecture_build
from modelfactory.models import ModelVersion, RegisteredModel

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")
nn = lazy_import("torch.nn")


def registered_model_list(*, owner: Any) -> QuerySet[RegisteredModel]:
    return RegisteredModel.objects.filter(owner=owner).prefetch_related("versions")


def registered_model_get(*, owner: Any, name: str) -> RegisteredModel:
    model = RegisteredModel.objects.filter(owner=owner, name=name).first()
    if model is None:
        raise NotFound(f"You have no registered model named '{name}'.")
    return model


def model_version_get(*, owner: Any, name: str, version: int | None = None) -> ModelVersion:
    """A version of one of the owner's models; the latest when `version` is None."""
    model = registered_model_get(owner=owner, name=name)
    versions = model.versions.all()
    found = versions.filter(version=version).first() if version is not None else versions.order_by("-version").first()
    if found is None:
        which = f"version {version}" if version is not None else "any version"
        raise NotFound(f"Registered model '{name}' has no {which}.")
    return found


def mlflow_name(*, model: RegisteredModel) -> str:
    """The model's name in the MLflow Model Registry."""
    return f"{model.owner.username}.{model.name}"


def model_version_path(*, version: ModelVersion) -> Path:
    return settings.DATA_DIR / version.weights_file


def model_version_load(*, version: ModelVersion) -> nn.Module:
    """A fresh instance of the version's architecture holding its weights."""
    model = architecture_build(architecture=version.model.architecture, params=version.model.params)
    model.load_state_dict(torch.load(_state_dict_file(version), map_location="cpu", weights_only=True))
    return model


def model_version_users(*, version: ModelVersion) -> list[str]:
    """What holds on to this version: experiments and deployments, one phrase each."""
    users: list[str] = []
    experiments = getattr(version, "experiments", None)
    if experiments is not None:
        users += [f"experiment '{e.name}' ({e.status})" for e in experiments.all()]
    deployments = getattr(version, "deployments", None)
    if deployments is not None:
        users += [f"deployment '{getattr(d, 'name', d.pk)}'" for d in deployments.all()]
    return users


def _state_dict_file(version: ModelVersion) -> Path:
    path = model_version_path(version=version)
    if not path.is_file():
        raise NotFound(f"The weights file of '{version.model.name}' version {version.version} is missing "
                       "from the data directory.")
    return path


def model_version_files(*, version: ModelVersion) -> list[Path]:
    """Every file a version may have under the data dir (its weights and its exports): delete them all."""
    from modelfactory.exports import export_paths

    return export_paths(weights=model_version_path(version=version))
