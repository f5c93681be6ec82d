"""Registered models and their weight versions."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class RegisteredModel(models.Model):
    """A named model of a user: an architecture from the zoo with fixed parameters."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="registered_models")
    name = models.CharField(max_length=100)
    architecture = models.CharField(max_length=64)
    params = models.JSONField(help_text="Architecture parameters with every default filled.")
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="registered_model_unique_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.owner_id}/{self.name}"


class ModelVersion(models.Model):
    """One set of weights of a registered model, stored as a state_dict file."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    weights_file = models.CharField(max_length=500, help_text="state_dict path under the data dir.")
    source_format = models.CharField(max_length=16, help_text="state_dict, torchscript or init.")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField(default=0)
    mlflow_version = models.CharField(max_length=32, blank=True, default="")
    note = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "version"], name="model_version_unique")]
        ordering = ["model", "version"]

    def __str__(self) -> str:
        return f"{self.model}@{self.version}"
