"""Reads of deployments: one by name, a user's list, the buffer's size, events, versions."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet, Sum

from claas_site.errors import NotFound
from claas_site.lazy import lazy_import
from clserver.deployments.models import Deployment, DeploymentEvent, DeploymentVersion, UpdateDecision
from clserver.serving import cache as serving

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")


def deployment_list(*, owner: Any) -> QuerySet[Deployment]:
    return Deployment.objects.filter(owner=owner)


def deployment_get(*, owner: Any, name: str) -> Deployment:
    deployment = Deployment.objects.filter(owner=owner, name=name).select_related("owner").first()
    if deployment is None:
        raise NotFound(f"You have no deployment named '{name}'.")
    return deployment


def deployment_buffered(*, deployment: Deployment) -> int:
    """Labelled samples waiting for an update."""
    total = deployment.batches.filter(update__isnull=True).aggregate(n=Sum("n_samples"))["n"]
    return int(total or 0)


def deployment_events(*, deployment: Deployment, after: int = 0, limit: int = 1000) -> QuerySet[DeploymentEvent]:
    return deployment.events.filter(id__gt=after).order_by("id")[:limit]


def challenger_version(*, deployment: Deployment) -> int | None:
    """The latest rejected candidate (MLflow alias `challenger`)."""
    rejected = deployment.versions.filter(decision=UpdateDecision.REJECTED).order_by("-version").first()
    return rejected.version if rejected else None


def version_model(*, deployment: Deployment, version: DeploymentVersion) -> torch.nn.Module:
    """The model a version holds, loaded fresh (the update job trains on it)."""
    return serving.model_load(architecture=deployment.architecture, params=deployment.model_params,
                              weights_file=version.weights_file)
