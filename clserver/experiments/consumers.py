"""Websocket of an experiment: its stored events first, then live ones, to the owner only."""
from __future__ import annotations

from typing import Any

from clserver.experiments.events import event_as_message, experiment_group
from clserver.live import EventStreamConsumer
from clserver.models import Experiment, ExperimentEvent


class ExperimentConsumer(EventStreamConsumer):
    """ws/experiments/<username>/<exp_name>/[?after=<event id>]"""

    name_kwarg = "exp_name"

    def resource_find(self, *, owner_id: int, name: str) -> int | None:
        return Experiment.objects.filter(owner_id=owner_id, name=name).values_list("id", flat=True).first()

    def events_after(self, *, last_id: int, limit: int) -> list[dict[str, Any]]:
        rows = ExperimentEvent.objects.filter(experiment_id=self.resource_id, id__gt=last_id)
        return [event_as_message(e) for e in rows.order_by("id")[:limit]]

    def group_name(self, *, owner_id: int, name: str) -> str:
        return experiment_group(owner_id=owner_id, name=name)
