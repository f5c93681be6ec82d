"""Input and output serializers of the model factory API (shapes for the OpenAPI schema)."""
from __future__ import annotations

import json
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from modelfactory.architectures import PROGRAM
from modelfactory.models import ModelVersion, RegisteredModel
from modelfactory.selectors import mlflow_name


@extend_schema_field(OpenApiTypes.OBJECT)
class JsonObjectField(serializers.Field):
    """A JSON object: given as an object in a JSON body, or as a JSON string in a multipart form."""

    default_error_messages = {"invalid": "must be a JSON object, e.g. {{\"hidden_size\": 64}}"}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, (str, bytes)):
            text = data.decode() if isinstance(data, bytes) else data
            if not text.strip():
                return {}
            try:
                data = json.loads(text)
            except ValueError:
                self.fail("invalid")
        if not isinstance(data, dict):
            self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class RegisteredModelCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="Letters, digits, '_', '.' and '-'; unique per user.")
    architecture = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                                         help_text="A name from /api/architectures/; left out when `file` is a "
                                                   "torch.export program (.pt2), which carries its own.")
    params = JsonObjectField(required=False, default=dict,
                             help_text="Architecture parameters (a JSON string in a multipart form); "
                                       "defaults are filled in.")
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
    seed = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**31 - 1,
                                    help_text="Seed of the initial weights when no file is given.")
    file = serializers.FileField(required=False, allow_null=True,
                                 help_text="Initial weights: a state_dict saved with torch.save(model.state_dict(), "
                                           "path), or a whole model: a torch.export program saved with "
                                           "torch.export.save (.pt2, dynamic batch dimension). TorchScript "
                                           "archives are refused. Without it version 1 is a fresh initialisation.")


class ModelVersionUploadInputSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A state_dict saved with torch.save(model.state_dict(), path); "
                                           "TorchScript archives are refused.")
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


class DownloadSerializer(serializers.Serializer):
    format = serializers.CharField(help_text="state_dict, pt2 or torchscript.")
    url = serializers.CharField()
    load = serializers.CharField(help_text="The line that loads the file in a Python with torch only.")


def downloads(*, base: str, architecture: str) -> list[dict[str, str]]:
    """The download formats of a set of weights, each with its URL and the line that loads it."""
    from modelfactory.exports import LOAD_LINES, formats_for

    return [{"format": f, "url": base if f == "state_dict" else f"{base}?format={f}", "load": LOAD_LINES[f]}
            for f in formats_for(architecture=architecture)]


class ModelVersionOutputSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()
    torchscript_url = serializers.SerializerMethodField(help_text="Null for uploaded programs.")
    downloads = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["version", "source_format", "sha256", "size_bytes", "note", "created_at", "mlflow_version",
                  "download_url", "torchscript_url", "downloads"]

    def get_download_url(self, obj: ModelVersion) -> str:
        return f"/api/models/{obj.model.name}/versions/{obj.version}/download"

    def get_torchscript_url(self, obj: ModelVersion) -> str | None:
        if obj.model.architecture == PROGRAM:
            return None
        return f"/api/models/{obj.model.name}/versions/{obj.version}/download?format=torchscript"

    @extend_schema_field(DownloadSerializer(many=True))
    def get_downloads(self, obj: ModelVersion) -> list[dict[str, str]]:
        return downloads(base=self.get_download_url(obj), architecture=obj.model.architecture)


class ModelVersionCreatedSerializer(ModelVersionOutputSerializer):
    mlflow_error = serializers.CharField(allow_null=True,
                                         help_text="Why MLflow mirroring failed (the version is stored anyway).")

    class Meta(ModelVersionOutputSerializer.Meta):
        fields = ModelVersionOutputSerializer.Meta.fields + ["mlflow_error"]


class RegisteredModelOutputSerializer(serializers.ModelSerializer):
    versions = ModelVersionOutputSerializer(many=True, read_only=True)
    latest_version = serializers.SerializerMethodField()
    mlflow_name = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = ["name", "architecture", "params", "description", "created_at", "versions", "latest_version",
                  "mlflow_name"]

    def get_latest_version(self, obj: RegisteredModel) -> int | None:
        numbers = [v.version for v in obj.versions.all()]
        return max(numbers) if numbers else None

    def get_mlflow_name(self, obj: RegisteredModel) -> str:
        return mlflow_name(model=obj)


class RegisteredModelCreatedSerializer(RegisteredModelOutputSerializer):
    mlflow_error = serializers.CharField(allow_null=True,
                                         help_text="Why MLflow mirroring failed (the version is stored anyway).")

    class Meta(RegisteredModelOutputSerializer.Meta):
        fields = RegisteredModelOutputSerializer.Meta.fields + ["mlflow_error"]
