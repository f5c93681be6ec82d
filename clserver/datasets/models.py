"""Database rows of uploaded datasets."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from clserver.names import NAME_MAX_LENGTH


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
