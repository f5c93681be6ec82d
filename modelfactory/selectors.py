"""Reads of the model factory."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from claas_site.errors import NotFound
from modelfactory.models import ModelVersion, RegisteredModel


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
