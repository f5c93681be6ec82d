"""A deployment's events: stored, pushed to its websocket group after commit."""
from __future__ import annotations

from typing import Any

from django.db import transaction

from clserver.deployments.models import Deployment, DeploymentEvent, DeploymentUpdate
from clserver.experiments.events import event_as_message, group_publish


def deployment_group(*, owner_id: int, name: str) -> str:
    # Group names allow only ASCII alphanumerics, hyphens, underscores and periods.
    return f"dep.{owner_id}.{name}"[:99]


def deployment_event_record(*, deployment: Deployment, type: str, payload: dict[str, Any]) -> DeploymentEvent:
    """Store an event and push it to the deployment's websocket group (after commit)."""
    event = DeploymentEvent.objects.create(deployment=deployment, type=type, payload=payload)
    group = deployment_group(owner_id=deployment.owner_id, name=deployment.name)
    transaction.on_commit(lambda: group_publish(group, event_as_message(event)))
    return event


def update_event_payload(update: DeploymentUpdate) -> dict[str, Any]:
    """The payload of an `update` event: where the update stands."""
    return {"update": update.number, "status": update.outcome, "trigger": update.trigger,
            "n_samples": update.n_samples, "base_version": update.base_version,
            "candidate_version": update.candidate_version, "reason": update.reason or None}
