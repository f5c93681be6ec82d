"""The job fields every background job row shares (experiments, deployment updates) and its statuses."""
from __future__ import annotations

from django.db import models


class JobStatus(models.TextChoices):
    READY = "ready"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class Job(models.Model):
    """The fields clserver.jobs.runner.JobRunner owns: status, attempts, run token, heartbeat, cancel flag, times."""

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.READY)
    error = models.TextField(blank=True, default="")
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
        abstract = True

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES
