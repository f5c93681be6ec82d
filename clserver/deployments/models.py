"""Database rows of deployments: served versions, drift checks, update jobs, buffered data, events."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Max

from clserver.experiments.models import Experiment
from clserver.jobs.models import Job, JobStatus
from clserver.names import NAME_MAX_LENGTH

__all__ = ["Deployment", "DeploymentVersion", "DriftCheck", "DeploymentUpdate", "DeploymentBatch",
           "DeploymentEvent", "UpdateDecision", "UpdateTrigger", "VersionOrigin"]


class NumberedPerDeployment(models.Model):
    """A row numbered 1, 2, ... within its deployment: the number is what users see and name.

    Primary keys are global sequences, so showing them would tell a tenant how many checks or
    updates the other tenants ran; the key stays internal (jobs, foreign keys).
    """

    number = models.PositiveIntegerField(help_text="1, 2, ... within the deployment: the id users see.")

    class Meta:
        abstract = True

    def save(self, *args: object, **kwargs: object) -> None:
        if self.number is None:
            # Creators hold the deployment's row lock (select_for_update, IMMEDIATE transactions on
            # SQLite), so two rows cannot take the same number; the unique constraint backs it up.
            taken = type(self).objects.filter(deployment_id=self.deployment_id).aggregate(n=Max("number"))["n"]
            self.number = (taken or 0) + 1
        super().save(*args, **kwargs)


class UpdateTrigger(models.TextChoices):
    DRIFT = "drift"
    EVERY_N_SAMPLES = "every_n_samples"
    MANUAL = "manual"


class UpdateDecision(models.TextChoices):
    PROMOTED = "promoted"
    REJECTED = "rejected"


class VersionOrigin(models.TextChoices):
    SOURCE = "source"
    UPDATE = "update"


class Deployment(models.Model):
    """A served model that watches its input for drift and updates itself by replay."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    source = models.JSONField(help_text="Where version 1 came from: {exp_name} or {registered, version, reference}.")
    source_experiment = models.ForeignKey(Experiment, null=True, blank=True, on_delete=models.PROTECT,
                                          related_name="deployments")
    # The weights are copied at creation, so a deleted model version does not break the deployment.
    source_model_version = models.ForeignKey("modelfactory.ModelVersion", null=True, blank=True,
                                             on_delete=models.SET_NULL, related_name="deployments")
    architecture = models.CharField(max_length=64)
    model_params = models.JSONField(help_text="Architecture parameters with every default filled.")
    detector = models.JSONField(help_text="Detector options: name, its parameters and preprocess.")
    update_options = models.JSONField(help_text="Update options with every default filled.")
    champion_version = models.PositiveIntegerField(default=1)
    drift_pending = models.BooleanField(default=False,
                                        help_text="Drift was seen since the last update was started.")
    samples_seen = models.PositiveBigIntegerField(default=0, help_text="Labelled samples ingested so far.")
    source_train_samples = models.PositiveBigIntegerField(
        default=0, help_text="Training samples behind version 1 (for the retrain-from-scratch cost).")
    detector_state = models.PositiveIntegerField(
        default=0, help_text="Bumped whenever an online detector's saved state changes.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="deployment_unique_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.owner_id}/{self.name}"


class DeploymentVersion(models.Model):
    """One set of weights of a deployment, with the replay memory that goes with it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    origin = models.CharField(max_length=16, choices=VersionOrigin.choices)
    decision = models.CharField(max_length=16, blank=True, default="", choices=UpdateDecision.choices)
    weights_file = models.CharField(max_length=500, help_text="state_dict path under the data dir.")
    memory_file = models.CharField(max_length=500, help_text="Replay memory NPZ path under the data dir.")
    memory_size = models.PositiveIntegerField(default=0)
    validation_accuracy = models.FloatField(null=True, blank=True,
                                            help_text="Accuracy on the deployment's validation set.")
    metrics = models.JSONField(default=dict, blank=True)
    served_at = models.DateTimeField(null=True, blank=True, help_text="When it first became the champion.")
    mlflow_version = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "version"],
                                               name="deployment_version_unique")]
        ordering = ["deployment", "version"]

    def __str__(self) -> str:
        return f"{self.deployment}@{self.version}"


class DriftCheck(NumberedPerDeployment):
    """One drift test of an ingested batch."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="drift_checks")
    detector = models.CharField(max_length=32)
    n_samples = models.PositiveIntegerField()
    is_drift = models.BooleanField()
    p_val = models.FloatField(null=True, blank=True)
    distance = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    champion_version = models.PositiveIntegerField()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "number"], name="drift_check_unique_number")]
        ordering = ["id"]


class DeploymentUpdate(NumberedPerDeployment, Job):
    """A background update: champion + replay memory trained on buffered data, then validated."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="updates")
    trigger = models.CharField(max_length=32, choices=UpdateTrigger.choices)
    options = models.JSONField(help_text="strategy, training, tolerance, validation_fraction, memory.")
    base_version = models.PositiveIntegerField(help_text="The champion the update starts from.")
    candidate_version = models.PositiveIntegerField(null=True, blank=True)
    decision = models.CharField(max_length=16, blank=True, default="", choices=UpdateDecision.choices)
    reason = models.TextField(blank=True, default="")
    n_samples = models.PositiveIntegerField(default=0, help_text="Buffered samples handed to this update.")
    samples_seen_total = models.PositiveBigIntegerField(
        default=0, help_text="All labelled data seen when the update started, source training data included.")
    metrics = models.JSONField(default=dict, blank=True)
    cost = models.JSONField(default=dict, blank=True)
    drift_check = models.ForeignKey(DriftCheck, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="updates")
    # The job fields come from Job; an update is queued as soon as it exists.
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)

    class Meta(Job.Meta):
        constraints = [models.UniqueConstraint(fields=["deployment", "number"],
                                               name="deployment_update_unique_number")]
        ordering = ["id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    @property
    def outcome(self) -> str:
        """What a user wants to know: the decision once validated, else the job status."""
        return self.decision if self.status == JobStatus.COMPLETED and self.decision else self.status


class DeploymentBatch(models.Model):
    """Labelled data ingested in one request, waiting in the buffer until an update takes it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="batches")
    file = models.CharField(max_length=500, help_text="NPZ (x, y) path under the data dir.")
    n_samples = models.PositiveIntegerField()
    drift_check = models.ForeignKey(DriftCheck, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="batches")
    update = models.ForeignKey(DeploymentUpdate, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="batches", help_text="The update that took this batch.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class DeploymentEvent(models.Model):
    """A drift check or update event, stored so a reconnecting client can replay it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=32)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
