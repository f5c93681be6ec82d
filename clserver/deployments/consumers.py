"""Websocket of a deployment: stored drift checks and update events first, then live ones, owner only."""
from __future__ import annotations

from typing import Any

from clserver.deployments.events import deployment_group
from clserver.deployments.models import Deployment, DeploymentEvent
from clserver.experiments.events import event_as_message
from clserver.live import EventStreamConsumer


class DeploymentConsumer(EventStreamConsumer):
    """ws/deployments/<username>/<name>/[?after=<event id>]"""

    name_kwarg = "name"

    def resource_find(self, *, owner_id: int, name: str) -> int | None:
        return Deployment.objects.filter(owner_id=owner_id, name=name).values_list("id", flat=True).first()

    def events_after(self, *, last_id: int, limit: int) -> list[dict[str, Any]]:
        rows = DeploymentEvent.objects.filter(deployment_id=self.resource_id, id__gt=last_id)
        return [event_as_message(e) for e in rows.order_by("id")[:limit]]

    def group_name(self, *, owner_id: int, name: str) -> str:
        return deployment_group(owner_id=owner_id, name=name)
