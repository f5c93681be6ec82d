"""Input and output serializers of the dataset API (shapes for the OpenAPI schema)."""
from __future__ import annotations

import re

from rest_framework import serializers

from clserver.datasets.images import IMAGE_MODES
from clserver.datasets.models import Dataset
from clserver.names import NAME_MAX_LENGTH, NAME_PATTERN

IMAGE_SIZE_PATTERN = re.compile(r"\s*(\d{1,5})\s*,\s*(\d{1,5})\s*")


class DatasetOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["name", "original_format", "n_samples", "n_features", "classes", "size_bytes", "created_at"]


class DatasetUploadInputSerializer(serializers.Serializer):
    name = serializers.RegexField(NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    file = serializers.FileField(help_text=(
        "One of: NPZ with arrays x and y; CSV with a header and a label column; Parquet with numeric columns and "
        "a label column; a zip of .png/.jpg/.jpeg images in class folders (<class>/<image>, optionally below "
        "one common folder; classes are numbered in sorted folder-name order). The format is told from the "
        "file's content: a zip with .npy members at its top is an NPZ, any other zip is read as images."))
    label_column = serializers.CharField(required=False, default="label",
                                         help_text="CSV and Parquet: the column holding the integer class label.")
    image_mode = serializers.ChoiceField(
        choices=sorted(IMAGE_MODES), required=False,
        help_text="Zip of images only: 'L' (grayscale, 1 channel) or 'RGB' (3 channels). Default: 'L' when "
                  "every image is grayscale, 'RGB' otherwise.")
    image_size = serializers.CharField(
        required=False, help_text="Zip of images only: 'height,width' to resize every image to, e.g. '28,28'. "
                                  "Without it every image must have the same size. Features are stored flat, "
                                  "channels first (C*H*W values in [0, 1] per image).")

    def validate_image_size(self, value: str) -> tuple[int, int]:
        match = IMAGE_SIZE_PATTERN.fullmatch(value)
        if match is None or 0 in (int(match[1]), int(match[2])):
            raise serializers.ValidationError(f"'{value[:40]}' is not 'height,width' with two positive integers.")
        return int(match[1]), int(match[2])
