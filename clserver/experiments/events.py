"""Progress events: stored in the database, then pushed to the experiment's channel group."""
from __future__ import annotations

import logging
import math
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

from clserver.models import Experiment, ExperimentEvent

logger = logging.getLogger(__name__)


def experiment_group(*, owner_id: int, name: str) -> str:
    # Group names allow only ASCII alphanumerics, hyphens, underscores and periods.
    return f"exp.{owner_id}.{name}"[:99]


def event_as_message(event: ExperimentEvent) -> dict[str, Any]:
    return {"id": event.id, "type": event.type, "time": event.created_at.isoformat(), **event.payload}


def group_publish(group: str, message: dict[str, Any]) -> None:
    """Push to a channel group; a failing layer never breaks the job (clients also tail the DB)."""
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer) and not layer.groups.get(group):
        return  # nobody in this process listens (a worker's events reach the web process through the DB)
    try:
        async_to_sync(layer.group_send)(group, {"type": "push.event", "event": message})
    except Exception:  # the event is stored already; a live push is best effort
        logger.warning("Could not publish to channel group %s", group, exc_info=True)


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity (and SQLite's JSON check refuses them): they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def experiment_event_record(*, experiment: Experiment, type: str, payload: dict[str, Any]) -> ExperimentEvent:
    event = ExperimentEvent.objects.create(experiment=experiment, type=type, payload=json_safe(payload))
    group = experiment_group(owner_id=experiment.owner_id, name=experiment.name)
    # Published once stored for good: a listener that reads the history never misses what it was told.
    transaction.on_commit(lambda: group_publish(group, event_as_message(event)))
    return event
