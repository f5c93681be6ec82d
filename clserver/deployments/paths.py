"""Where a deployment's files live, the key it is cached under, and its registered model's name."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings

from clserver.deployments.models import Deployment


def deployment_dir(deployment: Deployment) -> Path:
    """Detector, validation set, versions (weights + memory) and the buffer of one deployment."""
    return settings.DEPLOYMENT_DIR / str(deployment.owner_id) / str(deployment.pk)


def data_path(relative: str) -> Path:
    return settings.DATA_DIR / relative


def relative_path(path: Path) -> str:
    """A file's path as stored in a row: relative to the data folder."""
    return str(path.relative_to(settings.DATA_DIR))


def deployment_key(deployment: Deployment) -> tuple:
    """The serving caches' key: a deleted deployment's reused id never hits its old entries."""
    return (deployment.pk, deployment.created_at.timestamp())


def registered_name(deployment: Deployment) -> str:
    return f"{deployment.owner.username}.deploy.{deployment.name}"
