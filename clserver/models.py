"""Database rows of the CL server: datasets, experiments and their events."""
from __future__ import annotations

from django.conf import settings
from django.db import models

NAME_MAX_LENGTH = 100
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class JobStatus(models.TextChoices):
    READY = "ready"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class Dataset(models.Model):
    """A user's uploaded tabular dataset, stored as a normalised NPZ (x float32, y int64)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    file = models.CharField(max_length=500, help_text="Path of the normalised NPZ under the data dir.")
    original_format = models.CharField(max_length=8)
    n_samples = models.PositiveIntegerField()
    n_features = models.PositiveIntegerField()
    classes = models.JSONField(default=list)
    size_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="dataset_unique_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.owner_id}/{self.name}"


class Experiment(models.Model):
    """One continual-learning experiment: options in, results out."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    options = models.JSONField()
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.READY)
    error = models.TextField(blank=True, default="")
    progress = models.FloatField(default=0.0)
    experience = models.IntegerField(default=0, help_text="Experience being trained (0-based).")
    epoch = models.IntegerField(default=0, help_text="Epochs finished in the current experience.")
    results = models.JSONField(default=dict, blank=True)
    source = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="continuations",
                               help_text="The experiment this one continues (from_experiment).")
    registered_version = models.ForeignKey("modelfactory.ModelVersion", null=True, blank=True,
                                           on_delete=models.PROTECT, related_name="experiments")
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    run_token = models.CharField(max_length=32, blank=True, default="",
                                 help_text="Identifies the current attempt; a stale attempt stops.")
    worker = models.CharField(max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    mlflow_run_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="experiment_unique_name")]
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.owner_id}/{self.name}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class ExperimentEvent(models.Model):
    """A progress event, stored so a reconnecting client can replay it."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=32)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


from clserver.deployments.models import *  # noqa
