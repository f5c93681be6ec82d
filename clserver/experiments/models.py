"""Database rows of experiments and their stored progress events."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from clserver.jobs.models import Job
from clserver.names import NAME_MAX_LENGTH


class Experiment(Job):
    """One continual-learning experiment: options in, results out."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    options = models.JSONField()
    progress = models.FloatField(default=0.0)
    experience = models.IntegerField(default=0, help_text="Experience being trained (0-based).")
    epoch = models.IntegerField(default=0, help_text="Epochs finished in the current experience.")
    results = models.JSONField(default=dict, blank=True)
    source = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="continuations",
                               help_text="The experiment this one continues (from_experiment).")
    registered_version = models.ForeignKey("modelfactory.ModelVersion", null=True, blank=True,
                                           on_delete=models.PROTECT, related_name="experiments")

    class Meta(Job.Meta):
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="experiment_unique_name")]
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.owner_id}/{self.name}"


class ExperimentEvent(models.Model):
    """A progress event, stored so a reconnecting client can replay it."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=32)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
