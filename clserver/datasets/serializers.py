"""Input and output serializers of the dataset API (shapes for the OpenAPI schema)."""
from __future__ import annotations

from rest_framework import serializers

from clserver.datasets.models import Dataset
from clserver.names import NAME_MAX_LENGTH, NAME_PATTERN


class DatasetOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["name", "original_format", "n_samples", "n_features", "classes", "size_bytes", "created_at"]


class DatasetUploadInputSerializer(serializers.Serializer):
    name = serializers.RegexField(NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    file = serializers.FileField(help_text="NPZ with arrays x and y, or CSV with a header and a label column.")
    label_column = serializers.CharField(required=False, default="label",
                                         help_text="CSV only: the column holding the integer class label.")
